"""Hotpatch and live patching, pure (docs/governance.md, "Hotpatch and stopped machines"): which
machines take their security patches without a reboot, and when a promoted set needs none.

A machine is hotpatch-enabled when discovery (or the inventory) says so (`Instance.hotpatch`):
Azure hotpatch (`patchSettings.enableHotpatching`) or Kernel Live Patching on Amazon Linux. Such a
machine skips its reboot when every patch promoted to it is a live patch by name: Amazon Linux ships
Kernel Live Patching as `kernel-livepatch-<kernel version>` packages, and a Windows update reported
by name with "hotpatch" in it is one. A Windows hotpatch reported only by its KB number cannot be
told apart: Azure's own `rebootSetting: IfRequired` then leaves a hotpatch-only install unrebooted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from patchpilot.inventory import Instance

LIVE_PATCH_PREFIXES = ("kernel-livepatch-",)  # Amazon Linux 2 and 2023 Kernel Live Patching packages
HOTPATCH_MARK = "hotpatch"  # in a Windows update's name: "... Security Hotpatch Update ..."

NO_REBOOT_NOTE = "hotpatch only: no reboot"


def live_patch(item: str) -> bool:
    """Is this patch (a package name, "name=version" or "name-version", or an update title) a
    live patch or hotpatch, applied without a reboot?"""
    name = item.strip().lower()
    return name.startswith(LIVE_PATCH_PREFIXES) or HOTPATCH_MARK in name


def reboot_free(instance: Instance, patches: Sequence[str] | None) -> bool:
    """Does this machine take `patches` without a reboot? Only a hotpatch-enabled machine with a
    known, non-empty set of live patches does: a set the policy selects at install time (None) may
    hold anything."""
    return instance.hotpatch and bool(patches) and all(live_patch(p) for p in patches or ())


def hotpatch_machines(instances: Iterable[Instance]) -> list[Instance]:
    """The hotpatch-enabled machines, in the order given."""
    return [i for i in instances if i.hotpatch]
