"""Advisory deliveries as they arrive, taken out of their envelopes.

- EventBridge: `aws.inspector2` "Inspector2 Finding", `aws.health` "AWS Health Event", and a
  PatchPilot advisory as "PatchPilot Advisory" from source `patchpilot.advisory` only (`detail` is
  the advisory; another source is refused: the rule and its bus accept only that one).
- Event Grid: a PatchPilot advisory as event type "PatchPilot.Advisory", in the Event Grid schema
  (`eventType`, `data`) or the CloudEvents 1.0 schema (`type`, `data`); a delivery may be a list.
- A bare PatchPilot advisory (`{"cve": ..., "severity": ..., "fixes": [...]}`), for the CLI.

Malformed input raises an InputError naming each bad field by its path in the payload. A fix
that is not a KB number or a package name (a glob, a shell metacharacter: `names.fix_problem`) is
malformed in a PatchPilot advisory, and makes an Inspector finding unactionable, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from patchpilot.advisories.models import Advisory, Delivery, HealthNotice, Unactionable
from patchpilot.advisories.names import fix_problem, is_kb, platform_syntax, quoted
from patchpilot.errors import InputError, Path, Problem, format_path, quote
from patchpilot.inputs import parse_json, problems_from, read_text
from patchpilot.policy.model import ADVISORY_SEVERITIES, AdvisorySeverity

ADVISORY_TYPE = "PatchPilot Advisory"  # EventBridge detail-type
ADVISORY_SOURCE = "patchpilot.advisory"  # its only EventBridge source
ADVISORY_EVENT_TYPE = "PatchPilot.Advisory"  # Event Grid eventType / CloudEvents type
INSPECTOR_FINDING = "Inspector2 Finding"
HEALTH_TYPES = ("AWS Health Event", "AWS Health Abuse Event")
# AWS Health names an affected EC2 instance by id or by ARN (the documented EC2 instance retirement
# sample: arn:aws:ec2:us-east-1:123456789012:instance/i-1234567890abcdef0); PatchPilot matches ids.
EC2_INSTANCE_ARN = re.compile(r"arn:aws[a-z-]*:ec2:[a-z0-9-]*:\d*:instance/(i-[0-9a-f]+)")
VULNERABILITY_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$"  # CVE-2025-0001, GHSA-..., ALAS2-2025-001


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _fix_name(value: str) -> str:
    problem = fix_problem(value)
    if problem is not None:
        raise PydanticCustomError("pp_fix", "{problem}", {"problem": problem})
    return value


FixName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_fix_name)]


class AdvisoryDocument(BaseModel):
    """A PatchPilot advisory: a vulnerability, how bad it is, and the updates that fix it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cve: str = Field(pattern=VULNERABILITY_ID)
    severity: Annotated[AdvisorySeverity, BeforeValidator(_upper)]
    fixes: list[FixName] = Field(min_length=1)  # KB ids and package names
    instances: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)  # empty: fleet-wide
    title: str = ""
    id: str = ""  # the advisory's own id, when the sender gives one


def load_payload(path: str) -> list[Delivery]:
    """Read a payload file (JSON) and take every delivery out of its envelope."""
    return parse_payload(parse_json(read_text(path), path), path)


def parse_payload(raw: Any, source: str = "payload") -> list[Delivery]:
    """One delivery, or a list of them (an Event Grid batch). Every problem of every item is
    reported at once, by its index."""
    if isinstance(raw, list):
        if not raw:
            raise InputError.single(source, "expected at least one event, got an empty list")
        found: list[Delivery] = []
        problems: list[Problem] = []
        for index, item in enumerate(raw):
            try:
                found.append(parse_event(item, source))
            except InputError as exc:
                problems.extend(Problem((index, *p.path), p.message) for p in exc.problems)
        if problems:
            raise InputError(source, problems)
        return found
    return [parse_event(raw, source)]


def parse_event(raw: Any, source: str = "event") -> Delivery:
    if not isinstance(raw, Mapping):
        raise InputError.single(source, f"expected a JSON object, got {_kind(raw)}")
    if "detail-type" in raw:
        return _eventbridge(raw, source)
    if "eventType" in raw or "specversion" in raw:
        return _event_grid(raw, source)
    if "cve" in raw:
        return _advisory(raw, source, (), key="")
    raise InputError.single(
        source,
        "not a supported payload: expected an EventBridge event (detail-type), an Event Grid event "
        "(eventType, or type with specversion) or a PatchPilot advisory (cve)",
    )


# ---------------------------------------------------------------- reading foreign JSON


_EXPECTED: dict[type, str] = {str: "a non-empty string", dict: "an object", list: "a list"}


class _Reader:
    """Reads fields of a foreign payload, noting each missing or mistyped one by its path."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def get(self, data: Mapping[str, Any], path: Path, kind: type, *, required: bool = True) -> Any:
        value: Any = data
        for part in path:
            if isinstance(part, int):
                value = value[part] if isinstance(value, list) and part < len(value) else None
            else:
                value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            if required:
                self.problems.append(Problem(path, "required"))
            return None
        if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
            self.problems.append(Problem(path, f"expected {_EXPECTED[kind]}, got {quote(value)}"))
            return None
        return value

    def text(self, data: Mapping[str, Any], path: Path, *, required: bool = True) -> str:
        value = self.get(data, path, str, required=required)
        return value.strip() if isinstance(value, str) else ""

    def check(self, source: str) -> None:
        if self.problems:
            raise InputError(source, self.problems)


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


def _time(reader: _Reader, raw: Mapping[str, Any], path: Path) -> datetime | None:
    text = reader.text(raw, path, required=False)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        reader.problems.append(Problem(path, f"expected an ISO 8601 time, got {quote(text)}"))
        return None
    if moment.tzinfo is None:
        reader.problems.append(Problem(path, f"expected a time with a zone (Z or +hh:mm), got {quote(text)}"))
        return None
    return moment


# ---------------------------------------------------------------- envelopes


def _eventbridge(raw: Mapping[str, Any], source: str) -> Delivery:
    reader = _Reader()
    detail_type = reader.text(raw, ("detail-type",))
    event_source = reader.text(raw, ("source",))
    event_id = reader.text(raw, ("id",))
    at = _time(reader, raw, ("time",))
    reader.check(source)
    if detail_type == INSPECTOR_FINDING and event_source == "aws.inspector2":
        return _inspector(raw, source, at)
    if detail_type in HEALTH_TYPES and event_source == "aws.health":
        return _health(raw, source)
    if detail_type == ADVISORY_TYPE:
        if event_source != ADVISORY_SOURCE:
            message = f"expected {quote(ADVISORY_SOURCE)} (a {ADVISORY_TYPE}'s only source), got {quote(event_source)}"
            raise InputError(source, [Problem(("source",), message)])
        return _advisory(raw.get("detail"), source, ("detail",), key=event_id, at=at)
    return Unactionable(
        event_source, event_id, f'EventBridge detail-type "{detail_type}" from {event_source}: not handled'
    )


def _event_grid(raw: Mapping[str, Any], source: str) -> Delivery:
    reader = _Reader()
    cloud_events = "specversion" in raw
    type_key, time_key = ("type", "time") if cloud_events else ("eventType", "eventTime")
    event_type = reader.text(raw, (type_key,))
    event_id = reader.text(raw, ("id",))
    at = _time(reader, raw, (time_key,))
    if event_type == ADVISORY_EVENT_TYPE and not isinstance(raw.get("data"), Mapping):
        reader.problems.append(Problem(("data",), f"expected the advisory object, got {_kind(raw.get('data'))}"))
    reader.check(source)
    if event_type != ADVISORY_EVENT_TYPE:
        return Unactionable("event-grid", event_id, f'Event Grid event type "{event_type}": not handled')
    return _advisory(raw.get("data"), source, ("data",), key=event_id, at=at)


def _advisory(data: Any, source: str, prefix: Path, key: str, at: datetime | None = None) -> Advisory:
    if not isinstance(data, Mapping):
        raise InputError(source, [Problem(prefix, f"expected the advisory object, got {_kind(data)}")])
    try:
        document = AdvisoryDocument.model_validate(data)
    except ValidationError as exc:
        raise InputError(source, problems_from(exc, AdvisoryDocument, prefix=prefix)) from None
    fixes = tuple(dict.fromkeys(f.upper() if is_kb(f) else f for f in document.fixes))
    return Advisory(
        source="patchpilot",
        key=document.id or key or f"{document.cve}:{','.join(fixes)}",
        cve=document.cve.upper(),
        severity=document.severity,
        fixes=fixes,
        instances=tuple(dict.fromkeys(document.instances)),
        fleet_wide=not document.instances,
        title=document.title,
        at=at,
    )


# ---------------------------------------------------------------- Amazon Inspector


def _inspector(raw: Mapping[str, Any], source: str, at: datetime | None) -> Delivery:
    reader = _Reader()
    reader.get(raw, ("detail",), dict)
    reader.check(source)
    arn = reader.text(raw, ("detail", "findingArn"))
    status = reader.text(raw, ("detail", "status"))
    finding_type = reader.text(raw, ("detail", "type"))
    severity = reader.text(raw, ("detail", "severity"))
    fix = reader.text(raw, ("detail", "fixAvailable"), required=False) or "NO"
    updated = reader.text(raw, ("detail", "updatedAt"), required=False)
    resources = reader.get(raw, ("detail", "resources"), list)
    reader.check(source)
    key = f"{arn}@{updated}" if updated else arn
    assert isinstance(resources, list)

    def skip(reason: str) -> Unactionable:
        return Unactionable("inspector", key, reason)

    if status != "ACTIVE":
        return skip(f"finding is {status}, not ACTIVE")
    if finding_type != "PACKAGE_VULNERABILITY":
        return skip(f"finding type {finding_type} is not a package vulnerability")
    if fix != "YES":
        return skip(f"fixAvailable is {fix}: no complete fix to install")
    if severity not in ADVISORY_SEVERITIES:
        return skip(f"severity {severity} is not one that starts emergency runs")
    instances: list[str] = []
    others: list[str] = []
    platform = ""
    for index in range(len(resources)):
        kind = reader.text(raw, ("detail", "resources", index, "type"))
        ident = reader.text(raw, ("detail", "resources", index, "id"))
        if kind and ident:
            (instances if kind == "AWS_EC2_INSTANCE" else others).append(ident)
        if kind == "AWS_EC2_INSTANCE" and not platform:
            where = ("detail", "resources", index, "details", "awsEc2Instance", "platform")
            platform = reader.text(raw, where, required=False)
    details = ("detail", "packageVulnerabilityDetails")
    cve = reader.text(raw, (*details, "vulnerabilityId"))
    packages = reader.get(raw, (*details, "vulnerablePackages"), list) or []
    fixes: list[str] = []
    refused: list[str] = []  # names that are not package names: the finding is not acted on
    foreign: list[str] = []  # packages of a language's package manager (npm, pip, jar): not the OS's
    for index in range(len(packages)):
        here: Path = (*details, "vulnerablePackages", index)
        name = reader.text(raw, (*here, "name"))
        fixed = reader.text(raw, (*here, "fixedInVersion"), required=False)
        manager = reader.text(raw, (*here, "packageManager"), required=False) or "OS"
        if not (name and fixed and fixed != "NotAvailable"):
            continue
        if is_kb(fixed):
            fixes.append(fixed.upper())
        elif manager != "OS":
            foreign.append(quoted(f"{name} ({manager})"))
        elif (problem := fix_problem(name, platform_syntax(platform))) is not None:
            refused.append(f"{format_path((*here, 'name'))}: {problem}")
        else:
            fixes.append(name)
    reader.check(source)
    if not re.match(VULNERABILITY_ID, cve):
        raise InputError(source, [Problem((*details, "vulnerabilityId"), f"not a vulnerability id: {quote(cve)}")])
    if refused:
        return skip("; ".join(refused))
    if not instances:
        return skip(f"no EC2 instance among the resources ({', '.join(others) or 'none'})")
    if not fixes and foreign:
        return skip(f"no operating system package to install: {', '.join(foreign)} not installed by patching")
    if not fixes:
        return skip("no vulnerable package names a fixed version")
    return Advisory(
        source="inspector",
        key=key,
        cve=cve.upper(),
        severity=severity,  # one of ADVISORY_SEVERITIES: checked above
        fixes=tuple(dict.fromkeys(fixes)),
        instances=tuple(dict.fromkeys(instances)),
        fleet_wide=True,  # one finding per instance: the others with the package get theirs too
        title=reader.text(raw, ("detail", "title"), required=False),
        at=at,
    )


# ---------------------------------------------------------------- AWS Health


def _health(raw: Mapping[str, Any], source: str) -> Delivery:
    reader = _Reader()
    reader.get(raw, ("detail",), dict)
    reader.check(source)
    arn = reader.text(raw, ("detail", "eventArn"))
    type_code = reader.text(raw, ("detail", "eventTypeCode"))
    category = reader.text(raw, ("detail", "eventTypeCategory"))
    service = reader.text(raw, ("detail", "service"))
    entities = reader.get(raw, ("detail", "affectedEntities"), list, required=False) or []
    affected: list[str] = []
    for index in range(len(entities)):
        if value := reader.text(raw, ("detail", "affectedEntities", index, "entityValue")):
            named = EC2_INSTANCE_ARN.fullmatch(value)
            affected.append(named.group(1) if named else value)
    descriptions = reader.get(raw, ("detail", "eventDescription"), list, required=False) or []
    description = next(
        (
            d.get("latestDescription", "")
            for d in descriptions
            if isinstance(d, Mapping) and d.get("language") == "en_US"
        ),
        "",
    )
    updated = reader.text(raw, ("detail", "lastUpdatedTime"), required=False)
    reader.check(source)
    return HealthNotice(
        key=f"{arn}@{updated}" if updated else arn,
        type_code=type_code,
        category=category,
        status=reader.text(raw, ("detail", "statusCode"), required=False) or "open",
        service=service,
        region=reader.text(raw, ("detail", "eventRegion"), required=False) or str(raw.get("region") or ""),
        start=reader.text(raw, ("detail", "startTime"), required=False),
        end=reader.text(raw, ("detail", "endTime"), required=False),
        affected=tuple(dict.fromkeys(affected)),
        description=description if isinstance(description, str) else "",
    )
