"""What the policy wants, pure: one baseline per operating system (`patchpilot-<policy>-<os>`),
registered for one patch group per ring, and the patch-group tag each instance should carry."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from patchpilot.errors import InputError, Problem, quote
from patchpilot.inventory import Instance
from patchpilot.planning import plan
from patchpilot.policy import Policy
from patchpilot.policy.model import AwsBaselines

from .vocabulary import APT_PRIORITIES, MAX_LISTED_PATCHES, MAX_PATCH_ID, OPERATING_SYSTEMS, SsmOs, is_windows_update

if TYPE_CHECKING:
    from mypy_boto3_ssm.literals import PatchComplianceLevelType, PatchFilterKeyType
    from mypy_boto3_ssm.type_defs import (
        PatchFilterTypeDef,
        PatchRuleTypeDef,
    )


NAME_PREFIX = "patchpilot-"


PATCH_GROUP_TAG_KEYS = ("PatchGroup", "Patch Group")  # the only keys Patch Manager reads


_PATCH_GROUP_PUNCTUATION = set(" _.:/=+-@")  # with letters and digits: the SSM PatchGroup pattern


Filters = tuple[tuple[str, tuple[str, ...]], ...]  # (key, values) sorted by key, values sorted


def filters_of(pairs: Iterable[tuple[str, Iterable[str]]]) -> Filters:
    return tuple(sorted((key, tuple(sorted(values))) for key, values in pairs))


@dataclass(frozen=True, order=True)
class Rule:
    """One approval rule, in a form where equal rules compare equal."""

    filters: Filters
    approve_after_days: int | None = None
    compliance_level: str = "UNSPECIFIED"
    enable_non_security: bool = False
    approve_until_date: str | None = None  # never written by PatchPilot; read to show drift

    def text(self) -> str:
        parts = [" ".join(f"{key}={','.join(values)}" for key, values in self.filters) or "every patch"]
        if self.approve_after_days is not None:
            parts.append(f"after {self.approve_after_days} day{'s' if self.approve_after_days != 1 else ''}")
        if self.approve_until_date is not None:
            parts.append(f"until {self.approve_until_date}")
        parts.append(self.compliance_level)
        if self.enable_non_security:
            parts.append("non-security too")
        return ", ".join(parts)

    def request(self, windows: bool) -> PatchRuleTypeDef:
        filters: list[PatchFilterTypeDef] = [
            {"Key": cast("PatchFilterKeyType", key), "Values": list(values)} for key, values in self.filters
        ]
        rule: PatchRuleTypeDef = {
            "PatchFilterGroup": {"PatchFilters": filters},
            "ComplianceLevel": cast("PatchComplianceLevelType", self.compliance_level),
        }
        if self.approve_after_days is not None:
            rule["ApproveAfterDays"] = self.approve_after_days
        if not windows:
            rule["EnableNonSecurity"] = self.enable_non_security
        return rule


@dataclass(frozen=True)
class BaselineFields:
    """The fields of a baseline that PatchPilot writes, compared field by field."""

    description: str
    rules: tuple[Rule, ...]  # sorted
    approved_patches: tuple[str, ...] = ()  # sorted
    approved_patches_compliance_level: str = "UNSPECIFIED"
    approved_patches_enable_non_security: bool = False
    rejected_patches: tuple[str, ...] = ()  # sorted
    rejected_patches_action: str = "ALLOW_AS_DEPENDENCY"
    global_filters: Filters = ()  # never written by PatchPilot: any are cleared
    sources: tuple[str, ...] = ()  # names of custom repositories; never written, any are cleared


FIELD_LABELS = {
    "description": "description",
    "rules": "approval rules",
    "approved_patches": "approved patches",
    "approved_patches_compliance_level": "approved patches compliance level",
    "approved_patches_enable_non_security": "approved patches include non-security",
    "rejected_patches": "rejected patches",
    "rejected_patches_action": "rejected patches action",
    "global_filters": "global filters",
    "sources": "patch sources",
}


def show(name: str, value: object) -> str:
    """A field's value as one line for people."""
    if name == "rules":
        assert isinstance(value, tuple)
        return " | ".join(rule.text() for rule in value) or "none"
    if name == "global_filters":
        assert isinstance(value, tuple)
        return " ".join(f"{key}={','.join(values)}" for key, values in value) or "none"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value) if value != "" else "none"


@dataclass(frozen=True)
class BaselineSpec:
    """A baseline as the policy wants it, and the patch groups it is registered for."""

    name: str
    operating_system: str
    fields: BaselineFields
    patch_groups: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def os(self) -> SsmOs:
        return OPERATING_SYSTEMS[self.operating_system]

    def client_token(self) -> str:
        """The same spec always gets the same token: a retried create returns the first baseline."""
        content = json.dumps([self.name, self.operating_system, repr(self.fields)], sort_keys=True)
        return "patchpilot-" + hashlib.sha256(content.encode()).hexdigest()[:40]

    def rules_request(self) -> list[PatchRuleTypeDef]:
        return [rule.request(self.os.windows) for rule in self.fields.rules]


def baseline_name(policy: str, operating_system: str) -> str:
    return f"{NAME_PREFIX}{policy}-{OPERATING_SYSTEMS[operating_system].slug}"


def patch_group(policy: str, ring: str) -> str:
    return f"{policy}-{ring}"


def owned_by(policy: str, name: str) -> bool:
    """Is this baseline one that PatchPilot writes for this policy? Slugs hold no "-", so
    `patchpilot-a-b-windows` belongs to policy `a-b` and never to policy `a`."""
    prefix = f"{NAME_PREFIX}{policy}-"
    return name.startswith(prefix) and name[len(prefix) :].upper() in OPERATING_SYSTEMS


def policy_problems(policy: Policy) -> list[Problem]:
    """Everything that keeps the policy from becoming baselines, each at its place."""
    return _plan(policy)[1]


def desired_baselines(policy: Policy) -> list[BaselineSpec]:
    """One baseline per operating system of `aws.baselines`, registered for a patch group per
    ring. Raises InputError naming every problem (as `policy_problems`)."""
    specs, problems = _plan(policy)
    if problems:
        raise InputError(policy.name, problems)
    return specs


def _plan(policy: Policy) -> tuple[list[BaselineSpec], list[Problem]]:
    settings = policy.aws.baselines if policy.aws else None
    if settings is None:
        here = ("aws", "baselines") if policy.aws else ("aws",)
        return [], [Problem(here, "required by aws sync: give aws.baselines with operating_systems at least")]
    assert policy.aws is not None
    problems: list[Problem] = []
    systems = _systems(settings, problems)
    groups = _patch_groups(policy, problems)
    if policy.aws.patch_group_tag not in PATCH_GROUP_TAG_KEYS:
        problems.append(
            Problem(
                ("aws", "patch_group_tag"),
                f"Patch Manager reads only the tag keys {' and '.join(map(quote, PATCH_GROUP_TAG_KEYS))}, "
                f"got {quote(policy.aws.patch_group_tag)}",
            )
        )
    approved = _listed(policy.patches.include, ("patches", "include"), systems, problems)
    rejected = _listed(policy.patches.exclude, ("patches", "exclude"), systems, problems)
    _unused_classifications(policy, systems, problems)
    severities = _severities(settings, systems, problems)

    specs = []
    for os in systems:
        notes: list[str] = []
        rules = _rules(os, policy, settings, severities.get(os.name, ()), notes, problems)
        wanted = approved[os.windows]
        if not rules and not wanted:
            problems.append(
                Problem(
                    ("patches", "classifications"),
                    f"the {os.name} baseline would approve nothing: none of these classifications applies "
                    f"to {os.label} ({', '.join(os.classes)} do) and patches.include names no "
                    f"{'Windows update' if os.windows else 'package'} for it",
                )
            )
        level = settings.compliance_level
        fields = BaselineFields(
            description=(
                f"PatchPilot policy {policy.name}: {os.label}. Written by `patchpilot aws sync`; "
                "changes made here are replaced at the next sync."
            ),
            rules=tuple(sorted(rules)),
            approved_patches=tuple(sorted(wanted)),
            approved_patches_compliance_level=level,
            approved_patches_enable_non_security=bool(wanted) and not os.windows,
            rejected_patches=tuple(sorted(rejected[os.windows])),
            rejected_patches_action="BLOCK",
        )
        specs.append(BaselineSpec(baseline_name(policy.name, os.name), os.name, fields, groups, tuple(notes)))
    return specs, problems


def _systems(settings: AwsBaselines, problems: list[Problem]) -> list[SsmOs]:
    systems: list[SsmOs] = []
    for index, name in enumerate(settings.operating_systems):
        if any(os.name == name for os in systems):
            problems.append(Problem(("aws", "baselines", "operating_systems", index), f"duplicate {quote(name)}"))
            continue
        systems.append(OPERATING_SYSTEMS[name])
    return systems


def _patch_groups(policy: Policy, problems: list[Problem]) -> tuple[str, ...]:
    groups = []
    for index, ring in enumerate(policy.rings):
        group = patch_group(policy.name, ring.name)
        bad = sorted({ch for ch in group if not (ch.isalnum() or ch in _PATCH_GROUP_PUNCTUATION)})
        if bad:
            problems.append(
                Problem(
                    ("rings", index, "name"),
                    f"the patch group {quote(group)} may hold only letters, digits, spaces and _ . : / = + - @ "
                    f"(found {' '.join(bad)})",
                )
            )
        groups.append(group)
    return tuple(groups)


def _listed(
    items: Sequence[str], here: tuple[str, ...], systems: Sequence[SsmOs], problems: list[Problem]
) -> dict[bool, list[str]]:
    """Split `patches.include`/`exclude` into Windows update ids and Linux package names."""
    split: dict[bool, list[str]] = {True: [], False: []}
    if len(items) > MAX_LISTED_PATCHES:
        api = "ApprovedPatches" if here[-1] == "include" else "RejectedPatches"
        problems.append(
            Problem(here, f"at most {MAX_LISTED_PATCHES} for a Patch Manager baseline ({api}), got {len(items)}")
        )
    has_windows = any(os.windows for os in systems)
    has_linux = any(not os.windows for os in systems)
    for index, item in enumerate(items):
        windows = is_windows_update(item)
        if len(item) > MAX_PATCH_ID:
            problems.append(Problem((*here, index), f"at most {MAX_PATCH_ID} characters, got {len(item)}"))
        elif windows and not has_windows:
            problems.append(
                Problem((*here, index), f"{quote(item)} is a Windows update id, but aws.baselines has no WINDOWS")
            )
        elif not windows and not has_linux:
            problems.append(
                Problem(
                    (*here, index),
                    f"{quote(item)} is not a Windows update id (KB1234567 or MS17-010) and aws.baselines "
                    "has no Linux operating system for a package name",
                )
            )
        split[windows].append(item)
    return split


def _unused_classifications(policy: Policy, systems: Sequence[SsmOs], problems: list[Problem]) -> None:
    if not systems:
        return
    for index, name in enumerate(policy.patches.classifications):
        if not any(name in os.classes for os in systems):
            where = sorted({os.label for os in OPERATING_SYSTEMS.values() if name in os.classes})
            problems.append(
                Problem(
                    ("patches", "classifications", index),
                    f"{quote(name)} applies to none of aws.baselines.operating_systems "
                    f"({', '.join(os.name for os in systems)}); it is a classification of {', '.join(where)}",
                )
            )


def _severities(
    settings: AwsBaselines, systems: Sequence[SsmOs], problems: list[Problem]
) -> dict[str, tuple[str, ...]]:
    """The severity values per operating system, each checked against what that system has."""
    here = ("aws", "baselines", "severities")
    out: dict[str, tuple[str, ...]] = {}
    given = settings.severities
    if isinstance(given, list):
        for os in systems:
            if os.severity_key is None or not given:
                continue
            for index, value in enumerate(given):
                if value not in os.severities:
                    problems.append(
                        Problem(
                            (*here, index),
                            f"{quote(value)} is not a {os.name} severity ({', '.join(os.severities)}); "
                            "give each operating system its own list, e.g. "
                            "{WINDOWS: [Critical, Important], AMAZON_LINUX_2023: [Critical, Important]}",
                        )
                    )
            out[os.name] = tuple(given)
        return out
    names = {os.name: os for os in systems}
    for key, values in given.items():
        os_here = names.get(key)
        if os_here is None:
            problems.append(Problem((*here, key), "not one of aws.baselines.operating_systems"))
            continue
        if os_here.severity_key is None:
            problems.append(
                Problem((*here, key), f"{os_here.label} baselines have no severity filter (Patch Manager offers none)")
            )
            continue
        for index, value in enumerate(values):
            if value not in os_here.severities:
                problems.append(
                    Problem(
                        (*here, key, index),
                        f"expected a {key} severity ({', '.join(os_here.severities)}), got {quote(value)}",
                    )
                )
        out[key] = tuple(values)
    return out


def _rules(
    os: SsmOs,
    policy: Policy,
    settings: AwsBaselines,
    severities: tuple[str, ...],
    notes: list[str],
    problems: list[Problem],
) -> list[Rule]:
    chosen = [name for name in policy.patches.classifications if name in os.classes]
    unused = [name for name in policy.patches.classifications if name not in os.classes]
    if unused and chosen:
        notes.append(f"{os.name}: {', '.join(unused)} left out (no such classification on {os.label})")
    days = settings.approve_after_days if os.approve_after_days else None
    level = settings.compliance_level
    if os.family == "apt":
        if isinstance(settings.severities, list) and settings.severities:
            notes.append(f"{os.name}: severities not used ({os.label} baselines have no severity filter)")
        notes.append(
            f"{os.name}: approve_after_days not used (Patch Manager approves {os.label} patches "
            "as soon as they are released)"
        )
        if not chosen:
            return []
        other = "Other" in chosen
        return [Rule(filters_of([("PRIORITY", APT_PRIORITIES)]), None, level, enable_non_security=other)]
    values = list(dict.fromkeys(v for name in chosen for v in os.classes[name]))
    security = [v for v in values if v in os.security_classes]
    others = [v for v in values if v not in os.security_classes]
    if severities and not security:
        problems.append(
            Problem(
                ("aws", "baselines", "severities"),
                f"severities filter security updates, but the {os.name} baseline approves none "
                f"(patches.classifications gives it {', '.join(values) or 'nothing'})",
            )
        )
    rules = []
    if security:
        pairs: list[tuple[str, Iterable[str]]] = [("CLASSIFICATION", security)]
        if severities and os.severity_key:
            pairs.append((os.severity_key, severities))
        rules.append(Rule(filters_of(pairs), days, level))
    if others:
        rules.append(Rule(filters_of([("CLASSIFICATION", others)]), days, level, enable_non_security=not os.windows))
    return rules


@dataclass(frozen=True)
class Target:
    """Where one sync happens: an account (None: the ambient credentials' account) and a region."""

    account: str | None
    region: str

    @property
    def label(self) -> str:
        return f"{self.account or 'current account'} {self.region}"


@dataclass(frozen=True)
class TagPlan:
    key: str
    wanted: Mapping[str, str]  # instance id -> patch group
    notes: tuple[str, ...] = ()


def desired_tags(policy: Policy, instances: Iterable[Instance], target: Target, *, accounts: int) -> TagPlan:
    """The patch group of every AWS instance of `target` that is in a ring. Excluded instances
    and those that match no ring are left as they are. `accounts` is how many accounts the
    policy lists: an instance without an account belongs to the only one, or is skipped."""
    key = policy.aws.patch_group_tag if policy.aws else PATCH_GROUP_TAG_KEYS[0]
    here: list[Instance] = []
    unplaced = 0
    for instance in instances:
        if instance.cloud != "aws" or instance.region != target.region:
            continue
        if instance.account is None and accounts > 1:
            unplaced += 1
        elif target.account is None or instance.account in (None, target.account):
            here.append(instance)
    result = plan(policy, here)
    wanted = {i.id: patch_group(policy.name, wave.ring) for wave in result.waves for i in wave.instances}
    notes = []
    if result.excluded:
        notes.append(f"{len(result.excluded)} instance(s) excluded or in no ring: their {key} tag is left as it is")
    if unplaced:
        notes.append(f"{unplaced} instance(s) without an account: the policy lists several, so they are not tagged")
    return TagPlan(key, wanted, tuple(notes))


@dataclass(frozen=True)
class Desired:
    policy: str
    baselines: tuple[BaselineSpec, ...]
    tags: TagPlan | None = None  # None: tagging is not part of this sync
