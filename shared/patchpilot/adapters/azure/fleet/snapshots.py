"""Snapshots before patching: incremental, one per managed disk, named from the command id and
the disk id (`pp-<vm>-<digest>`) so a repeated command finds them in the resource group's listing,
and tagged PatchPilotRun/Wave/Command/Instance/Disk. Snapshots not done by TakeSnapshots.deadline
(an Update Manager run's cut-off) fail."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import models as cm

from patchpilot.batching import group, unique
from patchpilot.engine.messages import (
    Outcome,
    TakeSnapshots,
)
from patchpilot.ports import InProgress, Progress
from patchpilot.wording import plural

from ..access import (
    TAG_COMMAND,
    TAG_DISK,
    TAG_INSTANCE,
    TAG_RUN,
    TAG_WAVE,
    AzureAccess,
    Machine,
    at,
    by_key,
    derived_name,
    describe_error,
    iso,
    items,
    tag_value,
    text,
)

if TYPE_CHECKING:
    from azure.mgmt.compute import ComputeManagementClient

SNAPSHOT_POLL = timedelta(minutes=2)
ARC_NO_SNAPSHOT = "none:arc-server-patched-without-rollback"


def take_snapshots(access: AzureAccess, command: TakeSnapshots, patch_without_rollback: bool) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda i: i.id)
    outcomes: dict[str, Outcome] = {}
    machines = access.parse(targets, outcomes, now)
    pending: list[str] = []
    for machine in [m for m in machines.values() if m.arc]:
        if patch_without_rollback or command.patch_without_rollback:
            detail = "no snapshot: Arc server (no managed disks), patched without rollback"
            outcomes[machine.id] = Outcome(id=machine.id, ok=True, detail=detail, items=[ARC_NO_SNAPSHOT], at=now)
        else:
            detail = "Arc server: no managed disks to snapshot (azure.patch_without_rollback is off)"
            outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=detail, at=now)
    vms = [m for m in machines.values() if not m.arc]
    for members in group(vms, lambda m: (m.subscription.lower(), m.resource_group.lower())).values():
        compute = access.compute(members[0])
        models = by_key(compute.virtual_machines.list(members[0].resource_group))
        snapshots = {
            text(s, "name").lower(): s for s in compute.snapshots.list_by_resource_group(members[0].resource_group)
        }
        for machine in members:
            outcome = _snapshot_vm(access, compute, command, machine, models.get(machine.key), snapshots)
            if outcome is None:
                pending.append(machine.id)
            else:
                outcomes[machine.id] = outcome.model_copy(update={"at": now})
    if pending and (command.deadline is None or now < command.deadline):
        done = len(targets) - len(pending)
        retry = now + SNAPSHOT_POLL if command.deadline is None else min(now + SNAPSHOT_POLL, command.deadline)
        return InProgress(retry, note=f"snapshots: {done}/{len(targets)} machines done")
    for machine_id in pending:  # past the deadline (an Update Manager run's cancellation cut-off)
        detail = f"snapshots not complete by the deadline {iso(command.deadline or now)}"
        outcomes[machine_id] = Outcome(id=machine_id, ok=False, detail=detail, at=now)
    return [outcomes[i.id] for i in targets]


def _snapshot_vm(
    access: AzureAccess,
    compute: ComputeManagementClient,
    command: TakeSnapshots,
    machine: Machine,
    vm: Any,
    existing: Mapping[str, Any],
) -> Outcome | None:
    """One VM's snapshots, made where missing; None while any is being made."""
    if vm is None:
        return Outcome(id=machine.id, ok=False, detail="VM not found")
    disks = _managed_disks(vm)
    if isinstance(disks, str):
        return Outcome(id=machine.id, ok=False, detail=disks)
    ids: list[str] = []
    waiting = False
    for role, disk_id in disks:
        name = derived_name(machine.name, command.id, disk_id.lower())
        snapshot = existing.get(name.lower())
        if snapshot is None:
            body = {
                "location": text(vm, "location"),
                "tags": {
                    TAG_RUN: tag_value(command.run_id),
                    TAG_WAVE: "" if command.wave is None else str(command.wave),
                    TAG_COMMAND: tag_value(command.id),
                    TAG_INSTANCE: tag_value(machine.id),
                    TAG_DISK: role,
                },
                "properties": {
                    "incremental": True,
                    "creationData": {"createOption": "Copy", "sourceResourceId": disk_id},
                },
            }
            try:
                compute.snapshots.begin_create_or_update(machine.resource_group, name, cm.Snapshot(body), polling=False)
            except HttpResponseError as exc:
                return Outcome(
                    id=machine.id, ok=False, detail=f"snapshot of the {role} disk failed: {describe_error(exc)}"
                )
            waiting = True
            continue
        state = text(snapshot, "properties", "provisioningState")
        if state.lower() == "failed":
            return Outcome(id=machine.id, ok=False, detail=f"snapshot {name} of the {role} disk failed")
        percent = at(snapshot, "properties", "completionPercent")
        if state.lower() != "succeeded" or (isinstance(percent, int | float) and percent < 100):
            waiting = True
        ids.append(text(snapshot, "id"))
    if waiting:
        return None
    count = plural(len(ids), "disk")
    return Outcome(id=machine.id, ok=True, detail=f"incremental snapshots of {count}", items=ids)


def _managed_disks(vm: Any) -> list[tuple[str, str]] | str:
    """[(role, disk id)] of a VM, the OS disk first, then the data disks by LUN; or why not."""
    os_disk = at(vm, "properties", "storageProfile", "osDisk")
    os_id = text(os_disk, "managedDisk", "id")
    if not os_id:
        return "the OS disk is not a managed disk (unmanaged VHD): no snapshot possible"
    disks = [("os", os_id)]
    data = sorted(items(vm, "properties", "storageProfile", "dataDisks"), key=lambda d: at(d, "lun") or 0)
    for disk in data:
        disk_id = text(disk, "managedDisk", "id")
        if not disk_id:
            return f"data disk at LUN {at(disk, 'lun')} is not a managed disk: no snapshot possible"
        disks.append((f"lun{at(disk, 'lun')}", disk_id))
    return disks
