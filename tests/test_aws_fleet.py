"""The AWS fleet adapter (EC2 + SSM) against moto and botocore Stubbers.

moto plays EC2 (instances, tags, snapshots, status checks), S3, STS and CloudWatch. It does not
implement DescribeInstanceInformation, ListCommandInvocations, DescribeInstancePatches or the
replace-root-volume tasks, and its SendCommand with InstanceIds targets every instance of the
region; so SSM (and, for rollback, EC2) is a botocore `Stubber`, which checks every request and
every canned answer against the real service model. Each test's docstring says which it uses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import yaml
from botocore.awsrequest import AWSResponse
from botocore.stub import ANY, Stubber
from clocks import ManualClock
from fake_aws import FleetServices
from moto import mock_aws
from moto.backends import get_backend
from moto.ec2.models.instances import Instance as MotoInstance

from patchpilot.adapters.aws.fleet import DiscoveryResult, Ec2SsmFleet
from patchpilot.adapters.aws.fleet.discovery import Addresses, pools_of
from patchpilot.adapters.aws.sessions import AwsSessions
from patchpilot.engine.messages import (
    CheckHealth,
    InstallPatches,
    InstallTarget,
    Outcome,
    ProbeAgents,
    RestoreTarget,
    ReturnMachines,
    RollBack,
    StartMachines,
    TakeSnapshots,
)
from patchpilot.inventory import Instance
from patchpilot.planning.planner import plan
from patchpilot.policy import parse_policy
from patchpilot.policy.model import HealthChecks, HealthScript
from patchpilot.ports import (
    DiscoveryReadRefusedError,
    InProgress,
    PoolsUnreadableError,
    Progress,
    ScalingGroupsUnreadableError,
)

T0 = datetime(2025, 1, 14, 22, 0, tzinfo=UTC)
ACCOUNT = "123456789012"  # moto's default account
REGION = "eu-west-1"
RUN = "nightly-20250114-2200-ab12"
BUCKET = "patchpilot-overrides"
PLUGIN = "aws:runShellScript"
INSTALLED = ["Installed", "InstalledOther", "InstalledPendingReboot"]


# ---------------------------------------------------------------- the harness


class Harness:
    """The client factory handed to the fleet: moto clients, with SSM (and optionally EC2)
    wrapped in an active Stubber; every API call is recorded with its parameters."""

    def __init__(self, *, stub_ec2: bool = False) -> None:
        self.stub_ec2 = stub_ec2
        self.clients: dict[tuple[str, str | None, str], Any] = {}
        self.stubbers: dict[tuple[str, str], Stubber] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self._last: dict[str, Any] = {}

    def __call__(self, service: str, account: str | None, region: str) -> Any:
        key = (service, account, region)
        if key not in self.clients:
            client = boto3.client(service, region_name=region)
            # The API parameters as given, then the call itself (first, so it also sees the
            # calls a Stubber answers, which ends the event).
            client.meta.events.register_first("before-parameter-build.*.*", self._given)
            client.meta.events.register_first("before-call.*.*", self._record)
            if service == "ssm" or (service == "ec2" and self.stub_ec2):
                stubber = Stubber(client)
                stubber.activate()
                self.stubbers[(service, region)] = stubber
            self.clients[key] = client
        return self.clients[key]

    def _given(self, event_name: str, params: dict[str, Any], **_: Any) -> None:
        self._last = dict(params)

    def _record(self, event_name: str, **_: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        self.calls.append((service, operation, self._last))

    def stub(self, service: str = "ssm", region: str = REGION) -> Stubber:
        self(service, None, region)
        return self.stubbers[(service, region)]

    def count(self, operation: str) -> int:
        return sum(1 for _, op, _ in self.calls if op == operation)

    def params(self, operation: str) -> list[dict[str, Any]]:
        return [params for _, op, params in self.calls if op == operation]

    def done(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def harness(aws: None) -> Harness:
    return Harness()


def make_fleet(harness: Harness, clock: ManualClock, **kwargs: Any) -> Ec2SsmFleet:
    return Ec2SsmFleet(harness, clock, default_region=REGION, **kwargs)


def ec2() -> Any:
    return boto3.client("ec2", region_name=REGION)


@functools.cache
def image(windows: bool = False) -> str:
    """A moto stock AMI (the same in every mock) of the wanted platform."""
    images = ec2().describe_images(Owners=["amazon"])["Images"]
    return next(i["ImageId"] for i in images if (i.get("Platform") == "windows") == windows)


def launch(
    count: int = 1, *, tags: dict[str, str] | None = None, windows: bool = False, data_volume: bool = False
) -> list[Instance]:
    """Real (moto) instances, returned as PatchPilot sees them."""
    extra: dict[str, Any] = {}
    if data_volume:
        extra["BlockDeviceMappings"] = [
            {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}},
            {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 20}},
        ]
    if tags:
        extra["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    answer = ec2().run_instances(
        ImageId=image(windows), MinCount=count, MaxCount=count, Placement={"AvailabilityZone": f"{REGION}a"}, **extra
    )
    return [
        Instance(
            id=i["InstanceId"], cloud="aws", region=REGION, os="windows" if windows else "linux", zone=f"{REGION}a"
        )
        for i in answer["Instances"]
    ]


def fake(count: int, *, os: str = "linux", prefix: str = "0") -> list[Instance]:
    """Instances that exist only for SSM (stubbed): ids in the real id format."""
    return [
        Instance(id=f"i-{prefix}{index:016x}"[:19], cloud="aws", region=REGION, os=os)  # type: ignore[arg-type]
        for index in range(count)
    ]


def outcomes(progress: Progress) -> dict[str, Outcome]:
    assert not isinstance(progress, InProgress), progress
    return {o.id: o for o in progress}


# ---------------------------------------------------------------- canned SSM answers


def info(instance_id: str, ping: str = "Online") -> dict[str, Any]:
    return {"InstanceId": instance_id, "PingStatus": ping, "AgentVersion": "3.3.1142.0", "PlatformType": "Linux"}


def expect_agents(
    stub: Stubber, ids: list[str], offline: dict[str, str] | None = None, unmanaged: set[str] = frozenset()
) -> None:
    """One DescribeInstanceInformation per 50 ids (sorted), as the fleet asks."""
    offline = offline or {}
    ordered = sorted(ids)
    for start in range(0, len(ordered), 50):
        chunk = ordered[start : start + 50]
        answer = [info(i, offline.get(i, "Online")) for i in chunk if i not in unmanaged]
        stub.add_response(
            "describe_instance_information",
            {"InstanceInformationList": answer},
            {"Filters": [{"Key": "InstanceIds", "Values": chunk}], "MaxResults": 50},
        )


def ssm_command(
    params: dict[str, Any], status: str = "InProgress", command_id: str | None = None, requested: datetime = T0
) -> dict[str, Any]:
    """ListCommands' view of a command the fleet sent with `params`."""
    ids = params["InstanceIds"]
    done = len(ids) if status not in ("Pending", "InProgress") else 0
    return {
        "CommandId": command_id or str(uuid.uuid4()),
        "DocumentName": params["DocumentName"],
        "Comment": params["Comment"],
        "InstanceIds": ids,
        "Parameters": params["Parameters"],
        "RequestedDateTime": requested,
        "Status": status,
        "TargetCount": len(ids),
        "CompletedCount": done,
    }


def expect_list_commands(stub: Stubber, document: str, commands: list[dict[str, Any]], now: datetime = T0) -> None:
    """ListCommands for the document, over the last 7 days (the fleet's default lookback)."""
    after = (now - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stub.add_response(
        "list_commands",
        {"Commands": commands},
        {
            "Filters": [{"key": "DocumentName", "value": document}, {"key": "InvokedAfter", "value": after}],
            "MaxResults": 50,
        },
    )


def expect_send(stub: Stubber, expected: dict[str, Any] | None = None) -> None:
    stub.add_response("send_command", {"Command": {"CommandId": str(uuid.uuid4()), "Status": "Pending"}}, expected)


def invocation(
    command_id: str, instance_id: str, status: str = "Success", details: str | None = None
) -> dict[str, Any]:
    return {
        "CommandId": command_id,
        "InstanceId": instance_id,
        "Status": status,
        "StatusDetails": details or status,
        "RequestedDateTime": T0,
    }


def expect_invocations(stub: Stubber, command_id: str, items: list[dict[str, Any]], details: bool = False) -> None:
    stub.add_response(
        "list_command_invocations",
        {"CommandInvocations": items},
        {"CommandId": command_id, "Details": details, "MaxResults": 50},
    )


def expect_patches(stub: Stubber, instance_id: str, patches: list[tuple[str, str, datetime]]) -> None:
    stub.add_response(
        "describe_instance_patches",
        {
            "Patches": [
                {
                    "Title": title,
                    "KBId": kb,
                    "Classification": "Security",
                    "Severity": "Important",
                    "State": "Installed",
                    "InstalledTime": at,
                }
                for kb, title, at in patches
            ]
        },
        {"InstanceId": instance_id, "Filters": [{"Key": "State", "Values": INSTALLED}], "MaxResults": 100},
    )


# ---------------------------------------------------------------- discovery


def test_discovery_maps_instances_and_marks_offline_and_unmanaged_agents(harness: Harness, clock: ManualClock) -> None:
    """moto: EC2 instances and tags; Stubber: DescribeInstanceInformation."""
    web = launch(2, tags={"Name": "web", "Ring": "canary", "Team": "shop"})
    win = launch(1, tags={"Name": "dc-01", "Ring": "prod", "PatchPilotLivePatch": "enabled"}, windows=True)
    live = launch(1, tags={"Name": "klp", "Ring": "prod", "PatchPilotLivePatch": "Enabled"})
    stopped = launch(1, tags={"Ring": "prod"})
    ec2().stop_instances(InstanceIds=[stopped[0].id])
    launch(1, tags={"Ring": "elsewhere"})  # selected by no ring
    pol = parse_policy(
        f"""
name: nightly
rings:
  - {{name: canary, select: {{tags: {{Ring: canary}}}}}}
  - {{name: prod, select: {{tags: {{Ring: [prod, production]}}}}}}
aws: {{regions: [{REGION}]}}
"""
    )
    stub = harness.stub()
    ids = [i.id for i in [*web, *win, *stopped, *live]]
    expect_agents(
        stub, ids, offline={win[0].id: "ConnectionLost", stopped[0].id: "ConnectionLost"}, unmanaged={web[1].id}
    )

    result = make_fleet(harness, clock).discover(pol)

    harness.done()
    assert isinstance(result, DiscoveryResult)
    found = {i.id: i for i in result.instances}
    assert set(found) == set(ids)  # never dropped, the unreachable included
    first = found[web[0].id]
    assert (first.cloud, first.region, first.zone, first.os, first.name) == (
        "aws",
        REGION,
        f"{REGION}a",
        "linux",
        "web",
    )
    assert first.tags == {"Name": "web", "Ring": "canary", "Team": "shop"}
    assert first.account == ACCOUNT
    assert found[win[0].id].os == "windows"
    # Kernel Live Patching is read from the PatchPilotLivePatch tag, on Linux only.
    assert [i.id for i in found.values() if i.hotpatch] == [live[0].id]
    reasons = {i.id: reason for i, reason in result.unreachable}
    assert reasons == {
        web[1].id: "not a managed instance (no SSM agent registered)",
        win[0].id: "SSM agent ConnectionLost",
        stopped[0].id: "instance stopped; SSM agent ConnectionLost",
    }
    # One DescribeInstances query per ring (EC2 filters AND, rings OR), each with the state filter.
    queries = harness.params("DescribeInstances")
    assert [q["Filters"][1] for q in queries] == [
        {"Name": "tag:Ring", "Values": ["canary"]},
        {"Name": "tag:Ring", "Values": ["prod", "production"]},
    ]
    assert all(q["Filters"][0] == {"Name": "instance-state-name", "Values": ["running", "stopped"]} for q in queries)


def test_discovery_queries_follow_the_rings(harness: Harness, clock: ManualClock) -> None:
    """moto: EC2 tag filters (a "*" value: the tag is present); Stubber: DescribeInstanceInformation."""
    (team,) = launch(1, tags={"Team": "shop"})
    launch(1, tags={"Other": "x"})
    stub = harness.stub()
    any_team = parse_policy(
        f"""
name: teams
rings:
  - {{name: all-teams, select: {{tags: {{Team: "*"}}}}}}
  - {{name: azure-only, select: {{clouds: [azure], tags: {{Ring: canary}}}}}}
aws: {{regions: [{REGION}]}}
"""
    )
    expect_agents(stub, [team.id])
    assert [i.id for i in make_fleet(harness, clock).discover(any_team).instances] == [team.id]
    assert [q["Filters"][1:] for q in harness.params("DescribeInstances")] == [[{"Name": "tag:Team", "Values": ["*"]}]]

    by_os = parse_policy(
        f"""
name: windows
rings: [{{name: windows, select: {{os: [windows]}}}}]
aws: {{regions: [{REGION}]}}
"""
    )
    expect_agents(stub, [i["InstanceId"] for r in ec2().describe_instances()["Reservations"] for i in r["Instances"]])
    assert len(make_fleet(harness, clock).discover(by_os).instances) == 2  # EC2 cannot filter on the OS
    harness.done()


POOLS_POLICY = f"""
name: pools
rings: [{{name: web, select: {{tags: {{Role: web}}}}}}]
rollout: {{pool_budget: 1, disruption_budget: "100%", canary: 0}}
aws: {{regions: [{REGION}]}}
"""


def target_group(name: str, target_type: str = "instance") -> str:
    """A moto ELBv2 target group in the default VPC."""
    vpc = ec2().describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    client = boto3.client("elbv2", region_name=REGION)
    answer = client.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc, TargetType=target_type)
    return str(answer["TargetGroups"][0]["TargetGroupArn"])


def register(arn: str, *target_ids: str) -> None:
    boto3.client("elbv2", region_name=REGION).register_targets(
        TargetGroupArn=arn, Targets=[{"Id": t, "Port": 80} for t in target_ids]
    )


def private_ip(instance: Instance) -> str:
    (reservation,) = ec2().describe_instances(InstanceIds=[instance.id])["Reservations"]
    return str(reservation["Instances"][0]["PrivateIpAddress"])


def test_discovery_fills_traffic_pools_from_target_groups_in_one_read_per_group(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: EC2 instances, ELBv2 target groups (instance and IP targets) and target health;
    Stubber: DescribeInstanceInformation."""
    web = launch(4, tags={"Role": "web"})
    api = target_group("tg-api")
    admin = target_group("tg-admin", "ip")
    empty = target_group("tg-empty")
    register(api, *(i.id for i in web))
    register(admin, private_ip(web[0]), private_ip(web[1]), "10.99.0.1")  # the last: no discovered machine
    expect_agents(harness.stub(), [i.id for i in web])

    result = make_fleet(harness, clock).discover(parse_policy(POOLS_POLICY))

    harness.done()
    pools = {i.id: i.traffic_pools for i in result.instances}
    assert pools == {
        web[0].id: tuple(sorted([api, admin])),
        web[1].id: tuple(sorted([api, admin])),
        web[2].id: (api,),
        web[3].id: (api,),
    }
    assert api.startswith(f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/tg-api/")
    # Batched: one DescribeTargetGroups for the region, one DescribeTargetHealth per target group.
    assert harness.count("DescribeTargetGroups") == 1
    assert harness.count("DescribeTargetHealth") == 3
    assert sorted(p["TargetGroupArn"] for p in harness.params("DescribeTargetHealth")) == sorted([api, admin, empty])
    assert "Targets" not in harness.params("DescribeTargetHealth")[0]  # every target, never one per instance

    # A plan on the discovered fleet keeps the pool budget: one member of tg-api per wave.
    waves = plan(parse_policy(POOLS_POLICY), result.instances).waves
    assert len(waves) == 4
    assert all(sum(api in i.traffic_pools for i in w.instances) <= 1 for w in waves)


def test_discovery_reads_the_target_groups_to_drain_them_without_a_pool_budget(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: EC2, ELBv2; Stubber: DescribeInstanceInformation."""
    web = launch(2, tags={"Role": "web"})
    group = target_group("tg-api")
    register(group, *(i.id for i in web))
    expect_agents(harness.stub(), [i.id for i in web])
    policy = parse_policy(POOLS_POLICY.replace("pool_budget: 1, ", "") + "traffic: {drain: true}\n")

    result = make_fleet(harness, clock).discover(policy)

    assert [i.traffic_pools for i in result.instances] == [(group,), (group,)]


def test_discovery_reads_no_target_groups_without_a_pool_budget(harness: Harness, clock: ManualClock) -> None:
    """moto: EC2, ELBv2; Stubber: DescribeInstanceInformation. Pools cost calls and permissions
    only when the policy uses them."""
    web = launch(2, tags={"Role": "web"})
    register(target_group("tg-api"), *(i.id for i in web))
    expect_agents(harness.stub(), [i.id for i in web])
    policy = parse_policy(POOLS_POLICY.replace("pool_budget: 1, ", ""))

    result = make_fleet(harness, clock).discover(policy)

    assert [i.traffic_pools for i in result.instances] == [(), ()]
    assert harness.count("DescribeTargetGroups") == harness.count("DescribeTargetHealth") == 0


def test_ip_targets_name_the_instance_in_the_target_groups_vpc_or_the_one_peer_with_that_ip() -> None:
    """Pure: overlapping VPC ranges hold one private IP twice; a target outside the group's VPC
    (a peered one) counts only when one discovered instance has its IP."""
    a, b, c, d = (Instance(id=f"i-{n}", cloud="aws", region=REGION, os="linux") for n in "abcd")
    found = [
        (a, "running", Addresses("vpc-a", frozenset({"10.0.0.5"}))),
        (b, "running", Addresses("vpc-b", frozenset({"10.0.0.5", "10.1.0.9"}))),
        (c, "running", Addresses("vpc-c", frozenset({"10.2.0.7"}))),
        (d, "running", Addresses("vpc-d", frozenset({"10.0.0.5"}))),
    ]
    group: Any = {"TargetGroupArn": "arn:tg-ip", "TargetType": "ip", "VpcId": "vpc-b"}
    targets: Any = [{"Target": {"Id": ip}} for ip in ("10.0.0.5", "10.2.0.7", "10.0.0.5", "10.9.9.9")]
    instances: Any = {"TargetGroupArn": "arn:tg-i", "TargetType": "instance", "VpcId": "vpc-a"}
    by_id: Any = [{"Target": {"Id": "i-a"}}, {"Target": {"Id": "i-zzz"}}]

    assert pools_of(found, [(group, targets), (instances, by_id)]) == {
        "i-b": ["arn:tg-ip"],  # 10.0.0.5 in the group's VPC, not i-a's or i-d's
        "i-c": ["arn:tg-ip"],  # peered: the only holder of 10.2.0.7
        "i-a": ["arn:tg-i"],
    }


@pytest.mark.parametrize("operation", ["describe_target_groups", "describe_target_health"])
def test_a_denied_target_group_read_is_said_naming_the_action_never_no_pools(
    harness: Harness, clock: ManualClock, operation: str
) -> None:
    """moto: EC2, ELBv2; Stubber on ELBv2 (AccessDenied, as IAM answers) and SSM."""
    web = launch(1, tags={"Role": "web"})
    register(target_group("tg-api"), web[0].id)
    elbv2 = harness("elbv2", None, REGION)
    stubber = Stubber(elbv2)
    if operation == "describe_target_health":
        real = boto3.client("elbv2", region_name=REGION).describe_target_groups()
        stubber.add_response("describe_target_groups", {"TargetGroups": real["TargetGroups"]}, {"PageSize": 400})
    message = "User: arn:aws:sts::123456789012:assumed-role/discover is not authorized to perform: elasticloadbalancing"
    stubber.add_client_error(operation, "AccessDenied", message, 403)
    stubber.activate()

    with pytest.raises(PoolsUnreadableError) as raised:
        make_fleet(harness, clock).discover(parse_policy(POOLS_POLICY))

    action = "DescribeTargetGroups" if operation == "describe_target_groups" else "DescribeTargetHealth"
    assert raised.value.missing == f"elasticloadbalancing:{action}"
    text = str(raised.value)
    assert f"traffic pools not readable in the current account/{REGION}" in text
    assert f"{action} failed (AccessDenied:" in text
    assert f"rollout.pool_budget (needs elasticloadbalancing:{action})" in text
    stubber.assert_no_pending_responses()


def scaling_group(name: str, count: int, tags: dict[str, str]) -> list[str]:
    """A moto Auto Scaling group of `count` instances carrying `tags`; their ids."""
    client = boto3.client("autoscaling", region_name=REGION)
    template = boto3.client("ec2", region_name=REGION).create_launch_template(
        LaunchTemplateName=f"lt-{name}", LaunchTemplateData={"ImageId": image(), "InstanceType": "t3.micro"}
    )
    client.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplate"]["LaunchTemplateId"]},
        MinSize=count,
        MaxSize=count,
        DesiredCapacity=count,
        AvailabilityZones=[f"{REGION}a"],
        Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in tags.items()],
    )
    (group,) = client.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return sorted(i["InstanceId"] for i in group["Instances"])


def test_discovery_fills_the_auto_scaling_group_and_a_plan_excludes_its_members(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: EC2 instances, an Auto Scaling group (DescribeAutoScalingInstances); Stubber:
    DescribeInstanceInformation. Read without a pool budget too: it is always read."""
    alone = launch(2, tags={"Role": "web"})
    members = scaling_group("asg-web", 2, {"Role": "web"})
    policy = parse_policy(POOLS_POLICY.replace("pool_budget: 1, ", ""))
    expect_agents(harness.stub(), [*(i.id for i in alone), *members])

    result = make_fleet(harness, clock).discover(policy)

    harness.done()
    groups = {i.id: i.scaling_group for i in result.instances}
    assert groups == {alone[0].id: None, alone[1].id: None, members[0]: "asg-web", members[1]: "asg-web"}
    assert harness.count("DescribeAutoScalingInstances") == 1
    (asked,) = harness.params("DescribeAutoScalingInstances")
    assert sorted(asked["InstanceIds"]) == sorted(groups)

    discovered = plan(policy, result.instances)
    assert sorted(i.id for w in discovered.waves for i in w.instances) == sorted(i.id for i in alone)
    assert {e.instance.id: e.reason for e in discovered.excluded} == {
        m: "member of scaling group asg-web: patch its image" for m in members
    }


def test_scaling_groups_are_read_in_batches_of_50_instances(harness: Harness, clock: ManualClock) -> None:
    """moto: EC2 (120 instances: 3 calls of ≤50 ids), Auto Scaling; Stubber: DescribeInstanceInformation."""
    fleet = launch(120, tags={"Role": "web"})
    expect_agents(harness.stub(), [i.id for i in fleet])

    result = make_fleet(harness, clock).discover(parse_policy(POOLS_POLICY.replace("pool_budget: 1, ", "")))

    assert all(i.scaling_group is None for i in result.instances)
    batches = [p["InstanceIds"] for p in harness.params("DescribeAutoScalingInstances")]
    assert [len(b) for b in batches] == [50, 50, 20]
    assert sorted(i for b in batches for i in b) == sorted(i.id for i in fleet)


def test_a_denied_scaling_group_read_is_said_in_one_line_naming_the_action(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: EC2; Stubber on Auto Scaling (AccessDenied, as IAM answers) and SSM."""
    launch(1, tags={"Role": "web"})
    stubber = Stubber(harness("autoscaling", None, REGION))
    message = "User: arn:aws:sts::123456789012:assumed-role/discover is not authorized to perform: autoscaling"
    stubber.add_client_error("describe_auto_scaling_instances", "AccessDenied", message, 403)
    stubber.activate()

    with pytest.raises(ScalingGroupsUnreadableError) as raised:
        make_fleet(harness, clock).discover(parse_policy(POOLS_POLICY.replace("pool_budget: 1, ", "")))

    assert isinstance(raised.value, DiscoveryReadRefusedError)
    assert raised.value.missing == "autoscaling:DescribeAutoScalingInstances"
    text = str(raised.value)
    assert "\n" not in text
    assert text.startswith(f"scaling groups not readable in the current account/{REGION}: ")
    assert "DescribeAutoScalingInstances failed (AccessDenied:" in text
    assert text.endswith("(needs autoscaling:DescribeAutoScalingInstances)")
    stubber.assert_no_pending_responses()


# ---------------------------------------------------------------- probe


def test_probe_asks_ssm_in_bulk_and_names_offline_and_unmanaged_agents(harness: Harness, clock: ManualClock) -> None:
    """Stubber: DescribeInstanceInformation (60 targets: 2 calls of ≤50 ids)."""
    targets = fake(60)
    stub = harness.stub()
    expect_agents(stub, [t.id for t in targets], offline={targets[1].id: "ConnectionLost"}, unmanaged={targets[2].id})

    result = outcomes(make_fleet(harness, clock).probe_agents(ProbeAgents(id="c-probe", run_id=RUN, targets=targets)))

    harness.done()
    assert harness.count("DescribeInstanceInformation") == 2
    assert result[targets[0].id].ok and "online" in result[targets[0].id].detail
    assert not result[targets[1].id].ok and result[targets[1].id].detail == "SSM agent ConnectionLost"
    assert not result[targets[2].id].ok and result[targets[2].id].detail.startswith("not a managed instance")
    assert sum(o.ok for o in result.values()) == 58
    assert all(o.at == T0 for o in result.values())


# ---------------------------------------------------------------- snapshots


def snapshot_command(targets: list[Instance], command_id: str = "c-snap") -> TakeSnapshots:
    return TakeSnapshots(id=command_id, run_id=RUN, wave=2, targets=targets)


def all_snapshots() -> list[dict[str, Any]]:
    """PatchPilot's snapshots (moto also holds one per AMI)."""
    filters = [{"Name": "tag-key", "Values": ["PatchPilotCommand"]}]
    return ec2().describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"]


def test_a_repeated_snapshot_command_creates_nothing_new_and_finds_its_own_by_tag(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: EC2 instances with root and data volumes, CreateSnapshots, DescribeSnapshots."""
    targets = launch(2, data_volume=True)
    command = snapshot_command(targets)

    first = make_fleet(harness, clock).take_snapshots(command)
    assert isinstance(first, InProgress) and first.retry_at > T0
    assert len(all_snapshots()) == 4
    assert harness.count("CreateSnapshots") == 2
    assert harness.count("DescribeSnapshots") == 1  # one for the region, not one per instance

    clock.advance(timedelta(minutes=3))
    again = Harness()
    second = outcomes(make_fleet(again, clock).take_snapshots(command))  # another process
    third = outcomes(make_fleet(again, clock).take_snapshots(command))
    assert again.count("CreateSnapshots") == 0
    assert len(all_snapshots()) == 4
    assert second.keys() == third.keys() == {t.id for t in targets}
    assert [o.items for o in second.values()] == [o.items for o in third.values()]

    tags = {s["SnapshotId"]: {t["Key"]: t["Value"] for t in s.get("Tags", [])} for s in all_snapshots()}
    for target in targets:
        assert second[target.id].ok and len(second[target.id].items) == 2
        for snapshot_id in second[target.id].items:
            assert tags[snapshot_id] == {
                "PatchPilotRun": RUN,
                "PatchPilotWave": "2",
                "PatchPilotCommand": "c-snap",
                "PatchPilotInstance": target.id,
            }
    # Another command snapshots anew.
    make_fleet(again, clock).take_snapshots(snapshot_command(targets, "c-snap-2"))
    assert len(all_snapshots()) == 8


def test_pending_snapshots_are_in_progress_then_complete_with_the_root_volume_first(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: EC2 snapshots, with their state set to pending in moto's backend (moto completes
    snapshots at once)."""
    targets = launch(1, data_volume=True)
    fleet = make_fleet(harness, clock)
    command = snapshot_command(targets)
    assert isinstance(fleet.take_snapshots(command), InProgress)
    backend = get_backend("ec2")[ACCOUNT][REGION]
    for snapshot in backend.snapshots.values():
        snapshot.status = "pending"

    assert isinstance(fleet.take_snapshots(command), InProgress)
    assert harness.count("DescribeInstances") == 0  # the root device is looked up only at the end

    for snapshot in backend.snapshots.values():
        snapshot.status = "completed"
    result = outcomes(fleet.take_snapshots(command))[targets[0].id]
    described = ec2().describe_instances(InstanceIds=[targets[0].id])["Reservations"][0]["Instances"][0]
    root_volume = next(
        m["Ebs"]["VolumeId"] for m in described["BlockDeviceMappings"] if m["DeviceName"] == described["RootDeviceName"]
    )
    by_volume = {s["SnapshotId"]: s["VolumeId"] for s in all_snapshots()}
    assert result.ok and result.detail == "snapshotted 2 volumes"
    assert by_volume[result.items[0]] == root_volume
    assert harness.count("CreateSnapshots") == 1


def test_with_the_waker_snapshots_are_polled_as_a_fallback_only_where_it_hears_from(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: EC2 snapshots. The waker's events come from the stack's own account and region, and
    from those that forward theirs (`WakeScope`): there the next poll comes after `WOKEN_POLLS`
    (the event wakes the run first); elsewhere, as without it."""
    from patchpilot.adapters.aws.fleet import WOKEN_POLLS
    from patchpilot.adapters.aws.fleet.snapshots import SNAPSHOT_POLL
    from patchpilot.adapters.aws.wake_events import WakeScope

    targets = launch(1)
    command = snapshot_command(targets)
    polled = make_fleet(harness, clock).take_snapshots(command)
    woken_fleet = make_fleet(harness, clock, wake=WakeScope(ACCOUNT, REGION))
    woken = woken_fleet.take_snapshots(command.model_copy(update={"id": "other"}))
    assert isinstance(polled, InProgress) and polled.retry_at == T0 + SNAPSHOT_POLL
    assert isinstance(woken, InProgress) and woken.retry_at == T0 + WOKEN_POLLS["snapshot"]

    def placed(account: str | None, region: str) -> TakeSnapshots:
        moved = dataclasses.replace(command.targets[0], account=account, region=region)
        return command.model_copy(update={"targets": [*command.targets, moved]})

    later = woken.retry_at
    member, other_region = "210987654321", "eu-central-1"
    assert woken_fleet._fallback(polled, "snapshot", placed(member, REGION)) == polled
    assert woken_fleet._fallback(polled, "snapshot", placed(None, other_region)) == polled
    forwarding = make_fleet(
        harness, clock, wake=WakeScope(ACCOUNT, REGION, frozenset({member}), frozenset({other_region}))
    )
    for account, region in ((member, REGION), (member, other_region), (ACCOUNT, other_region), (None, other_region)):
        assert forwarding._fallback(polled, "snapshot", placed(account, region)).retry_at == later, (account, region)
    for account, region in (("999988887777", REGION), (member, "ap-south-1")):  # not forwarding: polled as before
        assert forwarding._fallback(polled, "snapshot", placed(account, region)) == polled, (account, region)
    organization = make_fleet(harness, clock, wake=WakeScope(ACCOUNT, REGION, "*", frozenset({other_region})))
    assert organization._fallback(polled, "snapshot", placed("999988887777", other_region)).retry_at == later
    assert organization._fallback(polled, "snapshot", placed("999988887777", "ap-south-1")) == polled


def test_a_snapshot_in_error_or_one_that_cannot_be_made_fails_its_instance(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: EC2 snapshots (one set to error in moto's backend) and CreateSnapshots for an
    instance that does not exist."""
    good, broken = launch(2)
    ghost = Instance(id="i-0123456789abcdef0", cloud="aws", region=REGION, os="linux")
    fleet = make_fleet(harness, clock)
    command = snapshot_command([good, broken, ghost])
    assert isinstance(fleet.take_snapshots(command), InProgress)
    for snapshot in get_backend("ec2")[ACCOUNT][REGION].snapshots.values():
        if any(t["value"] == broken.id for t in snapshot.get_tags()):
            snapshot.status = "error"

    result = outcomes(fleet.take_snapshots(command))

    assert result[good.id].ok
    assert not result[broken.id].ok and "failed" in result[broken.id].detail
    assert not result[ghost.id].ok and result[ghost.id].detail.startswith("CreateSnapshots failed: InvalidInstanceID")


# ---------------------------------------------------------------- install


def install_command(
    targets: list[Instance], only: dict[str, list[str]] | None = None, command_id: str = f"{RUN}:w1:install"
) -> InstallPatches:
    return InstallPatches(
        id=command_id,
        run_id=RUN,
        wave=1,
        targets=[InstallTarget(instance=t, only=(only or {}).get(t.os)) for t in targets],
        classifications=["Critical", "Security"],
    )


def test_install_sends_at_most_50_ids_per_command(harness: Harness, clock: ManualClock) -> None:
    """Stubber: ListCommands and SendCommand (moto's SendCommand would target every instance)."""
    targets = fake(51)
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    ids = sorted(t.id for t in targets)
    for chunk in (ids[:50], ids[50:]):
        expect_send(
            stub,
            {
                "InstanceIds": chunk,
                "DocumentName": "AWS-RunPatchBaseline",
                "Parameters": {"Operation": ["Install"], "RebootOption": ["RebootIfNeeded"]},
                "Comment": ANY,
                "MaxConcurrency": "50",
                "MaxErrors": "100%",
            },
        )

    progress = make_fleet(harness, clock).install_patches(install_command(targets))

    harness.done()
    assert isinstance(progress, InProgress) and progress.retry_at == T0 + timedelta(minutes=5)
    comments = [p["Comment"] for p in harness.params("SendCommand")]
    assert len(comments) == 2 and len(set(comments)) == 2
    assert all(len(c) <= 100 and c.startswith("patchpilot ") and RUN in c for c in comments)


def test_a_pinned_ring_installs_exactly_the_pinned_patches_through_an_override_list(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: S3 (the override bucket); Stubber: ListCommands and SendCommand."""
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    linux, windows = fake(2, prefix="1"), fake(1, os="windows", prefix="2")
    pinned = {"linux": ["openssl.x86_64", "kernel.x86_64"], "windows": ["KB5048661"]}
    command = install_command([*linux, *windows], only=pinned)
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    expect_send(stub)
    expect_send(stub)

    progress = make_fleet(harness, clock, override_bucket=BUCKET, override_bucket_region=REGION).install_patches(
        command
    )

    harness.done()
    assert isinstance(progress, InProgress)
    sent = {tuple(p["InstanceIds"]): p for p in harness.params("SendCommand")}
    s3 = boto3.client("s3", region_name=REGION)
    prefix = f"runs/{RUN}/{RUN}_w1_install"
    for os, group in (("linux", linux), ("windows", windows)):
        params = sent[tuple(sorted(t.id for t in group))]
        url = params["Parameters"]["InstallOverrideList"][0]
        assert url == f"s3://{BUCKET}/{prefix}/{os}.yaml"
        body = s3.get_object(Bucket=BUCKET, Key=url.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
        assert yaml.safe_load(body) == {"patches": [{"id": patch} for patch in pinned[os]]}


def test_a_machines_patch_exceptions_leave_the_pinned_set_on_that_machine_only(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: S3 (the override bucket); Stubber: ListCommands and SendCommand. A patch exception
    (`InstallTarget.exclude`, docs/governance.md) drops the patch from that machine's override list."""
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    legacy, web = fake(1, prefix="1"), fake(1, prefix="2")
    pinned = ["openssl-3.0.13-1.el9", "kernel-6.1.90-1"]
    targets = [
        InstallTarget(instance=legacy[0], only=pinned, exclude=["openssl"]),
        InstallTarget(instance=web[0], only=pinned),
    ]
    command = install_command([*legacy, *web]).model_copy(update={"targets": targets})
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    expect_send(stub)
    expect_send(stub)

    make_fleet(harness, clock, override_bucket=BUCKET, override_bucket_region=REGION).install_patches(command)

    harness.done()
    s3 = boto3.client("s3", region_name=REGION)
    lists = {}
    for params in harness.params("SendCommand"):
        url = params["Parameters"]["InstallOverrideList"][0]
        body = s3.get_object(Bucket=BUCKET, Key=url.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
        lists[tuple(params["InstanceIds"])] = [p["id"] for p in yaml.safe_load(body)["patches"]]
    assert lists == {(legacy[0].id,): ["kernel-6.1.90-1"], (web[0].id,): pinned}


def emergency_command(targets: list[Instance], fixes: list[str], **kwargs: Any) -> InstallPatches:
    """An emergency run's first ring: only the advisory's fixes, no classification."""
    return install_command(targets, **kwargs).model_copy(update={"classifications": [], "include": fixes})


def override_shape_errors(document: Any) -> list[str]:
    """What the SSM model's BaselineOverride shape finds wrong in each baseline of the document."""
    from botocore.session import get_session
    from botocore.validate import ParamValidator

    shape = get_session().get_service_model("ssm").shape_for("BaselineOverride")
    assert isinstance(document, list) and document
    reports = [ParamValidator().validate(entry, shape) for entry in document]
    return [report.generate_report() for report in reports if report.has_errors()] + [
        f"{entry} has no OperatingSystem" for entry in document if "OperatingSystem" not in entry
    ]


def test_an_emergency_first_ring_installs_exactly_the_fixes_through_a_baseline_override(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: S3 (the override bucket, read back); Stubber: ListCommands and SendCommand, whose
    parameters the Stubber checks exactly; the documents are checked against the SSM model's
    BaselineOverride shape."""
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    linux, windows = fake(2, prefix="1"), fake(1, os="windows", prefix="2")
    command = emergency_command([*linux, *windows], ["openssl", "KB5048661"]).model_copy(
        update={"exclude": ["kernel*"]}
    )
    prefix = f"runs/{RUN}/{RUN}_w1_install"
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    for os, group in (("linux", linux), ("windows", windows)):
        expect_send(
            stub,
            {
                "InstanceIds": sorted(t.id for t in group),
                "DocumentName": "AWS-RunPatchBaseline",
                "Parameters": {
                    "Operation": ["Install"],
                    "RebootOption": ["RebootIfNeeded"],
                    "BaselineOverride": [f"s3://{BUCKET}/{prefix}/{os}-baseline.json"],
                },
                "Comment": ANY,
                "MaxConcurrency": "50",
                "MaxErrors": "100%",
            },
        )
    fleet = make_fleet(harness, clock, override_bucket=BUCKET, override_bucket_region=REGION)

    assert isinstance(fleet.install_patches(command), InProgress)

    harness.done()
    s3 = boto3.client("s3", region_name=REGION)
    documents = {
        os: json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{os}-baseline.json")["Body"].read())
        for os in ("linux", "windows")
    }
    assert override_shape_errors(documents["linux"]) == [] and override_shape_errors(documents["windows"]) == []
    assert documents["windows"] == [
        {
            "OperatingSystem": "WINDOWS",
            "ApprovalRules": {"PatchRules": []},
            "ApprovedPatches": ["KB5048661"],
            "ApprovedPatchesComplianceLevel": "CRITICAL",
        }
    ]
    systems = {entry["OperatingSystem"] for entry in documents["linux"]}
    assert {"AMAZON_LINUX_2", "AMAZON_LINUX_2023", "REDHAT_ENTERPRISE_LINUX", "UBUNTU", "SUSE"} <= systems
    assert "WINDOWS" not in systems and len(systems) == len(documents["linux"])
    for entry in documents["linux"]:
        assert entry["ApprovalRules"] == {"PatchRules": []}  # no rule approves anything else
        assert entry["ApprovedPatches"] == ["openssl"] and entry["ApprovedPatchesEnableNonSecurity"] is True
        assert entry["RejectedPatches"] == ["kernel*"] and entry["RejectedPatchesAction"] == "BLOCK"

    # Redelivered while the commands run: found by their comments, nothing written or sent again.
    sent = [ssm_command(p) for p in harness.params("SendCommand")]
    expect_list_commands(stub, "AWS-RunPatchBaseline", sent, clock.now())
    assert isinstance(fleet.install_patches(command), InProgress)
    harness.done()
    assert harness.count("SendCommand") == 2 and harness.count("PutObject") == 2
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert sorted(keys) == [f"{prefix}/linux-baseline.json", f"{prefix}/windows-baseline.json"]


# ---------------------------------------------------------------- patch exceptions on a first ring
# The effective-baseline reads (GetPatchBaselineForPatchGroup, GetDefaultPatchBaseline,
# GetPatchBaseline) are Stubber answers: moto implements none of them as Patch Manager does (no
# AWS-provided default baselines, no patch-group fallback), and the Stubber checks every request
# and canned answer against the SSM model.


def platform(instance_id: str, name: str, version: str) -> dict[str, Any]:
    """DescribeInstanceInformation's record of a Linux instance running `name` `version`."""
    return {**info(instance_id), "PlatformName": name, "PlatformVersion": version}


def baseline_answer(baseline_id: str, system: str, approved: list[str], rejected: list[str]) -> dict[str, Any]:
    """GetPatchBaseline's answer: rules, lists and the dates, which an override must not carry."""
    return {
        "BaselineId": baseline_id,
        "Name": f"{baseline_id}-name",
        "OperatingSystem": system,
        "GlobalFilters": {"PatchFilters": [{"Key": "PRODUCT", "Values": ["*"]}]},
        "ApprovalRules": {
            "PatchRules": [
                {
                    "PatchFilterGroup": {"PatchFilters": [{"Key": "CLASSIFICATION", "Values": ["Security"]}]},
                    "ComplianceLevel": "CRITICAL",
                    "ApproveAfterDays": 7,
                    "EnableNonSecurity": False,
                }
            ]
        },
        "ApprovedPatches": approved,
        "ApprovedPatchesComplianceLevel": "HIGH",
        "ApprovedPatchesEnableNonSecurity": False,
        "RejectedPatches": rejected,
        "RejectedPatchesAction": "ALLOW_AS_DEPENDENCY",
        "Sources": [],
        "CreatedDate": T0,
        "ModifiedDate": T0,
        "Description": "the team's baseline",
    }


def held_targets() -> tuple[list[Instance], list[InstallTarget]]:
    """Two AL2023 machines of patch group `web` and an Ubuntu one without a patch group, all three
    under a patch exception for openssl; a fourth machine without one."""
    web = [dataclasses.replace(i, tags={"PatchGroup": "web"}) for i in fake(2, prefix="6")]
    plain, free = fake(1, prefix="7"), fake(1, prefix="8")
    targets = [
        *(InstallTarget(instance=i, exclude=["openssl"]) for i in [*web, *plain]),
        InstallTarget(instance=free[0]),
    ]
    return [*web, *plain, *free], targets


def test_a_first_ring_holds_a_patch_exception_through_each_machines_own_baseline(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: S3 (the override bucket, read back); Stubber: ListCommands, DescribeInstanceInformation,
    GetPatchBaselineForPatchGroup, GetDefaultPatchBaseline, GetPatchBaseline (each asked once per
    patch group / system / baseline, not per machine) and SendCommand (parameters checked exactly).
    An unpinned install leaves the choice to the machine's baseline: under a patch exception it
    gets that very baseline as its BaselineOverride, with the excepted patch rejected."""
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    instances, targets = held_targets()
    web, plain, free = instances[:2], instances[2], instances[3]
    command = install_command(instances).model_copy(update={"targets": targets, "exclude": ["telnet*", "KB1"]})
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    held = sorted(i.id for i in [*web, plain])
    records = [platform(i.id, "Amazon Linux", "2023") for i in web] + [platform(plain.id, "Ubuntu", "22.04")]
    stub.add_response(
        "describe_instance_information",
        {"InstanceInformationList": sorted(records, key=lambda r: r["InstanceId"])},
        {"Filters": [{"Key": "InstanceIds", "Values": held}], "MaxResults": 50},
    )
    # The parts in their order: the free machine (no reads), the Ubuntu one, the web group.
    stub.add_response(
        "get_default_patch_baseline",
        {"BaselineId": "pb-0ubuntu00000000001", "OperatingSystem": "UBUNTU"},
        {"OperatingSystem": "UBUNTU"},
    )
    stub.add_response(
        "get_patch_baseline",
        baseline_answer("pb-0ubuntu00000000001", "UBUNTU", [], []),
        {"BaselineId": "pb-0ubuntu00000000001"},
    )
    stub.add_response(
        "get_patch_baseline_for_patch_group",
        {"BaselineId": "pb-0web0000000000001", "PatchGroup": "web", "OperatingSystem": "AMAZON_LINUX_2023"},
        {"PatchGroup": "web", "OperatingSystem": "AMAZON_LINUX_2023"},
    )
    stub.add_response(
        "get_patch_baseline",
        baseline_answer("pb-0web0000000000001", "AMAZON_LINUX_2023", ["openssl-3.0.13-1", "curl"], ["telnet"]),
        {"BaselineId": "pb-0web0000000000001"},
    )
    prefix = f"runs/{RUN}/{RUN}_w1_install"
    plain_send = {
        "DocumentName": "AWS-RunPatchBaseline",
        "Comment": ANY,
        "MaxConcurrency": "50",
        "MaxErrors": "100%",
    }
    expect_send(
        stub,
        {
            **plain_send,
            "InstanceIds": [free.id],
            "Parameters": {"Operation": ["Install"], "RebootOption": ["RebootIfNeeded"]},
        },
    )
    for ids in ([plain.id], sorted(i.id for i in web)):
        expect_send(
            stub,
            {
                **plain_send,
                "InstanceIds": ids,
                "Parameters": {"Operation": ["Install"], "RebootOption": ["RebootIfNeeded"], "BaselineOverride": ANY},
            },
        )
    fleet = make_fleet(harness, clock, override_bucket=BUCKET, override_bucket_region=REGION)

    assert isinstance(fleet.install_patches(command), InProgress)

    harness.done()
    s3 = boto3.client("s3", region_name=REGION)
    documents = {}
    for params in harness.params("SendCommand")[1:]:
        url = params["Parameters"]["BaselineOverride"][0]
        assert url.startswith(f"s3://{BUCKET}/{prefix}/linux-") and url.endswith("-baseline.json")
        body = s3.get_object(Bucket=BUCKET, Key=url.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
        documents[tuple(params["InstanceIds"])] = json.loads(body)
    ubuntu, al2023 = documents[(plain.id,)], documents[tuple(sorted(i.id for i in web))]
    assert override_shape_errors(ubuntu) == [] and override_shape_errors(al2023) == []
    rules = baseline_answer("", "", [], [])
    assert al2023 == [
        {
            "OperatingSystem": "AMAZON_LINUX_2023",
            "GlobalFilters": rules["GlobalFilters"],
            "ApprovalRules": rules["ApprovalRules"],  # the baseline's own rules decide the rest
            "ApprovedPatchesComplianceLevel": "HIGH",
            "ApprovedPatchesEnableNonSecurity": False,
            "Sources": [],
            "ApprovedPatches": ["curl"],  # openssl-3.0.13-1 is excepted: no longer approved
            "RejectedPatches": ["telnet", "openssl", "telnet*"],  # the baseline's, the exception's, the policy's
            "RejectedPatchesAction": "BLOCK",
        }
    ]
    assert ubuntu[0]["OperatingSystem"] == "UBUNTU" and ubuntu[0]["RejectedPatches"] == ["openssl", "telnet*"]
    assert "ApprovedPatches" not in ubuntu[0] and ubuntu[0]["RejectedPatchesAction"] == "BLOCK"

    # Redelivered while the commands run: found by their comments; nothing read, written or sent again.
    sent = [ssm_command(p) for p in harness.params("SendCommand")]
    expect_list_commands(stub, "AWS-RunPatchBaseline", sent, clock.now())
    assert isinstance(fleet.install_patches(command), InProgress)
    harness.done()
    assert harness.count("SendCommand") == 3 and harness.count("PutObject") == 2
    assert harness.count("GetPatchBaseline") == 2 and harness.count("DescribeInstanceInformation") == 1


def test_a_machine_ssm_does_not_name_gets_every_linux_baseline_of_its_patch_group(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: S3; Stubber: ListCommands, DescribeInstanceInformation (no record), one
    GetPatchBaselineForPatchGroup and GetPatchBaseline per Linux system, SendCommand. The agent picks
    the entry of its own system."""
    from patchpilot.adapters.aws.fleet.held_baselines import LINUX_SYSTEMS

    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    machine = dataclasses.replace(fake(1, prefix="9")[0], tags={"Patch Group": "db"})
    command = install_command([machine]).model_copy(
        update={"targets": [InstallTarget(instance=machine, exclude=["kernel*", "KB5048661"])]}
    )
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    expect_agents(stub, [machine.id], unmanaged={machine.id})
    for system in sorted(LINUX_SYSTEMS):
        baseline_id = f"pb-{system.lower().replace('_', ''):0<17}"[:20]
        stub.add_response(
            "get_patch_baseline_for_patch_group",
            {"BaselineId": baseline_id, "PatchGroup": "db", "OperatingSystem": system},
            {"PatchGroup": "db", "OperatingSystem": system},
        )
        stub.add_response(
            "get_patch_baseline", baseline_answer(baseline_id, system, [], []), {"BaselineId": baseline_id}
        )
    expect_send(stub)
    fleet = make_fleet(harness, clock, override_bucket=BUCKET, override_bucket_region=REGION)

    assert isinstance(fleet.install_patches(command), InProgress)

    harness.done()
    url = harness.params("SendCommand")[0]["Parameters"]["BaselineOverride"][0]
    body = boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=url.removeprefix(f"s3://{BUCKET}/"))
    document = json.loads(body["Body"].read())
    assert override_shape_errors(document) == []
    assert sorted(e["OperatingSystem"] for e in document) == sorted(LINUX_SYSTEMS)
    assert all(e["RejectedPatches"] == ["kernel*"] for e in document)  # the KB id is for Windows


def test_a_patch_exception_that_cannot_be_held_back_is_not_installed(harness: Harness, clock: ManualClock) -> None:
    """moto: S3; Stubber: ListCommands, DescribeInstanceInformation, GetDefaultPatchBaseline,
    GetPatchBaseline (AccessDeniedException, as IAM answers; then 50 rejected patches already).
    Installing on such a machine would install the excepted patch: it is not installed, naming why;
    without an override bucket nothing is asked."""
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    machine = fake(1, prefix="a")[0]
    command = install_command([machine]).model_copy(
        update={"targets": [InstallTarget(instance=machine, exclude=["openssl"])]}
    )
    fleet = make_fleet(harness, clock, override_bucket=BUCKET, override_bucket_region=REGION)
    stub = harness.stub()
    record = {"InstanceInformationList": [platform(machine.id, "Red Hat Enterprise Linux", "9.4")]}
    filters = {"Filters": [{"Key": "InstanceIds", "Values": [machine.id]}], "MaxResults": 50}
    for attempt in ("denied", "full"):
        expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
        stub.add_response("describe_instance_information", record, filters)
        stub.add_response(
            "get_default_patch_baseline",
            {"BaselineId": "pb-0redhat0000000001", "OperatingSystem": "REDHAT_ENTERPRISE_LINUX"},
            {"OperatingSystem": "REDHAT_ENTERPRISE_LINUX"},
        )
        if attempt == "denied":
            stub.add_client_error(
                "get_patch_baseline",
                "AccessDeniedException",
                "User is not authorized to perform: ssm:GetPatchBaseline",
                expected_params={"BaselineId": "pb-0redhat0000000001"},
            )
        else:
            full = [f"package-{n}" for n in range(50)]
            stub.add_response(
                "get_patch_baseline",
                baseline_answer("pb-0redhat0000000001", "REDHAT_ENTERPRISE_LINUX", [], full),
                {"BaselineId": "pb-0redhat0000000001"},
            )
        result = outcomes(fleet.install_patches(command))[machine.id]
        harness.done()
        assert not result.ok and result.detail.endswith(
            "so its patch exceptions (openssl) cannot be held back; not installed"
        )
        if attempt == "denied":
            assert "GetPatchBaseline failed: AccessDeniedException" in result.detail
            assert "needs ssm:GetPatchBaseline" in result.detail
        else:
            assert "that is 51, and a Patch Manager baseline override holds at most 50" in result.detail
    assert harness.count("SendCommand") == 0

    result = outcomes(make_fleet(harness, clock).install_patches(command))[machine.id]
    assert not result.ok and "needs an override bucket for BaselineOverride" in result.detail
    harness.done()


def test_an_emergency_first_ring_leaves_a_machines_excepted_fix_out(harness: Harness, clock: ManualClock) -> None:
    """moto: S3; Stubber: ListCommands and SendCommand. A named-only install approves the fixes but
    a machine's excepted ones, which its override rejects; a machine whose every fix is excepted
    installs nothing."""
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    api, web, legacy = fake(1, prefix="b")[0], fake(1, prefix="c")[0], fake(1, prefix="d")[0]
    targets = [
        InstallTarget(instance=api, exclude=["openssl"]),
        InstallTarget(instance=web),
        InstallTarget(instance=legacy, exclude=["openssl", "curl"]),
    ]
    command = emergency_command([api, web, legacy], ["openssl", "curl"]).model_copy(update={"targets": targets})
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    expect_send(stub)
    expect_send(stub)
    fleet = make_fleet(harness, clock, override_bucket=BUCKET, override_bucket_region=REGION)

    assert isinstance(fleet.install_patches(command), InProgress)

    harness.done()
    s3 = boto3.client("s3", region_name=REGION)
    approved = {}
    for params in harness.params("SendCommand"):
        url = params["Parameters"]["BaselineOverride"][0]
        document = json.loads(s3.get_object(Bucket=BUCKET, Key=url.removeprefix(f"s3://{BUCKET}/"))["Body"].read())
        assert override_shape_errors(document) == []
        approved[tuple(params["InstanceIds"])] = (document[0]["ApprovedPatches"], document[0].get("RejectedPatches"))
    assert approved == {(web.id,): (["openssl", "curl"], None), (api.id,): (["curl"], ["openssl"])}
    assert legacy.id not in {i for p in harness.params("SendCommand") for i in p["InstanceIds"]}


def test_an_emergency_later_ring_stays_pinned_by_its_install_override_list(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: S3; Stubber: ListCommands and SendCommand (parameters checked exactly)."""
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    targets = fake(1, prefix="3")
    command = emergency_command(targets, ["openssl"], only={"linux": ["openssl.x86_64:1:3.0.13-1.amzn2023"]})
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    url = f"s3://{BUCKET}/runs/{RUN}/{RUN}_w1_install/linux.yaml"
    expect_send(
        stub,
        {
            "InstanceIds": [targets[0].id],
            "DocumentName": "AWS-RunPatchBaseline",
            "Parameters": {"Operation": ["Install"], "RebootOption": ["RebootIfNeeded"], "InstallOverrideList": [url]},
            "Comment": ANY,
            "MaxConcurrency": "50",
            "MaxErrors": "100%",
        },
    )
    fleet = make_fleet(harness, clock, override_bucket=BUCKET, override_bucket_region=REGION)
    assert isinstance(fleet.install_patches(command), InProgress)
    harness.done()


def test_an_emergency_install_that_patch_manager_cannot_express_is_refused_per_instance(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: S3; Stubber: ListCommands and SendCommand. 51 Linux packages exceed the 50
    ApprovedPatches of a baseline override: the Linux instance is refused naming the limit, the
    Windows one still installs its KB, and a fleet without a bucket installs nothing."""
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    linux, windows = fake(1, prefix="4"), fake(1, os="windows", prefix="5")
    packages = [f"package-{index}" for index in range(51)]
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    expect_send(stub)
    fleet = make_fleet(harness, clock, override_bucket=BUCKET, override_bucket_region=REGION)

    assert isinstance(fleet.install_patches(emergency_command([*linux, *windows], [*packages, "KB1"])), InProgress)
    harness.done()
    assert [p["InstanceIds"] for p in harness.params("SendCommand")] == [[windows[0].id]]

    # Only the refused instance left: its outcome names the limit; nothing is asked or sent.
    refused = outcomes(fleet.install_patches(emergency_command(linux, [*packages, "KB1"], command_id="c2")))
    assert not refused[linux[0].id].ok
    assert "at most 50 (ApprovedPatches)" in refused[linux[0].id].detail
    # Only Linux fixes for a Windows instance: nothing to install, and no bucket: not installed.
    result = outcomes(make_fleet(harness, clock).install_patches(emergency_command([*windows, *linux], ["openssl"])))
    assert result[windows[0].id].ok and result[windows[0].id].detail.startswith("nothing to install")
    assert not result[linux[0].id].ok and "override bucket for BaselineOverride" in result[linux[0].id].detail
    harness.done()
    assert harness.count("SendCommand") == 1


def test_a_pinned_set_without_an_override_bucket_is_not_installed(harness: Harness, clock: ManualClock) -> None:
    """Stubber: SSM (no call expected)."""
    targets = fake(1)
    harness.stub()
    result = outcomes(make_fleet(harness, clock).install_patches(install_command(targets, only={"linux": ["a"]})))
    assert not result[targets[0].id].ok and "override bucket" in result[targets[0].id].detail
    assert harness.calls == []


def test_a_repeated_install_finds_its_commands_and_never_sends_again(harness: Harness, clock: ManualClock) -> None:
    """Stubber: ListCommands, SendCommand, ListCommandInvocations, DescribeInstancePatches."""
    targets = fake(3)
    ids = sorted(t.id for t in targets)
    command = install_command(targets)
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    expect_send(stub)
    fleet = make_fleet(harness, clock)
    assert isinstance(fleet.install_patches(command), InProgress)
    params = harness.params("SendCommand")[0]

    # Polled (or redelivered) while it runs: found by its comment, nothing sent, no invocations read.
    clock.advance(timedelta(minutes=5))
    running = ssm_command(params, "InProgress", command_id="11111111-2222-3333-4444-555555555555")
    someone_elses = {**running, "CommandId": "99999999-2222-3333-4444-555555555555", "Comment": "weekly scan"}
    expect_list_commands(stub, "AWS-RunPatchBaseline", [someone_elses, running], clock.now())
    assert isinstance(fleet.install_patches(command), InProgress)

    clock.advance(timedelta(minutes=30))
    finished = ssm_command(params, "Success", command_id=running["CommandId"])
    expect_list_commands(stub, "AWS-RunPatchBaseline", [someone_elses, finished], clock.now())
    expect_invocations(stub, finished["CommandId"], [invocation(finished["CommandId"], i) for i in ids])
    for instance_id in ids:
        expect_patches(
            stub,
            instance_id,
            [
                ("openssl.x86_64", "openssl.x86_64:1:3.0.8-1.amzn2023", T0 + timedelta(minutes=12)),
                ("kernel.x86_64", "kernel.x86_64:0:6.1.119-129.201", T0 + timedelta(minutes=13)),
                ("bash.x86_64", "bash.x86_64:0:5.2.15-1", T0 - timedelta(days=40)),  # installed long before
            ],
        )
    result = outcomes(fleet.install_patches(command))

    harness.done()
    assert harness.count("SendCommand") == 1
    assert all(o.ok for o in result.values())
    assert result[ids[0]].items == ["openssl.x86_64", "kernel.x86_64"]
    assert result[ids[0]].detail == "2 patches installed, rebooted if needed"
    assert result[ids[0]].at == clock.now()


def test_invocation_statuses_map_to_outcomes(harness: Harness, clock: ManualClock) -> None:
    """Stubber: ListCommands, SendCommand, ListCommandInvocations, DescribeInstancePatches."""
    targets = fake(6)
    ids = sorted(t.id for t in targets)
    command = install_command(targets)
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    expect_send(stub)
    fleet = make_fleet(harness, clock)
    fleet.install_patches(command)
    finished = ssm_command(harness.params("SendCommand")[0], "Failed")
    cid = finished["CommandId"]
    expect_list_commands(stub, "AWS-RunPatchBaseline", [finished], clock.now())
    expect_invocations(
        stub,
        cid,
        [
            invocation(cid, ids[0], "Success"),
            invocation(cid, ids[1], "Failed", "Failed"),
            invocation(cid, ids[2], "TimedOut", "ExecutionTimedOut"),
            invocation(cid, ids[3], "Cancelled", "Cancelled"),
            invocation(cid, ids[4], "Failed", "Undeliverable"),
            # ids[5]: no invocation at all (terminated meanwhile)
        ],
    )
    expect_patches(stub, ids[0], [])

    result = outcomes(fleet.install_patches(command))

    harness.done()
    assert result[ids[0]].ok and result[ids[0]].items == []
    assert [result[i].detail for i in ids[1:]] == [
        "AWS-RunPatchBaseline Failed",
        "AWS-RunPatchBaseline TimedOut (ExecutionTimedOut)",
        "AWS-RunPatchBaseline Cancelled",
        "AWS-RunPatchBaseline Failed (Undeliverable)",
        "no AWS-RunPatchBaseline invocation reported by SSM",
    ]
    assert not any(result[i].ok for i in ids[1:])


def test_an_instance_ssm_refuses_does_not_hold_back_the_rest_of_its_chunk(harness: Harness, clock: ManualClock) -> None:
    """Stubber: ListCommands, SendCommand (InvalidInstanceId, then the ready subset),
    DescribeInstanceInformation."""
    targets = fake(3)
    ids = sorted(t.id for t in targets)
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    stub.add_client_error("send_command", "InvalidInstanceId", "Instances not in a valid state for account")
    expect_agents(stub, ids, offline={ids[1]: "ConnectionLost"})
    expect_send(
        stub,
        {
            "InstanceIds": [ids[0], ids[2]],
            "DocumentName": ANY,
            "Parameters": ANY,
            "Comment": ANY,
            "MaxConcurrency": ANY,
            "MaxErrors": ANY,
        },
    )
    fleet = make_fleet(harness, clock)
    command = install_command(targets)
    assert isinstance(fleet.install_patches(command), InProgress)
    first, retried = harness.params("SendCommand")
    assert first["Comment"] == retried["Comment"]

    clock.advance(timedelta(minutes=5))
    done = ssm_command(retried, "Success")
    expect_list_commands(stub, "AWS-RunPatchBaseline", [done], clock.now())
    expect_invocations(stub, done["CommandId"], [invocation(done["CommandId"], i) for i in (ids[0], ids[2])])
    expect_patches(stub, ids[0], [])
    expect_patches(stub, ids[2], [])
    result = outcomes(fleet.install_patches(command))
    harness.done()
    assert result[ids[0]].ok and result[ids[2]].ok
    assert not result[ids[1]].ok and result[ids[1]].detail.startswith("not sent: SSM did not accept the instance")


def test_reboot_never_sends_no_reboot_and_max_duration_bounds_the_start(harness: Harness, clock: ManualClock) -> None:
    """Stubber: ListCommands, SendCommand."""
    targets = fake(1)
    command = install_command(targets).model_copy(update={"reboot": "never", "max_duration": timedelta(hours=2)})
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    expect_send(stub)
    make_fleet(harness, clock).install_patches(command)
    sent = harness.params("SendCommand")[0]
    assert sent["Parameters"]["RebootOption"] == ["NoReboot"]
    assert sent["TimeoutSeconds"] == 7200


def test_a_hotpatch_only_target_gets_its_own_send_command_without_a_reboot(
    harness: Harness, clock: ManualClock
) -> None:
    """Stubber: ListCommands, SendCommand. `InstallTarget.reboot` (patchpilot/hotpatch.py) splits the part."""
    live, other = fake(2)
    command = install_command([live, other])
    command = command.model_copy(
        update={"targets": [command.targets[0].model_copy(update={"reboot": "never"}), command.targets[1]]}
    )
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    expect_send(stub)
    expect_send(stub)
    make_fleet(harness, clock).install_patches(command)
    harness.done()
    sent = {tuple(p["InstanceIds"]): p["Parameters"]["RebootOption"] for p in harness.params("SendCommand")}
    assert sent == {(live.id,): ["NoReboot"], (other.id,): ["RebootIfNeeded"]}


# ---------------------------------------------------------------- health


@pytest.fixture
def instance_status(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Instance status per instance id, overriding moto's (always "ok" for a running instance)."""
    overrides: dict[str, str] = {}
    original = MotoInstance.instance_status

    def status(self: MotoInstance) -> dict[str, Any]:
        if self.id in overrides:
            return {"Status": overrides[self.id]}
        return original.fget(self)  # type: ignore[attr-defined,no-any-return]

    monkeypatch.setattr(MotoInstance, "instance_status", property(status))
    return overrides


def health_command(
    targets: list[Instance], checks: HealthChecks | None = None, command_id: str = "c-health"
) -> CheckHealth:
    return CheckHealth(id=command_id, run_id=RUN, wave=1, targets=targets, checks=checks or HealthChecks())


def alarm(name: str, state: str) -> None:
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    cloudwatch.put_metric_alarm(
        AlarmName=name,
        MetricName="5XXError",
        Namespace="Shop",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanThreshold",
    )
    cloudwatch.set_alarm_state(AlarmName=name, StateValue=state, StateReason="test")


def test_health_passes_with_status_checks_agent_alarms_and_http(
    harness: Harness, clock: ManualClock, instance_status: dict[str, str]
) -> None:
    """moto: EC2 instances, status checks, tags, CloudWatch alarms; Stubber:
    DescribeInstanceInformation; a fake http_get."""
    targets = launch(2, tags={"Name": "web"})
    alarm("shop-5xx", "OK")
    for t in targets:
        alarm(f"cpu-{t.id}", "OK")
    asked: list[str] = []

    def http_get(url: str, timeout: float) -> int:
        asked.append(url)
        return 200

    checks = HealthChecks(alarms=["shop-5xx", "cpu-{id}"], http=["http://{private_ip}:8080/health?vm={id}"])
    expect_agents(harness.stub(), [t.id for t in targets])

    result = outcomes(make_fleet(harness, clock, http_get=http_get).check_health(health_command(targets, checks)))

    harness.done()
    assert all(o.ok for o in result.values())
    assert result[targets[0].id].detail == "status checks 2/2 passed, SSM agent online, 2 alarms OK, HTTP 200"
    ips = {
        i["InstanceId"]: i["PrivateIpAddress"]
        for r in ec2().describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert sorted(asked) == sorted(f"http://{ips[t.id]}:8080/health?vm={t.id}" for t in targets)
    assert harness.count("DescribeAlarms") == 1  # both instances' alarms in one call


def test_initializing_status_waits_then_fails_after_the_timeout(
    harness: Harness, clock: ManualClock, instance_status: dict[str, str]
) -> None:
    """moto: EC2 instances, status checks (patched to initializing), tags; Stubber:
    DescribeInstanceInformation."""
    slow, fine = launch(2)
    instance_status[slow.id] = "initializing"
    stub = harness.stub()
    fleet = make_fleet(harness, clock)
    command = health_command([slow, fine], HealthChecks(timeout=timedelta(minutes=5)))

    expect_agents(stub, [slow.id, fine.id])
    first = fleet.check_health(command)
    assert isinstance(first, InProgress) and first.retry_at == T0 + timedelta(minutes=2)
    assert "initializing" in first.note

    clock.advance(timedelta(minutes=4))
    expect_agents(stub, [slow.id, fine.id])
    second = fleet.check_health(command)
    assert isinstance(second, InProgress) and second.retry_at == T0 + timedelta(minutes=5)  # the deadline

    clock.advance(timedelta(minutes=1))
    expect_agents(stub, [slow.id, fine.id])
    result = outcomes(fleet.check_health(command))
    harness.done()
    assert result[fine.id].ok
    assert not result[slow.id].ok
    assert result[slow.id].detail == "status checks: instance initializing, system ok (still after 5 min)"
    assert harness.count("CreateTags") == 1  # the start time is written once, then read back


def test_health_recovers_when_the_status_turns_ok_in_time(
    harness: Harness, clock: ManualClock, instance_status: dict[str, str]
) -> None:
    """moto: EC2 (status patched); Stubber: DescribeInstanceInformation (agent back later)."""
    (target,) = launch(1)
    instance_status[target.id] = "initializing"
    stub = harness.stub()
    fleet = make_fleet(harness, clock)
    command = health_command([target])
    expect_agents(stub, [target.id])
    assert isinstance(fleet.check_health(command), InProgress)
    del instance_status[target.id]
    clock.advance(timedelta(minutes=2))
    expect_agents(stub, [target.id], offline={target.id: "ConnectionLost"})
    waiting = fleet.check_health(command)
    assert isinstance(waiting, InProgress) and "ConnectionLost after the reboot" in waiting.note
    clock.advance(timedelta(minutes=2))
    expect_agents(stub, [target.id])
    assert outcomes(fleet.check_health(command))[target.id].ok


def test_alarms_in_alarm_wait_then_fail_and_a_missing_alarm_fails_at_once(
    harness: Harness, clock: ManualClock, instance_status: dict[str, str]
) -> None:
    """moto: EC2, CloudWatch alarms; Stubber: DescribeInstanceInformation."""
    (target,) = launch(1)
    alarm("shop-5xx", "ALARM")
    stub = harness.stub()
    fleet = make_fleet(harness, clock)
    command = health_command([target], HealthChecks(alarms=["shop-5xx"], timeout=timedelta(minutes=3)))
    expect_agents(stub, [target.id])
    assert isinstance(fleet.check_health(command), InProgress)
    clock.advance(timedelta(minutes=3))
    expect_agents(stub, [target.id])
    result = outcomes(fleet.check_health(command))[target.id]
    assert not result.ok and result.detail == "alarm shop-5xx is ALARM (still after 3 min)"

    missing = health_command([target], HealthChecks(alarms=["nope"]), command_id="c-health-2")
    expect_agents(stub, [target.id])
    result = outcomes(fleet.check_health(missing))[target.id]
    assert not result.ok and result.detail == "alarm nope not found"


def test_http_errors_wait_until_the_timeout(
    harness: Harness, clock: ManualClock, instance_status: dict[str, str]
) -> None:
    """moto: EC2; Stubber: DescribeInstanceInformation; a fake http_get (503, then refused)."""
    (target,) = launch(1)
    answers: list[int | Exception] = [503, ConnectionRefusedError("refused")]

    def http_get(url: str, timeout: float) -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    stub = harness.stub()
    fleet = make_fleet(harness, clock, http_get=http_get)
    command = health_command([target], HealthChecks(http=["https://{name}.shop.example/health"]))
    expect_agents(stub, [target.id])
    first = fleet.check_health(command)
    assert isinstance(first, InProgress) and f"https://{target.id}.shop.example/health: HTTP 503" in first.note
    clock.advance(timedelta(minutes=5))
    expect_agents(stub, [target.id])
    result = outcomes(fleet.check_health(command))[target.id]
    assert not result.ok
    assert result.detail.endswith("ConnectionRefusedError: refused (still after 5 min)")


def test_the_health_script_runs_once_per_os_group_and_exit_0_is_healthy(
    harness: Harness, clock: ManualClock, instance_status: dict[str, str]
) -> None:
    """moto: EC2; Stubber: DescribeInstanceInformation, ListCommands, SendCommand,
    ListCommandInvocations (Details=True for the exit code)."""
    linux = launch(2)
    (windows,) = launch(1, windows=True)
    targets = [*linux, windows]
    checks = HealthChecks(script=HealthScript(linux="systemctl is-active shop", windows="Get-Service Shop"))
    command = health_command(targets, checks)
    stub = harness.stub()
    fleet = make_fleet(harness, clock)
    ids = [t.id for t in targets]

    expect_agents(stub, ids)
    expect_list_commands(stub, "AWS-RunShellScript", [], clock.now())
    expect_send(stub)
    expect_list_commands(stub, "AWS-RunPowerShellScript", [], clock.now())
    expect_send(stub)
    assert isinstance(fleet.check_health(command), InProgress)
    shell, powershell = harness.params("SendCommand")
    assert shell["DocumentName"] == "AWS-RunShellScript" and sorted(shell["InstanceIds"]) == sorted(t.id for t in linux)
    assert shell["Parameters"]["commands"] == ["systemctl is-active shop"]
    assert powershell["DocumentName"] == "AWS-RunPowerShellScript" and powershell["InstanceIds"] == [windows.id]

    clock.advance(timedelta(minutes=2))
    shell_done = ssm_command(shell, "Failed")
    ps_done = ssm_command(powershell, "Success")
    expect_agents(stub, ids)
    expect_list_commands(stub, "AWS-RunShellScript", [shell_done], clock.now())
    expect_invocations(
        stub,
        shell_done["CommandId"],
        [
            {
                **invocation(shell_done["CommandId"], linux[0].id),
                "CommandPlugins": [{"Name": PLUGIN, "ResponseCode": 0}],
            },
            {
                **invocation(shell_done["CommandId"], linux[1].id, "Failed"),
                "CommandPlugins": [{"Name": PLUGIN, "ResponseCode": 3, "Output": "inactive\n"}],
            },
        ],
        details=True,
    )
    expect_list_commands(stub, "AWS-RunPowerShellScript", [ps_done], clock.now())
    expect_invocations(
        stub,
        ps_done["CommandId"],
        [{**invocation(ps_done["CommandId"], windows.id), "CommandPlugins": [{"Name": PLUGIN, "ResponseCode": 0}]}],
        details=True,
    )
    result = outcomes(fleet.check_health(command))

    harness.done()
    assert harness.count("SendCommand") == 2
    assert result[linux[0].id].ok and result[linux[0].id].detail.endswith("script exit 0")
    assert not result[linux[1].id].ok and result[linux[1].id].detail == "health script: exit code 3: inactive"
    assert result[windows.id].ok


def test_a_stopped_or_vanished_instance_fails_health_at_once(
    harness: Harness, clock: ManualClock, instance_status: dict[str, str]
) -> None:
    """moto: EC2 (a stopped instance; an id that does not exist); Stubber: DescribeInstanceInformation."""
    (stopped,) = launch(1)
    ec2().stop_instances(InstanceIds=[stopped.id])
    ghost = Instance(id="i-0123456789abcdef0", cloud="aws", region=REGION, os="linux")
    expect_agents(harness.stub(), [stopped.id], offline={stopped.id: "ConnectionLost"})
    result = outcomes(make_fleet(harness, clock).check_health(health_command([stopped, ghost])))
    assert result[stopped.id].detail == "instance is stopped"
    assert result[ghost.id].detail == "instance not found (terminated?)"


# ---------------------------------------------------------------- rollback


def rollback_command(targets: list[tuple[Instance, list[str]]], restore_data_volumes: bool = False) -> RollBack:
    return RollBack(
        id=f"{RUN}:w1:rollback",
        run_id=RUN,
        wave=1,
        targets=[RestoreTarget(instance=i, snapshot_ids=s) for i, s in targets],
        restore_data_volumes=restore_data_volumes,
    )


def task(instance_id: str, snapshot_id: str, state: str, command_id: str) -> dict[str, Any]:
    return {
        "ReplaceRootVolumeTaskId": f"replacevol-{instance_id[2:]}",
        "InstanceId": instance_id,
        "SnapshotId": snapshot_id,
        "TaskState": state,
        "Tags": [{"Key": "PatchPilotCommand", "Value": command_id}],
    }


def expect_tasks(stub: Stubber, ids: list[str], tasks: list[dict[str, Any]]) -> None:
    stub.add_response(
        "describe_replace_root_volume_tasks",
        {"ReplaceRootVolumeTasks": tasks},
        {"Filters": [{"Name": "instance-id", "Values": sorted(ids)}], "MaxResults": 50},
    )


@pytest.fixture
def ec2_stubbed(aws: None) -> Harness:
    return Harness(stub_ec2=True)


def test_rollback_replaces_the_root_volume_from_the_root_snapshot_with_a_deterministic_token(
    ec2_stubbed: Harness, clock: ManualClock
) -> None:
    """Stubber (EC2): DescribeReplaceRootVolumeTasks, CreateReplaceRootVolumeTask."""
    a, b = fake(2, prefix="a")
    command = rollback_command(
        [(a, ["snap-0aaaaaaaaaaaaaaa1", "snap-0aaaaaaaaaaaaaaa2"]), (b, ["snap-0bbbbbbbbbbbbbbb1"])]
    )
    tokens: list[list[str]] = []
    for _ in range(2):  # two fresh processes executing the same command for the first time
        harness = Harness(stub_ec2=True)
        stub = harness.stub("ec2")
        expect_tasks(stub, [a.id, b.id], [])
        for instance, snapshot in ((a, "snap-0aaaaaaaaaaaaaaa1"), (b, "snap-0bbbbbbbbbbbbbbb1")):
            stub.add_response(
                "create_replace_root_volume_task",
                {"ReplaceRootVolumeTask": task(instance.id, snapshot, "pending", command.id)},
                {
                    "InstanceId": instance.id,
                    "SnapshotId": snapshot,
                    "ClientToken": ANY,
                    "DeleteReplacedRootVolume": False,
                    "TagSpecifications": ANY,
                },
            )
        assert isinstance(make_fleet(harness, clock).roll_back(command), InProgress)
        harness.done()
        tokens.append([p["ClientToken"] for p in harness.params("CreateReplaceRootVolumeTask")])
    assert tokens[0] == tokens[1]  # the same token: EC2 returns the same task
    assert tokens[0][0] != tokens[0][1] and all(0 < len(t) <= 64 for t in tokens[0])
    other = rollback_command([(a, ["snap-0aaaaaaaaaaaaaaa1"])]).model_copy(update={"id": "another"})
    harness = Harness(stub_ec2=True)
    stub = harness.stub("ec2")
    expect_tasks(stub, [a.id], [])
    stub.add_response(
        "create_replace_root_volume_task",
        {"ReplaceRootVolumeTask": task(a.id, "snap-0aaaaaaaaaaaaaaa1", "pending", "another")},
    )
    make_fleet(harness, clock).roll_back(other)
    assert harness.params("CreateReplaceRootVolumeTask")[0]["ClientToken"] not in tokens[0]

    # Polled: the tasks are found by their tag; nothing is created again.
    poll = Harness(stub_ec2=True)
    stub = poll.stub("ec2")
    expect_tasks(
        stub,
        [a.id, b.id],
        [
            task(a.id, "snap-0aaaaaaaaaaaaaaa1", "in-progress", command.id),
            task(b.id, "snap-0bbbbbbbbbbbbbbb1", "succeeded", command.id),
        ],
    )
    assert isinstance(make_fleet(poll, clock).roll_back(command), InProgress)
    expect_tasks(
        stub,
        [a.id, b.id],
        [
            task(a.id, "snap-0aaaaaaaaaaaaaaa1", "succeeded", command.id),
            task(b.id, "snap-0bbbbbbbbbbbbbbb1", "succeeded", command.id),
        ],
    )
    result = outcomes(make_fleet(poll, clock).roll_back(command))
    poll.done()
    assert poll.count("CreateReplaceRootVolumeTask") == 0
    assert result[a.id].ok and "restored from snap-0aaaaaaaaaaaaaaa1" in result[a.id].detail
    assert result[a.id].items == ["snap-0aaaaaaaaaaaaaaa1"]


def test_failed_detached_and_failed_tasks_fail_the_rollback(ec2_stubbed: Harness, clock: ManualClock) -> None:
    """Stubber (EC2): DescribeReplaceRootVolumeTasks."""
    a, b = fake(2, prefix="b")
    command = rollback_command([(a, ["snap-0aaaaaaaaaaaaaaa1"]), (b, ["snap-0bbbbbbbbbbbbbbb1"])])
    expect_tasks(
        ec2_stubbed.stub("ec2"),
        [a.id, b.id],
        [
            task(a.id, "snap-0aaaaaaaaaaaaaaa1", "failed-detached", command.id),
            task(b.id, "snap-0bbbbbbbbbbbbbbb1", "failed", command.id),
        ],
    )
    result = outcomes(make_fleet(ec2_stubbed, clock).roll_back(command))
    assert not result[a.id].ok and "failed-detached" in result[a.id].detail
    assert not result[b.id].ok and result[b.id].detail.endswith("from snap-0bbbbbbbbbbbbbbb1 failed")


def test_a_rejected_task_or_a_missing_snapshot_fails_and_data_snapshots_alone_restore_only_the_root(
    ec2_stubbed: Harness, clock: ManualClock
) -> None:
    """Stubber (EC2): DescribeReplaceRootVolumeTasks, CreateReplaceRootVolumeTask (one rejected)."""
    a, b, c = fake(3, prefix="c")
    command = rollback_command(
        [(a, ["snap-0aaaaaaaaaaaaaaa1", "snap-0aaaaaaaaaaaaaaa2"]), (b, ["snap-0bbbbbbbbbbbbbbb1"]), (c, [])]
    )
    stub = ec2_stubbed.stub("ec2")
    expect_tasks(stub, [a.id, b.id, c.id], [task(a.id, "snap-0aaaaaaaaaaaaaaa1", "succeeded", command.id)])
    stub.add_client_error(
        "create_replace_root_volume_task", "IncorrectState", "The instance 'i-x' is not in the running state."
    )
    result = outcomes(make_fleet(ec2_stubbed, clock).roll_back(command))
    ec2_stubbed.done()
    assert result[a.id].ok and result[a.id].detail.startswith("root volume restored from snap-0aaaaaaaaaaaaaaa1")
    assert result[a.id].items == ["snap-0aaaaaaaaaaaaaaa1"]
    assert not result[b.id].ok and "IncorrectState" in result[b.id].detail
    assert result[c.id].detail == "no snapshot to restore from"


# ---------------------------------------------------------------- API calls per instance


def test_api_calls_per_instance_for_one_wave_of_50(
    harness: Harness, clock: ManualClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """moto: EC2 (instances, snapshots, status, tags), CloudWatch; Stubber: SSM. Counts every
    call through a botocore `before-call` hook on each client: probe, snapshot (create + one
    poll), install (send, one poll while running, the poll that reads results) and health."""
    targets = launch(50)
    ids = sorted(t.id for t in targets)
    alarm("shop-5xx", "OK")
    stub = harness.stub()
    fleet = make_fleet(harness, clock)
    phases: dict[str, Counter[str]] = {}

    def phase(name: str) -> None:
        seen = Counter(op for _, op, _ in harness.calls)
        before = sum(phases.values(), Counter())
        phases[name] = seen - before

    expect_agents(stub, ids)
    assert all(o.ok for o in outcomes(fleet.probe_agents(ProbeAgents(id="p", run_id=RUN, targets=targets))).values())
    phase("probe")

    snap = snapshot_command(targets)
    assert isinstance(fleet.take_snapshots(snap), InProgress)
    clock.advance(timedelta(minutes=3))
    assert all(o.ok for o in outcomes(fleet.take_snapshots(snap)).values())
    phase("snapshot")

    install = install_command(targets)
    expect_list_commands(stub, "AWS-RunPatchBaseline", [], clock.now())
    expect_send(stub)
    assert isinstance(fleet.install_patches(install), InProgress)
    sent = harness.params("SendCommand")[0]
    clock.advance(timedelta(minutes=5))
    expect_list_commands(
        stub, "AWS-RunPatchBaseline", [ssm_command(sent, "InProgress", command_id="c" * 36)], clock.now()
    )
    assert isinstance(fleet.install_patches(install), InProgress)
    clock.advance(timedelta(minutes=5))
    expect_list_commands(stub, "AWS-RunPatchBaseline", [ssm_command(sent, "Success", command_id="c" * 36)], clock.now())
    expect_invocations(stub, "c" * 36, [invocation("c" * 36, i) for i in ids])
    for instance_id in ids:
        expect_patches(stub, instance_id, [("KB5048661", "2025-01 Cumulative Update", clock.now())])
    assert all(o.ok for o in outcomes(fleet.install_patches(install)).values())
    phase("install")

    expect_agents(stub, ids)
    checks = HealthChecks(alarms=["shop-5xx"], http=["http://{private_ip}/health"])
    healthy = make_fleet(harness, clock, http_get=lambda url, timeout: 200).check_health(
        health_command(targets, checks)
    )
    assert all(o.ok for o in outcomes(healthy).values())
    phase("health")
    harness.done()

    total = sum(phases.values(), Counter())
    beyond_create = sum(total.values()) - total["CreateSnapshots"]
    with capsys.disabled():
        print("\n\nAPI calls for one wave of 50 instances (happy path)")
        print(f"{'phase':<10}{'operation':<34}{'calls':>6}")
        for name, counter in phases.items():
            for operation, count in sorted(counter.items()):
                print(f"{name:<10}{operation:<34}{count:>6}")
        print(f"{'total':<44}{sum(total.values()):>6}")
        print(f"beyond CreateSnapshots: {beyond_create} = {beyond_create / 50:.2f} per instance\n")
    assert total["CreateSnapshots"] == 50
    assert total["DescribeInstancePatches"] == 50  # the one per-instance read
    assert beyond_create <= 2 * 50


# ---------------------------------------------------------------- sessions


def test_sessions_assume_each_accounts_role_once_and_use_adaptive_retries(aws: None) -> None:
    """moto: STS AssumeRole (moto's assumed-role keys start with ASIA)."""
    now = [T0]
    sessions = AwsSessions(
        {"111111111111": "arn:aws:iam::111111111111:role/patchpilot", "222222222222": None},
        base=boto3.Session(region_name=REGION),
        now=lambda: now[0],
    )
    assumed = sessions.client("ec2", "111111111111", REGION)
    assert sessions.client("ec2", "111111111111", REGION) is assumed
    assert assumed.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 11}  # 10 retries
    assert assumed._request_signer._credentials.access_key.startswith("ASIA")
    ambient = sessions.client("ec2", "222222222222", REGION)
    assert not ambient._request_signer._credentials.access_key.startswith("ASIA")
    assert sessions.client("ssm", None, "us-east-1").meta.region_name == "us-east-1"
    now[0] = datetime.now(UTC) + timedelta(days=2)  # the credentials expired: assumed again, clients rebuilt
    assert sessions.client("ec2", "111111111111", REGION) is not assumed


# ---------------------------------------------------------------- rollback of data volumes


def rollback_harness(services: FleetServices) -> Harness:
    """moto for EC2, with the replace-root-volume tasks played by `services` (stateful, on its
    clock: pending, in progress, succeeded after 6 minutes)."""
    harness = Harness()
    services.serve_root_volume_tasks(harness("ec2", None, REGION))
    return harness


def launch_with_data_volumes() -> Instance:
    """A moto instance with a root volume and two data volumes (gp3 at /dev/sdf, gp2 at /dev/sdg)."""
    answer = ec2().run_instances(
        ImageId=image(),
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": f"{REGION}b"},
        BlockDeviceMappings=[
            {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}},
            {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 20, "VolumeType": "gp3"}},
            {"DeviceName": "/dev/sdg", "Ebs": {"VolumeSize": 30}},
        ],
    )
    instance_id = answer["Instances"][0]["InstanceId"]
    return Instance(id=instance_id, cloud="aws", region=REGION, os="linux")  # zone unknown: read from EC2


def snapshotted(instance: Instance, clock: ManualClock) -> list[str]:
    """The instance's snapshot ids, root first, as TakeSnapshots reports them."""
    fleet = make_fleet(Harness(), clock)
    command = snapshot_command([instance])
    fleet.take_snapshots(command)
    return outcomes(fleet.take_snapshots(command))[instance.id].items


def devices(instance_id: str) -> dict[str, str]:
    raw = ec2().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in raw["BlockDeviceMappings"]}


def state(instance_id: str) -> str:
    raw = ec2().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return str(raw["State"]["Name"])


def volume(volume_id: str) -> dict[str, Any]:
    return dict(ec2().describe_volumes(VolumeIds=[volume_id])["Volumes"][0])


def restored_volumes(command_id: str) -> list[dict[str, Any]]:
    filters = [{"Name": "tag:PatchPilotCommand", "Values": [command_id]}]
    return list(ec2().describe_volumes(Filters=filters)["Volumes"])


CHANGES = (
    "CreateReplaceRootVolumeTask",
    "CreateVolume",
    "StopInstances",
    "StartInstances",
    "DetachVolume",
    "AttachVolume",
    "CreateTags",
    "DeleteVolume",
)


def poll_rollback(fleet: Ec2SsmFleet, command: RollBack, clock: ManualClock, limit: int = 12) -> tuple[Progress, int]:
    """Execute the command until it reports outcomes (each poll twice, as a redelivered message
    would be), two minutes apart; the outcomes and the number of polls."""
    for count in range(1, limit + 1):
        progress = fleet.roll_back(command)
        if not isinstance(progress, InProgress):
            return progress, count
        again = fleet.roll_back(command)
        if not isinstance(again, InProgress):
            return again, count
        clock.advance(timedelta(minutes=2))
    raise AssertionError(f"still in progress after {limit} polls")


def test_data_volumes_are_restored_across_polls_without_duplicates_and_the_originals_kept(clock: ManualClock) -> None:
    """moto: EC2 instances, snapshots, CreateVolume, Stop/StartInstances, Detach/AttachVolume,
    DescribeVolumes, CreateTags; FleetServices: the replace-root-volume task."""
    with mock_aws():
        instance = launch_with_data_volumes()
        snapshots = snapshotted(instance, clock)
        assert len(snapshots) == 3
        before = devices(instance.id)
        command = rollback_command([(instance, snapshots)], restore_data_volumes=True)
        services = FleetServices(clock, REGION)
        harness = rollback_harness(services)
        result, polls = poll_rollback(make_fleet(harness, clock), command, clock)

        outcome = outcomes(result)[instance.id]
        after = devices(instance.id)
        restored = {_tag(v, "PatchPilotDevice"): v for v in restored_volumes(command.id)}
        assert outcome.ok, outcome.detail
        assert polls >= 4  # root replacement, stop, swap, start: several polls
        assert sorted(restored) == ["/dev/sdf", "/dev/sdg"]  # one volume per device, however often polled
        assert harness.count("CreateVolume") == 2
        assert harness.count("StopInstances") == 1 and harness.count("StartInstances") == 1
        assert harness.count("DetachVolume") == 2 and harness.count("AttachVolume") == 2
        assert state(instance.id) == "running"
        for device in ("/dev/sdf", "/dev/sdg"):
            new, old = restored[device], before[device]
            assert after[device] == new["VolumeId"] != old
            assert new["AvailabilityZone"] == f"{REGION}b"
            assert _tag(new, "PatchPilotInstance") == instance.id and _tag(new, "PatchPilotCommand") == command.id
            kept = volume(old)  # never deleted: detached and marked
            assert kept["State"] == "available" and _tag(kept, "PatchPilotReplacedBy") == new["VolumeId"]
            assert f"{device} {new['VolumeId']}" in outcome.detail and old in outcome.detail
        created = {p["TagSpecifications"][0]["Tags"][3]["Value"]: p for p in harness.params("CreateVolume")}
        assert created["/dev/sdf"]["VolumeType"] == "gp3" and created["/dev/sdf"]["Iops"] == 3000
        assert created["/dev/sdg"]["VolumeType"] == "gp2" and "Iops" not in created["/dev/sdg"]
        assert created["/dev/sdf"]["SnapshotId"] in snapshots[1:]
        assert created["/dev/sdf"]["ClientToken"] != created["/dev/sdg"]["ClientToken"]
        assert all(p["AvailabilityZone"] == f"{REGION}b" for p in created.values())
        assert "original data volumes kept" in outcome.detail
        assert outcome.items == snapshots
        assert after["/dev/sda1"] == before["/dev/sda1"]  # the root volume is the fake task's business

        # The command again, in another process, after success: the same answer, nothing changed.
        again = rollback_harness(services)
        assert outcomes(make_fleet(again, clock).roll_back(command))[instance.id].ok
        assert [op for _, op, _ in again.calls if op in CHANGES] == []
        assert devices(instance.id) == after and len(restored_volumes(command.id)) == 2


def _tag(resource: dict[str, Any], key: str) -> str:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), "")


def test_a_failed_attach_fails_the_rollback_naming_the_device(clock: ManualClock) -> None:
    """moto: EC2 as above, with AttachVolume answered by an error through a botocore hook."""
    with mock_aws():
        instance = launch(data_volume=True)[0]
        snapshots = snapshotted(instance, clock)
        before = devices(instance.id)
        command = rollback_command([(instance, snapshots)], restore_data_volumes=True)
        harness = rollback_harness(FleetServices(clock, REGION))

        def refuse(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
            error = {
                "Error": {"Code": "VolumeInUse", "Message": "injected"},
                "ResponseMetadata": {"HTTPStatusCode": 400},
            }
            return AWSResponse(None, 400, {}, None), error

        harness("ec2", None, REGION).meta.events.register("before-call.ec2.AttachVolume", refuse)
        result, _ = poll_rollback(make_fleet(harness, clock), command, clock)
        outcome = outcomes(result)[instance.id]
        assert not outcome.ok
        assert "root volume restored from" in outcome.detail
        assert "/dev/sdf: AttachVolume of vol-" in outcome.detail and "VolumeInUse" in outcome.detail
        assert f"original volume {before['/dev/sdf']} kept" in outcome.detail
        assert volume(before["/dev/sdf"])["State"] == "available"  # kept, not deleted
        assert harness.count("DeleteVolume") == 0


def test_without_restore_data_volumes_the_data_volumes_are_left_alone(clock: ManualClock) -> None:
    """moto: EC2 as above; FleetServices: the replace-root-volume task."""
    with mock_aws():
        instance = launch(data_volume=True)[0]
        snapshots = snapshotted(instance, clock)
        before = devices(instance.id)
        command = rollback_command([(instance, snapshots)], restore_data_volumes=False)
        harness = rollback_harness(FleetServices(clock, REGION))
        result, _ = poll_rollback(make_fleet(harness, clock), command, clock)
        outcome = outcomes(result)[instance.id]
        assert outcome.ok and outcome.items == snapshots[:1]
        assert "data volume" not in outcome.detail
        assert devices(instance.id) == before and state(instance.id) == "running"
        for operation in ("CreateVolume", "StopInstances", "DetachVolume", "AttachVolume", "DescribeVolumes"):
            assert harness.count(operation) == 0
        assert restored_volumes(command.id) == []


# ---------------------------------------------------------------- stopped machines


def _settle(call: Any) -> list[Outcome]:
    """Poll a power command until it reports (moto moves states at once or on the next read)."""
    for _ in range(5):
        progress = call()
        if not isinstance(progress, InProgress):
            return list(progress)
    raise AssertionError("still in progress")


def test_a_stopped_instance_is_started_then_stopped_again_and_a_sweep_changes_nothing(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: DescribeInstances, StartInstances, StopInstances."""
    [machine] = launch(1)
    ec2().stop_instances(InstanceIds=[machine.id])
    target = dataclasses.replace(machine, power="stopped")
    fleet = make_fleet(harness, clock)
    start = StartMachines(id="r:w1:start", run_id="r", wave=1, targets=[target])
    [started] = _settle(lambda: fleet.start_machines(start))
    assert (started.ok, started.detail) == (True, "instance running")
    state = ec2().describe_instances(InstanceIds=[machine.id])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "running"
    back = ReturnMachines(id="r:w1:return", run_id="r", wave=1, targets=[target])
    [returned] = _settle(lambda: fleet.return_machines(back))
    assert (returned.ok, returned.detail) == (True, "instance stopped")
    sweep = ReturnMachines(id="r:return-at-end", run_id="r", targets=[target], at_run_end=True)
    assert [o.ok for o in _settle(lambda: fleet.return_machines(sweep))] == [True]
    assert len(harness.params("StopInstances")) == 1  # the sweep found it stopped: nothing sent


def test_discovery_plans_a_stopped_managed_instance_with_its_power_when_the_policy_starts_them(
    harness: Harness, clock: ManualClock
) -> None:
    """moto: EC2; Stubber: DescribeInstanceInformation."""
    [stopped] = launch(1, tags={"Ring": "prod"})
    ec2().stop_instances(InstanceIds=[stopped.id])
    pol = parse_policy(
        f"name: n\nrings: [{{name: prod, select: {{tags: {{Ring: prod}}}}}}]\n"
        f"aws: {{regions: [{REGION}]}}\nstopped_machines: start\n"
    )
    expect_agents(harness.stub(), [stopped.id], offline={stopped.id: "ConnectionLost"})
    result = make_fleet(harness, clock).discover(pol)
    assert [(i.id, i.power) for i in result.instances] == [(stopped.id, "stopped")]
    assert result.unreachable == []
