"""Azure Update Manager in step with the policy: `patchpilot azure audit` and `patchpilot azure sync`.

Audit (patch orchestration): every machine in the policy's Azure scope is read in bulk from
Resource Graph with its patch settings (`read_machines`), with the configuration assignments
(schedules) from `maintenanceresources` (`read_assignments`). `audit(...)`, pure, says which
machines a schedule cannot patch and which patch themselves behind PatchPilot's back, following
Microsoft's scenario table (docs/azure-update-manager.md). `fix_patch_settings` sets Customer
Managed Schedules: patchMode AutomaticByPlatform + bypassPlatformSafetyChecksOnUserSchedule.

Sync (maintenance configurations), shaped like `adapters/aws/baselines.py`:
- `desired(policy, now, machines)`, pure: one maintenance configuration per Azure ring, named
  `<name_prefix>-<policy>-<ring>` and tagged as PatchPilot's, from `schedule`, `patches` and
  `reboot`; assigned by a dynamic scope per ring and subscription, or statically per machine.
- `read_actual(clients, desired, settings)`: the configurations of the resource group, the
  dynamic scopes by their names, the other assignments of PatchPilot's configurations from
  Resource Graph.
- `diff(desired, actual)`, pure: the changes in the order they must be made.
- `apply_each(clients, changes)`: PUT and DELETE through the real SDK clients.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Literal, assert_never

from patchpilot.adapters.azure.graph import kql_list, query
from patchpilot.adapters.azure.install_body import (
    LINUX_CLASSIFICATIONS,
    REBOOT_SETTINGS,
    WINDOWS_CLASSIFICATIONS,
    kb_number,
)
from patchpilot.errors import InputError, Problem, quote
from patchpilot.inventory import Instance, OsFamily
from patchpilot.policy import Policy, Ring
from patchpilot.policy.fields import format_duration
from patchpilot.policy.model import AzureSettings, Schedule
from patchpilot.policy.schedule import AwsCron, MonthlyRule

if TYPE_CHECKING:
    from azure.mgmt.maintenance.models import ConfigurationAssignment, MaintenanceConfiguration
    from azure.mgmt.resourcegraph import ResourceGraphClient

    from patchpilot.adapters.azure.clients import AzureClients

VM_TYPE = "Microsoft.Compute/virtualMachines"
ARC_TYPE = "Microsoft.HybridCompute/machines"
TAG_POLICY = "PatchPilotPolicy"  # on a maintenance configuration: the policy it belongs to
TAG_RING = "PatchPilotRing"
CUSTOMER_MANAGED_MODE = "AutomaticByPlatform"  # with bypassPlatformSafetyChecksOnUserSchedule: true
MIN_WINDOW = timedelta(hours=1, minutes=30)  # guest-scope limits (maintenance-configurations.md)
MAX_WINDOW = timedelta(hours=3, minutes=55)
MAX_TAG_FILTERS = 50  # per dynamic scope
MAX_STATIC_PER_SCHEDULE = 3000  # resource associations per schedule (scheduled-patching.md service limits)
MAX_RESOURCE_GROUP_FILTERS = 50
OS_TYPES: dict[OsFamily, str] = {"linux": "Linux", "windows": "Windows"}
_ORDINALS = {1: "First", 2: "Second", 3: "Third", 4: "Fourth", -1: "Last"}
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CRON_DAYS = {"SUN": 6, "MON": 0, "TUE": 1, "WED": 2, "THU": 3, "FRI": 4, "SAT": 5}  # name -> Monday=0
_BULLETIN = re.compile(r"^MS\d{2}-\d{3,}$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*[A-Za-z0-9_]$")
_ASSIGNMENT_ID = re.compile(
    r"^(?P<scope>/subscriptions/.+?)/providers/Microsoft\.Maintenance/configurationAssignments/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
_SCOPE = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)"
    r"(?:/resourceGroups/(?P<group>[^/]+)(?:/providers/(?P<namespace>[^/]+)/(?P<type>[^/]+)/(?P<resource>[^/]+))?)?$",
    re.IGNORECASE,
)
_CONFIGURATION_ID = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<group>[^/]+)"
    r"/providers/Microsoft\.Maintenance/maintenanceConfigurations/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
_NO_EXPIRATION = ("", "9999-12-31 23:59", "9999-12-31 23:59:59")


def azure_rings(policy: Policy) -> list[tuple[int, Ring]]:
    """The rings that can hold Azure machines, with their index in the policy."""
    return [(i, r) for i, r in enumerate(policy.rings) if not r.select.clouds or "azure" in r.select.clouds]


# ---------------------------------------------------------------- machines and their patch settings


@dataclass(frozen=True)
class PatchSettings:
    """`osProfile.<os>Configuration.patchSettings` as the machine has them (defaults filled in)."""

    patch_mode: str
    assessment_mode: str = "ImageDefault"
    bypass: bool = False  # automaticByPlatformSettings.bypassPlatformSafetyChecksOnUserSchedule
    reboot_setting: str | None = None  # automaticByPlatformSettings.rebootSetting
    enable_automatic_updates: bool | None = None  # Windows only; set when the VM was created

    @property
    def customer_managed(self) -> bool:
        """Customer Managed Schedules: the prerequisite of an Update Manager schedule."""
        return self.patch_mode == CUSTOMER_MANAGED_MODE and self.bypass


@dataclass(frozen=True)
class Machine:
    """An Azure VM or Arc-enabled server, as Resource Graph shows it."""

    id: str
    name: str
    type: str  # VM_TYPE or ARC_TYPE
    subscription: str
    resource_group: str
    location: str
    os: OsFamily | None  # None: Resource Graph did not say
    settings: PatchSettings
    tags: Mapping[str, str] = field(default_factory=dict)
    zone: str | None = None

    @property
    def arc(self) -> bool:
        return self.type == ARC_TYPE

    def instance(self) -> Instance | None:
        """The machine as the policy's selectors see it (None when its OS is unknown)."""
        if self.os is None:
            return None
        return Instance(
            id=self.id,
            cloud="azure",
            region=self.location,
            os=self.os,
            name=self.name,
            zone=self.zone,
            tags=dict(self.tags),
            account=self.subscription,
        )


def machines_query(settings: AzureSettings) -> str:
    """Resource Graph: every VM (and Arc server with `arc`) in scope, with its patch settings."""
    types = [VM_TYPE, ARC_TYPE] if settings.arc else [VM_TYPE]
    lines = ["resources", f"| where type in~ {kql_list(types)}"]
    if settings.resource_groups:
        lines.append(f"| where resourceGroup in~ {kql_list(settings.resource_groups)}")
    if settings.locations:
        lines.append(f"| where location in~ {kql_list(settings.locations)}")
    lines.append(
        "| project id, name, type, location, resourceGroup, subscriptionId, tags, zones, "
        "osDiskType = tostring(properties.storageProfile.osDisk.osType), arcOsType = tostring(properties.osType), "
        "windows = properties.osProfile.windowsConfiguration, linux = properties.osProfile.linuxConfiguration"
    )
    return "\n".join(lines)


def read_machines(graph: ResourceGraphClient, settings: AzureSettings) -> list[Machine]:
    return sorted(
        (parse_machine(row) for row in query(graph, machines_query(settings), settings.subscriptions)),
        key=lambda m: m.id.lower(),
    )


def parse_machine(row: Mapping[str, Any]) -> Machine:
    """A row of `machines_query`. Unset patch settings take the OS's defaults."""
    os_name = str(row.get("osDiskType") or row.get("arcOsType") or "").lower()
    os: OsFamily | None = "linux" if os_name == "linux" else "windows" if os_name == "windows" else None
    config = _mapping(row.get("windows") if os == "windows" else row.get("linux"))
    patch = _mapping(config.get("patchSettings"))
    automatic = _mapping(patch.get("automaticByPlatformSettings"))
    auto_updates = config.get("enableAutomaticUpdates") if os == "windows" else None
    # Unset: Linux ImageDefault; Windows AutomaticByOS, or Manual where enableAutomaticUpdates is false
    default_mode = ("Manual" if auto_updates is False else "AutomaticByOS") if os == "windows" else "ImageDefault"
    kind = str(row.get("type", ""))
    zones = row.get("zones") or []
    return Machine(
        id=str(row["id"]),
        name=str(row.get("name") or str(row["id"]).rsplit("/", 1)[-1]),
        type=ARC_TYPE if kind.lower() == ARC_TYPE.lower() else VM_TYPE,
        subscription=str(row.get("subscriptionId", "")),
        resource_group=str(row.get("resourceGroup", "")),
        location=str(row.get("location", "")),
        os=os,
        settings=PatchSettings(
            patch_mode=str(patch.get("patchMode") or default_mode),
            assessment_mode=str(patch.get("assessmentMode") or "ImageDefault"),
            bypass=automatic.get("bypassPlatformSafetyChecksOnUserSchedule") is True,
            reboot_setting=automatic.get("rebootSetting"),
            enable_automatic_updates=auto_updates if isinstance(auto_updates, bool) else None,
        ),
        tags={str(k): str(v) for k, v in _mapping(row.get("tags")).items()},
        zone=str(zones[0]) if isinstance(zones, list) and zones else None,
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def fix_patch_settings(clients: AzureClients, machine: Machine) -> None:
    """Customer Managed Schedules on one VM: patchMode and assessmentMode AutomaticByPlatform,
    bypassPlatformSafetyChecksOnUserSchedule true (a PATCH; nothing else is sent, so Windows'
    enableAutomaticUpdates stays as it is: AutomaticByOS and Manual both move to AutomaticByPlatform,
    and back only to the mode they came from). Setting what is already set changes nothing."""
    from azure.mgmt.compute import models as cm

    if machine.arc or machine.os is None:
        raise ValueError(f"{machine.id}: only Azure VMs of a known OS get their patch settings fixed")
    mode = CUSTOMER_MANAGED_MODE
    if machine.os == "windows":
        profile = cm.OSProfile(
            windows_configuration=cm.WindowsConfiguration(
                patch_settings=cm.PatchSettings(
                    patch_mode=mode,
                    assessment_mode=mode,
                    automatic_by_platform_settings=cm.WindowsVMGuestPatchAutomaticByPlatformSettings(
                        bypass_platform_safety_checks_on_user_schedule=True
                    ),
                )
            )
        )
    else:
        profile = cm.OSProfile(
            linux_configuration=cm.LinuxConfiguration(
                patch_settings=cm.LinuxPatchSettings(
                    patch_mode=mode,
                    assessment_mode=mode,
                    automatic_by_platform_settings=cm.LinuxVMGuestPatchAutomaticByPlatformSettings(
                        bypass_platform_safety_checks_on_user_schedule=True
                    ),
                )
            )
        )
    compute = clients.compute(machine.subscription)
    compute.virtual_machines.begin_update(
        machine.resource_group,
        machine.name,
        cm.VirtualMachineUpdate(properties=cm.VirtualMachineProperties(os_profile=profile)),
    ).result()


# ---------------------------------------------------------------- configuration assignments


@dataclass(frozen=True)
class ScopeFilter:
    """The filter of a dynamic scope. Values keep their case; `key` compares them as ARM does."""

    resource_types: tuple[str, ...] = ()
    resource_groups: tuple[str, ...] = ()
    os_types: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    tags: tuple[tuple[str, tuple[str, ...]], ...] = ()
    tag_operator: str = ""  # All or Any; "" without tags

    @classmethod
    def of(
        cls,
        *,
        resource_types: Iterable[str] = (),
        resource_groups: Iterable[str] = (),
        os_types: Iterable[str] = (),
        locations: Iterable[str] = (),
        tags: Mapping[str, Iterable[str]] | None = None,
        tag_operator: str = "All",
    ) -> ScopeFilter:
        tag_pairs = tuple(sorted((k, _sorted(v)) for k, v in (tags or {}).items()))
        return cls(
            _sorted(resource_types),
            _sorted(resource_groups),
            _sorted(os_types),
            _sorted(locations),
            tag_pairs,
            tag_operator if tag_pairs else "",
        )

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ScopeFilter:
        settings = _mapping(data.get("tagSettings"))
        return cls.of(
            resource_types=data.get("resourceTypes") or (),
            resource_groups=data.get("resourceGroups") or (),
            os_types=data.get("osTypes") or (),
            locations=data.get("locations") or (),
            tags={str(k): [str(v) for v in vs or ()] for k, vs in _mapping(settings.get("tags")).items()},
            tag_operator=str(settings.get("filterOperator") or "Any"),
        )

    def part(self, name: str) -> str:
        """One part of the filter, compared ignoring case and shown to people."""
        if name == "tagSettings":
            shown = " ".join(f"{k}={','.join(vs)}" for k, vs in self.tags)
            return f"{shown} ({self.tag_operator})" if shown else "none"
        values: tuple[str, ...] = getattr(self, _FILTER_PARTS[name])
        return ", ".join(values) or "none"

    def matches(self, machine: Machine) -> bool:
        """Would this filter pick `machine` (within the scope it is assigned at)?"""
        tags = {k.lower(): v for k, v in machine.tags.items()}  # Azure tag names ignore case, values do not
        tag_hits = [key.lower() in tags and (not values or tags[key.lower()] in values) for key, values in self.tags]
        os = OS_TYPES[machine.os].lower() if machine.os else ""
        return (
            (not self.resource_types or machine.type.lower() in map(_lower, self.resource_types))
            and (not self.resource_groups or machine.resource_group.lower() in map(_lower, self.resource_groups))
            and (not self.os_types or os in map(_lower, self.os_types))
            and (not self.locations or machine.location.lower() in map(_lower, self.locations))
            and (not tag_hits or (all(tag_hits) if self.tag_operator == "All" else any(tag_hits)))
        )

    def model(self) -> Any:
        from azure.mgmt.maintenance.models import ConfigurationAssignmentFilterProperties, TagSettingsProperties

        return ConfigurationAssignmentFilterProperties(
            resource_types=list(self.resource_types),
            resource_groups=list(self.resource_groups) or None,
            os_types=list(self.os_types),
            locations=list(self.locations) or None,
            tag_settings=TagSettingsProperties(
                tags={k: list(vs) for k, vs in self.tags}, filter_operator=self.tag_operator
            )
            if self.tags
            else None,
        )


_FILTER_PARTS = {
    "resourceTypes": "resource_types",
    "resourceGroups": "resource_groups",
    "osTypes": "os_types",
    "locations": "locations",
    "tagSettings": "tags",
}


def _lower(value: str) -> str:
    return value.lower()


def _sorted(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(dict.fromkeys(str(v) for v in values), key=str.lower))


@dataclass(frozen=True)
class Scope:
    """Where an assignment is made: a subscription, a resource group (dynamic scopes) or a resource."""

    subscription: str
    resource_group: str | None = None
    namespace: str | None = None
    type: str | None = None
    resource: str | None = None

    @property
    def kind(self) -> Literal["subscription", "resource_group", "resource"]:
        if self.resource is not None:
            return "resource"
        return "resource_group" if self.resource_group is not None else "subscription"


@dataclass(frozen=True)
class Assignment:
    """A configuration assignment: a dynamic scope (with `filter`) or one machine's (static)."""

    id: str
    configuration_id: str
    filter: ScopeFilter | None = None
    location: str | None = None
    ring: str = ""  # the ring it is for (desired assignments)

    @property
    def name(self) -> str:
        return self.id.rsplit("/", 1)[-1]

    @property
    def scope(self) -> Scope | None:
        """None for an id this module does not handle (a nested resource's assignment)."""
        found = _ASSIGNMENT_ID.match(self.id)
        where = _SCOPE.match(found["scope"]) if found else None
        if where is None:
            return None
        return Scope(where["subscription"], where["group"], where["namespace"], where["type"], where["resource"])

    @property
    def kind(self) -> Literal["dynamic", "static"]:
        scope = self.scope
        return "static" if scope is not None and scope.kind == "resource" else "dynamic"

    @property
    def machine_id(self) -> str:
        """The assigned resource's id (static assignments)."""
        found = _ASSIGNMENT_ID.match(self.id)
        return found["scope"] if found else ""

    def model(self) -> ConfigurationAssignment:
        from azure.mgmt.maintenance.models import ConfigurationAssignment

        if self.filter is not None:
            return ConfigurationAssignment(
                maintenance_configuration_id=self.configuration_id, filter=self.filter.model()
            )
        return ConfigurationAssignment(
            location=self.location, maintenance_configuration_id=self.configuration_id, resource_id=self.machine_id
        )


def assignment_id(scope: str, name: str) -> str:
    return f"{scope}/providers/Microsoft.Maintenance/configurationAssignments/{name}"


def parse_assignment(wire: Mapping[str, Any]) -> Assignment:
    """An assignment as ARM or Resource Graph shows it."""
    properties = _mapping(wire.get("properties"))
    found = properties.get("filter")
    assignment = Assignment(
        id=str(wire.get("id", "")),
        configuration_id=str(properties.get("maintenanceConfigurationId") or ""),
        location=wire.get("location"),
    )
    if assignment.kind == "dynamic":
        return Assignment(
            assignment.id, assignment.configuration_id, ScopeFilter.from_wire(_mapping(found)), assignment.location
        )
    return assignment


def assignments_query(configuration_ids: Iterable[str] = ()) -> str:
    """Resource Graph: configuration assignments, of the given configurations when any are given."""
    lines = ["maintenanceresources", "| where type =~ 'microsoft.maintenance/configurationassignments'"]
    ids = sorted({c.lower() for c in configuration_ids})
    if ids:
        lines.append(f"| where tolower(tostring(properties.maintenanceConfigurationId)) in {kql_list(ids)}")
    lines.append("| project id, name, location, properties")
    return "\n".join(lines)


def read_assignments(
    graph: ResourceGraphClient, subscriptions: Sequence[str], configuration_ids: Iterable[str] = ()
) -> list[Assignment]:
    return [parse_assignment(row) for row in query(graph, assignments_query(configuration_ids), subscriptions)]


# ---------------------------------------------------------------- audit


FindingKind = Literal[
    "schedule_blocked_by_bypass",
    "schedule_blocked_by_patch_mode",
    "platform_patches_on_its_own",
    "os_patches_on_its_own",
    "image_may_patch_on_its_own",
    "excluded_but_scheduled",
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


def _short(configuration_id: str) -> str:
    return configuration_id.rsplit("/", 1)[-1]


# ---------------------------------------------------------------- desired: maintenance configurations


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


def configuration_id(subscription: str, resource_group: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Maintenance/maintenanceConfigurations/{name}"
    )


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


def windows_time_zone(name: str) -> str | None:
    """The Windows name of a time zone given by its IANA or Windows name (tzlocal's CLDR table)."""
    from tzlocal.windows_tz import tz_win, win_tz

    if name in win_tz:
        return name
    found: str | None = tz_win.get(name)
    return found


def recur_every(schedule: Schedule, problems: list[Problem]) -> tuple[str | None, time | None]:
    """Update Manager's recurEvery and the start time of day, or a problem at schedule.cron."""
    rule = schedule.rule
    if isinstance(rule, MonthlyRule):
        return _monthly(rule.ordinal, rule.weekday, rule.offset_days), schedule.at
    return _from_cron(rule, schedule.offset_days, problems)


def _monthly(ordinal: int, weekday: int, offset: int) -> str:
    text = f"Month {_ORDINALS[ordinal]} {_WEEKDAYS[weekday]}"
    return f"{text} Offset{offset}" if offset else text  # "Offset-2", "Offset3": never a plus sign


def _from_cron(cron: AwsCron, offset: int, problems: list[Problem]) -> tuple[str | None, time | None]:
    here = ("schedule", "cron")
    minute, hour, dom, month, dow, year = cron.text[cron.text.index("(") + 1 : cron.text.rindex(")")].split()

    def refuse(why: str) -> tuple[None, None]:
        problems.append(
            Problem(
                here,
                f"Update Manager cannot express {quote(cron.text)}: {why}. It takes one start time and a daily, "
                'weekly ("SAT,SUN") or monthly ("TUE#2", "FRIL", "1,15") rule; or use schedule.monthly',
            )
        )
        return None, None

    if not (minute.isdigit() and hour.isdigit()):
        return refuse("minute and hour must be single numbers")
    if month != "*" or year != "*":
        return refuse("every month and every year only")
    at = time(int(hour), int(minute))
    if dom in ("*", "?") and dow in ("*", "?"):
        return "Day", at
    if dow == "?":
        if offset:
            return refuse("offset_days with days of the month")
        days = dom.split(",")
        if not all(d.isdigit() and 1 <= int(d) <= 31 for d in days):
            return refuse(f"days of the month {quote(dom)} must be numbers 1-31")
        return "Month " + ",".join(f"day{int(d)}" for d in days), at
    if "#" in dow:
        day, _, nth = dow.partition("#")
        weekday = _cron_weekday(day)
        if weekday is None or not nth.isdigit() or not 1 <= int(nth) <= 4:
            return refuse(f"{quote(dow)}: a weekday and its week 1-4")
        return _monthly(int(nth), weekday, offset), at
    if dow.upper().endswith("L"):
        weekday = _cron_weekday(dow[:-1])
        if weekday is None:
            return refuse(f"{quote(dow)}: the last of which weekday?")
        return _monthly(-1, weekday, offset), at
    weekdays = _cron_weekdays(dow)
    if weekdays is None:
        return refuse(f"days of the week {quote(dow)}")
    shifted = sorted({(d + offset) % 7 for d in weekdays})
    return "Week " + ",".join(_WEEKDAYS[d] for d in shifted), at


def _cron_weekday(token: str) -> int | None:
    """AWS numbers days 1=SUN..7=SAT or names them SUN..SAT; Monday=0 here."""
    token = token.upper()
    if token.isdigit() and 1 <= int(token) <= 7:
        return (int(token) + 5) % 7
    return _CRON_DAYS.get(token)


def _cron_weekdays(field: str) -> list[int] | None:
    days: list[int] = []
    for part in field.split(","):
        low, dash, high = part.partition("-")
        first, last = _cron_weekday(low), _cron_weekday(high) if dash else None
        if first is None or (dash and last is None):
            return None
        if last is None:
            days.append(first)
            continue
        span = (last - first) % 7
        days.extend((first + k) % 7 for k in range(span + 1))
    return days


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
            _sorted(split["include"][True]),
            _sorted(split["exclude"][True]),
        ),
        "linux": _OsPatches(
            tuple(c for c in LINUX_CLASSIFICATIONS if c in chosen),
            _sorted(split["include"][False]),
            _sorted(split["exclude"][False]),
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


# ---------------------------------------------------------------- desired: assignments


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


# ---------------------------------------------------------------- actual


@dataclass(frozen=True)
class ActualConfiguration:
    id: str
    name: str
    location: str
    tags: Mapping[str, str]
    fields: ConfigurationFields

    @property
    def owner(self) -> str | None:
        """The policy whose configuration this is, by its tag."""
        return self.tags.get(TAG_POLICY)


@dataclass(frozen=True)
class Actual:
    configurations: Mapping[str, ActualConfiguration]  # lower-case name -> every one in the resource group
    assignments: tuple[Assignment, ...]  # of PatchPilot's configurations, or at PatchPilot's names


def parse_configuration(wire: Mapping[str, Any]) -> ActualConfiguration:
    """A maintenance configuration as ARM returns it."""
    properties = _mapping(wire.get("properties"))
    window = _mapping(properties.get("maintenanceWindow"))
    install = _mapping(properties.get("installPatches"))
    windows = _mapping(install.get("windowsParameters"))
    linux = _mapping(install.get("linuxParameters"))
    start = str(window.get("startDateTime") or "")
    expiration = str(window.get("expirationDateTime") or "")
    tags = {str(k): str(v) for k, v in _mapping(wire.get("tags")).items()}
    fields = ConfigurationFields(
        start_time=start[11:16] if len(start) >= 16 else start,
        duration=str(window.get("duration") or ""),
        time_zone=str(window.get("timeZone") or ""),
        recur_every=str(window.get("recurEvery") or ""),
        reboot_setting=str(install.get("rebootSetting") or ""),
        windows_classifications=_ordered(windows.get("classificationsToInclude"), WINDOWS_CLASSIFICATIONS),
        kb_numbers_to_include=_sorted(windows.get("kbNumbersToInclude") or ()),
        kb_numbers_to_exclude=_sorted(windows.get("kbNumbersToExclude") or ()),
        linux_classifications=_ordered(linux.get("classificationsToInclude"), LINUX_CLASSIFICATIONS),
        package_name_masks_to_include=_sorted(linux.get("packageNameMasksToInclude") or ()),
        package_name_masks_to_exclude=_sorted(linux.get("packageNameMasksToExclude") or ()),
        maintenance_scope=str(properties.get("maintenanceScope") or ""),
        visibility=str(properties.get("visibility") or ""),
        in_guest_patch_mode=str(_mapping(properties.get("extensionProperties")).get("InGuestPatchMode") or ""),
        expiration="" if expiration in _NO_EXPIRATION else expiration,
        tags=tuple((k, tags[k]) for k in (TAG_POLICY, TAG_RING) if k in tags),
    )
    return ActualConfiguration(
        str(wire.get("id", "")), str(wire.get("name", "")), str(wire.get("location", "")), tags, fields
    )


def _ordered(values: object, order: Sequence[str]) -> tuple[str, ...]:
    given = [str(v) for v in values] if isinstance(values, list) else []
    return tuple([c for c in order if c in given] + sorted(v for v in given if v not in order))


def read_actual(clients: AzureClients, want: Desired, settings: AzureSettings) -> Actual:
    """The resource group's configurations (one list), the dynamic scopes at PatchPilot's names
    (one GET per name and subscription), and every other assignment of PatchPilot's configurations
    (Resource Graph, which may lag a write by a minute)."""
    from azure.core.exceptions import ResourceNotFoundError

    assert settings.maintenance is not None
    home = clients.maintenance(settings.subscriptions[0])
    configurations = {}
    for item in home.maintenance_configurations_for_resource_group.list(settings.maintenance.resource_group):
        found = parse_configuration(item.serialize(keep_readonly=True))
        configurations[found.name.lower()] = found
    owned = [c for c in configurations.values() if c.owner == want.policy]
    names = list(dict.fromkeys([s.name for s in want.configurations] + [c.name for c in owned]))
    assignments: dict[str, Assignment] = {}
    for subscription in settings.subscriptions:
        operations = clients.maintenance(subscription).configuration_assignments_for_subscriptions
        for name in names:
            try:
                got = operations.get(name)
            except ResourceNotFoundError:
                continue
            assignment = parse_assignment(got.serialize(keep_readonly=True))
            assignments[assignment.id.lower()] = assignment
    ids = [s.id for s in want.configurations] + [c.id for c in owned]
    if ids:
        for assignment in read_assignments(clients.graph(), settings.subscriptions, ids):
            assignments.setdefault(assignment.id.lower(), assignment)
    return Actual(configurations, tuple(sorted(assignments.values(), key=lambda a: a.id.lower())))


# ---------------------------------------------------------------- the difference


@dataclass(frozen=True)
class FieldChange:
    field: str  # its wire name
    old: str
    new: str


@dataclass(frozen=True)
class CreateConfiguration:
    spec: ConfigurationSpec


@dataclass(frozen=True)
class UpdateConfiguration:
    spec: ConfigurationSpec
    actual: ActualConfiguration
    fields: tuple[FieldChange, ...]


@dataclass(frozen=True)
class DeleteConfiguration:
    actual: ActualConfiguration
    reason: str


@dataclass(frozen=True)
class CreateAssignment:
    assignment: Assignment


@dataclass(frozen=True)
class UpdateAssignment:
    assignment: Assignment
    fields: tuple[FieldChange, ...]


@dataclass(frozen=True)
class DeleteAssignment:
    assignment: Assignment
    reason: str


@dataclass(frozen=True)
class Blocked:
    """A difference PatchPilot will not resolve on its own; `apply` leaves it."""

    subject: str
    reason: str


Change = (
    CreateConfiguration
    | UpdateConfiguration
    | DeleteConfiguration
    | CreateAssignment
    | UpdateAssignment
    | DeleteAssignment
    | Blocked
)

_ORDER = {
    CreateConfiguration: 0,
    UpdateConfiguration: 1,
    CreateAssignment: 2,
    UpdateAssignment: 3,
    DeleteAssignment: 4,  # before the configurations they point to
    DeleteConfiguration: 5,
    Blocked: 6,
}


def diff(want: Desired, have: Actual) -> list[Change]:
    """What must change for `have` to be `want`, in the order `apply_each` makes it. Only
    configurations tagged as this policy's are changed or deleted, and only assignments of them."""
    changes: list[Change] = []
    blocked_rings: set[str] = set()  # their configuration is someone else's: nothing is assigned to it
    for spec in want.configurations:
        current = have.configurations.get(spec.name.lower())
        if current is None:
            changes.append(CreateConfiguration(spec))
        elif current.owner != want.policy:
            owner = f"policy {current.owner}'s" if current.owner else f"not PatchPilot's (no {TAG_POLICY} tag)"
            changes.append(
                Blocked(
                    f"maintenance configuration {spec.name}",
                    f"exists and is {owner}: rename the ring or azure.maintenance.name_prefix, or delete it",
                )
            )
            blocked_rings.add(spec.ring)
        elif current.location.replace(" ", "").lower() != spec.location.replace(" ", "").lower():
            changes.append(
                Blocked(
                    f"maintenance configuration {spec.name}",
                    f"is in {current.location}, not {spec.location}, and cannot move: delete it, or set "
                    f"azure.maintenance.location to {current.location}",
                )
            )
            blocked_rings.add(spec.ring)
        else:
            fields = _field_changes(current.fields, spec.fields)
            if fields:
                changes.append(UpdateConfiguration(spec, current, fields))
    wanted_names = {s.name.lower() for s in want.configurations}
    leaving = {
        c.id.lower(): c
        for c in have.configurations.values()
        if c.owner == want.policy and c.name.lower() not in wanted_names
    }
    ours = {s.id.lower() for s in want.configurations if s.ring not in blocked_rings} | set(leaving)

    current_assignments = {a.id.lower(): a for a in have.assignments}
    wanted_assignments = {a.id.lower(): a for a in want.assignments if a.ring not in blocked_rings}
    for key, assignment in wanted_assignments.items():
        current_a = current_assignments.get(key)
        if current_a is None:
            changes.append(CreateAssignment(assignment))
        elif current_a.configuration_id.lower() not in ours:
            changes.append(
                Blocked(
                    f"configuration assignment {assignment.id}",
                    f"exists for another maintenance configuration ({current_a.configuration_id}): delete it, or "
                    "rename the ring or azure.maintenance.name_prefix",
                )
            )
        else:
            fields = _assignment_changes(current_a, assignment)
            if fields:
                changes.append(UpdateAssignment(assignment, fields))
    for key, current_a in current_assignments.items():
        if key in wanted_assignments or current_a.configuration_id.lower() not in ours:
            continue
        if current_a.scope is None:
            changes.append(
                Blocked(
                    f"configuration assignment {current_a.id}", "a nested resource's assignment: remove it yourself"
                )
            )
            continue
        changes.append(DeleteAssignment(current_a, _why_unassigned(want, current_a, leaving)))
    for configuration in leaving.values():
        ring = configuration.tags.get(TAG_RING, "?")
        changes.append(DeleteConfiguration(configuration, f"the policy has no Azure ring {ring} any more"))
    return sorted(changes, key=lambda c: _ORDER[type(c)])


def _field_changes(old: ConfigurationFields, new: ConfigurationFields) -> tuple[FieldChange, ...]:
    out = []
    for name, label in FIELD_LABELS.items():
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            out.append(FieldChange(label, show(before), show(after)))
    return tuple(out)


def _assignment_changes(old: Assignment, new: Assignment) -> tuple[FieldChange, ...]:
    out = []
    if old.configuration_id.lower() != new.configuration_id.lower():
        out.append(FieldChange("maintenanceConfigurationId", old.configuration_id, new.configuration_id))
    if new.filter is not None:
        before = old.filter or ScopeFilter()
        for part in _FILTER_PARTS:
            if before.part(part).lower() != new.filter.part(part).lower():
                out.append(FieldChange(f"filter.{part}", before.part(part), new.filter.part(part)))
    return tuple(out)


def _why_unassigned(want: Desired, assignment: Assignment, leaving: Mapping[str, ActualConfiguration]) -> str:
    if assignment.configuration_id.lower() in leaving:
        return "its maintenance configuration is deleted"
    if assignment.kind != want.mode:
        return f"a {assignment.kind} assignment, but azure.maintenance.assignment is {want.mode}"
    if assignment.kind == "dynamic":
        return "not a subscription of azure.subscriptions, or not a scope PatchPilot writes"
    return "the policy no longer puts this machine in the ring"


# ---------------------------------------------------------------- doing it


def apply_each(clients: AzureClients, changes: Sequence[Change]) -> Iterator[Change]:
    """Make the changes in order, yielding each once it is made. A failing call raises (azure-core's
    HttpResponseError) after the changes before it are made; a later sync picks up from there,
    since every write is a PUT or DELETE by a deterministic name."""
    for change in sorted(changes, key=lambda c: _ORDER[type(c)]):
        match change:
            case CreateConfiguration(spec):
                clients.maintenance(spec.subscription).maintenance_configurations.create_or_update(
                    spec.resource_group, spec.name, spec.model()
                )
            case UpdateConfiguration(spec, actual, _):
                clients.maintenance(spec.subscription).maintenance_configurations.create_or_update(
                    spec.resource_group, spec.name, spec.model(actual.tags)
                )
            case CreateAssignment(assignment) | UpdateAssignment(assignment, _):
                _put_assignment(clients, assignment)
            case DeleteAssignment(assignment, _):
                _delete_assignment(clients, assignment)
            case DeleteConfiguration(actual, _):
                where = _CONFIGURATION_ID.match(actual.id)
                if where is None:
                    raise ValueError(f"not a maintenance configuration id: {actual.id}")
                clients.maintenance(where["subscription"]).maintenance_configurations.delete(
                    where["group"], where["name"]
                )
            case Blocked():
                continue
            case _:
                assert_never(change)
        yield change


def _put_assignment(clients: AzureClients, assignment: Assignment) -> None:
    scope = assignment.scope
    if scope is None:
        raise ValueError(f"not an assignment id PatchPilot writes: {assignment.id}")
    client = clients.maintenance(scope.subscription)
    match scope.kind:
        case "subscription":
            client.configuration_assignments_for_subscriptions.create_or_update(assignment.name, assignment.model())
        case "resource_group":
            assert scope.resource_group is not None
            client.configuration_assignments_for_resource_group.create_or_update(
                scope.resource_group, assignment.name, assignment.model()
            )
        case "resource":
            assert scope.resource_group and scope.namespace and scope.type and scope.resource
            client.configuration_assignments.create_or_update(
                scope.resource_group, scope.namespace, scope.type, scope.resource, assignment.name, assignment.model()
            )


def _delete_assignment(clients: AzureClients, assignment: Assignment) -> None:
    scope = assignment.scope
    if scope is None:
        raise ValueError(f"not an assignment id PatchPilot removes: {assignment.id}")
    client = clients.maintenance(scope.subscription)
    match scope.kind:
        case "subscription":
            client.configuration_assignments_for_subscriptions.delete(assignment.name)
        case "resource_group":
            assert scope.resource_group is not None
            client.configuration_assignments_for_resource_group.delete(scope.resource_group, assignment.name)
        case "resource":
            assert scope.resource_group and scope.namespace and scope.type and scope.resource
            client.configuration_assignments.delete(
                scope.resource_group, scope.namespace, scope.type, scope.resource, assignment.name
            )


# ---------------------------------------------------------------- for reports


def change_document(change: Change) -> dict[str, object]:
    """A change as JSON for `patchpilot azure sync --json`."""
    match change:
        case CreateConfiguration(spec):
            return {
                "action": "create_configuration",
                "configuration": spec.name,
                "id": spec.id,
                "ring": spec.ring,
                "fields": {"startDateTime": spec.start_date_time}
                | {label: show(getattr(spec.fields, name)) for name, label in FIELD_LABELS.items()},
            }
        case UpdateConfiguration(spec, _, fields):
            return {
                "action": "update_configuration",
                "configuration": spec.name,
                "id": spec.id,
                "ring": spec.ring,
                "fields": {f.field: {"old": f.old, "new": f.new} for f in fields},
            }
        case DeleteConfiguration(actual, reason):
            return {"action": "delete_configuration", "configuration": actual.name, "id": actual.id, "reason": reason}
        case CreateAssignment(assignment):
            return {
                "action": "create_assignment",
                "kind": assignment.kind,
                "id": assignment.id,
                "ring": assignment.ring,
                "configuration_id": assignment.configuration_id,
                "filter": {p: assignment.filter.part(p) for p in _FILTER_PARTS} if assignment.filter else None,
            }
        case UpdateAssignment(assignment, fields):
            return {
                "action": "update_assignment",
                "kind": assignment.kind,
                "id": assignment.id,
                "ring": assignment.ring,
                "fields": {f.field: {"old": f.old, "new": f.new} for f in fields},
            }
        case DeleteAssignment(assignment, reason):
            return {"action": "delete_assignment", "kind": assignment.kind, "id": assignment.id, "reason": reason}
        case Blocked(subject, reason):
            return {"action": "blocked", "subject": subject, "reason": reason}
        case _:
            assert_never(change)
