"""The pure heart of a run: `decide(run, event, now) -> Decision(run', commands)`.

No I/O, no clock, no SDK: the shell (`patchpilot.service`) loads the run, calls `decide`, and
saves the new run with its commands (the outbox) in one conditional write. The flow is the
transition table `TRANSITIONS`, keyed on (run state, event class), with an "any state" row;
`decide` refuses a handler that leaves the run in a state its row does not declare.
docs/state-machine.md is generated from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from patchpilot.engine.issued import with_awaited, with_issued
from patchpilot.engine.messages import (
    AgentsProbed,
    ApprovalGranted,
    ApprovalRejected,
    CallWaveHook,
    CancelCloudScheduledRun,
    CheckHealth,
    CloudScheduledRunCancelled,
    Command,
    Event,
    FollowUpFinished,
    FollowUpRequested,
    HealthChecked,
    HostHookRan,
    InstallPatches,
    InstallTarget,
    InstancesLeased,
    LeaseInstances,
    LeavePools,
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
    RestoreTarget,
    ReturnMachines,
    RollBack,
    RolledBack,
    RunHostHook,
    Severity,
    SnapshotsTaken,
    StartFollowUp,
    StartMachines,
    TakeSnapshots,
    TimerFired,
    Topic,
    Wait,
    WaveHookCalled,
)
from patchpilot.engine.retry import RETRYABLE_STATES, why_not_retryable
from patchpilot.engine.run import (
    CloudScheduledRun,
    FinalInstanceState,
    FollowUp,
    InstanceRecord,
    LogEntry,
    Run,
    RunState,
    Runtime,
    Step,
    StepName,
    UndeliveredNotice,
    WaveState,
    count_states,
)
from patchpilot.hotpatch import NO_REBOOT_NOTE, reboot_free
from patchpilot.inventory import Instance
from patchpilot.planning.estimate import ESTIMATE_SOURCE, wave_estimate
from patchpilot.policy import Policy
from patchpilot.policy.exceptions import excepted_patches, names_patch
from patchpilot.policy.fields import format_duration
from patchpilot.policy.model import Hooks, HostHook
from patchpilot.wording import plural

if TYPE_CHECKING:
    from patchpilot.planning import Plan  # only `start_run` takes one

MAX_FAILURE_NOTICES = 10  # per wave; more are summarised in one message
# Snapshots for a cloud-scheduled run must be done this long before its cancellation cut-off,
# so that a cancellation still lands in time.
CANCEL_MARGIN = timedelta(minutes=3)
# A machine's lease lapses this long after the window ends (or its wave starts, without a window):
# a wave that started in time has finished by then, and a run that died frees its machines.
LEASE_MARGIN = timedelta(hours=6)
# A gate still waiting `rollout.approval_reminder` after it opened pages again, then every as long
# again, this many times at most: a gate left over a weekend pages three times, not fifteen.
MAX_APPROVAL_REMINDERS = 3


class Decision(NamedTuple):
    run: Run
    commands: Sequence[Message] = ()  # the outbox: commands, and events for other runs
    ignored: str = ""  # why the event changed nothing, when it did not


Handler = Callable[[Run, Event, datetime], Decision]
EventClass = type[Event]
WAVE_DONE: Final = "WaveDone"  # not a state: the end of a wave, decided inside the handlers
Target = RunState | Literal["WaveDone"]
ANY_STATE: Final = "*"  # the table's row of events accepted in every state, finished runs included
Row = RunState | Literal["*"]


class Transition(NamedTuple):
    """What an event does in a state: its handler, and every state the handler may leave the run
    in (`WAVE_DONE` stands for every state the end of a wave leads to). A row of `ANY_STATE` has
    no targets: its events leave the state as it was. `decide` refuses any other outcome."""

    handler: Handler
    targets: tuple[Target, ...] = ()

    def allows(self, before: RunState, after: RunState) -> bool:
        return after in declared_states(self.targets) if self.targets else after == before


class UndeclaredTransitionError(RuntimeError):
    """A handler left a run in a state that `TRANSITIONS` does not declare for its row: a bug in
    the engine (the handler or the table is wrong), never in the input."""


def declared_states(targets: Iterable[Target]) -> frozenset[RunState]:
    """The states `targets` stand for, `WAVE_DONE` replaced by where the end of a wave leads."""
    states: set[RunState] = set()
    for target in targets:
        if target == WAVE_DONE:
            states.update(WAVE_DONE_TARGETS)
        else:
            states.add(target)
    return frozenset(states)


def _checked(row: tuple[Row, EventClass], transition: Transition, before: RunState, decision: Decision) -> Decision:
    after = decision.run.state
    if transition.allows(before, after):
        return decision
    state, event = row
    declared = ", ".join(transition.targets) or f"{before} (unchanged)"
    raise UndeclaredTransitionError(
        f"{event.__name__} in state {before} led to state {after}, which TRANSITIONS[({state!r}, "
        f"{event.__name__})] in engine/decide.py does not declare (declared: {declared}); "
        f"fix {transition.handler.__name__} or declare the target"
    )


# ---------------------------------------------------------------- starting


def start_run(
    run_id: str,
    policy: Policy,
    plan: Plan,
    now: datetime,
    cloud_scheduled: CloudScheduledRun | None = None,
    follow_up_of: Run | None = None,
    window_end: datetime | None = None,
    runtime: Runtime = "local",
    frozen_by: str | None = None,
) -> Decision:
    """A new run at `now`; its window (when the policy has a schedule) ends `duration` later.

    With `follow_up_of` (a finished run that may be followed up), the run is its follow-up: every
    ring, the first one too, installs exactly what that run's first ring promoted, pinned per OS.

    With `cloud_scheduled`, the run accompanies a cloud-scheduled run (Azure Update Manager's):
    one wave of the machines the cloud will patch, snapshotted before its cut-off (or the
    cloud-scheduled run is cancelled), then checked and rolled back once the cloud has installed.

    `plan` says whether machines without a snapshot are patched all the same
    (`Plan.patch_without_rollback`); the run keeps it for its snapshot commands.

    `window_end` ends the window earlier than `duration` after `now`: a run started inside a
    window that is already open (a retry) keeps to that window's end.

    `runtime` is where the run is driven: its notices name the commands that work there, and only
    a cloud run is reminded of a gate that waits.

    `frozen_by` names the freeze an emergency run starts in: its first ring waits for approval,
    the freeze named in the request."""
    waves = tuple(
        WaveState(
            index=w.index,
            ring=w.ring,
            # the cloud installs what its schedule says: no promotion from an earlier ring
            ring_position=0 if cloud_scheduled else [r.name for r in policy.rings].index(w.ring),
            canary=w.canary,
            records={i.id: InstanceRecord(instance=i, ring=w.ring, wave=w.index) for i in w.instances},
        )
        for w in plan.waves
    )
    excluded = tuple(
        InstanceRecord(instance=e.instance, ring="", state="excluded", reason=e.reason) for e in plan.excluded
    )
    if cloud_scheduled is not None:
        window_end = cloud_scheduled.ends_at
    elif window_end is None:
        window_end = now + policy.schedule.duration if policy.schedule else None
    run = Run(
        run_id=run_id,
        policy=policy,
        created_at=now,
        window_end=window_end,
        waves=waves,
        excluded=excluded,
        cloud_scheduled=cloud_scheduled,
        patch_without_rollback=plan.patch_without_rollback,
        promoted=follow_up_of.promoted if follow_up_of else None,
        follow_up_of=follow_up_of.run_id if follow_up_of else None,
        runtime=runtime,
        frozen_by=frozen_by,
    )
    frozen = [r for r in excluded if r.reason.startswith("frozen")]
    text = f"Run {run_id} of policy {policy.name} started: {len(waves)} waves"
    text += f", {sum(len(w.records) for w in waves)} instances"
    if cloud_scheduled is not None:
        text += f", accompanying Update Manager run {cloud_scheduled.id}"
    if follow_up_of is not None:
        text += f", following up run {follow_up_of.run_id} with what it promoted"
    if frozen and cloud_scheduled is not None:
        names = ", ".join(r.instance.short_name for r in frozen[:10])
        text += (
            f"; {len(frozen)} frozen instances are in Update Manager's scope ({names}): Azure will patch them, "
            "PatchPilot does not snapshot or check them; take them out of the schedule"
        )
    elif frozen:
        one = len(frozen) == 1
        text += f"; {plural(len(frozen), 'frozen instance')} {'is' if one else 'are'} not patched"
        text += f" and {'stays' if one else 'stay'} exposed"
    text += "." if frozen and cloud_scheduled is not None else f". {_after_start(run)}"
    notice = _notify(run, "run_started", text)
    run = _logged(run, now, text)
    # The first ring is entered like any later one: a ring with `approval: required` waits before its
    # first wave, so nothing is touched before someone approves (a follow-up asks again). A run that
    # accompanies a cloud-scheduled run cannot wait (the cloud starts at its own time): the policy
    # validation refuses `approval: required` with `azure.maintenance`.
    decision = _enter_next_ring(run, now) if waves and cloud_scheduled is None else _begin_wave(run, now)
    if decision.run.state not in declared_states(START_TARGETS):
        raise UndeclaredTransitionError(
            f"start_run left run {run_id} in state {decision.run.state}, which START_TARGETS in "
            f"engine/decide.py does not declare (declared: {', '.join(START_TARGETS)})"
        )
    return _issuing(_releasing(Decision(decision.run, [notice, *decision.commands])))


def _on_notice_undelivered(run: Run, event: Event, now: datetime) -> Decision:
    assert isinstance(event, NoticeUndelivered)
    notice = UndeliveredNotice(
        notice_id=event.notice_id, topic=event.topic, channel=event.channel, reason=event.reason, at=event.at
    )
    text = f"notice {event.notice_id} not delivered to channel {event.channel}: {event.reason}"
    run = run.model_copy(update={"undelivered": (*run.undelivered, notice)})
    return Decision(_logged(run, event.at, text, "warning"))


def _on_follow_up_requested(run: Run, event: Event, now: datetime) -> Decision:
    """Record the request; once the run has ended (now, or later in `_end`) the follow-up starts."""
    assert isinstance(event, FollowUpRequested)
    follow_up = FollowUp(run_id=event.follow_up_id, instances=list(event.instances), requested_at=event.at)
    names = ", ".join(i.short_name for i in event.instances[:10])
    text = f"Follow-up run {event.follow_up_id} requested for {plural(len(event.instances), 'instance')} ({names})"
    text += f": {event.reason}" if event.reason else ""
    run = run.model_copy(update={"follow_ups": (*run.follow_ups, follow_up)})
    run = _logged(run, event.at, text, "warning")
    return _next_follow_up(run, event.at) if run.finished else Decision(run)


def _on_follow_up_finished(run: Run, event: Event, now: datetime) -> Decision:
    """A follow-up ended (from its outbox): the next requested one starts, none after a halt, nor
    after one that did not start (inside a freeze)."""
    assert isinstance(event, FollowUpFinished)
    state = "not_started" if event.not_started else "finished"
    follow_ups = tuple(
        f.model_copy(update={"state": state}) if f.run_id == event.follow_up_id else f for f in run.follow_ups
    )
    run = run.model_copy(update={"follow_ups": follow_ups})
    if event.not_started:
        text = f"NOT COVERED: follow-up {event.follow_up_id} not started: {event.not_started}"
        return _no_follow_ups(
            _logged(run, event.at, text, "error"), event.at, f"follow-up {event.follow_up_id} did not start"
        )
    if event.halted:
        return _no_follow_ups(run, event.at, f"follow-up {event.follow_up_id} halted")
    return _next_follow_up(_logged(run, event.at, f"Follow-up {event.follow_up_id} finished"), event.at)


def _next_follow_up(run: Run, now: datetime) -> Decision:
    """Start the first requested follow-up of a finished run, one at a time (never two runs planned
    apart at once); none when the run may not be followed up."""
    if not run.may_follow_up:
        if run.promoted is None:
            why = "halted before promotion" if run.state == "halted" else "ended without a promoted, tested set"
        else:
            why = f"{run.state}: {run.reason}"
        return _no_follow_ups(run, now, f"run {run.run_id} {why}")
    waiting = [f for f in run.follow_ups if f.state == "requested"]
    if run.follow_up_running or not waiting:
        return Decision(run)
    follow_up = waiting[0]
    command = StartFollowUp(
        id=f"{run.run_id}:followup:{follow_up.run_id}:start",
        run_id=run.run_id,
        follow_up_id=follow_up.run_id,
        instances=list(follow_up.instances),
    )
    follow_ups = tuple(f.model_copy(update={"state": "started"}) if f is follow_up else f for f in run.follow_ups)
    run = _logged(run.model_copy(update={"follow_ups": follow_ups}), now, f"Follow-up {follow_up.run_id} starts")
    return Decision(run, [command])


def _no_follow_ups(run: Run, now: datetime, why: str) -> Decision:
    waiting = [f for f in run.follow_ups if f.state == "requested"]
    if not waiting:
        return Decision(run)
    follow_ups = tuple(f.model_copy(update={"state": "not_started"}) if f in waiting else f for f in run.follow_ups)
    ids = ", ".join(f.run_id for f in waiting)
    text = f"NOT COVERED: {why}; follow-up {ids} not started, nothing more is patched"
    return Decision(_logged(run.model_copy(update={"follow_ups": follow_ups}), now, text, "error"))


# ---------------------------------------------------------------- the table


def decide(run: Run, event: Event, now: datetime) -> Decision:
    """Apply one event. Duplicates, stale results and events the state does not expect change
    nothing (and say why). Whatever the decision puts in the outbox is recorded in the run as
    issued by it: the worker executes nothing else (engine/issued.py)."""
    return _issuing(_releasing(_decide(run, event, now)))


def _issuing(decision: Decision) -> Decision:
    run = with_awaited(decision.run, decision.commands)
    if not decision.commands:
        return decision if run is decision.run else Decision(run, decision.commands, decision.ignored)
    return Decision(with_issued(run, decision.commands), decision.commands, decision.ignored)


def _decide(run: Run, event: Event, now: datetime) -> Decision:
    if event.id in run.processed:
        return Decision(run, ignored=f"duplicate event {event.id}")
    before = run.state
    row: tuple[Row, EventClass] = (ANY_STATE, type(event))
    if row in TRANSITIONS:  # in any state, a finished run too: its run's awaited command stays awaited
        run = run.model_copy(update={"processed": (*run.processed, event.id)})
    else:
        row = (before, type(event))
        if row not in TRANSITIONS:
            return Decision(run, ignored=f"{event.type} is not expected while {before}")
        awaited = getattr(event, "command_id", None)
        if awaited is not None and awaited != run.awaiting:
            return Decision(run, ignored=f"stale {event.type} for {awaited} (waiting for {run.awaiting})")
        run = run.model_copy(update={"processed": (*run.processed, event.id), "awaiting": None})
    transition = TRANSITIONS[row]
    return _checked(row, transition, before, transition.handler(run, event, now))


def _on_instances_leased(run: Run, event: Event, now: datetime) -> Decision:
    """The machines another run holds (past the wait) are skipped; the others are probed."""
    assert isinstance(event, InstancesLeased)
    wave = _update(
        run.current, event.by_id(), "lease", lambda r, o: {} if o.ok else _final("skipped", o.detail or "not leased")
    )
    run = _with_wave(run, wave)
    leased = [r.id for r in _pending(wave)]
    run = run.model_copy(update={"leased": (*run.leased, *leased)})
    held = [r for r in wave.records.values() if r.steps and r.steps[-1].step == "lease"]
    if held:
        names = ", ".join(f"{r.instance.short_name} ({r.reason})" for r in held[:10])
        run = _logged(run, now, f"Wave {wave.index}: {plural(len(held), 'machine')} skipped: {names}", "warning")
    if not leased:
        return _finish_wave(run, now)
    return _start_stopped(run, now)


def _start_stopped(run: Run, now: datetime) -> Decision:
    """Machines found stopped or deallocated: with `stopped_machines: start` they are started
    before the probe (and count as started from here on, so that every end returns them);
    with `skip` they are skipped untouched."""
    wave = run.current
    stopped = [r for r in _pending(wave) if r.instance.power is not None]
    if not stopped:
        return _probe(run, now)
    if run.policy.stopped_machines == "skip":
        skip = {r.id: Outcome(id=r.id, ok=False, detail=f"machine {r.instance.power}") for r in stopped}

        def skipped(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
            return _final("skipped", f"{outcome.detail}: not started (stopped_machines: skip)")

        wave = _update(wave, skip, "start", skipped, set(skip))
        return _probe(_with_wave(run, wave), now)
    records = {**wave.records, **{r.id: r.model_copy(update={"started": True}) for r in stopped}}
    run = _with_wave(run, wave.model_copy(update={"records": records}))
    command = StartMachines(
        id=_command_id(run, "start"), run_id=run.run_id, wave=wave.index, targets=[r.instance for r in stopped]
    )
    return _await(run, "starting", command)


def _on_machines_started(run: Run, event: Event, now: datetime) -> Decision:
    """A machine that did not start is skipped (it is returned with the others at the wave's end)."""
    assert isinstance(event, MachinesStarted)
    targets = {r.id for r in run.current.records.values() if r.started}

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        if outcome.ok:
            return {}
        return _final("skipped", f"could not be started: {outcome.detail}".rstrip(": "))

    wave = _update(run.current, event.by_id(), "start", apply, targets)
    return _probe(_with_wave(run, wave), now)


def _probe(run: Run, now: datetime) -> Decision:
    wave = run.current
    targets = [r.instance for r in _pending(wave)]
    if not targets:
        return _finish_wave(run, now)
    command = ProbeAgents(id=_command_id(run, "probe"), run_id=run.run_id, wave=wave.index, targets=targets)
    return _await(run, "probing", command)


def _on_agents_probed(run: Run, event: Event, now: datetime) -> Decision:
    assert isinstance(event, AgentsProbed)
    results = event.by_id()
    wave = _update(
        run.current,
        results,
        "probe",
        lambda r, o: {} if o.ok else _final("skipped", f"agent did not answer: {o.detail}".rstrip(": ")),
    )
    run = _with_wave(run, wave)
    targets = [r.instance for r in _pending(wave)]  # the offline ones are skipped now
    if not targets:
        return _finish_wave(run, now)
    deadline = run.cloud_scheduled.cancel_by - CANCEL_MARGIN if run.cloud_scheduled else None
    command = TakeSnapshots(
        id=_command_id(run, "snapshot"),
        run_id=run.run_id,
        wave=wave.index,
        targets=targets,
        deadline=deadline,
        patch_without_rollback=run.patch_without_rollback,
    )
    return _await(run, "snapshotting", command)


def _on_snapshots_taken(run: Run, event: Event, now: datetime) -> Decision:
    assert isinstance(event, SnapshotsTaken)
    results = event.by_id()

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        if outcome.ok and outcome.items:
            return {"snapshot_ids": list(outcome.items)}
        detail = outcome.detail if not outcome.ok else "no snapshot id reported"
        failure = f"snapshot failed: {detail}".rstrip(": ")
        return {**_final("skipped", f"{failure}; not patched"), "failure": failure}

    wave = _update(run.current, results, "snapshot", apply)
    run = _with_wave(run, wave)
    unprotected = [r for r in wave.records.values() if r.failure.startswith("snapshot failed")]
    if run.cloud_scheduled is not None and unprotected:
        names = ", ".join(r.instance.short_name for r in unprotected[:10])
        reason = f"snapshots failed for {plural(len(unprotected), 'machine')} ({names})"
        command = CancelCloudScheduledRun(
            id=_command_id(run, "cancel"),
            run_id=run.run_id,
            wave=wave.index,
            maintenance_run=run.cloud_scheduled.id,
            reason=reason,
        )
        run = _logged(run, now, f"{reason}: cancelling Update Manager run {run.cloud_scheduled.id}", "warning")
        return _await(run, "cancelling", command)
    return _install(run, now)


def _install(run: Run, now: datetime) -> Decision:
    """After the snapshots the wave's disruptive part begins: the before_wave hook, the drain, the
    before_install hook, then the install. A cloud-scheduled run's install is the cloud's, at its
    own time: nothing is drained or hooked around it."""
    wave = run.current
    ready = [r for r in _pending(wave) if r.snapshot_ids]
    if not ready:
        return _finish_wave(run, now)
    if run.cloud_scheduled is not None:
        return _install_now(run, now)
    run = _with_wave(run, wave.model_copy(update={"opened": True}))
    hook = _hooks(run).before_wave
    if hook is None:
        return _drain(run, now)
    command = CallWaveHook(
        id=_command_id(run, "before-wave"),
        run_id=run.run_id,
        wave=wave.index,
        phase="before_wave",
        hook=hook,
        ring=wave.ring,
        machines=[r.id for r in ready],
        issued_at=now,
    )
    return _await(run, "opening_wave", command)


def _on_wave_opened(run: Run, event: Event, now: datetime) -> Decision:
    """The before_wave hook answered: 2xx goes on; anything else halts the run before any machine
    of the wave is touched, with the endpoint's answer as the reason."""
    assert isinstance(event, WaveHookCalled)
    wave = run.current
    answer = _hook_answer(event)
    if not answer.ok:
        reason = f"the before_wave hook refused wave {wave.index} ({wave.ring}): {answer.detail}"
        return _end(_logged(run, now, _sentence(reason), "error"), now, "halted", reason)
    run = _logged(run, now, f"Wave {wave.index}: the before_wave hook answered {answer.detail or 'ok'}")
    return _drain(run, now)


def _drain(run: Run, now: datetime) -> Decision:
    """The machines with traffic pools (`traffic.drain`) or a scaling group (`scaling_groups:
    standby`) leave them before anything disruptive; they count as out from here on."""
    members = _drain_targets(run)
    if not members:
        return _before_install(run, now)
    return _leaving(run, now, members, "drain", "draining")


def _leaving(
    run: Run, now: datetime, records: list[InstanceRecord], step: str, state: Literal["draining", "redraining"]
) -> Decision:
    """`records` leave their pools (`LeavePools`): they count as out from the moment it is issued."""
    wave = run.current
    out = {**wave.records, **{r.id: r.model_copy(update={"out_of_pools": True}) for r in records}}
    run = _with_wave(run, wave.model_copy(update={"records": out}))
    command = LeavePools(
        id=_command_id(run, step),
        run_id=run.run_id,
        wave=wave.index,
        targets=[_pool_view(run, r.instance) for r in records],
        issued_at=now,
        timeout=run.policy.traffic.drain_timeout,
        standby=run.policy.scaling_groups == "standby",
    )
    return _await(run, state, command)


def _on_pools_left(run: Run, event: Event, now: datetime) -> Decision:
    """A machine not drained is not installed: it is skipped (counted as a failure of the wave,
    like a failed snapshot) and rejoins its pools with the others."""
    assert isinstance(event, PoolsLeft)
    targets = {r.id for r in _drain_targets(run)}

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        registrations: dict[str, object] = {"pool_registrations": list(outcome.items)}
        if outcome.ok:
            return registrations
        failure = f"not drained from its pools: {outcome.detail}".rstrip(": ")
        return {**registrations, **_final("skipped", f"{failure}; not patched"), "failure": failure}

    wave = _update(run.current, event.by_id(), "drain", apply, targets)
    return _before_install(_with_wave(run, wave), now)


def _before_install(run: Run, now: datetime) -> Decision:
    return _run_hook(run, now, "before_install", "preparing") or _install_now(run, now)


def _run_hook(
    run: Run,
    now: datetime,
    phase: Literal["before_install", "after_install"],
    state: Literal["preparing", "verifying"],
) -> Decision | None:
    """The ring's host hook for `phase` on the machines it concerns; None when there is none to run."""
    hook, targets = _host_hook(run, phase)
    if hook is None or not targets:
        return None
    command = RunHostHook(
        id=_command_id(run, phase.replace("_", "-")),
        run_id=run.run_id,
        wave=run.current.index,
        targets=[r.instance for r in targets],
        phase=phase,
        hook=hook,
        issued_at=now,
    )
    return _await(run, state, command)


def _on_prepared(run: Run, event: Event, now: datetime) -> Decision:
    """A failing before_install hook means no install on that machine: skipped with the hook's
    output tail as the reason (a failure of the wave, like a failed snapshot)."""
    assert isinstance(event, HostHookRan)
    _, targets = _host_hook(run, "before_install")

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        if outcome.ok:
            return {}
        failure = f"before_install hook failed: {outcome.detail}".rstrip(": ")
        return {**_final("skipped", f"{failure}; not patched"), "failure": failure}

    wave = _update(run.current, event.by_id(), "before_install", apply, {r.id for r in targets})
    return _install_now(_with_wave(run, wave), now)


def _install_now(run: Run, now: datetime) -> Decision:
    wave = run.current
    ready = [r for r in _pending(wave) if r.snapshot_ids]
    if not ready:
        return _after_checks(run, now)
    policy = run.policy
    targets = [_install_target(run, r, now) for r in ready]
    command = InstallPatches(
        id=_command_id(run, "install"),
        run_id=run.run_id,
        wave=wave.index,
        targets=targets,
        classifications=list(policy.patches.classifications),
        include=list(policy.patches.include),
        exclude=list(policy.patches.exclude),
        reboot=policy.reboot,
        max_duration=_time_left(run, now),
        maintenance_run=run.cloud_scheduled.id if run.cloud_scheduled else None,
    )
    unrebooted = [t.instance.short_name for t in targets if t.reboot == "never" and policy.reboot != "never"]
    if unrebooted:  # the report's log says which machines skip their reboot, and why
        names = ", ".join(unrebooted[:20]) + (f" and {len(unrebooted) - 20} more" if len(unrebooted) > 20 else "")
        text = f"Wave {wave.index}: {NO_REBOOT_NOTE} for {plural(len(unrebooted), 'machine')} ({names})"
        run = _logged(run, now, text)
    return _await(run, "installing", command)


def _install_target(run: Run, record: InstanceRecord, now: datetime) -> InstallTarget:
    """What one machine installs: the promoted set (pinned), its patch exceptions, and no reboot
    on a hotpatch-enabled machine whose promoted set is live patches only (patchpilot/hotpatch.py)."""
    only = _pinned(run, record)
    excluded = excepted_patches(run.policy, record.instance, now)
    kept = [p for p in only if not names_patch(excluded, p)] if only is not None else None
    reboot: Literal["never"] | None = "never" if reboot_free(record.instance, kept) else None
    return InstallTarget(instance=record.instance, only=only, exclude=excluded, reboot=reboot)


def _on_cloud_scheduled_run_cancelled(run: Run, event: Event, now: datetime) -> Decision:
    """Cancelled: nothing is patched. Not cancelled (the cut-off passed): the cloud patches every
    machine, so the ones with snapshots go on to be checked and, if need be, rolled back."""
    assert isinstance(event, CloudScheduledRunCancelled) and run.cloud_scheduled is not None
    scheduled = run.cloud_scheduled.id
    outcome = event.results[0] if event.results else Outcome(id=scheduled, ok=False, detail="no result")
    unprotected = [r for r in run.current.records.values() if r.failure.startswith("snapshot failed")]
    if outcome.ok:
        names = ", ".join(r.instance.short_name for r in unprotected[:10])
        reason = f"snapshots failed for {names}: Update Manager run {scheduled} cancelled, nothing patched"
        return _end(run, now, "halted", reason)
    names = ", ".join(r.instance.short_name for r in unprotected[:10])
    text = (
        f"Run {run.run_id} could not cancel Update Manager run {scheduled}: {outcome.detail}; "
        f"{plural(len(unprotected), 'machine')} will be patched without a snapshot ({names}). "
        "Check them by hand once Update Manager has run: nothing can roll them back."
    )
    notice = _notify(run, "instance_failed", text, "error", "cancel")
    decision = _install(_logged(run, now, text, "error"), now)
    return Decision(decision.run, [notice, *decision.commands])


def _on_patches_installed(run: Run, event: Event, now: datetime) -> Decision:
    assert isinstance(event, PatchesInstalled)
    results = event.by_id()

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        if outcome.ok:
            return {"installed": list(outcome.items)}
        return {"failure": f"install failed: {outcome.detail}".rstrip(": ")}

    wave = _update(run.current, results, "install", apply)
    run = _with_wave(run, wave)
    if not any(not r.failure for r in _pending(wave)):
        return _after_checks(run, now)
    return _run_hook(run, now, "after_install", "verifying") or _check_health(run, now)


def _on_verified(run: Run, event: Event, now: datetime) -> Decision:
    """A failing after_install hook counts as a failed health check: the machine is rolled back."""
    assert isinstance(event, HostHookRan)
    _, targets = _host_hook(run, "after_install")

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        return {} if outcome.ok else {"failure": f"after_install hook failed: {outcome.detail}".rstrip(": ")}

    wave = _update(run.current, event.by_id(), "after_install", apply, {r.id for r in targets})
    return _check_health(_with_wave(run, wave), now)


def _check_health(run: Run, now: datetime) -> Decision:
    wave = run.current
    installed = [r.instance for r in _pending(wave) if not r.failure]
    if not installed:
        return _after_checks(run, now)
    command = CheckHealth(
        id=_command_id(run, "health"),
        run_id=run.run_id,
        wave=wave.index,
        targets=installed,
        checks=run.policy.health,
    )
    return _await(run, "checking", command)


def _on_health_checked(run: Run, event: Event, now: datetime) -> Decision:
    assert isinstance(event, HealthChecked)

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        if outcome.ok and record.out_of_pools:
            return {}  # patched once it is back in its pools (and, with pool_health, healthy there)
        if outcome.ok:
            return _final("patched", f"{plural(len(record.installed), 'patch')} installed, healthy")
        return {"failure": f"health check failed after patching: {outcome.detail}".rstrip(": ")}

    wave = _update(run.current, event.by_id(), "health", apply)
    return _after_checks(_with_wave(run, wave), now)


def _after_checks(run: Run, now: datetime) -> Decision:
    """Once a wave's machines are checked: the healthy ones out of their pools (and those skipped
    after they left) rejoin them; then the failed ones are rolled back."""
    back = _rejoin_targets(run.current)
    if not back:
        return _roll_back_failures(run, now)
    return _await(run, "rejoining", _rejoin(run, now, back, "rejoin"))


def _on_pools_rejoined(run: Run, event: Event, now: datetime) -> Decision:
    """A patched machine counts as patched once its pools have it back (with `pool_health`,
    healthy): otherwise it has failed a health check, and is rolled back. A machine skipped before
    its install is back as it was."""
    assert isinstance(event, PoolsRejoined)
    targets = {r.id for r in _rejoin_targets(run.current)}
    check = "pool health check failed" if run.policy.traffic.pool_health else "could not rejoin its pools"

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        if record.state == "pending" and outcome.ok:
            reason = f"{plural(len(record.installed), 'patch')} installed, healthy, back in its pools"
            return {"out_of_pools": False, **_final("patched", reason)}
        if record.state == "pending":  # it may be in a pool that finds it unhealthy: it leaves again
            return {"out_of_pools": False, "failure": f"{check}: {outcome.detail}".rstrip(": ")}
        if outcome.ok:
            return {"out_of_pools": False, "reason": f"{record.reason}; back in its pools"}
        return {"reason": f"{record.reason}; not back in its pools: {outcome.detail}".rstrip(": ")}

    wave = _update(run.current, event.by_id(), "rejoin", apply, targets)
    return _roll_back_failures(_with_wave(run, wave), now)


def _roll_back_failures(run: Run, now: datetime) -> Decision:
    """Roll back the failed machines; those their pools found unhealthy leave the pools first."""
    failed = [r for r in _pending(run.current) if r.failure]
    if not failed:
        return _finish_wave(run, now)
    again = _redrain_targets(run.current)
    if not again:
        return _roll_back(run, failed)
    return _leaving(run, now, again, "redrain", "redraining")


def _on_redrained(run: Run, event: Event, now: datetime) -> Decision:
    """Out of their pools again (or, failing that, said so): the rollback goes on either way, the
    machine is unhealthy already."""
    assert isinstance(event, PoolsLeft)
    targets = {r.id for r in _redrain_targets(run.current)}

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        if outcome.ok:
            return {"pool_registrations": list(outcome.items) or record.pool_registrations}
        return {"failure": f"{record.failure}; could not leave its pools before the rollback: {outcome.detail}"}

    wave = _update(run.current, event.by_id(), "redrain", apply, targets)
    run = _with_wave(run, wave)
    return _roll_back(run, [r for r in _pending(wave) if r.failure])


def _roll_back(run: Run, failed: list[InstanceRecord]) -> Decision:
    command = RollBack(
        id=_command_id(run, "rollback"),
        run_id=run.run_id,
        wave=run.current.index,
        targets=[RestoreTarget(instance=r.instance, snapshot_ids=r.snapshot_ids) for r in failed],
        restore_data_volumes=run.policy.restores_data_volumes({r.instance.cloud for r in failed}),
    )
    return _await(run, "rolling_back", command)


def _on_rolled_back(run: Run, event: Event, now: datetime) -> Decision:
    assert isinstance(event, RolledBack)

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        if outcome.ok:
            return {}
        reason = f"{record.failure}; rollback failed too: {outcome.detail}".rstrip(": ")
        return _final("failed", reason + _left_out(record))

    wave = _update(run.current, event.by_id(), "rollback", apply)
    run = _with_wave(run, wave)
    restored = [r.instance for r in _pending(wave)]
    if not restored:
        return _finish_wave(run, now)
    command = CheckHealth(
        id=_command_id(run, "recheck"),
        run_id=run.run_id,
        wave=wave.index,
        targets=restored,
        after_rollback=True,
        checks=run.policy.health,
    )
    return _await(run, "rechecking", command)


def _on_rechecked(run: Run, event: Event, now: datetime) -> Decision:
    assert isinstance(event, HealthChecked)

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        source = ", ".join(record.snapshot_ids) or "its snapshot"
        if outcome.ok:
            return _final("rolled_back", f"{record.failure}; rolled back from {source}, healthy again")
        detail = f"{record.failure}; rolled back from {source} but still unhealthy: {outcome.detail}"
        return _final("failed", detail.rstrip(": ") + _left_out(record))

    wave = _update(run.current, event.by_id(), "recheck", apply)
    run = _with_wave(run, wave)
    back = _restored_targets(wave)
    if not back:
        return _finish_wave(run, now)
    return _await(run, "restoring", _rejoin(run, now, back, "rejoin-restored"))


def _on_restored(run: Run, event: Event, now: datetime) -> Decision:
    """Rolled back and healthy again: back in its pools, or said why not."""
    assert isinstance(event, PoolsRejoined)
    targets = {r.id for r in _restored_targets(run.current)}

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        if outcome.ok:
            return {"out_of_pools": False, "reason": f"{record.reason}, back in its pools"}
        return {"reason": f"{record.reason}; not back in its pools: {outcome.detail}".rstrip(": ")}

    wave = _update(run.current, event.by_id(), "rejoin", apply, targets)
    return _finish_wave(_with_wave(run, wave), now)


def _on_pools_swept(run: Run, event: Event, now: datetime) -> Decision:
    """The finished run's last look at its pools: what it had to put back (a crash left it out)
    is logged and told; what it could not put back pages."""
    assert isinstance(event, PoolsSwept)
    results = event.by_id()
    readded = [
        (r, results[r.id]) for r in run.records() if r.id in results and results[r.id].ok and results[r.id].items
    ]
    stuck = [(r, results[r.id]) for r in run.records() if r.id in results and not results[r.id].ok]
    run = _with_records(run, {k for k, o in results.items() if o.ok}, {"out_of_pools": False})
    if not readded and not stuck:
        return Decision(_logged(run, now, "Run end: every machine the run drained is in its pools"))
    notices: list[Message] = []
    if readded:
        names = "; ".join(f"{r.instance.short_name} into {', '.join(o.items)}" for r, o in readded[:MAX_BROKEN_NAMED])
        text = f"Run {run.run_id} ended with {plural(len(readded), 'machine')} out of its pools: put back ({names})"
        run = _logged(run, now, text, "warning")
        notices.append(_notify(run, "run_finished", text + ". Nothing to do.", "warning", "sweep"))
    if stuck:
        names = "; ".join(f"{r.instance.short_name}: {o.detail}" for r, o in stuck[:MAX_BROKEN_NAMED])
        text = (
            f"Run {run.run_id} could not put {plural(len(stuck), 'machine')} back into its pools ({names}). "
            "Add them back by hand once they are healthy."
        )
        run = _logged(run, now, text, "error")
        notices.append(_notify(run, "instance_failed", text, "error", "sweep"))
    return Decision(run, notices)


def _on_soak_over(run: Run, event: Event, now: datetime) -> Decision:
    return _enter_next_ring(_logged(run, now, "Soak over"), now)


def _on_approved(run: Run, event: Event, now: datetime) -> Decision:
    assert isinstance(event, ApprovalGranted)
    ring = run.waves[run.cursor].ring
    return _begin_wave(_logged(run, now, f"Ring {ring} approved by {event.by}"), now)


def _on_rejected(run: Run, event: Event, now: datetime) -> Decision:
    assert isinstance(event, ApprovalRejected)
    ring = run.waves[run.cursor].ring
    reason = f"ring {ring} rejected by {event.by}" + (f": {event.reason}" if event.reason else "")
    return _end(_logged(run, now, reason[:1].upper() + reason[1:], "warning"), now, "halted", reason)


def _on_approval_reminder(run: Run, event: Event, now: datetime) -> Decision:
    """The gate still waits past its reminder: page (the severity of a halt) with what waits, since
    when, and the commands; then set the next reminder, if any is left."""
    assert isinstance(event, TimerFired)
    number = int(event.command_id.rsplit(":remind", 1)[1])
    ring = run.current.ring
    opened = GATE_OPENED % ring
    since = next((e.at for e in reversed(run.log) if e.text.startswith(opened)), run.created_at)
    zone = run.policy.schedule.zone if run.policy.schedule else UTC
    text = (
        f"Ring {ring} of run {run.run_id} still waits for approval, {_minutes(now - since)} since "
        f"{since.astimezone(zone).isoformat(timespec='minutes')}: {_how_to_decide(run)}."
    )
    if run.window_end is not None and now >= run.window_end:
        ended = run.window_end.astimezone(zone).isoformat(timespec="minutes")
        text += f" The window ended at {ended}: an approval now starts nothing (the run ends incomplete)."
    if number >= MAX_APPROVAL_REMINDERS:
        text += " This is the last reminder."
    run = _logged(run, now, text, "warning")
    notice = _notify(run, "approval_needed", text, "error", f"{ring}:remind{number}")
    return _reminding(run, now, number + 1, [notice])


def _on_wave_closed(run: Run, event: Event, now: datetime) -> Decision:
    """The after_wave hook answered: 2xx goes on; anything else halts the run after this wave."""
    assert isinstance(event, WaveHookCalled)
    answer = _hook_answer(event)
    wave = run.current
    if answer.ok:
        run = _logged(run, now, f"Wave {wave.index}: the after_wave hook answered {answer.detail or 'ok'}")
        return _wave_finished(run, now)
    run = _with_wave(run, wave.model_copy(update={"finished_at": now}))
    reason = f"the after_wave hook refused after wave {wave.index} ({wave.ring}): {answer.detail}"
    notices = _failure_notices(run, run.current)
    decision = _end(_logged(run, now, _sentence(reason), "error"), now, "halted", reason)
    return Decision(decision.run, [*notices, *decision.commands])


def _to_return(records: Iterable[InstanceRecord]) -> list[InstanceRecord]:
    """Started by the run, not returned yet, and not already tried by this wave's return."""
    return [r for r in records if r.started and not any(s.step == "return" for s in r.steps)]


def _on_machines_returned(run: Run, event: Event, now: datetime) -> Decision:
    """Returned: the record says so. Not returned: it stays `started`, logged and told, and the
    run's end tries again."""
    assert isinstance(event, MachinesReturned)
    targets = {r.id for r in _to_return(run.current.records.values())}

    def apply(record: InstanceRecord, outcome: Outcome) -> dict[str, object]:
        if outcome.ok:
            return {"started": False}
        return {}

    wave = _update(run.current, event.by_id(), "return", apply, targets)
    run = _with_wave(run, wave)
    left = [r for r in wave.records.values() if r.id in targets and r.started]
    back = [r for r in wave.records.values() if r.id in targets and not r.started]
    if back:
        names = ", ".join(f"{r.instance.short_name} ({r.instance.power})" for r in back[:20])
        run = _logged(run, now, f"Wave {wave.index}: {plural(len(back), 'machine')} returned as found: {names}")
    if not left:
        return _close_wave(run, now)
    names = ", ".join(r.instance.short_name for r in left[:20])
    text = f"Wave {wave.index}: {plural(len(left), 'machine')} not returned to the state found ({names}): left running"
    notice = _notify(run, "instance_failed", text, "error", f"return-w{wave.index}")
    decision = _close_wave(_logged(run, now, text, "error"), now)
    return Decision(decision.run, [notice, *decision.commands])


def _on_machines_swept(run: Run, event: Event, now: datetime) -> Decision:
    """The finished run's last look at the machines it found stopped: returned is recorded;
    what stays running pages."""
    assert isinstance(event, MachinesSwept)
    results = event.by_id()
    run = _with_records(run, {k for k, o in results.items() if o.ok}, {"started": False})
    stuck = [(r, results[r.id]) for r in run.records() if r.id in results and not results[r.id].ok]
    if not stuck:
        return Decision(_logged(run, now, "Run end: every machine the run found stopped is back in that state"))
    names = "; ".join(f"{r.instance.short_name}: {o.detail}" for r, o in stuck[:20])
    text = f"Run {run.run_id} could not return {plural(len(stuck), 'machine')} to the state found: {names}"
    return Decision(_logged(run, now, text, "error"), [_notify(run, "instance_failed", text, "error", "return-at-end")])


# Keyed by event class: a message's `type` is its wire name, the class is what the code knows.
TRANSITIONS: dict[tuple[Row, EventClass], Transition] = {
    ("leasing", InstancesLeased): Transition(_on_instances_leased, ("starting", "probing", WAVE_DONE)),
    ("starting", MachinesStarted): Transition(_on_machines_started, ("probing", WAVE_DONE)),
    ("returning", MachinesReturned): Transition(_on_machines_returned, ("closing_wave", WAVE_DONE)),
    ("probing", AgentsProbed): Transition(_on_agents_probed, ("snapshotting", WAVE_DONE)),
    ("snapshotting", SnapshotsTaken): Transition(
        _on_snapshots_taken, ("opening_wave", "draining", "preparing", "installing", "cancelling", WAVE_DONE)
    ),
    ("opening_wave", WaveHookCalled): Transition(
        _on_wave_opened, ("halted", "draining", "preparing", "installing", "rejoining", WAVE_DONE)
    ),
    ("draining", PoolsLeft): Transition(_on_pools_left, ("preparing", "installing", "rejoining", WAVE_DONE)),
    ("preparing", HostHookRan): Transition(_on_prepared, ("installing", "rejoining", WAVE_DONE)),
    ("installing", PatchesInstalled): Transition(
        _on_patches_installed, ("verifying", "checking", "rejoining", "rolling_back", WAVE_DONE)
    ),
    ("verifying", HostHookRan): Transition(_on_verified, ("checking", "rejoining", "rolling_back", WAVE_DONE)),
    ("checking", HealthChecked): Transition(_on_health_checked, ("rejoining", "rolling_back", WAVE_DONE)),
    ("rejoining", PoolsRejoined): Transition(_on_pools_rejoined, ("redraining", "rolling_back", WAVE_DONE)),
    ("redraining", PoolsLeft): Transition(_on_redrained, ("rolling_back",)),
    ("rolling_back", RolledBack): Transition(_on_rolled_back, ("rechecking", WAVE_DONE)),
    ("rechecking", HealthChecked): Transition(_on_rechecked, ("restoring", WAVE_DONE)),
    ("restoring", PoolsRejoined): Transition(_on_restored, (WAVE_DONE,)),
    ("closing_wave", WaveHookCalled): Transition(_on_wave_closed, ("halted", WAVE_DONE)),
    ("cancelling", CloudScheduledRunCancelled): Transition(
        _on_cloud_scheduled_run_cancelled, ("halted", "installing", WAVE_DONE)
    ),
    ("soaking", TimerFired): Transition(_on_soak_over, ("awaiting_approval", "leasing", "incomplete", WAVE_DONE)),
    ("awaiting_approval", ApprovalGranted): Transition(_on_approved, ("leasing", "incomplete", WAVE_DONE)),
    ("awaiting_approval", TimerFired): Transition(_on_approval_reminder, ("awaiting_approval",)),
    ("awaiting_approval", ApprovalRejected): Transition(_on_rejected, ("halted",)),
    (ANY_STATE, NoticeUndelivered): Transition(_on_notice_undelivered),
    (ANY_STATE, FollowUpRequested): Transition(_on_follow_up_requested),
    (ANY_STATE, FollowUpFinished): Transition(_on_follow_up_finished),
    (ANY_STATE, PoolsSwept): Transition(_on_pools_swept),
    (ANY_STATE, MachinesSwept): Transition(_on_machines_swept),
}
# Where the end of a wave leads: the next wave, a soak, an approval gate, or the end of the run.
WAVE_DONE_TARGETS: tuple[RunState, ...] = (
    "returning",
    "closing_wave",
    "leasing",
    "soaking",
    "awaiting_approval",
    "succeeded",
    "succeeded_with_failures",
    "nothing_patched",
    "halted",
    "incomplete",
)
# Where `start_run` leaves a new run: its first wave, a gate before it, or, with no wave to run
# (or no time for it), the end.
RUN_STARTED: Final = "RunStarted"
START_TARGETS: tuple[Target, ...] = ("leasing", "awaiting_approval", "incomplete", "nothing_patched", WAVE_DONE)


# ---------------------------------------------------------------- waves and rings


def _begin_wave(run: Run, now: datetime) -> Decision:
    if run.cursor >= len(run.waves):
        return _end(run, now, "succeeded", "every wave finished")
    if run.window_end is not None and now >= run.window_end:
        zone = run.policy.schedule.zone if run.policy.schedule else None
        when = run.window_end.astimezone(zone).isoformat(timespec="minutes")
        # the patch window: "maintenance window" is kept, reports and notices have always said so
        return _end(run, now, "incomplete", f"the maintenance window ended at {when}; later waves not started")
    if why := _does_not_fit(run, now):
        return _end(run, now, "incomplete", why)
    wave = run.current.model_copy(update={"started_at": now})
    if wave.ring_position > 0 or run.follow_up_of is not None:
        wave = _skip_unpromotable(run, wave)
    run = _logged(_with_wave(run, wave), now, f"Wave {wave.index} ({wave.ring}) started")
    targets = [r.id for r in _pending(wave)]
    if not targets:
        return _finish_wave(run, now)
    # A cloud-scheduled run cannot wait: the cloud starts at its own time.
    wait_until = run.window_end if run.cloud_scheduled is None else None
    command = LeaseInstances(
        id=_command_id(run, "lease"),
        run_id=run.run_id,
        wave=wave.index,
        targets=targets,
        until=max(run.window_end or now, now) + LEASE_MARGIN,
        wait_until=wait_until,
    )
    return _await(run, "leasing", command)


def _does_not_fit(run: Run, now: datetime) -> str:
    """Why the current wave may not start in what is left of the window, or "" when it may.

    With `rollout.cutoff`, no wave starts within that much of the window's end (SSM's cutoff).
    Without it, a wave starts only if its expected duration fits in what is left: the longest wave
    of the run so far (the run's own measure of its fleet), else, before any wave has taken time,
    the estimate of its steps (planning/estimate.py, what `patchpilot plan` shows). A run that
    accompanies a cloud-scheduled run has no say: the cloud starts at its own time."""
    if run.window_end is None or run.cloud_scheduled is not None:
        return ""
    left = run.window_end - now
    wave = run.current
    cutoff = run.policy.rollout.cutoff
    if cutoff is not None:
        if left > cutoff or cutoff == timedelta(0):
            return ""
        return (
            f"wave {wave.index}: {_minutes(left)} left of the window, within rollout.cutoff "
            f"{format_duration(cutoff)}: not started"
        )
    expected, source = expected_wave_duration(run)
    if expected <= left:
        return ""
    return (
        f"wave {wave.index} expected to take {_minutes(expected)} ({source}), "
        f"{_minutes(left)} left of the window: not started"
    )


def expected_wave_duration(run: Run) -> tuple[timedelta, str]:
    """How long the current wave is expected to take, and what says so: the longest of the run's
    finished waves that took any time, else the estimate of the wave's steps."""
    taken = [w.finished_at - w.started_at for w in run.waves if w.started_at and w.finished_at]
    longest = max(taken, default=timedelta(0))
    if longest > timedelta(0):
        return longest, "the longest wave so far"
    machines = [r.instance for r in _pending(run.current)]
    return wave_estimate(machines, run.policy.reboot), ESTIMATE_SOURCE


def _minutes(value: timedelta) -> str:
    """A duration in whole minutes, rounded down (`1h10m`, `0m`)."""
    whole = timedelta(minutes=max(value, timedelta(0)) // timedelta(minutes=1))
    return format_duration(whole) if whole else "0m"


def _releasing(decision: Decision) -> Decision:
    """Machines that have left the run (their record is final) give up their lease at once. The
    leased machines are the current wave's (the cursor moves on only once a wave is done)."""
    run = decision.run
    if not run.leased:
        return decision
    pending = {r.id for r in _pending(run.current)} if run.cursor < len(run.waves) else set()
    done = [i for i in run.leased if i not in pending]
    if not done:
        return decision
    key = hashlib.sha256("\n".join(sorted(done)).encode()).hexdigest()[:12]
    release = ReleaseInstances(id=f"{run.run_id}:release:{key}", run_id=run.run_id, targets=done)
    run = run.model_copy(update={"leased": tuple(i for i in run.leased if i in pending)})
    return Decision(run, [*decision.commands, release], decision.ignored)


def _skip_unpromotable(run: Run, wave: WaveState) -> WaveState:
    """Later rings install exactly what the first ring installed and passed, per OS."""
    promoted = run.promoted or {}
    first_ring = run.policy.rings[0].name + (f" of run {run.follow_up_of}" if run.follow_up_of else "")
    records = dict(wave.records)
    for key, record in wave.records.items():
        os_name = record.instance.os
        if os_name not in promoted:
            reason = f"no {os_name} instance passed ring {first_ring}: no tested patch set to promote"
            records[key] = record.model_copy(update=_final("skipped", reason))
        elif not promoted[os_name]:
            reason = f"nothing to install: ring {first_ring} installed no {os_name} patches"
            records[key] = record.model_copy(update=_final("skipped", reason))
    return wave.model_copy(update={"records": records})


def _finish_wave(run: Run, now: datetime) -> Decision:
    """The end of a wave: the machines it started go back to the state they were found in
    (after a rollback too), then its after_wave hook, when the wave reached its disruptive part."""
    wave = run.current
    started = _to_return(wave.records.values())
    if started:
        command = ReturnMachines(
            id=_command_id(run, "return"), run_id=run.run_id, wave=wave.index, targets=[r.instance for r in started]
        )
        return _await(run, "returning", command)
    return _close_wave(run, now)


def _close_wave(run: Run, now: datetime) -> Decision:
    wave = run.current
    hook = _hooks(run).after_wave if wave.opened and not wave.closed else None
    if hook is None:
        return _wave_finished(run, now)
    run = _with_wave(run, wave.model_copy(update={"closed": True}))
    command = CallWaveHook(
        id=_command_id(run, "after-wave"),
        run_id=run.run_id,
        wave=wave.index,
        phase="after_wave",
        hook=hook,
        ring=wave.ring,
        machines=list(wave.records),
        issued_at=now,
    )
    return _await(run, "closing_wave", command)


def _wave_finished(run: Run, now: datetime) -> Decision:
    wave = run.current.model_copy(update={"finished_at": now})
    run = _with_wave(run, wave)
    notices = _failure_notices(run, wave)
    size, failures = len(wave.records), wave.failures
    limit = run.policy.rollout.max_failures
    text = f"Wave {wave.index} ({wave.ring}) finished: {count_states(wave.records.values())}"
    run = _logged(run, now, text, "warning" if failures else "info")
    if limit.exceeded_by(failures, size):
        reason = f"wave {wave.index} had {plural(failures, 'failure')} of {size}, more than max_failures {limit}"
        decision = _end(run, now, "halted", reason)
        return Decision(decision.run, [*notices, *decision.commands])

    last_of_ring = run.cursor + 1 >= len(run.waves) or run.waves[run.cursor + 1].ring != wave.ring
    if not last_of_ring:
        decision = _begin_wave(run.model_copy(update={"cursor": run.cursor + 1}), now)
        return Decision(decision.run, [*notices, *decision.commands])

    ring_records = [r for w in run.waves if w.ring == wave.ring for r in w.records.values()]
    ring_failures = sum(1 for r in ring_records if r.failure)
    later_waves = run.cursor + 1 < len(run.waves)
    if wave.ring_position == 0:
        if ring_failures and later_waves:
            reason = f"ring {wave.ring} had {plural(ring_failures, 'failure')}: later rings are not touched"
            decision = _end(run, now, "halted", reason)
            return Decision(decision.run, [*notices, *decision.commands])
        if run.follow_up_of is None:  # a follow-up keeps the set it was pinned to
            run = run.model_copy(update={"promoted": _promoted(ring_records)})
    text = f"Ring {wave.ring} finished: {count_states(ring_records)}"
    broken = [r for r in ring_records if r.state == "failed"]
    run = _logged(run.model_copy(update={"cursor": run.cursor + 1}), now, text)
    if run.cursor >= len(run.waves):
        decision = _begin_wave(run, now)
        notices.append(_ring_notice(run, wave.ring, text, broken, "the run ends here, its last notice follows"))
        return Decision(decision.run, [*notices, *decision.commands])
    soak = run.policy.rings[wave.ring_position].soak
    if soak.total_seconds() > 0:
        wait = Wait(
            id=f"{run.run_id}:ring{wave.ring_position + 1}:soak",
            run_id=run.run_id,
            until=now + soak,
            purpose=f"soak after ring {wave.ring}",
        )
        run = _logged(run, now, f"Soaking {format_duration(soak)} after ring {wave.ring}")
        then = f"ring {run.current.ring} starts after a {format_duration(soak)} soak"
        if run.policy.rings[run.current.ring_position].approval == "required":
            then += " and your approval (the approval notice says how)"
        notices.append(_ring_notice(run, wave.ring, text, broken, then))
        return Decision(_awaiting(run, "soaking", wait.id), [*notices, wait])
    decision = _enter_next_ring(run, now)
    if decision.run.state == "awaiting_approval":
        then = f"ring {run.current.ring} waits for approval (the approval notice says how)"
    elif decision.run.finished:
        then = f"ring {run.current.ring} does not start, the run's last notice says why"
    else:
        then = f"ring {run.current.ring} starts now"
    notices.append(_ring_notice(run, wave.ring, text, broken, then))
    return Decision(decision.run, [*notices, *decision.commands])


def _ring_notice(run: Run, ring: str, text: str, broken: list[InstanceRecord], then: str) -> Notify:
    """The "ring finished" notice: the counts, then what comes next and whether anyone must act."""
    if broken:
        left = _left_broken(len(broken)).replace(" (state failed)", "")
        step = f"{left[:1].upper()}{left[1:]}: restore by hand from the snapshots its notice names; {then}."
    else:
        step = f"Nothing to do: {then}."
    return _notify(run, "ring_finished", f"{text}. {step}", suffix=ring)


def _enter_next_ring(run: Run, now: datetime) -> Decision:
    """Start the ring of the current wave, or, when it requires approval, wait for one before its
    first wave: the first ring too (then nothing at all is touched before someone approves). A
    cloud run also sets the timer of the gate's first reminder (`rollout.approval_reminder`)."""
    ring = run.policy.rings[run.current.ring_position]
    frozen = run.frozen_by is not None and run.cursor == 0  # an emergency run inside a freeze: its first ring
    if ring.approval == "required" or frozen:
        inside = f" (the run started inside freeze {run.frozen_by})" if frozen else ""
        text = f"{GATE_OPENED % ring.name}{inside}: {_how_to_decide(run)}."
        run = _logged(run, now, text, "warning")
        notice = _notify(run, "approval_needed", text, suffix=ring.name)
        return _reminding(_awaiting(run, "awaiting_approval", None), now, 1, [notice])
    return _begin_wave(run, now)


GATE_OPENED = "Ring %s needs approval before it starts"  # the gate's log entry starts so: its reminders find it


def _how_to_decide(run: Run) -> str:
    """How to approve or reject the gate of `run`: the CLI locally; on a cloud, the buttons or
    links the approval notices carry to their channels (there is no `approve --cloud`; the log's
    copy of the notice says where they went: `serverless.approve_hint`)."""
    if run.runtime == "local":
        return (
            f"approve it with {_command('approve', run.run_id)}, or reject it (the run ends there; "
            f"add --reason TEXT to say why) with {_command('reject', run.run_id)}"
        )
    return (
        "approve it with the Approve button or link of this notice in Slack or Teams, "
        "or reject it with Reject (the run ends there)"
    )


def _reminding(run: Run, now: datetime, number: int, notices: list[Message]) -> Decision:
    """The gate waits; on a cloud, with a reminder interval and reminders left, reminder `number`
    is set for one interval from now (a Wait the run awaits: once the gate is decided, or for an
    earlier gate, its firing is stale and changes nothing)."""
    every = run.policy.rollout.approval_reminder
    if run.runtime == "local" or every <= timedelta(0) or number > MAX_APPROVAL_REMINDERS:
        return Decision(run, notices)
    ring = run.current.ring
    wait = Wait(
        id=f"{run.run_id}:ring{run.current.ring_position + 1}:remind{number}",
        run_id=run.run_id,
        until=now + every,
        purpose=f"approval reminder {number} of ring {ring}",
    )
    return Decision(_awaiting(run, "awaiting_approval", wait.id), [*notices, wait])


def _end(run: Run, now: datetime, state: RunState, reason: str) -> Decision:
    """Finish the run; whatever never started is reported as not started, with why."""
    waves = []
    for wave in run.waves:
        if any(r.state == "pending" for r in wave.records.values()):
            records = {
                k: r.model_copy(update=_final("not_started", reason)) if r.state == "pending" else r
                for k, r in wave.records.items()
            }
            wave = wave.model_copy(update={"records": records})
        waves.append(wave)
    run = run.model_copy(update={"waves": tuple(waves), "state": state, "reason": reason, "awaiting": None})
    broken = run.broken()
    if state == "succeeded" and broken:  # within max_failures, yet machines are left broken: not a success
        state = "succeeded_with_failures"
        reason = f"{reason}, but {_left_broken(len(broken))}: restore by hand from the snapshots"
        run = run.model_copy(update={"state": state, "reason": reason})
    elif state == "succeeded" and (why := _why_nothing_patched(run)):  # every wave finished, none patched
        state, reason = "nothing_patched", why
        run = run.model_copy(update={"state": state, "reason": reason})
    text = f"Run {run.run_id} {state}: {reason}. {_after_end(run, broken)}\nInstances: {count_states(run.records())}."
    if run.follow_ups and not run.may_follow_up:
        text += f" NOT COVERED: {plural(len(run.follow_ups), 'follow-up')} not started, nothing more is patched."
    text += _broken_lines(run, broken)
    if state == "succeeded":
        notice, run = _notify(run, "run_finished", text), _logged(run, now, text)
    elif state == "nothing_patched":  # nothing harmed, nothing protected: someone must look
        notice, run = _notify(run, "run_finished", text, "warning"), _logged(run, now, text, "warning")
    elif state == "succeeded_with_failures":  # error severity: the card mentions on-call
        notice, run = _notify(run, "run_finished", text, "error"), _logged(run, now, text, "error")
    else:
        notice, run = _notify(run, "run_halted", text, "error"), _logged(run, now, text, "error")
    outbox: list[Message] = [notice]
    if sweep := _sweep(run, now):
        outbox.append(sweep)
    if power_sweep := _power_sweep(run, now):
        outbox.append(power_sweep)
    if run.follow_up_of is not None:  # the run it follows up may start its next one
        ended = FollowUpFinished(
            id=f"{run.run_id}:finished",
            run_id=run.follow_up_of,
            follow_up_id=run.run_id,
            halted=state == "halted",
            at=now,
        )
        outbox.append(ended)
    follow_up = _next_follow_up(run, now)
    return Decision(follow_up.run, [*outbox, *follow_up.commands])


def _why_nothing_patched(run: Run) -> str:
    """Why a run whose every wave finished patched no machine, or "" when one was patched.

    Told apart by the records: a machine that lacked nothing is `patched` with an empty install
    list (the run succeeds); a first ring that selected no machine has no wave; one that patched
    nothing has only skipped, rolled back or not started machines, so it promoted no tested set
    and every later ring's machines were skipped untouched."""
    records = [r for w in run.waves for r in w.records.values()]
    if any(r.state == "patched" for r in records):
        return ""
    if not records and not run.excluded:
        return "the inventory is empty"
    if not records:
        reasons = sorted({r.reason for r in run.excluded})
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more reasons" if len(reasons) > 3 else "")
        return f"every one of the {plural(len(run.excluded), 'instance')} was excluded ({shown})"
    if run.cloud_scheduled is not None or run.follow_up_of is not None:  # every ring installs a fixed set
        return f"no machine was patched ({count_states(records)})"
    first = run.policy.rings[0].name
    later = list(dict.fromkeys(w.ring for w in run.waves if w.ring_position > 0))
    first_records = [r for w in run.waves if w.ring_position == 0 for r in w.records.values()]
    rings = ", ".join(later)
    if first_records:
        why = f"ring {first} patched nothing ({count_states(first_records)})"
        return f"{why}, so no tested set was promoted; rings {rings} were not touched" if later else why
    why = f"ring {first} selected no machine: check its select"
    return f"{why}; no tested set was promoted, so rings {rings} were not touched" if later else why


MAX_BROKEN_NAMED = 10  # in the run's last notice; more are counted ("and N more")


def _left_broken(count: int) -> str:
    return f"{plural(count, 'machine')} {'is' if count == 1 else 'are'} left broken (state failed)"


def _broken_lines(run: Run, broken: list[InstanceRecord]) -> str:
    """The machines a run left `failed`, one line each (name, id, reason, the snapshots to restore
    from), at most MAX_BROKEN_NAMED and then how many more; "" when there are none."""
    if not broken:
        return ""
    lines = ["\nLeft broken, to restore by hand from the snapshots:"]
    for record in broken[:MAX_BROKEN_NAMED]:
        snapshots = ", ".join(record.snapshot_ids) or "none taken"
        lines.append(f"- {record.instance.short_name} ({record.id}): {record.reason}; snapshots: {snapshots}")
    if len(broken) > MAX_BROKEN_NAMED:
        lines.append(f"- and {len(broken) - MAX_BROKEN_NAMED} more: see them {_listed(run)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- traffic pools and hooks


def _hooks(run: Run) -> Hooks:
    return run.policy.hooks_for(run.current.ring)


def _pool_view(run: Run, instance: Instance) -> Instance:
    """The instance as the traffic adapter sees it: its pools only with `traffic.drain`, its
    scaling group only with `scaling_groups: standby`."""
    policy = run.policy
    return dataclasses.replace(
        instance,
        traffic_pools=instance.traffic_pools if policy.traffic.drain else (),
        scaling_group=instance.scaling_group if policy.scaling_groups == "standby" else None,
    )


def _leaves_pools(run: Run, instance: Instance) -> bool:
    view = _pool_view(run, instance)
    return bool(view.traffic_pools) or view.scaling_group is not None


def _drain_targets(run: Run) -> list[InstanceRecord]:
    """The machines of the wave that leave their pools before the install (the same before and
    after the drain: it is decided before, and applied to exactly these)."""
    return [r for r in _pending(run.current) if r.snapshot_ids and _leaves_pools(run, r.instance)]


def _host_hook(
    run: Run, phase: Literal["before_install", "after_install"]
) -> tuple[HostHook | None, list[InstanceRecord]]:
    """The ring's host hook for `phase`, and the machines it runs on: those about to be installed
    (before_install) or just installed (after_install) whose OS the hook has a script for."""
    hook = getattr(_hooks(run), phase)
    if hook is None:
        return None, []
    pending = _pending(run.current)
    ready = (
        [r for r in pending if r.snapshot_ids] if phase == "before_install" else [r for r in pending if not r.failure]
    )
    return hook, [r for r in ready if hook.script_for(r.instance.os)]


def _rejoin_targets(wave: WaveState) -> list[InstanceRecord]:
    """Out of their pools because of the run, and fit to serve: checked healthy after the install,
    or skipped untouched after they left."""
    return [
        r
        for r in wave.records.values()
        if r.out_of_pools and ((r.state == "pending" and not r.failure) or r.state == "skipped")
    ]


def _redrain_targets(wave: WaveState) -> list[InstanceRecord]:
    """Failed after they rejoined their pools (the pools found them unhealthy): they leave again
    before their rollback, once."""
    return [
        r
        for r in _pending(wave)
        if r.failure and any(s.step == "rejoin" for s in r.steps) and not any(s.step == "redrain" for s in r.steps)
    ]


def _restored_targets(wave: WaveState) -> list[InstanceRecord]:
    """Rolled back, healthy again, and still out of their pools: they rejoin them."""
    return [
        r
        for r in wave.records.values()
        if r.state == "rolled_back" and r.out_of_pools and r.steps[-1].step == "recheck"
    ]


def _rejoin(run: Run, now: datetime, records: list[InstanceRecord], step: str) -> RejoinPools:
    traffic = run.policy.traffic
    return RejoinPools(
        id=_command_id(run, step),
        run_id=run.run_id,
        wave=run.current.index,
        targets=[_pool_view(run, r.instance) for r in records],
        registrations={r.id: r.pool_registrations for r in records if r.pool_registrations},
        issued_at=now,
        timeout=traffic.pool_health_timeout,
        pool_health=traffic.pool_health,
        standby=run.policy.scaling_groups == "standby",
    )


def _sweep(run: Run, now: datetime) -> RejoinPools | None:
    """At a run's end: every machine it took out of its pools and did not leave broken is put back
    if it is out (a crash between two steps could have left it so). None when it drained none."""
    records = [r for r in run.records() if r.state != "failed" and any(s.step == "drain" for s in r.steps)]
    if not records:
        return None
    return RejoinPools(
        id=f"{run.run_id}:rejoin-at-end",
        run_id=run.run_id,
        targets=[_pool_view(run, r.instance) for r in records],
        registrations={r.id: r.pool_registrations for r in records if r.pool_registrations},
        issued_at=now,
        at_run_end=True,
        standby=run.policy.scaling_groups == "standby",
    )


def _power_sweep(run: Run, now: datetime) -> ReturnMachines | None:
    """At a run's end: every machine the run started (found stopped or deallocated) that is not
    known to be back in that state is returned to it (a halt, or a crash between two steps, could
    have left it running; a start whose result never came counts as started). Returning one already
    there changes nothing. A machine the run never started is not its to stop. None when none."""
    records = [r for r in run.records() if r.started]
    if not records:
        return None
    return ReturnMachines(
        id=f"{run.run_id}:return-at-end", run_id=run.run_id, targets=[r.instance for r in records], at_run_end=True
    )


def _left_out(record: InstanceRecord) -> str:
    """What a machine left broken says about its pools: it stays out of them."""
    if not record.out_of_pools:
        return ""
    pools = ", ".join(record.instance.traffic_pools) or record.instance.scaling_group or "its pools"
    return f"; left out of its pools ({pools}) until it is restored"


def _hook_answer(event: WaveHookCalled) -> Outcome:
    return event.results[0] if event.results else Outcome(id="hook", ok=False, detail="no answer reported")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------- helpers


# Which pending instances each step's command targeted (the same rules build the commands).
_TARGETED: dict[StepName, Callable[[InstanceRecord], bool]] = {  # the traffic and hook steps name theirs
    "lease": lambda r: True,
    "probe": lambda r: True,
    "snapshot": lambda r: True,
    "install": lambda r: bool(r.snapshot_ids),
    "health": lambda r: not r.failure,
    "rollback": lambda r: bool(r.failure),
    "recheck": lambda r: bool(r.failure),
}


def _update(
    wave: WaveState,
    results: dict[str, Outcome],
    step: StepName,
    apply: Callable[[InstanceRecord, Outcome], dict[str, object]],
    targets: Collection[str] | None = None,
) -> WaveState:
    """Apply each targeted instance's outcome; a target missing from the results counts as
    failed ("no result reported"), so nothing is lost silently. The targets are `targets` when
    given (in any state), else the pending instances the step's rule in `_TARGETED` selects."""
    targeted = _TARGETED[step] if targets is None else (lambda r: r.id in targets)
    records = dict(wave.records)
    for key, record in wave.records.items():
        if (targets is None and record.state != "pending") or not targeted(record):
            continue
        outcome = results.get(key) or Outcome(id=key, ok=False, detail="no result reported")
        at = outcome.at or wave.started_at
        assert at is not None
        update = apply(record, outcome)
        if outcome.ok and step == "lease":  # bookkeeping, not a step done to the machine
            records[key] = record.model_copy(update=update) if update else record
            continue
        entry = Step(step=step, at=at, ok=outcome.ok, detail=outcome.detail)
        records[key] = record.model_copy(update={**update, "steps": [*record.steps, entry]})
    return wave.model_copy(update={"records": records})


def _pending(wave: WaveState) -> list[InstanceRecord]:
    return [r for r in wave.records.values() if r.state == "pending"]


def _final(state: FinalInstanceState, reason: str) -> dict[str, object]:
    return {"state": state, "reason": reason}


def _with_records(run: Run, ids: set[str], update: dict[str, object]) -> Run:
    """`run` with `update` applied to the records of these instances, in whichever wave."""
    waves = tuple(
        w.model_copy(
            update={"records": {k: v.model_copy(update=update) if k in ids else v for k, v in w.records.items()}}
        )
        for w in run.waves
    )
    return run.model_copy(update={"waves": waves})


def _with_wave(run: Run, wave: WaveState) -> Run:
    waves = list(run.waves)
    waves[run.cursor] = wave
    return run.model_copy(update={"waves": tuple(waves)})


def _await(run: Run, state: RunState, command: Command) -> Decision:
    return Decision(_awaiting(run, state, command.id), [command])


def _awaiting(run: Run, state: RunState, command_id: str | None) -> Run:
    return run.model_copy(update={"state": state, "awaiting": command_id})


def _command_id(run: Run, step: str) -> str:
    return f"{run.run_id}:w{run.current.index}:{step}"


def _logged(run: Run, now: datetime, text: str, level: Severity = "info") -> Run:
    entry = LogEntry(at=now, text=text, level=level)
    return run.model_copy(update={"log": (*run.log, entry)})


def _notify(run: Run, topic: Topic, text: str, severity: Severity = "info", suffix: str = "") -> Notify:
    key = f"{topic}:{suffix}" if suffix else topic
    return Notify(id=f"{run.run_id}:notify:{key}", run_id=run.run_id, topic=topic, text=text, severity=severity)


def _failure_notices(run: Run, wave: WaveState) -> list[Command]:
    failed = [r for r in wave.records.values() if r.failure]
    notices: list[Command] = []
    for record in failed[:MAX_FAILURE_NOTICES]:
        text = _failure_text(run, wave, record)
        notices.append(_notify(run, "instance_failed", text, _failure_severity([record]), record.id))
    if len(failed) > MAX_FAILURE_NOTICES:
        rest = failed[MAX_FAILURE_NOTICES:]
        text = (
            f"Wave {wave.index}: {len(rest)} more machines failed ({count_states(rest)}), not told one by one: "
            f"see each {_listed(run)}."
        )
        healthy = all(r.state == "rolled_back" for r in rest)
        if any(r.state == "failed" for r in rest):
            text += " Restore the failed ones by hand from their snapshots."
        else:
            text += " Nothing to do for them." if healthy else " Fix the cause for the skipped ones."
        notices.append(_notify(run, "instance_failed", text, _failure_severity(rest), f"w{wave.index}:more"))
    return notices


def _failure_severity(records: list[InstanceRecord]) -> Severity:
    """How loud the notice of these failed machines is: an error (it pages) only when one is left
    broken; a warning when one was skipped untouched (its snapshot failed: nothing was changed, the
    cause is fixed in working hours); info when each was rolled back healthy."""
    if any(r.state not in ("rolled_back", "skipped") for r in records):
        return "error"
    return "warning" if any(r.state == "skipped" for r in records) else "info"


def _failure_text(run: Run, wave: WaveState, record: InstanceRecord) -> str:
    """One failed machine's notice: what happened to it, then what to do (nothing, for a machine
    rolled back healthy)."""
    name = f"{record.instance.short_name} ({record.id}) in wave {wave.index}"
    snapshots = ", ".join(record.snapshot_ids)
    if record.state == "rolled_back":
        source = f" from {snapshots}" if snapshots else ""
        return (
            f"{name} was rolled back{source} and is healthy again, unpatched ({record.failure}). "
            "Nothing to do: it runs as it did before the run."
        )
    if record.state == "failed":
        restore = f"from its snapshots {snapshots}" if snapshots else "from a backup (no snapshot was taken)"
        return f"{name} is left broken (failed): {record.reason}. Restore it by hand {restore}."
    return (
        f"{name} was not patched and is untouched ({record.state.replace('_', ' ')}): {record.reason}. "
        "Fix the cause; the run's last notice says how to patch it then."
    )


def _after_start(run: Run) -> str:
    """The next step of a run that just started (none, unless its first ring waits for approval)."""
    if not run.waves:
        return "Nothing to do here: no ring selected a machine, the run's last notice says more."
    ring = run.policy.rings[run.current.ring_position]
    if run.cloud_scheduled is None and ring.approval == "required":
        return f"Ring {ring.name} waits for your approval before any machine is touched (the approval notice says how)."
    return f"Nothing to do: you are told when a ring finishes or someone must act ({_cli(run, 'status')})."


def _after_end(run: Run, broken: list[InstanceRecord]) -> str:
    """What to do once the run has ended: restore the machines left broken, retry what was not
    patched (or plan again when nothing could be), or nothing."""
    first = f"Restore {'it' if len(broken) == 1 else 'each'} from the snapshots listed below; then, " if broken else ""
    unpatched = [r for r in run.records() if r.state in RETRYABLE_STATES]
    retry = _cli(run, "retry")
    if run.state == "nothing_patched" and why_not_retryable(run):
        plan = _command("plan", *NEW_RUN[1:])
        return f"{first}Nothing was changed: check what each ring selects with {plan} before the next run."
    if run.state == "incomplete":
        return f"{first}Nothing more to do: the machines not started are patched by the next run."
    if run.state == "halted":
        then = retry if not why_not_retryable(run) else f"start a new run ({_new_run(run)})"
        restore = first[:1].lower() + first[1:]
        status = _cli(run, "status")
        when = "once the cause is fixed"
        if run.cursor < len(run.waves) and run.reason.startswith(f"ring {run.current.ring} rejected by "):
            when = "if the ring is to be patched after all"
        return f"Nothing more is patched; {restore}see {status}, then {then} {when}."
    if unpatched and not why_not_retryable(run):
        step = f"once the cause is fixed, {retry} patches the {plural(len(unpatched), 'machine')} left unpatched."
        return f"{first}{step}" if first else step[:1].upper() + step[1:]
    return f"{first.removesuffix('; then, ')}." if first else "Nothing to do."


NEW_RUN = ("run", "--policy", "FILE", "--inventory", "FILE")


def _cli(run: Run, verb: Literal["status", "retry"]) -> str:
    """The command that shows (`status`) or retries (`retry`) `run` where it runs: locally
    `patchpilot status RUN`; on a cloud `patchpilot retry --cloud aws RUN`, and, as `status` reads
    only a state directory, the run table's listing of the run's policy (`patchpilot runs --cloud
    aws --policy NAME`; its report is linked from the run's last notice)."""
    if run.runtime == "local":
        return _command(verb, run.run_id)
    if verb == "retry":
        return _command("retry", "--cloud", run.runtime, run.run_id)
    return _command("runs", "--cloud", run.runtime, "--policy", run.policy.name)


def _listed(run: Run) -> str:
    """Where the machines of a run are listed one by one, after "see each"/"more"."""
    if run.runtime == "local":
        return f"with {_command('status', run.run_id)}"
    return "in the run's report (its last notice links it)"


def _new_run(run: Run) -> str:
    """How a new run of the policy starts: `patchpilot run` locally, the policy's timer on a cloud."""
    if run.runtime == "local":
        return _command(*NEW_RUN)
    return "the timer starts one at the policy's next window"


def _command(*words: str) -> str:
    """A `patchpilot` command to copy, shell-quoted, in backticks (without `--state-dir`: the
    engine does not know where the state is kept; `patchpilot status` adds it)."""
    return f"`{shlex.join(['patchpilot', *words])}`"


def _promoted(records: Iterable[InstanceRecord]) -> dict[str, list[str]]:
    """Per OS, the union of what the patched instances of the first ring installed."""
    promoted: dict[str, set[str]] = {}
    for record in records:
        if record.state == "patched":
            promoted.setdefault(record.instance.os, set()).update(record.installed)
    return {os_name: sorted(items) for os_name, items in sorted(promoted.items())}


def _time_left(run: Run, now: datetime) -> timedelta | None:
    """What is left of the window, for the install's maximum duration; None once it has ended
    (a wave that started in time finishes)."""
    if run.window_end is None or run.window_end <= now:
        return None
    return run.window_end - now


def _pinned(run: Run, record: InstanceRecord) -> list[str] | None:
    if run.current.ring_position == 0 and run.follow_up_of is None:
        return None
    return list((run.promoted or {}).get(record.instance.os, []))
