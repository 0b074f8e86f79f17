"""Runs that accompany a cloud-scheduled run (Azure Update Manager's): the cloud installs;
PatchPilot snapshots every machine before the cancellation cut-off (or cancels the
cloud-scheduled run), then checks health and rolls back what failed.

Driven through the real shell (`Service`) on the local runtime: SQLite store and queue, the
simulated fleet (which plays Update Manager's install) and a recording canceller.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from patchpilot.engine.messages import CancelCloudScheduledRun, Outcome, TakeSnapshots
from patchpilot.engine.run import CloudScheduledRun
from patchpilot.inventory import Instance, Simulation
from patchpilot.local_runtime import LocalRuntime
from patchpilot.planning import plan_cloud_scheduled
from patchpilot.policy.model import Policy
from patchpilot.ports import InProgress, Progress

START = datetime(2026, 3, 10, 21, 20, tzinfo=UTC)  # the pre-maintenance event, 40 min before the window
MAINTENANCE = CloudScheduledRun(
    id="/subscriptions/s1/resourcegroups/rg/providers/microsoft.maintenance/maintenanceconfigurations/pp-prod"
    "/providers/microsoft.maintenance/applyupdates/20260310220000",
    configuration_id="/subscriptions/s1/resourcegroups/rg/providers/microsoft.maintenance/maintenanceconfigurations/pp-prod",
    starts_at=START + timedelta(minutes=40),
    ends_at=START + timedelta(hours=4, minutes=40),
    cancel_by=START + timedelta(minutes=30),
)
POLICY = Policy.model_validate(
    {
        "name": "aum",
        "rings": [
            {"name": "staging", "select": {"tags": {"ring": "staging"}}},
            {"name": "production", "select": {"tags": {"ring": "prod"}}},
        ],
        "exclude": {"tags": {"freeze": "*"}},
        "rollout": {"max_failures": "50%"},
    }
)


def vm(name: str, zone: str, ring: str = "prod", **simulation: str) -> Instance:
    return Instance(
        id=f"/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}",
        cloud="azure",
        region="westeurope",
        os="linux",
        name=name,
        zone=zone,
        tags={"ring": ring},
        simulation=Simulation(**simulation) if simulation else None,  # type: ignore[arg-type]
    )


FLEET = [vm("web-1", "westeurope-1"), vm("web-2", "westeurope-2"), vm("web-3", "westeurope-3", health="fail")]


class Canceller:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.cancelled: list[CancelCloudScheduledRun] = []

    def cancel_maintenance(self, command: CancelCloudScheduledRun) -> Outcome:
        self.cancelled.append(command)
        detail = "cancelled" if self.ok else "the cancellation cut-off has passed"
        return Outcome(id=command.maintenance_run, ok=self.ok, detail=detail)


def runtime(tmp_path: Path, canceller: Canceller | None = None) -> LocalRuntime:
    local = LocalRuntime.open(tmp_path, start=START)
    local.service.maintenance = canceller
    return local


def states(local: LocalRuntime, run_id: str) -> dict[str, str]:
    return {r.instance.short_name: r.state for r in local.load(run_id).records()}


def test_every_machine_in_scope_is_one_wave_whatever_its_ring_and_zone() -> None:
    frozen = replace(vm("db-1", "westeurope-1"), tags={"ring": "prod", "freeze": "yes"})
    staging = vm("stg-1", "westeurope-1", ring="staging")
    result = plan_cloud_scheduled(POLICY, [*FLEET, frozen, staging])
    assert [len(w.instances) for w in result.waves] == [4]
    assert result.waves[0].ring == "staging+production"
    assert [(e.instance.name, e.reason) for e in result.excluded] == [("db-1", "frozen: tag freeze=yes")]


def test_snapshots_then_update_manager_installs_then_failures_are_rolled_back(tmp_path: Path) -> None:
    canceller = Canceller()
    local = runtime(tmp_path, canceller)
    local.service.start_maintenance("aum-1", POLICY, FLEET, MAINTENANCE)
    run = local.drive("aum-1")
    assert run.state == "succeeded", run.reason
    assert states(local, "aum-1") == {"web-1": "patched", "web-2": "patched", "web-3": "rolled_back"}
    assert canceller.cancelled == []
    snapshot = next(s for s in run.records()[0].steps if s.step == "snapshot")
    assert snapshot.at < MAINTENANCE.cancel_by
    assert run.window_end == MAINTENANCE.ends_at


def test_the_install_command_names_the_maintenance_run_and_snapshots_have_a_deadline(tmp_path: Path) -> None:
    local = runtime(tmp_path, Canceller())
    seen: list[object] = []
    original_snapshots, original_install = local.fleet.take_snapshots, local.fleet.install_patches
    local.fleet.take_snapshots = lambda c: (seen.append(c), original_snapshots(c))[1]  # type: ignore[method-assign]
    local.fleet.install_patches = lambda c: (seen.append(c), original_install(c))[1]  # type: ignore[method-assign]
    local.service.start_maintenance("aum-1", POLICY, FLEET, MAINTENANCE)
    local.drive("aum-1")
    snapshots = next(c for c in seen if isinstance(c, TakeSnapshots))
    assert snapshots.deadline == MAINTENANCE.cancel_by - timedelta(minutes=3)
    install = next(c for c in seen if not isinstance(c, TakeSnapshots))
    assert install.maintenance_run == MAINTENANCE.id


def test_a_failed_snapshot_cancels_the_maintenance_run_and_nothing_is_patched(tmp_path: Path) -> None:
    canceller = Canceller()
    local = runtime(tmp_path, canceller)
    fleet = [*FLEET[:2], vm("web-3", "westeurope-3", snapshot="fail")]
    local.service.start_maintenance("aum-1", POLICY, fleet, MAINTENANCE)
    run = local.drive("aum-1")
    assert run.state == "halted"
    assert "cancelled, nothing patched" in run.reason and "web-3" in run.reason
    assert [c.maintenance_run for c in canceller.cancelled] == [MAINTENANCE.id]
    assert states(local, "aum-1") == {"web-1": "not_started", "web-2": "not_started", "web-3": "skipped"}
    assert not [kind for kind, _ in local.fleet.effects("aum-1") if kind == "install"]


def test_when_cancelling_fails_the_protected_machines_are_still_checked_and_rolled_back(tmp_path: Path) -> None:
    canceller = Canceller(ok=False)
    local = runtime(tmp_path, canceller)
    fleet = [vm("web-1", "westeurope-1"), vm("web-2", "westeurope-2", health="fail"), vm("web-3", "z", snapshot="fail")]
    local.service.start_maintenance("aum-1", POLICY, fleet, MAINTENANCE)
    run = local.drive("aum-1")
    assert len(canceller.cancelled) == 1
    assert states(local, "aum-1") == {"web-1": "patched", "web-2": "rolled_back", "web-3": "skipped"}
    assert any("could not cancel" in entry.text and "without a snapshot" in entry.text for entry in run.log)


def test_snapshots_not_done_by_the_cut_off_count_as_failed_and_cancel(tmp_path: Path) -> None:
    canceller = Canceller()
    local = runtime(tmp_path, canceller)

    def never_done(command: TakeSnapshots) -> Progress:
        return InProgress(local.clock.now() + timedelta(minutes=10))

    local.fleet.take_snapshots = never_done  # type: ignore[method-assign]
    local.service.start_maintenance("aum-1", POLICY, FLEET, MAINTENANCE)
    run = local.drive("aum-1")
    assert run.state == "halted" and len(canceller.cancelled) == 1
    snapshot = next(s for s in run.records()[0].steps if s.step == "snapshot")
    deadline = MAINTENANCE.cancel_by - timedelta(minutes=3)
    assert snapshot.at == deadline  # polled no later than the deadline, even with a 10-minute poll
    assert "not complete by" in snapshot.detail


def test_the_pre_maintenance_event_twice_starts_one_run(tmp_path: Path) -> None:
    local = runtime(tmp_path, Canceller())
    first = local.service.start_maintenance("aum-1", POLICY, FLEET, MAINTENANCE)
    again = local.service.start_maintenance("aum-1", POLICY, FLEET, MAINTENANCE)
    assert again.version == first.version == 1
    local.drive("aum-1")
    snapshots = {key: n for key, n in local.fleet.effects("aum-1").items() if key[0] == "snapshot"}
    assert len(snapshots) == len(FLEET) and set(snapshots.values()) == {1}


def test_a_runtime_that_cannot_cancel_says_so(tmp_path: Path) -> None:
    local = runtime(tmp_path, None)
    fleet = [vm("web-1", "westeurope-1", snapshot="fail")]
    local.service.start_maintenance("aum-1", POLICY, fleet, MAINTENANCE)
    run = local.drive("aum-1")
    assert any("cannot cancel Update Manager runs" in entry.text for entry in run.log)


def test_frozen_machines_in_update_managers_scope_are_reported_loudly(tmp_path: Path) -> None:
    local = runtime(tmp_path, Canceller())
    frozen = replace(vm("db-1", "westeurope-1"), tags={"ring": "prod", "freeze": "yes"})
    run = local.service.start_maintenance("aum-1", POLICY, [*FLEET, frozen], MAINTENANCE)
    assert "Azure will patch them" in run.log[0].text and "db-1" in run.log[0].text
