"""The Azure fleet: Resource Graph for inventory and bulk reads, Compute for snapshots, patching,
Run Command and disk swaps, Hybrid Compute for Arc-enabled servers; HTTP for the policy's checks.

Every method is idempotent per command id and keeps no state of its own: each execution
re-derives the operation's progress from Azure, finding what an earlier execution started by a
mark it left there, before starting anything:

- snapshots (incremental, one per managed disk) have names derived from the command id and the
  disk id (`pp-<vm>-<digest>`), so a repeated command finds them in the resource group's listing,
  and carry the tags PatchPilotRun/Wave/Command/Instance/Disk;
- an install is marked on the machine before it is started: the tag
  PatchPilotInstall=<command id>|<UTC start>; progress is read in bulk from Resource Graph
  (`patchinstallationresources`: the summary rows that started after the mark, then the
  installed patches of the finished runs). A mark without a run after START_GRACE means the
  worker died between marking and sending: the VM's instance view (patchStatus) decides whether
  an installation really never started, and only then is installPatches sent (again);
- an install that Azure Update Manager makes (InstallPatches.maintenance_run) is never started
  here: its runs are found by their maintenanceRunId (the run's applyUpdates id), and the
  command's first execution is marked once, on its first machine, to time it out;
- snapshots not done by TakeSnapshots.deadline (an Update Manager run's cut-off) fail;
- a health check's start is the tag PatchPilotHealthCheck=<command id>|<UTC start> on the
  command's first machine; its script runs as a managed Run Command named `patchpilot-health`
  tagged with the command id (a Run Command of another command is replaced);
- a rollback's restored disks have names derived from the command id and the snapshot id; every
  step (create the disks, deallocate, tag the original disks PatchPilotReplacedBy, swap the disks,
  start) is chosen from the VM's current state (fleet_rollback.py).

Arc-enabled servers have no managed disks: their snapshot step fails, or, when the policy patches
them without rollback (`patch_without_rollback`), passes with the single item ARC_NO_SNAPSHOT
(the engine needs an item to go on); their rollback always fails with the reason.

Long operations are started without waiting (`polling=False`: the request is sent, no poller
thread runs) and the method answers InProgress; the next delivery of the command reads where
they are. Throttling (429 with Retry-After) and transient errors are retried by azure-core.

Requests per call: one Resource Graph query per 400 machines (subscriptions batched by
graph.query); one VM listing per resource group for marks and disks; one instance view GET per
running VM for the agent (probe, discovery) and for health (power, agent, Application Health);
one Run Command read per machine with a health script.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import models as cm
from azure.mgmt.hybridcompute import models as hm

from patchpilot.adapters.health import HttpGet, UnsafeUrlValueError, fill_url, urllib_get
from patchpilot.engine.messages import (
    CheckHealth,
    InstallPatches,
    InstallTarget,
    Outcome,
    ProbeAgents,
    RollBack,
    TakeSnapshots,
)
from patchpilot.inventory import Instance
from patchpilot.policy.model import HealthChecks, Policy
from patchpilot.ports import Clock, DiscoveryResult, InProgress, Progress

from . import compliance, maintenance_watch
from .clients import AzureClients
from .fleet_common import (
    TAG_COMMAND,
    TAG_DISK,
    TAG_HEALTH,
    TAG_INSTALL,
    TAG_INSTANCE,
    TAG_RUN,
    TAG_WAVE,
    Machine,
    Verdict,
    agent_problem,
    agent_version,
    app_health,
    arc_problem,
    at,
    chunks,
    derived_name,
    describe_error,
    discovery_query,
    group,
    install_body,
    install_duration,
    install_runs_query,
    installed_name,
    installed_patches_query,
    iso,
    items,
    machines_query,
    mark,
    minutes,
    nics_query,
    os_known,
    parse_machine,
    parse_time,
    power_state,
    primary,
    private_ip_of_arc,
    private_ip_of_nic,
    read_mark,
    tag_value,
    tags_of,
    text,
    to_instance,
    unique,
)
from .fleet_rollback import roll_back_vm
from .graph import IDS_PER_QUERY, query

if TYPE_CHECKING:
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.hybridcompute import HybridComputeManagementClient

    from patchpilot.compliance.model import AssessmentStarted, PatchState
    from patchpilot.maintenance.model import WatchResult

SNAPSHOT_POLL = timedelta(minutes=2)
INSTALL_POLL = timedelta(minutes=5)
HEALTH_POLL = timedelta(minutes=2)
ROLLBACK_POLL = timedelta(minutes=1)
START_GRACE = timedelta(minutes=10)  # a marked install not seen in Resource Graph by then is checked
CLOCK_SLACK = timedelta(minutes=5)  # between our clock and the time Azure reports a run started
INSTALL_MARGIN = timedelta(minutes=30)  # beyond maximumDuration before an install counts as lost
PATCH_ROWS_GRACE = timedelta(minutes=15)  # for the patch rows of a finished run to reach Resource Graph
RUN_COMMAND = "patchpilot-health"
ARC_NO_SNAPSHOT = "none:arc-server-patched-without-rollback"
RUNNING_INSTALL = frozenset({"", "notstarted", "inprogress", "unknown"})


def fleet_for_policy(policy: Policy, clock: Clock, clients: AzureClients | None = None, **kwargs: Any) -> AzureFleet:
    """The fleet of a policy: Arc servers patched without a snapshot when the policy says so."""
    settings = policy.azure
    kwargs.setdefault("patch_without_rollback", bool(settings and settings.arc and settings.patch_without_rollback))
    return AzureFleet(clients or AzureClients(), clock, **kwargs)


@dataclass(frozen=True)
class _Marked:
    target: InstallTarget
    machine: Machine
    start: datetime


class AzureFleet:
    """A `FleetProvider` over Azure VMs and Arc-enabled servers, plus discovery of the fleet."""

    cloud: Final = "azure"

    def __init__(
        self,
        clients: AzureClients,
        clock: Clock,
        *,
        http_get: HttpGet = urllib_get,
        http_timeout: float = 5.0,
        patch_without_rollback: bool = False,
    ) -> None:
        """`patch_without_rollback`: an Arc server (no managed disk to snapshot) passes the snapshot
        step without a snapshot instead of failing it (policy azure.patch_without_rollback)."""
        self._clients = clients
        self.clock = clock
        self.http_get = http_get
        self.http_timeout = http_timeout
        self.patch_without_rollback = patch_without_rollback

    def _compute(self, machine: Machine) -> ComputeManagementClient:
        return self._clients.compute(machine.subscription)

    def _hybrid(self, machine: Machine) -> HybridComputeManagementClient:
        return self._clients.hybrid(machine.subscription)

    # ------------------------------------------------------------ discovery

    def discover(self, policy: Policy) -> DiscoveryResult:
        """The policy's VMs (and Arc servers with azure.arc) in its subscriptions, resource groups
        and locations that its rings may select: one paged Resource Graph query, then an instance
        view read per running VM for its agent and (in an availability set) its update domain.
        Stopped VMs, VMs whose agent is not Ready and disconnected Arc servers are unreachable."""
        kql = discovery_query(policy)
        if kql is None:
            return DiscoveryResult([])
        subscriptions = list(policy.azure.subscriptions) if policy.azure else []
        found: list[Instance] = []
        unreachable: list[tuple[Instance, str]] = []
        for row in query(self._clients.graph(), kql, subscriptions):
            instance = to_instance(row)
            machine = parse_machine(instance.id)
            if machine is None:
                continue
            problem: str | None
            if machine.arc:
                problem = arc_problem(row)
            else:
                instance, problem = self._discovered_vm(machine, instance, row)
            if problem is None and not os_known(row):
                problem = "OS type not reported; assumed linux"
            found.append(instance)
            if problem is not None:
                unreachable.append((instance, problem))
        return DiscoveryResult(found, unreachable)

    def _discovered_vm(self, machine: Machine, instance: Instance, row: Any) -> tuple[Instance, str | None]:
        power = text(row, "properties", "extended", "instanceView", "powerState", "code").removeprefix("PowerState/")
        if power and power.lower() != "running":
            return instance, f"VM {power.lower()}"
        try:
            view = self._instance_view(machine)
        except HttpResponseError as exc:
            return instance, f"instance view not readable: {describe_error(exc)}"
        domain = at(view, "platformUpdateDomain")
        if instance.availability_set and isinstance(domain, int):
            instance = dataclasses.replace(instance, update_domain=domain)
        state = power_state(view)
        if state != "running":
            return instance, f"VM {state}"
        return instance, agent_problem(view)

    def _instance_view(self, machine: Machine) -> Any:
        return self._compute(machine).virtual_machines.instance_view(machine.resource_group, machine.name)

    # ------------------------------------------------------------ probe

    def probe_agents(self, command: ProbeAgents) -> Progress:
        now = self.clock.now()
        targets = unique(command.targets, lambda i: i.id)
        outcomes: dict[str, Outcome] = {}
        machines = self._parse(targets, outcomes, now)
        rows = self._rows(list(machines.values()))
        for instance in targets:
            machine = machines.get(instance.id)
            if machine is None:
                continue
            row = rows.get(machine.key)
            problem, detail = self._agent(machine, row)
            outcomes[instance.id] = Outcome(id=instance.id, ok=problem is None, detail=problem or detail, at=now)
        return [outcomes[i.id] for i in targets]

    def _agent(self, machine: Machine, row: Any) -> tuple[str | None, str]:
        """(problem, what is fine) of a machine's agent."""
        if machine.arc:
            if row is None:
                return "Arc server not found", ""
            version = text(row, "properties", "agentVersion")
            return arc_problem(row), "Arc agent Connected" + (f" (agent {version})" if version else "")
        power = text(row, "properties", "extended", "instanceView", "powerState", "code").removeprefix("PowerState/")
        if power and power.lower() not in ("running", "starting"):
            return f"VM {power.lower()}", ""
        try:
            view = self._instance_view(machine)
        except ResourceNotFoundError:
            return "VM not found", ""
        except HttpResponseError as exc:
            return f"instance view not readable: {describe_error(exc)}", ""
        state = power_state(view)
        if state != "running":
            return f"VM {state}", ""
        version = agent_version(view)
        return agent_problem(view), "VM agent Ready" + (f" (agent {version})" if version else "")

    # ------------------------------------------------------------ snapshots

    def take_snapshots(self, command: TakeSnapshots) -> Progress:
        now = self.clock.now()
        targets = unique(command.targets, lambda i: i.id)
        outcomes: dict[str, Outcome] = {}
        machines = self._parse(targets, outcomes, now)
        pending: list[str] = []
        for machine in [m for m in machines.values() if m.arc]:
            if self.patch_without_rollback or command.patch_without_rollback:
                detail = "no snapshot: Arc server (no managed disks), patched without rollback"
                outcomes[machine.id] = Outcome(id=machine.id, ok=True, detail=detail, items=[ARC_NO_SNAPSHOT], at=now)
            else:
                detail = "Arc server: no managed disks to snapshot (azure.patch_without_rollback is off)"
                outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=detail, at=now)
        vms = [m for m in machines.values() if not m.arc]
        for members in group(vms, lambda m: (m.subscription.lower(), m.resource_group.lower())).values():
            compute = self._compute(members[0])
            models = _by_key(compute.virtual_machines.list(members[0].resource_group))
            snapshots = {
                text(s, "name").lower(): s for s in compute.snapshots.list_by_resource_group(members[0].resource_group)
            }
            for machine in members:
                outcome = self._snapshot_vm(compute, command, machine, models.get(machine.key), snapshots)
                if outcome is None:
                    pending.append(machine.id)
                else:
                    outcomes[machine.id] = outcome.model_copy(update={"at": now})
        if pending and (command.deadline is None or now < command.deadline):
            done = len(targets) - len(pending)
            retry = now + SNAPSHOT_POLL if command.deadline is None else min(now + SNAPSHOT_POLL, command.deadline)
            return InProgress(retry, note=f"snapshots: {done}/{len(targets)} machines done")
        for machine_id in pending:  # past the deadline (an Update Manager run's cancellation cut-off)
            detail = f"snapshots not complete by the deadline {iso(command.deadline or now)}"
            outcomes[machine_id] = Outcome(id=machine_id, ok=False, detail=detail, at=now)
        return [outcomes[i.id] for i in targets]

    def _snapshot_vm(
        self,
        compute: ComputeManagementClient,
        command: TakeSnapshots,
        machine: Machine,
        vm: Any,
        existing: Mapping[str, Any],
    ) -> Outcome | None:
        """One VM's snapshots, made where missing; None while any is being made."""
        if vm is None:
            return Outcome(id=machine.id, ok=False, detail="VM not found")
        disks = _managed_disks(vm)
        if isinstance(disks, str):
            return Outcome(id=machine.id, ok=False, detail=disks)
        ids: list[str] = []
        waiting = False
        for role, disk_id in disks:
            name = derived_name(machine.name, command.id, disk_id.lower())
            snapshot = existing.get(name.lower())
            if snapshot is None:
                body = {
                    "location": text(vm, "location"),
                    "tags": {
                        TAG_RUN: tag_value(command.run_id),
                        TAG_WAVE: "" if command.wave is None else str(command.wave),
                        TAG_COMMAND: tag_value(command.id),
                        TAG_INSTANCE: tag_value(machine.id),
                        TAG_DISK: role,
                    },
                    "properties": {
                        "incremental": True,
                        "creationData": {"createOption": "Copy", "sourceResourceId": disk_id},
                    },
                }
                try:
                    compute.snapshots.begin_create_or_update(
                        machine.resource_group, name, cm.Snapshot(body), polling=False
                    )
                except HttpResponseError as exc:
                    return Outcome(
                        id=machine.id, ok=False, detail=f"snapshot of the {role} disk failed: {describe_error(exc)}"
                    )
                waiting = True
                continue
            state = text(snapshot, "properties", "provisioningState")
            if state.lower() == "failed":
                return Outcome(id=machine.id, ok=False, detail=f"snapshot {name} of the {role} disk failed")
            percent = at(snapshot, "properties", "completionPercent")
            if state.lower() != "succeeded" or (isinstance(percent, int | float) and percent < 100):
                waiting = True
            ids.append(text(snapshot, "id"))
        if waiting:
            return None
        count = "1 disk" if len(ids) == 1 else f"{len(ids)} disks"
        return Outcome(id=machine.id, ok=True, detail=f"incremental snapshots of {count}", items=ids)

    # ------------------------------------------------------------ install

    def install_patches(self, command: InstallPatches) -> Progress:
        now = self.clock.now()
        targets = unique(command.targets, lambda t: t.instance.id)
        outcomes: dict[str, Outcome] = {}
        machines = self._parse([t.instance for t in targets], outcomes, now)
        duration, clamped = install_duration(command.max_duration)
        deadline_after = duration + INSTALL_MARGIN
        waiting: list[str] = []
        marked: list[_Marked] = []
        if command.maintenance_run:
            # Update Manager installs: nothing is started, what its run installed is reported.
            valid = [t for t in targets if t.instance.id in machines]
            start, _ = self._anchor(command.id, TAG_INSTALL, [machines[t.instance.id] for t in valid], now)
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
        models = self._models([machines[t.instance.id] for t in active])
        for target in active:
            machine = machines[target.instance.id]
            model = models.get(machine.key)
            if model is None:
                outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=f"{machine.kind} not found", at=now)
                continue
            found = read_mark(tags_of(model).get(TAG_INSTALL, ""), command.id)
            if found is None:
                problem = self._start_install(command, target, machine, model, duration, now)
                if problem:
                    outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=problem, at=now)
                else:
                    waiting.append(machine.id)
            elif found[1][:1] == ["failed"]:
                detail = "installPatches was refused: " + "|".join(found[1][1:])
                outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=detail, at=now)
            else:
                marked.append(_Marked(target, machine, found[0]))
        if marked:
            for item, outcome in self._install_progress(command, marked, duration, deadline_after, now).items():
                if outcome is None:
                    waiting.append(item)
                else:
                    note = f" ({clamped})" if clamped and outcome.ok else ""
                    outcomes[item] = outcome.model_copy(update={"at": now, "detail": outcome.detail + note})
        if waiting:
            done = len(targets) - len(waiting)
            return InProgress(now + INSTALL_POLL, note=f"install: {done}/{len(targets)} machines done")
        return [outcomes[t.instance.id] for t in targets]

    def _start_install(
        self,
        command: InstallPatches,
        target: InstallTarget,
        machine: Machine,
        model: Any,
        duration: timedelta,
        now: datetime,
    ) -> str:
        """Mark the machine, then send installPatches; a problem, or '' once sent (or once a
        refusal that may pass, a conflict or a server error, leaves the mark for a later resend)."""
        body = install_body(
            target.instance.os,
            command.classifications,
            command.include,
            command.exclude,
            target.only,
            command.reboot,
            duration,
        )
        if isinstance(body, str):
            return body
        try:
            self._set_tags(machine, model, {TAG_INSTALL: mark(command.id, now)})
        except HttpResponseError as exc:
            return f"could not tag the {machine.kind} with {TAG_INSTALL}: {describe_error(exc)}"
        try:
            self._send_install(machine, body)
        except HttpResponseError as exc:
            if _transient(exc):
                return ""
            reason = describe_error(exc)
            with contextlib.suppress(HttpResponseError):  # else the mark stays: a later execution checks again
                self._set_tags(machine, model, {TAG_INSTALL: mark(command.id, now, "failed", reason)})
            return f"installPatches was refused: {reason}"
        return ""

    def _send_install(self, machine: Machine, body: dict[str, Any]) -> None:
        if machine.arc:
            self._hybrid(machine).machines.begin_install_patches(
                machine.resource_group, machine.name, hm.MachineInstallPatchesParameters(body), polling=False
            )
        else:
            self._compute(machine).virtual_machines.begin_install_patches(
                machine.resource_group, machine.name, cm.VirtualMachineInstallPatchesParameters(body), polling=False
            )

    def _install_progress(
        self,
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
            for row in query(self._clients.graph(), kql, subscriptions):
                runs.setdefault(text(row, "machine"), []).append(row)
        result: dict[str, Outcome | None] = {}
        finished: dict[str, tuple[_Marked, Any]] = {}
        for item in marked:
            deadline = item.start + deadline_after
            own = [
                r
                for r in runs.get(item.machine.key, [])
                if maintenance
                or (
                    (started := parse_time(at(r, "properties", "startDateTime")))
                    and started >= item.start - CLOCK_SLACK
                )
            ]
            own.sort(key=lambda r: parse_time(at(r, "properties", "startDateTime")) or item.start)
            if not own and maintenance:
                detail = f"Update Manager run {maintenance.rsplit('/', 1)[-1]} reported no installation on it"
                missing = Outcome(id=item.machine.id, ok=False, detail=detail)
                result[item.machine.id] = None if now < deadline else missing
                continue
            if not own:
                result[item.machine.id] = self._unseen_install(command, item, duration, deadline, now)
                continue
            run = own[0]
            status = text(run, "properties", "status")
            if status.lower() in RUNNING_INSTALL:
                if now >= deadline:
                    detail = f"installation still {status or 'pending'} after {minutes(deadline_after)}"
                    result[item.machine.id] = Outcome(id=item.machine.id, ok=False, detail=detail)
                else:
                    result[item.machine.id] = None
            elif status.lower() == "succeeded":
                finished[text(run, "id").lower()] = (item, run)
            else:
                result[item.machine.id] = Outcome(id=item.machine.id, ok=False, detail=_run_failure(run))
        if finished:
            patches = self._installed_patches(sorted(finished), subscriptions)
            for run_key, (item, run) in finished.items():
                names = [n for row in patches.get(run_key, []) if (n := installed_name(row, item.target.instance.os))]
                names = list(dict.fromkeys(names))
                count = at(run, "properties", "installedPatchCount")
                ended = parse_time(at(run, "properties", "lastModifiedDateTime")) or now
                if isinstance(count, int) and len(names) < count and now < ended + PATCH_ROWS_GRACE:
                    result[item.machine.id] = None  # the patch rows are not all in Resource Graph yet
                    continue
                result[item.machine.id] = Outcome(
                    id=item.machine.id, ok=True, detail=_run_success(run, names), items=names
                )
        return result

    def _unseen_install(
        self, command: InstallPatches, item: _Marked, duration: timedelta, deadline: datetime, now: datetime
    ) -> Outcome | None:
        """A marked machine with no installation run in Resource Graph. Within START_GRACE it is
        on its way; after that, a VM's instance view says whether an installation started after
        the mark (Resource Graph is behind) or never did (the worker died, or Azure refused with a
        conflict, before installPatches was accepted): then it is sent now."""
        machine = item.machine
        if now < item.start + START_GRACE:
            return None
        if now >= deadline:
            detail = f"no installation run reported since {item.start:%H:%M} UTC (installPatches never started?)"
            return Outcome(id=machine.id, ok=False, detail=detail)
        if machine.arc:
            return None  # Arc servers show no patch status but Resource Graph's: wait for it
        try:
            view = self._instance_view(machine)
        except HttpResponseError as exc:
            return Outcome(id=machine.id, ok=False, detail=f"instance view not readable: {describe_error(exc)}")
        summary = at(view, "patchStatus", "lastPatchInstallationSummary")
        started = parse_time(at(summary, "startTime"))
        if started is not None and started >= item.start - CLOCK_SLACK:
            return None  # it runs; Resource Graph will tell
        body = install_body(
            item.target.instance.os,
            command.classifications,
            command.include,
            command.exclude,
            item.target.only,
            command.reboot,
            duration,
        )
        if isinstance(body, str):
            return Outcome(id=machine.id, ok=False, detail=body)
        try:
            self._send_install(machine, body)
        except HttpResponseError as exc:
            if not _transient(exc):
                return Outcome(id=machine.id, ok=False, detail=f"installPatches was refused: {describe_error(exc)}")
        return None

    def _installed_patches(self, run_keys: Sequence[str], subscriptions: Sequence[str]) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        for chunk in chunks(list(run_keys), IDS_PER_QUERY):
            for row in query(self._clients.graph(), installed_patches_query(chunk), subscriptions):
                found.setdefault(text(row, "run"), []).append(row)
        return found

    # ------------------------------------------------------------ health

    def check_health(self, command: CheckHealth) -> Progress:
        now = self.clock.now()
        targets = unique(command.targets, lambda i: i.id)
        checks = command.checks
        outcomes: dict[str, Outcome] = {}
        machines = self._parse(targets, outcomes, now)
        start, first = self._anchor(command.id, TAG_HEALTH, [machines[i.id] for i in targets if i.id in machines], now)
        deadline = start + checks.timeout
        arc = [m for m in machines.values() if m.arc]
        rows = self._rows(list(machines.values()) if checks.http else arc)
        verdicts: dict[str, Verdict] = {}
        for instance in targets:
            machine = machines.get(instance.id)
            if machine is None:
                continue
            base = self._base_health(machine, rows.get(machine.key))
            verdicts[instance.id] = base.timed(now, deadline, checks.timeout)
        if checks.http:
            self._check_http(targets, machines, rows, checks, verdicts)
        if checks.script is not None:
            self._check_script(command, targets, machines, checks, verdicts, first)
        for instance_id, verdict in verdicts.items():
            verdicts[instance_id] = verdict.timed(now, deadline, checks.timeout)
            if checks.alarms and verdicts[instance_id].state == "pass":
                verdicts[instance_id] = verdicts[instance_id].plus("CloudWatch alarms not checked (AWS only)")
        waiting = [v for v in verdicts.values() if v.state == "wait"]
        if waiting:
            retry = min(now + HEALTH_POLL, deadline) if deadline > now else now + HEALTH_POLL
            reasons = "; ".join(sorted({v.detail for v in waiting}))[:300]
            done = len(targets) - len(waiting)
            return InProgress(retry, note=f"health: {done}/{len(targets)} done; waiting: {reasons}")
        for instance_id, verdict in verdicts.items():
            outcomes[instance_id] = Outcome(id=instance_id, ok=verdict.state == "pass", detail=verdict.detail, at=now)
        return [outcomes[i.id] for i in targets]

    def _anchor(self, command_id: str, tag: str, machines: Sequence[Machine], now: datetime) -> tuple[datetime, bool]:
        """When this command was first executed, and whether that is now (the mark was just
        written): `tag` on the command's first machine (by id) that exists, written there on first
        sight (one write per command, not per machine)."""
        for machine in sorted(machines, key=lambda m: m.key)[:3]:
            try:
                model = self._model(machine)
            except ResourceNotFoundError:
                continue
            found = read_mark(tags_of(model).get(tag, ""), command_id)
            if found is not None:
                return found[0], False
            try:
                self._set_tags(machine, model, {tag: mark(command_id, now)})
            except HttpResponseError:
                return now, False  # the next execution tries again
            return now, True
        return now, False

    def _base_health(self, machine: Machine, row: Any) -> Verdict:
        """Azure's own view: the VM runs, its agent is Ready and its Application Health extension
        (if any) says healthy; an Arc server's agent is Connected."""
        if machine.arc:
            if row is None:
                return Verdict("fail", "Arc server not found")
            problem = arc_problem(row)
            if problem is None:
                return Verdict("pass", "Arc agent Connected")
            status = text(row, "properties", "status").lower()
            return Verdict("fail" if status in ("expired", "error") else "wait", problem)
        try:
            view = self._instance_view(machine)
        except ResourceNotFoundError:
            return Verdict("fail", "VM not found")
        state = power_state(view)
        if state in ("deallocated", "stopped"):
            return Verdict("fail", f"VM is {state}")
        if state != "running":
            return Verdict("wait", f"VM is {state}")
        problem = agent_problem(view)
        if problem is not None:
            return Verdict("wait", problem)
        health = app_health(view)
        if health is None:
            return Verdict("pass", "VM running, VM agent Ready")
        if health != "healthy":
            return Verdict("wait", f"Application Health extension reports {health}")
        return Verdict("pass", "VM running, VM agent Ready, application healthy")

    def _check_http(
        self,
        targets: Sequence[Instance],
        machines: Mapping[str, Machine],
        rows: Mapping[str, Any],
        checks: HealthChecks,
        verdicts: dict[str, Verdict],
    ) -> None:
        passing = [i for i in targets if i.id in verdicts and verdicts[i.id].state == "pass"]
        ips = self._private_ips([machines[i.id] for i in passing], rows)
        for instance in passing:
            answers = []
            for template in checks.http:
                try:
                    url = fill_url(template, instance, ips.get(machines[instance.id].key, ""))
                except UnsafeUrlValueError as exc:  # waiting will not make the value usable
                    verdicts[instance.id] = Verdict("fail", str(exc))
                    break
                try:
                    status = self.http_get(url, self.http_timeout)
                except Exception as exc:  # any failure to get an answer is a failed check
                    verdicts[instance.id] = Verdict("wait", f"GET {url}: {type(exc).__name__}: {exc}"[:300])
                    break
                if not 200 <= status < 300:
                    verdicts[instance.id] = Verdict("wait", f"GET {url}: HTTP {status}")
                    break
                answers.append(str(status))
            else:
                verdicts[instance.id] = verdicts[instance.id].plus(f"HTTP {', '.join(answers)}")

    def _private_ips(self, machines: Sequence[Machine], rows: Mapping[str, Any]) -> dict[str, str]:
        """Each machine's private IP: a VM's primary NIC's primary IP configuration (NICs read in
        one Resource Graph query), an Arc server's first IPv4 address."""
        ips: dict[str, str] = {}
        nic_of: dict[str, str] = {}
        for machine in machines:
            row = rows.get(machine.key)
            if machine.arc:
                ips[machine.key] = private_ip_of_arc(row)
                continue
            nic = primary(items(row, "properties", "networkProfile", "networkInterfaces"))
            if text(nic, "id"):
                nic_of[machine.key] = text(nic, "id").lower()
        if nic_of:
            nics: dict[str, Any] = {}
            subscriptions = sorted({m.subscription for m in machines})
            for chunk in chunks(sorted(set(nic_of.values())), IDS_PER_QUERY):
                for nic in query(self._clients.graph(), nics_query(chunk), subscriptions):
                    nics[text(nic, "id").lower()] = nic
            for key, nic_id in nic_of.items():
                ips[key] = private_ip_of_nic(nics.get(nic_id))
        return ips

    def _check_script(
        self,
        command: CheckHealth,
        targets: Sequence[Instance],
        machines: Mapping[str, Machine],
        checks: HealthChecks,
        verdicts: dict[str, Verdict],
        first: bool,
    ) -> None:
        """The policy's script as a managed Run Command on each machine that passed the checks
        above: exit code 0 is healthy. Started once per command (the Run Command is tagged with
        it), then read until it has finished; on the command's first execution (`first`) there is
        none of it to read yet."""
        assert checks.script is not None
        for instance in targets:
            script = checks.script.windows if instance.os == "windows" else checks.script.linux
            if script is None or instance.id not in verdicts or verdicts[instance.id].state != "pass":
                continue
            machine = machines[instance.id]
            try:
                run = None if first else self._run_command(machine)
                if run is None or tags_of(run).get(TAG_COMMAND) != tag_value(command.id):
                    self._start_run_command(command, instance, machine, script, checks.timeout)
                    verdicts[instance.id] = Verdict("wait", "health script started")
                    continue
            except HttpResponseError as exc:
                verdicts[instance.id] = Verdict("fail", f"health script not run: {describe_error(exc)}")
                continue
            verdicts[instance.id] = _script_verdict(run, verdicts[instance.id])

    def _run_command(self, machine: Machine) -> Any:
        try:
            if machine.arc:
                return self._hybrid(machine).machine_run_commands.get(machine.resource_group, machine.name, RUN_COMMAND)
            return self._compute(machine).virtual_machine_run_commands.get_by_virtual_machine(
                machine.resource_group, machine.name, RUN_COMMAND, expand="instanceView"
            )
        except ResourceNotFoundError:
            return None

    def _start_run_command(
        self, command: CheckHealth, instance: Instance, machine: Machine, script: str, timeout: timedelta
    ) -> None:
        body = {
            "location": instance.region,
            "tags": {TAG_COMMAND: tag_value(command.id), TAG_RUN: tag_value(command.run_id)},
            "properties": {
                "source": {"script": script},
                "asyncExecution": False,
                "timeoutInSeconds": max(30, int(timeout.total_seconds())),
            },
        }
        if machine.arc:
            self._hybrid(machine).machine_run_commands.begin_create_or_update(
                machine.resource_group, machine.name, RUN_COMMAND, hm.MachineRunCommand(body), polling=False
            )
        else:
            self._compute(machine).virtual_machine_run_commands.begin_create_or_update(
                machine.resource_group, machine.name, RUN_COMMAND, cm.VirtualMachineRunCommand(body), polling=False
            )

    # ------------------------------------------------------------ rollback

    def roll_back(self, command: RollBack) -> Progress:
        now = self.clock.now()
        targets = unique(command.targets, lambda t: t.instance.id)
        outcomes: dict[str, Outcome] = {}
        machines = self._parse([t.instance for t in targets], outcomes, now)
        waiting = 0
        for target in targets:
            machine = machines.get(target.instance.id)
            if machine is None:
                continue
            if machine.arc:
                detail = "Arc server: no managed disks, so no snapshot to restore; roll it back by other means"
                outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail=detail, at=now)
                continue
            snapshots = [s for s in target.snapshot_ids if s != ARC_NO_SNAPSHOT]
            if not snapshots:
                outcomes[machine.id] = Outcome(id=machine.id, ok=False, detail="no snapshot to restore from", at=now)
                continue
            wanted = snapshots if command.restore_data_volumes else snapshots[:1]
            outcome = roll_back_vm(self._compute(machine), machine, command, wanted)
            if outcome is None:
                waiting += 1
            else:
                outcomes[machine.id] = outcome.model_copy(update={"at": now})
        if waiting:
            done = len(targets) - waiting
            return InProgress(now + ROLLBACK_POLL, note=f"rollback: {done}/{len(targets)} machines restored")
        return [outcomes[t.instance.id] for t in targets]

    # ------------------------------------------------------------ compliance and maintenance watch

    def start_assessment(self, instances: Sequence[Instance], token: str) -> AssessmentStarted:
        """`PatchAssessor`: assessPatches per machine, once per token (compliance.py)."""
        return compliance.start_assessment(self, instances, token)

    def patch_states(self, instances: Sequence[Instance]) -> list[PatchState]:
        """`PatchAssessor`: the latest assessments, from Resource Graph in bulk (compliance.py)."""
        return compliance.patch_states(self, instances)

    def upcoming_maintenance(self, policy: Policy, instances: Sequence[Instance], now: datetime) -> WatchResult:
        """`MaintenanceSource`: platform maintenance on the machines (maintenance_watch.py)."""
        return maintenance_watch.upcoming_maintenance(self, policy, instances, now)

    # ------------------------------------------------------------ shared reads and writes

    def _parse(self, instances: Iterable[Instance], outcomes: dict[str, Outcome], now: datetime) -> dict[str, Machine]:
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

    def _rows(self, machines: Sequence[Machine]) -> dict[str, Any]:
        """The machines' Resource Graph rows by lower-case id, 400 ids a query."""
        rows: dict[str, Any] = {}
        keys = sorted({m.key for m in machines})
        subscriptions = sorted({m.subscription for m in machines})
        for chunk in chunks(keys, IDS_PER_QUERY):
            for row in query(self._clients.graph(), machines_query(chunk), subscriptions):
                rows[text(row, "id").lower()] = row
        return rows

    def _models(self, machines: Sequence[Machine]) -> dict[str, Any]:
        """The machines' ARM models (tags, disks) by lower-case id: one listing per resource group."""
        models: dict[str, Any] = {}
        for members in group(machines, lambda m: (m.subscription.lower(), m.resource_group.lower(), m.arc)).values():
            first = members[0]
            try:
                if first.arc:
                    listing: Iterable[Any] = self._hybrid(first).machines.list_by_resource_group(first.resource_group)
                else:
                    listing = self._compute(first).virtual_machines.list(first.resource_group)
                models.update(_by_key(listing))
            except ResourceNotFoundError:
                continue  # no such resource group: its machines are not found
        return models

    def _model(self, machine: Machine) -> Any:
        if machine.arc:
            return self._hybrid(machine).machines.get(machine.resource_group, machine.name)
        return self._compute(machine).virtual_machines.get(machine.resource_group, machine.name)

    def _set_tags(self, machine: Machine, model: Any, updates: Mapping[str, str]) -> None:
        """Add tags to a machine, keeping its others (a tags PATCH replaces them all)."""
        body = {"tags": {**tags_of(model), **updates}}
        if machine.arc:
            self._hybrid(machine).machines.update(machine.resource_group, machine.name, hm.MachineUpdate(body))
        else:
            self._compute(machine).virtual_machines.begin_update(
                machine.resource_group, machine.name, cm.VirtualMachineUpdate(body), polling=False
            )


# ---------------------------------------------------------------- helpers


def _by_key(resources: Iterable[Any]) -> dict[str, Any]:
    return {text(r, "id").lower(): r for r in resources}


def _managed_disks(vm: Any) -> list[tuple[str, str]] | str:
    """[(role, disk id)] of a VM, the OS disk first, then the data disks by LUN; or why not."""
    os_disk = at(vm, "properties", "storageProfile", "osDisk")
    os_id = text(os_disk, "managedDisk", "id")
    if not os_id:
        return "the OS disk is not a managed disk (unmanaged VHD): no snapshot possible"
    disks = [("os", os_id)]
    data = sorted(items(vm, "properties", "storageProfile", "dataDisks"), key=lambda d: at(d, "lun") or 0)
    for disk in data:
        disk_id = text(disk, "managedDisk", "id")
        if not disk_id:
            return f"data disk at LUN {at(disk, 'lun')} is not a managed disk: no snapshot possible"
        disks.append((f"lun{at(disk, 'lun')}", disk_id))
    return disks


def _transient(exc: HttpResponseError) -> bool:
    """A refusal that may pass: a conflict with another operation, a server error, no answer."""
    status = exc.status_code
    return status is None or status == 409 or status >= 500


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
    count = "1 patch" if len(names) == 1 else f"{len(names)} patches"
    reboot = text(run, "properties", "rebootStatus")
    return f"{count} installed" + (f", reboot {reboot}" if reboot else "")


def _script_verdict(run: Any, verdict: Verdict) -> Verdict:
    view = at(run, "properties", "instanceView")
    state = text(view, "executionState")
    code = at(view, "exitCode")
    if state.lower() in ("", "pending", "running"):
        return Verdict("wait", "health script running")
    if state.lower() == "succeeded" and (code is None or code == 0):
        return verdict.plus("script exit 0")
    output = (text(view, "error") or text(view, "output")).strip()
    detail = f"health script {state.lower()}" + (f", exit code {code}" if code is not None else "")
    return Verdict("fail", detail + (f": {output[-200:]}" if output else ""))
