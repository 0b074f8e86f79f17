"""The one imperative shell: the same sequence of effects on every runtime.

For an event: load the run -> decide -> save the new run with its commands (the outbox) in one
conditional write -> publish the outbox -> mark it sent -> ack. For a command: execute it
(idempotent per command id) -> publish its result event, or ask for a later redelivery while the
operation runs -> ack. A crash between any two of these is repaired by redelivery: a duplicate
event changes nothing but still flushes an outbox left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import assert_never

from patchpilot.engine.decide import decide, start_run
from patchpilot.engine.messages import (
    AgentsProbed,
    ApprovalGranted,
    ApprovalRejected,
    CancelMaintenance,
    CheckHealth,
    Event,
    FleetCommand,
    FollowUpFinished,
    FollowUpRequested,
    HealthChecked,
    InstallPatches,
    MaintenanceCancelled,
    Message,
    NoticeUndelivered,
    Notify,
    Outcome,
    PatchesInstalled,
    ProbeAgents,
    Result,
    RollBack,
    RolledBack,
    SnapshotsTaken,
    StartFollowUp,
    TakeSnapshots,
    TimerFired,
    Wait,
)
from patchpilot.engine.run import MaintenanceRun, Run
from patchpilot.inventory import Instance
from patchpilot.policy import Policy
from patchpilot.ports import (
    Clock,
    ConflictError,
    Delivery,
    FleetProvider,
    InProgress,
    MaintenanceCanceller,
    Notifier,
    Progress,
    Queue,
    RunStore,
    UnknownRunError,
)

log = logging.getLogger("patchpilot.service")

MAX_CONFLICT_RETRIES = 5


def grant_approval(
    store: RunStore, queue: Queue, run_id: str, by: str, *, reject: bool = False, reason: str = "", source: str = ""
) -> str:
    """Grant (or, with `reject`, refuse) the approval a run waits for: the event that says so,
    which the worker applies. One decision per gate: the first of two events wins, the other is a
    duplicate or stale. An approval needs no fleet: approval endpoints call this without a `Service`."""
    run = store.load(run_id)
    if run.state != "awaiting_approval":
        return f"run {run_id} is not waiting for approval ({run.status})"
    ring = run.current.ring
    gate = f"{run_id}:approve:{ring}"  # the same id either way: a gate is decided once
    if reject:
        queue.publish([ApprovalRejected(id=gate, run_id=run_id, by=by, reason=reason, source=source)])
        return f"rejected ring {ring} of run {run_id}: the run ends"
    queue.publish([ApprovalGranted(id=gate, run_id=run_id, by=by, source=source)])
    return f"approved ring {ring} of run {run_id}"


@dataclass
class Service:
    store: RunStore
    queue: Queue
    fleet: FleetProvider
    notifier: Notifier
    clock: Clock
    maintenance: MaintenanceCanceller | None = None  # Azure Update Manager runs (Azure only)

    def start(self, run_id: str, policy: Policy, instances: Iterable[Instance]) -> Run:
        """Start a run; starting the same run id again (a redelivered trigger) only finishes
        what the first start left undone."""
        from patchpilot.planning import plan  # imported when used: the worker plans only follow-ups

        decision = start_run(run_id, policy, plan(policy, instances), self.clock.now())
        return self._create(decision.run, decision.commands)

    def _create(self, run: Run, commands: list[Message]) -> Run:
        run = run.model_copy(update={"version": 1})
        try:
            self.store.create(run, commands)
        except ConflictError:
            run = self.store.load(run.run_id)
        self.flush(run.run_id)
        return run

    def start_maintenance(
        self, run_id: str, policy: Policy, instances: Iterable[Instance], maintenance: MaintenanceRun
    ) -> Run:
        """Start the run that accompanies an Update Manager run (`plan_maintenance`); idempotent
        like `start`: the pre-maintenance event may arrive twice."""
        from patchpilot.planning import plan_maintenance

        decision = start_run(run_id, policy, plan_maintenance(policy, instances), self.clock.now(), maintenance)
        return self._create(decision.run, decision.commands)

    def request_follow_up(self, event: FollowUpRequested) -> Run | None:
        """Record in run `event.run_id` the instances it does not cover (once per event id); the
        follow-up starts when that run has ended, at once if it has. None when the run is unknown."""
        self._apply(event)
        try:
            return self.store.load(event.run_id)
        except UnknownRunError:
            return None

    def _start_follow_up(self, command: StartFollowUp) -> None:
        """Start the follow-up of a finished run: it installs what that run promoted, pinned."""
        from patchpilot.planning import plan

        followed = self.store.load(command.run_id)
        policy = followed.policy
        now = self.clock.now()
        decision = start_run(command.follow_up_id, policy, plan(policy, command.instances), now, follow_up_of=followed)
        self._create(decision.run, decision.commands)

    def approve(self, run_id: str, by: str = "cli") -> str:
        """Grant the approval the run waits for; approving one gate twice is one approval."""
        return grant_approval(self.store, self.queue, run_id, by)

    def reject(self, run_id: str, by: str = "cli", reason: str = "") -> str:
        """Refuse the ring the run waits to enter: the run ends cleanly (halted, with why)."""
        return grant_approval(self.store, self.queue, run_id, by, reject=True, reason=reason)

    def handle(self, delivery: Delivery) -> None:
        """Process one delivery. Raises only when it must be delivered again (a crash, a
        conflict that outlived its retries); then it is not acked."""
        message = delivery.message
        match message:
            case (
                AgentsProbed()
                | SnapshotsTaken()
                | PatchesInstalled()
                | HealthChecked()
                | RolledBack()
                | MaintenanceCancelled()
                | TimerFired()
                | ApprovalGranted()
                | ApprovalRejected()
                | NoticeUndelivered()
                | FollowUpRequested()
                | FollowUpFinished()
            ):
                self._apply(message)
            case Wait():
                timer = TimerFired(id=message.result_id, run_id=message.run_id, command_id=message.id)
                self.queue.publish([timer], at=message.until)
            case Notify():
                self.notifier.notify(message)
            case CancelMaintenance():
                self._cancel(message)
            case StartFollowUp():
                self._start_follow_up(message)
            case ProbeAgents() | TakeSnapshots() | InstallPatches() | CheckHealth() | RollBack():
                if not self._execute(message, delivery):
                    return  # postponed: polled again later, not acked
            case _:
                assert_never(message)
        self.queue.ack(delivery)

    def _execute(self, command: FleetCommand, delivery: Delivery) -> bool:
        """Run a fleet command; False when it is still under way and will be polled again."""
        result_type: type[Result]
        match command:
            case ProbeAgents():
                progress, result_type = self.fleet.probe_agents(command), AgentsProbed
            case TakeSnapshots():
                progress, result_type = self._by_deadline(command, self.fleet.take_snapshots(command)), SnapshotsTaken
            case InstallPatches():
                progress, result_type = self.fleet.install_patches(command), PatchesInstalled
            case CheckHealth():
                progress, result_type = self.fleet.check_health(command), HealthChecked
            case RollBack():
                progress, result_type = self.fleet.roll_back(command), RolledBack
            case _:
                assert_never(command)
        if isinstance(progress, InProgress):
            self.queue.retry_at(delivery, progress.retry_at)
            return False
        event = result_type(id=command.result_id, run_id=command.run_id, command_id=command.id, results=progress)
        self.queue.publish([event])
        return True

    def _by_deadline(self, command: TakeSnapshots, progress: Progress) -> Progress:
        """Snapshots still under way at the command's deadline have failed; before it, the next
        poll comes no later than the deadline."""
        deadline = command.deadline
        if deadline is None or not isinstance(progress, InProgress):
            return progress
        now = self.clock.now()
        if now < deadline:
            return InProgress(min(progress.retry_at, deadline), progress.note)
        late = f"not complete by {deadline.isoformat(timespec='minutes')}, the cut-off of this run"
        return [Outcome(id=i.id, ok=False, detail=late, at=now) for i in command.targets]

    def _cancel(self, command: CancelMaintenance) -> None:
        if self.maintenance is None:
            outcome = Outcome(
                id=command.maintenance_run, ok=False, detail="this runtime cannot cancel Update Manager runs"
            )
        else:
            outcome = self.maintenance.cancel_maintenance(command)
        result = MaintenanceCancelled(
            id=command.result_id, run_id=command.run_id, command_id=command.id, results=[outcome]
        )
        self.queue.publish([result])

    def _apply(self, event: Event) -> None:
        """Decide on an event and persist the outcome; conflicts reload and decide again."""
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                run = self.store.load(event.run_id)
            except UnknownRunError:
                log.error("dropping %s %s: unknown run %s", event.type, event.id, event.run_id)
                return
            decision = decide(run, event, self.clock.now())
            if decision.ignored:
                log.info("run %s: %s", run.run_id, decision.ignored)
                self.flush(run.run_id)  # a crash may have left the outbox unsent
                return
            new = decision.run.model_copy(update={"version": run.version + 1})
            try:
                self.store.save(new, decision.commands, previous=run)
            except ConflictError:
                continue
            self.flush(run.run_id)
            return
        raise ConflictError(f"run {event.run_id}: still conflicting after {MAX_CONFLICT_RETRIES} tries")

    def flush(self, run_id: str) -> None:
        """Publish what the run's outbox holds, then mark it sent."""
        pending = self.store.outbox(run_id)
        if pending:
            self.queue.publish(pending)
            self.store.mark_sent(run_id, [m.id for m in pending])

    def recover(self) -> None:
        """After a crash: flush every outbox left behind."""
        for run_id in self.store.run_ids():
            self.flush(run_id)
