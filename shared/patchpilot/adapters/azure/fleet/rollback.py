"""Rolling an Azure VM back to its snapshots, one step per execution, each chosen from what the
VM and its disks show now:

1. a disk is created from each snapshot (the OS snapshot always, data snapshots when the command
   restores data volumes), named from the command id and the snapshot id, like the disk it
   replaces (SKU, zone, OS type, Hyper-V generation, security profile, encryption);
2. once they are all ready, the VM is deallocated;
3. once it is deallocated, each original disk is tagged PatchPilotReplacedBy=<restored disk> (it
   is kept, detached, for the operator) and one PATCH of the VM swaps the OS disk and, by LUN,
   the data disks;
4. once swapped, the VM is started; running with the restored disks is done.

A repeated execution redoes nothing that is done: the disks are found by name, the swap by the
disk ids attached, the power state by the instance view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import models as cm

from patchpilot.batching import unique
from patchpilot.engine.messages import Outcome, RollBack
from patchpilot.ports import InProgress, Progress

from ..access import (
    TAG_COMMAND,
    TAG_DISK,
    TAG_INSTANCE,
    TAG_REPLACED_BY,
    TAG_RESTORED_FROM,
    TAG_RUN,
    AzureAccess,
    Machine,
    at,
    derived_name,
    describe_error,
    items,
    power_state,
    resource_group_of,
    tag_value,
    tags_of,
    text,
)
from .snapshots import ARC_NO_SNAPSHOT

if TYPE_CHECKING:
    from azure.mgmt.compute import ComputeManagementClient

BUSY_POWER = frozenset({"starting", "stopping", "deallocating", "unknown"})
ROLLBACK_POLL = timedelta(minutes=1)


def roll_back(access: AzureAccess, command: RollBack) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda t: t.instance.id)
    outcomes: dict[str, Outcome] = {}
    machines = access.parse([t.instance for t in targets], outcomes, now)
    waiting = 0
    for target in targets:
        machine = machines.get(target.instance.id)
        if machine is None:
            continue
        if machine.arc:
            detail = "Arc server: no managed disks, so no snapshot to restore; roll it back by other means"
            outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=detail, at=now)
            continue
        snapshots = [s for s in target.snapshot_ids if s != ARC_NO_SNAPSHOT]
        if not snapshots:
            outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail="no snapshot to restore from", at=now)
            continue
        wanted = snapshots if command.restore_data_volumes else snapshots[:1]
        outcome = roll_back_vm(access.compute(machine), machine, command, wanted)
        if outcome is None:
            waiting += 1
        else:
            outcomes[machine.id] = outcome.model_copy(update={"at": now})
    if waiting:
        done = len(targets) - waiting
        return InProgress(now + ROLLBACK_POLL, note=f"rollback: {done}/{len(targets)} machines restored")
    return [outcomes[t.instance.id] for t in targets]


@dataclass(frozen=True)
class _Restore:
    """One disk to restore: from `snapshot_id` (taken of `source`) into the disk `name`."""

    role: str  # "os" or "lun<n>"
    snapshot_id: str
    source: str  # the disk the snapshot was taken of
    name: str
    disk_id: str  # the restored disk's id (derived from the name)
    disk: Any  # the restored disk as listed, or None before it is created


def roll_back_vm(
    compute: ComputeManagementClient, machine: Machine, command: RollBack, snapshot_ids: Sequence[str]
) -> Outcome | None:
    """One more step of restoring `machine` from `snapshot_ids` (the OS disk's first); its
    outcome once done or failed, None while under way."""

    def failed(detail: str) -> Outcome:
        return Outcome(id=machine.id, ok=False, detail=detail)

    rg = machine.resource_group
    try:
        vm = compute.virtual_machines.get(rg, machine.name, expand="instanceView")
    except ResourceNotFoundError:
        return failed("VM not found")
    snapshots = {text(s, "id").lower(): s for s in compute.snapshots.list_by_resource_group(rg)}
    disks = {text(d, "id").lower(): d for d in compute.disks.list_by_resource_group(rg)}
    attached = _attached(vm)
    plan: list[_Restore] = []
    for index, snapshot_id in enumerate(snapshot_ids):
        snapshot = snapshots.get(snapshot_id.lower()) or _get(compute, "snapshots", snapshot_id)
        if snapshot is None:
            return failed(f"snapshot {snapshot_id} not found")
        source = text(snapshot, "properties", "creationData", "sourceResourceId")
        role = tags_of(snapshot).get(TAG_DISK) or ("os" if index == 0 else "")
        role = role or next((r for r, d in attached.items() if d == source.lower() and r != "os"), "")
        if not role:
            return failed(f"snapshot {snapshot_id} is of no disk attached to the VM; not restored")
        if (index == 0) != (role == "os"):
            return failed(
                f"snapshot {snapshot_id} is of the {role} disk, expected the {'OS' if index == 0 else 'data'}"
            )
        name = derived_name(machine.name, command.id, snapshot_id.lower())
        disk_id = f"/subscriptions/{machine.subscription}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}"
        plan.append(_Restore(role, snapshot_id, source, name, disk_id, disks.get(disk_id.lower())))

    ready = True
    for item in plan:
        if item.disk is None:
            original = disks.get(item.source.lower()) or _get(compute, "disks", item.source)
            try:
                compute.disks.begin_create_or_update(
                    rg, item.name, cm.Disk(_disk_body(vm, item, original, command, machine)), polling=False
                )
            except HttpResponseError as exc:
                return failed(f"creating the {item.role} disk from {item.snapshot_id} failed: {describe_error(exc)}")
            ready = False
            continue
        state = text(item.disk, "properties", "provisioningState").lower()
        if state == "failed":
            return failed(f"the {item.role} disk {item.name} from {item.snapshot_id} failed to create; VM untouched")
        ready = ready and state == "succeeded"

    view = at(vm, "properties", "instanceView")
    power = power_state(view)
    provisioning = text(vm, "properties", "provisioningState").lower()
    if all(attached.get(item.role) == item.disk_id.lower() for item in plan):
        if power == "running":
            return _done(machine, plan)
        if provisioning in ("updating", "creating") or power in BUSY_POWER:
            return None
        try:
            compute.virtual_machines.begin_start(rg, machine.name, polling=False)
        except HttpResponseError as exc:
            return failed(f"disks swapped, but starting the VM failed: {describe_error(exc)}")
        return None
    if not ready or provisioning in ("updating", "creating") or power in BUSY_POWER:
        return None
    if power != "deallocated":
        try:
            compute.virtual_machines.begin_deallocate(rg, machine.name, polling=False)
        except HttpResponseError as exc:
            return failed(f"deallocating the VM failed: {describe_error(exc)}")
        return None
    for item in plan:
        problem = _mark_replaced(compute, disks, item)
        if problem:
            return failed(problem)
    try:
        compute.virtual_machines.begin_update(
            rg, machine.name, cm.VirtualMachineUpdate(_swap_body(vm, plan)), polling=False
        )
    except HttpResponseError as exc:
        if exc.status_code == 409:
            return None  # another operation on the VM: swap on a later execution
        return failed(f"swapping the disks failed: {describe_error(exc)}; the VM is left deallocated, disks unchanged")
    return None


def _attached(vm: Any) -> dict[str, str]:
    """role -> lower-case id of the managed disk attached there."""
    storage = at(vm, "properties", "storageProfile")
    found = {"os": text(storage, "osDisk", "managedDisk", "id").lower()}
    for disk in items(storage, "dataDisks"):
        found[f"lun{at(disk, 'lun')}"] = text(disk, "managedDisk", "id").lower()
    return found


def _get(compute: ComputeManagementClient, kind: str, resource_id: str) -> Any:
    """A snapshot or disk outside the VM's resource group, by id (None if missing)."""
    where = resource_group_of(resource_id)
    if where is None:
        return None
    operations = compute.snapshots if kind == "snapshots" else compute.disks
    try:
        return operations.get(where[1], where[2])
    except ResourceNotFoundError:
        return None


def _disk_body(vm: Any, item: _Restore, original: Any, command: RollBack, machine: Machine) -> dict[str, Any]:
    """A disk from the snapshot like the original: SKU, zone, and for the OS disk its OS type,
    Hyper-V generation and security profile; customer-managed encryption as the original's."""
    os_disk = at(vm, "properties", "storageProfile", "osDisk")
    if item.role == "os":
        sku = text(original, "sku", "name") or text(os_disk, "managedDisk", "storageAccountType")
    else:
        data = next(
            (d for d in items(vm, "properties", "storageProfile", "dataDisks") if f"lun{at(d, 'lun')}" == item.role),
            None,
        )
        sku = text(original, "sku", "name") or text(data, "managedDisk", "storageAccountType")
    properties: dict[str, Any] = {"creationData": {"createOption": "Copy", "sourceResourceId": item.snapshot_id}}
    if item.role == "os":
        properties["osType"] = text(original, "properties", "osType") or text(os_disk, "osType")
        for key in ("hyperVGeneration", "securityProfile"):
            if at(original, "properties", key):
                properties[key] = at(original, "properties", key)
    encryption = at(original, "properties", "encryption")
    if text(encryption, "type") and text(encryption, "type") != "EncryptionAtRestWithPlatformKey":
        properties["encryption"] = encryption
    body: dict[str, Any] = {
        "location": text(vm, "location"),
        "tags": {
            TAG_RUN: tag_value(command.run_id),
            TAG_COMMAND: tag_value(command.id),
            TAG_INSTANCE: tag_value(machine.id),
            TAG_DISK: item.role,
            TAG_RESTORED_FROM: tag_value(item.snapshot_id),
        },
        "properties": properties,
    }
    if sku:
        body["sku"] = {"name": sku}
    zones = items(vm, "zones")
    if zones:
        body["zones"] = zones
    return body


def _mark_replaced(compute: ComputeManagementClient, disks: dict[str, Any], item: _Restore) -> str:
    """Tag the original disk PatchPilotReplacedBy=<restored disk> unless it is already; a
    problem, or ''."""
    original = disks.get(item.source.lower()) or _get(compute, "disks", item.source)
    where = resource_group_of(item.source)
    if original is None or where is None or tags_of(original).get(TAG_REPLACED_BY) == item.name:
        return ""
    body = {"tags": {**tags_of(original), TAG_REPLACED_BY: item.name}}
    try:
        compute.disks.begin_update(where[1], where[2], cm.DiskUpdate(body), polling=False)
    except HttpResponseError as exc:
        return f"tagging the original {item.role} disk {where[2]} failed: {describe_error(exc)}; VM left deallocated"
    return ""


def _swap_body(vm: Any, plan: Sequence[_Restore]) -> dict[str, Any]:
    """One PATCH: the OS disk, and the whole data disk list with the restored ones at their LUNs
    (a data disk detached since its snapshot is attached again at its LUN)."""
    storage: dict[str, Any] = {}
    by_role = {item.role: item for item in plan}
    os_item = by_role.get("os")
    if os_item is not None:
        current = at(vm, "properties", "storageProfile", "osDisk")
        storage["osDisk"] = {
            "name": os_item.name,
            "createOption": text(current, "createOption") or "Attach",
            "managedDisk": {"id": os_item.disk_id},
        }
    if any(role != "os" for role in by_role):
        data = []
        for disk in items(vm, "properties", "storageProfile", "dataDisks"):
            entry = {k: at(disk, k) for k in ("lun", "name", "createOption", "caching") if at(disk, k) is not None}
            entry["managedDisk"] = {"id": text(disk, "managedDisk", "id")}
            restored = by_role.pop(f"lun{at(disk, 'lun')}", None)
            if restored is not None:
                entry.update(name=restored.name, createOption="Attach", managedDisk={"id": restored.disk_id})
            data.append(entry)
        for role, item in by_role.items():  # detached since the snapshot: attached again at its LUN
            if role != "os":
                data.append(
                    {
                        "lun": int(role[3:]),
                        "name": item.name,
                        "createOption": "Attach",
                        "managedDisk": {"id": item.disk_id},
                    }
                )
        storage["dataDisks"] = data
    return {"properties": {"storageProfile": storage}}


def _done(machine: Machine, plan: Sequence[_Restore]) -> Outcome:
    parts = []
    for item in plan:
        original = (resource_group_of(item.source) or ("", "", item.source))[2]
        label = "OS disk" if item.role == "os" else f"data disk at {item.role.replace('lun', 'LUN ')}"
        parts.append(
            f"{label} restored from {item.snapshot_id.rsplit('/', 1)[-1]} as {item.name} (original {original} kept)"
        )
    detail = "; ".join(parts) + f"; originals tagged {TAG_REPLACED_BY}"
    return Outcome(id=machine.id, ok=True, detail=detail, items=[i.snapshot_id for i in plan])
