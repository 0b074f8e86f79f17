"""Snapshots before patching: CreateSnapshots per instance (all its EBS volumes), tagged
PatchPilotCommand/PatchPilotInstance so that one DescribeSnapshots per account and region finds
every snapshot of the command again."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from patchpilot.batching import unique
from patchpilot.engine.messages import Outcome, TakeSnapshots
from patchpilot.inventory import Instance
from patchpilot.ports import InProgress, Progress
from patchpilot.wording import plural

from ..access import TAG_COMMAND, TAG_INSTANCE, TAG_RUN, TAG_WAVE, AwsAccess, by_placement, describe_error, tags_of

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import SnapshotTypeDef

SNAPSHOT_POLL = timedelta(minutes=3)


def take_snapshots(access: AwsAccess, command: TakeSnapshots) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda i: i.id)
    snapshots: dict[str, list[SnapshotTypeDef]] = {}
    errors: dict[str, str] = {}
    created: set[str] = set()
    for placement, instances in by_placement(targets, lambda i: i).items():
        ec2 = access.ec2(placement)
        existing = _command_snapshots(ec2, command.id)
        for instance in instances:
            if existing.get(instance.id):
                snapshots[instance.id] = existing[instance.id]
                continue
            try:
                answer = ec2.create_snapshots(
                    Description=f"PatchPilot {command.id} {instance.id}"[:255],
                    InstanceSpecification={"InstanceId": instance.id, "ExcludeBootVolume": False},
                    TagSpecifications=[
                        {
                            "ResourceType": "snapshot",
                            "Tags": [
                                {"Key": TAG_RUN, "Value": command.run_id},
                                {"Key": TAG_WAVE, "Value": "" if command.wave is None else str(command.wave)},
                                {"Key": TAG_COMMAND, "Value": command.id},
                                {"Key": TAG_INSTANCE, "Value": instance.id},
                            ],
                        }
                    ],
                    CopyTagsFromSource="volume",
                )
            except ClientError as exc:
                errors[instance.id] = f"CreateSnapshots failed: {describe_error(exc)}"
                continue
            if not answer.get("Snapshots"):
                errors[instance.id] = "CreateSnapshots made no snapshot: the instance has no EBS volume"
                continue
            created.add(instance.id)
    pending = [
        i.id
        for i in targets
        if i.id in created
        or (i.id not in errors and not _snapshot_error(snapshots.get(i.id, [])) and not _all_completed(snapshots, i))
    ]
    if pending:
        done = len(targets) - len(pending)
        return InProgress(now + SNAPSHOT_POLL, note=f"snapshots: {done}/{len(targets)} instances done")
    order = _volume_order(access, [i for i in targets if _all_completed(snapshots, i)])
    outcomes = []
    for instance in targets:
        own = snapshots.get(instance.id, [])
        failure = errors.get(instance.id) or _snapshot_error(own)
        if failure:
            outcomes.append(Outcome(id=instance.id, ok=False, detail=failure, at=now))
            continue
        rank = order.get(instance.id, {})
        own = sorted(own, key=lambda s: (rank.get(s.get("VolumeId", ""), (2, "")), s.get("SnapshotId", "")))
        ids = [s["SnapshotId"] for s in own]
        root_found = any(rank.get(s.get("VolumeId", ""), (2, ""))[0] == 0 for s in own)
        volumes = plural(len(ids), "volume")
        detail = f"snapshotted {volumes}" + ("" if root_found else " (root volume not identified)")
        outcomes.append(Outcome(id=instance.id, ok=True, detail=detail, items=ids, at=now))
    return outcomes


def _command_snapshots(ec2: EC2Client, command_id: str) -> dict[str, list[SnapshotTypeDef]]:
    """This command's snapshots in one account and region, by instance id."""
    pages = ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"],
        Filters=[{"Name": f"tag:{TAG_COMMAND}", "Values": [command_id]}],
        PaginationConfig={"PageSize": 1000},
    )
    found: dict[str, list[SnapshotTypeDef]] = {}
    for page in pages:
        for snapshot in page.get("Snapshots", []):
            tags = tags_of(snapshot.get("Tags"))
            if tags.get(TAG_COMMAND) == command_id and TAG_INSTANCE in tags:
                found.setdefault(tags[TAG_INSTANCE], []).append(snapshot)
    return found


def _volume_order(access: AwsAccess, instances: Sequence[Instance]) -> dict[str, dict[str, tuple[int, str]]]:
    """Per instance, each attached volume's sort key: the root volume first, then by device."""
    order: dict[str, dict[str, tuple[int, str]]] = {}
    for placement, group in by_placement(instances, lambda i: i).items():
        for raw in access.describe_instances(access.ec2(placement), [i.id for i in group]).values():
            root = raw.get("RootDeviceName")
            ranks: dict[str, tuple[int, str]] = {}
            for mapping in raw.get("BlockDeviceMappings", []):
                volume = mapping.get("Ebs", {}).get("VolumeId")
                device = mapping.get("DeviceName", "")
                if volume:
                    ranks[volume] = (0 if device == root else 1, device)
            order[raw.get("InstanceId", "")] = ranks
    return order


def _snapshot_error(snapshots: Sequence[SnapshotTypeDef]) -> str:
    for snapshot in snapshots:
        if snapshot.get("State") == "error":
            message = snapshot.get("StateMessage") or "no reason given"
            return f"snapshot {snapshot.get('SnapshotId', '?')} failed: {message}"
    return ""


def _all_completed(snapshots: dict[str, list[SnapshotTypeDef]], instance: Instance) -> bool:
    own = snapshots.get(instance.id, [])
    return bool(own) and all(s.get("State") == "completed" for s in own)
