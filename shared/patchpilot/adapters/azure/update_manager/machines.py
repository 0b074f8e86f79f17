"""The machines in the policy's Azure scope with their patch settings, read in bulk from Resource
Graph, and `fix_patch_settings` (Customer Managed Schedules: patchMode AutomaticByPlatform +
bypassPlatformSafetyChecksOnUserSchedule)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from patchpilot.adapters.azure.graph import kql_list, query
from patchpilot.inventory import Instance, OsFamily
from patchpilot.policy.model import AzureSettings

if TYPE_CHECKING:
    from azure.mgmt.resourcegraph import ResourceGraphClient

    from patchpilot.adapters.azure.clients import AzureClients


VM_TYPE = "Microsoft.Compute/virtualMachines"


ARC_TYPE = "Microsoft.HybridCompute/machines"


CUSTOMER_MANAGED_MODE = "AutomaticByPlatform"  # with bypassPlatformSafetyChecksOnUserSchedule: true


# Why PatchPilot never sets bypassPlatformSafetyChecksOnUserSchedule on a hotpatch-enabled VM.
HOTPATCH_REFUSES_BYPASS = (
    "hotpatch is enabled (enableHotpatching): Azure rejects bypassPlatformSafetyChecksOnUserSchedule "
    "with hotpatch, so PatchPilot leaves its patch settings alone"
)


OS_TYPES: dict[OsFamily, str] = {"linux": "Linux", "windows": "Windows"}


@dataclass(frozen=True)
class PatchSettings:
    """`osProfile.<os>Configuration.patchSettings` as the machine has them (defaults filled in)."""

    patch_mode: str
    assessment_mode: str = "ImageDefault"
    bypass: bool = False  # automaticByPlatformSettings.bypassPlatformSafetyChecksOnUserSchedule
    reboot_setting: str | None = None  # automaticByPlatformSettings.rebootSetting
    enable_automatic_updates: bool | None = None  # Windows only; set when the VM was created
    hotpatch: bool = False  # Windows only: patchSettings.enableHotpatching (needs AutomaticByPlatform)

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
            hotpatch=self.settings.hotpatch,
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
    config = as_mapping(row.get("windows") if os == "windows" else row.get("linux"))
    patch = as_mapping(config.get("patchSettings"))
    automatic = as_mapping(patch.get("automaticByPlatformSettings"))
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
            hotpatch=os == "windows" and patch.get("enableHotpatching") is True,
        ),
        tags={str(k): str(v) for k, v in as_mapping(row.get("tags")).items()},
        zone=str(zones[0]) if isinstance(zones, list) and zones else None,
    )


def as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def fix_patch_settings(clients: AzureClients, machine: Machine) -> None:
    """Customer Managed Schedules on one VM: patchMode and assessmentMode AutomaticByPlatform,
    bypassPlatformSafetyChecksOnUserSchedule true (a PATCH; nothing else is sent, so Windows'
    enableAutomaticUpdates stays as it is: AutomaticByOS and Manual both move to AutomaticByPlatform,
    and back only to the mode they came from). Setting what is already set changes nothing."""
    from azure.mgmt.compute import models as cm

    if machine.arc or machine.os is None:
        raise ValueError(f"{machine.id}: only Azure VMs of a known OS get their patch settings fixed")
    if machine.settings.hotpatch:
        raise ValueError(f"{machine.id}: {HOTPATCH_REFUSES_BYPASS}")
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
