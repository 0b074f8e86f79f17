"""Discovery of the policy's EC2 instances (with their Auto Scaling group, always, and their traffic
pools, the ELBv2 target groups they are registered in, when the policy sets `rollout.pool_budget`
or `traffic.drain`) and the probe of their SSM agents."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from patchpilot.batching import unique
from patchpilot.engine.messages import Outcome, ProbeAgents
from patchpilot.inventory import Instance, OsFamily
from patchpilot.policy.model import Policy
from patchpilot.ports import DiscoveryResult, Progress

from ..access import Addresses, AwsAccess, Placement, addresses_of, agent_problem, by_placement, instance_state, tags_of
from ..accounts import fleet_accounts

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import FilterTypeDef, InstanceTypeDef
    from mypy_boto3_elbv2.type_defs import TargetGroupTypeDef, TargetHealthDescriptionTypeDef
    from mypy_boto3_ssm.type_defs import InstanceInformationTypeDef


def discover(access: AwsAccess, policy: Policy) -> DiscoveryResult:
    """The policy's AWS instances (running or stopped) in its accounts and regions, each
    marked unreachable when its SSM agent is offline or it is not a managed instance. With
    `rollout.pool_budget` or `traffic.drain` each instance's `traffic_pools` are the target groups it is in
    (`AwsAccess.target_groups`: a refusal raises `PoolsUnreadableError`, never "no pools"). Each
    instance's `scaling_group` is its Auto Scaling group's name, always read (a member patched in
    place could be replaced while it reboots): a refusal raises `ScalingGroupsUnreadableError`.
    The accounts are `fleet_accounts`: with `aws.organization`, its units' members are listed
    again on each discovery (a refused Organizations read raises `DiscoveryReadRefusedError`).
    With `stopped_machines: start` a stopped managed instance is not unreachable: its `power` is
    "stopped", and the run starts it for its wave."""
    settings = policy.aws
    regions = list(settings.regions) if settings and settings.regions else [access.default_region]
    accounts = fleet_accounts(access.client_factory, settings, access.default_region)
    found: list[Instance] = []
    unreachable: list[tuple[Instance, str]] = []
    for account in accounts:
        for region in regions:
            queries = _discovery_queries(policy, region)
            if not queries:
                continue
            placement = (account, region)
            instances = _describe_for_discovery(access, placement, queries)
            if instances:
                instances = _with_scaling_groups(access, placement, instances)
            if policy.reads_pools and instances:
                instances = _with_pools(access, placement, instances)
            agents = access.agents(placement, [i.id for i, _, _ in instances])
            for instance, state, _ in instances:
                info = agents.get(instance.id)
                if state == "stopped" and info is not None and policy.stopped_machines == "start":
                    found.append(dataclasses.replace(instance, power="stopped"))  # started for its wave
                    continue
                found.append(instance)
                reason = agent_problem(info)
                if reason is not None:
                    if state != "running":
                        reason = f"instance {state}; {reason}"
                    unreachable.append((instance, reason))
    return DiscoveryResult(found, unreachable)


Discovered = tuple[Instance, str, Addresses]  # the instance, its state, where it listens


def _describe_for_discovery(
    access: AwsAccess, placement: Placement, queries: list[list[FilterTypeDef]]
) -> list[Discovered]:
    ec2 = access.ec2(placement)
    seen: dict[str, Discovered] = {}
    for filters in queries:
        pages = ec2.get_paginator("describe_instances").paginate(Filters=filters, PaginationConfig={"PageSize": 1000})
        for page in pages:
            for reservation in page.get("Reservations", []):
                owner = reservation.get("OwnerId") or placement[0]
                for raw in reservation.get("Instances", []):
                    instance_id = raw.get("InstanceId", "")
                    if instance_id and instance_id not in seen:
                        seen[instance_id] = (
                            _to_instance(raw, placement[1], owner),
                            instance_state(raw),
                            addresses_of(raw),
                        )
    return [seen[key] for key in sorted(seen)]


def _with_scaling_groups(access: AwsAccess, placement: Placement, found: list[Discovered]) -> list[Discovered]:
    """The instances with their `scaling_group`: the name of the Auto Scaling group that holds them."""
    groups = access.scaling_groups(placement, [i.id for i, _, _ in found])
    return [
        (dataclasses.replace(instance, scaling_group=groups.get(instance.id)), state, addresses)
        for instance, state, addresses in found
    ]


def _with_pools(access: AwsAccess, placement: Placement, found: list[Discovered]) -> list[Discovered]:
    """The instances with their `traffic_pools`: the ARNs of the target groups that hold them."""
    pools = pools_of(found, access.target_groups(placement))
    return [
        (dataclasses.replace(instance, traffic_pools=tuple(pools.get(instance.id, ()))), state, addresses)
        for instance, state, addresses in found
    ]


def pools_of(
    found: Sequence[Discovered],
    target_groups: Sequence[tuple[TargetGroupTypeDef, Sequence[TargetHealthDescriptionTypeDef]]],
) -> dict[str, list[str]]:
    """Target group ARNs by instance id, in ARN order. An instance target names the instance; an
    IP target names a private IP of an instance in the target group's VPC, or (a target outside
    that VPC, a peered one) of the one discovered instance of the region with that IP."""
    in_vpc = {(a.vpc, ip): i.id for i, _, a in found for ip in a.ips}
    holders: dict[str, set[str]] = {}
    for instance, _, addresses in found:
        for ip in addresses.ips:
            holders.setdefault(ip, set()).add(instance.id)
    known = {i.id for i, _, _ in found}
    pools: dict[str, list[str]] = {}
    for target_group, targets in target_groups:
        arn = target_group.get("TargetGroupArn", "")
        members: set[str] = set()
        for description in targets:
            target = description.get("Target", {}).get("Id", "")
            if target_group.get("TargetType") == "instance":
                member = target if target in known else None
            else:
                others = holders.get(target, set())
                member = in_vpc.get((target_group.get("VpcId", ""), target)) or (
                    next(iter(others)) if len(others) == 1 else None
                )
            if member is not None:
                members.add(member)
        for member in sorted(members):
            pools.setdefault(member, []).append(arn)
    return pools


def probe_agents(access: AwsAccess, command: ProbeAgents) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda i: i.id)
    agents: dict[str, InstanceInformationTypeDef] = {}
    for placement, instances in by_placement(targets, lambda i: i).items():
        agents.update(access.agents(placement, [i.id for i in instances]))
    outcomes = []
    for instance in targets:
        info = agents.get(instance.id)
        problem = agent_problem(info)
        if problem is None:
            version = (info or {}).get("AgentVersion")
            detail = f"SSM agent online (agent {version})" if version else "SSM agent online"
            outcomes.append(Outcome(id=instance.id, ok=True, detail=detail, at=now))
        else:
            outcomes.append(Outcome(id=instance.id, ok=False, detail=problem, at=now))
    return outcomes


# Kernel Live Patching on Amazon Linux, as the operator declares it with a tag (docs/governance.md,
# "Hotpatch and stopped machines"): DescribeInstances returns tags at no extra call, where SSM
# Inventory (GetInventory on kpatch-runtime) would add a call per region and an IAM action.
TAG_LIVE_PATCH = "PatchPilotLivePatch"
LIVE_PATCH_ON = frozenset({"enabled", "true", "yes", "on"})


def live_patching(tags: dict[str, str]) -> bool:
    """Whether the instance's tags say Kernel Live Patching is enabled on it."""
    return tags.get(TAG_LIVE_PATCH, "").strip().lower() in LIVE_PATCH_ON


def _to_instance(raw: InstanceTypeDef, region: str, account: str | None) -> Instance:
    tags = tags_of(raw.get("Tags"))
    platform = (raw.get("Platform") or "").lower()
    details = (raw.get("PlatformDetails") or "").lower()
    os: OsFamily = "windows" if platform == "windows" or details.startswith("windows") else "linux"
    return Instance(
        id=raw.get("InstanceId", ""),
        cloud="aws",
        region=region,
        os=os,
        name=tags.get("Name", ""),
        zone=raw.get("Placement", {}).get("AvailabilityZone") or None,
        tags=tags,
        account=account,
        hotpatch=os == "linux" and live_patching(tags),
    )


def _discovery_queries(policy: Policy, region: str) -> list[list[FilterTypeDef]]:
    """DescribeInstances filter sets whose union covers every ring's selector in this region
    (EC2 filters AND, so rings are separate queries); one unfiltered query when a ring selects
    by something EC2 cannot filter on (OS only, say)."""
    state: FilterTypeDef = {"Name": "instance-state-name", "Values": ["running", "stopped"]}
    queries: list[list[FilterTypeDef]] = []
    for ring in policy.rings:
        select = ring.select
        if select.clouds and "aws" not in select.clouds:
            continue
        if select.regions and region not in select.regions:
            continue
        filters: list[FilterTypeDef] = [state]
        for key, values in sorted(select.tags.items()):
            filters.append({"Name": f"tag:{key}", "Values": ["*"] if "*" in values else list(values)})
        if select.ids:
            filters.append({"Name": "instance-id", "Values": list(select.ids)})
        if len(filters) == 1:
            return [[state]]
        if filters not in queries:
            queries.append(filters)
    return queries
