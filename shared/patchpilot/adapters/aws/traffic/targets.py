"""ELBv2 as the traffic adapter reads it: a registration and its item, a target group, which
machine a target names, PatchPilot's mark of registrations a default would not restore, and the
reads of target groups and target health. No state; the reads take a client."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from patchpilot.batching import chunks
from patchpilot.inventory import Instance

from ..access import TAG_VALUE_MAX, Addresses, error_code

if TYPE_CHECKING:
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client
    from mypy_boto3_elbv2.type_defs import TargetDescriptionTypeDef, TargetHealthDescriptionTypeDef

DEFAULT_DELAY = timedelta(seconds=300)  # ELBv2's default deregistration delay
GROUPS_PER_CALL = 20  # DescribeTargetGroups TargetGroupArns
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


@dataclasses.dataclass(frozen=True)
class Holders:
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


def describe_groups(elbv2: ElasticLoadBalancingv2Client, arns: Sequence[str]) -> dict[str, TargetGroup]:
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


def deregistration_delay(elbv2: ElasticLoadBalancingv2Client, arn: str) -> timedelta:
    attributes = elbv2.describe_target_group_attributes(TargetGroupArn=arn).get("Attributes", [])
    value = next((a.get("Value", "") for a in attributes if a.get("Key") == "deregistration_delay.timeout_seconds"), "")
    return timedelta(seconds=int(value)) if value.isdigit() else DEFAULT_DELAY


def seen_by(
    target_group: TargetGroup,
    members: Sequence[Instance],
    listed: Sequence[TargetHealthDescriptionTypeDef],
    holder: Holders,
) -> dict[str, list[TargetHealthDescriptionTypeDef]]:
    """The listed registrations (any port) of each member."""
    seen: dict[str, list[TargetHealthDescriptionTypeDef]] = {m.id: [] for m in members}
    for description in listed:
        owner = holder(target_group, description.get("Target", {}).get("Id", ""))
        if owner is not None and owner.id in seen:
            seen[owner.id].append(description)
    return seen


def registration_of(arn: str, target: TargetDescriptionTypeDef) -> Registration:
    return Registration(arn, target["Id"], target.get("Port"), target.get("AvailabilityZone"))


def mark_value(token: str, instance: Instance, registrations: Sequence[Registration]) -> str:
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


def marks_of(value: str, token: str, instance: Instance) -> list[Registration]:
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


def listed_as(
    registration: Registration, listed: Sequence[TargetHealthDescriptionTypeDef]
) -> TargetHealthDescriptionTypeDef | None:
    """The listing of `registration` (any port when it names none)."""
    for description in listed:
        target = description.get("Target")
        if target and target["Id"] == registration.target and registration.port in (None, target.get("Port")):
            return description
    return None


def is_out(description: TargetHealthDescriptionTypeDef | None) -> bool:
    """Not listed, or on its way out: to be registered (again)."""
    return description is None or state_of(description) == "draining"


def state_of(description: TargetHealthDescriptionTypeDef) -> str:
    return str(description.get("TargetHealth", {}).get("State", ""))


def pool_healthy(description: TargetHealthDescriptionTypeDef) -> bool:
    health = description.get("TargetHealth", {})
    # `unused` with Target.NotInUse: no load balancer sends this group traffic, so none checks it.
    return health.get("State") in HEALTHY or health.get("Reason") == "Target.NotInUse"


def health_text(description: TargetHealthDescriptionTypeDef) -> str:
    health = description.get("TargetHealth", {})
    reason = " ".join(
        p for p in (health.get("Reason", ""), f"({health['Description']})" if health.get("Description") else "") if p
    )
    return f"{health.get('State', 'unknown')}" + (f": {reason}" if reason else "")
