"""Health checks after patching: Azure's own view (power, VM agent, Application Health; an Arc
server's agent), the policy's HTTP probes and its script as a managed Run Command
(`patchpilot-health`, tagged with the command id). The check's start is the tag
PatchPilotHealthCheck=<command id>|<UTC start> on the command's first machine.

A VM with a script that Resource Graph shows running, and shows with no Application Health
extension (one query for the extensions of the VMs whose script is still to start), has its script
started without an instance view read: its Run Command is tagged BASE_UNREAD. The VM agent runs the
script, so the agent's Ready state needs no read of its own: the Run Command of a VM whose agent is
not Ready stays Pending (docs/azure-deploy.md, "ARM requests per VM"). Any other VM (with the
extension, not shown running, its extension query failed, no script) has its own view read first,
once per execution while the check waits for it (an Arc server: its agent's status in its Resource
Graph row); its script is started only once that view passes, and its Run Command is tagged with
what the view said (BASE_PASS without the extension).

Once a Run Command tagged BASE_PASS or BASE_UNREAD has finished with exit 0, the VM agent has just
run the script to its end on a running VM: that is the VM's own view at the script's end, and no
instance view is read again. Resource Graph is only asked whether it still sees the VM running: a
VM it does not (or that it does not report) has its instance view read, so a stale row can only
send a VM to the exact read. (A VM that stops after its script's end and before the poll, while
Resource Graph still shows it running, passes, as one that stops just after an instance view read
always did: the window is a poll, not a request.) A BASE_UNREAD script that fails, or has not
finished by the check's deadline, has the VM's instance view read then, and only then: its verdict
comes first, as when it is read before the script (a VM agent not Ready, a VM stopped, says why a
script stayed Pending)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from patchpilot.adapters.health import HttpProbe, UnsafeUrlValueError, fill_url
from patchpilot.batching import unique
from patchpilot.engine.messages import (
    CheckHealth,
    Outcome,
)
from patchpilot.inventory import Instance
from patchpilot.policy.model import HealthChecks
from patchpilot.ports import InProgress, Progress
from patchpilot.verdict import Verdict

from ..access import (
    TAG_COMMAND,
    TAG_HEALTH,
    TAG_HEALTH_BASE,
    AzureAccess,
    Machine,
    agent_problem,
    arc_problem,
    at,
    describe_error,
    items,
    power_state,
    tag_value,
    tags_of,
    text,
    transient,
)
from .run_command import read_run_command, start_run_command

if TYPE_CHECKING:
    pass

HEALTH_POLL = timedelta(minutes=2)
RUN_COMMAND = "patchpilot-health"
BASE_PASS = "VM running, VM agent Ready"  # a VM's own view passing, with no Application Health extension
# A script started with no instance view read: Resource Graph showed the VM running and no Application
# Health extension on it. Its run, finished with exit 0, vouches for what BASE_PASS says.
BASE_UNREAD = "Resource Graph: VM running, no Application Health extension"
VOUCHING_BASES = (BASE_PASS, BASE_UNREAD)


def app_health(view: Any) -> str | None:
    """The Application Health extension's verdict (healthy, unhealthy, initializing, unknown) from
    the instance view's vmHealth or the extension's substatus; None without the extension."""
    code = text(view, "vmHealth", "status", "code")
    if code.startswith("HealthState/"):
        return code.split("/", 1)[1].lower()
    for extension in items(view, "extensions"):
        if "applicationhealth" not in (text(extension, "type") + text(extension, "name")).lower():
            continue
        for status in items(extension, "substatuses"):
            found = text(status, "code")
            if "ApplicationHealthState/" in found:
                return found.rsplit("/", 1)[1].lower()
        return "unknown"
    return None


def primary(entries: Sequence[Any]) -> Any:
    """The entry marked primary (NICs, IP configurations), else the first."""
    for entry in entries:
        if at(entry, "properties", "primary") is True:
            return entry
    return entries[0] if entries else None


def private_ip_of_nic(nic: Any) -> str:
    config = primary(items(nic, "properties", "ipConfigurations"))
    return text(config, "properties", "privateIPAddress")


def private_ip_of_arc(row: Any) -> str:
    for interface in items(row, "properties", "networkProfile", "networkInterfaces"):
        for address in items(interface, "ipAddresses"):
            if text(address, "ipAddressVersion") in ("", "IPv4") and text(address, "address"):
                return text(address, "address")
    return ""


def check_health(access: AzureAccess, command: CheckHealth, http: HttpProbe) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda i: i.id)
    checks = command.checks
    outcomes: dict[str, Outcome] = {}
    machines = access.parse(targets, outcomes, now)
    start, first = access.anchor(command.id, TAG_HEALTH, [machines[i.id] for i in targets if i.id in machines], now)
    deadline = start + checks.timeout
    runs = {} if first else _read_scripts(access, targets, machines, checks)
    vouched = {key for key, run in runs.items() if _vouches(run, command)}
    unread = {key for key, run in runs.items() if key not in vouched and _started_unread(run, command)}
    to_start = [
        m
        for i in targets
        if (m := machines.get(i.id)) is not None and not m.arc and checks.script_for(i.os) is not None
        if not _ours(runs.get(m.key), command)
    ]
    read = [m for m in machines.values() if checks.http or m.arc or m.key in vouched]
    rows = access.rows(read) if read else {}
    unread_start = _may_start_unread(access, to_start, rows)
    bases: dict[str, Verdict] = {}
    verdicts: dict[str, Verdict] = {}
    for instance in targets:
        machine = machines.get(instance.id)
        if machine is None:
            continue
        key = machine.key
        if key in vouched and _graph_says_running(rows.get(key)):
            bases[instance.id] = Verdict("pass", BASE_PASS)  # the script's run is the VM's own view
        elif key in unread_start or (key in unread and not _failing(runs[key], now, deadline)):
            bases[instance.id] = Verdict("pass", BASE_UNREAD)  # the script's run will say
        else:
            bases[instance.id] = _base_health(access, machine, rows.get(key))
        verdicts[instance.id] = bases[instance.id].timed(now, deadline, checks.timeout)
    if checks.http:
        _check_http(access, targets, machines, rows, checks, verdicts, http)
    if checks.script is not None:
        _check_script(access, command, targets, machines, checks, verdicts, bases, runs, first)
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


def _may_start_unread(access: AzureAccess, machines: Sequence[Machine], rows: Mapping[str, Any]) -> set[str]:
    """Which of these VMs (whose script is still to start) may have it started without an instance
    view read: Resource Graph shows them running and shows no Application Health extension on them.
    Their rows are read here unless `rows` has them; none when a query fails (each then has its
    instance view read first, as before)."""
    if not machines:
        return set()
    try:
        missing = [m for m in machines if m.key not in rows]
        found = {**rows, **(access.rows(missing) if missing else {})}
        running = [m for m in machines if _graph_says_running(found.get(m.key))]
        with_extension = access.app_health_vms(running) if running else set()
    except HttpResponseError:
        return set()
    return {m.key for m in running if m.key not in with_extension}


def _read_scripts(
    access: AzureAccess, targets: Sequence[Instance], machines: Mapping[str, Machine], checks: HealthChecks
) -> dict[str, Any]:
    """The health script's Run Command of each machine with a script for its OS, by lower-case
    id: the run, None when there is none, or the error that reading it raised (reported only if
    the machine's own view passes, as when it is read after it)."""
    runs: dict[str, Any] = {}
    for instance in targets:
        machine = machines.get(instance.id)
        if machine is None or checks.script_for(instance.os) is None:
            continue
        try:
            runs[machine.key] = read_run_command(access, machine, RUN_COMMAND)
        except HttpResponseError as exc:
            runs[machine.key] = exc
    return runs


def _ours(run: Any, command: CheckHealth) -> bool:
    """Whether a VM's health script run (or the error reading it) is this command's: one that need
    not, or cannot, be started again."""
    if isinstance(run, HttpResponseError):
        return True
    return run is not None and tags_of(run).get(TAG_COMMAND) == tag_value(command.id)


def _started_unread(run: Any, command: CheckHealth) -> bool:
    """This command's run, started with no instance view read (BASE_UNREAD)."""
    return (
        _ours(run, command)
        and not isinstance(run, HttpResponseError)
        and tags_of(run).get(TAG_HEALTH_BASE) == BASE_UNREAD
    )


def _succeeded(run: Any) -> bool:
    view = at(run, "properties", "instanceView")
    code = at(view, "exitCode")
    return text(view, "executionState").lower() == "succeeded" and (code is None or code == 0)


def _failing(run: Any, now: datetime, deadline: datetime) -> bool:
    """A run that ended other than with exit 0, or has not ended by the check's deadline: the
    failure path, on which a run started unread has the VM's own view read to say why."""
    state = text(at(run, "properties", "instanceView"), "executionState").lower()
    return now >= deadline or state not in ("", "pending", "running")


def _vouches(run: Any, command: CheckHealth) -> bool:
    """Whether a VM's health script run stands for its own view: this command's, started when that
    view passed with no Application Health extension (BASE_PASS) or when Resource Graph showed the
    VM running with no such extension (BASE_UNREAD), finished with exit 0."""
    if not _ours(run, command) or isinstance(run, HttpResponseError):
        return False
    return tags_of(run).get(TAG_HEALTH_BASE) in VOUCHING_BASES and _succeeded(run)


def _graph_says_running(row: Any) -> bool:
    """Resource Graph reports the VM running (not: stopped, moving, or no power state reported)."""
    power = text(row, "properties", "extended", "instanceView", "powerState", "code").removeprefix("PowerState/")
    return power.lower() == "running"


def _base_health(access: AzureAccess, machine: Machine, row: Any) -> Verdict:
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
        view = access.instance_view(machine)
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
    access: AzureAccess,
    targets: Sequence[Instance],
    machines: Mapping[str, Machine],
    rows: Mapping[str, Any],
    checks: HealthChecks,
    verdicts: dict[str, Verdict],
    http: HttpProbe,
) -> None:
    passing = [i for i in targets if i.id in verdicts and verdicts[i.id].state == "pass"]
    ips = _private_ips(access, [machines[i.id] for i in passing], rows)
    for instance in passing:
        answers = []
        ip = ips.get(machines[instance.id].key, "")
        if not ip and any("{private_ip}" in template for template in checks.http):
            # Not reported (an assumed Resource Graph column): unknown, so the check waits and, at
            # its deadline, fails naming why; it is never refused at once as an unsafe URL value.
            verdicts[instance.id] = Verdict("wait", "private IP not reported by Resource Graph")
            continue
        for template in checks.http:
            try:
                url = fill_url(template, instance, ip)
            except UnsafeUrlValueError as exc:  # waiting will not make the value usable
                verdicts[instance.id] = Verdict("fail", str(exc))
                break
            try:
                status = http.get(url, http.timeout)
            except Exception as exc:  # any failure to get an answer is a failed check
                verdicts[instance.id] = Verdict("wait", f"GET {url}: {type(exc).__name__}: {exc}"[:300])
                break
            if not 200 <= status < 300:
                verdicts[instance.id] = Verdict("wait", f"GET {url}: HTTP {status}")
                break
            answers.append(str(status))
        else:
            verdicts[instance.id] = verdicts[instance.id].plus(f"HTTP {', '.join(answers)}")


def _private_ips(access: AzureAccess, machines: Sequence[Machine], rows: Mapping[str, Any]) -> dict[str, str]:
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
        nics = access.nics(nic_of.values(), sorted({m.subscription for m in machines}))
        for key, nic_id in nic_of.items():
            ips[key] = private_ip_of_nic(nics.get(nic_id))
    return ips


def _check_script(
    access: AzureAccess,
    command: CheckHealth,
    targets: Sequence[Instance],
    machines: Mapping[str, Machine],
    checks: HealthChecks,
    verdicts: dict[str, Verdict],
    bases: Mapping[str, Verdict],
    runs: Mapping[str, Any],
    first: bool,
) -> None:
    """The policy's script as a managed Run Command on each machine that passed the checks
    above: exit code 0 is healthy. Started once per command (the Run Command is tagged with
    it, and with the machine's own view then), then read until it has finished (`runs`, read
    before the checks above); on the command's first execution (`first`) there is none of it
    to read yet."""
    for instance in targets:
        script = checks.script_for(instance.os)
        if script is None or instance.id not in verdicts or verdicts[instance.id].state != "pass":
            continue
        machine = machines[instance.id]
        try:
            run = None if first else runs.get(machine.key)
            if isinstance(run, HttpResponseError):
                raise run
            if not _ours(run, command):
                start_run_command(
                    access,
                    machine,
                    instance,
                    RUN_COMMAND,
                    script,
                    checks.timeout,
                    command.id,
                    command.run_id,
                    {TAG_HEALTH_BASE: bases[instance.id].detail},
                )
                verdicts[instance.id] = Verdict("wait", "health script started")
                continue
        except HttpResponseError as exc:
            # A conflict (the VM busy: an install's reboot may still run when its result is in)
            # or a server error may pass: the next poll sends it again, the deadline bounds it.
            detail = f"health script not run: {describe_error(exc)}"
            verdicts[instance.id] = Verdict("wait" if transient(exc) else "fail", detail)
            continue
        verdicts[instance.id] = _script_verdict(run, verdicts[instance.id])


def _script_verdict(run: Any, verdict: Verdict) -> Verdict:
    view = at(run, "properties", "instanceView")
    state = text(view, "executionState")
    code = at(view, "exitCode")
    if state.lower() == "pending":  # the VM agent has not started it (not Ready, or not yet)
        return Verdict("wait", "health script pending: not started by the VM agent yet")
    if state.lower() in ("", "running"):
        return Verdict("wait", "health script running")
    if state.lower() == "succeeded" and (code is None or code == 0):
        return verdict.plus("script exit 0")
    output = (text(view, "error") or text(view, "output")).strip()
    detail = f"health script {state.lower()}" + (f", exit code {code}" if code is not None else "")
    return Verdict("fail", detail + (f": {output[-200:]}" if output else ""))
