"""The AWS maintenance watch (`Ec2SsmFleet.upcoming_maintenance`).

moto's DescribeInstanceStatus never returns scheduled events (and ignores its filters), moto
implements no RDS DescribePendingMaintenanceActions and has no AWS Health at all. So EC2 events,
RDS pending maintenance (with the DescribeDBInstances and DescribeDBClusters that go with it) and
Health are read through botocore `Stubber`s with the answers recorded in tests/events/aws/ (the
Stubber checks requests and answers against the service models); moto answers EC2 in the one
test that says so. Each test's docstring says which.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
from aws_payloads import StubbedClients, recorded
from botocore.stub import Stubber
from clocks import ManualClock
from moto_support import aws

from patchpilot.adapters.aws.fleet import Ec2SsmFleet
from patchpilot.adapters.aws.maintenance_watch import NO_SUPPORT_PLAN, SINGLE_AZ
from patchpilot.inventory import Instance
from patchpilot.maintenance.model import MaintenanceItem, WatchResult
from patchpilot.policy import Policy, parse_policy

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
ACCOUNT = "111122223333"
WEST, CENTRAL = "eu-west-1", "eu-central-1"
EVENT_CODES = ["instance-reboot", "system-reboot", "system-maintenance", "instance-retirement", "instance-stop"]
EC2_REQUEST = {
    "Filters": [{"Name": "event.code", "Values": EVENT_CODES}],
    "IncludeAllInstances": True,
    "MaxResults": 1000,
}
FLEET = [
    Instance(id=f"i-0a1b2c3d4e5f6000{n}", cloud="aws", region=WEST, os="linux", name=f"web-{n}", account=ACCOUNT)
    for n in (1, 2, 3)
] + [Instance(id="i-0c0ffee0000000001", cloud="aws", region=CENTRAL, os="linux", name="api-1", account=ACCOUNT)]


def policy(watch: str | None = "{rds: false, health: false}") -> Policy:
    section = f"maintenance_watch: {watch}\n" if watch else ""
    return parse_policy(
        f"""
name: web
rings:
  - {{name: all, select: {{tags: {{Team: web}}}}}}
aws: {{regions: [{WEST}, {CENTRAL}], accounts: [{{id: "{ACCOUNT}"}}]}}
{section}"""
    )


def watch(clients: StubbedClients, pol: Policy, now: datetime = NOW) -> WatchResult:
    return Ec2SsmFleet(clients, ManualClock(now), default_region=WEST).upcoming_maintenance(pol, FLEET, now)


def answer(clients: StubbedClients, service: str, region: str) -> Stubber:
    return clients.stub(service, region, ACCOUNT)


def ec2_events(clients: StubbedClients, *, central: dict[str, Any] | None = None) -> None:
    west = clients.client("ec2", WEST, ACCOUNT)
    answer(clients, "ec2", WEST).add_response(
        "describe_instance_status",
        recorded(west, "DescribeInstanceStatus", "ec2_describe_instance_status_events"),
        EC2_REQUEST,
    )
    answer(clients, "ec2", CENTRAL).add_response(
        "describe_instance_status", central or {"InstanceStatuses": []}, EC2_REQUEST
    )


def rds_pending(clients: StubbedClients, region: str = WEST) -> None:
    rds = clients.client("rds", region, ACCOUNT)
    stub = answer(clients, "rds", region)
    stub.add_response(
        "describe_pending_maintenance_actions",
        recorded(rds, "DescribePendingMaintenanceActions", "rds_describe_pending_maintenance_actions"),
        {"MaxRecords": 100},
    )
    stub.add_response(
        "describe_db_instances", recorded(rds, "DescribeDBInstances", "rds_describe_db_instances"), {"MaxRecords": 100}
    )
    stub.add_response(
        "describe_db_clusters", recorded(rds, "DescribeDBClusters", "rds_describe_db_clusters"), {"MaxRecords": 100}
    )


def by_id(result: WatchResult) -> dict[str, MaintenanceItem]:
    return {item.id: item for item in result.items}


# ---------------------------------------------------------------- EC2 scheduled events


def test_scheduled_ec2_events_of_the_fleet_are_read_and_completed_or_canceled_ones_skipped() -> None:
    """Stubber: EC2 DescribeInstanceStatus with Events, in two regions."""
    clients = StubbedClients("ec2")
    ec2_events(clients)

    result = watch(clients, policy())

    clients.done()
    assert result.unavailable == ()
    items = by_id(result)
    assert sorted(items) == [
        "ec2:instance-event-0b1c2d3e4f5a67890:i-0a1b2c3d4e5f60003",  # power maintenance
        "ec2:instance-event-0d59937288b749b32:i-0a1b2c3d4e5f60001",  # reboot
        "ec2:instance-event-0e4d1b5a9c3f27781:i-0a1b2c3d4e5f60002",  # retirement
    ]  # not the [Completed] or [Canceled] ones, nor the instance outside the fleet
    reboot = items["ec2:instance-event-0d59937288b749b32:i-0a1b2c3d4e5f60001"]
    assert reboot == MaintenanceItem(
        id="ec2:instance-event-0d59937288b749b32:i-0a1b2c3d4e5f60001",
        source="ec2",
        cloud="aws",
        resource_id="i-0a1b2c3d4e5f60001",
        resource_name="web-1",
        kind="system-reboot",
        description="scheduled reboot",
        starts_at=datetime(2026, 12, 9, 3, 0, tzinfo=UTC),
        ends_at=datetime(2026, 12, 9, 5, 0, tzinfo=UTC),
        deadline=datetime(2026, 12, 16, 3, 0, tzinfo=UTC),
        downtime=True,
        instance_id="i-0a1b2c3d4e5f60001",
        region=WEST,
        account=ACCOUNT,
    )
    assert items["ec2:instance-event-0e4d1b5a9c3f27781:i-0a1b2c3d4e5f60002"].downtime  # retirement
    assert not items["ec2:instance-event-0b1c2d3e4f5a67890:i-0a1b2c3d4e5f60003"].downtime  # power maintenance


def test_an_event_over_by_now_is_skipped_and_the_others_keep_their_ids() -> None:
    """Stubber: EC2 DescribeInstanceStatus with Events, read twice."""
    first, later = StubbedClients("ec2"), StubbedClients("ec2")
    ec2_events(first)
    ec2_events(later)

    before = by_id(watch(first, policy()))
    after = by_id(watch(later, policy(), now=datetime(2026, 12, 9, 6, 0, tzinfo=UTC)))

    assert set(before) - set(after) == {
        "ec2:instance-event-0d59937288b749b32:i-0a1b2c3d4e5f60001",  # ended 12-09 05:00
        "ec2:instance-event-0b1c2d3e4f5a67890:i-0a1b2c3d4e5f60003",  # ended 12-06 02:00
    }
    assert set(after) == {"ec2:instance-event-0e4d1b5a9c3f27781:i-0a1b2c3d4e5f60002"}  # a retirement has no end


# ---------------------------------------------------------------- RDS pending maintenance


def test_rds_pending_maintenance_warns_that_a_single_az_database_goes_down() -> None:
    """Stubber: RDS DescribePendingMaintenanceActions, DescribeDBInstances, DescribeDBClusters."""
    clients = StubbedClients("ec2", "rds")
    ec2_events(clients)
    rds_pending(clients)
    answer(clients, "rds", CENTRAL).add_response(
        "describe_pending_maintenance_actions", {"PendingMaintenanceActions": []}, {"MaxRecords": 100}
    )

    result = watch(clients, policy("{health: false}"))

    clients.done()
    items = {i.resource_name: i for i in result.items if i.source == "rds"}
    orders, reports, billing = items["orders-primary"], items["reports-replica"], items["billing"]
    assert orders.id == "rds:system-update:arn:aws:rds:eu-west-1:111122223333:db:orders-primary"
    assert (orders.warning, orders.downtime) == (SINGLE_AZ, True)
    assert orders.starts_at == datetime(2026, 12, 20, 3, 30, tzinfo=UTC)
    assert orders.deadline == datetime(2026, 12, 20, tzinfo=UTC)  # AutoAppliedAfterDate comes before ForcedApplyDate
    assert (orders.kind, orders.region, orders.account) == ("system-update", WEST, ACCOUNT)
    assert (reports.warning, reports.downtime) == ("", False)  # Multi-AZ
    assert reports.deadline == datetime(2027, 2, 1, tzinfo=UTC)
    # An Aurora cluster across three zones: no warning, but an engine upgrade stops both copies.
    assert (billing.warning, billing.downtime, billing.kind) == ("", True, "db-upgrade")
    assert billing.resource_id == "arn:aws:rds:eu-west-1:111122223333:cluster:billing"


def test_no_database_is_read_when_nothing_is_pending() -> None:
    """Stubber: RDS DescribePendingMaintenanceActions answering nothing."""
    clients = StubbedClients("ec2", "rds")
    ec2_events(clients)
    for region in (WEST, CENTRAL):
        answer(clients, "rds", region).add_response(
            "describe_pending_maintenance_actions", {"PendingMaintenanceActions": []}, {"MaxRecords": 100}
        )

    result = watch(clients, policy("{health: false}"))

    clients.done()
    assert [i.source for i in result.items] == ["ec2", "ec2", "ec2"]
    assert clients.count("DescribeDBInstances") == clients.count("DescribeDBClusters") == 0


# ---------------------------------------------------------------- AWS Health


def health_changes(clients: StubbedClients) -> None:
    health = clients.client("health", "us-east-1", ACCOUNT)
    events = recorded(health, "DescribeEvents", "health_describe_events")
    stub = answer(clients, "health", "us-east-1")
    stub.add_response(
        "describe_events",
        events,
        {
            "filter": {
                "eventTypeCategories": ["scheduledChange"],
                "eventStatusCodes": ["upcoming", "open"],
                "regions": [CENTRAL, WEST],
            },
            "maxResults": 100,
        },
    )
    stub.add_response(
        "describe_affected_entities",
        recorded(health, "DescribeAffectedEntities", "health_describe_affected_entities"),
        {"filter": {"eventArns": [e["arn"] for e in events["events"]]}, "maxResults": 100},
    )


def test_health_scheduled_changes_are_mapped_onto_the_fleet_and_its_databases() -> None:
    """Stubber: EC2 DescribeInstanceStatus, AWS Health DescribeEvents and DescribeAffectedEntities
    (the global endpoint, us-east-1)."""
    clients = StubbedClients("ec2", "rds", "health")
    ec2_events(clients)
    for region in (WEST, CENTRAL):
        answer(clients, "rds", region).add_response(
            "describe_pending_maintenance_actions", {"PendingMaintenanceActions": []}, {"MaxRecords": 100}
        )
    health_changes(clients)

    result = watch(clients, policy(None))  # no maintenance_watch section: RDS and Health are read

    clients.done()
    health = [i for i in result.items if i.source == "health"]
    assert [(i.resource_id, i.instance_id, i.downtime) for i in health] == [
        ("i-0a1b2c3d4e5f60001", "i-0a1b2c3d4e5f60001", True),  # a reboot
        ("orders-primary", None, False),
    ]  # not the instance outside the fleet, nor the Lambda function
    reboot = health[0]
    assert reboot.id.startswith("health:arn:aws:health:eu-west-1::event/EC2/") and reboot.id.endswith(
        ":i-0a1b2c3d4e5f60001"
    )
    assert reboot.kind == "AWS_EC2_INSTANCE_REBOOT_MAINTENANCE_SCHEDULED"
    assert reboot.starts_at == datetime(2026, 12, 9, 3, 0, tzinfo=UTC) and reboot.account == ACCOUNT


def test_health_without_a_support_plan_is_reported_unavailable_and_the_other_sources_still_read() -> None:
    """Stubber: EC2 DescribeInstanceStatus, RDS, and Health's SubscriptionRequiredException."""
    clients = StubbedClients("ec2", "rds", "health")
    ec2_events(clients)
    rds_pending(clients)
    answer(clients, "rds", CENTRAL).add_response(
        "describe_pending_maintenance_actions", {"PendingMaintenanceActions": []}, {"MaxRecords": 100}
    )
    answer(clients, "health", "us-east-1").add_client_error(
        "describe_events", "SubscriptionRequiredException", "The AWS Premium Support Subscription is required"
    )

    result = watch(clients, policy("{digest: 'cron(0 8 ? * MON *)'}"))

    clients.done()
    assert result.unavailable == ((f"AWS Health in {ACCOUNT}", NO_SUPPORT_PLAN),)
    assert sorted({i.source for i in result.items}) == ["ec2", "rds"]


# ---------------------------------------------------------------- failures per place


def test_a_region_that_denies_access_is_reported_and_the_other_regions_are_read() -> None:
    """Stubber: EC2 UnauthorizedOperation and RDS AccessDenied in eu-central-1; eu-west-1 answers."""
    clients = StubbedClients("ec2", "rds")
    west = clients.client("ec2", WEST, ACCOUNT)
    answer(clients, "ec2", WEST).add_response(
        "describe_instance_status", recorded(west, "DescribeInstanceStatus", "ec2_describe_instance_status_events")
    )
    answer(clients, "ec2", CENTRAL).add_client_error(
        "describe_instance_status", "UnauthorizedOperation", "You are not authorized to perform this operation."
    )
    rds_pending(clients)
    answer(clients, "rds", CENTRAL).add_client_error(
        "describe_pending_maintenance_actions", "AccessDenied", "not authorized to perform rds:Describe…"
    )

    result = watch(clients, policy("{health: false}"))

    clients.done()
    assert result.unavailable == (
        (
            f"EC2 scheduled events in {ACCOUNT}/{CENTRAL}",
            "UnauthorizedOperation: You are not authorized to perform this operation.",
        ),
        (f"RDS pending maintenance in {ACCOUNT}/{CENTRAL}", "AccessDenied: not authorized to perform rds:Describe…"),
    )
    assert sum(i.source == "ec2" for i in result.items) == 3 and sum(i.source == "rds" for i in result.items) == 3


def test_on_moto_the_watch_reads_one_status_call_per_region_and_no_disabled_source() -> None:
    """moto: EC2 DescribeInstanceStatus (moto returns no Events and ignores the filter)."""
    with aws():
        clients = StubbedClients()
        image = boto3.client("ec2", region_name=WEST).describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        launched = boto3.client("ec2", region_name=WEST).run_instances(ImageId=image, MinCount=3, MaxCount=3)
        fleet = [Instance(id=i["InstanceId"], cloud="aws", region=WEST, os="linux") for i in launched["Instances"]]
        pol = parse_policy(
            f"name: web\nrings: [{{name: all, select: {{tags: {{Team: web}}}}}}]\naws: {{regions: [{WEST}]}}\n"
            "maintenance_watch: {rds: false, health: false}\n"
        )

        result = Ec2SsmFleet(clients, ManualClock(NOW), default_region=WEST).upcoming_maintenance(pol, fleet, NOW)

    assert result == WatchResult()
    assert [(c[0], c[3]) for c in clients.calls] == [("ec2", "DescribeInstanceStatus")]


def test_health_throttled_past_the_retries_is_reported_and_ec2_is_still_read() -> None:
    """Stubber: EC2 DescribeInstanceStatus, Health DescribeEvents throttled (botocore's retries spent)."""
    clients = StubbedClients("ec2", "health")
    ec2_events(clients)
    answer(clients, "health", "us-east-1").add_client_error(
        "describe_events", "ThrottlingException", "Rate exceeded", http_status_code=400
    )

    result = watch(clients, policy("{rds: false}"))

    clients.done()
    assert result.unavailable == ((f"AWS Health in {ACCOUNT}/us-east-1", "ThrottlingException: Rate exceeded"),)
    assert len(result.items) == 3
