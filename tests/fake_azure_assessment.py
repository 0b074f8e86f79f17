"""Patch assessment and platform maintenance on the fake ARM (tests/fake_arm.py), behind the real
SDK clients; the machines and their available patches are fake_azure_compute's, the KQL subset
fake_resource_graph's.

What it models:
- assessPatches on a VM or an Arc server: POST 202 with fake_arm's long-running operation; 409
  OperationNotAllowed when the VM is not running or the Arc server not Connected. After
  `assess_minutes` the machine's latest assessment lists its available patches: in the instance
  view (patchStatus.availablePatchSummary, InProgress from the POST on) and in Resource Graph's
  `patchassessmentresources`: a summary row `<machine>/patchAssessmentResults/latest` (rebootPending,
  osType, startDateTime, lastModifiedDateTime, startedBy, errorDetails,
  availablePatchCountByClassification, status), replaced by each assessment, and one
  `…/softwarePatches/<patch id>` row per available patch (patchName, kbId, version,
  classifications, msrcSeverity, publishedDateTime, rebootBehavior, lastModifiedDateTime).
  `seed` writes an assessment that happened earlier.
- `maintenanceresources` rows of type `microsoft.maintenance/updates` (`add_update`): one row per
  resource, `name` its id, `properties.value[]` its updates (maintenanceScope, impactType, status,
  impactDurationInSec, notBefore, notificationId, properties.resourceId).
- `servicehealthresources` (`add_planned_event`): `microsoft.resourcehealth/events` (EventType,
  Status, Title, Summary, TrackingId, ImpactStartTime, ImpactMitigationTime) and their
  `…/events/impactedresources` (targetResourceId, targetResourceType, resourceName, targetRegion).
- `fail_table(name)`: that table answers 403 AuthorizationFailed.

Rules invented here, that no document states (so no test is mistaken for the service):
- the summary row's `status` (Succeeded/Failed): query-logs.md does not list it;
- `msrcSeverity` on per-patch rows: public queries of the portal's views read it, query-logs.md
  does not list it;
- a second assessPatches while one runs is refused with 409 Conflict;
- the id of a `microsoft.maintenance/updates` row (`<resource>/providers/Microsoft.Maintenance/
  updates/default`) and `properties.resourceId` inside its entries; the samples only show `name`
  as the resource id and `value[]` with notificationId, status, maintenanceScope;
- the id of an impacted resource row (`<event id>/impactedResources/<n>`);
- rows reach Resource Graph the moment an assessment ends (the service lags by minutes);
  `assessments_indexed = False` hides them.
"""

from __future__ import annotations

import copy
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from fake_arm import ArmError, Request, Response
from fake_azure_compute import ARC, SUB, VM, FakeAzureCompute, MachineState, Patch, iso
from fake_resource_graph import run_kql

EVENT_TYPE = "microsoft.resourcehealth/events"
IMPACTED_TYPE = "microsoft.resourcehealth/events/impactedresources"
UPDATE_TYPE = "microsoft.maintenance/updates"


class FakeAzureAssessment:
    def __init__(self, compute: FakeAzureCompute) -> None:
        self.compute = compute
        self.fake = compute.fake
        self.clock = compute.clock
        self.assessments: dict[str, list[dict[str, Any]]] = {}  # machine id (lower) -> summary, patches
        self.updates: dict[str, dict[str, Any]] = {}  # resource id (lower) -> its maintenanceresources row
        self.health: list[dict[str, Any]] = []  # servicehealthresources rows
        self.assess_requests: Counter[str] = Counter()  # machine id (lower) -> assessPatches accepted
        self.assess_minutes = 3
        self.assessments_indexed = True
        self.failing: set[str] = set()
        self.queries: list[str] = []
        self._running: set[str] = set()
        self.fake.on("POST", VM + r"/assessPatches", self._assess)
        self.fake.on("POST", ARC + r"/assessPatches", self._assess)
        self.fake.table("patchassessmentresources", self._table("patchassessmentresources", self._assessment_rows))
        self.fake.table(
            "maintenanceresources", self._table("maintenanceresources", lambda: list(self.updates.values()))
        )
        self.fake.table("servicehealthresources", self._table("servicehealthresources", lambda: self.health))

    # ------------------------------------------------------------ building the world

    def seed(
        self,
        machine_id: str,
        ended: datetime,
        *,
        patches: list[Patch] | None = None,
        reboot_pending: bool = False,
        error: str = "",
    ) -> None:
        """An assessment that ended at `ended`, listing `patches` (default: the machine's available ones)."""
        machine = self.compute.state(machine_id)
        listed = list(machine.available if patches is None else patches)
        self._record(
            machine_id, machine, ended - timedelta(minutes=self.assess_minutes), ended, listed, reboot_pending, error
        )

    def add_update(
        self,
        resource_id: str,
        *,
        impact: str = "Restart",
        status: str = "Pending",
        not_before: datetime | None = None,
        seconds: int = 600,
        scope: str = "Host",
        notification: str = "",
    ) -> None:
        """A pending Maintenance RP update of a resource."""
        row = self.updates.setdefault(
            resource_id.lower(),
            {
                "id": f"{resource_id}/providers/Microsoft.Maintenance/updates/default",
                "name": resource_id,
                "type": UPDATE_TYPE,
                "subscriptionId": resource_id.split("/")[2],
                "properties": {"value": []},
            },
        )
        entry: dict[str, Any] = {
            "maintenanceScope": scope,
            "impactType": impact,
            "status": status,
            "impactDurationInSec": seconds,
            "properties": {"resourceId": resource_id},
        }
        if not_before is not None:
            entry["notBefore"] = iso(not_before)
        if notification:
            entry["notificationId"] = notification
        row["properties"]["value"].append(entry)

    def add_planned_event(
        self,
        tracking_id: str,
        start: datetime,
        end: datetime,
        impacted: list[str],
        *,
        title: str = "Planned maintenance: Virtual Machines - West Europe",
        status: str = "Active",
        sub: str = SUB,
    ) -> None:
        event_id = f"/subscriptions/{sub}/providers/Microsoft.ResourceHealth/events/{tracking_id}"
        self.health.append(
            {
                "id": event_id,
                "name": tracking_id,
                "type": EVENT_TYPE,
                "subscriptionId": sub,
                "properties": {
                    "EventType": "PlannedMaintenance",
                    "Status": status,
                    "Title": title,
                    "Summary": "<p>Azure will <b>reboot</b> the impacted virtual machines.</p>",
                    "TrackingId": tracking_id,
                    "ImpactStartTime": iso(start),
                    "ImpactMitigationTime": iso(end),
                },
            }
        )
        for n, resource_id in enumerate(impacted):
            parts = resource_id.split("/")
            self.health.append(
                {
                    "id": f"{event_id}/impactedResources/{n}",
                    "name": str(n),
                    "type": IMPACTED_TYPE,
                    "subscriptionId": parts[2],
                    "properties": {
                        "targetResourceId": resource_id,
                        "targetResourceType": "Microsoft.Compute/virtualMachines",
                        "resourceName": parts[-1],
                        "resourceGroup": parts[4],
                        "targetRegion": "westeurope",
                    },
                }
            )

    def fail_table(self, name: str) -> None:
        self.failing.add(name.lower())

    # ------------------------------------------------------------ assessPatches

    def _assess(self, request: Request) -> Response:
        self.compute.tick()
        resource, machine = self.compute._machine(request)
        key = resource["id"].lower()
        if machine.kind == "arc" and machine.arc_status != "Connected":
            raise ArmError(409, "OperationNotAllowed", f"machine is {machine.arc_status}")
        if machine.kind == "vm" and machine.power != "running":
            raise ArmError(409, "OperationNotAllowed", f"VM is {machine.power}")
        if key in self._running:
            raise ArmError(409, "Conflict", "An assessment is already in progress on this machine.")
        self._running.add(key)
        self.assess_requests[key] += 1
        start = self.clock.now()
        machine.last_assessment = {"status": "InProgress", "startTime": iso(start)}

        def finish() -> None:
            self._running.discard(key)
            self._record(resource["id"], machine, start, self.clock.now(), list(machine.available), False, "")

        delay = timedelta(minutes=self.assess_minutes)
        self.compute.at(delay, finish)
        return self.compute._accepted(delay)

    def _record(
        self,
        machine_id: str,
        machine: MachineState,
        start: datetime,
        end: datetime,
        patches: list[Patch],
        reboot_pending: bool,
        error: str,
    ) -> None:
        resource = self.fake.get(machine_id)
        base = f"{resource['id']}/patchAssessmentResults/latest"
        kind = f"{resource['type'].lower()}/patchassessmentresults"
        sub = resource["id"].split("/")[2]
        counts: Counter[str] = Counter(p.classification[:1].lower() + p.classification[1:] for p in patches)
        summary: dict[str, Any] = {
            "id": base,
            "name": f"{len(self.assess_requests):08d}-0000-4000-8000-00000000a55e",
            "type": kind,
            "subscriptionId": sub,
            "properties": {
                "rebootPending": reboot_pending,
                "patchServiceUsed": "WU-WSUS" if machine.os == "Windows" else "APT",
                "osType": machine.os,
                "startDateTime": iso(start),
                "lastModifiedDateTime": iso(end),
                "startedBy": "User",
                "status": "Failed" if error else "Succeeded",
                "errorDetails": {"code": "AssessmentFailed", "message": error} if error else None,
                "availablePatchCountByClassification": dict(counts),
            },
        }
        rows = [summary]
        for patch in [] if error else patches:
            rows.append(
                {
                    "id": f"{base}/softwarePatches/{patch.patch_id}",
                    "name": patch.patch_id,
                    "type": f"{kind}/softwarepatches",
                    "subscriptionId": sub,
                    "properties": {
                        "patchName": patch.name,
                        "kbId": patch.kb,
                        "version": patch.version,
                        "classifications": [patch.classification],
                        "msrcSeverity": patch.severity or None,
                        "publishedDateTime": patch.published or None,
                        "rebootBehavior": "CanRequestReboot" if patch.kb else "NeverReboots",
                        "lastModifiedDateTime": iso(end),
                    },
                }
            )
        self.assessments[resource["id"].lower()] = rows
        machine.last_assessment = {
            "status": "Failed" if error else "Succeeded",
            "startTime": iso(start),
            "lastModifiedTime": iso(end),
            "rebootPending": reboot_pending,
            "criticalAndSecurityPatchCount": sum(p.classification in ("Critical", "Security") for p in patches),
            "otherPatchCount": sum(p.classification not in ("Critical", "Security") for p in patches),
        }

    # ------------------------------------------------------------ Resource Graph

    def _assessment_rows(self) -> list[dict[str, Any]]:
        if not self.assessments_indexed:
            return []
        return [row for rows in self.assessments.values() for row in rows]

    def _table(self, name: str, rows: Any) -> Any:
        def answer(text: str, subscriptions: list[str] | None) -> list[dict[str, Any]]:
            self.compute.tick()
            self.queries.append(text)
            if name in self.failing:
                raise ArmError(403, "AuthorizationFailed", f"The client may not read {name}.")
            found = copy.deepcopy(list(rows()))
            if subscriptions:
                wanted = {s.lower() for s in subscriptions}
                found = [r for r in found if r.get("subscriptionId", "").lower() in wanted]
            return run_kql(text, found)

        return answer


__all__ = ["FakeAzureAssessment"]
