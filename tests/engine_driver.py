"""Drive the pure engine by hand: answer every command a decision asks for until the run ends.

`drive_to_end(start_run(...), fleet_answer)` plays the fleet (via `fleet_answer`), the timer
(each Wait fires at its `until`), the leases (every machine is free) and, where a ring needs it,
the approver. Time is virtual: it
starts at the run's `created_at` and each fleet command takes `step`; outcomes that carry no
time of their own are stamped with the moment their command finished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

from patchpilot.engine.decide import Decision, decide
from patchpilot.engine.messages import (
    AgentsProbed,
    ApprovalGranted,
    CallWaveHook,
    CheckHealth,
    Command,
    Event,
    FleetCommand,
    HealthChecked,
    HostHookRan,
    InstallPatches,
    InstancesLeased,
    LeaseInstances,
    LeavePools,
    MachinesReturned,
    MachinesStarted,
    Notify,
    Outcome,
    PatchesInstalled,
    PoolsLeft,
    PoolsRejoined,
    ProbeAgents,
    RejoinPools,
    ReleaseInstances,
    Result,
    ReturnMachines,
    RollBack,
    RolledBack,
    RunHostHook,
    SnapshotsTaken,
    StartMachines,
    TakeSnapshots,
    TimerFired,
    TrafficCommand,
    Wait,
    WaveHookCalled,
)
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance

AnsweredCommand = FleetCommand | TrafficCommand | CallWaveHook
FleetAnswer = Callable[[AnsweredCommand], list[Outcome]]
# What `answer_all_ok` installs where a command does not pin a set, per OS.
DEFAULT_PATCHES: dict[str, list[str]] = {
    "linux": ["openssl-3.0.13-1", "kernel-6.1.90-1"],
    "windows": ["KB5036893"],
}

RESULTS: dict[type, type[Result]] = {
    ProbeAgents: AgentsProbed,
    TakeSnapshots: SnapshotsTaken,
    InstallPatches: PatchesInstalled,
    CheckHealth: HealthChecked,
    RollBack: RolledBack,
    RunHostHook: HostHookRan,
    LeavePools: PoolsLeft,
    RejoinPools: PoolsRejoined,  # the sweep of a finished run (`at_run_end`) is not driven here
    CallWaveHook: WaveHookCalled,
    StartMachines: MachinesStarted,
    ReturnMachines: MachinesReturned,  # the sweep of a finished run (`at_run_end`) is not driven here
}


class DriverError(AssertionError):
    """The engine ignored an event the driver sent, or the run never ended."""


def drive_to_end(
    decision: Decision,
    fleet_answer: FleetAnswer,
    *,
    step: timedelta = timedelta(minutes=1),
    approve: bool = True,
    max_events: int = 100_000,
    start: datetime | None = None,
    leftover: list[Command] | None = None,
) -> Run:
    """Feed `decide` the event each command asks for, in the order the commands were issued,
    until the run is finished (or waits for an approval and `approve` is false).

    Fleet commands are answered with `fleet_answer(command)`; Wait with a TimerFired at its
    `until` (a Wait the run no longer awaits is dropped, as the worker drops it); Notify is
    ignored; a run awaiting approval gets an ApprovalGranted by "test" before its reminder fires.
    Every event must be applied: an ignored event raises DriverError, so a wrong answer shows.
    `leftover`, when given, receives the commands still queued once the run has finished (a
    finished run's pool sweep, its last notices).
    """
    run = decision.run
    now = start or run.created_at  # `start`: when the decision was taken, for a run driven on from a later event
    queue: deque[Command] = deque(decision.commands)
    events = 0
    while not run.finished:
        if events >= max_events:
            raise DriverError(f"run {run.run_id} did not finish after {max_events} events ({run.state})")
        # A gate is approved once nothing but notices and its reminder timer is left to deliver.
        gate = run.state == "awaiting_approval" and all(isinstance(c, Notify | ReleaseInstances | Wait) for c in queue)
        if gate and approve:
            event: Event = ApprovalGranted(id=f"{run.run_id}:approval:{events}", run_id=run.run_id, by="test")
        elif not queue:
            return run  # waiting for something the driver does not give
        else:
            command = queue.popleft()
            if isinstance(command, Notify | ReleaseInstances):
                continue
            if isinstance(command, Wait) and command.id != run.awaiting:
                continue  # a reminder of a gate decided since: the worker drops it (engine/issued.py)
            if isinstance(command, LeaseInstances):  # no other run holds a machine here
                leased = [Outcome(id=i, ok=True, at=now) for i in command.targets]
                event = InstancesLeased(id=command.result_id, run_id=run.run_id, command_id=command.id, results=leased)
            elif isinstance(command, Wait):
                now = max(now, command.until)
                event = TimerFired(id=command.result_id, run_id=run.run_id, command_id=command.id)
            else:
                now += step
                outcomes = [o if o.at is not None else o.model_copy(update={"at": now}) for o in fleet_answer(command)]
                result_type = RESULTS[type(command)]
                event = result_type(id=command.result_id, run_id=run.run_id, command_id=command.id, results=outcomes)
        decision = decide(run, event, now)
        if decision.ignored:
            raise DriverError(f"the engine ignored {event.type} {event.id}: {decision.ignored}")
        run = decision.run
        queue.extend(decision.commands)
        events += 1
    if leftover is not None:
        leftover.extend(queue)
    return run


def answer_all_ok(command: AnsweredCommand, *, patches: dict[str, list[str]] | None = None) -> list[Outcome]:
    """A healthy fleet: every target answers ok; snapshots and installs report plausible items."""
    patches = DEFAULT_PATCHES if patches is None else patches
    if isinstance(command, CallWaveHook):
        return [Outcome(id=command.phase, ok=True, detail="HTTP 200")]
    outcomes = []
    for instance, only in _targets(command):
        items: list[str] = []
        if isinstance(command, TakeSnapshots):
            items = [f"snap-{instance.id.rsplit('/', 1)[-1]}-{command.wave}"]
        elif isinstance(command, InstallPatches):
            items = list(only) if only is not None else list(patches.get(instance.os, []))
        elif isinstance(command, LeavePools):
            items = [f"{pool}|{instance.id}" for pool in instance.traffic_pools]
        outcomes.append(Outcome(id=instance.id, ok=True, items=items))
    return outcomes


def _targets(command: FleetCommand | TrafficCommand) -> list[tuple[Instance, list[str] | None]]:
    if isinstance(command, InstallPatches):
        return [(t.instance, t.only) for t in command.targets]
    if isinstance(command, RollBack):
        return [(t.instance, None) for t in command.targets]
    return [(i, None) for i in command.targets]
