"""What the Azure fleet (`fleet/`), the assessor (`compliance.py`) and the maintenance source
(`maintenance_watch.py`) share: `AzureAccess` (the SDK clients per subscription, Resource Graph
rows and ARM models of machines in bulk, instance views, tagging, a command's first-execution
mark), machine ids, the readers of ARM and Resource Graph answers, and the marks PatchPilot
leaves in Azure (tags, derived names)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import models as cm
from azure.mgmt.hybridcompute import models as hm

from patchpilot.batching import chunks, group
from patchpilot.engine.messages import Outcome
from patchpilot.inventory import Instance
from patchpilot.ports import Clock

from .clients import AzureClients
from .graph import IDS_PER_QUERY, kql_list, kql_string, query

if TYPE_CHECKING:
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.hybridcompute import HybridComputeManagementClient
    from azure.mgmt.resourcegraph import ResourceGraphClient

VM_TYPE = "microsoft.compute/virtualmachines"
ARC_TYPE = "microsoft.hybridcompute/machines"
NIC_TYPE = "microsoft.network/networkinterfaces"
EXTENSION_TYPE = "microsoft.compute/virtualmachines/extensions"
# The Application Health extension (its publisher and the `properties.type` of its two flavours).
APP_HEALTH_PUBLISHER = "Microsoft.ManagedServices"
APP_HEALTH_TYPES = ("ApplicationHealthLinux", "ApplicationHealthWindows")
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
TAG_HEALTH_BASE = "PatchPilotHealthBase"  # on a health script's Run Command: the VM's own health when it started
TAG_VALUE_MAX = 256
_MACHINE_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"(?P<provider>Microsoft\.Compute/virtualMachines|Microsoft\.HybridCompute/machines)/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
_RESOURCE_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/.+/(?P<name>[^/]+)$", re.I
)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class AzureAccess:
    """The Azure reads and writes every part of the fleet shares. Keeps no state but its clients."""

    def __init__(self, clients: AzureClients, clock: Clock) -> None:
        self.clients = clients
        self.clock = clock

    # ------------------------------------------------------------ clients

    def compute(self, machine: Machine) -> ComputeManagementClient:
        return self.clients.compute(machine.subscription)

    def hybrid(self, machine: Machine) -> HybridComputeManagementClient:
        return self.clients.hybrid(machine.subscription)

    def graph(self) -> ResourceGraphClient:
        return self.clients.graph()

    # ------------------------------------------------------------ shared reads and writes

    def instance_view(self, machine: Machine) -> Any:
        return self.compute(machine).virtual_machines.instance_view(machine.resource_group, machine.name)

    def parse(self, instances: Iterable[Instance], outcomes: dict[str, Outcome], now: datetime) -> dict[str, Machine]:
        """Each instance's machine by instance id; an id that is not an ARM id of a VM or an Arc
        server gets a failed outcome instead."""
        machines: dict[str, Machine] = {}
        for instance in instances:
            machine = parse_machine(instance.id)
            if machine is None:
                detail = "not an Azure VM or Arc server resource id (/subscriptions/.../virtualMachines/<name>)"
                outcomes[instance.id] = Outcome(id=instance.id, ok=False, detail=detail, at=now)
            else:
                machines[instance.id] = dataclasses.replace(machine, id=instance.id)
        return machines

    def rows(self, machines: Sequence[Machine]) -> dict[str, Any]:
        """The machines' Resource Graph rows by lower-case id, 400 ids a query."""
        rows: dict[str, Any] = {}
        keys = sorted({m.key for m in machines})
        subscriptions = sorted({m.subscription for m in machines})
        for chunk in chunks(keys, IDS_PER_QUERY):
            for row in query(self.graph(), machines_query(chunk), subscriptions):
                rows[text(row, "id").lower()] = row
        return rows

    def nics(self, nic_ids: Iterable[str], subscriptions: Sequence[str]) -> dict[str, Any]:
        """The network interfaces' Resource Graph rows (`id, properties`) by lower-case id, 400 ids
        a query; a NIC the identity may not read is absent (Resource Graph filters, never refuses)."""
        nics: dict[str, Any] = {}
        for chunk in chunks(sorted({i.lower() for i in nic_ids}), IDS_PER_QUERY):
            for nic in query(self.graph(), nics_query(chunk), subscriptions):
                nics[text(nic, "id").lower()] = nic
        return nics

    def app_health_vms(self, machines: Sequence[Machine]) -> set[str]:
        """The lower-case ids of the VMs among `machines` that Resource Graph shows with an
        Application Health extension, 400 VMs a query. An extension the identity may not read is
        left out (Resource Graph filters, never refuses): the fleet role holds
        Microsoft.Compute/virtualMachines/extensions/read for it. A failed query raises
        HttpResponseError."""
        found: set[str] = set()
        keys = sorted({m.key for m in machines if not m.arc})
        subscriptions = sorted({m.subscription for m in machines})
        for chunk in chunks(keys, IDS_PER_QUERY):
            for row in query(self.graph(), app_health_query(chunk), subscriptions):
                found.add(text(row, "vmId").lower())
        return found

    def models(self, machines: Sequence[Machine]) -> dict[str, Any]:
        """The machines' ARM models (tags, disks) by lower-case id: one listing per resource group."""
        models: dict[str, Any] = {}
        for members in group(machines, lambda m: (m.subscription.lower(), m.resource_group.lower(), m.arc)).values():
            first = members[0]
            try:
                if first.arc:
                    listing: Iterable[Any] = self.hybrid(first).machines.list_by_resource_group(first.resource_group)
                else:
                    listing = self.compute(first).virtual_machines.list(first.resource_group)
                models.update(by_key(listing))
            except ResourceNotFoundError:
                continue  # no such resource group: its machines are not found
        return models

    def model(self, machine: Machine) -> Any:
        if machine.arc:
            return self.hybrid(machine).machines.get(machine.resource_group, machine.name)
        return self.compute(machine).virtual_machines.get(machine.resource_group, machine.name)

    def set_tags(self, machine: Machine, model: Any, updates: Mapping[str, str]) -> None:
        """Add tags to a machine, keeping its others (a tags PATCH replaces them all)."""
        body = {"tags": {**tags_of(model), **updates}}
        if machine.arc:
            self.hybrid(machine).machines.update(machine.resource_group, machine.name, hm.MachineUpdate(body))
        else:
            self.compute(machine).virtual_machines.begin_update(
                machine.resource_group, machine.name, cm.VirtualMachineUpdate(body), polling=False
            )

    def anchor(self, command_id: str, tag: str, machines: Sequence[Machine], now: datetime) -> tuple[datetime, bool]:
        """When this command was first executed, and whether that is now (the mark was just
        written): `tag` on the command's first machine (by id) that exists, written there on first
        sight (one write per command, not per machine)."""
        for machine in sorted(machines, key=lambda m: m.key)[:3]:
            try:
                model = self.model(machine)
            except ResourceNotFoundError:
                continue
            found = read_mark(tags_of(model).get(tag, ""), command_id)
            if found is not None:
                return found[0], False
            try:
                self.set_tags(machine, model, {tag: mark(command_id, now)})
            except HttpResponseError:
                return now, False  # the next execution tries again
            return now, True
        return now, False


# ---------------------------------------------------------------- ids, answers, marks


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


def machines_query(ids: Sequence[str]) -> str:
    return (
        f"resources\n| where type in~ ({kql_string(VM_TYPE)}, {kql_string(ARC_TYPE)})\n"
        f"| where id in~ {kql_list(ids)}\n| project {ROW_COLUMNS}"
    )


def nics_query(ids: Sequence[str]) -> str:
    return (
        f"resources\n| where type =~ {kql_string(NIC_TYPE)}\n| where id in~ {kql_list(ids)}\n| project id, properties"
    )


def app_health_query(vm_ids: Sequence[str]) -> str:
    """The Application Health extensions of these VMs (lower-case ids): each extension's id and its
    VM's (`vmId`, lower-cased), taken from the extension's id as Microsoft's Resource Graph sample
    "List all extensions installed on a virtual machine" does."""
    return "\n".join(
        [
            "resources",
            f"| where type =~ {kql_string(EXTENSION_TYPE)}",
            f"| where tostring(properties.publisher) =~ {kql_string(APP_HEALTH_PUBLISHER)}",
            f"| where tostring(properties.type) in~ {kql_list(APP_HEALTH_TYPES)}",
            "| extend vmId = tolower(substring(id, 0, indexof(id, '/extensions/')))",
            f"| where vmId in~ {kql_list(vm_ids)}",
            "| project id, vmId",
        ]
    )


def backend_pools(nic: Any) -> list[str]:
    """The load-balancer and Application Gateway backend pools a NIC's IP configurations are in,
    lower-cased (ARM ids compare without case)."""
    pools = []
    for config in items(nic, "properties", "ipConfigurations"):
        for key in ("loadBalancerBackendAddressPools", "applicationGatewayBackendAddressPools"):
            pools += [text(pool, "id").lower() for pool in items(config, "properties", key) if text(pool, "id")]
    return pools


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


def by_key(resources: Iterable[Any]) -> dict[str, Any]:
    return {text(r, "id").lower(): r for r in resources}


def transient(exc: HttpResponseError) -> bool:
    """A refusal that may pass: a conflict with another operation, a server error, no answer."""
    status = exc.status_code
    return status is None or status == 409 or status >= 500
