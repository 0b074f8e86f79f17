"""Installs: installPatches per machine, marked before it is started
(PatchPilotInstall=<command id>|<UTC start>): once per command, on its first three VMs (a few tag
writes per command, not one per VM), and on each Arc server; progress read in bulk from Resource
Graph (`patchinstallationresources`). The execution that writes the command's mark sends to every
VM; a later one (which finds the mark on any of them) finds each VM's run in Resource Graph. A VM
with no run START_GRACE after the mark may never have been sent (the worker died while sending),
or Resource Graph is behind: the VM's instance view decides whether an installation really never
started, and only then is installPatches sent (again). A refusal is marked on its machine
(`|failed|<reason>`) and reported without sending again. An install that Azure Update Manager
makes (InstallPatches.maintenance_run) is never started here: its runs are found by their
maintenanceRunId."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import models as cm
from azure.mgmt.hybridcompute import models as hm

from patchpilot.batching import chunks, unique
from patchpilot.engine.messages import (
    InstallPatches,
    InstallTarget,
    Outcome,
)
from patchpilot.inventory import OsFamily
from patchpilot.ports import InProgress, Progress
from patchpilot.wording import plural, spoken_duration

from ..access import (
    INSTALL_RESULT_TYPES,
    PATCH_ROW_TYPES,
    TAG_INSTALL,
    AzureAccess,
    Machine,
    at,
    describe_error,
    iso,
    items,
    mark,
    parse_time,
    read_mark,
    tags_of,
    text,
    transient,
)
from ..graph import IDS_PER_QUERY, kql_list, kql_string, query
from ..install_body import install_body, install_duration

if TYPE_CHECKING:
    pass

INSTALL_POLL = timedelta(minutes=5)
START_GRACE = timedelta(minutes=10)  # a marked install not seen in Resource Graph by then is checked
CLOCK_SLACK = timedelta(minutes=5)  # between our clock and the time Azure reports a run started
INSTALL_MARGIN = timedelta(minutes=30)  # beyond maximumDuration before an install counts as lost
PATCH_ROWS_GRACE = timedelta(minutes=15)  # for the patch rows of a finished run to reach Resource Graph
RUNNING_INSTALL = frozenset({"", "notstarted", "inprogress", "unknown"})
MARK_COPIES = 3  # VMs a command's install mark is written on (the first ones by id)


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


def install_patches(access: AzureAccess, command: InstallPatches) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda t: t.instance.id)
    outcomes: dict[str, Outcome] = {}
    machines = access.parse([t.instance for t in targets], outcomes, now)
    duration, clamped = install_duration(command.max_duration)
    deadline_after = duration + INSTALL_MARGIN
    waiting: list[str] = []
    marked: list[_Marked] = []
    if command.maintenance_run:
        # Update Manager installs: nothing is started, what its run installed is reported.
        valid = [t for t in targets if t.instance.id in machines]
        start, _ = access.anchor(command.id, TAG_INSTALL, [machines[t.instance.id] for t in valid], now)
        marked = [_Marked(t, machines[t.instance.id], start) for t in valid]
        deadline_after = (command.max_duration or duration) + INSTALL_MARGIN
        clamped = ""
    for target in targets if not command.maintenance_run else []:
        if target.only is not None and not target.only and target.instance.id in machines:
            detail = "nothing to install: the promoted patch set is empty"
            outcomes[target.instance.id] = Outcome(id=target.instance.id, ok=True, detail=detail, at=now)
    active = [
        t
        for t in targets
        if t.instance.id in machines and t.instance.id not in outcomes and not command.maintenance_run
    ]
    models = access.models([machines[t.instance.id] for t in active])
    bodies: dict[str, dict[str, Any]] = {}
    for target in active:
        machine = machines[target.instance.id]
        body = _body(command, target, duration)
        if models.get(machine.key) is None:
            outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=f"{machine.kind} not found", at=now)
        elif isinstance(body, str):
            outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=body, at=now)
        else:
            bodies[machine.id] = body
    # VMs: the command's mark, on its first VMs; Arc servers (no instance view to look at): one each.
    vms = [machines[t.instance.id] for t in active if t.instance.id in bodies and not machines[t.instance.id].arc]
    start, first = now, False
    if vms:
        try:
            start, first = _command_mark(access, command.id, vms, models, now)
        except HttpResponseError as exc:
            for machine in vms:
                detail = f"could not tag the {machine.kind} with {TAG_INSTALL}: {describe_error(exc)}"
                outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=detail, at=now)
    for target in active:
        machine = machines[target.instance.id]
        if machine.id in outcomes:
            continue
        model = models[machine.key]
        found = read_mark(tags_of(model).get(TAG_INSTALL, ""), command.id)
        if found is not None and found[1][:1] == ["failed"]:
            detail = "installPatches was refused: " + "|".join(found[1][1:])
            outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=detail, at=now)
        elif found is not None:
            marked.append(_Marked(target, machine, found[0]))
        elif machine.arc or first:
            problem = _start_install(access, command, machine, model, bodies[machine.id], now)
            if problem:
                outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=problem, at=now)
            else:
                waiting.append(machine.id)
        else:  # the command's mark is on its first VMs: sent since then, or never (see _unseen_install)
            marked.append(_Marked(target, machine, start))
    if marked:
        for item, outcome in _install_progress(access, command, marked, duration, deadline_after, now).items():
            if outcome is None:
                waiting.append(item)
            else:
                note = f" ({clamped})" if clamped and outcome.ok else ""
                outcomes[item] = outcome.model_copy(update={"at": now, "detail": outcome.detail + note})
    if waiting:
        done = len(targets) - len(waiting)
        return InProgress(now + INSTALL_POLL, note=f"install: {done}/{len(targets)} machines done")
    return [outcomes[t.instance.id] for t in targets]


def _command_mark(
    access: AzureAccess, command_id: str, vms: Sequence[Machine], models: Mapping[str, Any], now: datetime
) -> tuple[datetime, bool]:
    """When this command was first executed, and whether that is now: its PatchPilotInstall mark,
    looked for on every VM (in their listed models, no read of its own), else written now on its
    first MARK_COPIES VMs by id: a few tag writes per command, not one per VM, and an execution
    takes itself for the first (and sends to every VM) only if all of them have gone. The first
    write must succeed (its error is raised); the copies are best effort."""
    starts = [found[0] for m in vms if (found := read_mark(tags_of(models[m.key]).get(TAG_INSTALL, ""), command_id))]
    if starts:
        return min(starts), False
    first, *copies = sorted(vms, key=lambda m: m.key)[:MARK_COPIES]
    access.set_tags(first, models[first.key], {TAG_INSTALL: mark(command_id, now)})
    for machine in copies:
        with contextlib.suppress(HttpResponseError):
            access.set_tags(machine, models[machine.key], {TAG_INSTALL: mark(command_id, now)})
    return now, True


def _body(command: InstallPatches, target: InstallTarget, duration: timedelta) -> dict[str, Any] | str:
    """The installPatches body for one machine, or why there is none."""
    return install_body(
        target.instance.os,
        command.classifications,
        command.include,
        [*command.exclude, *target.exclude],  # and the policy's patch exceptions for this machine
        target.only,
        target.reboot_for(command.reboot),
        duration,
    )


def _start_install(
    access: AzureAccess, command: InstallPatches, machine: Machine, model: Any, body: dict[str, Any], now: datetime
) -> str:
    """Send installPatches (an Arc server is marked first; a VM was, by the command's mark on its
    first VMs); a problem, or '' once sent (or once a refusal that may pass, a conflict or a server
    error, leaves the mark for a later resend). A refusal is marked on the machine, so that a
    later execution reports it without sending again."""
    if machine.arc:
        try:
            access.set_tags(machine, model, {TAG_INSTALL: mark(command.id, now)})
        except HttpResponseError as exc:
            return f"could not tag the {machine.kind} with {TAG_INSTALL}: {describe_error(exc)}"
    try:
        _send_install(access, machine, body)
    except HttpResponseError as exc:
        if transient(exc):
            return ""
        reason = describe_error(exc)
        with contextlib.suppress(HttpResponseError):  # else a later execution checks again
            access.set_tags(machine, model, {TAG_INSTALL: mark(command.id, now, "failed", reason)})
        return f"installPatches was refused: {reason}"
    return ""


def _send_install(access: AzureAccess, machine: Machine, body: dict[str, Any]) -> None:
    if machine.arc:
        access.hybrid(machine).machines.begin_install_patches(
            machine.resource_group, machine.name, hm.MachineInstallPatchesParameters(body), polling=False
        )
    else:
        access.compute(machine).virtual_machines.begin_install_patches(
            machine.resource_group, machine.name, cm.VirtualMachineInstallPatchesParameters(body), polling=False
        )


def _install_progress(
    access: AzureAccess,
    command: InstallPatches,
    marked: Sequence[_Marked],
    duration: timedelta,
    deadline_after: timedelta,
    now: datetime,
) -> dict[str, Outcome | None]:
    """Each marked machine's outcome (None: still installing), from the installation runs
    Resource Graph reports since its mark."""
    since = min(m.start for m in marked) - CLOCK_SLACK
    runs: dict[str, list[Any]] = {}
    keys = sorted({m.machine.key for m in marked})
    subscriptions = sorted({m.machine.subscription for m in marked})
    maintenance = command.maintenance_run
    for chunk in chunks(keys, IDS_PER_QUERY):
        kql = install_runs_query(chunk, since=None if maintenance else since, maintenance_run=maintenance)
        for row in query(access.graph(), kql, subscriptions):
            runs.setdefault(text(row, "machine"), []).append(row)
    result: dict[str, Outcome | None] = {}
    finished: dict[str, tuple[_Marked, Any]] = {}
    for item in marked:
        deadline = item.start + deadline_after
        own = [
            r
            for r in runs.get(item.machine.key, [])
            if maintenance
            or ((started := parse_time(at(r, "properties", "startDateTime"))) and started >= item.start - CLOCK_SLACK)
        ]
        own.sort(key=lambda r: parse_time(at(r, "properties", "startDateTime")) or item.start)
        if not own and maintenance:
            detail = f"Update Manager run {maintenance.rsplit('/', 1)[-1]} reported no installation on it"
            missing = Outcome(id=item.machine.id, ok=False, detail=detail)
            result[item.machine.id] = None if now < deadline else missing
            continue
        if not own:
            result[item.machine.id] = _unseen_install(access, command, item, duration, deadline, now)
            continue
        run = own[0]
        status = text(run, "properties", "status")
        if status.lower() in RUNNING_INSTALL:
            if now >= deadline:
                detail = f"installation still {status or 'pending'} after {spoken_duration(deadline_after)}"
                result[item.machine.id] = Outcome(id=item.machine.id, ok=False, detail=detail)
            else:
                result[item.machine.id] = None
        elif status.lower() == "succeeded":
            finished[text(run, "id").lower()] = (item, run)
        else:
            result[item.machine.id] = Outcome(id=item.machine.id, ok=False, detail=_run_failure(run))
    if finished:
        patches = _installed_patches(access, sorted(finished), subscriptions)
        for run_key, (item, run) in finished.items():
            names = [n for row in patches.get(run_key, []) if (n := installed_name(row, item.target.instance.os))]
            names = list(dict.fromkeys(names))
            count = at(run, "properties", "installedPatchCount")
            ended = parse_time(at(run, "properties", "lastModifiedDateTime")) or now
            if isinstance(count, int) and len(names) < count and now < ended + PATCH_ROWS_GRACE:
                result[item.machine.id] = None  # the patch rows are not all in Resource Graph yet
                continue
            result[item.machine.id] = Outcome(id=item.machine.id, ok=True, detail=_run_success(run, names), items=names)
    return result


def _unseen_install(
    access: AzureAccess, command: InstallPatches, item: _Marked, duration: timedelta, deadline: datetime, now: datetime
) -> Outcome | None:
    """A marked machine (a VM: one the command's mark covers) with no installation run in
    Resource Graph. Within START_GRACE it is on its way; after that, a VM's instance view says
    whether an installation started after the mark (Resource Graph is behind) or never did (the
    worker died before sending it, or Azure refused with a conflict): then it is sent now."""
    machine = item.machine
    if now < item.start + START_GRACE:
        return None
    if now >= deadline:
        detail = f"no installation run reported since {item.start:%H:%M} UTC (installPatches never started?)"
        return Outcome(id=machine.id, ok=False, detail=detail)
    if machine.arc:
        return None  # Arc servers show no patch status but Resource Graph's: wait for it
    try:
        view = access.instance_view(machine)
    except HttpResponseError as exc:
        return Outcome(id=machine.id, ok=False, detail=f"instance view not readable: {describe_error(exc)}")
    summary = at(view, "patchStatus", "lastPatchInstallationSummary")
    started = parse_time(at(summary, "startTime"))
    if started is not None and started >= item.start - CLOCK_SLACK:
        return None  # it runs; Resource Graph will tell
    body = _body(command, item.target, duration)
    if isinstance(body, str):
        return Outcome(id=machine.id, ok=False, detail=body)
    try:
        _send_install(access, machine, body)
    except HttpResponseError as exc:
        if not transient(exc):
            return Outcome(id=machine.id, ok=False, detail=f"installPatches was refused: {describe_error(exc)}")
    return None


def _installed_patches(
    access: AzureAccess, run_keys: Sequence[str], subscriptions: Sequence[str]
) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for chunk in chunks(list(run_keys), IDS_PER_QUERY):
        for row in query(access.graph(), installed_patches_query(chunk), subscriptions):
            found.setdefault(text(row, "run"), []).append(row)
    return found


@dataclass(frozen=True)
class _Marked:
    target: InstallTarget
    machine: Machine
    start: datetime


def _run_failure(run: Any) -> str:
    properties = at(run, "properties")
    status = text(properties, "status") or "unknown"
    failed = at(properties, "failedPatchCount")
    installed = at(properties, "installedPatchCount")
    detail = f"installation {status}"
    if isinstance(installed, int) or isinstance(failed, int):
        detail += f": {installed or 0} installed, {failed or 0} failed"
    errors = items(properties, "errorDetails", "details") or [at(properties, "errorDetails")]
    messages = [text(e, "message") for e in errors if text(e, "message")]
    if messages:
        detail += f" ({'; '.join(messages)[:200]})"
    if at(properties, "maintenanceWindowExceeded") is True:
        detail += "; maximum duration exceeded"
    return detail


def _run_success(run: Any, names: Sequence[str]) -> str:
    count = plural(len(names), "patch")
    reboot = text(run, "properties", "rebootStatus")
    return f"{count} installed" + (f", reboot {reboot}" if reboot else "")
