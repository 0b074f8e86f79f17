"""Each system's Patch Manager vocabulary: how PatchPilot's classifications and severities map to
the filter values of each operating system (`OPERATING_SYSTEMS`, documented in
docs/aws-baselines.md: keep the two together), and the override baselines of a named-only install."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from patchpilot.errors import quote

MAX_LISTED_PATCHES = 50  # ApprovedPatches and RejectedPatches each (the SSM model's PatchIdList)


MAX_PATCH_ID = 100  # characters (PatchId)


_WINDOWS_UPDATE_ID = re.compile(r"^(KB\d+|MS\d{2}-\d{3,})$", re.IGNORECASE)


APT_PRIORITIES = ("Required", "Important", "Standard", "Optional", "Extra")


Family = Literal["windows", "yum", "suse", "apt"]


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
