"""What the policy wants, pure: one maintenance configuration per Azure ring (name, schedule,
patches, reboot) and its assignments (a dynamic scope per ring and subscription, or static)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from patchpilot.adapters.azure.install_body import (
    LINUX_CLASSIFICATIONS,
    REBOOT_SETTINGS,
    WINDOWS_CLASSIFICATIONS,
    kb_number,
)
from patchpilot.errors import InputError, Problem, quote
from patchpilot.inventory import OsFamily
from patchpilot.policy import Policy, Ring
from patchpilot.policy.fields import format_duration
from patchpilot.policy.model import Schedule

from .assignments import MAX_TAG_FILTERS, Assignment, ScopeFilter, assignment_id, configuration_id, unique_sorted
from .machines import ARC_TYPE, OS_TYPES, VM_TYPE, Machine
from .recurrence import recur_every, windows_time_zone

if TYPE_CHECKING:
    from azure.mgmt.maintenance.models import MaintenanceConfiguration


TAG_POLICY = "PatchPilotPolicy"  # on a maintenance configuration: the policy it belongs to


TAG_RING = "PatchPilotRing"


MIN_WINDOW = timedelta(hours=1, minutes=30)  # guest-scope limits (maintenance-configurations.md)


MAX_WINDOW = timedelta(hours=3, minutes=55)


MAX_STATIC_PER_SCHEDULE = 3000  # resource associations per schedule (scheduled-patching.md service limits)


MAX_RESOURCE_GROUP_FILTERS = 50


_BULLETIN = re.compile(r"^MS\d{2}-\d{3,}$", re.IGNORECASE)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*[A-Za-z0-9_]$")


def azure_rings(policy: Policy) -> list[tuple[int, Ring]]:
    """The rings that can hold Azure machines, with their index in the policy."""
    return [(i, r) for i, r in enumerate(policy.rings) if not r.select.clouds or "azure" in r.select.clouds]


@dataclass(frozen=True)
class ConfigurationFields:
    """What PatchPilot writes into a maintenance configuration, compared field by field
    (FIELD_LABELS gives each its wire name)."""

    start_time: str  # "hh:mm" of startDateTime: its date only anchors the recurrence
    duration: str  # "HH:mm"
    time_zone: str  # a Windows time-zone name
    recur_every: str
    reboot_setting: str
    windows_classifications: tuple[str, ...] = ()
    kb_numbers_to_include: tuple[str, ...] = ()
    kb_numbers_to_exclude: tuple[str, ...] = ()
    linux_classifications: tuple[str, ...] = ()
    package_name_masks_to_include: tuple[str, ...] = ()
    package_name_masks_to_exclude: tuple[str, ...] = ()
    maintenance_scope: str = "InGuestPatch"
    visibility: str = "Custom"
    in_guest_patch_mode: str = "User"
    expiration: str = ""  # never written: one found is shown as a difference and cleared
    tags: tuple[tuple[str, str], ...] = ()  # PatchPilot's own tags; others are kept as they are


FIELD_LABELS = {
    "maintenance_scope": "maintenanceScope",
    "visibility": "visibility",
    "in_guest_patch_mode": "extensionProperties.InGuestPatchMode",
    "start_time": "maintenanceWindow.startDateTime (time of day)",
    "expiration": "maintenanceWindow.expirationDateTime",
    "duration": "maintenanceWindow.duration",
    "time_zone": "maintenanceWindow.timeZone",
    "recur_every": "maintenanceWindow.recurEvery",
    "reboot_setting": "installPatches.rebootSetting",
    "windows_classifications": "installPatches.windowsParameters.classificationsToInclude",
    "kb_numbers_to_include": "installPatches.windowsParameters.kbNumbersToInclude",
    "kb_numbers_to_exclude": "installPatches.windowsParameters.kbNumbersToExclude",
    "linux_classifications": "installPatches.linuxParameters.classificationsToInclude",
    "package_name_masks_to_include": "installPatches.linuxParameters.packageNameMasksToInclude",
    "package_name_masks_to_exclude": "installPatches.linuxParameters.packageNameMasksToExclude",
    "tags": "tags",
}


def show(value: object) -> str:
    """A field's value as one line for people."""
    if isinstance(value, tuple):
        return ", ".join(f"{v[0]}={v[1]}" if isinstance(v, tuple) else str(v) for v in value) or "none"
    return str(value) if value != "" else "none"


@dataclass(frozen=True)
class ConfigurationSpec:
    """A maintenance configuration as the policy wants it."""

    name: str
    ring: str
    subscription: str
    resource_group: str
    location: str
    start_date_time: str  # "YYYY-MM-DD hh:mm": the first window at or after the sync
    fields: ConfigurationFields

    @property
    def id(self) -> str:
        return configuration_id(self.subscription, self.resource_group, self.name)

    def model(self, keep_tags: Mapping[str, str] | None = None) -> MaintenanceConfiguration:
        from azure.mgmt.maintenance.models import (
            InputLinuxParameters,
            InputPatchConfiguration,
            InputWindowsParameters,
            MaintenanceConfiguration,
        )

        f = self.fields
        windows = (
            InputWindowsParameters(
                classifications_to_include=list(f.windows_classifications),
                kb_numbers_to_include=list(f.kb_numbers_to_include),
                kb_numbers_to_exclude=list(f.kb_numbers_to_exclude),
            )
            if f.windows_classifications or f.kb_numbers_to_include
            else None
        )
        linux = (
            InputLinuxParameters(
                classifications_to_include=list(f.linux_classifications),
                package_name_masks_to_include=list(f.package_name_masks_to_include),
                package_name_masks_to_exclude=list(f.package_name_masks_to_exclude),
            )
            if f.linux_classifications or f.package_name_masks_to_include
            else None
        )
        return MaintenanceConfiguration(
            location=self.location,
            tags={**(keep_tags or {}), **dict(f.tags)},
            extension_properties={"InGuestPatchMode": f.in_guest_patch_mode},
            maintenance_scope=f.maintenance_scope,
            visibility=f.visibility,
            install_patches=InputPatchConfiguration(
                reboot_setting=f.reboot_setting, windows_parameters=windows, linux_parameters=linux
            ),
            start_date_time=self.start_date_time,
            duration=f.duration,
            time_zone=f.time_zone,
            recur_every=f.recur_every,
        )


@dataclass(frozen=True)
class Desired:
    policy: str
    mode: Literal["dynamic", "static"]
    configurations: tuple[ConfigurationSpec, ...]
    assignments: tuple[Assignment, ...]
    notes: tuple[str, ...] = ()


def configuration_name(policy: Policy, ring: Ring) -> str:
    prefix = policy.azure.maintenance.name_prefix if policy.azure and policy.azure.maintenance else "patchpilot"
    return f"{prefix}-{policy.name}-{ring.name}"


@dataclass(frozen=True)
class PatchPilotSchedule:
    """A schedule `azure sync` keeps for a ring, as the audit needs it."""

    ring: str
    configuration_id: str
    filter: ScopeFilter | None  # its dynamic scope; None with static assignments
    subscriptions: tuple[str, ...]  # where its dynamic scopes are


def patchpilot_schedules(policy: Policy) -> list[PatchPilotSchedule]:
    """The schedules `azure sync` keeps for the policy's rings (none without azure.maintenance and
    a subscription): machines in them count as scheduled, whether or not the sync has run yet."""
    settings = policy.azure
    if settings is None or settings.maintenance is None or not settings.subscriptions:
        return []
    home, group = settings.subscriptions[0], settings.maintenance.resource_group
    dynamic = settings.maintenance.assignment == "dynamic"
    out = []
    for _, ring in azure_rings(policy):
        found = scope_filter(policy, ring) if dynamic else None
        if dynamic and found is None:
            continue
        name = configuration_name(policy, ring)
        out.append(
            PatchPilotSchedule(ring.name, configuration_id(home, group, name), found, tuple(settings.subscriptions))
        )
    return out


def policy_problems(policy: Policy, now: datetime) -> list[Problem]:
    """Everything that keeps the policy from becoming Update Manager schedules, each at its place."""
    return _configurations(policy, now)[2]


def desired(policy: Policy, now: datetime, machines: Sequence[Machine] | None = None) -> Desired:
    """The maintenance configurations and assignments the policy wants. With
    `azure.maintenance.assignment: static`, `machines` (from `read_machines`) decide who is
    assigned; dynamic scopes need none. Raises InputError naming every problem."""
    specs, notes, problems = _configurations(policy, now)
    if problems:
        raise InputError(policy.name, problems)
    assert policy.azure is not None and policy.azure.maintenance is not None
    mode = policy.azure.maintenance.assignment
    if mode == "dynamic":
        assignments = _dynamic_assignments(policy, specs)
    else:
        if machines is None:
            raise ValueError("static assignments need the machines (read_machines)")
        assignments, more = _static_assignments(policy, specs, machines)
        notes += more
    return Desired(policy.name, mode, tuple(specs), tuple(assignments), tuple(dict.fromkeys(notes)))


def _configurations(policy: Policy, now: datetime) -> tuple[list[ConfigurationSpec], list[str], list[Problem]]:
    problems: list[Problem] = []
    notes: list[str] = []
    settings = policy.azure
    if settings is None or settings.maintenance is None:
        here = ("azure", "maintenance") if settings else ("azure",)
        return (
            [],
            notes,
            [Problem(here, "required by azure sync: give azure.maintenance with resource_group and location")],
        )
    maintenance = settings.maintenance
    if not settings.subscriptions:
        problems.append(
            Problem(
                ("azure", "subscriptions"),
                "azure sync needs at least one: the maintenance configurations live in the first, "
                "and each subscription gets the rings' dynamic scopes",
            )
        )
    if maintenance.assignment == "dynamic" and len(settings.resource_groups) > MAX_RESOURCE_GROUP_FILTERS:
        problems.append(
            Problem(
                ("azure", "resource_groups"),
                f"a dynamic scope takes at most {MAX_RESOURCE_GROUP_FILTERS} resource groups, "
                f"got {len(settings.resource_groups)}",
            )
        )
    window = _window(policy.schedule, now, notes, problems)
    rings = azure_rings(policy)
    if not rings:
        problems.append(
            Problem(("rings",), "no ring can hold Azure machines (every ring's select.clouds leaves azure out)")
        )
    reachable = {os for _, ring in rings for os in (ring.select.os or ("linux", "windows"))}
    patches = _patches(policy, reachable, problems)
    if maintenance.assignment == "dynamic":
        _dynamic_notes(policy, rings, notes)
    specs = []
    for index, ring in rings:
        name = configuration_name(policy, ring)
        if not _NAME.match(name):
            problems.append(
                Problem(
                    ("rings", index, "name"),
                    f"the maintenance configuration name {quote(name)} may hold only letters, digits and - _ . "
                    "(not at either end)",
                )
            )
        if maintenance.assignment == "dynamic":
            _check_dynamic_selector(ring, index, problems)
            if scope_filter(policy, ring) is None:
                notes.append(f"ring {ring.name}: none of its regions is in azure.locations; no schedule for it")
                continue
        if window is None or not settings.subscriptions:
            continue
        start_date_time, start_time, duration, zone, recur = window
        ring_os = set(ring.select.os or ("linux", "windows"))
        windows = patches["windows"] if "windows" in ring_os else _OsPatches()
        linux = patches["linux"] if "linux" in ring_os else _OsPatches()
        fields = ConfigurationFields(
            start_time=start_time,
            duration=duration,
            time_zone=zone,
            recur_every=recur,
            reboot_setting=REBOOT_SETTINGS[policy.reboot],
            windows_classifications=windows.classifications,
            kb_numbers_to_include=windows.include,
            kb_numbers_to_exclude=windows.exclude,
            linux_classifications=linux.classifications,
            package_name_masks_to_include=linux.include,
            package_name_masks_to_exclude=linux.exclude,
            tags=((TAG_POLICY, policy.name), (TAG_RING, ring.name)),
        )
        specs.append(
            ConfigurationSpec(
                name,
                ring.name,
                settings.subscriptions[0],
                maintenance.resource_group,
                maintenance.location,
                start_date_time,
                fields,
            )
        )
    return specs, notes, problems


def _window(
    schedule: Schedule | None, now: datetime, notes: list[str], problems: list[Problem]
) -> tuple[str, str, str, str, str] | None:
    """(startDateTime, its time of day, duration, timeZone, recurEvery) from the policy's schedule."""
    if schedule is None:
        problems.append(Problem(("schedule",), "required by azure sync: Update Manager schedules need a window"))
        return None
    start = len(problems)
    zone = windows_time_zone(schedule.timezone)
    if zone is None:
        problems.append(
            Problem(
                ("schedule", "timezone"),
                f"{quote(schedule.timezone)} has no Windows time-zone name, which Update Manager needs; "
                'use a zone such as Asia/Tokyo or a Windows name such as "Tokyo Standard Time"',
            )
        )
    recur, at = recur_every(schedule, problems)
    duration = schedule.duration
    if duration < MIN_WINDOW:
        problems.append(
            Problem(
                ("schedule", "duration"),
                f"Update Manager needs a window of at least {format_duration(MIN_WINDOW)}, "
                f"got {format_duration(duration)}",
            )
        )
    elif duration > MAX_WINDOW:
        notes.append(
            f"schedule.duration {format_duration(duration)} is longer than Update Manager allows: its schedules "
            f"install for {format_duration(MAX_WINDOW)} (the window still starts at the policy's time)"
        )
        duration = MAX_WINDOW
    minutes = int(duration.total_seconds()) // 60
    if len(problems) > start or zone is None or recur is None or at is None:
        return None
    first = schedule.windows(now, 1)[0].start
    return (
        f"{first.date().isoformat()} {at.strftime('%H:%M')}",
        at.strftime("%H:%M"),
        f"{minutes // 60:02d}:{minutes % 60:02d}",
        zone,
        recur,
    )


@dataclass(frozen=True)
class _OsPatches:
    """installPatches for one OS: classifications, and KB numbers or package masks."""

    classifications: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


def _patches(policy: Policy, reachable: set[OsFamily], problems: list[Problem]) -> dict[str, _OsPatches]:
    """installPatches per OS from `patches`: KB ids for Windows, everything else as Linux masks."""
    chosen = policy.patches.classifications
    split: dict[str, dict[bool, list[str]]] = {}
    for where in ("include", "exclude"):
        split[where] = {True: [], False: []}
        for index, item in enumerate(getattr(policy.patches, where)):
            if _BULLETIN.match(item):
                problems.append(
                    Problem(
                        ("patches", where, index),
                        f"{quote(item)} is a security bulletin id; Update Manager schedules take KB numbers "
                        "(KB5034441) for Windows",
                    )
                )
                continue
            kb = kb_number(item)
            split[where][kb is not None].append(kb if kb is not None else item)
    found = {
        "windows": _OsPatches(
            tuple(c for c in WINDOWS_CLASSIFICATIONS if c in chosen),
            unique_sorted(split["include"][True]),
            unique_sorted(split["exclude"][True]),
        ),
        "linux": _OsPatches(
            tuple(c for c in LINUX_CLASSIFICATIONS if c in chosen),
            unique_sorted(split["include"][False]),
            unique_sorted(split["exclude"][False]),
        ),
    }
    pairs: tuple[tuple[OsFamily, tuple[str, ...]], ...] = (
        ("windows", WINDOWS_CLASSIFICATIONS),
        ("linux", LINUX_CLASSIFICATIONS),
    )
    for os, names in pairs:
        if os in reachable and not found[os].classifications and not found[os].include:
            problems.append(
                Problem(
                    ("patches", "classifications"),
                    f"{OS_TYPES[os]} machines would get nothing: none of these is a {OS_TYPES[os]} classification "
                    f"({', '.join(names)}) and patches.include names no "
                    f"{'KB number' if os == 'windows' else 'package'} (or limit the rings with select.os)",
                )
            )
    return found


def _check_dynamic_selector(ring: Ring, index: int, problems: list[Problem]) -> None:
    here = ("rings", index, "select")
    static = "or use azure.maintenance.assignment: static"
    if ring.select.ids:
        problems.append(
            Problem((*here, "ids"), f"a dynamic scope cannot select machines by id: select by tags, {static}")
        )
    for key, values in ring.select.tags.items():
        if "*" in values:
            problems.append(
                Problem(
                    (*here, "tags", key),
                    f'a dynamic scope matches tag values, not "*" (any value): list the values, {static}',
                )
            )
    if len(ring.select.tags) > MAX_TAG_FILTERS:
        problems.append(
            Problem(
                (*here, "tags"), f"a dynamic scope takes at most {MAX_TAG_FILTERS} tags, got {len(ring.select.tags)}"
            )
        )


def _dynamic_notes(policy: Policy, rings: Sequence[tuple[int, Ring]], notes: list[str]) -> None:
    if policy.exclude.tags or policy.exclude.ids:
        notes.append(
            "exclude: a dynamic scope cannot leave machines out, so excluded (frozen) machines that match a ring's "
            "filter are patched by its schedule; `patchpilot azure audit` lists them. Use "
            "azure.maintenance.assignment: static to keep them out"
        )
    for n, (_, a) in enumerate(rings):
        for _, b in rings[n + 1 :]:
            if not _disjoint(a, b):
                notes.append(
                    f"rings {a.name} and {b.name} can both match one machine: PatchPilot puts it in the first, but "
                    "Update Manager would run both schedules on it. Make their tags disjoint, or use "
                    "azure.maintenance.assignment: static"
                )


def _disjoint(a: Ring, b: Ring) -> bool:
    """Can no machine match both rings' dynamic scopes?"""
    for key in a.select.tags.keys() & b.select.tags.keys():
        va, vb = set(a.select.tags[key]), set(b.select.tags[key])
        if "*" not in va and "*" not in vb and not va & vb:
            return True
    if a.select.os and b.select.os and not set(a.select.os) & set(b.select.os):
        return True
    regions_a, regions_b = {r.lower() for r in a.select.regions}, {r.lower() for r in b.select.regions}
    return bool(regions_a and regions_b and not regions_a & regions_b)


def scope_filter(policy: Policy, ring: Ring) -> ScopeFilter | None:
    """The dynamic scope of a ring, or None when it can match no Azure machine of the policy."""
    settings = policy.azure
    assert settings is not None
    locations = list(ring.select.regions)
    if settings.locations and locations:  # the ring's regions within the policy's Azure locations
        allowed = {loc.lower() for loc in settings.locations}
        locations = [r for r in locations if r.lower() in allowed]
        if not locations:
            return None
    elif settings.locations:
        locations = list(settings.locations)
    return ScopeFilter.of(
        resource_types=[VM_TYPE, ARC_TYPE] if settings.arc else [VM_TYPE],
        resource_groups=settings.resource_groups,
        os_types=[OS_TYPES[os] for os in (ring.select.os or ("linux", "windows"))],
        locations=locations,
        tags=ring.select.tags,
        tag_operator="All",  # a selector's criteria must all hold
    )


def _dynamic_assignments(policy: Policy, specs: Sequence[ConfigurationSpec]) -> list[Assignment]:
    assert policy.azure is not None
    rings = {r.name: r for r in policy.rings}
    out = []
    for spec in specs:
        found = scope_filter(policy, rings[spec.ring])
        assert found is not None, "rings without a scope get no configuration"
        for subscription in policy.azure.subscriptions:
            out.append(
                Assignment(assignment_id(f"/subscriptions/{subscription}", spec.name), spec.id, found, ring=spec.ring)
            )
    return out


def _static_assignments(
    policy: Policy, specs: Sequence[ConfigurationSpec], machines: Sequence[Machine]
) -> tuple[list[Assignment], list[str]]:
    by_ring = {s.ring: s for s in specs}
    out, left_out, unknown = [], 0, 0
    for machine in machines:
        instance = machine.instance()
        if instance is None:
            unknown += 1
            continue
        ring = (
            None
            if policy.exclude.reason(instance)
            else next((r for r in policy.rings if r.select.matches(instance)), None)
        )
        spec = by_ring.get(ring.name) if ring is not None else None
        if spec is None:
            left_out += 1
            continue
        out.append(Assignment(assignment_id(machine.id, spec.name), spec.id, location=machine.location, ring=spec.ring))
    notes = []
    per_ring = Counter(a.ring for a in out)
    for name, count in sorted(per_ring.items()):
        if count > MAX_STATIC_PER_SCHEDULE:
            notes.append(
                f"ring {name}: {count} machines, more than the {MAX_STATIC_PER_SCHEDULE:,} a schedule is "
                "meant to hold; split the ring"
            )
    if left_out:
        notes.append(f"{left_out} machine(s) excluded or in no ring: not assigned to a schedule")
    if unknown:
        notes.append(f"{unknown} machine(s) whose OS Resource Graph does not show: not assigned")
    return out, notes
