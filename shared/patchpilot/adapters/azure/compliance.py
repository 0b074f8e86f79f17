"""Patch compliance on Azure (`ports.PatchAssessor`): assessPatches started per machine, the
results read in bulk from Resource Graph. `AzureFleet.start_assessment` and `patch_states`
delegate here.

Starting (`start_assessment`): a machine is marked with the tag
PatchPilotAssessment=<token>|<UTC start> before assessPatches is sent (as installs are marked),
so a repeated call with the same token finds the mark in the resource group's listing and sends
nothing. Resource Graph could not tell: its latest assessment row names no token, and a row
appears minutes after the POST, so a redelivery seconds later would start a second assessment.
A mark without an assessment in the VM's instance view after RESEND_AFTER means the POST was
lost (the worker died between marking and sending): it is sent again. The POST starts the
long-running operation without polling it (`polling=False`), as installs do: a timer never waits
for minutes. Stopped or deallocated VMs, VMs whose agent is not Ready and Arc servers that are
not Connected are refused with why, before anything is written.

Reading (`patch_states`): per 400 machines, one `patchassessmentresources` query (the summary
rows `…/patchassessmentresults` and the per-patch rows `…/softwarepatches` together) and one
`patchinstallationresources` query (the succeeded installations), paged by 1,000 rows; never a
request per machine. Resource Graph keeps 7 days of assessments: a machine without a summary row
is "unknown" (PatchState.error), never compliant.

Columns (MicrosoftDocs azure-docs update-manager/query-logs.md): summary rows carry rebootPending,
startDateTime, lastModifiedDateTime, startedBy, errorDetails, osType and
availablePatchCountByClassification; per-patch rows carry patchName, kbId (the table writes
"Kbid"), version, classifications, publishedDateTime, rebootBehavior. Two fields are read where
present although that page does not list them: msrcSeverity on per-patch rows (used by public
Resource Graph queries of the portal's views) and status on summary rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from azure.core.exceptions import HttpResponseError

from patchpilot.batching import chunks, unique
from patchpilot.compliance.model import AssessmentStarted, MissingPatch, PatchSeverity, PatchState
from patchpilot.inventory import Instance

from .access import (
    ARC_TYPE,
    INSTALL_RESULT_TYPES,
    VM_TYPE,
    AzureAccess,
    Machine,
    agent_problem,
    arc_problem,
    at,
    describe_error,
    items,
    mark,
    parse_machine,
    parse_time,
    power_state,
    read_mark,
    tags_of,
    text,
)
from .graph import IDS_PER_QUERY, kql_list, query

TAG_ASSESSMENT: Final = "PatchPilotAssessment"  # on a machine: "<token>|<UTC start>[|failed|<reason>]"
RESEND_AFTER = timedelta(minutes=10)  # a mark with no assessment started since then: the POST was lost
CLOCK_SLACK = timedelta(minutes=5)  # between our clock and the start time Azure reports
NOT_ASSESSED = "no assessment in the last 7 days"  # Resource Graph's retention of assessments
ASSESSMENT_TYPES = (f"{VM_TYPE}/patchassessmentresults", f"{ARC_TYPE}/patchassessmentresults")
ASSESSED_PATCH_TYPES = tuple(f"{t}/softwarepatches" for t in ASSESSMENT_TYPES)
NOT_A_MACHINE = "not an Azure VM or Arc server resource id (/subscriptions/.../virtualMachines/<name>)"
UNIFORM = "a Uniform scale set instance: PatchPilot neither assesses nor patches it (patch its image)"


def _not_assessed(instance: Instance) -> str:
    """Why an instance has no assessment here: a Uniform scale set instance, or not a machine id."""
    return UNIFORM if instance.scale_set_mode == "uniform" else NOT_A_MACHINE


_SEVERITIES: dict[str, PatchSeverity] = {
    "critical": "Critical",
    "important": "Important",
    "moderate": "Moderate",
    "low": "Low",
}


# ---------------------------------------------------------------- starting assessments


def start_assessment(access: AzureAccess, instances: Sequence[Instance], token: str) -> AssessmentStarted:
    """assessPatches on each machine not yet assessed for `token` (see the module's docstring)."""
    now = access.clock.now()
    targets = unique(instances, lambda i: i.id)
    refused: list[tuple[str, str]] = []
    machines: dict[str, Machine] = {}
    for instance in targets:
        machine = parse_machine(instance.id)
        if machine is None:
            refused.append((instance.id, _not_assessed(instance)))
        else:
            machines[instance.id] = dataclasses.replace(machine, id=instance.id)
    listed = list(machines.values())
    rows = access.rows(listed) if listed else {}  # power state (VMs), agent status (Arc)
    models = access.models(listed) if listed else {}  # tags: this token's marks
    started = 0
    operations: list[str] = []
    for instance in targets:
        machine = machines.get(instance.id)
        if machine is None:
            continue
        model = models.get(machine.key)
        if model is None:
            refused.append((machine.id, f"{machine.kind} not found"))
            continue
        found = read_mark(tags_of(model).get(TAG_ASSESSMENT, ""), token)
        if found is not None and found[1][:1] == ["failed"]:
            refused.append((machine.id, "assessPatches was refused: " + "|".join(found[1][1:])))
            continue
        if found is not None and (machine.arc or now < found[0] + RESEND_AFTER):
            started += 1  # started for this token already
            continue
        problem, view = _availability(access, machine, rows.get(machine.key))
        if found is not None and problem is None and _assessed_since(view, found[0]):
            started += 1
            continue
        if problem is not None:
            refused.append((machine.id, problem))
            continue
        if found is None:
            try:
                access.set_tags(machine, model, {TAG_ASSESSMENT: mark(token, now)})
            except HttpResponseError as exc:
                reason = f"could not tag the {machine.kind} with {TAG_ASSESSMENT}: {describe_error(exc)}"
                refused.append((machine.id, reason))
                continue
        try:
            operation = _send_assess(access, machine)
        except HttpResponseError as exc:
            if exc.status_code is None or exc.status_code == 409 or exc.status_code >= 500:
                started += 1  # the mark stays: a repeat with this token sends it again after RESEND_AFTER
                continue
            reason = describe_error(exc)
            with contextlib.suppress(HttpResponseError):
                access.set_tags(machine, model, {TAG_ASSESSMENT: mark(token, now, "failed", reason)})
            refused.append((machine.id, f"assessPatches was refused: {reason}"))
            continue
        started += 1
        if operation:
            operations.append(operation)
    return AssessmentStarted(started=started, refused=tuple(refused), operations=tuple(operations))


def _availability(access: AzureAccess, machine: Machine, row: Any) -> tuple[str | None, Any]:
    """Why the machine cannot be assessed now (None: it can), and a VM's instance view."""
    if machine.arc:
        return (arc_problem(row) if row is not None else "Arc server not found"), None
    power = text(row, "properties", "extended", "instanceView", "powerState", "code").removeprefix("PowerState/")
    if power and power.lower() != "running":
        return f"VM {power.lower()}", None
    try:
        view = access.instance_view(machine)
    except HttpResponseError as exc:
        return f"instance view not readable: {describe_error(exc)}", None
    state = power_state(view)
    if state != "running":
        return f"VM {state}", view
    return agent_problem(view), view


def _assessed_since(view: Any, since: datetime) -> bool:
    """Whether the instance view shows an assessment that started after the mark."""
    started = parse_time(at(view, "patchStatus", "availablePatchSummary", "startTime"))
    return started is not None and started >= since - CLOCK_SLACK


def _send_assess(access: AzureAccess, machine: Machine) -> str:
    """POST assessPatches without polling; the operation's id (for the log) where the answer names it."""
    if machine.arc:
        poller: Any = access.hybrid(machine).machines.begin_assess_patches(
            machine.resource_group, machine.name, polling=False
        )
    else:
        poller = access.compute(machine).virtual_machines.begin_assess_patches(
            machine.resource_group, machine.name, polling=False
        )
    response = getattr(poller.polling_method(), "_initial_response", None)  # NoPolling keeps the 202
    headers = getattr(getattr(response, "http_response", None), "headers", None) or {}
    url = str(headers.get("Azure-AsyncOperation") or headers.get("Location") or "")
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] if url else ""


# ---------------------------------------------------------------- reading the results


def assessments_query(machine_keys: Sequence[str]) -> str:
    """The latest assessment of these machines (lower-case ids): summary and per-patch rows."""
    return "\n".join(
        [
            "patchassessmentresources",
            f"| where type in~ {kql_list([*ASSESSMENT_TYPES, *ASSESSED_PATCH_TYPES])}",
            "| extend machine = tostring(split(tolower(id), '/patchassessmentresults/')[0])",
            f"| where machine in {kql_list(machine_keys)}",
            "| project id, type, machine, properties",
        ]
    )


def succeeded_installs_query(machine_keys: Sequence[str]) -> str:
    """The succeeded installations of these machines (Resource Graph keeps 30 days)."""
    return "\n".join(
        [
            "patchinstallationresources",
            f"| where type in~ {kql_list(INSTALL_RESULT_TYPES)}",
            "| where tostring(properties.status) =~ 'Succeeded'",
            "| extend machine = tostring(split(tolower(id), '/patchinstallationresults/')[0])",
            f"| where machine in {kql_list(machine_keys)}",
            "| project machine, ended = tostring(properties.lastModifiedDateTime)",
        ]
    )


def patch_states(access: AzureAccess, instances: Sequence[Instance]) -> list[PatchState]:
    """One PatchState per instance, in order, from Resource Graph in bulk."""
    machines = {i.id: m for i in instances if (m := parse_machine(i.id)) is not None}
    keys = sorted({m.key for m in machines.values()})
    subscriptions = sorted({m.subscription for m in machines.values()})
    summaries: dict[str, Any] = {}
    patches: dict[str, list[Any]] = {}
    installed: dict[str, datetime] = {}
    graph = access.graph()
    for chunk in chunks(keys, IDS_PER_QUERY):
        for row in query(graph, assessments_query(chunk), subscriptions):
            key = text(row, "machine")
            if text(row, "type").lower().endswith("/softwarepatches"):
                patches.setdefault(key, []).append(row)
            else:
                summaries[key] = row
        for row in query(graph, succeeded_installs_query(chunk), subscriptions):
            ended = parse_time(at(row, "ended"))
            key = text(row, "machine")
            if ended is not None and (key not in installed or ended > installed[key]):
                installed[key] = ended
    states: list[PatchState] = []
    for instance in instances:
        machine = machines.get(instance.id)
        if machine is None:
            states.append(PatchState(instance_id=instance.id, error=_not_assessed(instance)))
            continue
        states.append(
            _state(instance, summaries.get(machine.key), patches.get(machine.key, []), installed.get(machine.key))
        )
    return states


def _state(instance: Instance, summary: Any, patch_rows: Sequence[Any], last_install: datetime | None) -> PatchState:
    if summary is None:
        return PatchState(instance_id=instance.id, last_install_at=last_install, error=NOT_ASSESSED)
    properties = _folded(at(summary, "properties"))
    assessed_at = parse_time(properties.get("lastmodifieddatetime")) or parse_time(properties.get("startdatetime"))
    errors = _error_messages(properties.get("errordetails"))
    status = str(properties.get("status") or "")
    if status.lower() == "failed":
        detail = f"the last assessment failed ({'; '.join(errors)[:200]})" if errors else "the last assessment failed"
        return PatchState(instance_id=instance.id, assessed_at=assessed_at, last_install_at=last_install, error=detail)
    missing = tuple(sorted((_missing(instance, row) for row in patch_rows), key=lambda p: (p.id, p.version)))
    notes: list[str] = []
    counts = properties.get("availablepatchcountbyclassification")
    total = sum(v for v in counts.values() if isinstance(v, int)) if isinstance(counts, Mapping) else 0
    if total > len(missing):
        notes.append(f"{total - len(missing)} more missing patches not listed by Resource Graph")
    if errors:
        notes.append("assessment reported: " + "; ".join(errors)[:200])
    return PatchState(
        instance_id=instance.id,
        assessed_at=assessed_at,
        missing=missing,
        reboot_pending=properties.get("rebootpending") is True,
        last_install_at=last_install,
        notes=tuple(notes),
    )


def _missing(instance: Instance, row: Any) -> MissingPatch:
    properties = _folded(at(row, "properties"))
    name = str(properties.get("patchname") or "") or text(row, "id").rsplit("/", 1)[-1]
    kb = str(properties.get("kbid") or "").upper().removeprefix("KB")
    classifications = properties.get("classifications")
    if isinstance(classifications, str):
        classification = classifications
    else:
        classification = ", ".join(str(c) for c in items({"c": classifications}, "c"))
    return MissingPatch(
        id=f"KB{kb}" if kb and instance.os == "windows" else name,
        title=name,
        classification=classification,
        severity=msrc_severity(properties.get("msrcseverity")),
        released_at=parse_time(properties.get("publisheddatetime")),
        version=str(properties.get("version") or ""),
    )


def msrc_severity(value: object) -> PatchSeverity:
    """Azure's MSRC severity (Critical, Important, Moderate, Low) on the one scale; anything else
    (absent, "Unspecified", "NotAvailable", Linux packages without one) is Unspecified."""
    return _SEVERITIES.get(str(value or "").strip().lower(), "Unspecified")


def _folded(value: Any) -> dict[str, Any]:
    """Property names lower-cased: the documentation writes `Kbid`, queries write `kbId`."""
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.setdefault(str(key).lower(), item)
    return out


def _error_messages(details: Any) -> list[str]:
    """The messages of an errorDetails value (an ARM error, its details, or a list of them)."""
    entries = [details] if isinstance(details, Mapping) else items({"d": details}, "d")
    messages: list[str] = []
    for entry in entries:
        for error in [entry, *items(entry, "details")]:
            message = text(error, "message")
            if message and message not in messages:
                messages.append(message)
    return messages
