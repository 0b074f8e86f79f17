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

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from patchpilot.batching import group, unique
from patchpilot.engine.messages import LeavePools, RejoinPools
from patchpilot.inventory import Instance
from patchpilot.ports import Clock, Progress
from patchpilot.wording import spoken_duration

from ..access import TAG_DRAINED, AwsAccess, Placement, addresses_of, by_placement, short_token, tags_of
from ..sessions import ClientFactory
from . import standby
from .outcomes import State, fail_all, progress, refusal
from .targets import (
    DEFAULT_DELAY,
    Holders,
    Registration,
    TargetGroup,
    deregistration_delay,
    describe_groups,
    group_name,
    health_text,
    is_out,
    listed_as,
    mark_value,
    marks_of,
    pool_healthy,
    registration_of,
    seen_by,
    state_of,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_elbv2.type_defs import TargetHealthDescriptionTypeDef

__all__ = ["Elbv2Traffic", "Registration"]

ELBV2 = "elasticloadbalancing"  # the IAM prefix of ELBv2 actions
DRAIN_MARGIN = timedelta(seconds=60)  # past the deregistration delay before "still draining" fails


class Elbv2Traffic:
    """A `TrafficPools` over ELBv2 target groups and Auto Scaling Standby (see the module's docstring)."""

    def __init__(self, client: ClientFactory, clock: Clock, *, default_region: str = "us-east-1") -> None:
        """`client` builds boto3 clients per (service, account, region) (see `AwsSessions`)."""
        self.access = AwsAccess(client, clock, default_region=default_region)

    def leave_pools(self, command: LeavePools) -> Progress:
        now = self.access.clock.now()
        targets = unique(command.targets, lambda i: i.id)
        states = {i.id: State() for i in targets}
        for placement, instances in by_placement(targets, lambda i: i).items():
            pooled = [i for i in instances if i.traffic_pools]
            if pooled:
                self._drain(placement, pooled, states, short_token(command.id))
            members = [i for i in instances if command.standby and i.scaling_group]
            if members:
                standby.move(self.access, placement, members, states, enter=True)
            if command.timeout is None:
                self._past_default_deadline(placement, instances, states, command.issued_at, now)
        return progress(targets, states, now, "left")

    def rejoin_pools(self, command: RejoinPools) -> Progress:
        now = self.access.clock.now()
        targets = unique(command.targets, lambda i: i.id)
        states = {i.id: State() for i in targets}
        wait = not command.at_run_end
        for placement, instances in by_placement(targets, lambda i: i).items():
            members = [i for i in instances if command.standby and i.scaling_group]
            if members:
                standby.move(self.access, placement, members, states, enter=False, wait=wait)
            pooled = [i for i in instances if i.traffic_pools or _registrations(command, i.id)]
            if pooled:
                self._register(placement, pooled, command, states, pool_health=command.pool_health and wait)
        return progress(targets, states, now, "back in")

    # ------------------------------------------------------------ target groups

    def _drain(self, placement: Placement, instances: Sequence[Instance], states: dict[str, State], token: str) -> None:
        """Read every target group once, mark the registrations a default could not restore, then
        ONE DeregisterTargets per target group for the machines still registered there."""
        elbv2 = self.access.elbv2(placement)
        arns = sorted({arn for i in instances for arn in i.traffic_pools})
        try:
            groups = describe_groups(elbv2, arns)
        except ClientError as exc:
            fail_all(instances, states, refusal(ELBV2, "DescribeTargetGroups", arns[0], exc))
            return
        ec2 = self.access.ec2(placement)
        described = self.access.describe_instances(ec2, [i.id for i in instances])
        holder = Holders({i.id: i for i in instances}, {k: addresses_of(raw) for k, raw in described.items()})
        marked = {
            i.id: marks_of(tags_of(described[i.id].get("Tags")).get(TAG_DRAINED, ""), token, i)
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
                fail_all(members, states, refusal(ELBV2, "DescribeTargetHealth", target_group.name, exc))
                continue
            seen[arn] = seen_by(target_group, members, listed, holder)
        self._mark(ec2, instances, groups, seen, holder, marked, token, states)
        for arn, by_member in seen.items():
            target_group = groups[arn]
            members = [i for i in instances if i.id in by_member and states[i.id].failed is None]
            removing = [d for m in members for d in by_member[m.id] if state_of(d) != "draining"]
            if removing:
                try:
                    elbv2.deregister_targets(TargetGroupArn=arn, Targets=[d["Target"] for d in removing])
                except ClientError as exc:
                    failing = [m for m in members if any(state_of(d) != "draining" for d in by_member[m.id])]
                    fail_all(failing, states, refusal(ELBV2, "DeregisterTargets", target_group.name, exc))
            for member in members:
                state = states[member.id]
                listed_now = [registration_of(arn, d["Target"]) for d in by_member[member.id]]
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
        holder: Holders,
        marked: dict[str, list[Registration]],
        token: str,
        states: dict[str, State],
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
                for registration in (registration_of(arn, d["Target"]) for d in by_member.get(instance.id, []))
                if registration != holder.default(groups[arn], instance)
            ]
            if unusual and not set(unusual) <= set(marked.get(instance.id, [])) and states[instance.id].failed is None:
                every = list(dict.fromkeys([*marked.get(instance.id, []), *unusual]))
                values.setdefault(mark_value(token, instance, every), []).append(instance.id)
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
        states: dict[str, State],
        *,
        pool_health: bool,
    ) -> None:
        elbv2 = self.access.elbv2(placement)
        wanted = {i.id: [r for r in map(Registration.parse, _registrations(command, i.id)) if r] for i in instances}
        lacking = sorted({a for i in instances for a in i.traffic_pools if a not in {r.group for r in wanted[i.id]}})
        if lacking:  # machines without a recorded registration there: the default one
            try:
                groups = describe_groups(elbv2, lacking)
            except ClientError as exc:
                fail_all(instances, states, refusal(ELBV2, "DescribeTargetGroups", lacking[0], exc))
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
                fail_all([i for i, _ in pairs], states, refusal(ELBV2, "DescribeTargetHealth", name, exc))
                continue
            found = {r: listed_as(r, listed) for _, r in pairs}
            missing = [(i, r) for i, r in pairs if is_out(found[r])]
            if missing:
                try:
                    elbv2.register_targets(TargetGroupArn=arn, Targets=[r.description() for _, r in missing])
                except ClientError as exc:
                    fail_all(
                        unique((i for i, _ in missing), lambda i: i.id),
                        states,
                        refusal(ELBV2, "RegisterTargets", name, exc),
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
                elif pool_healthy(described):
                    state.pools.append(f"{name} ({state_of(described)})")
                else:
                    state.waiting.append(f"{instance.id} in {name}: {health_text(described)}")

    def _holders(self, placement: Placement, instances: Sequence[Instance], groups: dict[str, TargetGroup]) -> Holders:
        """Who the targets of `groups` are among `instances` (EC2 described only for an IP target group)."""
        by_id = {i.id: i for i in instances}
        if not any(g.kind == "ip" for g in groups.values()):
            return Holders(by_id, {})
        described = self.access.describe_instances(self.access.ec2(placement), list(by_id))
        return Holders(by_id, {key: addresses_of(raw) for key, raw in described.items()})

    def _past_default_deadline(
        self,
        placement: Placement,
        instances: Sequence[Instance],
        states: dict[str, State],
        issued_at: datetime,
        now: datetime,
    ) -> None:
        """Fail each machine still draining past `issued_at` + its groups' largest deregistration
        delay + 60 s (300 s for a Standby-only member): the default deadline, without a `timeout`."""
        waiting = [i for i in instances if states[i.id].waiting and states[i.id].failed is None]
        if not waiting or now < issued_at + DRAIN_MARGIN:
            return  # no deadline can have passed yet (the earliest: a delay of 0 s): nothing read
        elbv2 = self.access.elbv2(placement)
        delays: dict[str, timedelta] = {}
        for instance in waiting:
            state = states[instance.id]
            try:
                for arn in instance.traffic_pools:
                    if arn not in delays:
                        delays[arn] = deregistration_delay(elbv2, arn)
            except ClientError as exc:
                state.fail(refusal(ELBV2, "DescribeTargetGroupAttributes", group_name(arn), exc))
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


def _registrations(command: RejoinPools, instance_id: str) -> list[str]:
    return command.registrations.get(instance_id, [])
