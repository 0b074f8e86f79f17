"""Machines found stopped (policy `stopped_machines: start`): StartInstances for the wave,
StopInstances to return them. Each call reads the states first (one DescribeInstances per
placement), so a redelivery or a run-end sweep starts or stops nothing twice."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from patchpilot.batching import chunks
from patchpilot.engine.messages import Outcome, ReturnMachines, StartMachines
from patchpilot.inventory import Instance
from patchpilot.ports import InProgress, Progress

from ..access import AwsAccess, by_placement, describe_error, instance_state

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

POWER_POLL = timedelta(seconds=30)
IDS_PER_CALL = 1000  # DescribeInstances, StartInstances and StopInstances take many ids
_MOVING = {"pending", "stopping", "shutting-down"}


def start_machines(access: AwsAccess, command: StartMachines) -> Progress:
    return _converge(access, command.targets, "running")


def return_machines(access: AwsAccess, command: ReturnMachines) -> Progress:
    """`deallocated` has no AWS meaning: both return to `stopped`."""
    return _converge(access, command.targets, "stopped")


def _converge(access: AwsAccess, targets: Sequence[Instance], wanted: str) -> Progress:
    now = access.clock.now()
    outcomes: dict[str, Outcome] = {}
    waiting = False
    for placement, instances in by_placement(targets, lambda i: i).items():
        ec2 = access.ec2(placement)
        ids = [i.id for i in instances]
        try:
            states = _states(ec2, ids)
        except ClientError as exc:
            for i in ids:
                outcomes[i] = Outcome(id=i, ok=False, detail=f"DescribeInstances failed: {describe_error(exc)}", at=now)
            continue
        to_move = []
        for i in ids:
            state = states.get(i)
            if state is None:
                outcomes[i] = Outcome(id=i, ok=False, detail="instance not found", at=now)
            elif state == wanted:
                outcomes[i] = Outcome(id=i, ok=True, detail=f"instance {wanted}", at=now)
            elif state == "terminated":
                outcomes[i] = Outcome(id=i, ok=False, detail="instance terminated", at=now)
            elif state not in _MOVING:  # a stopped one to start, a running one to stop
                to_move.append(i)
        for chunk in chunks(to_move, IDS_PER_CALL):
            try:
                if wanted == "running":
                    ec2.start_instances(InstanceIds=list(chunk))
                else:
                    ec2.stop_instances(InstanceIds=list(chunk))
            except ClientError as exc:
                action = "StartInstances" if wanted == "running" else "StopInstances"
                for i in chunk:
                    outcomes[i] = Outcome(id=i, ok=False, detail=f"{action} failed: {describe_error(exc)}", at=now)
        if any(i not in outcomes for i in ids):
            waiting = True
    if waiting:
        done = len(outcomes)
        return InProgress(now + POWER_POLL, note=f"{wanted}: {done}/{len(targets)} instances done")
    return [outcomes[t.id] for t in targets]


def _states(ec2: EC2Client, ids: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for chunk in chunks(list(ids), IDS_PER_CALL):
        pages = ec2.get_paginator("describe_instances").paginate(InstanceIds=list(chunk))
        for page in pages:
            for reservation in page.get("Reservations", []):
                for raw in reservation.get("Instances", []):
                    found[raw.get("InstanceId", "")] = instance_state(raw)
    return found
