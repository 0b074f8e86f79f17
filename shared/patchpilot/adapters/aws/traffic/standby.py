"""Auto Scaling Standby around an install (`scaling_groups: standby`): a member enters Standby with
its group's desired capacity decremented (the group neither replaces it while it reboots nor
launches another) and exits it after its health checks (the desired capacity goes back up).
DescribeAutoScalingInstances 50 ids a call; EnterStandby / ExitStandby one call per group and 20
instances."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from patchpilot.batching import chunks
from patchpilot.inventory import Instance

from ..access import ASG_IDS_PER_CALL, AwsAccess, Placement
from .outcomes import State, fail_all, refusal

STANDBY = "standby"  # the items' prefix: `standby|<group name>`
STANDBY_IDS_PER_CALL = 20  # EnterStandby / ExitStandby InstanceIds (the API reference's limit)


def move(
    access: AwsAccess,
    placement: Placement,
    instances: Sequence[Instance],
    states: dict[str, State],
    *,
    enter: bool,
    wait: bool = True,
) -> None:
    """Into Standby (`enter`, desired capacity decremented) or back to InService."""
    autoscaling: Any = access.client("autoscaling", placement)
    try:
        members = lifecycles(autoscaling, [i.id for i in instances])
    except ClientError as exc:
        where = instances[0].scaling_group or placement[1]
        fail_all(instances, states, refusal("autoscaling", "DescribeAutoScalingInstances", where, exc))
        return
    goal, moving, action = (
        ("Standby", "EnteringStandby", "EnterStandby") if enter else ("InService", "Pending", "ExitStandby")
    )
    start = "InService" if enter else "Standby"
    to_move: dict[str, list[str]] = {}
    for instance in instances:
        state = states[instance.id]
        lifecycle, group_of = members.get(instance.id, ("", ""))
        if not lifecycle:
            state.notes.append("no longer in an Auto Scaling group")
        elif lifecycle == goal:
            state.notes.append(f"{goal} in {group_of}")
            if enter:
                state.items.append(f"{STANDBY}|{group_of}")
        elif lifecycle == start:
            to_move.setdefault(group_of, []).append(instance.id)
        elif lifecycle.startswith(("Pending", "EnteringStandby")):
            state.waiting.append(f"{instance.id} {lifecycle} in {group_of}")
        else:
            state.fail(f"cannot {'enter' if enter else 'leave'} Standby: instance is {lifecycle} in {group_of}")
    for group_of, ids in sorted(to_move.items()):
        for chunk in chunks(sorted(ids), STANDBY_IDS_PER_CALL):
            try:
                if enter:
                    autoscaling.enter_standby(
                        InstanceIds=chunk, AutoScalingGroupName=group_of, ShouldDecrementDesiredCapacity=True
                    )
                else:
                    autoscaling.exit_standby(InstanceIds=chunk, AutoScalingGroupName=group_of)
            except ClientError as exc:
                for instance_id in chunk:
                    states[instance_id].fail(refusal("autoscaling", action, group_of, exc))
                continue
            for instance_id in chunk:
                state = states[instance_id]
                if enter:
                    state.waiting.append(f"{instance_id} {moving} in {group_of}")
                else:
                    state.items.append(f"{STANDBY}|{group_of}")
                    if wait:
                        state.waiting.append(f"{instance_id} {moving} in {group_of}")
                    else:
                        state.notes.append(f"out of Standby in {group_of}")


def lifecycles(autoscaling: Any, instance_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(lifecycle state, group name) of each of `instance_ids` in a group: 50 ids a call, paged."""
    result: dict[str, tuple[str, str]] = {}
    for chunk in chunks(sorted(set(instance_ids)), ASG_IDS_PER_CALL):
        pages = autoscaling.get_paginator("describe_auto_scaling_instances").paginate(
            InstanceIds=chunk, PaginationConfig={"PageSize": ASG_IDS_PER_CALL}
        )
        for page in pages:
            for member in page.get("AutoScalingInstances", []):
                result[str(member["InstanceId"])] = (str(member["LifecycleState"]), str(member["AutoScalingGroupName"]))
    return result
