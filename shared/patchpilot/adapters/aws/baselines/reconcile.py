"""What exists (`read_actual`, `read_tags`), the difference to what the policy wants (`diff`, pure,
in the order the changes must be made) and making it (`apply`, `apply_each`), plus the changes'
report shape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, assert_never

from patchpilot.batching import chunks

from .desired import (
    FIELD_LABELS,
    NAME_PREFIX,
    PATCH_GROUP_TAG_KEYS,
    BaselineFields,
    BaselineSpec,
    Desired,
    Filters,
    Rule,
    TagPlan,
    filters_of,
    owned_by,
    show,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_ssm.type_defs import (
        GetPatchBaselineResultTypeDef,
        PatchFilterOutputTypeDef,
        PatchRuleOutputTypeDef,
    )


TAG_BATCH = 1000  # resource ids per EC2 CreateTags call


DESCRIBE_TAGS_BATCH = 200  # values per EC2 filter


@dataclass(frozen=True)
class ActualBaseline:
    baseline_id: str
    name: str
    operating_system: str
    fields: BaselineFields


@dataclass(frozen=True)
class Registration:
    patch_group: str
    baseline_id: str
    baseline_name: str
    operating_system: str


@dataclass(frozen=True)
class Actual:
    baselines: Mapping[str, ActualBaseline] = field(default_factory=dict)  # by name: ours only
    registrations: tuple[Registration, ...] = ()  # of the policy's patch-group names
    tags: Mapping[str, str | None] = field(default_factory=dict)  # instance id -> tag value


def read_actual(
    ssm: SSMClient,
    policy: str,
    *,
    ec2: EC2Client | None = None,
    instance_ids: Iterable[str] = (),
    tag_key: str = PATCH_GROUP_TAG_KEYS[0],
) -> Actual:
    """The policy's baselines (DescribePatchBaselines by name prefix, then GetPatchBaseline for
    each), the registrations of its patch-group names (DescribePatchGroups) and, given `ec2`,
    the patch-group tag of each instance (DescribeTags)."""
    prefix = f"{NAME_PREFIX}{policy}-"
    baselines = {}
    pages = ssm.get_paginator("describe_patch_baselines").paginate(
        Filters=[{"Key": "NAME_PREFIX", "Values": [prefix]}], PaginationConfig={"PageSize": 100}
    )
    for page in pages:
        for identity in page.get("BaselineIdentities", []):
            name = identity.get("BaselineName", "")
            if owned_by(policy, name):  # the prefix also matches other policies' baselines
                answer = ssm.get_patch_baseline(BaselineId=identity["BaselineId"])
                baselines[name] = _actual_baseline(answer)
    registrations = []
    pages_g = ssm.get_paginator("describe_patch_groups").paginate(
        Filters=[{"Key": "NAME_PREFIX", "Values": [f"{policy}-"]}], PaginationConfig={"PageSize": 100}
    )
    for page_g in pages_g:
        for mapping in page_g.get("Mappings", []):
            identity = mapping.get("BaselineIdentity", {})
            registrations.append(
                Registration(
                    mapping.get("PatchGroup", ""),
                    identity.get("BaselineId", ""),
                    identity.get("BaselineName", ""),
                    identity.get("OperatingSystem", ""),
                )
            )
    tags = read_tags(ec2, instance_ids, tag_key) if ec2 is not None else {}
    return Actual(baselines, tuple(registrations), tags)


def read_tags(ec2: EC2Client, instance_ids: Iterable[str], key: str) -> dict[str, str | None]:
    """The value of tag `key` on each instance; None where it is missing."""
    ids = list(dict.fromkeys(instance_ids))
    found: dict[str, str | None] = dict.fromkeys(ids)
    for batch in chunks(ids, DESCRIBE_TAGS_BATCH):
        pages = ec2.get_paginator("describe_tags").paginate(
            Filters=[{"Name": "resource-id", "Values": batch}, {"Name": "key", "Values": [key]}]
        )
        for page in pages:
            for tag in page.get("Tags", []):
                if tag.get("Key") == key and tag.get("ResourceId") in found:
                    found[tag["ResourceId"]] = tag.get("Value", "")
    return found


def _actual_baseline(answer: GetPatchBaselineResultTypeDef) -> ActualBaseline:
    rules = tuple(sorted(_actual_rule(rule) for rule in answer.get("ApprovalRules", {}).get("PatchRules", [])))
    fields = BaselineFields(
        description=answer.get("Description", ""),
        rules=rules,
        approved_patches=tuple(sorted(answer.get("ApprovedPatches", []))),
        approved_patches_compliance_level=answer.get("ApprovedPatchesComplianceLevel", "UNSPECIFIED"),
        approved_patches_enable_non_security=answer.get("ApprovedPatchesEnableNonSecurity", False),
        rejected_patches=tuple(sorted(answer.get("RejectedPatches", []))),
        rejected_patches_action=answer.get("RejectedPatchesAction", "ALLOW_AS_DEPENDENCY"),
        global_filters=_actual_filters(answer.get("GlobalFilters", {}).get("PatchFilters", [])),
        sources=tuple(sorted(source.get("Name", "") for source in answer.get("Sources", []))),
    )
    return ActualBaseline(
        answer.get("BaselineId", ""), answer.get("Name", ""), answer.get("OperatingSystem", ""), fields
    )


def _actual_rule(rule: PatchRuleOutputTypeDef) -> Rule:
    return Rule(
        _actual_filters(rule.get("PatchFilterGroup", {}).get("PatchFilters", [])),
        rule.get("ApproveAfterDays"),
        rule.get("ComplianceLevel", "UNSPECIFIED"),
        rule.get("EnableNonSecurity", False),
        rule.get("ApproveUntilDate"),
    )


def _actual_filters(filters: Sequence[PatchFilterOutputTypeDef]) -> Filters:
    return filters_of((f["Key"], f["Values"]) for f in filters)


@dataclass(frozen=True)
class FieldChange:
    field: str  # a BaselineFields name
    old: str
    new: str

    @property
    def label(self) -> str:
        return FIELD_LABELS.get(self.field, self.field)


@dataclass(frozen=True)
class CreateBaseline:
    spec: BaselineSpec


@dataclass(frozen=True)
class UpdateBaseline:
    spec: BaselineSpec
    baseline_id: str
    fields: tuple[FieldChange, ...]


@dataclass(frozen=True)
class RegisterPatchGroup:
    patch_group: str
    baseline_name: str
    operating_system: str
    baseline_id: str | None  # None: the baseline is created by this sync


@dataclass(frozen=True)
class DeregisterPatchGroup:
    patch_group: str
    baseline_name: str
    baseline_id: str
    operating_system: str
    reason: str


@dataclass(frozen=True)
class TagInstances:
    key: str
    value: str
    instance_ids: tuple[str, ...]
    previous: tuple[tuple[str | None, int], ...]  # (old value or None, how many), most common first


@dataclass(frozen=True)
class Blocked:
    """A difference PatchPilot will not resolve on its own; `apply` leaves it."""

    subject: str
    reason: str


Change = CreateBaseline | UpdateBaseline | RegisterPatchGroup | DeregisterPatchGroup | TagInstances | Blocked


_ORDER = {
    CreateBaseline: 0,
    UpdateBaseline: 1,
    DeregisterPatchGroup: 2,
    RegisterPatchGroup: 3,
    TagInstances: 4,
    Blocked: 5,
}


def diff(desired: Desired, actual: Actual) -> list[Change]:
    """What must change for `actual` to be `desired`, in the order `apply` makes it: baselines
    first, registrations removed before ones added (a group has one baseline per system), tags
    last. Baselines of the policy that it no longer has are left; their groups are deregistered."""
    changes: list[Change] = []
    usable: dict[str, str | None] = {}  # baseline name -> id (None: created by this sync)
    for spec in desired.baselines:
        have = actual.baselines.get(spec.name)
        if have is None:
            changes.append(CreateBaseline(spec))
            usable[spec.name] = None
        elif have.operating_system != spec.operating_system:
            changes.append(
                Blocked(
                    spec.name,
                    f"exists for {have.operating_system} ({have.baseline_id}), not {spec.operating_system}; "
                    "rename or delete it",
                )
            )
        else:
            fields = _field_changes(have.fields, spec.fields)
            if fields:
                changes.append(UpdateBaseline(spec, have.baseline_id, fields))
            usable[spec.name] = have.baseline_id

    registered = {(r.patch_group, r.operating_system): r for r in actual.registrations}
    wanted = {(group, spec.name) for spec in desired.baselines for group in spec.patch_groups}
    for r in actual.registrations:
        if owned_by(desired.policy, r.baseline_name) and (r.patch_group, r.baseline_name) not in wanted:
            kept = any(spec.name == r.baseline_name for spec in desired.baselines)
            reason = "the policy has no such ring" if kept else "the policy no longer has this operating system"
            changes.append(
                DeregisterPatchGroup(r.patch_group, r.baseline_name, r.baseline_id, r.operating_system, reason)
            )
    for spec in desired.baselines:
        if spec.name not in usable:
            continue
        for group in spec.patch_groups:
            current = registered.get((group, spec.operating_system))
            if current is not None and current.baseline_name == spec.name:
                continue
            if current is not None and not owned_by(desired.policy, current.baseline_name):
                changes.append(
                    Blocked(
                        f"patch group {group}",
                        f"uses baseline {current.baseline_name} ({current.baseline_id}) for "
                        f"{spec.operating_system}; deregister it there or rename the ring",
                    )
                )
                continue
            changes.append(RegisterPatchGroup(group, spec.name, spec.operating_system, usable[spec.name]))

    if desired.tags is not None:
        changes.extend(_tag_changes(desired.tags, actual.tags))
    return sorted(changes, key=lambda c: _ORDER[type(c)])


def _field_changes(old: BaselineFields, new: BaselineFields) -> tuple[FieldChange, ...]:
    out = []
    for name in FIELD_LABELS:
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            out.append(FieldChange(name, show(name, before), show(name, after)))
    return tuple(out)


def _tag_changes(plan_: TagPlan, current: Mapping[str, str | None]) -> list[TagInstances]:
    by_value: dict[str, list[str]] = {}
    for instance_id, value in sorted(plan_.wanted.items()):
        if current.get(instance_id) != value:
            by_value.setdefault(value, []).append(instance_id)
    out = []
    for value, ids in sorted(by_value.items()):
        previous = Counter(current.get(i) for i in ids).most_common()
        out.append(TagInstances(plan_.key, value, tuple(ids), tuple(previous)))
    return out


def leftovers(desired: Desired, actual: Actual) -> list[str]:
    """Baselines of the policy that it no longer has: the sync deregisters their patch groups
    and leaves them, since deleting a baseline is not undone by a later sync."""
    names = {spec.name for spec in desired.baselines}
    return [
        f"baseline {b.name} ({b.baseline_id}) is no longer in the policy; delete it when nothing needs it"
        for b in sorted(actual.baselines.values(), key=lambda b: b.name)
        if b.name not in names
    ]


def apply(ssm: SSMClient, changes: Sequence[Change], *, ec2: EC2Client | None = None) -> list[Change]:
    """Make the changes in order and return the ones made (`Blocked` ones are not)."""
    return list(apply_each(ssm, changes, ec2=ec2))


def apply_each(ssm: SSMClient, changes: Sequence[Change], *, ec2: EC2Client | None = None) -> Iterator[Change]:
    """Make the changes in order, yielding each once it is made. A failing call raises
    (botocore's ClientError) after the changes before it are made; a later sync picks up from
    there, since it compares with what is in AWS again."""
    created: dict[str, str] = {}
    for change in sorted(changes, key=lambda c: _ORDER[type(c)]):
        match change:
            case CreateBaseline(spec):
                answer = ssm.create_patch_baseline(
                    OperatingSystem=spec.operating_system,  # type: ignore[arg-type]
                    Name=spec.name,
                    Description=spec.fields.description,
                    ApprovalRules={"PatchRules": spec.rules_request()},
                    ApprovedPatches=list(spec.fields.approved_patches),
                    ApprovedPatchesComplianceLevel=spec.fields.approved_patches_compliance_level,  # type: ignore[arg-type]
                    ApprovedPatchesEnableNonSecurity=spec.fields.approved_patches_enable_non_security,
                    RejectedPatches=list(spec.fields.rejected_patches),
                    RejectedPatchesAction=spec.fields.rejected_patches_action,  # type: ignore[arg-type]
                    ClientToken=spec.client_token(),
                )
                created[spec.name] = answer["BaselineId"]
            case UpdateBaseline(spec, baseline_id, _):
                ssm.update_patch_baseline(
                    BaselineId=baseline_id,
                    Name=spec.name,
                    Description=spec.fields.description,
                    ApprovalRules={"PatchRules": spec.rules_request()},
                    ApprovedPatches=list(spec.fields.approved_patches),
                    ApprovedPatchesComplianceLevel=spec.fields.approved_patches_compliance_level,  # type: ignore[arg-type]
                    ApprovedPatchesEnableNonSecurity=spec.fields.approved_patches_enable_non_security,
                    RejectedPatches=list(spec.fields.rejected_patches),
                    RejectedPatchesAction=spec.fields.rejected_patches_action,  # type: ignore[arg-type]
                    Replace=True,  # fields left out (global filters, sources) are cleared
                )
            case DeregisterPatchGroup(group, _, baseline_id, _, _):
                ssm.deregister_patch_baseline_for_patch_group(BaselineId=baseline_id, PatchGroup=group)
            case RegisterPatchGroup(group, name, _, baseline_id):
                ssm.register_patch_baseline_for_patch_group(BaselineId=baseline_id or created[name], PatchGroup=group)
            case TagInstances(key, value, ids, _):
                if ec2 is None:
                    raise ValueError("tagging instances needs an EC2 client")
                for batch in chunks(list(ids), TAG_BATCH):
                    ec2.create_tags(Resources=batch, Tags=[{"Key": key, "Value": value}])
            case Blocked():
                continue
            case _:
                assert_never(change)
        yield change


def change_document(change: Change) -> dict[str, object]:
    """A change as JSON for `patchpilot aws sync --json`."""
    match change:
        case CreateBaseline(spec):
            return {
                "action": "create_baseline",
                "baseline": spec.name,
                "operating_system": spec.operating_system,
                "fields": {name: show(name, getattr(spec.fields, name)) for name in FIELD_LABELS},
            }
        case UpdateBaseline(spec, baseline_id, fields):
            return {
                "action": "update_baseline",
                "baseline": spec.name,
                "baseline_id": baseline_id,
                "fields": {f.field: {"old": f.old, "new": f.new} for f in fields},
            }
        case RegisterPatchGroup(group, name, os, baseline_id):
            return {
                "action": "register_patch_group",
                "patch_group": group,
                "baseline": name,
                "baseline_id": baseline_id,
                "operating_system": os,
            }
        case DeregisterPatchGroup(group, name, baseline_id, os, reason):
            return {
                "action": "deregister_patch_group",
                "patch_group": group,
                "baseline": name,
                "baseline_id": baseline_id,
                "operating_system": os,
                "reason": reason,
            }
        case TagInstances(key, value, ids, previous):
            return {
                "action": "tag_instances",
                "tag": {"key": key, "value": value},
                "instances": list(ids),
                "previous": [{"value": old, "count": n} for old, n in previous],
            }
        case Blocked(subject, reason):
            return {"action": "blocked", "subject": subject, "reason": reason}
        case _:
            assert_never(change)
