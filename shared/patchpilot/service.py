"""The one imperative shell: the same sequence of effects on every runtime.

For a queued message: check that the stored run issued it and has not done it yet (else refuse
it, or drop a redelivery) -> for a command, execute it (idempotent per command id), or ask for a
later redelivery while the operation runs -> apply its result: load the run -> decide -> save the
new run with its commands (the outbox) in one conditional write -> publish the outbox -> mark it
sent -> ack. A crash between any two of these is repaired by redelivery: the command runs again
(idempotent) and its result is applied once; a duplicate result changes nothing but still flushes
an outbox left behind. A wake-up (`LookNow`, from a cloud event) polls the fleet command the
stored run awaits once, now, and applies its result the same way (`_look`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, assert_never

from patchpilot.engine.decide import decide, start_run
from patchpilot.engine.issued import NotIssuedError, Standing, digest, issuer, standing
from patchpilot.engine.messages import (
    AgentsProbed,
    ApprovalGranted,
    ApprovalRejected,
    CallWaveHook,
    CancelCloudScheduledRun,
    CheckHealth,
    CloudScheduledRunCancelled,
    Event,
    FleetCommand,
    FollowUpFinished,
    FollowUpRequested,
    HealthChecked,
    HostHookRan,
    InstallPatches,
    InstancesLeased,
    LeaseInstances,
    LeavePools,
    LookNow,
    MachinesReturned,
    MachinesStarted,
    MachinesSwept,
    Message,
    NoticeUndelivered,
    Notify,
    Outcome,
    PatchesInstalled,
    PoolsLeft,
    PoolsRejoined,
    PoolsSwept,
    ProbeAgents,
    RejoinPools,
    ReleaseInstances,
    Result,
    ReturnMachines,
    RollBack,
    RolledBack,
    RunHostHook,
    SnapshotsTaken,
    StartFollowUp,
    StartMachines,
    TakeSnapshots,
    TimerFired,
    TrafficCommand,
    Wait,
    WaveHookCalled,
)
from patchpilot.engine.retry import NotRetryableError, next_retry_id, retry_chain, retry_targets, retry_window
from patchpilot.engine.run import CloudScheduledRun, Run, Runtime
from patchpilot.inventory import Instance
from patchpilot.policy import Policy
from patchpilot.policy.fields import format_duration
from patchpilot.ports import (
    Claims,
    Clock,
    ConflictError,
    Delivery,
    FleetProvider,
    InProgress,
    Leases,
    MaintenanceCanceller,
    Metrics,
    Notifier,
    Progress,
    Queue,
    RunStore,
    TrafficPools,
    UnknownRunError,
    WaveHooks,
)

if TYPE_CHECKING:
    from patchpilot.policy.freeze import Freezes
    from patchpilot.triggers import FreezeGate

log = logging.getLogger("patchpilot.service")
security_log = logging.getLogger("patchpilot.security")

MAX_CONFLICT_RETRIES = 5
REFUSED_METRIC = "RefusedMessages"
LEASE_POLL = timedelta(minutes=5)  # how often a wave waiting for another run's machines looks again
LOOK_CLAIM = timedelta(minutes=10)  # how long a wake-up's id is remembered: its duplicates poll nothing


def _refused(targets: Sequence[Instance], why: str) -> Progress:
    return [Outcome(id=i.id, ok=False, detail=why) for i in targets]


def grant_approval(
    store: RunStore,
    queue: Queue,
    run_id: str,
    by: str,
    *,
    reject: bool = False,
    reason: str = "",
    now: datetime | None = None,
    source: str = "",
) -> str:
    """Grant (or, with `reject`, refuse) the approval a run waits for, applied to the run here:
    an approval never travels the queue, so a message cannot open a gate. One decision per gate:
    the first of two wins, the other is a duplicate. An approval needs no fleet: approval
    endpoints call this without a `Service`."""
    run = store.load(run_id)
    if run.state != "awaiting_approval":
        return f"run {run_id} is not waiting for approval ({run.status})"
    ring = run.current.ring
    gate = f"{run_id}:approve:{ring}"  # the same id either way: a gate is decided once
    event: Event
    if reject:
        event = ApprovalRejected(id=gate, run_id=run_id, by=by, reason=reason, source=source)
        answer = f"rejected ring {ring} of run {run_id}: the run ends"
    else:
        event = ApprovalGranted(id=gate, run_id=run_id, by=by, source=source)
        answer = f"approved ring {ring} of run {run_id}"
    apply_event(store, queue, event, lambda: now or datetime.now(UTC))
    return answer


def apply_event(
    store: RunStore, queue: Queue, event: Event, now: Callable[[], datetime], loaded: Run | None = None
) -> None:
    """Decide on an event and persist the outcome with its outbox, then publish the outbox;
    conflicts reload and decide again. An event for an unknown run is dropped (logged). `loaded`
    is the run as the caller already read it (it saves a read; if it is stale, the conditional
    save fails and the run is read again)."""
    for _ in range(MAX_CONFLICT_RETRIES):
        try:
            run = loaded if loaded is not None and loaded.run_id == event.run_id else store.load(event.run_id)
        except UnknownRunError:
            log.error("dropping %s %s: unknown run %s", event.type, event.id, event.run_id)
            return
        decision = decide(run, event, now())
        if decision.ignored and run is loaded:  # perhaps stale: decide on the stored run
            loaded = None
            continue
        loaded = None
        if decision.ignored:
            log.info("run %s: %s", run.run_id, decision.ignored)
            flush(store, queue, run.run_id)  # a crash may have left the outbox unsent
            return
        new = decision.run.model_copy(update={"version": run.version + 1})
        try:
            store.save(new, decision.commands, previous=run)
        except ConflictError:
            continue
        flush(store, queue, run.run_id)
        return
    raise ConflictError(f"run {event.run_id}: still conflicting after {MAX_CONFLICT_RETRIES} tries")


def flush(store: RunStore, queue: Queue, run_id: str) -> None:
    """Publish what the run's outbox holds, then mark it sent."""
    pending = store.outbox(run_id)
    if pending:
        queue.publish(pending)
        store.mark_sent(run_id, [m.id for m in pending])


@dataclass
class Service:
    store: RunStore
    queue: Queue
    fleet: FleetProvider
    notifier: Notifier
    clock: Clock
    maintenance: MaintenanceCanceller | None = None  # Azure Update Manager runs (Azure only)
    metrics: Metrics | None = None  # counts refused messages
    leases: Leases | None = None  # one machine, one run at a time (every runtime passes one)
    runtime: Runtime = "local"  # where the runs it starts are driven: their notices name its commands
    traffic: TrafficPools | None = None  # load-balancer drain and re-add (docs/traffic.md)
    wave_hooks: WaveHooks | None = None  # the policies' before_wave / after_wave HTTPS hooks
    # The policy as deployed now (its freeze_calendar and Change Calendars read again): a run that
    # starts off the timer (a follow-up, a retry) checks its freezes there. None: the run's own
    # policy (its `freeze:` periods; a freeze_calendar it names is then an unchecked freeze).
    deployed_policy: Callable[[], Policy] | None = None
    claims: Claims | None = None  # wake-ups (`LookNow`) sharing an id poll once across workers

    def start(
        self,
        run_id: str,
        policy: Policy,
        instances: Iterable[Instance],
        *,
        window_end: datetime | None = None,
        frozen_by: str | None = None,
    ) -> Run:
        """Start a run; starting the same run id again (a redelivered trigger) only finishes
        what the first start left undone. `window_end` ends its window early (a freeze cuts it
        short); `frozen_by` names the freeze an emergency run starts in (its first ring waits)."""
        from patchpilot.planning import plan  # imported when used: the worker plans only follow-ups

        now, runtime = self.clock.now(), self.runtime
        layout = plan(policy, instances, now)
        decision = start_run(run_id, policy, layout, now, window_end=window_end, runtime=runtime, frozen_by=frozen_by)
        return self._create(decision.run, decision.commands)

    def _create(self, run: Run, commands: Sequence[Message]) -> Run:
        run = run.model_copy(update={"version": 1})
        try:
            self.store.create(run, commands)
        except ConflictError:
            run = self.store.load(run.run_id)
        self.flush(run.run_id)
        return run

    def start_maintenance(
        self, run_id: str, policy: Policy, instances: Iterable[Instance], maintenance: CloudScheduledRun
    ) -> Run:
        """Start the run that accompanies an Update Manager run (`plan_cloud_scheduled`); idempotent
        like `start`: the pre-maintenance event may arrive twice."""
        from patchpilot.planning import plan_cloud_scheduled

        now = self.clock.now()
        decision = start_run(
            run_id, policy, plan_cloud_scheduled(policy, instances, now), now, maintenance, runtime=self.runtime
        )
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
        """Start the follow-up of a finished run: it installs what that run promoted, pinned. It keeps
        the freezes as a run of its kind (`freeze_gate`): a follow-up of an emergency run inside a
        freeze waits for approval at its first ring; one of a scheduled run does not start (a
        `run_skipped` notice names the freeze, and the run starts no further follow-up); a freeze
        that begins later ends its window there."""
        from patchpilot.planning import plan
        from patchpilot.triggers import freeze_gate, runs_on_demand

        try:  # started already (a redelivery): finish what that start left undone, whatever the freezes say now
            self.store.load(command.follow_up_id)
        except UnknownRunError:
            pass
        else:
            self.flush(command.follow_up_id)
            return
        followed = self.store.load(command.run_id)
        policy = followed.policy
        now = self.clock.now()
        own_end = now + policy.schedule.duration if policy.schedule else None
        gate = freeze_gate(policy, self.freezes_of(policy), now, own_end, emergency=runs_on_demand(policy))
        if gate.frozen is not None:
            self._follow_up_frozen(followed, command, gate, now)
            return
        decision = start_run(
            command.follow_up_id,
            policy,
            plan(policy, command.instances, now),
            now,
            follow_up_of=followed,
            window_end=gate.window_end or own_end,
            runtime=self.runtime,
            frozen_by=gate.frozen_by,
        )
        self._create(decision.run, decision.commands)

    def _follow_up_frozen(self, followed: Run, command: StartFollowUp, gate: FreezeGate, now: datetime) -> None:
        """A follow-up of a scheduled run that would start inside a freeze: it does not; a
        `run_skipped` notice names the freeze, and the followed run records it as not started."""
        when = gate.local(now)
        why = f"it would start {when}, inside freeze {gate.describe_frozen()}"
        text = (
            f"Follow-up run {command.follow_up_id} of run {followed.run_id} (policy {followed.policy.name}) not "
            f"started: {why}. Retry run {followed.run_id} after the freeze (patchpilot retry {followed.run_id})."
        )
        notice = Notify(
            id=f"{command.follow_up_id}:notify:run_skipped", run_id=followed.run_id, topic="run_skipped", text=text
        )
        self.notifier.notify(notice)
        finished = FollowUpFinished(
            id=f"{command.follow_up_id}:finished",
            run_id=followed.run_id,
            follow_up_id=command.follow_up_id,
            halted=False,
            not_started=why,
            at=now,
        )
        self._apply(finished)

    def freezes_of(self, policy: Policy) -> Freezes:
        """The freezes of a stored run's policy as they stand now: the deployed policy's when it is
        that policy (its freeze_calendar and Change Calendars read again), else the run's own
        periods, a freeze_calendar it names being an unchecked freeze (`UncheckedCalendar`)."""
        from patchpilot.policy.freeze import Freezes, UncheckedCalendar

        if self.deployed_policy is not None:
            current = self.deployed_policy()
            if current.name == policy.name:
                return current.freezes()
        try:
            return policy.freezes()
        except RuntimeError:  # a freeze_calendar that was not read with this policy
            assert policy.freeze_calendar is not None
            calendar = UncheckedCalendar(f"freeze_calendar {policy.freeze_calendar}")
            return Freezes(policy.zone_for(None), tuple(policy.freeze), external=calendar)

    def retry(
        self,
        run_id: str,
        only: Sequence[str] = (),
        current: Mapping[str, Instance] | None = None,
        retry_id: str | None = None,
    ) -> Run:
        """Start a retry of finished run `run_id`: a follow-up run of only the machines it did not
        patch (rolled back, failed, skipped, not started; `only` narrows them by id), installing
        what it promoted, pinned, in every ring (engine/retry.py). `current` maps ids to the
        machines as they are now (the inventory after the fix). The id is `retry_id`, else the
        next free `<run>-retry-<n>`; starting the same id again only finishes what the first start
        left undone. A retry keeps to the policy's windows: started inside one, it ends with it;
        outside one, it is refused until the next (an emergency policy runs now). It keeps the
        freezes as a run of its kind (`freeze_gate`): a retry of a scheduled run inside a freeze is
        refused naming it (and a `run_skipped` notice says so), one of an emergency run waits for
        approval at its first ring; a freeze that begins later ends its window there. The machines an
        earlier retry of `run_id` took on are its own (engine/retry.py `RetryChain`): never patched
        twice; a run whose every machine was retried is refused, naming its latest retry. Raises
        `UnknownRunError`, or `NotRetryableError` naming why."""
        from patchpilot.planning import plan
        from patchpilot.planning.estimate import wave_estimate
        from patchpilot.triggers import freeze_gate, runs_on_demand

        followed = self.store.load(run_id)
        run_ids = self.store.run_ids()
        earlier = [i for i in run_ids if i != retry_id]  # a retry id started again is not an earlier retry
        instances, _ = retry_targets(followed, only, current, retry_chain(run_id, earlier, self.store.load))
        policy, now = followed.policy, self.clock.now()
        window = retry_window(policy, now, wave_estimate(instances, policy.reboot))
        if window is not None and now < window.start:
            when = window.start.isoformat(timespec="minutes")
            why = f"outside the policy's windows: the next starts {when}, retry it then"
            open_now = retry_window(policy, now)
            if open_now is not None and open_now.start <= now:  # inside a window, with too little of it left
                why = f"too little of this window is left for a wave: the next starts {when}, retry it then"
            raise NotRetryableError.of(followed, why, ("schedule",))
        started = retry_id is not None and retry_id in run_ids  # again: finish that start, whatever the freezes say now
        retry_id = retry_id or next_retry_id(run_id, run_ids)
        own_end = window.end if window else now + policy.schedule.duration if policy.schedule else None
        gate = freeze_gate(policy, self.freezes_of(policy), now, own_end, emergency=runs_on_demand(policy))
        if gate.frozen is not None and not started:
            when = gate.local(now)
            why = (
                f"inside freeze {gate.describe_frozen()} (now {when}): a scheduled run does not start in a "
                "freeze; retry it after the freeze"
            )
            text = f"Retry {retry_id} of run {run_id} (policy {policy.name}) not started: {why}."
            notice = Notify(id=f"{retry_id}:notify:run_skipped", run_id=run_id, topic="run_skipped", text=text)
            try:
                self.notifier.notify(notice)
            except Exception as error:  # the refusal itself must reach whoever asked
                log.warning("notice %s not sent: %s", notice.id, error)
            raise NotRetryableError.of(followed, why, ("freeze",))
        decision = start_run(
            retry_id,
            policy,
            plan(policy, instances, now),
            now,
            follow_up_of=followed,
            window_end=gate.window_end or own_end,
            runtime=self.runtime,
            frozen_by=gate.frozen_by,
        )
        return self._create(decision.run, decision.commands)

    def approve(self, run_id: str, by: str = "cli") -> str:
        """Grant the approval the run waits for; approving one gate twice is one approval."""
        return grant_approval(self.store, self.queue, run_id, by, now=self.clock.now())

    def reject(self, run_id: str, by: str = "cli", reason: str = "") -> str:
        """Refuse the ring the run waits to enter: the run ends cleanly (halted, with why)."""
        return grant_approval(self.store, self.queue, run_id, by, reject=True, reason=reason, now=self.clock.now())

    def handle(self, delivery: Delivery) -> None:
        """Process one delivery: only a message the stored run issued and has not done yet is
        acted on (engine/issued.py); a forged one is refused and dead-lettered. Raises only when
        it must be delivered again (a crash, a conflict that outlived its retries); then it is
        not acked."""
        message = delivery.message
        if isinstance(message, LookNow):
            self._look(message, delivery)
            return
        try:
            standing, run = self._standing(message)
        except NotIssuedError as refusal:
            self._refuse(delivery, str(refusal))
            return
        if standing == "done":  # a redelivery of a command whose result the run has applied
            log.info("run %s: %s %s is done already", message.run_id, message.type, message.id)
            self.flush(message.run_id)  # a crash may have left the outbox of that result unsent
            self.queue.ack(delivery)
            return
        match message:
            case FollowUpFinished():
                self._apply(message)
            case Notify():
                self.notifier.notify(message)
            case CancelCloudScheduledRun():
                self._cancel(message, run)
            case StartFollowUp():
                self._start_follow_up(message)
            case ReleaseInstances():
                if self.leases is not None:
                    self.leases.release(message.targets, message.run_id)
            case LeaseInstances():
                if not self._lease(message, delivery, run):
                    return
            case (
                Wait()
                | ProbeAgents()
                | TakeSnapshots()
                | InstallPatches()
                | CheckHealth()
                | RollBack()
                | RunHostHook()
                | LeavePools()
                | RejoinPools()
                | CallWaveHook()
                | StartMachines()
                | ReturnMachines()
            ):
                if not self._execute(message, delivery, run):
                    return  # postponed: polled again later, not acked
            case (
                InstancesLeased()
                | AgentsProbed()
                | SnapshotsTaken()
                | PatchesInstalled()
                | HealthChecked()
                | RolledBack()
                | PoolsLeft()
                | PoolsRejoined()
                | PoolsSwept()
                | MachinesStarted()
                | MachinesReturned()
                | MachinesSwept()
                | HostHookRan()
                | WaveHookCalled()
                | CloudScheduledRunCancelled()
                | TimerFired()
                | ApprovalGranted()
                | ApprovalRejected()
                | NoticeUndelivered()
                | FollowUpRequested()
                | LookNow()
            ):
                raise AssertionError(f"{message.type} is refused before this point")  # issuer() refuses it
            case _:
                assert_never(message)
        self.queue.ack(delivery)

    def _standing(self, message: Message) -> tuple[Standing, Run]:
        """Whether the run that issued `message` holds it as due or done, and that run as read."""
        try:
            run = self.store.load(issuer(message))
        except UnknownRunError as error:
            what = f"{message.type} {message.id} names run {error.args[0]}, which does not exist"
            raise NotIssuedError(what) from None
        return standing(run, message), run

    def _refuse(self, delivery: Delivery, reason: str) -> None:
        """A message the stored run did not issue: never executed, dead-lettered, said at the
        security level and counted."""
        message = delivery.message
        security_log.error(
            "REFUSED %s %s for run %s: %s",
            message.type,
            message.id,
            message.run_id,
            reason,
            extra={"security": "refused_message", "run_id": message.run_id, "message_id": message.id},
        )
        if self.metrics is not None:
            self.metrics.count(REFUSED_METRIC)
        self.queue.dead_letter(delivery, f"refused: {reason}")

    def _execute(
        self, command: FleetCommand | TrafficCommand | CallWaveHook | Wait, delivery: Delivery, run: Run
    ) -> bool:
        """Run a fleet command (or wait out a Wait) and apply its result to the run here: results
        never travel the queue. False when it is still under way and will be polled again."""
        progress = self._poll(command, run)
        if progress is not None:
            self.queue.retry_at(delivery, progress.retry_at)
            return False
        return True

    def _poll(self, command: FleetCommand | TrafficCommand | CallWaveHook | Wait, run: Run) -> InProgress | None:
        """Execute the command once and apply its result; its progress when still under way."""
        result_type: type[Result]
        match command:
            case Wait():
                if self.clock.now() < command.until:
                    return InProgress(command.until)
                self._apply(TimerFired(id=command.result_id, run_id=command.run_id, command_id=command.id), run)
                return None
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
            case RunHostHook():
                progress = self._by(command.hook.timeout, command, self.fleet.run_hook(command))
                result_type = HostHookRan
            case LeavePools():
                progress, result_type = self._leave_pools(command), PoolsLeft
            case RejoinPools():
                progress = self._rejoin_pools(command)
                result_type = PoolsSwept if command.at_run_end else PoolsRejoined
            case CallWaveHook():
                progress, result_type = self._call_wave_hook(command), WaveHookCalled
            case StartMachines():
                progress, result_type = self.fleet.start_machines(command), MachinesStarted
            case ReturnMachines():
                progress = self.fleet.return_machines(command)
                result_type = MachinesSwept if command.at_run_end else MachinesReturned
            case _:
                assert_never(command)
        if isinstance(progress, InProgress):
            return progress
        result = result_type(id=command.result_id, run_id=command.run_id, command_id=command.id, results=progress)
        self._apply(result, run)
        return None

    def _look(self, look: LookNow, delivery: Delivery) -> None:
        """A wake-up: poll the fleet command the stored run awaits, once, now, when it is the one
        `look` names; its result is applied as its own delivery would apply it. Still under way,
        or not awaited (done, or another step's), the wake-up is acked and changes nothing: the
        command's own delivery keeps its fallback poll. A wake-up naming a run that does not exist,
        or a command the run never issued, cannot come from the waker (it names what it read in
        the store): it is refused like any forged message. Wake-ups sharing an id (one per
        command and window) poll once (`claims`)."""
        try:
            run = self.store.load(look.run_id)
        except UnknownRunError:
            self._refuse(delivery, f"LookNow {look.id} names run {look.run_id}, which does not exist")
            return
        if look.command_id not in run.issued:
            self._refuse(delivery, f"run {run.run_id} never issued {look.command_id}, which LookNow {look.id} names")
            return
        command = run.awaited_command
        if command is None or run.awaiting != look.command_id or command.id != look.command_id:
            log.info(
                "run %s: %s woke %s, which it does not await (%s)", run.run_id, look.id, look.command_id, run.state
            )
            self.queue.ack(delivery)
            return
        if digest(command) != run.issued[command.id]:  # the stored run disagrees with itself: touch nothing
            self._refuse(
                delivery, f"run {run.run_id}: its awaited {command.type} {command.id} is not the one it issued"
            )
            return
        now = self.clock.now()
        if self.claims is not None and not self.claims.claim(f"look:{look.id}", now + LOOK_CLAIM):
            log.info("run %s: %s polled already", run.run_id, look.id)
            self.queue.ack(delivery)
            return
        try:
            progress = self._poll(command, run)
        except BaseException:
            if self.claims is not None:
                self.claims.renew(f"look:{look.id}", now)  # a redelivery polls again
            raise
        said = "done" if progress is None else f"still under way ({progress.note or 'no note'})"
        log.info("run %s: %s (%s): %s", run.run_id, look.id, look.reason or "no reason given", said)
        self.queue.ack(delivery)

    def _lease(self, command: LeaseInstances, delivery: Delivery, run: Run) -> bool:
        """Take the leases of a wave's machines and apply the outcome; False while the wave waits
        for machines another run holds: then it holds none (all or nothing, so two runs waiting
        for each other's machines do not both wait out their windows) and looks again at the next
        poll."""
        now = self.clock.now()
        held = self.leases.acquire(command.targets, command.run_id, command.until, now) if self.leases else {}
        if held and command.wait_until is not None and now < command.wait_until:
            assert self.leases is not None
            self.leases.release([i for i in command.targets if i not in held], command.run_id)
            log.info("run %s waits for machines held by %s", command.run_id, ", ".join(sorted(set(held.values()))))
            self.queue.retry_at(delivery, min(now + LEASE_POLL, command.wait_until))
            return False
        results = [
            Outcome(id=i, ok=i not in held, detail=f"held by run {held[i]}" if i in held else "", at=now)
            for i in command.targets
        ]
        leased = InstancesLeased(id=command.result_id, run_id=command.run_id, command_id=command.id, results=results)
        self._apply(leased, run)
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

    def _leave_pools(self, command: LeavePools) -> Progress:
        if self.traffic is None:
            return _refused(command.targets, "this deployment has no traffic-pool adapter: the machine was not drained")
        progress = self.traffic.leave_pools(command)
        if command.timeout is None:  # the pool's own default: the adapter keeps to it
            return progress
        return self._by(command.timeout, command, progress, "not drained from its pools")

    def _rejoin_pools(self, command: RejoinPools) -> Progress:
        if self.traffic is None:
            return _refused(command.targets, "this deployment has no traffic-pool adapter: not put back into its pools")
        progress = self.traffic.rejoin_pools(command)
        return self._by(command.timeout, command, progress, "its pools did not report it healthy")

    def _call_wave_hook(self, command: CallWaveHook) -> Progress:
        if self.wave_hooks is None:
            return [Outcome(id=command.phase, ok=False, detail="this deployment cannot call wave hooks")]
        deadline = command.issued_at + command.hook.timeout
        progress = self.wave_hooks.call(command)
        if isinstance(progress, InProgress) and self.clock.now() >= deadline:
            late = f"no 2xx answer within {command.hook.timeout} ({progress.note or 'no answer'})"
            return [Outcome(id=command.phase, ok=False, detail=late, at=self.clock.now())]
        return progress

    def _by(
        self, timeout: timedelta, command: RunHostHook | LeavePools | RejoinPools, progress: Progress, what: str = ""
    ) -> Progress:
        """The targets still under way `timeout` after the operation started (its adapter says
        when; else the command's issue) have failed, the finished ones keep their outcomes; before
        that, the next poll comes no later than then."""
        if not isinstance(progress, InProgress):
            return progress
        now, deadline = self.clock.now(), (progress.started or command.issued_at) + timeout
        if now < deadline:
            return InProgress(min(progress.retry_at, deadline), progress.note, progress.finished, progress.started)
        late = f"{what or 'not finished'} within {format_duration(timeout)}"
        if progress.note:
            late += f" ({progress.note})"
        finished = {o.id: o for o in progress.finished}
        return [finished.get(i.id) or Outcome(id=i.id, ok=False, detail=late, at=now) for i in command.targets]

    def _cancel(self, command: CancelCloudScheduledRun, run: Run) -> None:
        if self.maintenance is None:
            outcome = Outcome(
                id=command.maintenance_run, ok=False, detail="this runtime cannot cancel Update Manager runs"
            )
        else:
            outcome = self.maintenance.cancel_maintenance(command)
        self._apply(
            CloudScheduledRunCancelled(
                id=command.result_id, run_id=command.run_id, command_id=command.id, results=[outcome]
            ),
            run,
        )

    def _apply(self, event: Event, loaded: Run | None = None) -> None:
        apply_event(self.store, self.queue, event, self.clock.now, loaded)

    def record(self, event: NoticeUndelivered) -> None:
        """Record in its run a notice the notifier could not deliver (applied here, never queued)."""
        self._apply(event)

    def flush(self, run_id: str) -> None:
        """Publish what the run's outbox holds, then mark it sent."""
        flush(self.store, self.queue, run_id)

    def recover(self) -> None:
        """After a crash: flush every outbox left behind."""
        for run_id in self.store.run_ids():
            self.flush(run_id)
