"""Azure Resource Manager events become wake-ups: the documented Event Grid event
(tests/events/azure-published/, as Microsoft documents it) and the same shape on a VM, a VM's Run
Command and a snapshot, read by the Azure reader and mapped to the runs they concern; the worker
app's `wake_up` function indexed with its Event Grid trigger (tests/test_azure_functions.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clocks import ManualClock
from test_engine import fleet, policy

from patchpilot.adapters.azure.wake_events import read_event
from patchpilot.app.waker import Waker
from patchpilot.engine.decide import start_run
from patchpilot.engine.messages import (
    AwaitedFleetCommand,
    CheckHealth,
    InstallPatches,
    InstallTarget,
    LookNow,
    Message,
    ProbeAgents,
    RestoreTarget,
    ReturnMachines,
    RollBack,
    RunHostHook,
    StartMachines,
    TakeSnapshots,
)
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance
from patchpilot.planning import plan
from patchpilot.policy.model import HostHook
from patchpilot.wakeups import Signal, concerns

PUBLISHED = Path(__file__).resolve().parent / "events" / "azure-published"
NOW = datetime(2026, 12, 12, 3, 0, 7, tzinfo=UTC)
SUB = "0b1f6471-1bf0-4dda-aec3-111122223333"
VM = f"/subscriptions/{SUB}/resourceGroups/web-rg/providers/Microsoft.Compute/virtualMachines/web-01"
SNAPSHOT = f"/subscriptions/{SUB}/resourceGroups/web-rg/providers/Microsoft.Compute/snapshots/pp-web-01-os"


def published() -> dict[str, Any]:
    (event,) = json.loads((PUBLISHED / "resource_action_success.json").read_text())
    return dict(event)


def on(subject: str, operation: str, event_type: str = "Microsoft.Resources.ResourceActionSuccess") -> dict[str, Any]:
    """The documented event, about `subject`."""
    event = copy.deepcopy(published())
    event["subject"], event["eventType"] = subject, event_type
    event["data"].update({"resourceUri": subject, "operationName": operation, "subscriptionId": SUB})
    return event


def machine() -> Instance:
    return Instance(id=VM.lower(), cloud="azure", region="japaneast", os="linux", account=SUB)


def test_the_documented_event_on_another_kind_of_resource_wakes_nothing() -> None:
    assert read_event(published(), NOW) is None  # an Event Hubs namespace's rule: not a VM or snapshot


def test_the_end_of_an_install_on_a_vm_reads_as_that_machine() -> None:
    signal = read_event(on(VM, "Microsoft.Compute/virtualMachines/installPatches/action"), NOW)
    assert signal is not None and signal.kind == "machine"
    assert signal.machines == frozenset({VM.lower()}) and signal.account == SUB
    assert signal.at == datetime(2018, 10, 8, 22, 46, 22, 602255, tzinfo=UTC)
    assert "installPatches" in signal.source


def test_the_end_of_a_run_command_reads_as_its_vm() -> None:
    run_command = f"{VM}/runCommands/patchpilot-health"
    signal = read_event(on(run_command, "Microsoft.Compute/virtualMachines/runCommands/write", ""), NOW)
    assert signal is None  # no event type: not an ended operation
    signal = read_event(on(run_command, "Microsoft.Compute/virtualMachines/runCommands/write"), NOW)
    assert signal is not None and signal.machines == frozenset({VM.lower()})


@pytest.mark.parametrize(
    "event_type",
    ["Microsoft.Resources.ResourceWriteSuccess", "Microsoft.Resources.ResourceWriteFailure"],
)
def test_a_snapshot_write_reads_as_a_snapshot_end_in_its_subscription(event_type: str) -> None:
    signal = read_event(on(SNAPSHOT, "Microsoft.Compute/snapshots/write", event_type), NOW)
    assert signal is not None and signal.kind == "snapshot" and signal.account == SUB


@pytest.mark.parametrize(
    "event_type",
    ["Microsoft.Resources.ResourceWriteSuccess", "Microsoft.Resources.ResourceWriteFailure"],
)
def test_a_write_of_the_vm_itself_wakes_nothing(event_type: str) -> None:
    """PatchPilot's own marks (an install's, a health check's) are tag writes on the VM: each would
    wake the step that wrote it, seconds later, to a poll that finds it under way. A VM write ends
    no awaited step; its Run Commands' writes and its actions still wake."""
    assert read_event(on(VM, "Microsoft.Compute/virtualMachines/write", event_type), NOW) is None
    assert read_event(on(VM + "/", "Microsoft.Compute/virtualMachines/write", event_type), NOW) is None
    run_command = read_event(
        on(f"{VM}/runCommands/x", "Microsoft.Compute/virtualMachines/runCommands/write", event_type), NOW
    )
    assert run_command is not None and run_command.machines == frozenset({VM.lower()})
    started = read_event(on(VM, "Microsoft.Compute/virtualMachines/start/action"), NOW)
    assert started is not None and started.kind == "machine"


def test_deletes_and_cancels_wake_nothing() -> None:
    assert read_event(on(VM, "x", "Microsoft.Resources.ResourceDeleteSuccess"), NOW) is None
    assert read_event(on(VM, "x", "Microsoft.Resources.ResourceActionCancel"), NOW) is None


# ---------------------------------------------------------------- which steps a signal wakes

INSTALL_ENDED = "Microsoft.Compute/virtualMachines/installPatches/action"
SCRIPT_ENDED = "Microsoft.Compute/virtualMachines/runCommands/write"
STARTED = "Microsoft.Compute/virtualMachines/start/action"
DEALLOCATED = "Microsoft.Compute/virtualMachines/deallocate/action"
WRITE_SUCCESS = "Microsoft.Resources.ResourceWriteSuccess"
ACTION_SUCCESS = "Microsoft.Resources.ResourceActionSuccess"


def vm(n: int, sub: str = SUB) -> Instance:
    resource = f"/subscriptions/{sub}/resourceGroups/web-rg/providers/Microsoft.Compute/virtualMachines/web-{n:02d}"
    return Instance(id=resource.lower(), cloud="azure", region="japaneast", os="linux", account=sub)


def ended(instance: Instance, operation: str, at: datetime = NOW) -> Signal:
    """What the reader makes of the event for the end of `operation` on the machine (its Run Command
    for a Run Command's write)."""
    subject = instance.id + ("/runCommands/patchpilot-health" if "runCommands" in operation else "")
    event = on(subject, operation, WRITE_SUCCESS if operation.endswith("/write") else ACTION_SUCCESS)
    event["eventTime"] = at.isoformat().replace("+00:00", "Z")
    signal = read_event(event, NOW)
    assert signal is not None
    return signal


def commands(*machines: Instance) -> dict[str, AwaitedFleetCommand]:
    """A command of each kind on these machines."""
    hook = HostHook(linux="true")
    snapshot_ids = ["snap"]
    return {
        "install": InstallPatches(
            id="r:w1:install", run_id="r", targets=[InstallTarget(instance=i) for i in machines], classifications=[]
        ),
        "health": CheckHealth(id="r:w1:health", run_id="r", targets=list(machines)),
        "hook": RunHostHook(
            id="r:w1:hook", run_id="r", targets=list(machines), phase="before_install", hook=hook, issued_at=NOW
        ),
        "start": StartMachines(id="r:w1:start", run_id="r", targets=list(machines)),
        "return": ReturnMachines(id="r:w1:return", run_id="r", targets=list(machines)),
        "snapshot": TakeSnapshots(id="r:w1:snapshot", run_id="r", targets=list(machines)),
        "rollback": RollBack(
            id="r:w1:rollback",
            run_id="r",
            targets=[RestoreTarget(instance=i, snapshot_ids=snapshot_ids) for i in machines],
        ),
        "probe": ProbeAgents(id="r:w1:probe", run_id="r", targets=list(machines)),
    }


def test_the_reader_keeps_the_operation_that_ended_without_case() -> None:
    signal = read_event(on(VM, INSTALL_ENDED), NOW)
    assert signal is not None and signal.operation == INSTALL_ENDED.lower()


@pytest.mark.parametrize(
    ("operation", "woken"),
    [
        (INSTALL_ENDED, {"install"}),
        (SCRIPT_ENDED, {"health", "hook"}),
        (STARTED, {"start"}),
        (DEALLOCATED, {"return"}),
        ("Microsoft.Compute/virtualMachines/powerOff/action", {"return"}),
        ("Microsoft.Compute/virtualMachines/restart/action", set()),
    ],
)
def test_a_vm_signal_wakes_a_step_on_that_one_vm_only_when_its_operation_ends_that_step(
    operation: str, woken: set[str]
) -> None:
    """The end of an install wakes the install, a Run Command's end a health check or a host hook, a
    start the start: never the step after it (the install's end reaching the health check that
    follows it, a rollback's start the recheck). A rollback (disks, deallocation, swap, start) and
    an agent probe (no operation) are never woken: no one event marks their end."""
    signal = ended(vm(1), operation)
    assert {name for name, command in commands(vm(1)).items() if concerns(signal, command)} == woken
    assert not any(concerns(ended(vm(2), operation), command) for command in commands(vm(1)).values())


@pytest.mark.parametrize("operation", [INSTALL_ENDED, SCRIPT_ENDED, STARTED, DEALLOCATED])
def test_a_vm_signal_never_wakes_a_step_on_several_machines(operation: str) -> None:
    """One machine's end is not the step's: a wake-up per machine, or per window of their ends,
    polls a step that reads every machine again (docs/azure-deploy.md, "Wake-ups")."""
    signal = ended(vm(1), operation)
    assert not any(concerns(signal, command) for command in commands(vm(1), vm(2)).values())
    # The same machine twice (ids compared without case) is one machine.
    upper = dataclasses.replace(vm(1), id=vm(1).id.upper())
    alone = {name for name, command in commands(vm(1)).items() if concerns(signal, command)}
    assert alone and {name for name, command in commands(vm(1), upper).items() if concerns(signal, command)} == alone


def test_a_snapshot_signal_wakes_only_a_snapshot_step_of_one_machine_in_its_subscription() -> None:
    signal = read_event(on(SNAPSHOT, "Microsoft.Compute/snapshots/write", WRITE_SUCCESS), NOW)
    assert signal is not None
    assert {name for name, command in commands(vm(1)).items() if concerns(signal, command)} == {"snapshot"}
    assert not concerns(signal, commands(vm(1), vm(2))["snapshot"])
    assert not concerns(signal, commands(vm(1, sub="other"))["snapshot"])


# ---------------------------------------------------------------- a wave's spread-out ends


class Published:
    """The step queue, as the waker sees it: what it publishes, and when for."""

    def __init__(self) -> None:
        self.sent: list[tuple[LookNow, datetime | None]] = []

    def publish(self, messages: Sequence[Message], at: datetime | None = None) -> None:
        self.sent += [(m, at) for m in messages if isinstance(m, LookNow)]


class Awaiting:
    """One run under way, awaiting `command`."""

    def __init__(self, command: AwaitedFleetCommand) -> None:
        pol = policy()
        started = start_run("r", pol, plan(pol, fleet()), NOW).run
        self.run = started.model_copy(update={"awaiting": command.id, "awaited_command": command})

    def active_run_ids(self) -> list[str]:
        return ["r"]

    def load(self, run_id: str) -> Run:
        return self.run


def health_scripts_ending(machines: list[Instance], over: timedelta) -> list[LookNow]:
    """The wake-ups the waker publishes while the health scripts of a health check on `machines`
    end one after the other over `over` (each Run Command's end an event, as the topic sends it)."""
    queue, clock = Published(), ManualClock(NOW)
    runs = Awaiting(commands(*machines)["health"])
    waker = Waker(lambda: runs, lambda: queue, clock)  # type: ignore[arg-type,return-value]
    step = over / max(1, len(machines) - 1)
    for n, machine in enumerate(machines):
        clock.set(NOW + n * step + timedelta(seconds=5))  # each event reaches the waker 5 s after its end
        waker.wake(ended(machine, SCRIPT_ENDED, at=NOW + n * step))
    return [look for look, _ in queue.sent]


def test_a_waves_spread_out_run_command_ends_wake_its_health_check_never() -> None:
    """Thirty health scripts ending over 90 seconds fill seven 15-second windows, each of which woke
    the health check to a poll reading every VM's Run Command again (bench --wake --spread: 15.3 ARM
    requests per VM instead of 7.9). Now none: the check keeps its own 2-minute poll, as without
    wake-ups."""
    assert health_scripts_ending([vm(n) for n in range(30)], timedelta(seconds=90)) == []


def test_the_run_command_end_of_a_one_vm_health_check_wakes_it_once() -> None:
    (look,) = health_scripts_ending([vm(1)], timedelta(0))
    assert look.command_id == "r:w1:health" and look.run_id == "r"
