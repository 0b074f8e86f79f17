"""What an installPatches request carries, shared by the fleet's installs (`fleet/install.py`)
and Update Manager's maintenance configurations (`update_manager/`): the classifications and
reboot settings Azure knows, KB numbers and Linux package masks, the maximum duration, the body."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from patchpilot.inventory import OsFamily
from patchpilot.wording import spoken_duration

WINDOWS_CLASSIFICATIONS = (
    *("Critical", "Security", "UpdateRollup", "FeaturePack"),
    *("ServicePack", "Definition", "Tools", "Updates"),
)
LINUX_CLASSIFICATIONS = ("Critical", "Security", "Other")
REBOOT_SETTINGS = {"if_required": "IfRequired", "always": "Always", "never": "Never"}
DEFAULT_INSTALL_DURATION = timedelta(hours=2)
MAX_INSTALL_DURATION = timedelta(hours=4)  # Azure's limit for installPatches
MIN_INSTALL_DURATION = timedelta(minutes=5)
_KB = re.compile(r"^(?:KB)?(\d+)$", re.IGNORECASE)


def kb_number(name: str) -> str | None:
    """The KB number a patch name gives ("KB5034441" or "5034441" -> "5034441"), None for
    anything else (a Linux package name mask: "openssl", "kernel*", "libc=1.0.1")."""
    found = _KB.fullmatch(name.strip())
    return found[1] if found else None


def split_patch_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(KB numbers, Linux package masks), by `kb_number`; KBs are sent as their numbers."""
    kbs: list[str] = []
    packages: list[str] = []
    for name in names:
        kb = kb_number(name)
        if kb is not None:
            kbs.append(kb)
        elif name.strip():
            packages.append(name.strip())
    return list(dict.fromkeys(kbs)), list(dict.fromkeys(packages))


def install_duration(requested: timedelta | None) -> tuple[timedelta, str]:
    """installPatches' maximumDuration (2 h by default, clamped to 5 min..4 h, Azure's limit) and
    a note when clamped."""
    wanted = requested if requested is not None else DEFAULT_INSTALL_DURATION
    chosen = min(max(wanted, MIN_INSTALL_DURATION), MAX_INSTALL_DURATION)
    note = (
        "" if chosen == wanted else f"maximum duration {spoken_duration(wanted)} clamped to {spoken_duration(chosen)}"
    )
    return chosen, note


def install_body(
    os: OsFamily,
    classifications: Sequence[str],
    include: Sequence[str],
    exclude: Sequence[str],
    pinned: Sequence[str] | None,
    reboot: str,
    duration: timedelta,
) -> dict[str, Any] | str:
    """The installPatches request body for one OS (the same for VMs and Arc servers), or why there
    is nothing it could select. A pinned set (a later ring) installs exactly those patches: no
    classification is sent, since Azure adds a classification's patches to the included ones."""
    body: dict[str, Any] = {
        "maximumDuration": f"PT{int(duration.total_seconds() // 60)}M",
        "rebootSetting": REBOOT_SETTINGS[reboot],
    }
    include_kbs, include_packages = split_patch_names(pinned if pinned is not None else include)
    exclude_kbs, exclude_packages = split_patch_names(exclude)
    if os == "windows":
        chosen = [] if pinned is not None else [c for c in WINDOWS_CLASSIFICATIONS if c in classifications]
        if not chosen and not include_kbs:
            return f"no Windows classification or KB selected (policy classifications: {', '.join(classifications)})"
        params: dict[str, Any] = {"classificationsToInclude": chosen}
        if include_kbs:
            params["kbNumbersToInclude"] = include_kbs
        if exclude_kbs:
            params["kbNumbersToExclude"] = exclude_kbs
        body["windowsParameters"] = params
        return body
    chosen = [] if pinned is not None else [c for c in LINUX_CLASSIFICATIONS if c in classifications]
    if ("Critical" in chosen) != ("Security" in chosen):
        chosen = ["Critical", "Security", *[c for c in chosen if c not in ("Critical", "Security")]]
    if not chosen and not include_packages:
        return f"no Linux classification or package selected (policy classifications: {', '.join(classifications)})"
    params = {"classificationsToInclude": chosen}
    if include_packages:
        params["packageNameMasksToInclude"] = include_packages
    if exclude_packages:
        params["packageNameMasksToExclude"] = exclude_packages
    body["linuxParameters"] = params
    return body
