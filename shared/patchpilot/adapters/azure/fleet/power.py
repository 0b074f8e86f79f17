"""VMs found stopped or deallocated (policy `stopped_machines: start`): start for the wave, then
deallocate (or power off, for one found `stopped`) to return them. Each call reads the VM's
power state first (its instance view), so a redelivery or a run-end sweep starts or stops
nothing twice; the operations are sent without waiting (`polling=False`) and polled."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from patchpilot.engine.messages import Outcome, ReturnMachines, StartMachines
from patchpilot.inventory import Instance
from patchpilot.ports import InProgress, Progress

from ..access import AzureAccess, Machine, describe_error, power_state, text

POWER_POLL = timedelta(seconds=30)
BUSY = frozenset({"starting", "stopping", "deallocating", "unknown"})
_Wanted = Callable[[Instance], str]  # the power state each target is brought to


def start_machines(access: AzureAccess, command: StartMachines) -> Progress:
    return _converge(access, command.targets, lambda i: "running")


def return_machines(access: AzureAccess, command: ReturnMachines) -> Progress:
    return _converge(access, command.targets, lambda i: i.power or "deallocated")


def _converge(access: AzureAccess, targets: Sequence[Instance], wanted_of: _Wanted) -> Progress:
    now = access.clock.now()
    outcomes: dict[str, Outcome] = {}
    machines = access.parse(targets, outcomes, now)
    rows = access.rows(list(machines.values())) if machines else {}
    for instance in targets:
        machine = machines.get(instance.id)
        if machine is None:
            continue
        wanted = wanted_of(instance)
        result = _one(access, machine, wanted)
        if result is not None and result[0] and wanted == "running" and not _graph_says_running(rows, machine):
            result = None  # the probe reads power from Resource Graph, which lags behind a start
        if result is not None:
            ok, detail = result
            outcomes[instance.id] = Outcome(id=instance.id, ok=ok, detail=detail, at=now)
    if len(outcomes) < len(targets):
        return InProgress(now + POWER_POLL, note=f"power: {len(outcomes)}/{len(targets)} VMs done")
    return [outcomes[t.id] for t in targets]


def _one(access: AzureAccess, machine: Machine, wanted: str) -> tuple[bool, str] | None:
    """(ok, detail) once the VM is in the `wanted` state (or cannot be), None while it moves."""
    if machine.arc:
        return False, "an Arc server's power is not Azure's to change"
    try:
        state = power_state(access.instance_view(machine))
    except ResourceNotFoundError:
        return False, "VM not found"
    except HttpResponseError as exc:
        return False, f"instance view not readable: {describe_error(exc)}"
    if state == wanted:
        return True, f"VM {wanted}"
    if state in BUSY:
        return None
    vms = access.compute(machine).virtual_machines
    try:
        if wanted == "running":
            vms.begin_start(machine.resource_group, machine.name, polling=False)
        elif wanted == "stopped":  # powered off, still allocated: as it was found
            vms.begin_power_off(machine.resource_group, machine.name, polling=False)
        else:
            vms.begin_deallocate(machine.resource_group, machine.name, polling=False)
    except HttpResponseError as exc:
        return False, f"{_verb(wanted)} the VM failed: {describe_error(exc)}"
    return None


def _graph_says_running(rows: dict[str, Any], machine: Machine) -> bool:
    row = rows.get(machine.key)
    power = text(row, "properties", "extended", "instanceView", "powerState", "code").removeprefix("PowerState/")
    return not power or power.lower() in ("running", "starting")


def _verb(wanted: str) -> str:
    return {"running": "starting", "stopped": "powering off"}.get(wanted, "deallocating")
