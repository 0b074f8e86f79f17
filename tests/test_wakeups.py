"""Cloud events become wake-ups (patchpilot/wakeups.py): the documented EventBridge events
(tests/events/aws-published/, as AWS documents them) read by the AWS reader, mapped to the runs
whose awaited fleet command they concern, and published by the waker for the end of their window."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from chaos import FLEET, POLICY, RUN_ID, START

from patchpilot.adapters.aws.wake_events import read_event
from patchpilot.app.waker import Waker
from patchpilot.engine.messages import InstallPatches, LookNow, TakeSnapshots
from patchpilot.engine.run import Run
from patchpilot.local_runtime import LocalRuntime
from patchpilot.wakeups import WINDOW, Signal, wake_ups, window_end

PUBLISHED = Path(__file__).resolve().parent / "events" / "aws-published"
NOW = datetime(2026, 12, 12, 3, 0, 7, tzinfo=UTC)


def published(name: str) -> dict[str, Any]:
    return dict(json.loads((PUBLISHED / name).read_text()))


def run_in(tmp_path: Path, state: str) -> tuple[LocalRuntime, Run]:
    runtime = LocalRuntime.open(tmp_path, start=START)
    runtime.start(POLICY, FLEET, run_id=RUN_ID, at=START)
    for _ in range(1_000):
        run = runtime.load(RUN_ID)
        if run.state == state:
            return runtime, run
        deliveries = runtime.queue.receive(1)
        if not deliveries:
            due = runtime.queue.next_due()
            assert due is not None
            runtime.clock.advance_to(due)
            continue
        runtime.service.handle(deliveries[0])
    raise AssertionError(f"never {state}")


def ssm_event(
    instance_ids: list[str], status: str = "Success", document: str = "AWS-RunPatchBaseline"
) -> dict[str, Any]:
    """The documented Run Command status-change sample, for these instances, status and document."""
    event = copy.deepcopy(published("ssm_command_status_change.json"))
    event["resources"] = [f"arn:aws:ec2:ap-northeast-1:123456789012:instance/{i}" for i in instance_ids]
    event["detail"]["status"], event["detail"]["document-name"] = status, document
    event["time"] = "2026-12-12T03:00:07Z"
    return event


# ---------------------------------------------------------------- reading the documented events


def test_the_documented_run_command_event_reads_as_a_run_command_end() -> None:
    signal = read_event(published("ssm_command_status_change.json"), NOW)
    assert signal is not None and signal.kind == "run_command"
    assert signal.machines == frozenset({"i-abcd1111"})
    assert (signal.account, signal.region) == ("123456789012", "us-east-1")
    assert signal.at == datetime(2016, 7, 10, 21, 51, 32, tzinfo=UTC)
    assert "AWS-RunPowerShellScript" in signal.source and "Success" in signal.source


@pytest.mark.parametrize("name", ["ebs_create_snapshots_succeeded.json", "ebs_create_snapshots_failed.json"])
def test_the_documented_snapshot_set_events_read_as_snapshot_ends(name: str) -> None:
    signal = read_event(published(name), NOW)
    assert signal is not None and signal.kind == "snapshots"
    assert (signal.account, signal.region) == ("012345678901", "us-east-1")
    assert signal.at == NOW  # the sample's time is a placeholder: the waker's clock stands in


def test_events_that_wake_nothing_read_as_none() -> None:
    assert read_event(ssm_event(["i-1"], status="InProgress"), NOW) is None  # not ended
    assert read_event(ssm_event(["i-1"], document="AWS-ConfigureAWSPackage"), NOW) is None  # not ours
    assert read_event(published("ssm_command_invocation_status_change.json"), NOW) is None  # one per instance
    assert read_event({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification"}, NOW) is None


# ---------------------------------------------------------------- which runs an event wakes


def test_a_run_command_end_wakes_the_run_awaiting_an_install_on_one_of_its_instances(tmp_path: Path) -> None:
    _, run = run_in(tmp_path, "installing")
    command = run.awaited_command
    assert isinstance(command, InstallPatches)
    ours = command.targets[0].instance.id
    signal = read_event(ssm_event(["i-0ther", ours.upper()]), NOW)
    assert signal is not None
    (woken,) = wake_ups(signal, [run])
    assert woken.look == LookNow(
        id=f"{command.id}:look:20261212T030015", run_id=RUN_ID, command_id=command.id, reason=signal.source
    )
    assert woken.at == datetime(2026, 12, 12, 3, 0, 15, tzinfo=UTC)  # the end of its 15 s window
    assert wake_ups(Signal("run_command", NOW, "other", frozenset({"i-0ther"})), [run]) == []
    assert wake_ups(Signal("snapshots", NOW, "ebs", account=None, region=None), [run]) == []


def test_a_snapshot_set_end_wakes_runs_awaiting_snapshots_in_its_account_and_region(tmp_path: Path) -> None:
    _, run = run_in(tmp_path, "snapshotting")
    command = run.awaited_command
    assert isinstance(command, TakeSnapshots)
    region = next(i.region for i in command.targets)
    assert len(wake_ups(Signal("snapshots", NOW, "ebs", region=region), [run])) == 1
    assert wake_ups(Signal("snapshots", NOW, "ebs", region="eu-west-3"), [run]) == []
    assert wake_ups(Signal("run_command", NOW, "ssm", frozenset(i.id.lower() for i in command.targets)), [run]) == []


def test_a_forwarded_snapshot_set_end_wakes_the_runs_with_machines_in_its_account_and_region(tmp_path: Path) -> None:
    """A forwarding rule (infra/aws/wake-forwarder.yaml) delivers the event to the stack's wake bus
    as it was: its `account` and `region` are still the origin's, and say whose snapshots ended."""
    _, run = run_in(tmp_path, "snapshotting")
    command = run.awaited_command
    assert isinstance(command, TakeSnapshots)
    elsewhere = [dataclasses.replace(i, account="222233334444", region="eu-central-1") for i in command.targets]
    run = run.model_copy(update={"awaited_command": command.model_copy(update={"targets": elsewhere})})
    event = {**published("ebs_create_snapshots_succeeded.json"), "account": "222233334444", "region": "eu-central-1"}
    signal = read_event(event, NOW)
    assert signal is not None and len(wake_ups(signal, [run])) == 1
    for account, region in (("999988887777", "eu-central-1"), ("222233334444", "us-east-1")):
        other = read_event({**event, "account": account, "region": region}, NOW)
        assert other is not None and wake_ups(other, [run]) == [], (account, region)


def test_another_account_s_snapshot_set_end_wakes_no_run_of_machines_in_the_waker_s_own(tmp_path: Path) -> None:
    """Machines that name no account are in the deployment's own (`home_account`): a snapshot set
    that ended in a member account, forwarded to the waker, is not theirs. Without the home
    account known, as far as both say: any account's."""
    _, run = run_in(tmp_path, "snapshotting")
    command = run.awaited_command
    assert isinstance(command, TakeSnapshots) and all(i.account is None for i in command.targets)
    region = command.targets[0].region
    own, member = "111122223333", "222233334444"
    forwarded = Signal("snapshots", NOW, "ebs", account=member, region=region)
    assert wake_ups(forwarded, [run], home_account=own) == []
    assert len(wake_ups(Signal("snapshots", NOW, "ebs", account=own, region=region), [run], home_account=own)) == 1
    assert len(wake_ups(forwarded, [run])) == 1  # the home account unknown


def test_a_burst_within_one_window_shares_one_id_and_the_next_window_another() -> None:
    assert window_end(NOW) == window_end(NOW + timedelta(seconds=7)) == datetime(2026, 12, 12, 3, 0, 15, tzinfo=UTC)
    assert window_end(NOW + timedelta(seconds=8)) == window_end(NOW) + WINDOW


def test_finished_runs_and_runs_awaiting_no_fleet_command_are_not_woken(tmp_path: Path) -> None:
    _, run = run_in(tmp_path, "soaking")
    assert run.awaited_command is None
    everything = Signal("run_command", NOW, "ssm", frozenset(i.id.lower() for i in FLEET))
    assert wake_ups(everything, [run]) == []


# ---------------------------------------------------------------- the waker


class ActiveLocalRuns:
    """The local store with the index the DynamoDB store keeps (tests/test_aws_store.py checks it)."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime

    def active_run_ids(self) -> list[str]:
        return [i for i in self.runtime.store.run_ids() if not self.runtime.load(i).finished] + ["gone-run"]

    def load(self, run_id: str) -> Run:
        return self.runtime.load(run_id)


def test_the_waker_publishes_the_wake_up_for_the_end_of_its_window_and_the_worker_moves_on(tmp_path: Path) -> None:
    runtime, run = run_in(tmp_path, "installing")
    command = run.awaited_command
    assert isinstance(command, InstallPatches)
    (delivery,) = runtime.queue.receive(1)
    runtime.service.handle(delivery)  # the install starts; parked until its poll
    runtime.queue.retry_at(delivery, runtime.clock.now() + timedelta(days=1))  # a far fallback poll
    for _ in range(240):  # until the simulated install is done
        runtime.clock.advance_to(runtime.clock.now() + timedelta(minutes=1))
        if isinstance(runtime.fleet.install_patches(command), list):
            break
    event = ssm_event([command.targets[0].instance.id])
    event["time"] = runtime.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    waker = Waker(lambda: ActiveLocalRuns(runtime), lambda: runtime.queue, runtime.clock)
    (woken,) = waker.wake(read_event(event, runtime.clock.now()))
    assert runtime.queue.receive(10) == []  # due at the end of its window, not before
    runtime.clock.advance_to(woken.at)
    (look,) = runtime.queue.receive(10)
    assert look.message == woken.look
    runtime.service.handle(look)
    assert runtime.load(RUN_ID).awaiting != command.id  # the install's result is applied
    assert waker.wake(None) == []
