"""Rollback from the snapshots: CreateReplaceRootVolumeTask for the root volume (the instance
keeps its id and IP), created with a ClientToken derived from the command and instance ids and
tagged with the command id (found again by DescribeReplaceRootVolumeTasks); with
`restore_data_volumes`, volumes restored from the data volume snapshots (a ClientToken per
command, instance and device; tagged PatchPilotCommand/PatchPilotInstance/PatchPilotDevice) are
swapped in, the originals kept and tagged PatchPilotReplacedBy. Whether to stop, detach, attach
or start is read from the instance's state and device mappings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from patchpilot.batching import chunks, unique
from patchpilot.engine.messages import Outcome, RestoreTarget, RollBack
from patchpilot.ports import InProgress, Progress

from ..access import (
    FILTER_VALUES_PER_CALL,
    TAG_COMMAND,
    TAG_DEVICE,
    TAG_INSTANCE,
    TAG_REPLACED_BY,
    TAG_RUN,
    AwsAccess,
    by_placement,
    client_token,
    describe_error,
    instance_state,
    tags_of,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import (
        InstanceTypeDef,
        ReplaceRootVolumeTaskTypeDef,
        SnapshotTypeDef,
        VolumeTypeDef,
    )

ROLLBACK_POLL = timedelta(minutes=2)
RUNNING_TASK = frozenset({"pending", "in-progress", "failing"})


def roll_back(access: AwsAccess, command: RollBack) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda t: t.instance.id)
    outcomes: dict[str, Outcome] = {}
    waiting = 0
    for placement, group in by_placement(targets, lambda t: t.instance).items():
        ec2 = access.ec2(placement)
        tasks = _command_tasks(ec2, [t.instance.id for t in group], command.id)
        restoring = {t.instance.id for t in group if command.restore_data_volumes and len(t.snapshot_ids) > 1}
        volumes = (
            _data_volumes(access, ec2, command.id, [t for t in group if t.instance.id in restoring])
            if restoring
            else None
        )
        for target in group:
            instance_id = target.instance.id
            if not target.snapshot_ids:
                outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail="no snapshot to restore from")
                continue
            task = tasks.get(instance_id)
            if task is None:
                try:
                    task = _replace_root(ec2, command, target)
                except ClientError as exc:
                    detail = f"CreateReplaceRootVolumeTask from {target.snapshot_ids[0]} failed: {describe_error(exc)}"
                    outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail=detail)
                    continue
            outcome = _rollback_outcome(task, target)
            if volumes is not None and instance_id in restoring and (outcome is None or outcome.ok):
                outcome = _restore_data(access, ec2, command, target, volumes, root=outcome)
            if outcome is None:
                waiting += 1
            else:
                outcomes[instance_id] = outcome
    if waiting:
        done = len(targets) - waiting
        return InProgress(now + ROLLBACK_POLL, note=f"rollback: {done}/{len(targets)} instances restored")
    return [outcomes[t.instance.id].model_copy(update={"at": now}) for t in targets]


def _data_volumes(access: AwsAccess, ec2: EC2Client, command_id: str, targets: Sequence[RestoreTarget]) -> _DataVolumes:
    """What a data-volume restore needs to know, read afresh from EC2: the instances, their
    data volume snapshots, the volumes those were taken of, and the volumes this command
    restored (found by their PatchPilotCommand tag)."""
    instances = access.describe_instances(ec2, [t.instance.id for t in targets])
    snapshot_ids = sorted({s for t in targets for s in t.snapshot_ids[1:]})
    snapshots: dict[str, SnapshotTypeDef] = {}
    for chunk in chunks(snapshot_ids, FILTER_VALUES_PER_CALL):
        pages = ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"],
            Filters=[{"Name": "snapshot-id", "Values": chunk}],
            PaginationConfig={"PageSize": 1000},
        )
        snapshots.update((s["SnapshotId"], s) for page in pages for s in page.get("Snapshots", []))
    originals = _volumes(ec2, "volume-id", sorted({s.get("VolumeId", "") for s in snapshots.values()} - {""}))
    restored = _volumes(ec2, f"tag:{TAG_COMMAND}", [command_id])
    return _DataVolumes(instances, snapshots, originals, list(restored.values()))


def _volumes(ec2: EC2Client, name: str, values: Sequence[str]) -> dict[str, VolumeTypeDef]:
    """The volumes whose filter `name` has one of `values`, by id."""
    found: dict[str, VolumeTypeDef] = {}
    for chunk in chunks(values, FILTER_VALUES_PER_CALL):
        pages = ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": name, "Values": chunk}], PaginationConfig={"PageSize": 500}
        )
        found.update((v["VolumeId"], v) for page in pages for v in page.get("Volumes", []))
    return found


def _restore_data(
    access: AwsAccess,
    ec2: EC2Client,
    command: RollBack,
    target: RestoreTarget,
    volumes: _DataVolumes,
    root: Outcome | None,
) -> Outcome | None:
    """One more step of restoring an instance's data volumes (None: not done yet). The
    volumes are created while the root volume is replaced; once it has been and they are
    available, the instance is stopped, each original volume detached (kept, tagged
    PatchPilotReplacedBy), the restored one attached at its device, and the instance
    started again. Every step is chosen from what EC2 shows now."""
    instance_id = target.instance.id
    raw = volumes.instances.get(instance_id)

    def failed(detail: str) -> Outcome:
        prefix = f"{root.detail}; " if root is not None else ""
        return Outcome(
            id=instance_id, ok=False, detail=f"{prefix}data volumes: {detail}", items=target.snapshot_ids[:1]
        )

    if raw is None:
        return failed("instance not found (terminated?)")
    plan: list[_DataVolume] = []
    mapped = _device_map(raw)
    for snapshot_id in target.snapshot_ids[1:]:
        snapshot = volumes.snapshots.get(snapshot_id)
        if snapshot is None:
            return failed(f"snapshot {snapshot_id} not found")
        original = snapshot.get("VolumeId", "")
        restored = volumes.restored_from(instance_id, snapshot_id)
        if restored is not None:
            device = tags_of(restored.get("Tags")).get(TAG_DEVICE, "")
            if not device:
                return failed(f"restored volume {restored.get('VolumeId', '?')} has no {TAG_DEVICE} tag")
        else:
            device = next((d for d, (v, _) in mapped.items() if v == original), "")
            if not device:
                return failed(f"volume {original} of snapshot {snapshot_id} is no longer attached; not restored")
            if device == raw.get("RootDeviceName"):
                return failed(f"snapshot {snapshot_id} is of the root volume {original}, not of a data volume")
            try:
                restored = _create_volume(ec2, command, raw, snapshot, device, volumes.originals.get(original))
            except ClientError as exc:
                return failed(f"{device}: CreateVolume from {snapshot_id} failed: {describe_error(exc)}")
        plan.append(_DataVolume(device, snapshot_id, original, restored))
    for item in plan:
        state = item.restored.get("State", "")
        if state in ("error", "deleting", "deleted"):
            return failed(f"{item.device}: restored volume {item.volume_id} from {item.snapshot_id} is {state}")
    if root is None or any(i.restored.get("State") not in ("available", "in-use") for i in plan):
        return None  # the root volume is being replaced, or the data volumes created
    state = instance_state(raw)
    if all(mapped.get(i.device) == (i.volume_id, "attached") for i in plan):
        for item in plan:
            problem = _mark_replaced(ec2, volumes, item)
            if problem:
                return failed(problem)
        if state == "running":
            swapped = ", ".join(f"{i.device} {i.volume_id} from {i.snapshot_id}" for i in plan)
            kept = ", ".join(i.original for i in plan)
            detail = (
                f"{root.detail}; data volumes restored: {swapped}; original data volumes kept "
                f"(detached, tagged {TAG_REPLACED_BY}): {kept}"
            )
            return Outcome(id=instance_id, ok=True, detail=detail, items=list(target.snapshot_ids))
        if state == "stopped":
            try:
                ec2.start_instances(InstanceIds=[instance_id])
            except ClientError as exc:
                return failed(f"StartInstances failed after the volumes were swapped: {describe_error(exc)}")
            return None
        if state in ("pending", "stopping"):
            return None
        return failed(f"instance is {state}")
    if state == "running":
        try:
            ec2.stop_instances(InstanceIds=[instance_id])
        except ClientError as exc:
            return failed(f"StopInstances failed: {describe_error(exc)}")
        return None
    if state in ("pending", "stopping"):
        return None
    if state != "stopped":
        return failed(f"instance is {state}")
    for item in plan:
        current = mapped.get(item.device)
        if current is None:
            try:
                ec2.attach_volume(VolumeId=item.volume_id, InstanceId=instance_id, Device=item.device)
            except ClientError as exc:
                return failed(
                    f"{item.device}: AttachVolume of {item.volume_id} failed: {describe_error(exc)}; "
                    f"the instance is left stopped, the original volume {item.original} kept (detached)"
                )
        elif current[0] == item.original and current[1] == "attached":
            problem = _mark_replaced(ec2, volumes, item)
            if problem:
                return failed(problem)
            try:
                ec2.detach_volume(VolumeId=item.original, InstanceId=instance_id, Device=item.device)
            except ClientError as exc:
                return failed(
                    f"{item.device}: DetachVolume of {item.original} failed: {describe_error(exc)}; "
                    "the instance is left stopped"
                )
        elif current[0] not in (item.original, item.volume_id):
            return failed(
                f"{item.device}: volume {current[0]} is attached, neither the original {item.original} "
                f"nor the restored {item.volume_id}; the instance is left stopped"
            )
    return None


def _create_volume(
    ec2: EC2Client,
    command: RollBack,
    raw: InstanceTypeDef,
    snapshot: SnapshotTypeDef,
    device: str,
    original: VolumeTypeDef | None,
) -> VolumeTypeDef:
    """A volume from `snapshot` in the instance's zone, like the original; idempotent by
    its ClientToken, and found again by its tags."""
    instance_id = raw.get("InstanceId", "")
    extra: dict[str, Any] = {}
    kind = (original or {}).get("VolumeType")
    if kind:
        extra["VolumeType"] = kind
        if kind in ("io1", "io2", "gp3") and (original or {}).get("Iops"):
            extra["Iops"] = (original or {})["Iops"]
        if kind == "gp3" and (original or {}).get("Throughput"):
            extra["Throughput"] = (original or {})["Throughput"]
    if snapshot.get("Encrypted"):
        extra["Encrypted"] = True
        if snapshot.get("KmsKeyId"):
            extra["KmsKeyId"] = snapshot["KmsKeyId"]
    answer = ec2.create_volume(
        SnapshotId=snapshot["SnapshotId"],
        AvailabilityZone=raw.get("Placement", {}).get("AvailabilityZone", ""),
        ClientToken=client_token(command.id, instance_id, device),
        TagSpecifications=[
            {
                "ResourceType": "volume",
                "Tags": [
                    {"Key": TAG_RUN, "Value": command.run_id},
                    {"Key": TAG_COMMAND, "Value": command.id},
                    {"Key": TAG_INSTANCE, "Value": instance_id},
                    {"Key": TAG_DEVICE, "Value": device},
                ],
            }
        ],
        **extra,
    )
    volume: VolumeTypeDef = {k: v for k, v in answer.items() if k != "ResponseMetadata"}  # type: ignore[assignment]
    return volume


def _mark_replaced(ec2: EC2Client, volumes: _DataVolumes, item: _DataVolume) -> str:
    """Tag the original volume PatchPilotReplacedBy=<restored volume> unless it is already;
    a problem, or ''."""
    original = volumes.originals.get(item.original)
    if original is None or tags_of(original.get("Tags")).get(TAG_REPLACED_BY) == item.volume_id:
        return ""
    try:
        ec2.create_tags(Resources=[item.original], Tags=[{"Key": TAG_REPLACED_BY, "Value": item.volume_id}])
    except ClientError as exc:
        return f"{item.device}: CreateTags {TAG_REPLACED_BY} on {item.original} failed: {describe_error(exc)}"
    return ""


def _command_tasks(
    ec2: EC2Client, instance_ids: Sequence[str], command_id: str
) -> dict[str, ReplaceRootVolumeTaskTypeDef]:
    """The replace-root-volume tasks this command created, by instance id."""
    found: dict[str, ReplaceRootVolumeTaskTypeDef] = {}
    for chunk in chunks(sorted(set(instance_ids)), FILTER_VALUES_PER_CALL):
        pages = ec2.get_paginator("describe_replace_root_volume_tasks").paginate(
            Filters=[{"Name": "instance-id", "Values": chunk}], PaginationConfig={"PageSize": 50}
        )
        for page in pages:
            for task in page.get("ReplaceRootVolumeTasks", []):
                if tags_of(task.get("Tags")).get(TAG_COMMAND) == command_id:
                    found[task.get("InstanceId", "")] = task
    return found


def _replace_root(ec2: EC2Client, command: RollBack, target: RestoreTarget) -> ReplaceRootVolumeTaskTypeDef:
    instance_id = target.instance.id
    answer = ec2.create_replace_root_volume_task(
        InstanceId=instance_id,
        SnapshotId=target.snapshot_ids[0],
        ClientToken=client_token(command.id, instance_id),
        DeleteReplacedRootVolume=False,  # kept for forensics; the operator deletes it
        TagSpecifications=[
            {
                "ResourceType": "replace-root-volume-task",
                "Tags": [
                    {"Key": TAG_RUN, "Value": command.run_id},
                    {"Key": TAG_COMMAND, "Value": command.id},
                    {"Key": TAG_INSTANCE, "Value": instance_id},
                ],
            }
        ],
    )
    return answer["ReplaceRootVolumeTask"]


def _rollback_outcome(task: ReplaceRootVolumeTaskTypeDef, target: RestoreTarget) -> Outcome | None:
    """The root volume's part of a rollback (None: the replacement is still running)."""
    instance_id = target.instance.id
    source = task.get("SnapshotId") or target.snapshot_ids[0]
    state = task.get("TaskState", "")
    task_id = task.get("ReplaceRootVolumeTaskId", "?")
    if state in RUNNING_TASK:
        return None
    if state == "failed-detached":
        detail = (
            f"root volume replacement {task_id} from {source} failed-detached: the instance has no root volume "
            "attached; attach the original volume by hand"
        )
        return Outcome(id=instance_id, ok=False, detail=detail)
    if state != "succeeded":
        return Outcome(id=instance_id, ok=False, detail=f"root volume replacement {task_id} from {source} {state}")
    return Outcome(id=instance_id, ok=True, detail=f"root volume restored from {source} ({task_id})", items=[source])


@dataclass(frozen=True)
class _DataVolumes:
    """One placement's view of the data volumes a rollback restores."""

    instances: dict[str, InstanceTypeDef]
    snapshots: dict[str, SnapshotTypeDef]
    originals: dict[str, VolumeTypeDef]  # the volumes the snapshots were taken of, by id
    restored: list[VolumeTypeDef]  # the volumes this command created

    def restored_from(self, instance_id: str, snapshot_id: str) -> VolumeTypeDef | None:
        """The command's volume for this instance from this snapshot: an attached one first,
        then the lowest id (should two exist)."""
        found = [
            v
            for v in self.restored
            if v.get("SnapshotId") == snapshot_id and tags_of(v.get("Tags")).get(TAG_INSTANCE) == instance_id
        ]
        found.sort(key=lambda v: (v.get("State") != "in-use", v.get("VolumeId", "")))
        return found[0] if found else None


@dataclass(frozen=True)
class _DataVolume:
    device: str
    snapshot_id: str
    original: str  # the volume the snapshot was taken of
    restored: VolumeTypeDef

    @property
    def volume_id(self) -> str:
        return self.restored.get("VolumeId", "")


def _device_map(raw: InstanceTypeDef) -> dict[str, tuple[str, str]]:
    """device -> (EBS volume id, attachment status) of the instance."""
    return {
        m.get("DeviceName", ""): (m.get("Ebs", {}).get("VolumeId", ""), m.get("Ebs", {}).get("Status", ""))
        for m in raw.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("VolumeId")
    }
