"""Patch Manager baselines and patch groups kept in step with the policy (`patchpilot aws sync`).

The shape of a sync (cosmicpython's `sync.py`): gather what is wanted and what is there, let a
pure function say what differs, then do it.

- `desired_baselines(policy)`, pure: one baseline per operating system named
  `patchpilot-<policy>-<os>`, what it approves taken from `policy.patches` and
  `policy.aws.baselines`, registered for one patch group per ring (`<policy>-<ring>`).
- `desired_tags(...)`, pure: the patch-group tag each instance should carry, from its ring.
- `read_actual(ssm, ...)`: DescribePatchBaselines, GetPatchBaseline, DescribePatchGroups (and
  EC2 DescribeTags for the instances to tag).
- `diff(desired, actual)`, pure: the changes, in the order they must be made.
- `apply(ssm, changes, ec2=...)`, or `apply_each` which yields each change once made:
  CreatePatchBaseline (with a ClientToken), UpdatePatchBaseline,
  Deregister/RegisterPatchBaselineForPatchGroup, EC2 CreateTags.

How our classification names map to each system's filter values is in `OPERATING_SYSTEMS` and
in docs/aws-baselines.md; keep the two together.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, assert_never, cast

from patchpilot.errors import InputError, Problem, quote
from patchpilot.inventory import Instance
from patchpilot.planning import plan
from patchpilot.policy import Policy
from patchpilot.policy.model import AwsBaselines

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_ssm.literals import PatchComplianceLevelType, PatchFilterKeyType
    from mypy_boto3_ssm.type_defs import (
        GetPatchBaselineResultTypeDef,
        PatchFilterOutputTypeDef,
        PatchFilterTypeDef,
        PatchRuleOutputTypeDef,
        PatchRuleTypeDef,
    )

NAME_PREFIX = "patchpilot-"
MAX_LISTED_PATCHES = 50  # ApprovedPatches and RejectedPatches each (the SSM model's PatchIdList)
MAX_PATCH_ID = 100  # characters (PatchId)
TAG_BATCH = 1000  # resource ids per EC2 CreateTags call
DESCRIBE_TAGS_BATCH = 200  # values per EC2 filter
PATCH_GROUP_TAG_KEYS = ("PatchGroup", "Patch Group")  # the only keys Patch Manager reads
_PATCH_GROUP_PUNCTUATION = set(" _.:/=+-@")  # with letters and digits: the SSM PatchGroup pattern
_WINDOWS_UPDATE_ID = re.compile(r"^(KB\d+|MS\d{2}-\d{3,})$", re.IGNORECASE)
_APT_PRIORITIES = ("Required", "Important", "Standard", "Optional", "Extra")

Family = Literal["windows", "yum", "suse", "apt"]


# ---------------------------------------------------------------- the vocabulary per system


@dataclass(frozen=True)
class SsmOs:
    """What a Systems Manager operating system offers a baseline's approval rules."""

    name: str  # the OperatingSystem value
    label: str
    family: Family
    # Our classification -> the system's CLASSIFICATION values (apt systems have no such key:
    # security comes from the `-security` repositories, "Other" turns on non-security updates).
    classes: Mapping[str, tuple[str, ...]]
    security_classes: frozenset[str]  # the values a severity filter applies to
    severity_key: str | None  # SEVERITY, MSRC_SEVERITY, or None
    severities: tuple[str, ...]

    @property
    def slug(self) -> str:
        return self.name.lower()

    @property
    def windows(self) -> bool:
        return self.family == "windows"

    @property
    def approve_after_days(self) -> bool:
        """ApproveAfterDays is not supported for Debian Server or Ubuntu Server (API PatchRule)."""
        return self.family != "apt"


_WINDOWS_CLASSES = {
    "Critical": ("CriticalUpdates",),
    "Security": ("SecurityUpdates",),
    "UpdateRollup": ("UpdateRollups",),
    "FeaturePack": ("FeaturePacks",),
    "ServicePack": ("ServicePacks",),
    "Definition": ("DefinitionUpdates",),
    "Tools": ("Tools",),
    "Updates": ("Updates",),
}
# Linux advisories have no separate class for critical non-security fixes: Critical selects the
# security advisories, as Security does; narrow them with severities.
_YUM_CLASSES = {
    "Critical": ("Security",),
    "Security": ("Security",),
    "Other": ("Bugfix", "Enhancement", "Recommended", "Newpackage"),
}
_SUSE_CLASSES = {
    "Critical": ("Security",),
    "Security": ("Security",),
    "Other": ("Recommended", "Optional", "Feature", "Document", "Yast"),
}
_APT_CLASSES: dict[str, tuple[str, ...]] = {"Critical": (), "Security": (), "Other": ()}
_AMAZON_SEVERITIES = ("Critical", "Important", "Medium", "Low")
_RHEL_SEVERITIES = ("Critical", "Important", "Moderate", "Low")


def _yum(name: str, label: str, severities: tuple[str, ...]) -> SsmOs:
    return SsmOs(name, label, "yum", _YUM_CLASSES, frozenset({"Security"}), "SEVERITY", severities)


OPERATING_SYSTEMS: dict[str, SsmOs] = {
    os.name: os
    for os in (
        SsmOs(
            "WINDOWS",
            "Windows Server",
            "windows",
            _WINDOWS_CLASSES,
            frozenset({"SecurityUpdates"}),
            "MSRC_SEVERITY",
            ("Critical", "Important", "Moderate", "Low", "Unspecified"),
        ),
        _yum("AMAZON_LINUX_2", "Amazon Linux 2", _AMAZON_SEVERITIES),
        _yum("AMAZON_LINUX_2023", "Amazon Linux 2023", _AMAZON_SEVERITIES),
        _yum("REDHAT_ENTERPRISE_LINUX", "Red Hat Enterprise Linux", _RHEL_SEVERITIES),
        _yum("CENTOS", "CentOS", _RHEL_SEVERITIES),
        _yum("ORACLE_LINUX", "Oracle Linux", _RHEL_SEVERITIES),
        _yum("ROCKY_LINUX", "Rocky Linux", _RHEL_SEVERITIES),
        _yum("ALMA_LINUX", "AlmaLinux", _RHEL_SEVERITIES),
        SsmOs(
            "SUSE",
            "SUSE Linux Enterprise Server",
            "suse",
            _SUSE_CLASSES,
            frozenset({"Security"}),
            "SEVERITY",
            _RHEL_SEVERITIES,
        ),
        SsmOs("UBUNTU", "Ubuntu Server", "apt", _APT_CLASSES, frozenset(), None, ()),
        SsmOs("DEBIAN", "Debian Server", "apt", _APT_CLASSES, frozenset(), None, ()),
    )
}


def is_windows_update(name: str) -> bool:
    """A Windows update id (KB1234567, MS17-010), as Patch Manager's Windows lists take them."""
    return bool(_WINDOWS_UPDATE_ID.match(name))


def override_baselines(
    windows: bool, approved: Sequence[str], rejected: Sequence[str] = ()
) -> list[dict[str, object]] | str:
    """The BaselineOverride document (a JSON list of baselines, each with its OperatingSystem;
    the agent uses the one of its host) that installs exactly `approved` on Windows or on every
    Linux system: the named patches as ApprovedPatches (non-security ones too on Linux), no
    approval rules, `rejected` blocked; empty when nothing named is for this OS. Or why it cannot:
    more than Patch Manager's limit of 50 ApprovedPatches or RejectedPatches, or too long an id."""
    kind = "Windows update" if windows else "Linux package"
    wanted = [p for p in dict.fromkeys(approved) if is_windows_update(p) == windows]
    blocked = [p for p in dict.fromkeys(rejected) if is_windows_update(p) == windows and p not in wanted]
    if not wanted:
        return []
    for api, items in (("ApprovedPatches", wanted), ("RejectedPatches", blocked)):
        if len(items) > MAX_LISTED_PATCHES:
            return (
                f"{len(items)} {kind}s for {api}: a Patch Manager baseline override holds at most "
                f"{MAX_LISTED_PATCHES} ({api})"
            )
        long = next((p for p in items if len(p) > MAX_PATCH_ID), None)
        if long is not None:
            return f"{quote(long[:40])}... is longer than Patch Manager's {MAX_PATCH_ID} characters per patch id"
    documents: list[dict[str, object]] = []
    for os in OPERATING_SYSTEMS.values():
        if os.windows != windows:
            continue
        document: dict[str, object] = {
            "OperatingSystem": os.name,
            "ApprovalRules": {"PatchRules": []},
            "ApprovedPatches": wanted,
            "ApprovedPatchesComplianceLevel": "CRITICAL",
        }
        if not windows:
            document["ApprovedPatchesEnableNonSecurity"] = True  # a fix need not be a security advisory
        if blocked:
            document["RejectedPatches"] = blocked
            document["RejectedPatchesAction"] = "BLOCK"
        documents.append(document)
    return documents


# ---------------------------------------------------------------- what a baseline holds

Filters = tuple[tuple[str, tuple[str, ...]], ...]  # (key, values) sorted by key, values sorted


def _filters(pairs: Iterable[tuple[str, Iterable[str]]]) -> Filters:
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


# ---------------------------------------------------------------- desired: baselines


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
        return [Rule(_filters([("PRIORITY", _APT_PRIORITIES)]), None, level, enable_non_security=other)]
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
        rules.append(Rule(_filters(pairs), days, level))
    if others:
        rules.append(Rule(_filters([("CLASSIFICATION", others)]), days, level, enable_non_security=not os.windows))
    return rules


# ---------------------------------------------------------------- desired: instance tags


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


# ---------------------------------------------------------------- actual


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
    for batch in _chunks(ids, DESCRIBE_TAGS_BATCH):
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
    return _filters((f["Key"], f["Values"]) for f in filters)


# ---------------------------------------------------------------- the difference


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


# ---------------------------------------------------------------- doing it


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
                for batch in _chunks(list(ids), TAG_BATCH):
                    ec2.create_tags(Resources=batch, Tags=[{"Key": key, "Value": value}])
            case Blocked():
                continue
            case _:
                assert_never(change)
        yield change


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------- for reports


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
