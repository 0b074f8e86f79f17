"""The audit, pure: which machines a schedule cannot patch and which patch themselves behind
PatchPilot's back, following Microsoft's scenario table (docs/azure-update-manager.md)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from patchpilot.policy import Policy

from .assignments import Assignment
from .desired import PatchPilotSchedule
from .machines import CUSTOMER_MANAGED_MODE, HOTPATCH_REFUSES_BYPASS, Machine

FindingKind = Literal[
    "schedule_blocked_by_bypass",
    "schedule_blocked_by_patch_mode",
    "platform_patches_on_its_own",
    "os_patches_on_its_own",
    "image_may_patch_on_its_own",
    "excluded_but_scheduled",
    "schedule_blocked_by_hotpatch",
    "hotpatch_patches_on_its_own",
]


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    severity: Literal["error", "warning"]
    message: str
    fixable: bool  # by `audit --fix` (Customer Managed Schedules)


@dataclass(frozen=True)
class MachineAudit:
    machine: Machine
    ring: str | None  # the policy's ring for it (None: excluded, in no ring, or not an Azure ring)
    excluded: str | None  # why the policy excludes it
    schedules: tuple[str, ...]  # maintenance configuration ids that schedule it (or will, once synced)
    findings: tuple[Finding, ...]

    @property
    def fixable(self) -> bool:
        return any(f.fixable for f in self.findings)


def audit(
    policy: Policy,
    machines: Iterable[Machine],
    assignments: Iterable[Assignment],
    patchpilot: Sequence[PatchPilotSchedule] = (),
) -> list[MachineAudit]:
    """What each machine's patch orchestration means for PatchPilot (the table in
    docs/azure-update-manager.md). `assignments`: every assignment Resource Graph shows;
    `patchpilot`: the policy's own schedules (`patchpilot_schedules`), whose dynamic scopes are
    evaluated here, since Resource Graph may not list dynamic scopes."""
    ours_ids = {s.configuration_id.lower() for s in patchpilot}
    static: dict[str, list[str]] = {}
    dynamic: list[Assignment] = []
    for a in assignments:
        if a.kind == "static":
            static.setdefault(a.machine_id.lower(), []).append(a.configuration_id)
        elif a.filter is not None and a.scope is not None:
            dynamic.append(a)
    out = []
    for machine in machines:
        instance = machine.instance()
        excluded = policy.exclude.reason(instance) if instance else None
        ring = None
        if instance is not None and excluded is None:
            found = next((r for r in policy.rings if r.select.matches(instance)), None)
            ring = found.name if found is not None else None
        schedules = list(static.get(machine.id.lower(), []))
        schedules += [a.configuration_id for a in dynamic if _in_scope(a, machine)]
        for schedule in patchpilot:
            if schedule.filter is None:  # static: the machine's ring
                hit = schedule.ring == ring
            else:
                where = {s.lower() for s in schedule.subscriptions}
                hit = machine.subscription.lower() in where and schedule.filter.matches(machine)
            if hit:
                schedules.append(schedule.configuration_id)
        first: dict[str, str] = {}
        for schedule_id in schedules:  # ids differ in case between Resource Graph and ARM
            first.setdefault(schedule_id.lower(), schedule_id)
        unique = tuple(first.values())
        findings = _findings(machine, ring, excluded, unique, ours_ids)
        out.append(MachineAudit(machine, ring, excluded, unique, tuple(findings)))
    return out


def _in_scope(assignment: Assignment, machine: Machine) -> bool:
    scope = assignment.scope
    assert scope is not None and assignment.filter is not None
    if scope.subscription.lower() != machine.subscription.lower():
        return False
    if scope.resource_group is not None and scope.resource_group.lower() != machine.resource_group.lower():
        return False
    return assignment.filter.matches(machine)


def _findings(
    machine: Machine, ring: str | None, excluded: str | None, schedules: Sequence[str], ours: set[str]
) -> list[Finding]:
    found: list[Finding] = []
    if excluded is not None:
        theirs = [s for s in schedules if s.lower() in ours]
        if theirs:
            found.append(
                Finding(
                    "excluded_but_scheduled",
                    "error",
                    f"the policy excludes it ({excluded}) but PatchPilot's schedule {_short(theirs[0])} includes it: "
                    "a dynamic scope cannot leave it out; use azure.maintenance.assignment: static or change its tags",
                    fixable=False,
                )
            )
    if machine.arc or machine.os is None:
        return found  # Arc servers need no patch-mode prerequisite; an unknown OS has no settings to judge
    s = machine.settings
    if s.hotpatch:  # never a fix: it would set bypassPlatformSafetyChecksOnUserSchedule
        found.extend(_hotpatch_findings(machine, ring, schedules))
        return found
    if schedules and not s.customer_managed:
        where = _short(schedules[0])
        if s.patch_mode == CUSTOMER_MANAGED_MODE:
            found.append(
                Finding(
                    "schedule_blocked_by_bypass",
                    "error",
                    f"in schedule {where}, but bypassPlatformSafetyChecksOnUserSchedule is false: the schedule fails "
                    "with 'prerequisites not met', and without the schedule Azure patches it on its own",
                    fixable=True,
                )
            )
        else:
            also = "; meanwhile Windows Update installs patches on its own" if s.patch_mode == "AutomaticByOS" else ""
            found.append(
                Finding(
                    "schedule_blocked_by_patch_mode",
                    "error",
                    f"in schedule {where}, but its patch mode is {s.patch_mode}, not AutomaticByPlatform: the schedule "
                    f"fails with 'prerequisites not met'{also}",
                    fixable=True,
                )
            )
    elif ring is not None and not schedules:
        if s.patch_mode == CUSTOMER_MANAGED_MODE and not s.bypass:
            found.append(
                Finding(
                    "platform_patches_on_its_own",
                    "error",
                    "AutomaticByPlatform without a schedule and without bypassPlatformSafetyChecksOnUserSchedule: "
                    "Azure installs Critical and Security patches on its own in off-peak hours",
                    fixable=True,
                )
            )
        elif s.patch_mode == "AutomaticByOS":
            found.append(
                Finding(
                    "os_patches_on_its_own",
                    "error",
                    "AutomaticByOS: Windows Update installs patches on its own",
                    fixable=True,
                )
            )
        elif s.patch_mode == "ImageDefault":
            found.append(
                Finding(
                    "image_may_patch_on_its_own",
                    "warning",
                    "ImageDefault: the image's own updater (unattended-upgrades, dnf-automatic) may install patches",
                    fixable=True,
                )
            )
    return found


def _hotpatch_findings(machine: Machine, ring: str | None, schedules: Sequence[str]) -> list[Finding]:
    """A hotpatch-enabled VM: Azure installs its hotpatches itself (AutomaticByPlatform, the
    mode hotpatch requires), and `--fix` cannot hand it to a schedule (HOTPATCH_REFUSES_BYPASS)."""
    s = machine.settings
    if schedules and not s.customer_managed:
        return [
            Finding(
                "schedule_blocked_by_hotpatch",
                "error",
                f"in schedule {_short(schedules[0])}, but {HOTPATCH_REFUSES_BYPASS}: the schedule fails with "
                "'prerequisites not met'; leave it out of the schedule (PatchPilot's runs patch it) "
                "or turn hotpatch off",
                fixable=False,
            )
        ]
    if ring is not None and not schedules and not s.bypass:
        return [
            Finding(
                "hotpatch_patches_on_its_own",
                "warning",
                "hotpatch-enabled: Azure installs hotpatches (no reboot) on its own in off-peak hours, and "
                f"--fix cannot stop it: {HOTPATCH_REFUSES_BYPASS}",
                fixable=False,
            )
        ]
    return []


def _short(configuration_id: str) -> str:
    return configuration_id.rsplit("/", 1)[-1]
