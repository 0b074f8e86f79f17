"""Managed Run Commands on a VM or an Arc server, named per use (the health script, a host hook)
and tagged with the PatchPilot command that started them, so a redelivery finds them again."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.compute import models as cm
from azure.mgmt.hybridcompute import models as hm

from patchpilot.inventory import Instance

from ..access import TAG_COMMAND, TAG_RUN, AzureAccess, Machine, tag_value


def read_run_command(access: AzureAccess, machine: Machine, name: str) -> Any:
    """The machine's Run Command `name` with its instance view, or None when there is none."""
    try:
        if machine.arc:
            return access.hybrid(machine).machine_run_commands.get(machine.resource_group, machine.name, name)
        return access.compute(machine).virtual_machine_run_commands.get_by_virtual_machine(
            machine.resource_group, machine.name, name, expand="instanceView"
        )
    except ResourceNotFoundError:
        return None


def start_run_command(
    access: AzureAccess,
    machine: Machine,
    instance: Instance,
    name: str,
    script: str,
    timeout: timedelta,
    command_id: str,
    run_id: str,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Create (or replace) Run Command `name` running `script`, tagged with the command and run ids
    (and `tags`)."""
    body = {
        "location": instance.region,
        "tags": {
            **{k: tag_value(v) for k, v in (tags or {}).items()},
            TAG_COMMAND: tag_value(command_id),
            TAG_RUN: tag_value(run_id),
        },
        "properties": {
            "source": {"script": script},
            "asyncExecution": False,
            "timeoutInSeconds": max(30, int(timeout.total_seconds())),
        },
    }
    if machine.arc:
        access.hybrid(machine).machine_run_commands.begin_create_or_update(
            machine.resource_group, machine.name, name, hm.MachineRunCommand(body), polling=False
        )
    else:
        access.compute(machine).virtual_machine_run_commands.begin_create_or_update(
            machine.resource_group, machine.name, name, cm.VirtualMachineRunCommand(body), polling=False
        )
