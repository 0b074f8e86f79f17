"""Azure Update Manager's pre- and post-maintenance events (docs/architecture.md, "Runs that
accompany Azure Update Manager"): a pre-maintenance event starts the run that snapshots the
machines of the maintenance run before its cut-off (cancelling it if snapshots fail), then checks
and rolls back once Update Manager has installed; Event Grid may deliver it twice, which starts
one run. A post-maintenance event is answered from the run's state."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Literal, Protocol

from patchpilot.policy import Policy
from patchpilot.ports import Discovers, RunStore, UnknownRunError
from patchpilot.service import Service


class UpdateManagerEvent(Protocol):
    """What the application reads of a parsed event (adapters/azure/maintenance_events.py)."""

    @property
    def kind(self) -> Literal["pre", "post"]: ...
    @property
    def correlation_id(self) -> str: ...
    @property
    def maintenance_configuration_id(self) -> str: ...
    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime: ...
    @property
    def status(self) -> str | None: ...
    @property
    def subscription_ids(self) -> tuple[str, ...]: ...
    @property
    def run_name(self) -> str: ...
    @property
    def configuration_name(self) -> str: ...
    @property
    def cancel_by(self) -> datetime: ...


def maintenance_run_id(event: UpdateManagerEvent) -> str:
    """The PatchPilot run of a maintenance run: its configuration and run names, so both events
    of one maintenance run (and their repeats) name the same run."""
    return f"aum-{event.configuration_name}-{event.run_name}"


class UpdateManagerEvents:
    """Over the run table, the `Service`, the deployed policy and the fleet (each built on first
    use), and `scheduled(event)`: the resource ids of the machines the maintenance run covers (a
    Resource Graph read)."""

    def __init__(
        self,
        *,
        store: Callable[[], RunStore],
        service: Callable[[], Service],
        policy: Callable[[], Policy],
        fleet: Callable[[], Discovers],
        scheduled: Callable[[UpdateManagerEvent], Collection[str]],
    ) -> None:
        self.store = store
        self.service = service
        self.policy = policy
        self.fleet = fleet
        self.scheduled = scheduled

    def __call__(self, event: UpdateManagerEvent) -> str:
        """The answer to one event, for the log."""
        return self.pre(event) if event.kind == "pre" else self.post(event)

    def pre(self, event: UpdateManagerEvent) -> str:
        from patchpilot.engine.run import CloudScheduledRun

        run_id = maintenance_run_id(event)
        try:
            run = self.store().load(run_id)
        except UnknownRunError:
            pass
        else:  # a repeated event: only finish what the first delivery may have left undone
            self.service().flush(run_id)
            return f"run {run_id} already accompanies Update Manager run {event.run_name} ({run.status})"
        policy = self.policy()
        scheduled = {machine.lower() for machine in self.scheduled(event)}
        known = [i for i in self.fleet().discover(policy).instances if i.id.lower() in scheduled]
        maintenance = CloudScheduledRun(
            id=event.correlation_id,
            configuration_id=event.maintenance_configuration_id,
            starts_at=event.start,
            ends_at=event.end,
            cancel_by=event.cancel_by,
        )
        self.service().start_maintenance(run_id, policy, known, maintenance)
        answer = f"run {run_id} accompanies Update Manager run {event.run_name} ({len(known)} machines)"
        if len(scheduled) > len(known):
            outside = len(scheduled) - len(known)
            answer += f"; {outside} scheduled machines are outside policy {policy.name} and are not snapshotted"
        return answer

    def post(self, event: UpdateManagerEvent) -> str:
        run_id = maintenance_run_id(event)
        status = f"Update Manager run {event.run_name} ended ({event.status or 'no status'})"
        try:
            run = self.store().load(run_id)
        except UnknownRunError:
            return (
                f"{status}; no PatchPilot run accompanies it (its pre-maintenance event never arrived): "
                "nothing was snapshotted, and PatchPilot does not check these machines"
            )
        if run.finished:
            return f"{status}; run {run_id} has already {run.state}"
        return f"{status}; run {run_id} reads the results and checks health next ({run.state})"
