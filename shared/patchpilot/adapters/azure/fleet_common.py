"""Pieces of the Azure fleet that need no client: resource ids, JSON reading, deterministic names
and marks, the Resource Graph queries, installPatches bodies, health verdicts."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from patchpilot.inventory import Instance, OsFamily
from patchpilot.policy.model import Policy, Selector

from .graph import kql_list, kql_string

T = TypeVar("T")
K = TypeVar("K")

VM_TYPE = "microsoft.compute/virtualmachines"
ARC_TYPE = "microsoft.hybridcompute/machines"
NIC_TYPE = "microsoft.network/networkinterfaces"
INSTALL_RESULT_TYPES = (f"{VM_TYPE}/patchinstallationresults", f"{ARC_TYPE}/patchinstallationresults")
PATCH_ROW_TYPES = tuple(f"{t}/softwarepatches" for t in INSTALL_RESULT_TYPES)
ROW_COLUMNS = "id, name, type, location, resourceGroup, subscriptionId, tags, zones, properties"

TAG_RUN = "PatchPilotRun"
TAG_WAVE = "PatchPilotWave"
TAG_COMMAND = "PatchPilotCommand"
TAG_INSTANCE = "PatchPilotInstance"
TAG_DISK = "PatchPilotDisk"  # on snapshots and restored disks: "os" or "lun<n>"
TAG_RESTORED_FROM = "PatchPilotRestoredFrom"  # on a restored disk: the snapshot it was made from
TAG_REPLACED_BY = "PatchPilotReplacedBy"  # on an original disk: the disk that replaced it
TAG_INSTALL = "PatchPilotInstall"  # on a machine: "<command id>|<UTC start>[|failed|<reason>]"
TAG_HEALTH = "PatchPilotHealthCheck"  # on a command's first machine: "<command id>|<UTC start>"
TAG_VALUE_MAX = 256

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
_MACHINE_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"(?P<provider>Microsoft\.Compute/virtualMachines|Microsoft\.HybridCompute/machines)/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
_RESOURCE_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/.+/(?P<name>[^/]+)$", re.I
)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


# ---------------------------------------------------------------- resource ids


@dataclass(frozen=True)
class Machine:
    """An Azure VM or Arc-enabled server, from its ARM resource id."""

    id: str
    subscription: str
    resource_group: str
    name: str
    arc: bool

    @property
    def key(self) -> str:
        """ARM ids compare without case."""
        return self.id.lower()

    @property
    def kind(self) -> str:
        return "Arc server" if self.arc else "VM"


def parse_machine(resource_id: str) -> Machine | None:
    found = _MACHINE_ID.fullmatch(resource_id.rstrip("/"))
    if found is None:
        return None
    return Machine(
        resource_id.rstrip("/"),
        found["sub"],
        found["rg"],
        found["name"],
        found["provider"].lower().startswith("microsoft.hybridcompute"),
    )


def resource_group_of(resource_id: str) -> tuple[str, str, str] | None:
    """(subscription, resource group, name) of any resource id in a resource group."""
    found = _RESOURCE_ID.fullmatch(resource_id.rstrip("/"))
    return (found["sub"], found["rg"], found["name"]) if found else None


# ---------------------------------------------------------------- reading JSON answers


def at(data: Any, *path: str | int) -> Any:
    """The value at `path` in an ARM answer (an SDK model is a mapping of the wire JSON), or
    None where any step is missing."""
    for key in path:
        if isinstance(key, int):
            if isinstance(data, str) or not isinstance(data, Sequence) or not -len(data) <= key < len(data):
                return None
            data = data[key]
        elif isinstance(data, Mapping):
            data = data.get(key)
        else:
            return None
    return data


def text(data: Any, *path: str | int) -> str:
    value = at(data, *path)
    return value if isinstance(value, str) else ""


def items(data: Any, *path: str | int) -> list[Any]:
    value = at(data, *path)
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def tags_of(data: Any) -> dict[str, str]:
    value = at(data, "tags")
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time from ARM or Resource Graph, aware (UTC when no offset is given)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def statuses(view: Any, prefix: str) -> list[str]:
    """The status codes of an instance view that start with `prefix`, without it:
    statuses(view, "PowerState/") -> ["running"]."""
    return [code[len(prefix) :] for s in items(view, "statuses") if (code := text(s, "code")).startswith(prefix)]


def power_state(view: Any) -> str:
    found = statuses(view, "PowerState/")
    return found[0].lower() if found else "unknown"


def describe_error(exc: Exception) -> str:
    """`Code: message` of an azure-core error, short."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) or getattr(exc, "status_code", None) or type(exc).__name__
    message = getattr(error, "message", None) or str(getattr(exc, "message", "") or exc)
    return f"{code}: {message.splitlines()[0] if message else ''}".rstrip(": ")[:300]


# ---------------------------------------------------------------- names and marks


def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def derived_name(machine_name: str, *parts: str) -> str:
    """A snapshot or disk name that depends only on `parts` (the command id and the source's id):
    `pp-<machine>-<16 hex>`, within Azure's 80 characters and allowed characters."""
    base = _UNSAFE_NAME.sub("-", machine_name).strip("-._")[:50] or "machine"
    return f"pp-{base}-{digest(*parts)[:16]}"


def tag_value(value: str) -> str:
    return value[:TAG_VALUE_MAX]


def mark(command_id: str, moment: datetime, *extra: str) -> str:
    """`<command id>|<UTC start>[|...]`; a command id too long for a tag is replaced by its digest."""
    head = command_id if len(command_id) <= 160 else f"sha256:{digest(command_id)[:32]}"
    return tag_value("|".join((head, iso(moment), *extra)))


def read_mark(value: str, command_id: str) -> tuple[datetime, list[str]] | None:
    """The start time and extra fields of this command's mark, or None (another command's)."""
    parts = value.split("|")
    head = command_id if len(command_id) <= 160 else f"sha256:{digest(command_id)[:32]}"
    if len(parts) < 2 or parts[0] != head:
        return None
    moment = parse_time(parts[1])
    return (moment, parts[2:]) if moment else None


# ---------------------------------------------------------------- installPatches


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
    note = "" if chosen == wanted else f"maximum duration {minutes(wanted)} clamped to {minutes(chosen)}"
    return chosen, note


def minutes(delta: timedelta) -> str:
    total = int(delta.total_seconds() // 60)
    return f"{total} min" if total < 120 or total % 60 else f"{total // 60} h"


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


def installed_name(row: Any, os: OsFamily) -> str:
    """How an installed patch is reported and pinned: "KB<number>" on Windows, "name=version"
    on Linux (packageNameMasksToInclude takes both forms)."""
    properties = at(row, "properties")
    kb = text(properties, "kbId") or text(properties, "kbid")
    name = text(properties, "patchName")
    version = text(properties, "version")
    if os == "windows" and kb:
        return f"KB{kb.upper().removeprefix('KB')}"
    if name and version:
        return f"{name}={version}"
    return name or (f"KB{kb}" if kb else "")


# ---------------------------------------------------------------- Resource Graph queries


def machines_query(ids: Sequence[str]) -> str:
    return (
        f"resources\n| where type in~ ({kql_string(VM_TYPE)}, {kql_string(ARC_TYPE)})\n"
        f"| where id in~ {kql_list(ids)}\n| project {ROW_COLUMNS}"
    )


def nics_query(ids: Sequence[str]) -> str:
    return (
        f"resources\n| where type =~ {kql_string(NIC_TYPE)}\n| where id in~ {kql_list(ids)}\n| project id, properties"
    )


_OS_TYPE = "tolower(coalesce(tostring(properties.storageProfile.osDisk.osType), tostring(properties.osType)))"


def discovery_query(policy: Policy) -> str | None:
    """Every VM (and Arc server, with azure.arc) in the policy's resource groups and locations that
    some ring may select, by the rings' tags, ids, regions and OS; None when no ring selects Azure."""
    settings = policy.azure
    types = [VM_TYPE, ARC_TYPE] if settings and settings.arc else [VM_TYPE]
    lines = ["resources", f"| where type in~ {kql_list(types)}"]
    if settings and settings.resource_groups:
        lines.append(f"| where resourceGroup in~ {kql_list(settings.resource_groups)}")
    if settings and settings.locations:
        lines.append(f"| where location in~ {kql_list(settings.locations)}")
    rings = [ring.select for ring in policy.rings if not ring.select.clouds or "azure" in ring.select.clouds]
    if not rings:
        return None
    conditions = [_selector_condition(select) for select in rings]
    if all(conditions):
        lines.append("| where " + " or ".join(f"({c})" for c in dict.fromkeys(conditions)))
    lines += [f"| project {ROW_COLUMNS}", "| order by id asc"]
    return "\n".join(lines)


def _selector_condition(select: Selector) -> str:
    """A ring selector as KQL ('' when it selects every machine)."""
    parts = []
    for key, values in sorted(select.tags.items()):
        tag = f"tostring(tags[{kql_string(key)}])"
        parts.append(f"isnotempty({tag})" if "*" in values else f"{tag} in {kql_list(values)}")
    if select.ids:
        parts.append(f"id in~ {kql_list(select.ids)}")
    if select.regions:
        parts.append(f"location in~ {kql_list(select.regions)}")
    if select.os:
        parts.append(f"{_OS_TYPE} in {kql_list(select.os)}")
    return " and ".join(parts)


def install_runs_query(
    machine_keys: Sequence[str], *, since: datetime | None = None, maintenance_run: str | None = None
) -> str:
    """The installation summaries of these machines (lower-case ids) that started since `since`,
    or that belong to an Update Manager run (its maintenanceRunId is the run's applyUpdates id,
    the correlation id of its events)."""
    lines = ["patchinstallationresources", f"| where type in~ {kql_list(INSTALL_RESULT_TYPES)}"]
    if since is not None:
        lines.append(f"| where todatetime(properties.startDateTime) >= todatetime({kql_string(iso(since))})")
    if maintenance_run is not None:
        lines.append(f"| where tolower(tostring(properties.maintenanceRunId)) == {kql_string(maintenance_run.lower())}")
    lines += [
        "| extend machine = tostring(split(tolower(id), '/patchinstallationresults/')[0])",
        f"| where machine in {kql_list(machine_keys)}",
        "| project id, machine, properties",
    ]
    return "\n".join(lines)


def installed_patches_query(run_keys: Sequence[str]) -> str:
    """The patches installed by these installation runs (lower-case summary ids)."""
    return (
        "patchinstallationresources\n"
        f"| where type in~ {kql_list(PATCH_ROW_TYPES)}\n"
        "| extend run = tostring(split(tolower(id), '/softwarepatches/')[0])\n"
        f"| where run in {kql_list(run_keys)}\n"
        "| where tostring(properties.installationState) =~ 'Installed'\n"
        "| project id, run, properties"
    )


# ---------------------------------------------------------------- inventory


def to_instance(row: Any) -> Instance:
    """An `Instance` from a Resource Graph row of a VM or an Arc server. A zonal VM's zone is
    "<location>-<zone>" (e.g. "westeurope-2"): Azure's zone numbers only mean something within a
    location (and within a subscription), so the location is part of the name; the planner only
    compares zones within a region."""
    location = text(row, "location").lower()
    zones = [str(z) for z in items(row, "zones")]
    aset = text(row, "properties", "availabilitySet", "id").lower() or None
    os_type = (
        text(row, "properties", "storageProfile", "osDisk", "osType") or text(row, "properties", "osType")
    ).lower()
    return Instance(
        id=text(row, "id"),
        cloud="azure",
        region=location,
        os="windows" if os_type == "windows" else "linux",
        name=text(row, "name"),
        zone=f"{location}-{zones[0]}" if zones and not aset else None,
        availability_set=aset,
        tags=tags_of(row),
        account=text(row, "subscriptionId") or None,
    )


def os_known(row: Any) -> bool:
    os_type = (
        text(row, "properties", "storageProfile", "osDisk", "osType") or text(row, "properties", "osType")
    ).lower()
    return os_type in ("windows", "linux")


def arc_problem(row: Any) -> str | None:
    """Why an Arc server's agent cannot take work (None: Connected)."""
    status = text(row, "properties", "status") or "status unknown"
    return None if status.lower() == "connected" else f"Arc agent {status}"


def agent_problem(view: Any) -> str | None:
    """Why a running VM's agent cannot take work, from its instance view (None: Ready)."""
    agent = at(view, "vmAgent")
    if agent is None:
        return "VM agent not reporting (no agent status in the instance view)"
    shown = [text(s, "displayStatus") for s in items(agent, "statuses")]
    if "Ready" in shown:
        return None
    return f"VM agent {shown[0] if shown and shown[0] else 'status unknown'}"


def agent_version(view: Any) -> str:
    return text(view, "vmAgent", "vmAgentVersion")


def app_health(view: Any) -> str | None:
    """The Application Health extension's verdict (healthy, unhealthy, initializing, unknown) from
    the instance view's vmHealth or the extension's substatus; None without the extension."""
    code = text(view, "vmHealth", "status", "code")
    if code.startswith("HealthState/"):
        return code.split("/", 1)[1].lower()
    for extension in items(view, "extensions"):
        if "applicationhealth" not in (text(extension, "type") + text(extension, "name")).lower():
            continue
        for status in items(extension, "substatuses"):
            found = text(status, "code")
            if "ApplicationHealthState/" in found:
                return found.rsplit("/", 1)[1].lower()
        return "unknown"
    return None


def primary(entries: Sequence[Any]) -> Any:
    """The entry marked primary (NICs, IP configurations), else the first."""
    for entry in entries:
        if at(entry, "properties", "primary") is True:
            return entry
    return entries[0] if entries else None


def private_ip_of_nic(nic: Any) -> str:
    config = primary(items(nic, "properties", "ipConfigurations"))
    return text(config, "properties", "privateIPAddress")


def private_ip_of_arc(row: Any) -> str:
    for interface in items(row, "properties", "networkProfile", "networkInterfaces"):
        for address in items(interface, "ipAddresses"):
            if text(address, "ipAddressVersion") in ("", "IPv4") and text(address, "address"):
                return text(address, "address")
    return ""


# ---------------------------------------------------------------- health verdicts


@dataclass(frozen=True)
class Verdict:
    """One machine's health so far: pass (with what passed), wait (why), or fail (why)."""

    state: Literal["pass", "wait", "fail"]
    detail: str

    def plus(self, passed: str) -> Verdict:
        return Verdict(self.state, f"{self.detail}, {passed}" if self.detail else passed)

    def timed(self, now: datetime, deadline: datetime, timeout: timedelta) -> Verdict:
        """A wait past the deadline is a failure."""
        if self.state == "wait" and now >= deadline:
            return Verdict("fail", f"{self.detail} (still after {minutes(timeout)})")
        return self


# ---------------------------------------------------------------- grouping


def unique(values: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """The first item per key, in order."""
    seen: dict[str, T] = {}
    for value in values:
        seen.setdefault(key(value), value)
    return list(seen.values())


def group(values: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    result: dict[K, list[T]] = {}
    for value in values:
        result.setdefault(key(value), []).append(value)
    return result


def chunks(values: Sequence[T], size: int) -> list[list[T]]:
    return [list(values[i : i + size]) for i in range(0, len(values), size)]
