"""The compliance timer and the maintenance watch on AWS, through the real trigger handler.

The world is test_aws_end_to_end's (`_build_world`: moto for EC2, S3, SQS, DynamoDB, Secrets
Manager; `fake_aws.FleetServices` for Systems Manager, whose Scan commands end SCAN_TIME later and
whose DescribeInstancePatchStates then reports the counts), with the policy given a `compliance`
and a `maintenance_watch` section and its notices routed to a Slack webhook on a real local
server (tests/webhook_server.py), its URL in Secrets Manager.

moto answers DescribeInstanceStatus without scheduled events, and implements neither RDS
DescribePendingMaintenanceActions nor AWS Health; those three are answered by `fake_aws.serve`
(botocore has validated the request, the answer is validated against the output shape, as a
Stubber does), and moto answers DescribeDBInstances for a real single-AZ database. Every call the
trigger function makes is checked against the TriggerFunction's role in template.yaml.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import test_aws_end_to_end as e2e
from clocks import ManualClock
from fake_aws import serve
from moto_support import ACCOUNT, aws, sqs_follows
from webhook_server import WebhookServer, webhook_server

from patchpilot.bootstrap.aws import deps

pytestmark = pytest.mark.slow  # end to end: `make test-fast` leaves it out

REGION = e2e.REGION
SLACK = "/slack/T000/B000/watch"
WEBHOOK_SECRET = "patchpilot-notifications-ops"
NOTIFY = f"""
notifications:
  channels: [{{name: ops, kind: slack, webhook: {WEBHOOK_SECRET}}}]
  routes: [{{topics: "*", channels: [ops]}}]
"""
WATCH = """
compliance: {scan: "cron(0 5 * * ? *)", timezone: UTC, report_after: 1h}
maintenance_watch: {digest: "cron(0 8 ? * TUE *)", timezone: UTC}
"""
SCAN_AT = datetime(2026, 12, 8, 5, 0, tzinfo=UTC)  # a Tuesday; the patches were released 12-07 17:00 UTC
DIGEST_AT = datetime(2026, 12, 8, 8, 0, tzinfo=UTC)
REBOOT_AT = datetime(2026, 12, 10, 3, 0, tzinfo=UTC)  # before the window (12-11 17:00 UTC)
DATABASE = "orders"


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    with webhook_server() as running:
        yield running


@contextmanager
def _world(monkeypatch: pytest.MonkeyPatch, server: WebhookServer, policy: str, at: datetime) -> Iterator[e2e.World]:
    with aws():
        clock = ManualClock(at)
        with sqs_follows(clock):
            world = e2e._build_world(clock, monkeypatch)
            boto3.client("s3", region_name=REGION).put_object(
                Bucket=e2e.BUCKET, Key=e2e.POLICY_KEY, Body=policy.encode()
            )
            secrets = boto3.client("secretsmanager", region_name=REGION)
            secrets.create_secret(Name=WEBHOOK_SECRET, SecretString=server.url(SLACK))
            yield world
    deps.cache_clear()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, server: WebhookServer) -> Iterator[e2e.World]:
    with _world(monkeypatch, server, e2e.POLICY + WATCH + NOTIFY, SCAN_AT - timedelta(minutes=10)) as built:
        yield built


def _cloud_maintenance(world: e2e.World) -> list[dict[str, Any]]:
    """What AWS has scheduled: a reboot of prd-web-1 before the window, a system update of a
    single-AZ database (moto's) after it, no Health change. The requests, for the test to read."""
    rds = boto3.client("rds", region_name=REGION)
    arn = rds.create_db_instance(
        DBInstanceIdentifier=DATABASE,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        MasterUsername="admin",
        MasterUserPassword="not-a-secret-1",
        AllocatedStorage=20,
        MultiAZ=False,
    )["DBInstance"]["DBInstanceArn"]
    requests: list[dict[str, Any]] = []

    def instance_status(params: dict[str, Any]) -> dict[str, Any]:
        requests.append(params)
        assert params["Filters"][0]["Name"] == "event.code"  # the watch's call, not a health check's
        event = {
            "InstanceEventId": "instance-event-0d59937288b749b32",
            "Code": "system-reboot",
            "Description": "scheduled reboot",
            "NotBefore": REBOOT_AT,
            "NotAfter": REBOOT_AT + timedelta(hours=2),
        }
        status = {"InstanceId": world.ids["prd-web-1"], "AvailabilityZone": f"{REGION}a", "Events": [event]}
        return {"InstanceStatuses": [status]}

    def pending_actions(params: dict[str, Any]) -> dict[str, Any]:
        requests.append(params)
        action = {
            "Action": "system-update",
            "AutoAppliedAfterDate": datetime(2026, 12, 20, tzinfo=UTC),
            "CurrentApplyDate": datetime(2026, 12, 20, 3, 30, tzinfo=UTC),
            "Description": "New Operating System update is available",
        }
        return {"PendingMaintenanceActions": [{"ResourceIdentifier": arn, "PendingMaintenanceActionDetails": [action]}]}

    def health_events(params: dict[str, Any]) -> dict[str, Any]:
        requests.append(params)
        return {"events": []}

    # The discovered instances name their account (the reservation's owner), so the watch may ask
    # the clients of the current account by id or as None (AwsSessions gives the same client).
    for account in (None, ACCOUNT):
        serve(world.clients("ec2", account, REGION), {"DescribeInstanceStatus": instance_status})
        serve(world.clients("rds", account, REGION), {"DescribePendingMaintenanceActions": pending_actions})
        serve(world.clients("health", account, "us-east-1"), {"DescribeEvents": health_events})
    return requests


def _tick(world: e2e.World, at: datetime, cold: bool = True) -> dict[str, Any]:
    """The timer at `at`, in a fresh container unless `cold` is False."""
    world.clock.set(at)
    if cold:
        deps.cache_clear()
    return world.timer()


def _titles(server: WebhookServer) -> list[str]:
    return [str(p.json["blocks"][0]["text"]["text"]) for p in server.to(SLACK)]


def _scans(world: e2e.World) -> list[Any]:
    return [c for c in world.services.commands if c.parameters.get("Operation") == ["Scan"]]


def _trigger_calls_allowed(world: e2e.World) -> set[str]:
    """The IAM actions the trigger used that its role does not allow (none, if all is well)."""
    allowed = e2e._template_actions()["trigger"]
    made = {
        action
        for caller, service, op, params in world.clients.calls
        if caller == "trigger"
        for action in e2e._iam(service, op, params)
    }
    assert made
    return made - allowed


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # a timer that starts nothing
def test_the_timer_scans_once_reports_once_and_alerts_and_digests_cloud_maintenance_once(
    world: e2e.World, server: WebhookServer
) -> None:
    reads = _cloud_maintenance(world)
    managed = sorted(world.ids[name] for name, *_ in e2e.FLEET)

    # 05:01: the scan slot. One Scan for the managed instances (prd-app-9's agent is lost: refused),
    # and the hourly maintenance read: prd-web-1's reboot is due before the window, one alert.
    first = _tick(world, SCAN_AT + timedelta(minutes=1))
    assert first["start"] is False
    (scan,) = _scans(world)
    assert sorted(scan.instance_ids) == managed and scan.parameters["RebootOption"] == ["NoReboot"]
    assert _titles(server) == ["Cloud maintenance before the next window: tokyo-monthly"]
    (alert,) = server.posts
    alert_text = str(alert.raw)
    assert "prd-web-1" in alert_text and "system-reboot" in alert_text
    assert DATABASE not in alert_text  # after the window: the digest's, not an alert

    # The same period again, and another container: no second scan, no second alert.
    _tick(world, SCAN_AT + timedelta(minutes=6), cold=False)
    _tick(world, SCAN_AT + timedelta(minutes=11))
    assert len(_scans(world)) == 1 and len(server.posts) == 1
    assert world.clients.count("SendCommand") == 2  # refused once for the lost agent, then sent without it

    # 06:01: report_after later. The reports in the configuration bucket, one compliance notice;
    # the hourly read finds the same reboot, already alerted.
    _tick(world, SCAN_AT + timedelta(hours=1, minutes=1))
    _tick(world, SCAN_AT + timedelta(hours=1, minutes=6))
    assert len(server.posts) == 2
    report = server.posts[1]
    assert _titles(server)[1].startswith("Patch compliance")
    s3 = boto3.client("s3", region_name=REGION)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=e2e.BUCKET, Prefix="reports/")["Contents"])
    stem = "reports/compliance-tokyo-monthly-20261208-0601"
    summaries = ["reports/summaries/compliance-tokyo-monthly.json", "reports/summaries/maintenance-tokyo-monthly.json"]
    assert keys == [f"{stem}.csv", f"{stem}.html", f"{stem}.md", "reports/index.html", *summaries]
    overview = s3.get_object(Bucket=e2e.BUCKET, Key="reports/index.html")["Body"].read().decode()
    assert 'href="compliance-tokyo-monthly-20261208-0601.html"' in overview  # the totals, linked to the report
    assert 'href="summaries/maintenance-tokyo-monthly.json"' in overview  # and the hourly read
    assert f"s3://{e2e.BUCKET}/{stem}.html" in str(report.raw)
    csv = s3.get_object(Bucket=e2e.BUCKET, Key=f"{stem}.csv")["Body"].read().decode()
    missing = {line.split(",")[1] for line in csv.splitlines()[1:] if "ALAS2023-2025-801" in line}
    assert missing == {world.ids[name] for name, _, _, os_name, _ in e2e.FLEET if os_name == "linux"}
    html = s3.get_object(Bucket=e2e.BUCKET, Key=f"{stem}.html")["Body"].read().decode()
    assert "<svg" in html and "prd-app-9" in html
    markdown = s3.head_object(Bucket=e2e.BUCKET, Key=f"{stem}.md")
    assert markdown["ContentType"].startswith("text/markdown")

    # 08:01 (Tuesday): the digest, once, naming the reboot and the single-AZ database's update.
    _tick(world, DIGEST_AT + timedelta(minutes=1))
    _tick(world, DIGEST_AT + timedelta(minutes=4))
    assert len(server.posts) == 3 and _titles(server)[2].startswith("Cloud maintenance this week")
    digest = str(server.posts[2].raw)
    assert "prd-web-1" in digest and DATABASE in digest and "single-AZ" in digest

    # The cloud is read once an hour (at the first tick of each hour, and a retry of that tick):
    # a tick a quarter past the hour reads nothing.
    read = len(reads)
    assert read == 3 * 7  # EC2, RDS, Health once each (not once more per account alias) at the seven ticks above
    _tick(world, DIGEST_AT + timedelta(minutes=16))
    assert len(reads) == read and len(server.posts) == 3
    assert world.runtime().store.run_ids() == []  # days before the window: no run
    assert _trigger_calls_allowed(world) == set()


NOTHING_PENDING = f"""
name: tokyo-monthly
kind: non_periodic
schedule: {{monthly: "Second Tuesday Offset+4", at: "02:00", timezone: Asia/Tokyo, duration: 10h}}
rings:
  - {{name: all, select: {{tags: {{PatchPilot: managed}}}}}}
compliance: {{scan: "cron(0 5 * * ? *)", timezone: UTC}}
aws: {{regions: [{REGION}]}}
{NOTIFY}"""


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_non_periodic_window_with_nothing_pending_starts_no_run_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, server: WebhookServer
) -> None:
    day_before = e2e.START - timedelta(hours=12)  # 05:00 UTC, the day's scan slot
    with _world(monkeypatch, server, NOTHING_PENDING, day_before) as world:
        world.services.machines[world.ids["prd-app-9"]].ping = "Online"  # every agent answers
        for machine in world.services.machines.values():  # every released patch is installed
            machine.installed = [
                (p.id, e2e.START - timedelta(days=3))
                for p in world.services.patches
                if p.os == machine.os and p.released < e2e.START
            ]
        assert _tick(world, day_before + timedelta(minutes=1))["start"] is False
        assert len(_scans(world)) == 1

        first = _tick(world, e2e.START + timedelta(minutes=5))
        again = _tick(world, e2e.START + timedelta(minutes=10))  # a retry of the tick, in another container

        assert first["start"] is False and first["reason"].startswith("skipped: nothing pending on 9 machines")
        assert again["start"] is False
        assert world.runtime().store.run_ids() == []
        assert not [c for c in world.services.commands if c.parameters.get("Operation") == ["Install"]]
        (skipped,) = server.to(SLACK)
        assert "Run skipped" in str(skipped.raw) and "tokyo-monthly-20261212-0200" in str(skipped.raw)
        assert _trigger_calls_allowed(world) == set()
