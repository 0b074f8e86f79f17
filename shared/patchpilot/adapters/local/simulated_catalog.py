"""What the simulated machines lack and what an install puts on them: a small, realistic
catalogue of patches per OS, how a policy's selection picks from it, and the assessment that the
simulated fleet reports (adapters/local/simulated_fleet.py). Pure functions of the instance, its
`simulation` hints and the fleet's history."""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from patchpilot.compliance.model import MissingPatch, PatchGap, PatchSeverity, PatchState
from patchpilot.inventory import Instance, OsFamily, Simulation

# A small, realistic catalog of the patches each OS is missing: (patch id, classification).
CATALOG: dict[OsFamily, tuple[tuple[str, str], ...]] = {
    "linux": (
        ("openssl-3.0.13-1.el9", "Security"),
        ("kernel-5.14.0-503.el9", "Critical"),
        ("glibc-2.34-100.el9", "Security"),
        ("sudo-1.9.5p2-10.el9", "Critical"),
        ("curl-7.76.1-29.el9", "Security"),
        ("tzdata-2024b-2.el9", "Other"),
        ("vim-minimal-8.2.2637-21.el9", "Other"),
    ),
    "windows": (
        ("KB5048661", "Security"),  # cumulative update
        ("KB5048817", "Security"),  # .NET Framework cumulative update
        ("KB5050111", "Critical"),  # servicing stack update
        ("KB890830", "UpdateRollup"),  # Malicious Software Removal Tool
        ("KB2267602", "Definition"),  # Defender security intelligence
    ),
}

# What the simulated assessment says of each catalogue patch: (title, severity, days since release).
PATCH_FACTS: dict[str, tuple[str, PatchSeverity, int]] = {
    "openssl-3.0.13-1.el9": ("OpenSSL: denial of service in X.509 name checks", "Important", 12),
    "kernel-5.14.0-503.el9": ("kernel: use-after-free in netfilter", "Critical", 9),
    "glibc-2.34-100.el9": ("glibc: buffer overflow in iconv", "Important", 23),
    "sudo-1.9.5p2-10.el9": ("sudo: privilege escalation via sudoedit", "Critical", 5),
    "curl-7.76.1-29.el9": ("curl: cookie injection", "Moderate", 31),
    "tzdata-2024b-2.el9": ("tzdata: time zone rule updates", "Low", 40),
    "vim-minimal-8.2.2637-21.el9": ("vim: heap overflow in ex commands", "Low", 18),
    "KB5048661": ("Cumulative Update for Windows Server 2022", "Critical", 8),
    "KB5048817": ("Cumulative Update for .NET Framework", "Important", 8),
    "KB5050111": ("Servicing Stack Update", "Critical", 8),
    "KB890830": ("Windows Malicious Software Removal Tool", "Unspecified", 8),
    "KB2267602": ("Security Intelligence Update for Microsoft Defender Antivirus", "Unspecified", 1),
}
HINTED_CLASSIFICATION = "Security"  # of a patch a `missing` hint names that the catalogue does not know

_KB = re.compile(r"^KB\d+$", re.IGNORECASE)


def hints(instance: Instance) -> Simulation:
    return instance.simulation or Simulation()


def digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode()).digest()


def matches(item: str, pattern: str) -> bool:
    """An exact id (any case), a glob, or a Linux package name without its version."""
    item_l, pattern_l = item.casefold(), pattern.casefold()
    if item_l == pattern_l or fnmatch.fnmatchcase(item_l, pattern_l):
        return True
    return not _KB.match(item) and item_l.rsplit("-", 2)[0] == pattern_l


def for_os(entry: str, os: OsFamily) -> bool:
    """A KB number is a Windows update; anything else names a Linux package."""
    return bool(_KB.match(entry)) == (os == "windows")


def select_patches(
    os: OsFamily, classifications: Sequence[str], include: Sequence[str], exclude: Sequence[str]
) -> list[str]:
    """What a policy-driven install puts on a machine of this OS: the catalog's patches of the
    wanted classifications, plus the included ones (catalog globs, or ids taken as they are),
    minus the excluded ones."""
    wanted = set(classifications)
    chosen = [patch for patch, classification in CATALOG[os] if classification in wanted]
    for entry in include:
        if any(ch in entry for ch in "*?["):
            extra = [patch for patch, _ in CATALOG[os] if matches(patch, entry)]
        else:
            extra = [entry] if for_os(entry, os) else []
        chosen.extend(patch for patch in extra if patch not in chosen)
    return [patch for patch in chosen if not any(matches(patch, pattern) for pattern in exclude)]


def _classification(os: OsFamily, patch_id: str) -> str:
    return next((c for p, c in CATALOG[os] if p == patch_id), HINTED_CLASSIFICATION)


def lacking(instance: Instance) -> list[str]:
    """The patches a machine lacks before PatchPilot patched it: its `missing` hint, else each
    catalogue patch for its OS with a stable three-in-four chance (some machines lack nothing new)."""
    hint = hints(instance).missing
    if hint is not None:
        return list(dict.fromkeys(hint))
    return [p for p, _ in CATALOG[instance.os] if digest("missing", instance.id, p)[0] % 4 != 0]


def _missing_patch(instance: Instance, patch_id: str, gap: PatchGap, now: datetime) -> MissingPatch:
    title, severity, days = PATCH_FACTS.get(patch_id, ("", "Important", 10))
    released = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    version = patch_id.split("-", 1)[1] if instance.os == "linux" and "-" in patch_id else ""
    classification = _classification(instance.os, patch_id)
    return MissingPatch(patch_id, title, classification, severity, released, version, gap)


def assessment(
    instance: Instance, history: list[tuple[str, str, str, bool, str, list[str]]], assessed: datetime, now: datetime
) -> PatchState:
    """Replay the machine's installs and rollbacks, in the order they ended."""
    rolled_back = {run for run, kind, _, ok, _, _ in history if kind == "rollback" and ok}
    installed: set[str] = set()
    unbooted: set[str] = set()
    last_install: datetime | None = None
    failed = False
    for run, kind, done_at, ok, detail, items in history:
        if kind != "install" or run in rolled_back:
            continue
        if not ok:
            failed = True
            continue
        failed = False
        installed.update(items)
        last_install = datetime.fromisoformat(done_at)
        (unbooted.update if "not rebooted" in detail else unbooted.difference_update)(items)
    gaps: list[MissingPatch] = []
    for patch_id in lacking(instance):
        if patch_id in unbooted:
            gaps.append(_missing_patch(instance, patch_id, "pending_reboot", now))
        elif patch_id not in installed:
            gaps.append(_missing_patch(instance, patch_id, "failed" if failed else "missing", now))
    return PatchState(
        instance.id,
        assessed_at=assessed,
        missing=tuple(gaps),
        reboot_pending=bool(unbooted),
        last_install_at=last_install,
    )
