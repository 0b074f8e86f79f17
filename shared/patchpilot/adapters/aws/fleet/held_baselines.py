"""Patch exceptions on an unpinned install (a first ring): the machine's own effective patch
baseline, with the excepted patches rejected, passed to AWS-RunPatchBaseline as its
BaselineOverride (docs/governance.md, "Where a patch exception is applied").

The effective baseline is the one Patch Manager would use: the baseline registered for the
machine's patch group (its `PatchGroup` / `Patch Group` tag) and operating system
(`GetPatchBaselineForPatchGroup`), else the default baseline of its operating system
(`GetDefaultPatchBaseline`); its rules and lists come from `GetPatchBaseline`. The operating
system is SSM's (`DescribeInstanceInformation`'s PlatformName and PlatformVersion). A
`BaselineReader` asks each question once per install command and placement, however many
machines share the answer.

The document is a JSON list of baselines, each with its OperatingSystem: the agent uses the one of
its host, so one document serves every machine of a patch group, whatever its Linux flavour.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from patchpilot.errors import quote
from patchpilot.inventory import OsFamily
from patchpilot.policy.exceptions import names_patch

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_ssm.literals import OperatingSystemType
    from mypy_boto3_ssm.type_defs import GetPatchBaselineResultTypeDef, InstanceInformationTypeDef

# The Linux systems of the SSM model (OperatingSystem): a machine whose PlatformName is not
# recognised gets the baseline of each, and its agent picks its own.
LINUX_SYSTEMS: tuple[OperatingSystemType, ...] = (
    "AMAZON_LINUX",
    "AMAZON_LINUX_2",
    "AMAZON_LINUX_2022",
    "AMAZON_LINUX_2023",
    "UBUNTU",
    "DEBIAN",
    "REDHAT_ENTERPRISE_LINUX",
    "CENTOS",
    "ORACLE_LINUX",
    "ROCKY_LINUX",
    "ALMA_LINUX",
    "SUSE",
    "RASPBIAN",
)

# PlatformName prefixes (lower case) as SSM reports them, and their OperatingSystem.
_PLATFORMS: tuple[tuple[str, OperatingSystemType], ...] = (
    ("ubuntu", "UBUNTU"),
    ("debian", "DEBIAN"),
    ("red hat", "REDHAT_ENTERPRISE_LINUX"),
    ("centos", "CENTOS"),
    ("oracle", "ORACLE_LINUX"),
    ("rocky", "ROCKY_LINUX"),
    ("alma", "ALMA_LINUX"),
    ("sles", "SUSE"),
    ("suse", "SUSE"),
    ("raspbian", "RASPBIAN"),
    ("macos", "MACOS"),
)

# The BaselineOverride members a GetPatchBaseline answer carries as they are (SSM model).
_KEPT = (
    "GlobalFilters",
    "ApprovalRules",
    "ApprovedPatchesComplianceLevel",
    "ApprovedPatchesEnableNonSecurity",
    "Sources",
    "AvailableSecurityUpdatesComplianceStatus",
)


def patch_group(tags: dict[str, str]) -> str | None:
    """The instance's patch group: the value of the first patch-group tag Patch Manager reads."""
    from ..baselines import PATCH_GROUP_TAG_KEYS  # imported when used: the package plans (the worker's start)

    return next((tags[key] for key in PATCH_GROUP_TAG_KEYS if tags.get(key)), None)


def held_patches(family: OsFamily, exclude: Iterable[str]) -> tuple[str, ...]:
    """The ids and masks of `exclude` a baseline of `family` can reject: KB and MS ids on Windows,
    the rest on Linux (as the emergency override splits them)."""
    from ..baselines import is_windows_update

    return tuple(dict.fromkeys(p for p in exclude if is_windows_update(p) == (family == "windows")))


def ssm_systems(info: InstanceInformationTypeDef | None, family: OsFamily) -> tuple[OperatingSystemType, ...]:
    """The SSM operating system of a machine (one), from its DescribeInstanceInformation record; every
    Linux one when SSM does not say or names a system this table does not know."""
    if family == "windows":
        return ("WINDOWS",)
    name = (info or {}).get("PlatformName", "").strip().lower()
    version = (info or {}).get("PlatformVersion", "").strip()
    if name.startswith("amazon linux"):
        if "ami" in name or version.startswith("201"):
            return ("AMAZON_LINUX",)
        for prefix, system in (("2023", "AMAZON_LINUX_2023"), ("2022", "AMAZON_LINUX_2022"), ("2", "AMAZON_LINUX_2")):
            if version == prefix or version.startswith(f"{prefix}."):
                return (system,)  # type: ignore[return-value]  # one of the literals above
        return LINUX_SYSTEMS
    return next(((system,) for prefix, system in _PLATFORMS if name.startswith(prefix)), LINUX_SYSTEMS)


class BaselineReader:
    """The effective baselines of one placement (account, region), each question asked once."""

    def __init__(self, ssm: SSMClient) -> None:
        self.ssm = ssm
        self._ids: dict[tuple[str | None, str], str] = {}
        self._baselines: dict[str, GetPatchBaselineResultTypeDef] = {}

    def baseline_id(self, group: str | None, system: OperatingSystemType) -> str:
        """The id of the baseline Patch Manager uses for `group` (None: no patch group) on `system`."""
        key = (group, system)
        if key not in self._ids:
            if group is None:
                self._ids[key] = self.ssm.get_default_patch_baseline(OperatingSystem=system)["BaselineId"]
            else:
                answer = self.ssm.get_patch_baseline_for_patch_group(PatchGroup=group, OperatingSystem=system)
                self._ids[key] = answer["BaselineId"]
        return self._ids[key]

    def baseline(self, baseline_id: str) -> GetPatchBaselineResultTypeDef:
        if baseline_id not in self._baselines:
            self._baselines[baseline_id] = self.ssm.get_patch_baseline(BaselineId=baseline_id)
        return self._baselines[baseline_id]


def held_override(
    reader: BaselineReader, group: str | None, systems: Iterable[OperatingSystemType], held: Sequence[str]
) -> list[dict[str, Any]] | str:
    """The BaselineOverride document: for each of `systems`, the effective baseline of `group` on it,
    with `held` added to its RejectedPatches and RejectedPatchesAction BLOCK (a held patch is not
    installed as another's dependency either), and dropped from its ApprovedPatches. Or why Patch
    Manager cannot take it (more than 50 rejected patches, too long an id). Raises the SSM reads'
    ClientError."""
    from ..baselines import MAX_LISTED_PATCHES, MAX_PATCH_ID

    long = next((p for p in held if len(p) > MAX_PATCH_ID), None)
    if long is not None:
        return f"{quote(long[:40])}... is longer than Patch Manager's {MAX_PATCH_ID} characters per patch id"
    document: list[dict[str, Any]] = []
    for system in dict.fromkeys(systems):
        baseline_id = reader.baseline_id(group, system)
        baseline = reader.baseline(baseline_id)
        entry: dict[str, Any] = {"OperatingSystem": system}
        entry.update({key: baseline[key] for key in _KEPT if key in baseline})  # type: ignore[literal-required]
        approved = [p for p in baseline.get("ApprovedPatches", []) if not names_patch(held, p)]
        if approved:
            entry["ApprovedPatches"] = approved
        rejected = list(dict.fromkeys([*baseline.get("RejectedPatches", []), *held]))
        if len(rejected) > MAX_LISTED_PATCHES:
            return (
                f"baseline {baseline_id} rejects {len(baseline.get('RejectedPatches', []))} patches already: with "
                f"the {len(held)} excepted ones that is {len(rejected)}, and a Patch Manager baseline override "
                f"holds at most {MAX_LISTED_PATCHES} (RejectedPatches)"
            )
        entry["RejectedPatches"] = rejected
        entry["RejectedPatchesAction"] = "BLOCK"
        document.append(entry)
    return document
