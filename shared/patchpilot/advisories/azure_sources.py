"""Azure's own advisories, read on the timer, as deliveries for `decide_advisory`. Pure.

Two sources (the policy's `emergency.sources`, docs/advisories.md "Azure sources"):

- `defender`: Microsoft Defender for Cloud's vulnerability findings on machines, the
  sub-assessments of "Machines should have vulnerability findings resolved" as Resource Graph's
  `securityresources` holds them (tests/fixtures/defender/ records the row shape and its sources).
  The rows of one CVE on the fleet's machines become one `Advisory` for exactly those machines;
  the same rules as an Inspector finding then apply (`decide_advisory`): the minimum severity,
  a fix named, merged per CVE and window, follow-ups for machines found later, frozen machines
  named as exposed. A CVE none of whose rows can be acted on (closed, not patchable, no fix
  named) is one `Unactionable` with why.
- `assessment`: Update Manager's assessment (`PatchState`s, read by the fleet's assessor): a
  missing update released within `emergency.assessment_window` whose MSRC severity is Critical
  (Windows), or which is classified Security with a Critical severity (Linux, where the
  assessment gives one), is one `Advisory` of exactly that update for the machines missing it.

Each delivery's key is the source's ids and update times (a digest of them): the same findings
read twice give the same key, so a reader that remembers the keys it answered (the `Claims`
port, app/azure_advisories.py) answers each once; a machine found later changes the key, and the
new delivery merges into the CVE's run (a follow-up patches the new machine).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from patchpilot.advisories.models import Advisory, Delivery, Unactionable
from patchpilot.advisories.names import fix_problem, is_kb, quoted
from patchpilot.advisories.parsing import VULNERABILITY_ID
from patchpilot.compliance.model import MissingPatch, PatchState
from patchpilot.inventory import Instance
from patchpilot.policy.model import ADVISORY_SEVERITIES, AdvisorySeverity

# The sub-assessments of machines' vulnerability findings: ServerVulnerability (the REST API's
# schema), ServerVulnerabilityTvm (Defender Vulnerability Management's rows: assumed, from public
# sample queries; tests/fixtures/defender/sources.json).
MACHINE_FINDING_TYPES = ("ServerVulnerability", "ServerVulnerabilityTvm")
UNHEALTHY = "Unhealthy"  # an open finding; Healthy: fixed; NotApplicable: not assessed
CRITICAL_CVSS = 9.0  # a CVSS 3 base score from 9.0 is Critical (CVSS 3.x specification, table 14)
_DEFENDER_SEVERITIES: dict[str, AdvisorySeverity] = {s.lower(): s for s in ADVISORY_SEVERITIES}
_KB_IN_TEXT = re.compile(r"\bKB\d{6,8}\b", re.IGNORECASE)
_CVE = re.compile(r"CVE-\d{4}-\d{4,}", re.IGNORECASE)
_SECURITY_PROVIDER = "/providers/microsoft.security/"
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


class SourceNotReadError(Exception):
    """A source that could not be read (no permission, not reachable): said as "not read: ...",
    never as "nothing found"."""


def defender_severities(severity: AdvisorySeverity) -> tuple[str, ...]:
    """Defender's status severities (Low, Medium, High; Critical where given) at or above
    `severity`: what the query asks for. Critical is High with a CVSS 3 score from 9.0, so a
    CRITICAL minimum still reads High."""
    floor = min(ADVISORY_SEVERITIES.index(severity), ADVISORY_SEVERITIES.index("HIGH"))
    return tuple(s.capitalize() for s in ADVISORY_SEVERITIES[floor:])


@dataclass(frozen=True)
class DefenderFinding:
    """One sub-assessment row: a vulnerability on one machine."""

    id: str  # the sub-assessment's ARM id
    machine: str  # the assessed machine's ARM id
    cve: str
    severity: AdvisorySeverity | None  # None: a severity the row does not give or PatchPilot does not know
    status: str  # Unhealthy, Healthy, NotApplicable
    fixes: tuple[str, ...]
    problem: str  # why it cannot be acted on; empty when it can
    updated: str  # timeGenerated, as written
    at: datetime | None
    title: str


def defender_finding(row: Mapping[str, Any]) -> DefenderFinding:
    """What one `securityresources` sub-assessment row says (tests/fixtures/defender/)."""
    properties = _mapping(row.get("properties"))
    extra = _mapping(properties.get("additionalData"))
    status = _mapping(properties.get("status"))
    row_id = _text(row.get("id"))
    machine = _text(_mapping(properties.get("resourceDetails")).get("id"))
    if not machine and _SECURITY_PROVIDER in row_id.lower():
        machine = row_id[: row_id.lower().index(_SECURITY_PROVIDER)]
    titles = [_text(_mapping(c).get("title")) for c in _list(extra.get("cve"))]
    cve = next((t.upper() for t in [*titles, _text(properties.get("displayName"))] if _CVE.fullmatch(t)), "")
    cve = cve or _text(properties.get("id"))  # the scanner's own id where no CVE is named
    label = _DEFENDER_SEVERITIES.get(_text(status.get("severity")).lower())
    if label == "HIGH" and _cvss3(extra) >= CRITICAL_CVSS:
        label = "CRITICAL"
    code = _text(status.get("code"))
    fixes, refused = _fixes(properties, extra)
    problem = ""
    if code != UNHEALTHY:
        problem = f"the finding is {code if code.isalpha() else quoted(code)}, not {UNHEALTHY}"
    elif not re.match(VULNERABILITY_ID, cve):
        problem = f"no vulnerability id ({quoted(cve) if cve else 'none'})"
    elif extra.get("patchable") is False:
        problem = "patchable is false: no fix to install"
    elif refused:
        problem = "; ".join(refused)
    elif not fixes:
        problem = "no KB or package named as its fix"
    elif label is None:
        given = _text(status.get("severity"))
        problem = f"severity {quoted(given) if given else 'not given'} is not one that starts emergency runs"
    updated = _text(properties.get("timeGenerated"))
    return DefenderFinding(
        id=row_id,
        machine=machine,
        cve=cve,
        severity=label,
        status=code,
        fixes=fixes,
        problem=problem,
        updated=updated,
        at=_time(updated),
        title=_text(properties.get("displayName")),
    )


def defender_deliveries(rows: Iterable[Mapping[str, Any]], instances: Sequence[Instance]) -> list[Delivery]:
    """One delivery per CVE found on the fleet's machines (rows of other machines are another
    policy's): an Advisory for the machines whose finding can be acted on, else an Unactionable
    saying why none can."""
    fleet = {i.id.lower(): i.id for i in instances}
    by_cve: dict[str, list[DefenderFinding]] = {}
    for row in rows:
        finding = defender_finding(row)
        if finding.machine.lower() in fleet:
            by_cve.setdefault(finding.cve, []).append(finding)
    deliveries: list[Delivery] = []
    for cve, findings in sorted(by_cve.items()):
        key = f"{cve}:{_digest(f'{f.id.lower()}@{f.updated}' for f in findings)}"
        usable = [f for f in findings if not f.problem]
        if not usable:
            reasons = sorted({f.problem for f in findings})
            name = cve if re.match(VULNERABILITY_ID, cve) else quoted(cve)  # a row's text cannot forge a log line
            deliveries.append(Unactionable("defender", key, f"Defender finding {name}: {'; '.join(reasons)}"))
            continue
        severity = max((f.severity for f in usable if f.severity), key=ADVISORY_SEVERITIES.index)
        times = [f.at for f in usable if f.at is not None]
        deliveries.append(
            Advisory(
                source="defender",
                key=key,
                cve=cve,
                severity=severity,
                fixes=tuple(dict.fromkeys(fix for f in usable for fix in f.fixes)),
                instances=tuple(dict.fromkeys(fleet[f.machine.lower()] for f in usable)),
                fleet_wide=False,  # the read lists every machine with the finding: exactly those
                title=usable[0].title,
                at=min(times) if times else None,  # the earliest evidence: later rescans keep the window
            )
        )
    return deliveries


def critical_update(patch: MissingPatch, instance: Instance) -> bool:
    """An update the assessment source acts on: MSRC severity Critical on Windows; classified
    Security with a Critical severity on Linux."""
    if instance.os == "windows":
        return patch.severity == "Critical"
    return patch.severity == "Critical" and "security" in patch.classification.lower()


def assessment_deliveries(
    states: Sequence[PatchState], instances: Sequence[Instance], now: datetime, window: timedelta
) -> list[Delivery]:
    """One Advisory per critical update released within `window` before `now` that machines of
    the fleet miss: exactly that update, on exactly those machines. A machine without an
    assessment (`PatchState.error`) is not counted here: the compliance report shows it."""
    fleet = {i.id: i for i in instances}
    missing: dict[str, list[tuple[Instance, MissingPatch, PatchState]]] = {}
    for state in states:
        instance = fleet.get(state.instance_id)
        if instance is None or state.error:
            continue
        for patch in state.missing:
            released = patch.released_at
            if released is None or not now - window <= released <= now or not critical_update(patch, instance):
                continue
            if fix_problem(patch.id) is not None:
                continue  # not a name an emergency run may install (names.py); the compliance report lists it
            missing.setdefault(patch.id, []).append((instance, patch, state))
    deliveries: list[Delivery] = []
    for fix, found in sorted(missing.items()):
        first = found[0][1]
        evidence = (f"{i.id.lower()}@{s.assessed_at.isoformat() if s.assessed_at else ''}" for i, _, s in found)
        deliveries.append(
            Advisory(
                source="assessment",
                key=f"{fix}:{_digest(evidence)}",
                cve=_UNSAFE_ID.sub("-", fix.upper() if is_kb(fix) else fix),  # no CVE: the update names the run
                severity="CRITICAL",
                fixes=(fix,),
                instances=tuple(dict.fromkeys(i.id for i, _, _ in found)),
                fleet_wide=False,
                title=f"{first.title or fix} ({first.classification or 'unclassified'}, {first.severity})",
                at=first.released_at,
            )
        )
    return deliveries


# ---------------------------------------------------------------- reading the rows


def _fixes(properties: Mapping[str, Any], extra: Mapping[str, Any]) -> tuple[tuple[str, ...], list[str]]:
    """The fixes a finding names: KB numbers in its remediation and vendor references (Windows),
    the vulnerable package (`softwareName`, Linux); and the names refused (names.fix_problem)."""
    texts = [_text(properties.get("remediation"))]
    texts += [_text(_mapping(r).get("title")) for r in _list(extra.get("vendorReferences"))]
    fixes = [kb.upper() for text in texts for kb in _KB_IN_TEXT.findall(text)]
    refused: list[str] = []
    package = _text(extra.get("softwareName"))
    if package and not fixes:
        problem = fix_problem(package)
        if problem is None:
            fixes.append(package)
        else:
            refused.append(f"additionalData.softwareName: {problem}")
    return tuple(dict.fromkeys(fixes)), refused


def _cvss3(extra: Mapping[str, Any]) -> float:
    scores = _mapping(extra.get("cvss"))
    best = 0.0
    for version, entry in scores.items():
        base = _mapping(entry).get("base")
        if str(version).startswith("3") and isinstance(base, int | float) and not isinstance(base, bool):
            best = max(best, float(base))
    flat = extra.get("cvssV30Score")
    if isinstance(flat, int | float) and not isinstance(flat, bool):
        best = max(best, float(flat))
    return best


def _digest(parts: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()[:12]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _time(value: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
