"""Azure Update Manager on the fake ARM (tests/fake_arm.py), behind the real SDK clients.

What it models, with the status codes of the REST spec per operation:
- maintenance configurations: PUT (200, 201 when new), GET, LIST per resource group, DELETE
  (200 with the body, 204 when absent). A PUT is checked the way the service documents it:
  InGuestPatch needs extensionProperties.InGuestPatchMode, a window of 01:30-03:55, a Windows
  time-zone name, a "YYYY-MM-DD hh:mm" start (not before today when created), a recurEvery of the
  documented grammar (a bare "Month" fails, as terraform-provider-azurerm#29738 shows), and known
  classifications.
- configuration assignments at a subscription and a resource group (dynamic scopes, with a
  filter) and on a VM or Arc server (static; the machine must exist): PUT (200/201), GET, DELETE.
- applyUpdates: a run made by `schedule_run`, read with GET and cancelled with PUT
  {"properties": {"status": "Cancel"}} until its cut-off (10 minutes before the start).
- VM PATCH of patch settings with Compute's rules for Windows: AutomaticByOS needs
  enableAutomaticUpdates true, Manual needs it false; Linux has ImageDefault and AutomaticByPlatform;
  enableHotpatching needs AutomaticByPlatform (the spec's PatchSettings.enableHotpatching).
- Resource Graph tables `resources` (VMs and Arc servers as ARM documents) and
  `maintenanceresources` (assignments and per-machine run records), answered by
  fake_resource_graph's KQL evaluator.

Modelling choices that no document states (kept here so no test is mistaken for the service):
- deleting a configuration that still has assignments is refused with 409;
- `recurEvery` with "Offset+N" is refused: the spec only ever shows "Offset3" / "Offset-3";
- a refused cancel answers 400 "MaintenanceRunNotCancellable";
- Resource Graph lists dynamic scopes in `maintenanceresources` only with `graph_lists_dynamic_scopes`;
- bypassPlatformSafetyChecksOnUserSchedule true on a hotpatch-enabled VM is refused with 400
  (issue 16: Azure rejects it with hotpatch; the spec itself states no such rule).

VM documents keep the standard ARM shape (`vm_document`), so a Compute fake can share them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from azure_vocabulary import LINUX_CLASSIFICATIONS, REBOOT_SETTINGS, WINDOWS_CLASSIFICATIONS
from fake_arm import ArmError, FakeArm, Request, Response
from fake_resource_graph import run_kql
from tzlocal.windows_tz import win_tz

MC = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Maintenance/maintenanceConfigurations/[^/]+"
MC_LIST = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Maintenance/maintenanceConfigurations"
ASSIGNMENT = r"/subscriptions/.+/providers/Microsoft\.Maintenance/configurationAssignments/[^/]+"
VM = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/virtualMachines/[^/]+"
RUN = MC + r"/providers/Microsoft\.Maintenance/applyUpdates/[^/]+"
ASSIGNMENT_TYPE = "Microsoft.Maintenance/configurationAssignments"
VM_TYPE = "Microsoft.Compute/virtualMachines"
ARC_TYPE = "Microsoft.HybridCompute/machines"
_DAY = r"(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
RECUR_EVERY = re.compile(
    rf"^(\d*(Day|Days)|\d*(Week|Weeks)( {_DAY}(,{_DAY})*)?"
    rf"|\d*(Month|Months) (day-?\d+(,day-?\d+)*|(First|Second|Third|Fourth|Last) {_DAY}( Offset-?[0-6])?))$"
)


def vm_document(
    subscription: str,
    resource_group: str,
    name: str,
    *,
    os: str = "linux",
    location: str = "japaneast",
    tags: dict[str, str] | None = None,
    zone: str | None = "1",
    patch_mode: str | None = None,
    bypass: bool | None = None,
    assessment_mode: str | None = None,
    enable_automatic_updates: bool = True,
    hotpatch: bool | None = None,
) -> dict[str, Any]:
    """An Azure VM as ARM returns it. Unset patch settings are left out, as on a VM made without them."""
    group = f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
    vm_id = f"{group}/providers/Microsoft.Compute/virtualMachines/{name}"
    patch: dict[str, Any] = {}
    if patch_mode is not None:
        patch["patchMode"] = patch_mode
    if assessment_mode is not None:
        patch["assessmentMode"] = assessment_mode
    if bypass is not None:
        patch["automaticByPlatformSettings"] = {"bypassPlatformSafetyChecksOnUserSchedule": bypass}
    if hotpatch is not None:
        patch["enableHotpatching"] = hotpatch
    if os == "windows":
        config: dict[str, Any] = {
            "windowsConfiguration": {"provisionVMAgent": True, "enableAutomaticUpdates": enable_automatic_updates}
        }
        key = "windowsConfiguration"
    else:
        config = {"linuxConfiguration": {"provisionVMAgent": True, "disablePasswordAuthentication": True}}
        key = "linuxConfiguration"
    if patch:
        config[key]["patchSettings"] = patch
    document: dict[str, Any] = {
        "id": vm_id,
        "name": name,
        "type": VM_TYPE,
        "location": location,
        "tags": dict(tags or {}),
        "properties": {
            "vmId": str(uuid5(NAMESPACE_URL, vm_id)),
            "provisioningState": "Succeeded",
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "storageProfile": {
                "osDisk": {
                    "osType": "Windows" if os == "windows" else "Linux",
                    "name": f"{name}_OsDisk_1",
                    "createOption": "FromImage",
                    "managedDisk": {"id": f"{group}/providers/Microsoft.Compute/disks/{name}_OsDisk_1"},
                }
            },
            "osProfile": {"computerName": name, "adminUsername": "azureuser", **config},
        },
    }
    if zone is not None:
        document["zones"] = [zone]
    return document


def arc_document(
    subscription: str,
    resource_group: str,
    name: str,
    *,
    os: str = "linux",
    location: str = "japaneast",
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An Arc-enabled server as ARM returns it."""
    group = f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
    arc_id = f"{group}/providers/Microsoft.HybridCompute/machines/{name}"
    config = "windowsConfiguration" if os == "windows" else "linuxConfiguration"
    return {
        "id": arc_id,
        "name": name,
        "type": ARC_TYPE,
        "location": location,
        "tags": dict(tags or {}),
        "properties": {
            "provisioningState": "Succeeded",
            "status": "Connected",
            "osType": os,
            "osProfile": {config: {"patchSettings": {"assessmentMode": "ImageDefault", "patchMode": "AutomaticByOS"}}},
        },
    }


class FakeMaintenance:
    """Update Manager and VM patch settings on `arm`. `runs` holds the applyUpdates runs."""

    def __init__(self, arm: FakeArm, *, graph_lists_dynamic_scopes: bool = False) -> None:
        self.arm = arm
        self.graph_lists_dynamic_scopes = graph_lists_dynamic_scopes
        self.runs: dict[str, dict[str, Any]] = {}  # lower-case id -> the run's document
        self.run_machines: dict[str, list[str]] = {}
        arm.on("PUT", MC, self._put_configuration)
        arm.on("GET", MC_LIST, self._list_configurations)
        arm.on("DELETE", MC, self._delete_configuration)
        arm.on("PUT", ASSIGNMENT, self._put_assignment)
        arm.on("DELETE", ASSIGNMENT, self._delete_assignment)
        arm.on("PATCH", VM, self._patch_vm)
        arm.on("GET", RUN, self._get_run)
        arm.on("PUT", RUN, self._put_run)
        arm.table("resources", self._resources)
        arm.table("maintenanceresources", self._maintenance_resources)

    # ------------------------------------------------------------ for tests

    def add(self, document: dict[str, Any]) -> dict[str, Any]:
        return self.arm.add(copy.deepcopy(document))

    def configurations(self) -> list[dict[str, Any]]:
        return list(self.arm.find("Microsoft.Maintenance/maintenanceConfigurations"))

    def assignments(self) -> list[dict[str, Any]]:
        return list(self.arm.find(ASSIGNMENT_TYPE))

    def schedule_run(
        self, configuration_id: str, start: datetime, machines: Iterable[str], *, status: str = "Pending"
    ) -> str:
        """A run of `configuration_id` starting at `start`, with a record per machine; its correlation id."""
        run_id = f"{configuration_id}/providers/Microsoft.Maintenance/applyUpdates/{start:%Y%m%d%H%M%S}"
        self.runs[run_id.lower()] = {
            "id": run_id,
            "name": f"{start:%Y%m%d%H%M%S}",
            "type": "Microsoft.Maintenance/applyUpdates",
            "properties": {"status": status, "resourceId": configuration_id, "startDateTime": start.isoformat()},
            "_start": start,
        }
        self.run_machines[run_id.lower()] = list(machines)
        return run_id

    def run_status(self, run_id: str) -> str:
        return str(self.runs[run_id.lower()]["properties"]["status"])

    # ------------------------------------------------------------ maintenance configurations

    def _put_configuration(self, request: Request) -> Response:
        body = copy.deepcopy(request.body or {})
        existed = request.path.lower() in self.arm.resources
        _check_configuration(body, created=not existed, today=self.arm.clock.now().date().isoformat())
        body.update(
            id=request.path,
            name=request.path.rsplit("/", 1)[-1],
            type="Microsoft.Maintenance/maintenanceConfigurations",
            systemData={"createdBy": "patchpilot", "lastModifiedAt": self.arm.clock.now().isoformat()},
        )
        body.setdefault("properties", {}).setdefault("namespace", "Microsoft.Maintenance")
        self.arm.add(body)
        return Response(200 if existed else 201, body)

    def _list_configurations(self, request: Request) -> Response:
        prefix = request.path.lower() + "/"
        found = [
            r for key, r in self.arm.resources.items() if key.startswith(prefix) and key.count("/") == prefix.count("/")
        ]
        return Response(200, {"value": found})

    def _delete_configuration(self, request: Request) -> Response:
        key = request.path.lower()
        if key not in self.arm.resources:
            return Response(204)
        users = [a["id"] for a in self.assignments() if a["properties"]["maintenanceConfigurationId"].lower() == key]
        if users:
            raise ArmError(409, "Conflict", f"the maintenance configuration is still assigned: {', '.join(users)}")
        return Response(200, self.arm.resources.pop(key))

    # ------------------------------------------------------------ configuration assignments

    def _put_assignment(self, request: Request) -> Response:
        body = copy.deepcopy(request.body or {})
        properties = body.setdefault("properties", {})
        configuration = str(properties.get("maintenanceConfigurationId") or "")
        if configuration.lower() not in self.arm.resources:
            raise ArmError(404, "ResourceNotFound", f"The maintenance configuration '{configuration}' was not found.")
        scope = re.split(r"/providers/Microsoft\.Maintenance/configurationAssignments/", request.path, flags=re.I)[0]
        dynamic = re.fullmatch(r"/subscriptions/[^/]+(/resourceGroups/[^/]+)?", scope, flags=re.IGNORECASE)
        if dynamic:
            if not isinstance(properties.get("filter"), dict):
                raise ArmError(400, "InvalidParameter", "a dynamic scope needs properties.filter")
        else:
            self.arm.get(scope)  # the machine must exist: 404 otherwise
            properties["resourceId"] = scope
        existed = request.path.lower() in self.arm.resources
        body.update(id=request.path, name=request.path.rsplit("/", 1)[-1], type=ASSIGNMENT_TYPE)
        self.arm.add(body)
        return Response(200 if existed else 201, body)

    def _delete_assignment(self, request: Request) -> Response:
        found = self.arm.resources.pop(request.path.lower(), None)
        return Response(200, found) if found is not None else Response(204)

    # ------------------------------------------------------------ VM patch settings

    def _patch_vm(self, request: Request) -> Response:
        vm = self.arm.get(request.path)
        merged = copy.deepcopy(vm)
        _merge(merged, copy.deepcopy(request.body or {}))
        _check_patch_settings(merged)
        self.arm.add(merged)
        return Response(200, merged)

    # ------------------------------------------------------------ maintenance runs

    def _run(self, request: Request) -> dict[str, Any]:
        try:
            return self.runs[request.path.lower()]
        except KeyError:
            raise ArmError(404, "ResourceNotFound", f"The maintenance run '{request.path}' was not found.") from None

    def _get_run(self, request: Request) -> Response:
        return Response(200, _public(self._run(request)))

    def _put_run(self, request: Request) -> Response:
        run = self._run(request)
        properties = (request.body or {}).get("properties") or {}
        wanted = next((v for k, v in properties.items() if k.lower() == "status"), None)
        # "Cancel", or 6 (its place in UpdateStatus) as the official example sends `{"Status": 6}`
        if wanted not in ("Cancel", 6) or request.query.get("api-version") != "2023-09-01-preview":
            raise ArmError(400, "InvalidParameter", "only status Cancel, at api-version 2023-09-01-preview")
        status = run["properties"]["status"]
        if status in ("Cancel", "Cancelled"):
            return Response(200, _public(run))
        if status != "Pending" or self.arm.clock.now() > run["_start"] - timedelta(minutes=10):
            raise ArmError(
                400, "MaintenanceRunNotCancellable", "The maintenance run is past its cancellation cut-off time."
            )
        run["properties"]["status"] = "Cancelled"
        answer = _public(run)
        answer["properties"] = {**answer["properties"], "status": "Cancel"}
        return Response(202, answer)  # as the official example answers a cancel

    # ------------------------------------------------------------ Resource Graph

    def _resources(self, text: str, subscriptions: list[str] | None) -> list[dict[str, Any]]:
        rows = []
        for document in self.arm.resources.values():
            if document.get("type", "").lower() not in (VM_TYPE.lower(), ARC_TYPE.lower()):
                continue
            rows.append(
                {
                    **copy.deepcopy(document),
                    "type": document["type"].lower(),  # Resource Graph lower-cases types
                    "subscriptionId": _part(document["id"], "subscriptions"),
                    "resourceGroup": _part(document["id"], "resourceGroups"),
                    "tags": document.get("tags") or {},
                }
            )
        return run_kql(text, _in_subscriptions(rows, subscriptions))

    def _maintenance_resources(self, text: str, subscriptions: list[str] | None) -> list[dict[str, Any]]:
        rows = []
        for assignment in self.assignments():
            dynamic = "resourceId" not in assignment["properties"]
            if dynamic and not self.graph_lists_dynamic_scopes:
                continue
            rows.append(
                {
                    **copy.deepcopy(assignment),
                    "type": ASSIGNMENT_TYPE.lower(),
                    "subscriptionId": _part(assignment["id"], "subscriptions"),
                }
            )
        for key, run in self.runs.items():
            for machine in self.run_machines[key]:
                rows.append(
                    {
                        "id": f"{machine}/providers/microsoft.maintenance/applyupdates/{run['name']}",
                        "name": run["name"],
                        "type": "microsoft.maintenance/applyupdates",
                        "subscriptionId": _part(machine, "subscriptions"),
                        "properties": {
                            "correlationId": run["id"],
                            "resourceId": machine,
                            "status": "Pending" if run["properties"]["status"] == "Pending" else "Completed",
                            "maintenanceScope": "InGuestPatch",
                        },
                    }
                )
        return run_kql(text, _in_subscriptions(rows, subscriptions))


# ---------------------------------------------------------------- the service's rules


def _check_configuration(body: dict[str, Any], *, created: bool, today: str) -> None:
    properties = body.get("properties") or {}
    if properties.get("maintenanceScope") != "InGuestPatch":
        return  # other scopes are not modelled
    if not (properties.get("extensionProperties") or {}).get("InGuestPatchMode"):
        raise ArmError(400, "InvalidParameter", "Extension properties must contain Patch mode")
    window = properties.get("maintenanceWindow") or {}
    duration = str(window.get("duration") or "")
    if not re.fullmatch(r"\d\d:\d\d", duration) or not "01:30" <= duration <= "03:55":
        raise ArmError(400, "InvalidParameter", f"duration must be between 01:30 and 03:55, got {duration!r}")
    if window.get("timeZone") not in win_tz:
        raise ArmError(400, "InvalidParameter", f"unknown time zone {window.get('timeZone')!r}")
    start = str(window.get("startDateTime") or "")
    if not re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", start):
        raise ArmError(400, "InvalidParameter", f"startDateTime must be 'YYYY-MM-DD hh:mm', got {start!r}")
    if created and start[:10] < today:
        raise ArmError(400, "InvalidParameter", "The start date can be set to either the current date or future date.")
    recur = str(window.get("recurEvery") or "")
    if re.fullmatch(r"\d*Months?", recur):
        raise ArmError(400, "InvalidParameter", "Monthly maintenance window is missing day of month or week of month")
    if not RECUR_EVERY.match(recur):
        raise ArmError(400, "InvalidParameter", f"invalid recurEvery {recur!r}")
    install = properties.get("installPatches") or {}
    if install.get("rebootSetting") not in REBOOT_SETTINGS:
        raise ArmError(400, "InvalidParameter", f"invalid rebootSetting {install.get('rebootSetting')!r}")
    for key, allowed in (("windowsParameters", WINDOWS_CLASSIFICATIONS), ("linuxParameters", LINUX_CLASSIFICATIONS)):
        wrong = set((install.get(key) or {}).get("classificationsToInclude") or []) - allowed
        if wrong:
            raise ArmError(400, "InvalidParameter", f"{key}: unknown classifications {sorted(wrong)}")


def _check_patch_settings(vm: dict[str, Any]) -> None:
    profile = vm["properties"].get("osProfile") or {}
    windows = profile.get("windowsConfiguration")
    config = windows if windows is not None else profile.get("linuxConfiguration") or {}
    patch = config.get("patchSettings") or {}
    mode = patch.get("patchMode")
    bypass = (patch.get("automaticByPlatformSettings") or {}).get("bypassPlatformSafetyChecksOnUserSchedule")
    if windows is not None:
        auto = windows.get("enableAutomaticUpdates", True)
        if mode not in (None, "AutomaticByOS", "Manual", "AutomaticByPlatform"):
            raise ArmError(400, "InvalidParameter", f"patchMode {mode} is not a Windows patch mode")
        if (mode == "AutomaticByOS" and not auto) or (mode == "Manual" and auto):
            raise ArmError(
                400,
                "InvalidParameter",
                f"patchMode {mode} needs enableAutomaticUpdates {not auto}: switching between AutomaticByOS and "
                "Manual is not supported",
            )
    elif mode not in (None, "ImageDefault", "AutomaticByPlatform"):
        raise ArmError(400, "InvalidParameter", f"patchMode {mode} is not a Linux patch mode")
    if bypass and mode != "AutomaticByPlatform":
        raise ArmError(
            400, "InvalidParameter", "bypassPlatformSafetyChecksOnUserSchedule needs patchMode AutomaticByPlatform"
        )
    if patch.get("enableHotpatching") and mode != "AutomaticByPlatform":
        raise ArmError(400, "InvalidParameter", "enableHotpatching needs patchMode AutomaticByPlatform")
    if patch.get("enableHotpatching") and bypass:
        raise ArmError(
            400, "InvalidParameter", "bypassPlatformSafetyChecksOnUserSchedule is not supported with enableHotpatching"
        )


# ---------------------------------------------------------------- helpers


def _in_subscriptions(rows: list[dict[str, Any]], subscriptions: list[str] | None) -> list[dict[str, Any]]:
    if not subscriptions:
        return rows
    wanted = {s.lower() for s in subscriptions}
    return [r for r in rows if str(r.get("subscriptionId", "")).lower() in wanted]


def _part(resource_id: str, key: str) -> str:
    parts = resource_id.strip("/").split("/")
    lowered = [p.lower() for p in parts]
    return parts[lowered.index(key.lower()) + 1] if key.lower() in lowered else ""


def _public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in run.items() if not k.startswith("_")}


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch, as ARM applies a PATCH."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = value
