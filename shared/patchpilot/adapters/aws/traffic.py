"""ELBv2 target groups and Auto Scaling Standby around an install: `Elbv2Traffic`, the AWS
`TrafficPools` (docs/traffic.md). Nothing is kept between two calls but what AWS holds (and one
tag, below): each execution reads before it writes, so a redelivered command, or one run again
after a crash, changes nothing twice. A machine already out is not deregistered again, one already
back not registered again, one already in (or out of) Standby not moved again.

Leave, per (account, region): the target groups of the targets' `traffic_pools` are described once
(DescribeTargetGroups, 20 ARNs a call), the machines once (DescribeInstances: their private IPs and
PatchPilot's mark), each group's targets read once (DescribeTargetHealth without a target list:
every port a machine is registered on; an IP target is matched to the machine holding that private
IP, as discovery matches it), a registration its default would not restore is marked on the machine
(below), and ONE DeregisterTargets per target group takes out this command's machines still
registered. Each poll reads the groups again: a registration still listed as `draining` is under
way, one no longer listed (`unused`) is drained. With `standby`, each Auto Scaling member is read
(DescribeAutoScalingInstances, 50 ids a call) and, InService, put into Standby with its group's
desired capacity decremented (EnterStandby, one call per group and 20 instances); `EnteringStandby`
is under way, `Standby` done. Without a `timeout`, the adapter keeps the default deadline itself:
`issued_at` + the largest `deregistration_delay.timeout_seconds` of the machine's target groups
(DescribeTargetGroupAttributes, read only while it drains; 300 s, ELBv2's default, for a
Standby-only member) + 60 s.

Rejoin: with `standby`, ExitStandby for members in Standby (the group's desired capacity goes back
up), waiting for InService; then per target group ONE RegisterTargets of the machines'
registrations (from `registrations`) that are not listed again (`draining` counts as out); with
`pool_health`, under way until each is `healthy` (`unavailable`, health checks disabled, and a
group no load balancer uses count as healthy), the target health's reason and description in the
note. The run-end sweep (`at_run_end`) waits for neither (the run is over, and a load balancer
sends no traffic to a target before it is healthy): its outcome names what it put back. A member
found in Standby when it leaves is reported as such and taken out of Standby when it rejoins.

Items, this adapter's own words:
- a LeavePools outcome: `<target group ARN>|<target id>|<port>|<availability zone or ->` per
  registration of the machine, and `standby|<group name>` for a member left in Standby. ELBv2
  lists a registration only until it has drained, so before deregistering, a machine whose
  registrations differ from the default one (its instance id, for an IP target group its primary
  private IP, on the group's port, no zone) gets them in its tag `PatchPilotDrained` (`<command
  token> <pool index>=<target>/<port>/<zone>,...`, one CreateTags per distinct value: none in the
  usual case); a registration no longer listed is then recorded from that mark, else as the default.
- `RejoinPools.registrations`: those strings. A target group of the machine's `traffic_pools`
  that they do not name gets the same default registration.
- a RejoinPools outcome: the target group ARNs this execution registered the machine in again, and
  `standby|<group name>` when it took the machine out of Standby (empty when it was already back).

A refused call (AccessDenied) fails the machines it concerns, naming the permission; it is never
read as "drained" or "healthy". A machine without pools (nor, with `standby`, a scaling group) is
ok with no items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from patchpilot.batching import chunks, group, unique
from patchpilot.engine.messages import LeavePools, Outcome, RejoinPools
from patchpilot.inventory import Instance
from patchpilot.ports import Clock, InProgress, Progress
from patchpilot.wording import plural, spoken_duration

from .access import (
    ASG_IDS_PER_CALL,
    TAG_DRAINED,
    TAG_VALUE_MAX,
    Addresses,
    AwsAccess,
    Placement,
    addresses_of,
    by_placement,
    describe_error,
    error_code,
    short_token,
    tags_of,
)
from .sessions import ClientFactory

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client
    from mypy_boto3_elbv2.type_defs import TargetDescriptionTypeDef, TargetHealthDescriptionTypeDef

POLL = timedelta(seconds=30)
DRAIN_MARGIN = timedelta(seconds=60)  # past the deregistration delay before "still draining" fails
DEFAULT_DELAY = timedelta(seconds=300)  # ELBv2's default deregistration delay
GROUPS_PER_CALL = 20  # DescribeTargetGroups TargetGroupArns
STANDBY_IDS_PER_CALL = 20  # EnterStandby / ExitStandby InstanceIds
STANDBY = "standby"
DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
HEALTHY = frozenset({"healthy", "unavailable"})  # unavailable: the group's health checks are disabled


@dataclasses.dataclass(frozen=True)
class Registration:
    """One target of one target group, as ELBv2 registers it."""

    group: str  # the target group's ARN
    target: str  # an instance id, or a private IP for an IP target group
    port: int | None = None
    zone: str | None = None  # "all" for an IP outside the group's VPC

    @property
    def item(self) -> str:
        return f"{self.group}|{self.target}|{self.port if self.port is not None else '-'}|{self.zone or '-'}"

    @classmethod
    def parse(cls, item: str) -> Registration | None:
        """The registration an item names; None for any other item (a `standby|` one)."""
        parts = item.split("|")
        if len(parts) != 4 or not parts[0].startswith("arn:"):
            return None
        arn, target, port, zone = parts
        return cls(arn, target, int(port) if port.isdigit() else None, None if zone == "-" else zone)

    def description(self) -> TargetDescriptionTypeDef:
        described: TargetDescriptionTypeDef = {"Id": self.target}
        if self.port is not None:
            described["Port"] = self.port
        if self.zone is not None:
            described["AvailabilityZone"] = self.zone
        return described


@dataclasses.dataclass(frozen=True)
class TargetGroup:
    arn: str
    kind: str  # "instance" or "ip"
    port: int | None
    vpc: str

    @property
    def name(self) -> str:
        return group_name(self.arn)


def group_name(arn: str) -> str:
    """`tg-web` for `arn:...:targetgroup/tg-web/0123abcd`."""
    return arn.split(":targetgroup/", 1)[-1].split("/", 1)[0]


@dataclasses.dataclass
class _State:
    """What one execution learnt about one machine."""

    items: list[str] = dataclasses.field(default_factory=list)
    pools: list[str] = dataclasses.field(default_factory=list)  # the target groups its outcome names
    notes: list[str] = dataclasses.field(default_factory=list)  # its scaling group, for the outcome
    waiting: list[str] = dataclasses.field(default_factory=list)
    draining_in: list[str] = dataclasses.field(default_factory=list)  # target group ARNs still draining it
    retry_by: datetime | None = None  # the default deadline of its drain
    failed: str | None = None

    def fail(self, why: str) -> None:
        self.failed = self.failed or why


def refusal(service: str, action: str, where: str, exc: ClientError) -> str:
    """A refused call, in one line naming the action and, when IAM refused it, the permission."""
    text = f"{action} failed on {where} ({describe_error(exc)})"
    return f"{text}: needs {service}:{action}" if error_code(exc) in DENIED else text


class Elbv2Traffic:
    """A `TrafficPools` over ELBv2 target groups and Auto Scaling Standby (see the module's docstring)."""

    def __init__(self, client: ClientFactory, clock: Clock, *, default_region: str = "us-east-1") -> None:
        """`client` builds boto3 clients per (service, account, region) (see `AwsSessions`)."""
        self.access = AwsAccess(client, clock, default_region=default_region)

    def leave_pools(self, command: LeavePools) -> Progress:
        now = self.access.clock.now()
        targets = unique(command.targets, lambda i: i.id)
        states = {i.id: _State() for i in targets}
        for placement, instances in by_placement(targets, lambda i: i).items():
            pooled = [i for i in instances if i.traffic_pools]
            if pooled:
                self._drain(placement, pooled, states, short_token(command.id))
            members = [i for i in instances if command.standby and i.scaling_group]
            if members:
                self._standby(placement, members, states, enter=True)
            if command.timeout is None:
                self._past_default_deadline(placement, instances, states, command.issued_at, now)
        return _progress(targets, states, now, "left")

    def rejoin_pools(self, command: RejoinPools) -> Progress:
        now = self.access.clock.now()
        targets = unique(command.targets, lambda i: i.id)
        states = {i.id: _State() for i in targets}
        wait = not command.at_run_end
        for placement, instances in by_placement(targets, lambda i: i).items():
            members = [i for i in instances if command.standby and i.scaling_group]
            if members:
                self._standby(placement, members, states, enter=False, wait=wait)
            pooled = [i for i in instances if i.traffic_pools or _registrations(command, i.id)]
            if pooled:
                self._register(placement, pooled, command, states, pool_health=command.pool_health and wait)
        return _progress(targets, states, now, "back in")

    # ------------------------------------------------------------ target groups

    def _drain(
        self, placement: Placement, instances: Sequence[Instance], states: dict[str, _State], token: str
    ) -> None:
        """Read every target group once, mark the registrations a default could not restore, then
        ONE DeregisterTargets per target group for the machines still registered there."""
        elbv2 = self.access.elbv2(placement)
        arns = sorted({arn for i in instances for arn in i.traffic_pools})
        try:
            groups = _describe_groups(elbv2, arns)
        except ClientError as exc:
            _fail(instances, states, refusal("elasticloadbalancing", "DescribeTargetGroups", arns[0], exc))
            return
        ec2 = self.access.ec2(placement)
        described = self.access.describe_instances(ec2, [i.id for i in instances])
        holder = _Holders({i.id: i for i in instances}, {k: addresses_of(raw) for k, raw in described.items()})
        marked = {
            i.id: _marks(tags_of(described[i.id].get("Tags")).get(TAG_DRAINED, ""), token, i)
            for i in instances
            if i.id in described
        }
        seen: dict[str, dict[str, list[TargetHealthDescriptionTypeDef]]] = {}
        for arn in arns:
            target_group = groups.get(arn)
            members = [i for i in instances if arn in i.traffic_pools and states[i.id].failed is None]
            if target_group is None or not members:
                continue  # a deleted target group holds nobody
            try:
                listed = elbv2.describe_target_health(TargetGroupArn=arn).get("TargetHealthDescriptions", [])
            except ClientError as exc:
                _fail(members, states, refusal("elasticloadbalancing", "DescribeTargetHealth", target_group.name, exc))
                continue
            seen[arn] = _seen(target_group, members, listed, holder)
        self._mark(ec2, instances, groups, seen, holder, marked, token, states)
        for arn, by_member in seen.items():
            target_group = groups[arn]
            members = [i for i in instances if i.id in by_member and states[i.id].failed is None]
            removing = [d for m in members for d in by_member[m.id] if _state(d) != "draining"]
            if removing:
                try:
                    elbv2.deregister_targets(TargetGroupArn=arn, Targets=[d["Target"] for d in removing])
                except ClientError as exc:
                    failing = [m for m in members if any(_state(d) != "draining" for d in by_member[m.id])]
                    _fail(failing, states, refusal("elasticloadbalancing", "DeregisterTargets", target_group.name, exc))
            for member in members:
                state = states[member.id]
                listed_now = [_registration(arn, d["Target"]) for d in by_member[member.id]]
                default = holder.default(target_group, member)
                kept = [r for r in marked.get(member.id, []) if r.group == arn]
                state.items += [r.item for r in listed_now or kept or ([default] if default else [])]
                if listed_now:
                    state.waiting.append(f"{member.id} draining from {target_group.name}")
                    state.draining_in.append(arn)
                else:
                    state.pools.append(target_group.name)

    def _mark(
        self,
        ec2: EC2Client,
        instances: Sequence[Instance],
        groups: dict[str, TargetGroup],
        seen: dict[str, dict[str, list[TargetHealthDescriptionTypeDef]]],
        holder: _Holders,
        marked: dict[str, list[Registration]],
        token: str,
        states: dict[str, _State],
    ) -> None:
        """Before anything is deregistered: tag each machine (PatchPilotDrained) with the
        registrations of it that its default one would not restore (another port, a secondary IP,
        an availability zone), so that they are known once drained; one CreateTags per distinct
        value, none in the usual case (every registration the default)."""
        values: dict[str, list[str]] = {}
        for instance in instances:
            unusual = [
                registration
                for arn, by_member in seen.items()
                for registration in (_registration(arn, d["Target"]) for d in by_member.get(instance.id, []))
                if registration != holder.default(groups[arn], instance)
            ]
            if unusual and not set(unusual) <= set(marked.get(instance.id, [])) and states[instance.id].failed is None:
                every = list(dict.fromkeys([*marked.get(instance.id, []), *unusual]))
                values.setdefault(_mark_value(token, instance, every), []).append(instance.id)
        for value, ids in sorted(values.items()):
            try:
                ec2.create_tags(Resources=ids, Tags=[{"Key": TAG_DRAINED, "Value": value}])
            except ClientError as exc:
                for instance_id in ids:
                    states[instance_id].fail(refusal("ec2", "CreateTags", f"{instance_id} ({TAG_DRAINED})", exc))

    def _register(
        self,
        placement: Placement,
        instances: Sequence[Instance],
        command: RejoinPools,
        states: dict[str, _State],
        *,
        pool_health: bool,
    ) -> None:
        elbv2 = self.access.elbv2(placement)
        wanted = {i.id: [r for r in map(Registration.parse, _registrations(command, i.id)) if r] for i in instances}
        lacking = sorted({a for i in instances for a in i.traffic_pools if a not in {r.group for r in wanted[i.id]}})
        if lacking:  # machines without a recorded registration there: the default one
            try:
                groups = _describe_groups(elbv2, lacking)
            except ClientError as exc:
                _fail(instances, states, refusal("elasticloadbalancing", "DescribeTargetGroups", lacking[0], exc))
                return
            holder = self._holders(placement, instances, groups)
            for instance in instances:
                for arn in instance.traffic_pools:
                    target_group = groups.get(arn)
                    default = holder.default(target_group, instance) if target_group else None
                    if default is not None and arn in lacking and all(r.group != arn for r in wanted[instance.id]):
                        wanted[instance.id].append(default)
        by_group = group([(i, r) for i in instances for r in wanted[i.id]], lambda pair: pair[1].group)
        for arn in sorted(by_group):
            pairs = [(i, r) for i, r in by_group[arn] if states[i.id].failed is None]
            name = group_name(arn)
            try:
                listed = elbv2.describe_target_health(TargetGroupArn=arn).get("TargetHealthDescriptions", [])
            except ClientError as exc:
                _fail([i for i, _ in pairs], states, refusal("elasticloadbalancing", "DescribeTargetHealth", name, exc))
                continue
            found = {r: _listed(r, listed) for _, r in pairs}
            missing = [(i, r) for i, r in pairs if _out(found[r])]
            if missing:
                try:
                    elbv2.register_targets(TargetGroupArn=arn, Targets=[r.description() for _, r in missing])
                except ClientError as exc:
                    _fail(
                        unique((i for i, _ in missing), lambda i: i.id),
                        states,
                        refusal("elasticloadbalancing", "RegisterTargets", name, exc),
                    )
                    continue
            added = {i.id for i, _ in missing}
            for instance, registration in pairs:
                state = states[instance.id]
                if instance.id in added and arn not in state.items:
                    state.items.append(arn)
                described = found[registration]
                if not pool_health:
                    state.pools.append(name)
                elif instance.id in added or described is None:
                    state.waiting.append(f"{instance.id} in {name}: registered, health not reported yet")
                elif _pool_healthy(described):
                    state.pools.append(f"{name} ({_state(described)})")
                else:
                    state.waiting.append(f"{instance.id} in {name}: {_health_text(described)}")

    def _holders(self, placement: Placement, instances: Sequence[Instance], groups: dict[str, TargetGroup]) -> _Holders:
        """Who the targets of `groups` are among `instances` (EC2 described only for an IP target group)."""
        by_id = {i.id: i for i in instances}
        if not any(g.kind == "ip" for g in groups.values()):
            return _Holders(by_id, {})
        described = self.access.describe_instances(self.access.ec2(placement), list(by_id))
        return _Holders(by_id, {key: addresses_of(raw) for key, raw in described.items()})

    def _past_default_deadline(
        self,
        placement: Placement,
        instances: Sequence[Instance],
        states: dict[str, _State],
        issued_at: datetime,
        now: datetime,
    ) -> None:
        """Fail each machine still draining past `issued_at` + its groups' largest deregistration
        delay + 60 s (300 s for a Standby-only member): the default deadline, without a `timeout`."""
        waiting = [i for i in instances if states[i.id].waiting and states[i.id].failed is None]
        if not waiting:
            return
        elbv2 = self.access.elbv2(placement)
        delays: dict[str, timedelta] = {}
        for instance in waiting:
            state = states[instance.id]
            try:
                for arn in instance.traffic_pools:
                    if arn not in delays:
                        delays[arn] = _deregistration_delay(elbv2, arn)
            except ClientError as exc:
                state.fail(refusal("elasticloadbalancing", "DescribeTargetGroupAttributes", group_name(arn), exc))
                continue
            delay = max((delays[a] for a in instance.traffic_pools), default=DEFAULT_DELAY)
            if now >= issued_at + delay + DRAIN_MARGIN:
                names = ", ".join(group_name(a) for a in state.draining_in) or "Standby"
                state.fail(
                    f"still draining after {spoken_duration(now - issued_at)} (deregistration delay "
                    f"{spoken_duration(delay)} + {spoken_duration(DRAIN_MARGIN)}): {names}"
                )
            else:
                state.retry_by = issued_at + delay + DRAIN_MARGIN

    # ------------------------------------------------------------ Auto Scaling Standby

    def _standby(
        self,
        placement: Placement,
        instances: Sequence[Instance],
        states: dict[str, _State],
        *,
        enter: bool,
        wait: bool = True,
    ) -> None:
        """Into Standby (`enter`, desired capacity decremented) or back to InService."""
        autoscaling: Any = self.access.client("autoscaling", placement)
        try:
            members = _lifecycle(autoscaling, [i.id for i in instances])
        except ClientError as exc:
            where = instances[0].scaling_group or placement[1]
            _fail(instances, states, refusal("autoscaling", "DescribeAutoScalingInstances", where, exc))
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


# ---------------------------------------------------------------- reads and answers


@dataclasses.dataclass(frozen=True)
class _Holders:
    """Which machine a target of a group names: an instance id; for an IP target group, a private
    IP of a machine in the group's VPC, else of the one machine holding it (as discovery matches)."""

    by_id: dict[str, Instance]
    addresses: dict[str, Addresses]

    def __call__(self, target_group: TargetGroup, target: str) -> Instance | None:
        if target_group.kind == "instance":
            return self.by_id.get(target)
        holding = sorted(key for key, a in self.addresses.items() if target in a.ips)
        in_vpc = [key for key in holding if self.addresses[key].vpc == target_group.vpc]
        chosen = in_vpc or holding
        return self.by_id.get(chosen[0]) if len(chosen) == 1 else None

    def default(self, target_group: TargetGroup, instance: Instance) -> Registration | None:
        """How ELBv2 registers a machine by default: its id (IP group: primary private IP), the group's port."""
        if target_group.kind == "instance":
            return Registration(target_group.arn, instance.id, target_group.port)
        address = self.addresses.get(instance.id)
        return (
            Registration(target_group.arn, address.primary, target_group.port) if address and address.primary else None
        )


def _describe_groups(elbv2: ElasticLoadBalancingv2Client, arns: Sequence[str]) -> dict[str, TargetGroup]:
    """The target groups among `arns` that still exist, 20 a call (one by one when a call names
    one that was deleted: it holds nobody)."""
    found: dict[str, TargetGroup] = {}
    for chunk in chunks(list(arns), GROUPS_PER_CALL):
        try:
            answers = [elbv2.describe_target_groups(TargetGroupArns=chunk)]
        except ClientError as exc:
            if error_code(exc) != "TargetGroupNotFound":
                raise
            answers = []
            for arn in chunk:
                try:
                    answers.append(elbv2.describe_target_groups(TargetGroupArns=[arn]))
                except ClientError as one:
                    if error_code(one) != "TargetGroupNotFound":
                        raise
        for answer in answers:
            for raw in answer.get("TargetGroups", []):
                arn = raw.get("TargetGroupArn", "")
                port = raw.get("Port")
                found[arn] = TargetGroup(arn, raw.get("TargetType", "instance"), port, raw.get("VpcId", ""))
    return found


def _deregistration_delay(elbv2: ElasticLoadBalancingv2Client, arn: str) -> timedelta:
    attributes = elbv2.describe_target_group_attributes(TargetGroupArn=arn).get("Attributes", [])
    value = next((a.get("Value", "") for a in attributes if a.get("Key") == "deregistration_delay.timeout_seconds"), "")
    return timedelta(seconds=int(value)) if value.isdigit() else DEFAULT_DELAY


def _lifecycle(autoscaling: Any, instance_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
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


def _seen(
    target_group: TargetGroup,
    members: Sequence[Instance],
    listed: Sequence[TargetHealthDescriptionTypeDef],
    holder: _Holders,
) -> dict[str, list[TargetHealthDescriptionTypeDef]]:
    """The listed registrations (any port) of each member."""
    seen: dict[str, list[TargetHealthDescriptionTypeDef]] = {m.id: [] for m in members}
    for description in listed:
        owner = holder(target_group, description.get("Target", {}).get("Id", ""))
        if owner is not None and owner.id in seen:
            seen[owner.id].append(description)
    return seen


def _registration(arn: str, target: TargetDescriptionTypeDef) -> Registration:
    return Registration(arn, target["Id"], target.get("Port"), target.get("AvailabilityZone"))


def _mark_value(token: str, instance: Instance, registrations: Sequence[Registration]) -> str:
    """`<token> <pool index>=<target or ->/<port or ->/<zone or ->,...`: the index into the machine's
    `traffic_pools`, `-` for its own id; cut at EC2's 256 characters (what does not fit is
    restored by default)."""
    entries = []
    for registration in registrations:
        if registration.group not in instance.traffic_pools:
            continue
        index = instance.traffic_pools.index(registration.group)
        target = "-" if registration.target == instance.id else registration.target
        port = registration.port if registration.port is not None else "-"
        entries.append(f"{index}={target}/{port}/{registration.zone or '-'}")
    value = token
    for entry in entries:
        if len(value) + 1 + len(entry) > TAG_VALUE_MAX:
            break
        value += ("," if value != token else " ") + entry
    return value


def _marks(value: str, token: str, instance: Instance) -> list[Registration]:
    """The registrations a PatchPilotDrained value of this command's `token` names (none for another command's)."""
    mark, _, rest = value.partition(" ")
    if mark != token:
        return []
    found = []
    for entry in filter(None, rest.split(",")):
        index, _, spec = entry.partition("=")
        target, port, zone = [*spec.split("/"), "-", "-", "-"][:3]
        if not index.isdigit() or int(index) >= len(instance.traffic_pools):
            continue
        found.append(
            Registration(
                instance.traffic_pools[int(index)],
                instance.id if target == "-" else target,
                int(port) if port.isdigit() else None,
                None if zone == "-" else zone,
            )
        )
    return found


def _registrations(command: RejoinPools, instance_id: str) -> list[str]:
    return command.registrations.get(instance_id, [])


def _listed(
    registration: Registration, listed: Sequence[TargetHealthDescriptionTypeDef]
) -> TargetHealthDescriptionTypeDef | None:
    """The listing of `registration` (any port when it names none)."""
    for description in listed:
        target = description.get("Target")
        if target and target["Id"] == registration.target and registration.port in (None, target.get("Port")):
            return description
    return None


def _out(description: TargetHealthDescriptionTypeDef | None) -> bool:
    """Not listed, or on its way out: to be registered (again)."""
    return description is None or _state(description) == "draining"


def _state(description: TargetHealthDescriptionTypeDef) -> str:
    return str(description.get("TargetHealth", {}).get("State", ""))


def _pool_healthy(description: TargetHealthDescriptionTypeDef) -> bool:
    health = description.get("TargetHealth", {})
    # `unused` with Target.NotInUse: no load balancer sends this group traffic, so none checks it.
    return health.get("State") in HEALTHY or health.get("Reason") == "Target.NotInUse"


def _health_text(description: TargetHealthDescriptionTypeDef) -> str:
    health = description.get("TargetHealth", {})
    reason = " ".join(
        p for p in (health.get("Reason", ""), f"({health['Description']})" if health.get("Description") else "") if p
    )
    return f"{health.get('State', 'unknown')}" + (f": {reason}" if reason else "")


def _fail(instances: Sequence[Instance], states: dict[str, _State], why: str) -> None:
    for instance in instances:
        states[instance.id].fail(why)


def _progress(targets: Sequence[Instance], states: dict[str, _State], now: datetime, verb: str) -> Progress:
    waiting = [i for i in targets if states[i.id].waiting and states[i.id].failed is None]
    if waiting:
        due = [d for i in waiting if (d := states[i.id].retry_by) is not None and d > now]
        reasons = "; ".join(w for i in waiting for w in states[i.id].waiting)
        note = f"{len(targets) - len(waiting)}/{len(targets)} done; waiting: {reasons}"
        return InProgress(min([now + POLL, *due]), note[:300])
    outcomes = []
    for instance in targets:
        state = states[instance.id]
        if state.failed is not None:
            outcomes.append(Outcome(id=instance.id, ok=False, detail=state.failed, items=state.items, at=now))
            continue
        said = [f"{verb} {plural(len(state.pools), 'target group')}: {', '.join(state.pools)}"] if state.pools else []
        detail = "; ".join([*said, *state.notes]) or "no traffic pools"
        outcomes.append(Outcome(id=instance.id, ok=True, detail=detail, items=state.items, at=now))
    return outcomes
