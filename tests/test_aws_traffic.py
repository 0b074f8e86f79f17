"""The AWS traffic pools (`Elbv2Traffic`: ELBv2 drain and re-add, Auto Scaling Standby) and host
hooks (`Ec2SsmFleet.run_hook`) against moto and botocore Stubbers.

moto plays EC2, ELBv2 (DescribeTargetGroups, DescribeTargetHealth, DeregisterTargets,
RegisterTargets, DescribeTargetGroupAttributes) and Auto Scaling (DescribeAutoScalingInstances,
EnterStandby, ExitStandby). moto has no `draining` state (a deregistered target is gone at once),
reports every registered target `healthy`, and its IAM is not enforced: those tests use a botocore
`Stubber` on ELBv2, which checks each request and canned answer against the service model. SSM is a
Stubber as in tests/test_aws_fleet.py (moto has no ListCommandInvocations). Each test's docstring
says which it uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from clocks import ManualClock
from moto import mock_aws
from test_aws_fleet import (
    PLUGIN,
    REGION,
    T0,
    Harness,
    expect_invocations,
    expect_list_commands,
    expect_send,
    fake,
    image,
    launch,
    make_fleet,
    outcomes,
    private_ip,
    register,
    ssm_command,
    target_group,
)
from traffic_runtimes import (
    aws_fields,
    expect_groups,
    expect_health,
    health,
    pooled,
    registered,
    stubbed_arn,
    stubbed_elbv2,
)

from patchpilot.adapters.aws.traffic import Elbv2Traffic, Registration
from patchpilot.engine.messages import LeavePools, RejoinPools, RunHostHook
from patchpilot.inventory import Instance
from patchpilot.policy.model import HostHook
from patchpilot.ports import InProgress

RUN = "nightly-20250114-2200-ab12"


@pytest.fixture
def harness() -> Iterator[Harness]:
    with mock_aws():
        yield Harness()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def traffic(harness: Harness, clock: ManualClock) -> Elbv2Traffic:
    return Elbv2Traffic(harness, clock, default_region=REGION)


def leave(targets: list[Instance], command_id: str = "r:w1:drain", **kwargs: Any) -> LeavePools:
    return LeavePools(id=command_id, run_id=RUN, targets=targets, issued_at=T0, **kwargs)


def rejoin(targets: list[Instance], command_id: str = "r:w1:rejoin", **kwargs: Any) -> RejoinPools:
    return RejoinPools(id=command_id, run_id=RUN, targets=targets, issued_at=T0, **kwargs)


# ---------------------------------------------------------------- drain and re-add (moto)


def test_a_wave_leaves_each_target_group_with_one_deregister_call_and_a_redelivery_changes_nothing(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """moto: EC2, ELBv2. Five machines in tg-web, two of them also in tg-api: two
    DeregisterTargets in all, whatever the number of machines or executions."""
    machines = launch(5)
    web, api = target_group("tg-web"), target_group("tg-api")
    register(web, *(m.id for m in machines))
    register(api, machines[0].id, machines[1].id)
    targets = [*pooled(machines[:2], web, api), *pooled(machines[2:], web)]
    command = leave(targets)

    first = traffic.leave_pools(command)

    assert isinstance(first, InProgress)  # deregistered: the next poll sees them drained
    assert harness.count("DeregisterTargets") == 2
    calls = {p["TargetGroupArn"]: sorted(t["Id"] for t in p["Targets"]) for p in harness.params("DeregisterTargets")}
    assert calls == {web: sorted(m.id for m in machines), api: sorted(m.id for m in machines[:2])}
    assert registered(web) == registered(api) == {}

    clock.advance(timedelta(seconds=30))
    done = outcomes(traffic.leave_pools(command))
    again = outcomes(traffic.leave_pools(command))  # the same message delivered twice

    assert harness.count("DeregisterTargets") == 2  # already out: never deregistered again
    assert done == again
    assert all(o.ok for o in done.values())
    assert sorted(done[machines[0].id].items) == sorted(
        [f"{web}|{machines[0].id}|80|-", f"{api}|{machines[0].id}|80|-"]
    )
    assert done[machines[4].id].items == [f"{web}|{machines[4].id}|80|-"]
    assert done[machines[4].id].detail == "left 1 target group: tg-web"


def test_a_registration_the_default_would_not_restore_is_marked_before_it_is_drained_and_put_back_as_it_was(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """moto: EC2 (tags), ELBv2. One machine listens on 8080 in a group whose port is 80: before
    the DeregisterTargets it is tagged PatchPilotDrained (once, whatever the redeliveries), so the
    drained registration is still known to the outcome and re-added on 8080; the machine on the
    group's port costs no tag."""
    odd, plain = launch(2)
    web = target_group("tg-web")
    elbv2 = boto3.client("elbv2", region_name=REGION)
    elbv2.register_targets(TargetGroupArn=web, Targets=[{"Id": odd.id, "Port": 8080}, {"Id": plain.id, "Port": 80}])
    targets = pooled([odd, plain], web)
    command = leave(targets)

    assert isinstance(traffic.leave_pools(command), InProgress)
    left = outcomes(traffic.leave_pools(command))

    assert harness.count("CreateTags") == 1
    (tagged,) = harness.params("CreateTags")
    assert tagged["Resources"] == [odd.id]
    assert tagged["Tags"][0]["Key"] == "PatchPilotDrained" and tagged["Tags"][0]["Value"].endswith(" 0=-/8080/-")
    assert harness.count("DeregisterTargets") == 1
    assert left[odd.id].items == [f"{web}|{odd.id}|8080|-"]
    assert left[plain.id].items == [f"{web}|{plain.id}|80|-"]

    registrations = {o.id: o.items for o in left.values()}
    back = outcomes(traffic.rejoin_pools(rejoin(targets, registrations=registrations)))

    assert registered(web) == {odd.id: 8080, plain.id: 80}
    assert back[odd.id].items == back[plain.id].items == [web]


def test_rejoin_registers_only_what_is_out_exactly_as_it_was_and_the_sweep_names_it(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """moto: EC2, ELBv2. One machine is back already (no RegisterTargets for it); the other is
    registered again on the port its LeavePools item recorded; the run-end sweep's items name the
    target groups it actually re-added."""
    machines = launch(2)
    web = target_group("tg-web")
    register(web, machines[0].id)
    targets = pooled(machines, web)
    registrations = {machines[1].id: [Registration(web, machines[1].id, 8080).item]}

    swept = outcomes(traffic.rejoin_pools(rejoin(targets, "r:sweep", registrations=registrations, at_run_end=True)))

    assert harness.count("RegisterTargets") == 1
    (call,) = harness.params("RegisterTargets")
    assert call == {"TargetGroupArn": web, "Targets": [{"Id": machines[1].id, "Port": 8080}]}
    assert registered(web) == {machines[0].id: 80, machines[1].id: 8080}
    assert swept[machines[0].id].ok and swept[machines[0].id].items == []  # it was in: nothing re-added
    assert swept[machines[1].id].ok and swept[machines[1].id].items == [web]

    again = outcomes(traffic.rejoin_pools(rejoin(targets, "r:sweep", registrations=registrations, at_run_end=True)))
    assert harness.count("RegisterTargets") == 1  # a redelivered sweep finds both back
    assert again[machines[1].id].items == []


def test_an_ip_target_is_the_machine_holding_that_private_ip_and_comes_back_on_it(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """moto: EC2, ELBv2 (an `ip` target group). The target names the machine's private IP: it is
    drained by that IP (found with one DescribeInstances) and registered again on it."""
    (machine,) = launch(1)
    admin = target_group("tg-admin", "ip")
    ip = private_ip(machine)
    register(admin, ip, "10.99.0.1")  # the second: no machine of this command
    (target,) = pooled([machine], admin)

    assert isinstance(traffic.leave_pools(leave([target])), InProgress)
    left = outcomes(traffic.leave_pools(leave([target])))

    assert [sorted(t["Id"] for t in p["Targets"]) for p in harness.params("DeregisterTargets")] == [[ip]]
    assert registered(admin) == {"10.99.0.1": 80}
    assert left[machine.id].items == [f"{admin}|{ip}|80|-"]

    back = outcomes(traffic.rejoin_pools(rejoin([target], registrations={machine.id: left[machine.id].items})))
    assert registered(admin) == {"10.99.0.1": 80, ip: 80}
    assert back[machine.id].items == [admin]


def test_a_machine_without_pools_or_scaling_group_is_ok_with_no_items_and_no_calls(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """moto: nothing is asked."""
    (machine,) = launch(1)
    left = outcomes(traffic.leave_pools(leave([machine], standby=True)))
    back = outcomes(traffic.rejoin_pools(rejoin([machine], standby=True, pool_health=True)))
    assert left[machine.id].ok and left[machine.id].items == [] and left[machine.id].detail == "no traffic pools"
    assert back[machine.id].ok and back[machine.id].items == []
    assert not harness.calls


# ---------------------------------------------------------------- draining, health and refusals (Stubber)

ARN = stubbed_arn("tg-web")


def expect_delay(stub: Stubber, seconds: int) -> None:
    attributes = [{"Key": "deregistration_delay.timeout_seconds", "Value": str(seconds)}]
    stub.add_response("describe_target_group_attributes", {"Attributes": attributes}, {"TargetGroupArn": ARN})


def test_a_drain_found_under_way_after_a_crash_is_waited_for_never_deregistered_again(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """Stubber on ELBv2 (moto has no `draining`): the worker died between its DeregisterTargets and
    the poll; the redelivered command sees the target draining on its port 8080, sends nothing,
    waits, and finishes once it is no longer listed."""
    (machine,) = pooled(fake(1), ARN)
    stub = stubbed_elbv2(harness)
    expect_groups(stub, ARN)
    expect_health(stub, [health(machine.id, "draining", 8080, "Target.DeregistrationInProgress")], ARN)

    waiting = traffic.leave_pools(leave([machine]))  # no deadline can have passed: no attributes read

    assert isinstance(waiting, InProgress)
    assert f"{machine.id} draining from tg-web" in waiting.note
    assert waiting.retry_at == T0 + timedelta(seconds=30)
    clock.advance(timedelta(seconds=45))
    expect_groups(stub, ARN)
    expect_health(stub, [], ARN)
    done = outcomes(traffic.leave_pools(leave([machine])))

    stub.assert_no_pending_responses()
    assert harness.count("DeregisterTargets") == 0
    assert done[machine.id].ok and done[machine.id].items == [f"{ARN}|{machine.id}|80|-"]


def test_a_target_still_draining_past_the_deregistration_delay_and_a_minute_fails(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """Stubber on ELBv2: no drain_timeout, so the deadline is issued_at + the group's
    deregistration delay (30 s) + 60 s; the failure says so."""
    (machine,) = pooled(fake(1), ARN)
    stub = stubbed_elbv2(harness)
    clock.advance(timedelta(seconds=120))
    expect_groups(stub, ARN)
    expect_health(stub, [health(machine.id, "draining")], ARN)
    expect_delay(stub, 30)

    result = outcomes(traffic.leave_pools(leave([machine])))

    stub.assert_no_pending_responses()
    assert not result[machine.id].ok
    assert result[machine.id].detail == "still draining after 2 min (deregistration delay 30 s + 1 min): tg-web"


def test_with_pool_health_an_unhealthy_target_is_in_progress_with_the_pools_reason_then_done(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """Stubber on ELBv2 (moto reports every target healthy): registered already, so nothing is
    sent; unhealthy keeps the rejoin under way with ELBv2's reason in the note (the service fails
    it at the deadline with that note); healthy finishes it."""
    (machine,) = pooled(fake(1), ARN)
    registrations = {machine.id: [f"{ARN}|{machine.id}|80|-"]}
    command = rejoin([machine], registrations=registrations, pool_health=True)
    stub = stubbed_elbv2(harness)
    reason = "Target.FailedHealthChecks"
    failed = health(machine.id, "unhealthy", 80, reason, "Health checks failed with these codes: [502]")
    expect_health(stub, [failed], ARN)

    waiting = traffic.rejoin_pools(command)

    assert isinstance(waiting, InProgress)
    expected = f"{machine.id} in tg-web: unhealthy: {reason} (Health checks failed with these codes: [502])"
    assert expected in waiting.note
    expect_health(stub, [health(machine.id, "healthy")], ARN)
    done = outcomes(traffic.rejoin_pools(command))

    stub.assert_no_pending_responses()
    assert harness.count("RegisterTargets") == 0
    assert done[machine.id].ok and done[machine.id].items == []
    assert done[machine.id].detail == "back in 1 target group: tg-web (healthy)"


@pytest.mark.parametrize("operation", ["describe_target_health", "deregister_targets"])
def test_a_refused_call_fails_the_machine_naming_the_permission_never_drained(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic, operation: str
) -> None:
    """Stubber on ELBv2: AccessDenied as IAM answers it (a target group without the managed tag)."""
    (machine,) = pooled(fake(1), ARN)
    stub = stubbed_elbv2(harness)
    expect_groups(stub, ARN)
    if operation == "deregister_targets":
        expect_health(stub, [health(machine.id, "healthy")], ARN)
    message = "User: arn:aws:sts::123456789012:assumed-role/worker is not authorized to perform: elasticloadbalancing"
    stub.add_client_error(operation, "AccessDenied", message, 403)

    result = outcomes(traffic.leave_pools(leave([machine])))

    stub.assert_no_pending_responses()
    action = "DescribeTargetHealth" if operation == "describe_target_health" else "DeregisterTargets"
    assert not result[machine.id].ok
    assert result[machine.id].detail.startswith(f"{action} failed on tg-web (AccessDenied: User:")
    assert result[machine.id].detail.endswith(f": needs elasticloadbalancing:{action}")


# ---------------------------------------------------------------- Auto Scaling Standby (moto)


def standby_group(name: str, count: int) -> list[str]:
    """A moto Auto Scaling group of `count` instances that may shrink to none."""
    client = boto3.client("autoscaling", region_name=REGION)
    template = boto3.client("ec2", region_name=REGION).create_launch_template(
        LaunchTemplateName=f"lt-{name}", LaunchTemplateData={"ImageId": image(), "InstanceType": "t3.micro"}
    )
    client.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplate"]["LaunchTemplateId"]},
        MinSize=0,
        MaxSize=count,
        DesiredCapacity=count,
        AvailabilityZones=[f"{REGION}a"],
    )
    return sorted(i["InstanceId"] for i in describe_group(name)["Instances"])


def describe_group(name: str) -> dict[str, Any]:
    client = boto3.client("autoscaling", region_name=REGION)
    (group,) = client.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    return dict(group)


def test_standby_is_entered_with_the_desired_capacity_decremented_and_exited_restoring_it(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """moto: Auto Scaling (EnterStandby, ExitStandby, DescribeAutoScalingInstances). One call per
    group for its members; a redelivery sends nothing again."""
    ids = standby_group("asg-web", 3)
    members = [Instance(id=i, cloud="aws", region=REGION, os="linux", scaling_group="asg-web") for i in ids[:2]]

    assert isinstance(traffic.leave_pools(leave(members, standby=True)), InProgress)
    left = outcomes(traffic.leave_pools(leave(members, standby=True)))

    assert harness.count("EnterStandby") == 1
    (call,) = harness.params("EnterStandby")
    assert call == {"InstanceIds": ids[:2], "AutoScalingGroupName": "asg-web", "ShouldDecrementDesiredCapacity": True}
    assert describe_group("asg-web")["DesiredCapacity"] == 1
    assert all(o.ok and o.items == ["standby|asg-web"] for o in left.values())
    assert left[ids[0]].detail == "Standby in asg-web"

    command = rejoin(members, standby=True)
    assert isinstance(traffic.rejoin_pools(command), InProgress)
    back = outcomes(traffic.rejoin_pools(command))

    assert harness.count("ExitStandby") == 1
    assert describe_group("asg-web")["DesiredCapacity"] == 3
    assert {i["InstanceId"]: i["LifecycleState"] for i in describe_group("asg-web")["Instances"]} == dict.fromkeys(
        ids, "InService"
    )
    assert all(o.ok for o in back.values())


def test_the_run_end_sweep_takes_a_member_left_in_standby_out_and_says_so(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """moto: Auto Scaling. A crash left one member in Standby: the sweep exits it without waiting
    and names the group in its items; the member already in service is not touched."""
    ids = standby_group("asg-api", 2)
    boto3.client("autoscaling", region_name=REGION).enter_standby(
        InstanceIds=[ids[0]], AutoScalingGroupName="asg-api", ShouldDecrementDesiredCapacity=True
    )
    members = [Instance(id=i, cloud="aws", region=REGION, os="linux", scaling_group="asg-api") for i in ids]

    swept = outcomes(traffic.rejoin_pools(rejoin(members, "r:sweep", standby=True, at_run_end=True)))

    assert [p["InstanceIds"] for p in harness.params("ExitStandby")] == [[ids[0]]]
    assert swept[ids[0]].items == ["standby|asg-api"] and swept[ids[1]].items == []
    assert describe_group("asg-api")["DesiredCapacity"] == 2


def test_a_refused_enter_standby_fails_the_member_naming_the_permission(
    harness: Harness, clock: ManualClock, traffic: Elbv2Traffic
) -> None:
    """Stubber on Auto Scaling: AccessDenied as IAM answers it (a group without the managed tag)."""
    (member,) = fake(1)
    member = Instance(**{**aws_fields(member), "scaling_group": "asg-web"})
    stub = Stubber(harness("autoscaling", None, REGION))
    stub.activate()
    answer = {
        "AutoScalingInstances": [
            {
                "InstanceId": member.id,
                "AutoScalingGroupName": "asg-web",
                "AvailabilityZone": f"{REGION}a",
                "LifecycleState": "InService",
                "HealthStatus": "HEALTHY",
                "ProtectedFromScaleIn": False,
            }
        ]
    }
    stub.add_response("describe_auto_scaling_instances", answer, {"InstanceIds": [member.id], "MaxRecords": 50})
    message = (
        "User: arn:aws:sts::123456789012:assumed-role/worker is not authorized to perform: autoscaling:EnterStandby"
    )
    stub.add_client_error("enter_standby", "AccessDenied", message, 403)

    result = outcomes(traffic.leave_pools(leave([member], standby=True)))

    stub.assert_no_pending_responses()
    assert not result[member.id].ok and result[member.id].items == []
    assert result[member.id].detail.startswith("EnterStandby failed on asg-web (AccessDenied: User:")
    assert result[member.id].detail.endswith(": needs autoscaling:EnterStandby")


# ---------------------------------------------------------------- host hooks (Stubber on SSM)


def hook_command(targets: list[Instance], command_id: str = "r:w1:before_install") -> RunHostHook:
    hook = HostHook(linux="systemctl stop shop", windows="Stop-Service Shop", timeout=timedelta(minutes=3))
    return RunHostHook(id=command_id, run_id=RUN, targets=targets, phase="before_install", hook=hook, issued_at=T0)


def test_a_host_hook_is_sent_once_per_document_and_reports_the_output_tail(
    harness: Harness, clock: ManualClock
) -> None:
    """Stubber on SSM: ListCommands, SendCommand, ListCommandInvocations (Details for the output).
    One SendCommand per document for the whole command, executionTimeout from the hook's timeout;
    a redelivery finds the commands by their comment and sends nothing; exit 0 is ok, a failure
    carries its exit code and the output's last 500 characters."""
    linux = fake(2)
    (windows,) = fake(1, os="windows", prefix="1")
    command = hook_command([*linux, windows])
    fleet = make_fleet(harness, clock)
    stub = harness.stub()
    expect_list_commands(stub, "AWS-RunShellScript", [])
    expect_send(stub)
    expect_list_commands(stub, "AWS-RunPowerShellScript", [])
    expect_send(stub)

    assert isinstance(fleet.run_hook(command), InProgress)
    shell, powershell = harness.params("SendCommand")
    assert sorted(shell["InstanceIds"]) == sorted(i.id for i in linux)
    assert shell["Parameters"] == {"commands": ["systemctl stop shop"], "executionTimeout": ["180"]}
    assert powershell["DocumentName"] == "AWS-RunPowerShellScript" and powershell["InstanceIds"] == [windows.id]

    clock.advance(timedelta(seconds=30))
    shell_done, ps_done = ssm_command(shell, "Failed"), ssm_command(powershell, "Success")
    expect_list_commands(stub, "AWS-RunShellScript", [shell_done], clock.now())
    long_output = "x" * 600 + "queue flushed\n"
    expect_invocations(
        stub,
        shell_done["CommandId"],
        [
            {
                "CommandId": shell_done["CommandId"],
                "InstanceId": linux[0].id,
                "Status": "Success",
                "CommandPlugins": [{"Name": PLUGIN, "ResponseCode": 0, "Output": long_output}],
            },
            {
                "CommandId": shell_done["CommandId"],
                "InstanceId": linux[1].id,
                "Status": "Failed",
                "CommandPlugins": [{"Name": PLUGIN, "ResponseCode": 2, "Output": "shop: unit not found\n"}],
            },
        ],
        details=True,
    )
    expect_list_commands(stub, "AWS-RunPowerShellScript", [ps_done], clock.now())
    expect_invocations(
        stub,
        ps_done["CommandId"],
        [{"CommandId": ps_done["CommandId"], "InstanceId": windows.id, "Status": "Success", "CommandPlugins": []}],
        details=True,
    )
    result = outcomes(fleet.run_hook(command))

    harness.done()
    assert harness.count("SendCommand") == 2
    assert result[linux[0].id].ok and result[linux[0].id].detail == long_output.strip()[-500:]
    assert result[linux[0].id].detail.endswith("queue flushed")
    assert not result[linux[1].id].ok and result[linux[1].id].detail == "exit code 2: shop: unit not found"
    assert result[windows.id].ok and result[windows.id].detail == "exit 0"


def test_a_host_hook_without_a_script_for_the_machines_os_runs_nothing(harness: Harness, clock: ManualClock) -> None:
    """Stubber on SSM (nothing expected): a Linux-only hook on a Windows machine is ok, unsent."""
    (windows,) = fake(1, os="windows")
    hook = HostHook(linux="systemctl stop shop")
    command = RunHostHook(id="c", run_id=RUN, targets=[windows], phase="after_install", hook=hook, issued_at=T0)
    stub = harness.stub()

    result = outcomes(make_fleet(harness, clock).run_hook(command))

    stub.assert_no_pending_responses()
    assert result[windows.id].ok and result[windows.id].detail == "no windows script in the hook"
    assert harness.count("SendCommand") == 0
