"""The simulated fleet: operations take virtual time, run once per command id, and fail on cue."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clocks import ManualClock

from patchpilot.adapters.local.simulated_fleet import SimulatedFleet, select_patches
from patchpilot.adapters.local.simulated_traffic import PoolCapacity
from patchpilot.engine.messages import (
    CheckHealth,
    InstallPatches,
    InstallTarget,
    LeavePools,
    Outcome,
    ProbeAgents,
    RejoinPools,
    RestoreTarget,
    RollBack,
    RunHostHook,
    TakeSnapshots,
)
from patchpilot.inventory import Instance, Simulation
from patchpilot.policy.model import HealthChecks, HostHook
from patchpilot.ports import InProgress, Progress

T0 = datetime(2025, 1, 14, 22, 0, tzinfo=UTC)
RUN = "run-1"
ARM = "/subscriptions/sub-1/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-01"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "fleet.db"


@pytest.fixture
def fleet(db: Path, clock: ManualClock) -> Iterator[SimulatedFleet]:
    with SimulatedFleet(db, clock) as fleet:
        yield fleet


def vm(instance_id: str = "i-1", os: str = "linux", cloud: str = "aws", name: str = "", **hints: Any) -> Instance:
    simulation = Simulation(**hints) if hints else None
    return Instance(id=instance_id, cloud=cloud, region="r", os=os, name=name, simulation=simulation)  # type: ignore[arg-type]


def snapshots(*instances: Instance, command_id: str = "c-snap") -> TakeSnapshots:
    return TakeSnapshots(id=command_id, run_id=RUN, targets=list(instances))


def install(
    *instances: Instance,
    command_id: str = "c-install",
    only: list[str] | None = None,
    classifications: tuple[str, ...] = ("Critical", "Security"),
    **fields: Any,
) -> InstallPatches:
    return InstallPatches(
        id=command_id,
        run_id=RUN,
        targets=[InstallTarget(instance=i, only=only) for i in instances],
        classifications=list(classifications),
        **fields,
    )


def rollback(*instances: Instance, snapshot_ids: tuple[str, ...] = ("snap-1",)) -> RollBack:
    targets = [RestoreTarget(instance=i, snapshot_ids=list(snapshot_ids)) for i in instances]
    return RollBack(id="c-rollback", run_id=RUN, targets=targets)


def health(
    *instances: Instance, after_rollback: bool = False, command_id: str = "c-health", **checks: Any
) -> CheckHealth:
    return CheckHealth(
        id=command_id,
        run_id=RUN,
        targets=list(instances),
        after_rollback=after_rollback,
        checks=HealthChecks.model_validate(checks),
    )


def finished(progress: Progress) -> list[Outcome]:
    assert isinstance(progress, list), progress
    return progress


def run_to_end(clock: ManualClock, execute: Any) -> list[Outcome]:
    """Poll like the shell does: deliver again at each retry_at until the outcomes come."""
    for _ in range(1000):
        progress = execute()
        if not isinstance(progress, InProgress):
            return list(progress)
        assert progress.retry_at > clock.now()
        clock.set(progress.retry_at)
    raise AssertionError("never finished")


def one(outcomes: list[Outcome]) -> Outcome:
    (outcome,) = outcomes
    return outcome


# --- progress and idempotency ------------------------------------------------------------------------


def test_probe_answers_at_once(fleet: SimulatedFleet) -> None:
    outcome = one(finished(fleet.probe_agents(ProbeAgents(id="c-probe", run_id=RUN, targets=[vm()]))))
    assert outcome.ok
    assert outcome.at == T0


def test_snapshot_is_in_progress_until_every_target_is_done_then_reports_each(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    command = snapshots(vm("i-1"), vm("i-2"), vm("i-3"))
    first = fleet.take_snapshots(command)
    assert isinstance(first, InProgress)
    assert T0 + timedelta(minutes=3) <= first.retry_at <= T0 + timedelta(minutes=6)
    clock.set(first.retry_at - timedelta(seconds=1))
    assert isinstance(fleet.take_snapshots(command), InProgress)
    outcomes = run_to_end(clock, lambda: fleet.take_snapshots(command))
    assert [o.id for o in outcomes] == ["i-1", "i-2", "i-3"]
    assert all(o.ok for o in outcomes)
    assert clock.now() == max(o.at for o in outcomes if o.at)
    for outcome in outcomes:
        assert outcome.at is not None
        assert T0 + timedelta(minutes=3) <= outcome.at <= T0 + timedelta(minutes=6)


def test_in_progress_polls_again_within_ten_minutes(fleet: SimulatedFleet, clock: ManualClock) -> None:
    command = install(vm(install_minutes=60))
    progress = fleet.install_patches(command)
    assert isinstance(progress, InProgress)
    assert progress.retry_at == T0 + timedelta(minutes=10)
    clock.set(T0 + timedelta(minutes=58))
    progress = fleet.install_patches(command)
    assert isinstance(progress, InProgress)
    assert progress.retry_at == T0 + timedelta(minutes=64)  # 60 + 4 of reboot


def test_executing_a_running_command_again_does_not_restart_it(fleet: SimulatedFleet, clock: ManualClock) -> None:
    command = install(vm(install_minutes=30))
    fleet.install_patches(command)
    clock.advance(timedelta(minutes=20))
    fleet.install_patches(command)  # a redelivery mid-way
    clock.set(T0 + timedelta(minutes=34))
    assert one(finished(fleet.install_patches(command))).at == T0 + timedelta(minutes=34)
    assert fleet.effects(RUN) == {("install", "i-1"): 1}


def test_executing_a_finished_command_again_reports_the_same_outcomes_and_adds_no_effects(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    command = snapshots(vm("i-1"), vm("i-2", os="windows"))
    outcomes = run_to_end(clock, lambda: fleet.take_snapshots(command))
    clock.advance(timedelta(hours=3))
    assert finished(fleet.take_snapshots(command)) == outcomes
    assert finished(fleet.take_snapshots(command)) == outcomes
    assert fleet.effects(RUN) == {("snapshot", "i-1"): 1, ("snapshot", "i-2"): 1}


def test_a_new_command_for_the_same_instance_is_a_new_effect(fleet: SimulatedFleet, clock: ManualClock) -> None:
    first = run_to_end(clock, lambda: fleet.take_snapshots(snapshots(vm(), command_id="c-a")))
    second = run_to_end(clock, lambda: fleet.take_snapshots(snapshots(vm(), command_id="c-b")))
    assert fleet.effects(RUN) == {("snapshot", "i-1"): 2}
    assert one(first).items != one(second).items  # each snapshot is a new one


def test_probes_and_health_checks_are_not_effects(fleet: SimulatedFleet, clock: ManualClock) -> None:
    fleet.probe_agents(ProbeAgents(id="c-probe", run_id=RUN, targets=[vm()]))
    run_to_end(clock, lambda: fleet.check_health(health(vm())))
    assert fleet.effects(RUN) == {}


def test_effects_are_counted_per_run(fleet: SimulatedFleet, clock: ManualClock) -> None:
    other = TakeSnapshots(id="other:snap", run_id="run-2", targets=[vm()])
    run_to_end(clock, lambda: fleet.take_snapshots(other))
    run_to_end(clock, lambda: fleet.take_snapshots(snapshots(vm())))
    assert fleet.effects(RUN) == {("snapshot", "i-1"): 1}
    assert fleet.effects("run-2") == {("snapshot", "i-1"): 1}


def test_state_survives_a_new_fleet_on_the_same_database(db: Path, clock: ManualClock) -> None:
    command = install(vm("i-1"), vm("i-2"))
    before = SimulatedFleet(db, clock)
    started = before.install_patches(command)
    assert isinstance(started, InProgress)
    before.close()  # the process dies mid-install
    clock.advance(timedelta(hours=2))
    after = SimulatedFleet(db, clock)
    outcomes = finished(after.install_patches(command))
    assert all(o.at is not None and o.at < T0 + timedelta(minutes=60) for o in outcomes)
    assert after.effects(RUN) == {("install", "i-1"): 1, ("install", "i-2"): 1}


def test_a_crash_while_recording_the_first_execution_records_nothing(
    db: Path, fleet: SimulatedFleet, clock: ManualClock
) -> None:
    crash = sqlite3.connect(db)
    crash.execute(
        "CREATE TRIGGER crash BEFORE INSERT ON sim_ops WHEN NEW.instance_id = 'i-2'"
        " BEGIN SELECT RAISE(ABORT, 'simulated crash'); END"
    )
    crash.commit()
    command = snapshots(vm("i-1"), vm("i-2"))
    with pytest.raises(sqlite3.DatabaseError):
        fleet.take_snapshots(command)
    assert fleet.effects(RUN) == {}
    crash.execute("DROP TRIGGER crash")
    crash.commit()
    crash.close()
    outcomes = run_to_end(clock, lambda: fleet.take_snapshots(command))
    assert [o.id for o in outcomes] == ["i-1", "i-2"]
    assert fleet.effects(RUN) == {("snapshot", "i-1"): 1, ("snapshot", "i-2"): 1}


def test_two_fleets_on_one_database_start_a_command_once(db: Path, clock: ManualClock) -> None:
    a, b = SimulatedFleet(db, clock), SimulatedFleet(db, clock)
    command = snapshots(vm())
    a.take_snapshots(command)
    clock.advance(timedelta(minutes=1))
    b.take_snapshots(command)
    clock.advance(timedelta(hours=1))
    assert finished(a.take_snapshots(command)) == finished(b.take_snapshots(command))
    assert a.effects(RUN) == {("snapshot", "i-1"): 1}


def test_a_command_without_targets_is_done_at_once(fleet: SimulatedFleet) -> None:
    assert fleet.take_snapshots(snapshots()) == []


def test_a_target_listed_twice_is_operated_on_once(fleet: SimulatedFleet, clock: ManualClock) -> None:
    outcomes = run_to_end(clock, lambda: fleet.take_snapshots(snapshots(vm(), vm())))
    assert [o.id for o in outcomes] == ["i-1"]
    assert fleet.effects(RUN) == {("snapshot", "i-1"): 1}


def test_reusing_a_command_id_for_another_operation_is_an_error(fleet: SimulatedFleet) -> None:
    fleet.take_snapshots(snapshots(vm(), command_id="c-1"))
    with pytest.raises(ValueError, match="first executed as snapshot"):
        fleet.check_health(health(vm(), command_id="c-1"))


def test_an_instance_unknown_to_any_inventory_is_answered_with_defaults(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    stranger = Instance(id="i-not-in-inventory", cloud="aws", region="eu-west-1", os="linux")
    probe = ProbeAgents(id="c-probe", run_id=RUN, targets=[stranger])
    assert one(finished(fleet.probe_agents(probe))).ok
    assert one(run_to_end(clock, lambda: fleet.install_patches(install(stranger)))).ok


# --- durations -----------------------------------------------------------------------------------------


def durations(clock: ManualClock, execute: Any) -> list[timedelta]:
    start = clock.now()
    outcomes = run_to_end(clock, execute)
    return [o.at - start for o in outcomes if o.at]


def test_durations_are_deterministic_and_within_their_ranges(db: Path, clock: ManualClock) -> None:
    fleet = SimulatedFleet(db, clock)
    instances = [vm(f"i-{n}") for n in range(40)]
    snap = durations(clock, lambda: fleet.take_snapshots(snapshots(*instances)))
    inst = durations(clock, lambda: fleet.install_patches(install(*instances)))
    check = durations(clock, lambda: fleet.check_health(health(*instances)))
    back = durations(clock, lambda: fleet.roll_back(rollback(*instances)))
    minutes = timedelta(minutes=1)
    assert {d // minutes for d in snap} <= set(range(3, 7))
    assert {d // minutes for d in inst} <= set(range(24, 55))  # 20-50, plus 4 of reboot
    assert {d // minutes for d in check} == {2}
    assert {d // minutes for d in back} <= set(range(8, 15))
    assert len(set(inst)) > 5  # spread over the fleet, not one value

    other_clock = ManualClock(T0)
    again = SimulatedFleet(db.with_name("other.db"), other_clock)
    assert durations(other_clock, lambda: again.take_snapshots(snapshots(*instances))) == snap


def test_install_minutes_sets_the_install_time_plus_a_reboot(fleet: SimulatedFleet, clock: ManualClock) -> None:
    outcome = one(run_to_end(clock, lambda: fleet.install_patches(install(vm(install_minutes=90)))))
    assert outcome.at == T0 + timedelta(minutes=94)
    assert outcome.detail.endswith("rebooted")


def test_reboot_never_skips_the_reboot_time(fleet: SimulatedFleet, clock: ManualClock) -> None:
    command = install(vm(install_minutes=90), reboot="never")
    outcome = one(run_to_end(clock, lambda: fleet.install_patches(command)))
    assert outcome.at == T0 + timedelta(minutes=90)
    assert "not rebooted" in outcome.detail


def test_a_hotpatch_only_target_skips_the_reboot_and_says_so(fleet: SimulatedFleet, clock: ManualClock) -> None:
    command = install(vm(install_minutes=90))
    command = command.model_copy(update={"targets": [command.targets[0].model_copy(update={"reboot": "never"})]})
    outcome = one(run_to_end(clock, lambda: fleet.install_patches(command)))
    assert outcome.at == T0 + timedelta(minutes=90)
    assert outcome.detail.endswith("not rebooted (hotpatch only: no reboot)")


# --- outcomes and fault hints -----------------------------------------------------------------------


def test_an_offline_agent_fails_the_probe_naming_the_cloud(fleet: SimulatedFleet) -> None:
    targets = [vm("i-1", agent="offline"), vm(ARM, cloud="azure", agent="offline"), vm("i-3")]
    outcomes = finished(fleet.probe_agents(ProbeAgents(id="c-probe", run_id=RUN, targets=targets)))
    aws, azure, online = outcomes
    assert not aws.ok and aws.detail == "SSM agent not reporting (ConnectionLost)"
    assert not azure.ok and azure.detail.startswith("VM agent not ready")
    assert online.ok


def test_aws_snapshots_are_one_snap_id_per_disk(fleet: SimulatedFleet, clock: ManualClock) -> None:
    linux, windows = run_to_end(clock, lambda: fleet.take_snapshots(snapshots(vm("i-1"), vm("i-2", os="windows"))))
    assert len(linux.items) == 1
    assert len(windows.items) == 2
    for snapshot_id in [*linux.items, *windows.items]:
        assert re.fullmatch(r"snap-[0-9a-f]{17}", snapshot_id)
    assert len(set(windows.items)) == 2


def test_azure_snapshots_live_in_the_vm_resource_group(fleet: SimulatedFleet, clock: ManualClock) -> None:
    targets = (vm(ARM, os="windows", cloud="azure"), vm("db-01", cloud="azure"))
    arm, plain = run_to_end(clock, lambda: fleet.take_snapshots(snapshots(*targets)))
    prefix = "/subscriptions/sub-1/resourceGroups/rg-web/providers/Microsoft.Compute/snapshots/web-01-"
    assert len(arm.items) == 2
    assert all(item.startswith(prefix) for item in arm.items)
    (name,) = plain.items
    assert name.startswith("db-01-osdisk-") and "/" not in name


def test_a_failing_snapshot_reports_no_snapshot(fleet: SimulatedFleet, clock: ManualClock) -> None:
    outcome = one(run_to_end(clock, lambda: fleet.take_snapshots(snapshots(vm(snapshot="fail")))))
    assert not outcome.ok
    assert outcome.items == []
    assert outcome.detail
    assert fleet.effects(RUN) == {("snapshot", "i-1"): 1}  # it was attempted


def test_a_failing_install_reports_the_exit_code(fleet: SimulatedFleet, clock: ManualClock) -> None:
    targets = (vm("i-1", install="fail"), vm("i-2", os="windows", install="fail"), vm("i-3"))
    linux, windows, fine = run_to_end(clock, lambda: fleet.install_patches(install(*targets)))
    assert not linux.ok and linux.detail.startswith("exit code 1: package conflict")
    assert not windows.ok and windows.detail.startswith("exit code 0x80070643")
    assert linux.items == windows.items == []
    assert fine.ok


def test_a_failing_install_names_only_a_patch_it_was_asked_to_install(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    command = install(vm("i-1", install="fail"), vm("i-2", os="windows", install="fail"), only=["openssl-3.0.13-1.el9"])
    linux, windows = run_to_end(clock, lambda: fleet.install_patches(command))
    assert "openssl-3.0.13-1.el9" in linux.detail
    assert windows.detail == "exit code 0x80070643: the update installer failed before installing anything"
    nothing = install(vm("i-3", install="fail"), command_id="c-nothing", only=[])
    empty = one(run_to_end(clock, lambda: fleet.install_patches(nothing)))
    assert not empty.ok and "openssl" not in empty.detail and "before installing anything" in empty.detail


def checked(fleet: SimulatedFleet, clock: ManualClock, command: CheckHealth) -> dict[str, Outcome]:
    return {o.id: o for o in run_to_end(clock, lambda: fleet.check_health(command))}


def test_a_failing_health_check_without_policy_checks_names_the_clouds_status_check(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    sick = (vm("i-1", health="fail"), vm(ARM, cloud="azure", health="fail"))
    aws, azure = checked(fleet, clock, health(*sick)).values()
    assert not aws.ok and aws.detail == "EC2 status check: instance impaired"
    assert not azure.ok and azure.detail == "Azure status check: VM agent Not Ready"
    for outcome in (aws, azure):
        assert "HTTP" not in outcome.detail and "script" not in outcome.detail and "alarm" not in outcome.detail
    recheck = checked(fleet, clock, health(*sick, after_rollback=True, command_id="c-recheck"))
    assert recheck["i-1"].ok and recheck["i-1"].detail == "status checks 2/2 passed, SSM agent online"
    assert recheck[ARM].ok and recheck[ARM].detail == "VM running, VM agent Ready"


def test_a_failing_health_check_names_the_policys_http_check(fleet: SimulatedFleet, clock: ManualClock) -> None:
    command = health(
        vm("i-1", name="web-1", health="fail"),
        vm("i-2", name="web-2"),
        http=["http://{name}:8080/healthz", "https://{private_ip}/ready"],
    )
    outcomes = checked(fleet, clock, command)
    assert not outcomes["i-1"].ok and outcomes["i-1"].detail == "GET http://web-1:8080/healthz: HTTP 503"
    assert outcomes["i-2"].ok and outcomes["i-2"].detail == "status checks 2/2 passed, SSM agent online, HTTP 200, 200"


def test_a_failing_health_check_names_the_alarm_on_aws_only(fleet: SimulatedFleet, clock: ManualClock) -> None:
    sick = (vm("i-1", name="api-1", health="fail"), vm(ARM, cloud="azure", health="fail"))
    outcomes = checked(fleet, clock, health(*sick, alarms=["api-5xx-{name}"], http=["http://{name}/"]))
    assert outcomes["i-1"].detail == "alarm api-5xx-api-1 is ALARM"  # alarms are read before HTTP on AWS
    assert outcomes[ARM].detail == "GET http://web-01/: HTTP 503"  # no CloudWatch alarms on Azure
    fine = checked(fleet, clock, health(vm(ARM, cloud="azure"), alarms=["api-5xx"], command_id="c-2"))
    assert fine[ARM].detail == "VM running, VM agent Ready, CloudWatch alarms not checked (AWS only)"


def test_a_failing_health_check_names_the_script_of_the_machines_os(fleet: SimulatedFleet, clock: ManualClock) -> None:
    sick = (vm("i-1", health="fail"), vm("i-2", os="windows", health="fail"), vm(ARM, cloud="azure", health="fail"))
    outcomes = checked(fleet, clock, health(*sick, script={"linux": "systemctl is-active nginx"}))
    assert outcomes["i-1"].detail == "health script: exit code 1"
    assert outcomes[ARM].detail == "health script failed, exit code 1"
    assert outcomes["i-2"].detail == "EC2 status check: instance impaired"  # no Windows script in the policy


def test_the_status_check_says_after_the_reboot_only_when_the_install_rebooted(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    rebooted, not_rebooted = vm("i-1", health="fail"), vm("i-2", health="fail")
    run_to_end(clock, lambda: fleet.install_patches(install(rebooted, command_id="c-i1")))
    run_to_end(clock, lambda: fleet.install_patches(install(not_rebooted, command_id="c-i2", reboot="never")))
    outcomes = checked(fleet, clock, health(rebooted, not_rebooted))
    assert (
        outcomes["i-1"].detail
        == "EC2 status check: instance impaired, SSM agent not back after the reboot (ConnectionLost)"
    )
    assert outcomes["i-2"].detail == "EC2 status check: instance impaired"


def test_an_http_check_whose_url_cannot_be_built_fails_as_on_the_clouds(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    outcome = one(run_to_end(clock, lambda: fleet.check_health(health(vm(name="x/../admin"), http=["http://{name}/"]))))
    assert not outcome.ok and "is not a DNS label or an IP address" in outcome.detail


def test_a_rollback_names_the_snapshot_it_restored(fleet: SimulatedFleet, clock: ManualClock) -> None:
    command = rollback(vm(), snapshot_ids=("snap-0aaa", "snap-0bbb"))
    outcome = one(run_to_end(clock, lambda: fleet.roll_back(command)))
    assert outcome.ok
    assert "snap-0aaa" in outcome.detail
    assert fleet.effects(RUN) == {("rollback", "i-1"): 1}


def test_a_failing_rollback_reports_its_failure(fleet: SimulatedFleet, clock: ManualClock) -> None:
    outcome = one(run_to_end(clock, lambda: fleet.roll_back(rollback(vm(rollback="fail")))))
    assert not outcome.ok
    assert "snap-1" in outcome.detail


def test_a_rollback_restores_data_volumes_only_when_asked(fleet: SimulatedFleet, clock: ManualClock) -> None:
    root_only = one(run_to_end(clock, lambda: fleet.roll_back(rollback(vm("i-1"), snapshot_ids=("snap-a", "snap-b")))))
    assert root_only.detail == "root volume restored from snap-a" and root_only.items == ["snap-a"]
    targets = [RestoreTarget(instance=vm(ARM, cloud="azure"), snapshot_ids=["os-snap", "data-snap"])]
    command = RollBack(id="c-rollback-2", run_id=RUN, targets=targets, restore_data_volumes=True)
    both = one(run_to_end(clock, lambda: fleet.roll_back(command)))
    assert both.detail == "OS disk restored from os-snap and 1 data disk from its snapshots"
    assert both.items == ["os-snap", "data-snap"]


def test_a_rollback_without_snapshots_fails(fleet: SimulatedFleet, clock: ManualClock) -> None:
    outcome = one(run_to_end(clock, lambda: fleet.roll_back(rollback(vm(), snapshot_ids=()))))
    assert not outcome.ok and outcome.detail == "no snapshot to restore from"


# --- what gets installed ----------------------------------------------------------------------------


def installed(fleet: SimulatedFleet, clock: ManualClock, command: InstallPatches) -> list[str]:
    return one(run_to_end(clock, lambda: fleet.install_patches(command))).items


def test_a_pinned_install_installs_exactly_the_promoted_set(fleet: SimulatedFleet, clock: ManualClock) -> None:
    pinned = ["openssl-3.0.13-1.el9", "not-in-the-catalog-1.0-1.el9"]
    command = install(vm(), only=pinned, classifications=("Other",), include=["curl"], exclude=["openssl"])
    assert installed(fleet, clock, command) == pinned


def test_an_empty_pinned_set_installs_nothing(fleet: SimulatedFleet, clock: ManualClock) -> None:
    assert installed(fleet, clock, install(vm(), only=[])) == []


def test_classifications_choose_from_the_catalog_per_os(fleet: SimulatedFleet, clock: ManualClock) -> None:
    linux = installed(fleet, clock, install(vm(), command_id="c-1", classifications=("Security",)))
    assert "openssl-3.0.13-1.el9" in linux
    assert "kernel-5.14.0-503.el9" not in linux  # Critical
    windows = install(vm("w-1", os="windows"), command_id="c-2", classifications=("Definition", "UpdateRollup"))
    assert installed(fleet, clock, windows) == ["KB890830", "KB2267602"]
    assert installed(fleet, clock, install(vm(), command_id="c-3", classifications=("Tools",))) == []


def test_include_adds_and_exclude_removes() -> None:
    linux = select_patches("linux", ["Critical", "Security"], ["nginx-1.20.1-16.el9", "KB5048661"], ["kernel"])
    assert "nginx-1.20.1-16.el9" in linux  # not in the catalog: taken as it is
    assert "KB5048661" not in linux  # a Windows update
    assert not any(p.startswith("kernel") for p in linux)
    windows = select_patches("windows", ["Security"], ["KB5099999", "KB2*"], ["kb5048817"])
    assert windows == ["KB5048661", "KB5099999", "KB2267602"]


def test_exclude_wins_over_include() -> None:
    assert "curl-7.76.1-29.el9" not in select_patches("linux", [], ["curl*"], ["curl"])


# --- traffic pools, scaling groups and host hooks (simulated_traffic.py) -----------------------------

WEB, API = "tg/web", "tg/api"


def pooled(instance_id: str = "i-1", *pools: str, group: str | None = None, **hints: Any) -> Instance:
    simulation = Simulation(**hints) if hints else None
    return Instance(
        id=instance_id,
        cloud="aws",
        region="r",
        os="linux",
        traffic_pools=pools,
        scaling_group=group,
        simulation=simulation,
    )


def leave(
    *instances: Instance, command_id: str = "c-leave", wave: int = 1, timeout: timedelta | None = None, **fields: Any
) -> LeavePools:
    return LeavePools(
        id=command_id, run_id=RUN, wave=wave, targets=list(instances), issued_at=T0, timeout=timeout, **fields
    )


def rejoin(
    *instances: Instance,
    command_id: str = "c-rejoin",
    registrations: dict[str, list[str]] | None = None,
    issued_at: datetime = T0,
    **fields: Any,
) -> RejoinPools:
    return RejoinPools(
        id=command_id,
        run_id=RUN,
        wave=1,
        targets=list(instances),
        registrations=registrations or {},
        issued_at=issued_at,
        **fields,
    )


def host_hook_command(*instances: Instance, phase: str = "before_install", command_id: str = "c-hook") -> RunHostHook:
    hook = HostHook(linux="systemctl stop app", windows="Stop-Service app")
    return RunHostHook(id=command_id, run_id=RUN, targets=list(instances), phase=phase, hook=hook, issued_at=T0)  # type: ignore[arg-type]


def items_of(outcomes: list[Outcome]) -> dict[str, list[str]]:
    return {o.id: o.items for o in outcomes}


def test_leaving_takes_each_pool_out_and_is_done_once_drained_30_seconds_later(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    command = leave(pooled("i-1", WEB, API))

    progress = fleet.leave_pools(command)

    assert isinstance(progress, InProgress)
    assert progress.retry_at == T0 + timedelta(seconds=30)
    assert progress.note == f"0/1 done; i-1: still draining from pool {WEB}"
    clock.set(progress.retry_at)
    outcome = one(finished(fleet.leave_pools(command)))
    assert outcome.ok and outcome.at == T0 + timedelta(seconds=30)
    assert outcome.items == [f"pool|{WEB}", f"pool|{API}"]
    assert outcome.detail == f"left 2 pools ({WEB}, {API})"


def test_a_redelivered_leave_reports_the_same_outcome_and_changes_nothing_again(
    db: Path, fleet: SimulatedFleet, clock: ManualClock
) -> None:
    command = leave(pooled("i-1", WEB))
    first = run_to_end(clock, lambda: fleet.leave_pools(command))

    assert fleet.leave_pools(command) == first  # the queue delivered it twice
    with SimulatedFleet(db, clock) as other:
        assert other.leave_pools(command) == first  # from another process too


def test_a_machine_already_out_is_not_taken_out_again(fleet: SimulatedFleet, clock: ManualClock) -> None:
    run_to_end(clock, lambda: fleet.leave_pools(leave(pooled("i-1", WEB))))

    again = one(run_to_end(clock, lambda: fleet.leave_pools(leave(pooled("i-1", WEB), command_id="c-leave-2"))))

    assert (again.ok, again.items, again.detail) == (True, [], "already out of its pools")


def test_a_machine_out_of_one_pool_leaves_only_the_other(fleet: SimulatedFleet, clock: ManualClock) -> None:
    run_to_end(clock, lambda: fleet.leave_pools(leave(pooled("i-1", WEB))))

    outcome = one(run_to_end(clock, lambda: fleet.leave_pools(leave(pooled("i-1", WEB, API), command_id="c-2"))))

    assert outcome.items == [f"pool|{API}"]
    assert outcome.detail == f"left 1 pool ({API}), already out of {WEB}"


def test_a_machine_without_pools_is_done_at_once_with_no_items(fleet: SimulatedFleet) -> None:
    outcomes = finished(fleet.leave_pools(leave(pooled("i-1"), pooled("i-2", group="asg-web"))))

    assert [(o.ok, o.items, o.detail) for o in outcomes] == [(True, [], "no traffic pools")] * 2


def test_rejoining_puts_back_exactly_what_leaving_removed_and_waits_for_pool_health(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    machine = pooled("i-1", WEB, API)
    run_to_end(clock, lambda: fleet.leave_pools(leave(pooled("i-1", WEB))))  # out of web before the run's leave
    left = one(run_to_end(clock, lambda: fleet.leave_pools(leave(machine, command_id="c-2"))))
    back_at = clock.now()
    command = rejoin(machine, registrations={"i-1": left.items}, issued_at=back_at, pool_health=True)

    progress = fleet.rejoin_pools(command)

    assert isinstance(progress, InProgress) and progress.retry_at == back_at + timedelta(seconds=20)
    clock.set(progress.retry_at)
    outcome = one(finished(fleet.rejoin_pools(command)))
    assert outcome.items == [f"pool|{API}"]  # web was out before: it stays out
    assert outcome.detail == f"rejoined 1 pool ({API}): healthy"
    assert one(finished(fleet.rejoin_pools(rejoin(machine, command_id="c-sweep", at_run_end=True)))).items == [
        f"pool|{WEB}"
    ]


def test_without_pool_health_a_rejoin_is_done_at_once(fleet: SimulatedFleet, clock: ManualClock) -> None:
    run_to_end(clock, lambda: fleet.leave_pools(leave(pooled("i-1", WEB))))

    outcome = one(finished(fleet.rejoin_pools(rejoin(pooled("i-1", WEB), issued_at=clock.now()))))

    assert (outcome.items, outcome.detail) == ([f"pool|{WEB}"], f"rejoined 1 pool ({WEB})")


def test_the_run_end_sweep_re_adds_only_what_is_out_and_says_so(fleet: SimulatedFleet, clock: ManualClock) -> None:
    out, back = pooled("i-1", WEB), pooled("i-2", WEB)
    left = run_to_end(clock, lambda: fleet.leave_pools(leave(out, back)))
    finished(fleet.rejoin_pools(rejoin(back, registrations={"i-2": items_of(left)["i-2"]})))
    # the run crashed before i-1 rejoined: the sweep at its end puts it back, and only it
    sweep = rejoin(out, back, command_id="c-sweep", registrations=items_of(left), at_run_end=True)

    outcomes = finished(fleet.rejoin_pools(sweep))

    assert items_of(outcomes) == {"i-1": [f"pool|{WEB}"], "i-2": []}
    assert [o.detail for o in outcomes] == [f"rejoined 1 pool ({WEB})", "already in its pools"]
    assert finished(fleet.rejoin_pools(sweep)) == outcomes


def test_a_registration_the_simulated_fleet_never_made_fails_naming_it(fleet: SimulatedFleet) -> None:
    outcome = one(finished(fleet.rejoin_pools(rejoin(pooled("i-1", WEB), registrations={"i-1": ["arn:tg|i-1|80"]}))))

    assert not outcome.ok
    assert outcome.detail.startswith("not a registration of the simulated fleet: 'arn:tg|i-1|80'")


def test_standby_puts_a_scaling_group_member_in_standby_and_back(fleet: SimulatedFleet, clock: ManualClock) -> None:
    member = pooled("i-1", WEB, group="asg-web")

    left = one(run_to_end(clock, lambda: fleet.leave_pools(leave(member, standby=True))))
    back = one(run_to_end(clock, lambda: fleet.rejoin_pools(rejoin(member, registrations={"i-1": left.items}))))

    assert left.items == [f"pool|{WEB}", "standby|asg-web"]
    assert left.detail == f"left 1 pool ({WEB}); entered Standby in scaling group asg-web"
    assert back.items == [f"pool|{WEB}", "standby|asg-web"]
    assert back.detail == f"rejoined 1 pool ({WEB}); left Standby in scaling group asg-web"


def test_without_standby_a_scaling_group_member_only_leaves_its_pools(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    left = one(run_to_end(clock, lambda: fleet.leave_pools(leave(pooled("i-1", WEB, group="asg-web")))))

    assert left.items == [f"pool|{WEB}"]


def test_a_drain_that_times_out_is_in_progress_until_the_service_fails_it(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    command = leave(pooled("i-1", WEB, drain="timeout"), timeout=timedelta(minutes=2))

    clock.advance(timedelta(hours=1))
    progress = fleet.leave_pools(command)

    assert isinstance(progress, InProgress)
    assert progress.note == f"0/1 done; i-1: still draining from pool {WEB}"


def test_a_drain_without_a_timeout_fails_at_the_default_deregistration_delay(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    command = leave(pooled("i-1", WEB, drain="timeout"), pooled("i-2", WEB))

    outcomes = run_to_end(clock, lambda: fleet.leave_pools(command))

    assert clock.now() == T0 + timedelta(minutes=5)
    assert [o.ok for o in outcomes] == [False, True]
    assert outcomes[0].detail == (
        f"still draining from pool {WEB} after 5m, the default deregistration delay (no traffic.drain_timeout)"
    )


def test_a_pool_that_stays_unhealthy_keeps_the_rejoin_in_progress(fleet: SimulatedFleet, clock: ManualClock) -> None:
    machine = pooled("i-1", WEB, pool_health="fail")
    run_to_end(clock, lambda: fleet.leave_pools(leave(machine)))
    command = rejoin(machine, pool_health=True, issued_at=clock.now())

    fleet.rejoin_pools(command)
    clock.advance(timedelta(hours=1))
    progress = fleet.rejoin_pools(command)

    assert isinstance(progress, InProgress)
    assert progress.note == f"0/1 done; i-1: pool {WEB} reports it unhealthy"
    assert one(finished(fleet.rejoin_pools(rejoin(machine, command_id="c-2")))).ok  # without pool_health: not checked


def test_a_machine_restored_by_a_rollback_is_healthy_in_its_pool_again(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    machine = pooled("i-1", WEB, pool_health="fail")
    run_to_end(clock, lambda: fleet.leave_pools(leave(machine)))
    run_to_end(clock, lambda: fleet.roll_back(rollback(machine)))

    outcome = one(run_to_end(clock, lambda: fleet.rejoin_pools(rejoin(machine, pool_health=True))))

    assert outcome.ok and outcome.detail == f"rejoined 1 pool ({WEB}): healthy"


def test_reusing_a_leave_command_id_to_rejoin_is_an_error(fleet: SimulatedFleet) -> None:
    fleet.leave_pools(leave(pooled("i-1", WEB), command_id="c-1"))

    with pytest.raises(ValueError, match="first executed as leave"):
        fleet.rejoin_pools(rejoin(pooled("i-1", WEB), command_id="c-1"))


def test_a_crash_while_recording_a_leave_takes_nothing_out(db: Path, fleet: SimulatedFleet, clock: ManualClock) -> None:
    crash = sqlite3.connect(db)
    crash.execute(
        "CREATE TRIGGER crash BEFORE INSERT ON sim_pool_ops WHEN NEW.instance_id = 'i-2'"
        " BEGIN SELECT RAISE(ABORT, 'simulated crash'); END"
    )
    crash.commit()
    command = leave(pooled("i-1", WEB), pooled("i-2", WEB))
    with pytest.raises(sqlite3.DatabaseError):
        fleet.leave_pools(command)
    crash.execute("DROP TRIGGER crash")
    crash.commit()
    crash.close()

    outcomes = run_to_end(clock, lambda: fleet.leave_pools(command))

    assert items_of(outcomes) == {"i-1": [f"pool|{WEB}"], "i-2": [f"pool|{WEB}"]}  # i-1 was not left out half-way


def test_pool_capacity_says_how_many_members_served_at_each_waves_lowest_point(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    web = [pooled(f"i-{n}", WEB) for n in range(1, 6)]  # five members
    broken = pooled("i-9", WEB, API, pool_health="fail")
    fleet.leave_pools(leave(web[0], broken, command_id="w1-leave", wave=1))
    clock.advance(timedelta(minutes=30))
    fleet.rejoin_pools(rejoin(web[0], broken, command_id="w1-rejoin"))  # i-9 stays unhealthy: out of service
    clock.advance(timedelta(minutes=30))
    fleet.leave_pools(leave(web[1], web[2], command_id="w2-leave", wave=2))
    clock.advance(timedelta(minutes=30))
    fleet.rejoin_pools(rejoin(web[1], web[2], command_id="w2-rejoin"))

    capacity = fleet.pool_capacity(RUN, [*web, broken])

    assert capacity == [
        PoolCapacity(wave=1, pool=API, members=1, lowest=0),
        PoolCapacity(wave=1, pool=WEB, members=6, lowest=4),
        PoolCapacity(wave=2, pool=API, members=1, lowest=0),
        PoolCapacity(wave=2, pool=WEB, members=6, lowest=3),  # i-2, i-3 and the broken i-9
    ]
    assert fleet.pool_capacity("another-run", web) == []


def test_a_host_hook_takes_ten_seconds_and_runs_once_per_command(fleet: SimulatedFleet, clock: ManualClock) -> None:
    command = host_hook_command(vm("i-1"), vm("i-2", os="windows"))

    progress = fleet.run_hook(command)

    assert isinstance(progress, InProgress) and progress.retry_at == T0 + timedelta(seconds=10)
    clock.set(progress.retry_at)
    outcomes = finished(fleet.run_hook(command))
    assert [(o.id, o.ok, o.detail) for o in outcomes] == [("i-1", True, "exit code 0"), ("i-2", True, "exit code 0")]
    clock.advance(timedelta(hours=1))
    assert finished(fleet.run_hook(command)) == outcomes  # not run again: the same outcomes, at the same time


@pytest.mark.parametrize(
    ("phase", "hint", "tail"),
    [
        ("before_install", "before_install_hook", "hook: service did not stop"),
        ("after_install", "after_install_hook", "hook: service did not start"),
    ],
)
def test_a_failing_host_hook_exits_1_with_its_output_tail(
    fleet: SimulatedFleet, clock: ManualClock, phase: str, hint: str, tail: str
) -> None:
    failing = vm("i-1", **{hint: "fail"})

    outcome = one(run_to_end(clock, lambda: fleet.run_hook(host_hook_command(failing, phase=phase))))
    other_phase = "after_install" if phase == "before_install" else "before_install"
    other = one(
        run_to_end(clock, lambda: fleet.run_hook(host_hook_command(failing, phase=other_phase, command_id="c-2")))
    )

    assert (outcome.ok, outcome.detail) == (False, f"exit code 1: {tail}")
    assert other.ok  # the hint names one phase


def test_a_host_hook_without_a_script_for_the_machines_os_runs_nothing(
    fleet: SimulatedFleet, clock: ManualClock
) -> None:
    command = RunHostHook(
        id="c-hook",
        run_id=RUN,
        targets=[vm("i-1", os="windows")],
        phase="before_install",
        hook=HostHook(linux="systemctl stop app"),
        issued_at=T0,
    )

    outcome = one(run_to_end(clock, lambda: fleet.run_hook(command)))

    assert (outcome.ok, outcome.detail) == (True, "no windows script in the before_install hook: nothing run")
