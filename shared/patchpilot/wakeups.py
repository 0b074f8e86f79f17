"""Wake-ups: a cloud event says an operation ended (an SSM command, an EBS snapshot set, an ARM
write or action on a VM or a snapshot); the runs whose awaited fleet command it concerns get a
`LookNow`, so that the step's end is noticed within seconds, not at the next poll (docs/architecture.md,
"Wake-ups"). Polling stays as the fallback, at a longer interval.

Pure: `wake_ups(signal, runs)` maps one event, already read into a `Signal` by the cloud's
adapter (adapters/aws/wake_events.py, adapters/azure/wake_events.py), to the wake-ups of the
active runs it concerns, each with when to deliver it. A wake-up is a hint, never authority: the
worker polls only the command the stored run awaits (service.py), so a wake-up too many costs a
poll and nothing else, and one too few costs the wait for the fallback poll.

Which runs an event concerns, cheaply and without reading the cloud:

- an SSM command's end (`run_command`): the runs awaiting an install, a health check or a host
  hook (the commands that send SSM documents) on one of the event's instances;
- an EBS multi-volume snapshot set's end (`snapshots`): the event names volumes and snapshots,
  not the instance, so every run awaiting a TakeSnapshots with a machine in the event's account
  and region;
- an ARM write or action on a VM (`machine`): the run awaiting, on that VM alone, the command
  whose end on it that operation is (`ENDED_BY`: installPatches ends an install, a Run Command's
  write a health check or a host hook, a start or a deallocation the power steps);
- an ARM write of a snapshot (`snapshot`): every run awaiting a TakeSnapshots of one machine in
  the snapshot's subscription.

Events come in bursts (one EBS event per instance, one SSM event per 50 instances): the wake-ups
of one command within one `WINDOW` share an id and are delivered at the window's end, after every
event of the window, and the worker polls once per id (`Service.claims`). So a burst costs one
poll per window, and the last machine's end is noticed within a window and a delivery.

Azure's events are per operation: one per VM (an install, a health script's Run Command), one per
disk snapshot. The ends of a wave's machines come minutes apart (scripts and installs take what
they take), so a wake-up per window of them would poll the step once per window, and each poll of
a health check or a host hook reads every machine's Run Command again; an install's or a snapshot
step's reads are per resource group and per 400 machines, but many windows of them still add up.
No window length helps: a window short enough to notice the last end sooner than the step's own
poll does holds earlier ends too, and each such window's poll is one the step would not have made;
knowing which end is the last would need a count of the machines heard per command, kept durably
across the waker's instances and their duplicate events.

So the rule is the one that costs no poll: an Azure event wakes a step only when it can mark the
step's end, that is when the step has one machine and the event is the end of the operation the
step awaits on it (a canary wave, a recheck after a rollback, a single-machine run). A rollback is
not woken: its one machine sees a deallocation, a swap and a start, and the deallocation's end is
not the step's. The other steps keep their own polls, as without wake-ups (measured: bench
--wake --spread 5.644 ARM requests per VM against 5.648 without wake-ups; 15.322 against 7.948
before the rule; the figures are in docs/azure-deploy.md, "Wake-ups"). AWS is not concerned: an
SSM event ends a command on up to 50 instances and its polls are bulk reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, NamedTuple

from patchpilot.engine.fleet_commands import (
    AwaitedFleetCommand,
    CheckHealth,
    InstallPatches,
    ProbeAgents,
    ReturnMachines,
    RollBack,
    RunHostHook,
    StartMachines,
    TakeSnapshots,
)
from patchpilot.engine.run import Run
from patchpilot.engine.wakeup_messages import LookNow
from patchpilot.inventory import Instance

WINDOW = timedelta(seconds=15)  # the wake-ups of one command within this share an id and one poll

# The ARM operations (Event Grid's `operationName`, lower-case) whose end on a machine is the end of
# a command of that type on it: the only `machine` signals that wake it (see the module's docstring).
_VM = "microsoft.compute/virtualmachines/"
ENDED_BY: Final[dict[type[AwaitedFleetCommand], frozenset[str]]] = {
    InstallPatches: frozenset({_VM + "installpatches/action"}),
    CheckHealth: frozenset({_VM + "runcommands/write"}),
    RunHostHook: frozenset({_VM + "runcommands/write"}),
    StartMachines: frozenset({_VM + "start/action"}),
    ReturnMachines: frozenset({_VM + "deallocate/action", _VM + "poweroff/action"}),
}

SignalKind = Literal["run_command", "snapshots", "machine", "snapshot"]


class Signal(NamedTuple):
    """What one cloud event says ended: `kind`, on `machines` (instance ids or VM resource ids,
    compared without case; empty when the event does not name them), in `account` (AWS account,
    Azure subscription) and `region` where known; `at` is the event's time, `source` says what it
    was, for the log; `operation` the ARM operation that ended (lower-case), for `machine`."""

    kind: SignalKind
    at: datetime
    source: str
    machines: frozenset[str] = frozenset()
    account: str | None = None
    region: str | None = None
    operation: str = ""


class WakeUp(NamedTuple):
    """A `LookNow` and when to deliver it (the end of its window)."""

    look: LookNow
    at: datetime


def wake_ups(
    signal: Signal, runs: Iterable[Run], window: timedelta = WINDOW, home_account: str | None = None
) -> list[WakeUp]:
    """The wake-ups `signal` asks for among `runs` (the active ones; others are skipped): one
    per run whose awaited fleet command it concerns, delivered at the end of the signal's window.
    `home_account`: the account of the machines that name none (the deployment's own), when known."""
    end = window_end(signal.at, window)
    stamp = end.strftime("%Y%m%dT%H%M%S")
    found: list[WakeUp] = []
    for run in runs:
        command = run.awaited_command
        if run.finished or command is None or run.awaiting != command.id or not concerns(signal, command, home_account):
            continue
        look = LookNow(id=f"{command.id}:look:{stamp}", run_id=run.run_id, command_id=command.id, reason=signal.source)
        found.append(WakeUp(look, end))
    return found


def concerns(signal: Signal, command: AwaitedFleetCommand, home_account: str | None = None) -> bool:
    """Whether the operation `signal` says ended may be part of `command` (AWS), or may end it
    (Azure's `machine` and `snapshot`): see the module's docstring. A machine that names no
    account is in `home_account`, when given."""
    machines = targets(command)
    match signal.kind:
        case "run_command":
            return isinstance(command, InstallPatches | CheckHealth | RunHostHook) and _names_one(signal, machines)
        case "snapshots":
            return isinstance(command, TakeSnapshots) and any(_placed(signal, i, home_account) for i in machines)
        case "machine":
            ends = ENDED_BY.get(type(command), frozenset())
            return signal.operation in ends and one_machine(command) and _names_one(signal, machines)
        case "snapshot":
            return (
                isinstance(command, TakeSnapshots)
                and one_machine(command)
                and any(_placed(signal, i, home_account) for i in machines)
            )


def one_machine(command: AwaitedFleetCommand) -> bool:
    """Whether the command acts on one machine (ids compared without case): the only commands that
    Azure's per-operation signals wake (see the module's docstring)."""
    return len({i.id.lower() for i in targets(command)}) == 1


def targets(command: AwaitedFleetCommand) -> list[Instance]:
    """The machines a fleet command acts on."""
    match command:
        case InstallPatches() | RollBack():
            return [t.instance for t in command.targets]
        case ProbeAgents() | TakeSnapshots() | CheckHealth() | RunHostHook() | StartMachines() | ReturnMachines():
            return list(command.targets)


def event_time(value: object, now: datetime) -> datetime:
    """An event's ISO 8601 time in UTC (EventBridge's `time`, Event Grid's `eventTime` with its seven
    decimals, which `fromisoformat` takes from Python 3.11 on); `now` when it has none readable."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            pass
    return now


def window_end(at: datetime, window: timedelta = WINDOW) -> datetime:
    """The end of the window `at` falls in (windows counted from the epoch): every event of one
    window wakes the same command with the same id, at the same moment, after all of them."""
    step = int(window.total_seconds())
    seconds = int(at.astimezone(UTC).timestamp())
    return datetime.fromtimestamp((seconds // step + 1) * step, UTC)


def _names_one(signal: Signal, machines: Sequence[Instance]) -> bool:
    return any(i.id.lower() in signal.machines for i in machines)


def _placed(signal: Signal, instance: Instance, home_account: str | None) -> bool:
    """Whether the machine is in the signal's account and region, as far as both say (a machine
    that names no account is in `home_account`, when known)."""
    account = instance.account or home_account
    if signal.account and account and signal.account.lower() != account.lower():
        return False
    return not (signal.region and instance.region and signal.region.lower() != instance.region.lower())
