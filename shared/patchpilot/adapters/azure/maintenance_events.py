"""Azure Update Manager maintenance runs: their pre/post events, machines and cancellation.

- `parse_maintenance_event(s)`: Event Grid's `Microsoft.Maintenance.PreMaintenanceEvent` and
  `PostMaintenanceEvent`, in the Event Grid schema or CloudEvents 1.0, into `MaintenanceEvent`.
  Keys are read ignoring case: Microsoft's own samples write `correlationId` and `CorrelationId`.
  Other event types come back as `NotMaintenanceEvent`; a malformed one raises InputError naming
  every bad field.
- `machines_in_run`: the machines of a run, from Resource Graph (`maintenanceresources`).
- `cancel_maintenance_run`: cancel a run before its cut-off. azure-mgmt-maintenance 2.1.0 has no
  method for it, so the documented PUT goes through the SDK client's own pipeline
  (authentication, retries) at api-version 2023-09-01-preview.

Event Grid delivers at least once: everything here may run twice for one event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from patchpilot.adapters.azure.graph import kql_string, query
from patchpilot.engine.messages import CancelCloudScheduledRun, Outcome
from patchpilot.errors import InputError, Path, Problem, quote

if TYPE_CHECKING:
    from patchpilot.adapters.azure.clients import AzureClients

PRE_EVENT = "Microsoft.Maintenance.PreMaintenanceEvent"
POST_EVENT = "Microsoft.Maintenance.PostMaintenanceEvent"
CANCEL_API_VERSION = "2023-09-01-preview"  # the first with the Cancel status; 2.1.0 speaks 2023-04-01
CANCEL_LEAD = timedelta(minutes=10)  # "cancel at least 10 minutes before the start" when no cut-off is given
STARTED = frozenset({"inprogress", "completed", "retrynow", "retrylater"})
CANCELLED = frozenset({"cancel", "cancelled"})
_RUN_ID = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/[^/]+/providers/Microsoft\.Maintenance"
    r"/maintenanceConfigurations/[^/]+/providers/Microsoft\.Maintenance/applyUpdates/(?P<run>[^/]+)$",
    re.IGNORECASE,
)
_CONFIGURATION_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Maintenance/maintenanceConfigurations/[^/]+$",
    re.IGNORECASE,
)
_MACHINE_TYPES = ("/providers/microsoft.compute/virtualmachines/", "/providers/microsoft.hybridcompute/machines/")


@dataclass(frozen=True)
class MaintenanceEvent:
    kind: Literal["pre", "post"]
    event_id: str
    correlation_id: str  # the run: …/maintenanceConfigurations/{mc}/providers/Microsoft.Maintenance/applyUpdates/{run}
    maintenance_configuration_id: str
    start: datetime
    end: datetime
    cancellation_cut_off: datetime | None  # pre events
    status: str | None  # post events: "Succeeded", ...
    subscription_ids: tuple[str, ...]  # where the run's machines are
    event_time: datetime | None
    schema: Literal["eventgrid", "cloudevents"]

    @property
    def run_name(self) -> str:
        return self.correlation_id.rsplit("/", 1)[-1]

    @property
    def configuration_name(self) -> str:
        return self.maintenance_configuration_id.rsplit("/", 1)[-1]

    @property
    def cancel_by(self) -> datetime:
        """The last moment a cancel can succeed: the cut-off, or 10 minutes before the start."""
        return self.cancellation_cut_off or self.start - CANCEL_LEAD


@dataclass(frozen=True)
class NotMaintenanceEvent:
    """Any other event (a subscription validation, another publisher's): nothing to do."""

    event_type: str
    event_id: str

    @property
    def reason(self) -> str:
        return f"not a maintenance event: {self.event_type or 'no event type'}"


Parsed = MaintenanceEvent | NotMaintenanceEvent


def parse_maintenance_events(raw: object, source: str = "event") -> list[Parsed]:
    """An Event Grid delivery: an array of events (or one event), as JSON text or parsed."""
    value = _loaded(raw, source)
    items = value if isinstance(value, list) else [value]
    return [
        parse_maintenance_event(item, f"{source}[{n}]" if isinstance(value, list) else source)
        for n, item in enumerate(items)
    ]


def parse_maintenance_event(raw: object, source: str = "event") -> Parsed:
    """One event, in either schema, keys in any case."""
    value = _loaded(raw, source)
    if not isinstance(value, Mapping):
        raise InputError.single(source, f"expected an event object, got {type(value).__name__}")
    envelope = _folded(value)
    cloud = "specversion" in envelope
    type_key, time_key = ("type", "time") if cloud else ("eventType", "eventTime")
    event_type = envelope.get(type_key.lower())
    event_id = envelope.get("id")
    if event_type not in (PRE_EVENT, POST_EVENT):
        kind = str(event_type) if isinstance(event_type, str) else ""
        if kind.lower() not in (PRE_EVENT.lower(), POST_EVENT.lower()):
            return NotMaintenanceEvent(kind, str(event_id or ""))
        event_type = PRE_EVENT if kind.lower() == PRE_EVENT.lower() else POST_EVENT
    pre = event_type == PRE_EVENT
    problems: list[Problem] = []
    reader = _Reader(problems)
    if not isinstance(event_id, str) or not event_id.strip():
        problems.append(Problem(("id",), f"expected the event id, got {_shown(event_id)}"))
    data = envelope.get("data")
    if isinstance(data, str):  # some deliveries carry data as JSON text
        try:
            data = json.loads(data)
        except ValueError:
            data = None
    if not isinstance(data, Mapping):
        problems.append(Problem(("data",), f"expected an object with the maintenance run, got {_shown(data)}"))
        raise InputError(source, problems)
    fields = _folded(data)
    correlation_id = reader.text(fields, "correlationId", _RUN_ID, "a maintenance run id (…/applyUpdates/<run>)")
    configuration_id = reader.text(
        fields, "maintenanceConfigurationId", _CONFIGURATION_ID, "a maintenance configuration id"
    )
    start = reader.time(fields, "startDateTime", required=True)
    end = reader.time(fields, "endDateTime", required=True)
    cut_off = reader.time(fields, "cancellationCutOffDateTime", required=False) if pre else None
    status = reader.optional_text(fields, "status") if not pre else None
    subscriptions = reader.strings(fields, "resourceSubscriptionIds")
    event_time = reader.time(envelope, time_key, required=False, where=())
    if start and end and end < start:
        problems.append(
            Problem(("data", "endDateTime"), f"ends ({end.isoformat()}) before it starts ({start.isoformat()})")
        )
    if problems:
        raise InputError(source, problems)
    assert correlation_id and configuration_id and start and end and isinstance(event_id, str)
    return MaintenanceEvent(
        kind="pre" if pre else "post",
        event_id=event_id,
        correlation_id=correlation_id,
        maintenance_configuration_id=configuration_id,
        start=start,
        end=end,
        cancellation_cut_off=cut_off,
        status=status,
        subscription_ids=subscriptions,
        event_time=event_time,
        schema="cloudevents" if cloud else "eventgrid",
    )


def _loaded(raw: object, source: str) -> object:
    if isinstance(raw, bytes | str):
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise InputError.single(source, f"not JSON: {exc}") from None
    return raw


def _folded(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    """Keys lower-cased: `CorrelationId` and `correlationId` are one key (the first one wins)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        out.setdefault(str(key).lower(), value)
    return out


def _shown(value: object) -> str:
    return "nothing" if value is None else quote(value)


class _Reader:
    """Reads `data` fields (lower-cased keys), naming each bad one by its documented name."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems

    def text(self, fields: Mapping[str, Any], name: str, shape: re.Pattern[str], what: str) -> str | None:
        value = fields.get(name.lower())
        if not isinstance(value, str) or not shape.match(value.strip()):
            self.problems.append(Problem(("data", name), f"expected {what}, got {_shown(value)}"))
            return None
        return value.strip()

    def optional_text(self, fields: Mapping[str, Any], name: str) -> str | None:
        value = fields.get(name.lower())
        if value is not None and not isinstance(value, str):
            self.problems.append(Problem(("data", name), f"expected text, got {_shown(value)}"))
            return None
        return value

    def time(self, fields: Mapping[str, Any], name: str, *, required: bool, where: Path = ("data",)) -> datetime | None:
        value = fields.get(name.lower())
        if value is None and not required:
            return None
        try:
            parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None:
            self.problems.append(
                Problem(
                    (*where, name), f'expected an ISO 8601 time such as "2026-12-08T15:00:00Z", got {_shown(value)}'
                )
            )
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # the service writes UTC

    def strings(self, fields: Mapping[str, Any], name: str) -> tuple[str, ...]:
        value = fields.get(name.lower())
        if value is None:
            return ()
        if isinstance(value, str):  # documented as a string, shown as a list
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        self.problems.append(Problem(("data", name), f"expected a list of subscription ids, got {_shown(value)}"))
        return ()


# ---------------------------------------------------------------- a run's machines


@dataclass(frozen=True)
class RunMachine:
    resource_id: str  # the VM's or Arc server's id
    status: str  # its part of the run: Pending, InProgress, Completed, ...


def machines_in_run(clients: AzureClients, correlation_id: str, subscriptions: Sequence[str] = ()) -> list[RunMachine]:
    """The Azure VMs and Arc servers of a maintenance run (Resource Graph keeps a record per
    machine, `properties.correlationId` naming the run). `subscriptions`: the event's
    resourceSubscriptionIds (empty: every subscription the identity can read)."""
    kql = "\n".join(
        [
            "maintenanceresources",
            "| where type =~ 'microsoft.maintenance/applyupdates'",
            f"| where properties.correlationId =~ {kql_string(correlation_id)}",
            "| project id, resourceId = tostring(properties.resourceId), status = tostring(properties.status)",
        ]
    )
    found: dict[str, RunMachine] = {}
    for row in query(clients.graph(), kql, subscriptions):
        record = str(row.get("id", ""))
        resource = str(row.get("resourceId") or "") or record.split("/providers/microsoft.maintenance/", 1)[0]
        if any(kind in resource.lower() for kind in _MACHINE_TYPES):
            found.setdefault(resource.lower(), RunMachine(resource, str(row.get("status") or "")))
    return sorted(found.values(), key=lambda m: m.resource_id.lower())


# ---------------------------------------------------------------- cancelling a run


class MaintenanceRunError(Exception):
    """A run that cannot be cancelled (it started, or its cut-off passed), or a refusal."""


def cancel_maintenance_run(clients: AzureClients, correlation_id: str) -> Literal["cancelled", "already_cancelled"]:
    """Cancel a maintenance run before it starts. Idempotent: a run already cancelled is
    "already_cancelled". A run that has started, or that Update Manager refuses to cancel
    (past its cancellationCutOffDateTime), raises MaintenanceRunError saying why."""
    from azure.core.rest import HttpRequest

    found = _RUN_ID.match(correlation_id.strip())
    if found is None:
        raise ValueError(
            f"not a maintenance run id (…/maintenanceConfigurations/<mc>/providers/Microsoft.Maintenance/"
            f"applyUpdates/<run>): {quote(correlation_id)}"
        )
    run_id = correlation_id.strip()
    pipeline = clients.maintenance(found["subscription"])._client  # 2.1.0 has no public send_request
    url = pipeline.format_url(f"{run_id}?api-version={CANCEL_API_VERSION}")

    def status() -> str | None:
        answer = pipeline.send_request(HttpRequest("GET", url))
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return str(_mapping(answer.json().get("properties")).get("status") or "")

    before = status()
    if before is not None and before.lower() in CANCELLED:
        return "already_cancelled"
    if before is not None and before.lower() in STARTED:
        raise MaintenanceRunError(f"maintenance run {run_id} has already started (status {before}): too late to cancel")
    answer = pipeline.send_request(HttpRequest("PUT", url, json={"properties": {"status": "Cancel"}}))
    if 200 <= answer.status_code < 300:
        return "cancelled"
    after = status()
    if after is not None and after.lower() in CANCELLED:
        return "already_cancelled"  # another delivery of the same event got there first
    error = _mapping(_json(answer).get("error"))
    raise MaintenanceRunError(
        f"Update Manager refused to cancel maintenance run {run_id} (HTTP {answer.status_code}, status "
        f"{after or 'unknown'}): {error.get('code', '')}: {error.get('message', answer.text())}. A run can be "
        "cancelled only until its cancellationCutOffDateTime (about 10 minutes before it starts)"
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _json(answer: Any) -> Mapping[str, Any]:
    try:
        return _mapping(answer.json())
    except ValueError:
        return {}


class UpdateManagerCanceller:
    """The `MaintenanceCanceller` port on Azure: cancels through `cancel_maintenance_run`."""

    def __init__(self, clients: AzureClients) -> None:
        self.clients = clients

    def cancel_maintenance(self, command: CancelCloudScheduledRun) -> Outcome:
        run = command.maintenance_run
        try:
            answer = cancel_maintenance_run(self.clients, run)
        except (MaintenanceRunError, ValueError) as error:
            return Outcome(id=run, ok=False, detail=str(error))
        return Outcome(id=run, ok=True, detail=f"{answer.replace('_', ' ')} ({command.reason})")
