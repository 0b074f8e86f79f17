"""Snapshots before patching: incremental, one per managed disk, named from the command id and
the disk id (`pp-<vm>-<digest>`) so a repeated command finds them in the resource group's listing,
and tagged PatchPilotRun/Wave/Command/Instance/Disk. Snapshots not done by TakeSnapshots.deadline
(an Update Manager run's cut-off) fail.

With wake-ups (`woken`), a snapshot being written is polled at the longer `woken` interval: the end
of its ARM write (provisioningState Succeeded or Failed) sends the ResourceWriteSuccess/Failure
event that wakes the run. A snapshot whose write has ended but whose background copy has not
(`completionPercent` below 100: Premium SSD v2 and Ultra Disk snapshots are not instant access)
ends with no ARM operation, so no event: a VM with such a disk keeps the short poll from the start
(its write's event would find the copy under way, and the long poll already scheduled)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

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

Waiting = Literal["write", "copy"]  # a snapshot's ARM write under way; or its background copy
# Disks whose snapshots need their background copy before they can be used (not instant access):
# storageAccountType as the VM's model names it, compared without case.
COPIED_DISK_TYPES = frozenset({"premiumv2_lrs", "ultrassd_lrs"})


def take_snapshots(
    access: AzureAccess, command: TakeSnapshots, patch_without_rollback: bool, woken: timedelta | None = None
) -> Progress:
    """`woken`: the poll while only ARM writes are awaited, when an event will say their end (the
    fleet passes it for a step of one VM, which the deployment's wake-ups wake); None: SNAPSHOT_POLL
    always."""
    now = access.clock.now()
    targets = unique(command.targets, lambda i: i.id)
    outcomes: dict[str, Outcome] = {}
    machines = access.parse(targets, outcomes, now)
    pending: list[str] = []
    copying = False
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
            if isinstance(outcome, str):
                pending.append(machine.id)
                copying = copying or outcome == "copy"
            else:
                outcomes[machine.id] = outcome.model_copy(update={"at": now})
    if pending and (command.deadline is None or now < command.deadline):
        done = len(targets) - len(pending)
        poll = woken if woken is not None and not copying else SNAPSHOT_POLL
        retry = now + poll if command.deadline is None else min(now + poll, command.deadline)
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
) -> Outcome | Waiting:
    """One VM's snapshots, made where missing; while any is being made, what it waits for: an ARM
    write ("write": its end sends an event), or a background copy ("copy": none will) on any disk."""
    if vm is None:
        return Outcome(id=machine.id, ok=False, detail="VM not found")
    disks = _managed_disks(vm)
    if isinstance(disks, str):
        return Outcome(id=machine.id, ok=False, detail=disks)
    ids: list[str] = []
    waiting: Waiting | None = None
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
            waiting = waiting or "write"
            continue
        state = text(snapshot, "properties", "provisioningState")
        if state.lower() == "failed":
            return Outcome(id=machine.id, ok=False, detail=f"snapshot {name} of the {role} disk failed")
        percent = at(snapshot, "properties", "completionPercent")
        if state.lower() != "succeeded":
            waiting = waiting or "write"
        elif isinstance(percent, int | float) and percent < 100:
            waiting = "copy"  # no event will say its end: it decides the poll
        ids.append(text(snapshot, "id"))
    if waiting == "write" and _copied(vm):
        return "copy"  # its write's end is not the snapshot's: the background copy follows it
    if waiting is not None:
        return waiting
    count = plural(len(ids), "disk")
    return Outcome(id=machine.id, ok=True, detail=f"incremental snapshots of {count}", items=ids)


def _copied(vm: Any) -> bool:
    """Whether any of the VM's disks is of a type whose snapshots wait for a background copy."""
    profile = at(vm, "properties", "storageProfile")
    disks = [at(profile, "osDisk"), *items(profile, "dataDisks")]
    return any(text(d, "managedDisk", "storageAccountType").lower() in COPIED_DISK_TYPES for d in disks)


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
