"""A stateful fake of Azure Compute, Hybrid Compute (Arc) and Resource Graph on top of fake_arm.

The real SDK clients talk to it through `FakeArm`'s transport. It models what the fleet adapter
relies on, with the REST spec's status codes per operation:

- VMs (model, instance view with power state, VM agent, Application Health, patch status,
  platform update domain), their NICs and managed disks; Arc-enabled servers (status Connected or
  not, no managed disks);
- incremental snapshots (PUT 202, Creating -> Succeeded) and disks copied from snapshots
  (PUT 202), listed per resource group; a disk's *content* (what was installed on it, whether the
  installation broke it) travels with snapshots and copies, so a VM rolled back to a pre-patch
  snapshot is healthy again;
- deallocate, power off and start (POST 202, deallocating -> deallocated, stopping -> stopped,
  starting -> running), and the
  disk swap rule: a PATCH that changes the OS disk or a data disk of a VM that is not deallocated
  is refused with 409 OperationNotAllowed;
- installPatches (POST 202; 409 while an installation runs or when the VM is not running): the
  patches the request selects (classifications, KB numbers, package masks, "name=version") are
  installed after `install_minutes`, and the run appears in Resource Graph's
  `patchinstallationresources` (summary and softwarepatches rows) and in the instance view;
- managed Run Commands (PUT 200/201): the script "exits" 0, or 1 on a broken VM, or what the test
  set for that script (`scripts`: exit code and output). The VM agent runs it: sent to a running VM
  whose agent is not Ready, it stays executionState Pending (provisioningState Creating) until the
  agent is Ready, as Microsoft documents ("The Run Command feature doesn't work if the VM agent
  status is NOT READY"; docs/azure-deploy.md, "ARM requests per VM");
- Resource Graph: `resources` (VMs with properties.extended.instanceView.powerState, Arc
  servers, NICs, a VM's Application Health extension as its
  microsoft.compute/virtualmachines/extensions row) and `patchinstallationresources`, answered
  by fake_resource_graph's KQL evaluator, which refuses what it does not model, so such a query
  fails the test instead of passing. Resource Graph lags behind ARM: `installations_indexed`
  (installs not in it yet) and `graph_power` (a VM's power state as its row still shows it) let
  a test make it stale; `graph_throttled` makes the queries naming a text fail (429 each time).

Long operations change state on the test's clock: each handler first applies the transitions
that are due. Nothing here waits.
"""

from __future__ import annotations

import copy
import fnmatch
import heapq
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure_vocabulary import LINUX_CLASSIFICATIONS, REBOOT_SETTINGS, WINDOWS_CLASSIFICATIONS
from fake_arm import ARM, ArmError, FakeArm, Request, Response
from fake_resource_graph import run_kql

from patchpilot.inventory import Instance

SUB = "00000000-0000-0000-0000-000000000001"
SCRIPT_SOURCES = ("script", "scriptUri", "commandId", "galleryScriptReferenceId")
_S = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers"
VM = _S + r"/Microsoft\.Compute/virtualMachines/(?P<name>[^/]+)"
ARC = _S + r"/Microsoft\.HybridCompute/machines/(?P<name>[^/]+)"
SNAPSHOT = _S + r"/Microsoft\.Compute/snapshots/(?P<name>[^/]+)"
DISK = _S + r"/Microsoft\.Compute/disks/(?P<name>[^/]+)"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Patch:
    """An update available to a machine: a Linux package version or a Windows KB."""

    name: str
    classification: str = "Security"
    version: str = ""  # Linux
    kb: str = ""  # Windows, digits
    severity: str = ""  # MSRC severity as an assessment reports it: Critical, Important, ...
    published: str = ""  # when the vendor published it (ISO 8601), as an assessment reports it

    @property
    def patch_id(self) -> str:
        return f"{self.name}_{self.version or self.kb}".replace("/", "_")


@dataclass
class Content:
    """What a disk holds: the patches installed on it and whether they broke the machine."""

    installed: tuple[str, ...] = ()
    broken: bool = False


@dataclass
class MachineState:
    kind: str  # "vm" or "arc"
    os: str  # "Linux" or "Windows"
    power: str = "running"
    agent: str = "Ready"
    app_health: str | None = None  # Application Health extension: None (not installed), healthy, ...
    update_domain: int | None = None
    arc_status: str = "Connected"
    available: list[Patch] = field(default_factory=list)
    install_minutes: int = 20
    install_fails: bool = False
    breaks_when_patched: bool = False
    running_install: str | None = None  # activity id
    install_requests: list[dict[str, Any]] = field(default_factory=list)
    last_install: dict[str, Any] | None = None
    last_assessment: dict[str, Any] | None = None  # instance view patchStatus.availablePatchSummary
    content: Content = field(default_factory=Content)  # Arc servers (no managed disks)


class FakeAzureCompute:
    def __init__(self, fake: FakeArm) -> None:
        self.fake = fake
        self.clock = fake.clock
        self.machines: dict[str, MachineState] = {}
        self.contents: dict[str, Content] = {}  # disk or snapshot id (lower) -> content
        self.runs: list[dict[str, Any]] = []  # patchinstallationresources rows
        self.graph_queries: list[str] = []
        self.installations_indexed = True  # False: Resource Graph has not caught up with the installs yet
        # Resource Graph behind ARM: a VM's power state as its `resources` row still shows it (lower-case id ->
        # "running", "deallocated", ...; "" for a row with no power state yet), whatever the VM's is now.
        self.graph_power: dict[str, str] = {}
        self.snapshot_minutes = 3
        self.disk_minutes = 2
        self.power_minutes = 2
        self.script_minutes = 1
        self.scripts: dict[str, tuple[int, str]] = {}  # a Run Command script -> (exit code, output) it gives
        # Run Commands sent to a running VM whose agent is not Ready: started when it is (`tick`).
        self._awaiting_agent: list[tuple[MachineState, Callable[[], None]]] = []
        # Resource Graph throttles every query naming one of these (lower-case) texts, e.g. a type:
        # 429 RateLimiting each time, so the query fails once azure-core's retries are spent.
        self.graph_throttled: set[str] = set()
        self._due: list[tuple[datetime, int, Callable[[], None]]] = []
        self._ids = itertools.count(1)
        on = fake.on
        on("GET", _S + r"/Microsoft\.Compute/virtualMachines", self._list("Microsoft.Compute/virtualMachines"))
        on("GET", VM, self._get_vm)
        on("PATCH", VM, self._patch_vm)
        on("GET", VM + r"/instanceView", self._instance_view)
        on("POST", VM + r"/deallocate", self._deallocate)
        on("POST", VM + r"/start", self._start)
        on("POST", VM + r"/powerOff", self._power_off)
        on("POST", VM + r"/installPatches", self._install)
        on("PUT", VM + r"/runCommands/(?P<run>[^/]+)", self._put_run_command)
        on("GET", VM + r"/runCommands/(?P<run>[^/]+)", self._get_run_command)
        on("GET", _S + r"/Microsoft\.HybridCompute/machines", self._list("Microsoft.HybridCompute/machines"))
        on("GET", ARC, self._get_plain)
        on("PATCH", ARC, self._patch_arc)
        on("POST", ARC + r"/installPatches", self._install)
        on("PUT", ARC + r"/runCommands/(?P<run>[^/]+)", self._put_run_command)
        on("GET", ARC + r"/runCommands/(?P<run>[^/]+)", self._get_run_command)
        on("GET", _S + r"/Microsoft\.Compute/snapshots", self._list("Microsoft.Compute/snapshots"))
        on("GET", SNAPSHOT, self._get_plain)
        on("PUT", SNAPSHOT, self._put_snapshot)
        on("GET", _S + r"/Microsoft\.Compute/disks", self._list("Microsoft.Compute/disks"))
        on("GET", DISK, self._get_plain)
        on("PUT", DISK, self._put_disk)
        on("PATCH", DISK, self._patch_disk)
        fake.table("resources", self._resources_table)
        fake.table("computeresources", self._compute_resources_table)
        fake.table("patchinstallationresources", self._installations_table)

    # ------------------------------------------------------------ building the world

    def add_vm(
        self,
        name: str,
        *,
        rg: str = "rg-web",
        sub: str = SUB,
        location: str = "westeurope",
        os: str = "Linux",
        zone: str | None = "1",
        availability_set: str | None = None,
        update_domain: int | None = None,
        tags: dict[str, str] | None = None,
        data_disks: int = 1,
        sku: str = "Premium_LRS",
        private_ip: str = "",
        pools: Sequence[str] = (),
        scale_set: str | None = None,
        fault_domain: int | None = None,
        available: list[Patch] | None = None,
        hotpatch: bool = False,
        **state: Any,
    ) -> str:
        """A VM with a NIC, a managed OS disk and `data_disks` data disks; returns its id. Its NIC's
        IP configuration is in the backend `pools` (ARM ids of Load Balancer backend pools, and of
        Application Gateway ones: `.../applicationGateways/<gw>/backendAddressPools/<pool>`), as the
        NetworkInterfaceIPConfiguration of the REST specification carries them. With `scale_set` (a
        name in the same resource group) it is a member of that Flexible scale set, referenced as
        VirtualMachineProperties.virtualMachineScaleSet (a SubResource) in the REST specification."""
        base = f"/subscriptions/{sub}/resourceGroups/{rg}/providers"
        vm_id = f"{base}/Microsoft.Compute/virtualMachines/{name}"
        nic_id = f"{base}/Microsoft.Network/networkInterfaces/{name}-nic"
        ip = private_ip or f"10.0.{len(self.machines) // 250}.{len(self.machines) % 250 + 4}"
        self.fake.add(
            {
                "id": nic_id,
                "name": f"{name}-nic",
                "type": "Microsoft.Network/networkInterfaces",
                "location": location,
                "properties": {
                    "ipConfigurations": [
                        {
                            "id": f"{nic_id}/ipConfigurations/ipconfig1",
                            "name": "ipconfig1",
                            "properties": _ip_configuration(ip, pools),
                        }
                    ]
                },
            }
        )
        zones = [zone] if zone and not availability_set else []
        os_disk = self._new_disk(base, f"{name}_OsDisk_1", location, zones, sku, os_type=os)
        data = [
            {
                "lun": lun,
                "name": f"{name}_DataDisk_{lun}",
                "createOption": "Empty",
                "caching": "ReadOnly",
                "managedDisk": {"id": self._new_disk(base, f"{name}_DataDisk_{lun}", location, zones, sku)},
            }
            for lun in range(data_disks)
        ]
        properties: dict[str, Any] = {
            "provisioningState": "Succeeded",
            "storageProfile": {
                "osDisk": {
                    "osType": os,
                    "name": f"{name}_OsDisk_1",
                    "createOption": "FromImage",
                    "caching": "ReadWrite",
                    "managedDisk": {"id": os_disk, "storageAccountType": sku},
                },
                "dataDisks": data,
            },
            "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": True}}]},
        }
        if availability_set:
            properties["availabilitySet"] = {"id": f"{base}/Microsoft.Compute/availabilitySets/{availability_set}"}
        if hotpatch:  # WindowsConfiguration.patchSettings.enableHotpatching needs AutomaticByPlatform
            patch_settings = {"patchMode": "AutomaticByPlatform", "enableHotpatching": True}
            properties["osProfile"] = {
                "windowsConfiguration": {"provisionVMAgent": True, "patchSettings": patch_settings}
            }
        if scale_set:
            scale_set_id = f"{base}/Microsoft.Compute/virtualMachineScaleSets/{scale_set}"
            properties["virtualMachineScaleSet"] = {"id": scale_set_id}
            if fault_domain is not None:  # VirtualMachineProperties.platformFaultDomain: the set's logical fault domain
                properties["platformFaultDomain"] = fault_domain
        for disk in [os_disk, *[str(d["managedDisk"]["id"]) for d in data]]:  # type: ignore[index]
            self.fake.get(disk)["properties"]["diskState"] = "Attached"
        resource: dict[str, Any] = {
            "id": vm_id,
            "name": name,
            "type": "Microsoft.Compute/virtualMachines",
            "location": location,
            "tags": dict(tags or {}),
            "properties": properties,
        }
        if zones:
            resource["zones"] = zones
        self.fake.add(resource)
        domain = update_domain if update_domain is not None else (0 if availability_set else None)
        self.machines[vm_id.lower()] = MachineState(
            "vm", os, update_domain=domain, available=list(available or []), **state
        )
        if state.get("app_health") is not None:
            self._add_app_health_extension(resource, os)
        return vm_id

    def _add_app_health_extension(self, vm: dict[str, Any], os: str) -> None:
        """The VM's Application Health extension as the ARM child resource Resource Graph lists
        (VirtualMachineExtension: `properties.publisher`, `properties.type`, `typeHandlerVersion`,
        `settings`). Its verdict is in the VM's instance view only (`MachineState.app_health`)."""
        self.fake.add(
            {
                "id": f"{vm['id']}/extensions/HealthExtension",
                "name": "HealthExtension",
                "type": "Microsoft.Compute/virtualMachines/extensions",
                "location": vm["location"],
                "properties": {
                    "publisher": "Microsoft.ManagedServices",
                    "type": f"ApplicationHealth{os}",
                    "typeHandlerVersion": "2.0",
                    "autoUpgradeMinorVersion": True,
                    "provisioningState": "Succeeded",
                    "settings": {"protocol": "http", "port": 80, "requestPath": "/health"},
                },
            }
        )

    def add_uniform_instance(
        self,
        scale_set: str,
        instance: int,
        *,
        rg: str = "rg-web",
        sub: str = SUB,
        location: str = "westeurope",
        os: str = "Linux",
        zone: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """An instance of a Uniform scale set, as a resource of type
        Microsoft.Compute/virtualMachineScaleSets/virtualMachines (no VM of its own: the REST
        specification's VirtualMachineScaleSetVM, `instanceId`, `zones`, `storageProfile.osDisk.osType`);
        returns its id. Resource Graph keeps it in the `computeresources` table, never in `resources`."""
        base = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets"
        instance_id = f"{base}/{scale_set}/virtualMachines/{instance}"
        resource: dict[str, Any] = {
            "id": instance_id,
            "name": f"{scale_set}_{instance}",
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": location,
            "tags": dict(tags or {}),
            "instanceId": str(instance),
            "properties": {
                "storageProfile": {"osDisk": {"osType": os}},
                "provisioningState": "Succeeded",
                "latestModelApplied": True,
            },
        }
        if zone:
            resource["zones"] = [zone]
        self.fake.add(resource)
        return instance_id

    def add_arc(
        self,
        name: str,
        *,
        rg: str = "rg-onprem",
        sub: str = SUB,
        location: str = "westeurope",
        os: str = "Linux",
        tags: dict[str, str] | None = None,
        private_ip: str = "192.168.1.10",
        available: list[Patch] | None = None,
        **state: Any,
    ) -> str:
        arc_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.HybridCompute/machines/{name}"
        self.fake.add(
            {
                "id": arc_id,
                "name": name,
                "type": "Microsoft.HybridCompute/machines",
                "location": location,
                "tags": dict(tags or {}),
                "properties": {
                    "provisioningState": "Succeeded",
                    "osType": os.lower(),
                    "agentVersion": "1.45.02",
                    "networkProfile": {
                        "networkInterfaces": [{"ipAddresses": [{"address": private_ip, "ipAddressVersion": "IPv4"}]}]
                    },
                },
            }
        )
        self.machines[arc_id.lower()] = MachineState("arc", os, available=list(available or []), **state)
        return arc_id

    def _new_disk(self, base: str, name: str, location: str, zones: list[str], sku: str, os_type: str = "") -> str:
        disk_id = f"{base}/Microsoft.Compute/disks/{name}"
        properties: dict[str, Any] = {
            "provisioningState": "Succeeded",
            "diskState": "Unattached",
            "diskSizeGB": 64,
            "creationData": {"createOption": "Empty"},
        }
        if os_type:
            properties.update(osType=os_type, hyperVGeneration="V2")
        disk = {
            "id": disk_id,
            "name": name,
            "type": "Microsoft.Compute/disks",
            "location": location,
            "sku": {"name": sku},
            "properties": properties,
        }
        if zones:
            disk["zones"] = list(zones)
        self.fake.add(disk)
        self.contents[disk_id.lower()] = Content()
        return disk_id

    # ------------------------------------------------------------ looking (tests)

    def state(self, machine_id: str) -> MachineState:
        return self.machines[machine_id.lower()]

    def instance(self, machine_id: str) -> Instance:
        """The inventory record of a machine the fake holds (id, region, OS, name, subscription)."""
        resource = self.fake.get(machine_id)
        return Instance(
            id=resource["id"],
            cloud="azure",
            region=resource["location"],
            os="windows" if self.state(machine_id).os == "Windows" else "linux",
            name=resource["name"],
            account=SUB,
        )

    def vm(self, vm_id: str) -> dict[str, Any]:
        self.tick()
        return self.fake.get(vm_id)

    def os_disk(self, vm_id: str) -> str:
        return str(self.vm(vm_id)["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"])

    def content_of(self, vm_id: str) -> Content:
        """What the machine runs: its OS disk's content (an Arc server's own)."""
        self.tick()
        return self._content(vm_id)

    def _content(self, vm_id: str) -> Content:
        machine = self.state(vm_id)
        if machine.kind == "arc":
            return machine.content
        disk = self.fake.get(vm_id)["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"]
        return self.contents[disk.lower()]

    def broken(self, machine_id: str) -> bool:
        return self.content_of(machine_id).broken

    def find(self, resource_type: str) -> list[dict[str, Any]]:
        self.tick()
        return list(self.fake.find(resource_type))

    # ------------------------------------------------------------ time

    def at(self, delay: timedelta, change: Callable[[], None]) -> None:
        heapq.heappush(self._due, (self.clock.now() + delay, next(self._ids), change))

    def tick(self) -> None:
        """Apply every change whose time has come, in order; then start the Run Commands whose VM
        agent has become Ready."""
        while self._due and self._due[0][0] <= self.clock.now():
            heapq.heappop(self._due)[2]()
        waiting, self._awaiting_agent = self._awaiting_agent, []
        for machine, begin in waiting:
            if machine.agent == "Ready" and machine.power == "running":
                begin()
            else:
                self._awaiting_agent.append((machine, begin))

    def _accepted(self, delay: timedelta) -> Response:
        return self.fake.accepted("", after=delay, on_done=self.tick)

    # ------------------------------------------------------------ generic reads

    def _list(self, resource_type: str) -> Callable[[Request], Response]:
        def answer(request: Request) -> Response:
            self.tick()
            found = request.match(_S + r"/.+")
            prefix = f"/subscriptions/{found['sub']}/resourcegroups/{found['rg']}/".lower()
            value = [r for r in self.fake.find(resource_type) if r["id"].lower().startswith(prefix)]
            return Response(200, {"value": value})

        return answer

    def _get_plain(self, request: Request) -> Response:
        self.tick()
        return Response(200, self.fake.get(request.path))

    def _machine(self, request: Request) -> tuple[dict[str, Any], MachineState]:
        found = request.match(
            r"(?P<machine>" + _S + r"/Microsoft\.(Compute/virtualMachines|HybridCompute/machines)/[^/]+).*"
        )
        resource = self.fake.get(found["machine"])
        return resource, self.machines[resource["id"].lower()]

    # ------------------------------------------------------------ VMs

    def _get_vm(self, request: Request) -> Response:
        self.tick()
        resource, machine = self._machine(request)
        body = copy.deepcopy(resource)
        if request.query.get("$expand", "").lower() == "instanceview":
            body["properties"]["instanceView"] = self._view(resource, machine)
        return Response(200, body)

    def _instance_view(self, request: Request) -> Response:
        self.tick()
        resource, machine = self._machine(request)
        return Response(200, self._view(resource, machine))

    def _view(self, resource: dict[str, Any], machine: MachineState) -> dict[str, Any]:
        view: dict[str, Any] = {
            "computerName": resource["name"],
            "osName": machine.os,
            "statuses": [
                {"code": f"ProvisioningState/{resource['properties']['provisioningState'].lower()}", "level": "Info"},
                {"code": f"PowerState/{machine.power}", "level": "Info", "displayStatus": f"VM {machine.power}"},
            ],
        }
        if machine.update_domain is not None and machine.power == "running":
            view["platformUpdateDomain"] = machine.update_domain
            view["platformFaultDomain"] = 0
        if machine.power == "running":
            view["vmAgent"] = {
                "vmAgentVersion": "2.11.1.12",
                "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": machine.agent}],
            }
            health = machine.app_health
            if health is not None:
                if health == "healthy" and self._content(resource["id"]).broken:
                    health = "unhealthy"
                view["extensions"] = [
                    {
                        "name": "HealthExtension",
                        "type": "Microsoft.ManagedServices.ApplicationHealthLinux",
                        "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info"}],
                        "substatuses": [{"code": f"ComponentStatus/ApplicationHealthState/{health}", "level": "Info"}],
                    }
                ]
                view["vmHealth"] = {"status": {"code": f"HealthState/{health}", "level": "Info"}}
        if machine.last_install is not None:
            view.setdefault("patchStatus", {})["lastPatchInstallationSummary"] = machine.last_install
        if machine.last_assessment is not None:
            view.setdefault("patchStatus", {})["availablePatchSummary"] = machine.last_assessment
        return view

    def _patch_vm(self, request: Request) -> Response:
        self.tick()
        resource, machine = self._machine(request)
        body = request.body or {}
        storage = (body.get("properties") or {}).get("storageProfile")
        if storage:
            self._swap(resource, machine, storage)
        if "tags" in body:
            resource["tags"] = dict(body["tags"] or {})
        return Response(200, copy.deepcopy(resource))

    def _swap(self, resource: dict[str, Any], machine: MachineState, storage: dict[str, Any]) -> None:
        current = resource["properties"]["storageProfile"]
        new_os = (storage.get("osDisk") or {}).get("managedDisk", {}).get("id")
        new_data = storage.get("dataDisks")
        for n, disk in enumerate(new_data or []):
            if not (disk.get("managedDisk") or {}).get("id"):  # an empty new disk, a detach by flag, ...
                raise ArmError(
                    400, "NotModelled", f"the fake swaps data disks by managedDisk.id only; dataDisks[{n}] has none"
                )
        changes = new_os is not None and new_os.lower() != current["osDisk"]["managedDisk"]["id"].lower()
        if new_data is not None:
            old = {d["lun"]: d["managedDisk"]["id"].lower() for d in current["dataDisks"]}
            changes = changes or old != {d["lun"]: d["managedDisk"]["id"].lower() for d in new_data}
        if changes and machine.power != "deallocated":
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"Disks of VM '{resource['name']}' can be changed only when it is deallocated ({machine.power}).",
            )
        attach: list[str] = []
        if new_os is not None:
            disk = self.fake.get(new_os)
            if disk["properties"].get("osType", "").lower() != current["osDisk"]["osType"].lower():
                raise ArmError(400, "InvalidParameter", f"Disk {new_os} has another OS type than the VM.")
            if disk.get("zones", []) != resource.get("zones", []):
                raise ArmError(400, "InvalidParameter", f"Disk {new_os} is not in the VM's zone.")
            if new_os.lower() != current["osDisk"]["managedDisk"]["id"].lower():
                self.fake.get(current["osDisk"]["managedDisk"]["id"])["properties"]["diskState"] = "Unattached"
                attach.append(new_os)
            current["osDisk"]["managedDisk"]["id"] = disk["id"]
            current["osDisk"]["name"] = storage["osDisk"].get("name", disk["name"])
        if new_data is not None:
            kept = {d["managedDisk"]["id"].lower() for d in new_data}
            for disk in current["dataDisks"]:
                if disk["managedDisk"]["id"].lower() not in kept:
                    self.fake.get(disk["managedDisk"]["id"])["properties"]["diskState"] = "Unattached"
            for disk in new_data:
                self.fake.get(disk["managedDisk"]["id"])  # 404 for a disk that does not exist
                attach.append(disk["managedDisk"]["id"])
            current["dataDisks"] = copy.deepcopy(new_data)
        for disk_id in attach:
            self.fake.get(disk_id)["properties"]["diskState"] = "Attached"

    def _deallocate(self, request: Request) -> Response:
        self.tick()
        _, machine = self._machine(request)
        if machine.power in ("running", "stopped", "starting"):
            machine.power = "deallocating"
            self.at(timedelta(minutes=self.power_minutes), lambda: setattr(machine, "power", "deallocated"))
        return self._accepted(timedelta(minutes=self.power_minutes))

    def _start(self, request: Request) -> Response:
        self.tick()
        _, machine = self._machine(request)
        if machine.power in ("deallocated", "stopped"):
            machine.power = "starting"
            self.at(timedelta(minutes=self.power_minutes), lambda: setattr(machine, "power", "running"))
        return self._accepted(timedelta(minutes=self.power_minutes))

    def _power_off(self, request: Request) -> Response:
        """Stopped but still allocated (VirtualMachines_PowerOff, 202)."""
        self.tick()
        _, machine = self._machine(request)
        if machine.power in ("running", "starting"):
            machine.power = "stopping"
            self.at(timedelta(minutes=self.power_minutes), lambda: setattr(machine, "power", "stopped"))
        return self._accepted(timedelta(minutes=self.power_minutes))

    # ------------------------------------------------------------ Arc servers

    def _patch_arc(self, request: Request) -> Response:
        self.tick()
        resource, _ = self._machine(request)
        if "tags" in (request.body or {}):
            resource["tags"] = dict(request.body["tags"] or {})
        return Response(200, copy.deepcopy(resource))

    # ------------------------------------------------------------ patching

    def _install(self, request: Request) -> Response:
        self.tick()
        resource, machine = self._machine(request)
        body = request.body or {}
        machine.install_requests.append(body)
        duration = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?", str(body.get("maximumDuration", "")))
        if duration is None or not any(duration.groups()):
            raise ArmError(400, "InvalidParameter", f"maximumDuration {body.get('maximumDuration')!r} is not ISO 8601")
        if int(duration[1] or 0) * 60 + int(duration[2] or 0) > 240:
            raise ArmError(400, "InvalidParameter", "maximumDuration must be at most PT4H")
        if body.get("rebootSetting") not in REBOOT_SETTINGS:
            raise ArmError(400, "InvalidParameter", f"rebootSetting {body.get('rebootSetting')!r}")
        key = "windowsParameters" if machine.os == "Windows" else "linuxParameters"
        if key not in body:
            raise ArmError(400, "InvalidParameter", f"{key} is required for a {machine.os} machine")
        if machine.kind == "arc" and machine.arc_status != "Connected":
            raise ArmError(409, "OperationNotAllowed", f"machine is {machine.arc_status}")
        if machine.kind == "vm" and machine.power != "running":
            raise ArmError(409, "OperationNotAllowed", f"VM is {machine.power}")
        if machine.running_install is not None:
            raise ArmError(409, "Conflict", "A patch installation is already in progress on this machine.")
        self._begin_install(resource, machine, body[key])
        return self._accepted(timedelta(minutes=machine.install_minutes))

    def maintenance_install(self, machine_ids: list[str], run_id: str, params: dict[str, Any]) -> None:
        """Azure Update Manager's scheduled run `run_id` (an applyUpdates id) installs on these
        machines now: installation runs whose maintenanceRunId is the run's id."""
        self.tick()
        for machine_id in machine_ids:
            self._begin_install(self.fake.get(machine_id), self.state(machine_id), params, maintenance_run=run_id)

    def _begin_install(
        self, resource: dict[str, Any], machine: MachineState, params: dict[str, Any], maintenance_run: str = ""
    ) -> None:
        chosen = self._selected(machine, params)
        activity = f"{next(self._ids):08d}-0000-4000-8000-000000000000"
        now = self.clock.now()
        machine.running_install = activity
        run_id = f"{resource['id']}/patchInstallationResults/{activity}"
        summary = {
            "id": run_id,
            "name": activity,
            "type": f"{resource['type'].lower()}/patchinstallationresults",
            "subscriptionId": resource["id"].split("/")[2],
            "properties": {
                "installationActivityId": activity,
                "status": "InProgress",
                "startDateTime": iso(now),
                "lastModifiedDateTime": iso(now),
                "installedPatchCount": 0,
                "failedPatchCount": 0,
                "osType": machine.os,
                "startedBy": "Platform" if maintenance_run else "User",
                "maintenanceRunId": maintenance_run,
            },
        }
        self.runs.append(summary)
        machine.last_install = {"status": "InProgress", "installationActivityId": activity, "startTime": iso(now)}

        def finish() -> None:
            machine.running_install = None
            end = iso(self.clock.now())
            properties = summary["properties"]
            properties["lastModifiedDateTime"] = end
            if machine.install_fails:
                properties.update(status="Failed", failedPatchCount=max(1, len(chosen)), installedPatchCount=0)
                properties["errorDetails"] = {"code": "PatchInstallFailed", "message": "1 patch failed to install"}
            else:
                properties.update(status="Succeeded", installedPatchCount=len(chosen), rebootStatus="Completed")
                for patch in chosen:
                    self.runs.append(
                        {
                            "id": f"{run_id}/softwarePatches/{patch.patch_id}",
                            "name": patch.patch_id,
                            "type": f"{summary['type']}/softwarepatches",
                            "subscriptionId": summary["subscriptionId"],
                            "properties": {
                                "patchName": patch.name,
                                "version": patch.version,
                                "kbId": patch.kb,
                                "classifications": [patch.classification],
                                "installationState": "Installed",
                            },
                        }
                    )
                machine.available = [p for p in machine.available if p not in chosen]
                content = self._content(resource["id"])
                content.installed += tuple(p.patch_id for p in chosen)
                content.broken = content.broken or machine.breaks_when_patched
            machine.last_install = {
                "status": properties["status"],
                "installationActivityId": activity,
                "startTime": properties["startDateTime"],
                "lastModifiedTime": end,
            }

        self.at(timedelta(minutes=machine.install_minutes), finish)

    def _selected(self, machine: MachineState, params: dict[str, Any]) -> list[Patch]:
        classes = set(params.get("classificationsToInclude") or [])
        allowed = WINDOWS_CLASSIFICATIONS if machine.os == "Windows" else LINUX_CLASSIFICATIONS
        if classes - allowed:
            raise ArmError(400, "InvalidParameter", f"classifications {sorted(classes - allowed)} for {machine.os}")
        if machine.os == "Windows":
            kbs = set(params.get("kbNumbersToInclude") or [])
            not_kbs = set(params.get("kbNumbersToExclude") or [])
            if any(not k.isdigit() for k in kbs | not_kbs):
                raise ArmError(400, "InvalidParameter", "KB numbers are digits")
            return [
                p for p in machine.available if (p.classification in classes or p.kb in kbs) and p.kb not in not_kbs
            ]
        if ("Critical" in classes) != ("Security" in classes):
            raise ArmError(400, "InvalidParameter", "Critical and Security are selected together on Linux")
        include: list[str] = list(params.get("packageNameMasksToInclude") or [])
        exclude: list[str] = list(params.get("packageNameMasksToExclude") or [])

        def matches(patch: Patch, masks: list[str]) -> bool:
            return any(
                f"{patch.name}={patch.version}" == m if "=" in m else fnmatch.fnmatchcase(patch.name, m) for m in masks
            )

        return [
            p
            for p in machine.available
            if (p.classification in classes or matches(p, include)) and not matches(p, exclude)
        ]

    # ------------------------------------------------------------ run commands

    def _put_run_command(self, request: Request) -> Response:
        self.tick()
        resource, machine = self._machine(request)
        name = request.match(r".*/runCommands/(?P<run>[^/]+)")["run"]
        body = request.body or {}
        source = (body.get("properties") or {}).get("source") or {}
        if not any(source.get(k) for k in SCRIPT_SOURCES) or not body.get("location"):
            # the specification's sources: one of script, scriptUri, commandId, galleryScriptReferenceId
            raise ArmError(400, "InvalidParameter", "a run command needs a location and a script source")
        script = source.get("script")
        run_id = f"{resource['id']}/runCommands/{name}"
        existed = run_id.lower() in self.fake.resources
        command = {
            "id": run_id,
            "name": name,
            "type": f"{resource['type']}/runCommands",
            "location": body["location"],
            "tags": dict(body.get("tags") or {}),
            "properties": {
                **copy.deepcopy(body["properties"]),
                "provisioningState": "Creating",
                "instanceView": {"executionState": "Pending"},
            },
        }
        self.fake.add(command)

        def begin() -> None:
            started = self.clock.now()
            command["properties"]["instanceView"] = {"executionState": "Running", "startTime": iso(started)}
            self.at(timedelta(minutes=self.script_minutes), lambda: finish(started))

        def finish(started: datetime) -> None:
            broken = self._content(resource["id"]).broken
            if machine.kind == "vm" and machine.power != "running":
                state, code, output = "Failed", -1, "VM not running"
            elif script in self.scripts:
                code, output = self.scripts[script]
                state = "Succeeded" if code == 0 else "Failed"
            else:
                state, code, output = ("Failed", 1, "curl: (22) 503") if broken else ("Succeeded", 0, "ok")
            command["properties"]["provisioningState"] = "Succeeded"
            command["properties"]["instanceView"] = {
                "executionState": state,
                "exitCode": code,
                "output": output,
                "startTime": iso(started),
                "endTime": iso(self.clock.now()),
            }

        # The VM agent runs the script (docs/azure-deploy.md, "ARM requests per VM"): on a running VM
        # whose agent is not Ready it stays Pending, its PUT not provisioned, until the agent is Ready.
        if machine.kind == "vm" and machine.power == "running" and machine.agent != "Ready":
            self._awaiting_agent.append((machine, begin))
        else:
            begin()
        return Response(200 if existed else 201, copy.deepcopy(command))

    def _get_run_command(self, request: Request) -> Response:
        self.tick()
        body = copy.deepcopy(self.fake.get(request.path))
        if "virtualmachines" in request.path.lower() and request.query.get("$expand", "") != "instanceView":
            body["properties"].pop("instanceView", None)  # only with $expand=instanceView (Arc always has it)
        return Response(200, body)

    # ------------------------------------------------------------ snapshots and disks

    def _put_snapshot(self, request: Request) -> Response:
        self.tick()
        found = request.match(SNAPSHOT)
        body = request.body or {}
        data = (body.get("properties") or {}).get("creationData") or {}
        if data.get("createOption") != "Copy" or not data.get("sourceResourceId"):
            raise ArmError(400, "InvalidParameter", "creationData must copy a source disk")
        source = self.fake.get(data["sourceResourceId"])
        if body.get("location", "").lower() != source["location"].lower():
            raise ArmError(400, "InvalidParameter", "an incremental snapshot lives in its disk's location")
        snapshot_id = _resource_id(found, "snapshots")
        existing = self.fake.resources.get(snapshot_id.lower())
        if existing is not None:
            if existing["properties"]["creationData"]["sourceResourceId"].lower() != data["sourceResourceId"].lower():
                raise ArmError(409, "PropertyChangeNotAllowed", "Changing property 'creationData' is not allowed.")
            return Response(200, existing)
        snapshot = {
            "id": snapshot_id,
            "name": found["name"],
            "type": "Microsoft.Compute/snapshots",
            "location": body["location"],
            "tags": dict(body.get("tags") or {}),
            "properties": {
                **copy.deepcopy(body["properties"]),
                "provisioningState": "Creating",
                "completionPercent": 0.0,
                "osType": source["properties"].get("osType"),
                "hyperVGeneration": source["properties"].get("hyperVGeneration"),
            },
        }
        self.fake.add(snapshot)
        self.contents[snapshot_id.lower()] = copy.deepcopy(self.contents[source["id"].lower()])

        def done() -> None:
            snapshot["properties"].update(provisioningState="Succeeded", completionPercent=100.0)

        self.at(timedelta(minutes=self.snapshot_minutes), done)
        return self._accepted(timedelta(minutes=self.snapshot_minutes))

    def _put_disk(self, request: Request) -> Response:
        self.tick()
        found = request.match(DISK)
        body = request.body or {}
        data = (body.get("properties") or {}).get("creationData") or {}
        disk_id = _resource_id(found, "disks")
        if disk_id.lower() in self.fake.resources:
            return Response(200, self.fake.get(disk_id))
        if data.get("createOption") != "Copy":
            raise ArmError(400, "InvalidParameter", "the fake only copies disks from snapshots")
        snapshot = self.fake.get(data["sourceResourceId"])
        disk = {
            "id": disk_id,
            "name": found["name"],
            "type": "Microsoft.Compute/disks",
            "location": body.get("location"),
            **({"sku": body["sku"]} if body.get("sku") else {}),  # optional: the official example sends none
            "tags": dict(body.get("tags") or {}),
            "properties": {
                **copy.deepcopy(body["properties"]),
                "provisioningState": "Creating",
                "diskState": "Unattached",
                "diskSizeGB": 64,
            },
        }
        if body.get("zones"):
            disk["zones"] = list(body["zones"])
        self.fake.add(disk)
        self.contents[disk_id.lower()] = copy.deepcopy(self.contents[snapshot["id"].lower()])
        self.at(timedelta(minutes=self.disk_minutes), lambda: disk["properties"].update(provisioningState="Succeeded"))
        return self._accepted(timedelta(minutes=self.disk_minutes))

    def _patch_disk(self, request: Request) -> Response:
        self.tick()
        disk = self.fake.get(request.path)
        if "tags" in (request.body or {}):
            disk["tags"] = dict(request.body["tags"] or {})
        return Response(200, copy.deepcopy(disk))

    # ------------------------------------------------------------ Resource Graph

    def _row(self, resource: dict[str, Any]) -> dict[str, Any]:
        parts = resource["id"].split("/")
        row = copy.deepcopy(resource)
        row.update(
            type=resource["type"].lower(),
            subscriptionId=parts[2],
            resourceGroup=parts[4].lower(),
            location=resource.get("location", "").lower(),
            tags=resource.get("tags") or {},
            zones=resource.get("zones"),
        )
        machine = self.machines.get(resource["id"].lower())
        if machine is not None and machine.kind == "vm":
            power = self.graph_power.get(resource["id"].lower(), machine.power)
            if power:
                code = f"PowerState/{power}"
                row["properties"]["extended"] = {
                    "instanceView": {"powerState": {"code": code, "displayStatus": f"VM {power}"}}
                }
        if machine is not None and machine.kind == "arc":
            row["properties"]["status"] = machine.arc_status
        return row

    def _resources_table(self, text: str, subscriptions: list[str] | None) -> list[dict[str, Any]]:
        self.tick()
        self.graph_queries.append(text)
        if any(throttled in text.lower() for throttled in self.graph_throttled):
            raise ArmError(
                429,
                "RateLimiting",
                "Client application has been throttled and should not attempt to repeat the request until an "
                "amount of time has elapsed.",
            )
        rows = [self._row(r) for r in self.fake.resources.values() if "/providers/" in r["id"] and not _compute(r)]
        return run_kql(text, _in(rows, subscriptions))

    def _compute_resources_table(self, text: str, subscriptions: list[str] | None) -> list[dict[str, Any]]:
        """`computeresources`: the Uniform scale set instances (and only those: the other types it
        documents, e.g. the instances' NICs' public IPs, the fake does not model)."""
        self.tick()
        self.graph_queries.append(text)
        rows = [self._row(r) for r in self.fake.resources.values() if _compute(r)]
        return run_kql(text, _in(rows, subscriptions))

    def _installations_table(self, text: str, subscriptions: list[str] | None) -> list[dict[str, Any]]:
        self.tick()
        self.graph_queries.append(text)
        return run_kql(text, _in(copy.deepcopy(self.runs), subscriptions)) if self.installations_indexed else []


def _resource_id(found: re.Match[str], kind: str) -> str:
    return (
        f"/subscriptions/{found['sub']}/resourceGroups/{found['rg']}/providers/Microsoft.Compute/{kind}/{found['name']}"
    )


def _compute(resource: dict[str, Any]) -> bool:
    """Whether Resource Graph keeps the resource in `computeresources` rather than `resources`."""
    return str(resource.get("type", "")).lower() == "microsoft.compute/virtualmachinescalesets/virtualmachines"


def _in(rows: list[dict[str, Any]], subscriptions: list[str] | None) -> list[dict[str, Any]]:
    if not subscriptions:
        return rows
    wanted = {s.lower() for s in subscriptions}
    return [r for r in rows if r.get("subscriptionId", "").lower() in wanted]


__all__ = ["ARM", "SUB", "Content", "FakeAzureCompute", "MachineState", "Patch", "run_kql"]


def _ip_configuration(ip: str, pools: Sequence[str]) -> dict[str, Any]:
    """A NIC IP configuration's properties: its address and its backend pool references
    (`loadBalancerBackendAddressPools`, `applicationGatewayBackendAddressPools`: lists of `{id}`)."""
    properties: dict[str, Any] = {"privateIPAddress": ip, "primary": True}
    gateway = [{"id": p} for p in pools if "/applicationgateways/" in p.lower()]
    balancer = [{"id": p} for p in pools if "/applicationgateways/" not in p.lower()]
    if balancer:
        properties["loadBalancerBackendAddressPools"] = balancer
    if gateway:
        properties["applicationGatewayBackendAddressPools"] = gateway
    return properties
