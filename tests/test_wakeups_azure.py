"""Azure Resource Manager events become wake-ups: the documented Event Grid event
(tests/events/azure-published/, as Microsoft documents it) and the same shape on a VM, a VM's Run
Command and a snapshot, read by the Azure reader and mapped to the runs they concern; the worker
app's `wake_up` function indexed with its Event Grid trigger (tests/test_azure_functions.py)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from patchpilot.adapters.azure.wake_events import read_event
from patchpilot.engine.messages import InstallPatches, InstallTarget, TakeSnapshots
from patchpilot.inventory import Instance
from patchpilot.wakeups import concerns

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


def test_a_vm_signal_concerns_commands_on_that_vm_and_a_snapshot_signal_snapshots_in_its_subscription() -> None:
    vm = read_event(on(VM.upper(), "Microsoft.Compute/virtualMachines/installPatches/action"), NOW)
    snapshot = read_event(
        on(SNAPSHOT, "Microsoft.Compute/snapshots/write", "Microsoft.Resources.ResourceWriteSuccess"), NOW
    )
    assert vm is not None and snapshot is not None
    install = InstallPatches(
        id="r:w1:install", run_id="r", targets=[InstallTarget(instance=machine())], classifications=["Security"]
    )
    snapshots = TakeSnapshots(id="r:w1:snapshot", run_id="r", targets=[machine()])
    assert concerns(vm, install) and not concerns(snapshot, install)
    assert concerns(snapshot, snapshots) and concerns(vm, snapshots)  # a VM write may be part of it too
    other = Instance(id="/x", cloud="azure", region="x", os="linux", account="other")
    elsewhere = TakeSnapshots(id="r:w1:snapshot", run_id="r", targets=[other])
    assert not concerns(snapshot, elsewhere)
