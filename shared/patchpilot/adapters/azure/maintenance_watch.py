"""Platform maintenance Azure has planned for the fleet's machines (`ports.MaintenanceSource`),
from Resource Graph; `AzureFleet.upcoming_maintenance` delegates here.

Two tables, each read on its own (one failing is a `WatchResult.unavailable` entry; the other is
still read):

- `maintenanceresources`, rows of type `microsoft.maintenance/updates`: the Maintenance RP's
  pending updates of a resource. Per the Service Health sample queries (MicrosoftDocs azure-docs
  service-health/resource-graph-impacted-samples.md) a row's `name` is the resource's id and
  `properties.value[]` lists its updates; an update has the Maintenance RP `Update` fields
  (azure-mgmt-maintenance `Update`: maintenanceScope, impactType None|Freeze|Restart|Redeploy,
  status Pending|InProgress|Completed|RetryNow|RetryLater, impactDurationInSec, notBefore
  ("when Azure will start force updates"), properties.resourceId) and, in those samples,
  notificationId (the Service Health tracking id), endTimeUtc and
  properties.plannedMaintenanceStatus (NoUpdatesPending among its values). Every status but
  Completed, NoUpdatesPending and Cancelled is reported: an unknown one is never taken for done. One query over the
  subscriptions (rows exist only for resources with maintenance), matched to the fleet here.
  Restart and Redeploy mean downtime; a Freeze (seconds, memory preserved) does not.
- `servicehealthresources`: active `microsoft.resourcehealth/events` with EventType
  PlannedMaintenance (TrackingId, Title, Summary, ImpactStartTime, ImpactMitigationTime, the
  spellings of the Service Health sample queries), then their
  `microsoft.resourcehealth/events/impactedresources` (properties.targetResourceId): two queries,
  the second only when there is an event. Service Health lists compute resources as impacted for
  reboot-ful maintenance (impacted-resources-planned-maintenance.md), so such a VM expects downtime.

An impacted VM that the Maintenance RP also lists under the event's tracking id is reported
once, from the Maintenance RP (it knows the impact), with the event's title and window.
Not checked against a live tenant: the row id layout of `microsoft.maintenance/updates`, and
whether impacted resources carry per-resource times (the event's window is used). What no published
source shows is read as unknown (docs/fidelity.md): an update without a known impactType is
reported with downtime assumed, and an impacted resource without targetResourceId is matched by
its resourceName, resourceGroup and targetResourceType.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from azure.core.exceptions import HttpResponseError

from patchpilot.inventory import Instance
from patchpilot.maintenance.model import MaintenanceItem, WatchResult
from patchpilot.policy.model import Policy

from .access import AzureAccess, at, describe_error, items, parse_machine, parse_time, text
from .graph import kql_list, query

UPDATES_SOURCE = "Azure Resource Graph maintenanceresources (Maintenance RP updates)"
EVENTS_SOURCE = "Azure Resource Graph servicehealthresources (planned maintenance)"
CLOSED_STATUSES = frozenset({"completed", "noupdatespending", "cancelled"})  # anything else is reported
DOWNTIME_IMPACTS = frozenset({"restart", "redeploy"})
KNOWN_IMPACTS = frozenset({"none", "freeze", "restart", "redeploy"})  # the Maintenance RP's ImpactType

UPDATES_QUERY = "\n".join(
    [
        "maintenanceresources",
        "| where type =~ 'microsoft.maintenance/updates'",
        "| project id, name, subscriptionId, properties",
    ]
)
EVENTS_QUERY = "\n".join(
    [
        "servicehealthresources",
        "| where type =~ 'microsoft.resourcehealth/events'",
        "| where tostring(properties.EventType) =~ 'PlannedMaintenance'",
        "| where tostring(properties.Status) =~ 'Active'",
        "| project id, name, subscriptionId, properties",
    ]
)


def impacted_query(event_keys: Sequence[str]) -> str:
    """The impacted resources of these events (lower-case event ids)."""
    return "\n".join(
        [
            "servicehealthresources",
            "| where type =~ 'microsoft.resourcehealth/events/impactedresources'",
            "| extend event = tostring(split(tolower(id), '/impactedresources/')[0])",
            f"| where event in {kql_list(event_keys)}",
            "| project id, event, subscriptionId, properties",
        ]
    )


def upcoming_maintenance(
    access: AzureAccess, policy: Policy, instances: Sequence[Instance], now: datetime
) -> WatchResult:
    """Maintenance not ended by `now` on these instances (Azure VMs and Arc servers)."""
    fleet_machines: dict[str, Instance] = {}
    for instance in instances:
        machine = parse_machine(instance.id)
        if machine is not None:
            fleet_machines.setdefault(machine.key, instance)
    if not fleet_machines:
        return WatchResult()
    subscriptions = sorted(
        {s for s in (policy.azure.subscriptions if policy.azure else [])}
        | {i.account or i.id.split("/")[2] for i in fleet_machines.values()},
        key=str.lower,
    )
    graph = access.graph()
    unavailable: list[tuple[str, str]] = []

    def read(source: str, how: Callable[[], list[MaintenanceItem]]) -> list[MaintenanceItem]:
        try:
            return how()
        except HttpResponseError as exc:
            unavailable.append((source, describe_error(exc)))
            return []

    updates = read(UPDATES_SOURCE, lambda: _updates(query(graph, UPDATES_QUERY, subscriptions), fleet_machines, now))
    events = read(EVENTS_SOURCE, lambda: _planned(graph, subscriptions, fleet_machines, now))
    merged = _merged(updates, events)
    merged.sort(key=lambda i: (i.due_at or now, i.resource_id.lower(), i.id))
    return WatchResult(items=tuple(merged), unavailable=tuple(unavailable))


# ---------------------------------------------------------------- Maintenance RP updates


def _updates(rows: Sequence[Any], fleet: Mapping[str, Instance], now: datetime) -> list[MaintenanceItem]:
    found: list[MaintenanceItem] = []
    for row in rows:
        properties = at(row, "properties")
        entries = items(properties, "value") or ([properties] if isinstance(properties, Mapping) else [])
        for entry in entries:
            target = _target(row, entry)
            instance = fleet.get(target)
            if instance is None:
                continue
            status = text(entry, "status") or text(entry, "properties", "plannedMaintenanceStatus")
            if status.lower() in CLOSED_STATUSES:
                continue
            ends = parse_time(at(entry, "endTimeUtc"))
            if ends is not None and ends <= now:
                continue
            found.append(_update_item(instance, row, entry, status, ends))
    return found


def _target(row: Any, entry: Any) -> str:
    """The resource an update concerns (lower case): its resourceId, the row's name, or the id
    the row hangs under."""
    for candidate in (text(entry, "properties", "resourceId"), text(entry, "resourceId"), text(row, "name")):
        if candidate.lower().startswith("/subscriptions/"):
            return candidate.lower().rstrip("/")
    return text(row, "id").lower().split("/providers/microsoft.maintenance/", 1)[0]


def _update_item(instance: Instance, row: Any, entry: Any, status: str, ends: datetime | None) -> MaintenanceItem:
    # An update whose impact is missing or unknown is never read as "None": downtime is assumed.
    reported = text(entry, "impactType")
    impact = reported or "impact not reported"
    known = reported.lower() in KNOWN_IMPACTS
    scope = text(entry, "maintenanceScope") or "platform"
    seconds = at(entry, "impactDurationInSec")
    notification = text(entry, "notificationId") or text(entry, "properties", "plannedMaintenanceId")
    deadline = parse_time(at(entry, "notBefore"))
    duration = ""
    if isinstance(seconds, int | float) and seconds > 0:
        duration = f" of about {int(seconds)} s" if seconds < 120 else f" of about {round(seconds / 60)} min"
    description = f"{scope} maintenance: {impact.lower()}{duration}, {status or 'status not reported'}"
    if deadline is not None:
        description += f"; Azure applies it from {deadline:%Y-%m-%d %H:%M} UTC unless done in a maintenance window"
    if notification:
        description += f" (Service Health {notification})"
    warning = ""
    if reported.lower() == "redeploy":
        warning = "redeploy: the VM moves to another host and loses its temporary disk"
    elif not known:
        warning = f"Azure reported no known impact ({reported or 'none'}): downtime assumed"
    return MaintenanceItem(
        id=f"azure:update:{notification or scope.lower()}:{instance.id.lower()}",
        source="azure",
        cloud="azure",
        resource_id=instance.id,
        resource_name=instance.short_name,
        kind=impact,
        description=description,
        ends_at=ends,
        deadline=deadline,
        downtime=impact.lower() in DOWNTIME_IMPACTS or not known,
        warning=warning,
        instance_id=instance.id,
        region=instance.region,
        account=text(row, "subscriptionId") or instance.account,
    )


# ---------------------------------------------------------------- Service Health planned maintenance


def _planned(
    graph: Any, subscriptions: Sequence[str], fleet: Mapping[str, Instance], now: datetime
) -> list[MaintenanceItem]:
    events: dict[str, Any] = {}
    for row in query(graph, EVENTS_QUERY, subscriptions):
        ends = parse_time(_field(at(row, "properties"), "ImpactMitigationTime"))
        if ends is None or ends > now:
            events[text(row, "id").lower()] = row
    if not events:
        return []
    found: list[MaintenanceItem] = []
    for row in query(graph, impacted_query(sorted(events)), subscriptions):
        target = _impacted_target(row)
        instance = fleet.get(target)
        event = events.get(text(row, "event"))
        if instance is None or event is None:
            continue
        found.append(_event_item(instance, event))
    return found


def _impacted_target(row: Any) -> str:
    """The impacted resource's id (lower case): properties.targetResourceId, or, where a row lacks
    it, the id its resourceName, resourceGroup and targetResourceType make (the columns Microsoft's
    impacted-resources sample queries read) in the row's subscription; "" when neither is there."""
    properties = at(row, "properties")
    target = _field(properties, "targetResourceId")
    if isinstance(target, str) and target.strip():
        return target.lower().rstrip("/")
    values = [_field(properties, k) for k in ("resourceName", "resourceGroup", "targetResourceType")]
    name, group, kind = (v if isinstance(v, str) else "" for v in values)
    subscription = text(row, "subscriptionId")
    if subscription and name and group and "/" not in name + group and kind.count("/") == 1:
        return f"/subscriptions/{subscription}/resourcegroups/{group}/providers/{kind}/{name}".lower()
    return ""


def _event_item(instance: Instance, event: Any) -> MaintenanceItem:
    properties = at(event, "properties")
    tracking = str(_field(properties, "TrackingId") or text(event, "name"))
    title = str(_field(properties, "Title") or "planned maintenance")
    summary = str(_field(properties, "Summary") or "")
    description = title + (f": {_plain(summary)[:300]}" if summary else "")
    return MaintenanceItem(
        id=f"azure:event:{tracking}:{instance.id.lower()}",
        source="azure",
        cloud="azure",
        resource_id=instance.id,
        resource_name=instance.short_name,
        kind="PlannedMaintenance",
        description=description,
        starts_at=parse_time(_field(properties, "ImpactStartTime")),
        ends_at=parse_time(_field(properties, "ImpactMitigationTime")),
        downtime=True,  # Service Health lists VMs as impacted for reboot-ful maintenance
        instance_id=instance.id,
        region=instance.region,
        account=text(event, "subscriptionId") or instance.account,
    )


def _merged(updates: list[MaintenanceItem], events: list[MaintenanceItem]) -> list[MaintenanceItem]:
    """Updates and events together; an event's VM that an update under its tracking id covers is
    reported once, as the update, with the event's title and window."""
    by_key = {(u.id.split(":")[2].lower(), u.resource_id.lower()): n for n, u in enumerate(updates)}
    merged = list(updates)
    for event in events:
        key = (event.id.split(":")[2].lower(), event.resource_id.lower())
        if key not in by_key:
            merged.append(event)
            continue
        update = merged[by_key[key]]
        merged[by_key[key]] = dataclasses.replace(
            update,
            description=f"{event.description} — {update.description}",
            starts_at=update.starts_at or event.starts_at,
            ends_at=update.ends_at or event.ends_at,
        )
    return merged


def _field(properties: Any, name: str) -> Any:
    """A property in either case (Service Health writes PascalCase, other tables camelCase)."""
    if not isinstance(properties, Mapping):
        return None
    if name in properties:
        return properties[name]
    wanted = name.lower()
    return next((v for k, v in properties.items() if str(k).lower() == wanted), None)


def _plain(summary: str) -> str:
    """A Service Health summary (HTML) as one line of text."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", summary)).strip()
