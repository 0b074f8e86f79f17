"""Benchmark: the Azure Resource Manager requests of a whole run over 500 VMs.

The Azure fleet adapter (`AzureFleet`, with the real azure-mgmt clients) discovers the fleet and
runs one patch run end to end through the one imperative shell (`Service`) on the SQLite run
store and queue, on virtual time: every command is redelivered at the `retry_at` it asks for, as
the Storage Queue would, through soaks and polls. Behind the clients' HTTP transport is the fake
ARM of tests/fake_arm.py with the stateful Compute, Hybrid Compute and Resource Graph model of
tests/fake_azure_compute.py. Three production VMs fail their health script once patched and are
rolled back (disk from snapshot, deallocate, swap, start).

Every ARM request is counted by operation (method and path, names replaced by {}), polling
included. Snapshots are one PUT per managed disk by design (an incremental snapshot per disk; two
disks per VM here). The figure: ARM requests per VM beyond those snapshot writes, discovery and
polling included, with its target (issue 17: TARGET_BEYOND_SNAPSHOTS) beside it; it exits 1 when
the target is missed. docs/azure-deploy.md ("ARM requests per VM") names each per-VM request that
remains. Figures go to bench/results/azure_calls.json.

With `--wake`, the deployment's wake-ups are on (PATCHPILOT_WAKE_SUBSCRIPTION, as main.bicep sets
it once the Event Grid subscription exists): an event wakes a step of one machine only
(patchpilot/wakeups.py: the canary wave's, the rechecks after a rollback), whose snapshots the fleet
polls as a fallback only (adapters/azure/fleet WOKEN_POLLS), and the end of each ARM operation the fake models reaches
the worker's waker `EVENT_DELAY` after the fake completes it, as the subscription's system topic
would send it (the documented ResourceWriteSuccess / ResourceActionSuccess event,
tests/events/azure-published/, with the operation's subject; only VM and snapshot subjects, as the
topic's filter passes them: a rollback's disk writes send none; a VM's tag writes, PatchPilot's
marks, send theirs, which the reader drops). Both variants report, per step of
each wave, the time from the fake finishing the last operation of that PatchPilot command to the
engine moving on (the worker applying its result). Figures go to bench/results/azure_calls_woken.json.

With `--spread`, the fake's Run Command scripts (health checks) end 0 to 90 s after one another
(by a hash of their id) instead of all at once, as scripts on real VMs do: each 15-second window
of their ends woke the health check to a poll that read every VM's Run Command again, before the
wake-ups were kept to steps of one machine. Figures go to bench/results/azure_calls[_woken]_spread.json.
With `--spread-all`, besides, the installs end 0 to 20 minutes apart and the snapshot writes 0 to 2
minutes apart: the steps whose polls are bulk reads (Resource Graph, listings per resource group),
whose wake-ups per window would add up too. Figures go to
bench/results/azure_calls[_woken]_spread_all.json.

    PYTHONPATH=shared python bench/bench_azure_calls.py [--wake] [--spread | --spread-all]
"""

from __future__ import annotations

import copy
import json
import re
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from clocks import ManualClock  # noqa: E402
from due_events import DueEvents, record_applied  # noqa: E402
from fake_arm import FakeArm, Request, Response  # noqa: E402
from fake_azure_compute import SUB, FakeAzureCompute, Patch  # noqa: E402
from results_file import write_results  # noqa: E402

from patchpilot.adapters.azure.clients import AzureClients  # noqa: E402
from patchpilot.adapters.azure.fleet import AzureFleet  # noqa: E402
from patchpilot.adapters.azure.wake_events import SNAPSHOT_PATH, VM_PATH, read_event  # noqa: E402
from patchpilot.adapters.local.sqlite_queue import SqliteQueue  # noqa: E402
from patchpilot.adapters.local.sqlite_store import SqliteRunStore  # noqa: E402
from patchpilot.app.waker import Waker  # noqa: E402
from patchpilot.engine.messages import Notify  # noqa: E402
from patchpilot.engine.run import Run  # noqa: E402
from patchpilot.policy import parse_policy  # noqa: E402
from patchpilot.service import Service  # noqa: E402

VMS = 500
BROKEN = 3  # production VMs whose health script fails once patched
RESOURCE_GROUPS = ("rg-web", "rg-api", "rg-batch", "rg-data", "rg-edge")
TARGET_BEYOND_SNAPSHOTS = 5.0  # ARM requests per VM beyond the snapshot PUTs (one per disk): issue 17
START = datetime(2026, 12, 12, 1, 0, tzinfo=UTC)
WAKE = "--wake" in sys.argv
SPREAD_ALL = "--spread-all" in sys.argv  # and its installs 0-20 min apart, its snapshot writes 0-2 min
SPREAD = SPREAD_ALL or "--spread" in sys.argv  # the fake's Run Command scripts end 0-90 s apart, not all at once
# With --spread-all: how far apart the ends of the operations on these paths (lower-case) may be.
SPREAD_ALL_S = {"/installpatches": 1200, "/snapshots/": 120}
EVENT_DELAY = timedelta(seconds=5)  # from the fake completing an operation to its event reaching the waker
PUBLISHED = HERE.parent / "tests" / "events" / "azure-published"
_VM_ITSELF = re.compile(r"/providers/Microsoft\.Compute/virtualMachines/[^/]+$", re.IGNORECASE)
FLEET_METHODS = (
    "probe_agents",
    "take_snapshots",
    "install_patches",
    "check_health",
    "run_hook",
    "roll_back",
    "start_machines",
    "return_machines",
)

POLICY = """
name: weu-monthly
rings:
  - {name: staging, select: {tags: {Environment: staging, PatchPilot: managed}}, soak: 1h}
  - {name: production, select: {tags: {Environment: production, PatchPilot: managed}}}
rollout: {mode: concurrent_zones, disruption_budget: "50%", canary: 1, max_failures: 3}
reboot: if_required
health:
  script: {linux: "curl -fsS http://localhost/health", windows: "Invoke-WebRequest http://localhost/health"}
  timeout: 10m
azure: {subscriptions: [00000000-0000-0000-0000-000000000001], locations: [westeurope]}
"""

OPENSSL = Patch("openssl", "Security", version="3.0.13-1")
KERNEL = Patch("kernel", "Critical", version="6.1.90-1")
KB_CU = Patch("2026-12 Cumulative Update", "Security", kb="5034441")
KB_NET = Patch("2026-12 .NET Update", "Security", kb="5034442")


class Quiet:
    def notify(self, command: Notify) -> None:
        pass


def launch(azure: FakeAzureCompute) -> None:
    """500 VMs in five resource groups over three zones, an OS and a data disk each; 5% staging,
    30% Windows; the first BROKEN production Linux VMs of different zones break when patched."""
    broken = 0
    for n in range(VMS):
        environment = "staging" if n % 40 in (0, 13) else "production"
        windows = n % 10 in (3, 7, 9)
        zone = str(n % 3 + 1)
        breaks = environment == "production" and not windows and broken < BROKEN and zone == str(broken + 1)
        broken += breaks
        azure.add_vm(
            f"vm-{n:03d}",
            rg=RESOURCE_GROUPS[n % len(RESOURCE_GROUPS)],
            zone=zone,
            os="Windows" if windows else "Linux",
            tags={"Environment": environment, "PatchPilot": "managed", "Team": "web"},
            available=[KB_CU, KB_NET] if windows else [OPENSSL, KERNEL],
            breaks_when_patched=breaks,
            # Not a multiple of the 5-minute install poll: a poll landing on the very second the fake
            # ends the installs would see it before any event could (real installs end at any second).
            install_minutes=24,
        )


class ArmEvents:
    """The ends of the fake's operations: each change the fake schedules (a snapshot made, an
    install or a script finished, a VM deallocated or started) is recorded with the request that
    scheduled it and the PatchPilot command the fleet was executing, and becomes, `EVENT_DELAY`
    after it, the Event Grid event the subscription's system topic would send (none for a subject
    its filter does not pass: a rollback's disks)."""

    def __init__(self, arm: FakeArm, azure: FakeAzureCompute, fleet: AzureFleet, clock: ManualClock) -> None:
        self.clock = clock
        self.due = DueEvents()
        self.ops: dict[str, list[tuple[datetime, datetime]]] = {}  # command id -> (request, end) per operation
        (self.sample,) = json.loads((PUBLISHED / "resource_action_success.json").read_text())
        self._request: Request | None = None
        self._command = ""
        dispatch, schedule = arm._dispatch, azure.at

        def dispatching(request: Request) -> Response:
            self._request = request
            try:
                response = dispatch(request)
            finally:
                self._request = None
            if request.method == "PATCH" and _VM_ITSELF.search(request.path) and response.status < 300:
                self._event(request, clock.now())  # a tag write (a command's mark), applied at once
            return response

        def scheduling(delay: timedelta, change: Callable[[], None]) -> None:
            path = self._request.path.lower() if self._request is not None else ""
            if SPREAD and "/runcommands/" in path:
                delay += timedelta(seconds=zlib.crc32(path.encode()) % 91)
            for part, apart in SPREAD_ALL_S.items() if SPREAD_ALL else ():
                if part in path and self._request is not None and self._request.method in ("PUT", "POST"):
                    delay += timedelta(seconds=zlib.crc32(path.encode()) % apart)
            schedule(delay, change)
            if self._request is not None:
                self._ended(self._request, clock.now(), clock.now() + delay)

        arm._dispatch = dispatching  # type: ignore[method-assign]
        azure.at = scheduling  # type: ignore[method-assign]
        for name in FLEET_METHODS:
            setattr(fleet, name, self._executing(getattr(fleet, name)))

    def _executing(self, method: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def call(command: Any) -> Any:
            self._command = command.id
            try:
                return method(command)
            finally:
                self._command = ""

        return call

    def _ended(self, request: Request, started: datetime, ended: datetime) -> None:
        self.ops.setdefault(self._command, []).append((started, ended))
        self._event(request, ended)

    def _event(self, request: Request, ended: datetime) -> None:
        subject = re.sub(r"/(installPatches|deallocate|start|powerOff)$", "", request.path, flags=re.IGNORECASE)
        if VM_PATH.lower() not in subject.lower() and SNAPSHOT_PATH.lower() not in subject.lower():
            return  # the topic's filter passes VM and snapshot subjects only
        kind = "Action" if request.method == "POST" else "Write"
        found = re.search(r"/providers/(Microsoft\.Compute/[^/]+)/[^/]+(?:/(runCommands)/[^/]+)?$", subject)
        resource_type = "/".join(part for part in (found[1], found[2]) if part) if found else "?"
        verb = request.path.rsplit("/", 1)[-1] if kind == "Action" else ""
        event = copy.deepcopy(self.sample)
        event.update(
            subject=subject,
            eventType=f"Microsoft.Resources.Resource{kind}Success",
            eventTime=(ended + EVENT_DELAY).isoformat().replace("+00:00", "Z"),
        )
        operation = f"{resource_type}/{verb}/action" if verb else f"{resource_type}/write"
        event["data"].update(resourceUri=subject, operationName=operation, subscriptionId=SUB)
        self.due.add(ended + EVENT_DELAY, event)

    def next_due(self) -> datetime | None:
        return self.due.next_due()

    def deliver(self, waker: Waker) -> int:
        """Hand the waker every event due now; how many."""
        now, delivered = self.clock.now(), 0
        for event in self.due.pop_due(now):
            waker.wake(read_event(event, now))
            delivered += 1
        return delivered

    def finished(self, command_id: str) -> datetime | None:
        """When the fake completed the last operation of a PatchPilot command."""
        ops = self.ops.get(command_id)
        return max(end for _, end in ops) if ops else None


class OneRun:
    """The waker's view of the runs under way (the SQLite store keeps no index of them): this one."""

    def __init__(self, store: SqliteRunStore, run_id: str) -> None:
        self.store, self.run_id = store, run_id

    def active_run_ids(self) -> list[str]:
        return [self.run_id]

    def load(self, run_id: str) -> Run:
        return self.store.load(run_id)


def main() -> None:
    policy = parse_policy(POLICY)
    clock = ManualClock(START)
    arm = FakeArm(clock)
    azure = FakeAzureCompute(arm)
    launch(azure)
    clients = AzureClients(arm.credential, transport=arm.transport(), polling_interval=0, retry_backoff_factor=0)
    fleet = AzureFleet(clients, clock, http_get=lambda url, timeout: 200, woken_subscription=SUB if WAKE else None)
    events = ArmEvents(arm, azure, fleet, clock)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "state.db"
        queue = SqliteQueue(db, clock)
        store = SqliteRunStore(db)
        service = Service(store=store, queue=queue, fleet=fleet, notifier=Quiet(), clock=clock)
        waker = Waker(lambda: OneRun(store, "bench"), lambda: queue, clock)
        applied = record_applied(service, clock)
        found = fleet.discover(policy)
        discovery = len(arm.calls)
        service.start("bench", policy, found.instances)
        deliveries = woken = 0
        for _ in range(100_000):  # bounded: a run that never ends is a failed benchmark
            batch = queue.receive(10)
            if not batch:
                due, event_due = queue.next_due(), events.next_due() if WAKE else None
                if due is None and event_due is None:
                    break
                if event_due is not None and (due is None or event_due <= due):
                    clock.set(max(event_due, clock.now()))
                    woken += events.deliver(waker)
                    continue
                assert due is not None
                clock.set(max(due, clock.now()))
                continue
            for delivery in batch:
                deliveries += 1
                service.handle(delivery)
        run = service.store.load("bench")
        dead = len(queue.dead_letters())
    seconds = time.perf_counter() - began
    waits = step_waits(run, events, applied)

    counts = arm.count()
    size = sum(1 for r in run.records() if r.state != "excluded")
    total = sum(counts.values())
    snapshots = sum(n for op, n in counts.items() if op.startswith("PUT") and op.endswith("/snapshots/{}"))
    beyond = (total - snapshots) / size
    throttled = sum(1 for c in arm.calls if c.status == 429)
    by_step = Counter(_step(op) for op in counts.elements())

    print(f"a run of {size} VMs: {run.status} ({run.reason}); {run.summary()}")
    print(f"{len(run.waves)} waves, {deliveries} deliveries, {dead} dead letters, virtual {clock.now() - START}")
    print(f"\n{'operation':<104}{'requests':>9}{'per VM':>9}")
    for operation, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"{operation:<104}{n:>9}{n / size:>9.3f}")
    print(f"{'all ARM requests':<104}{total:>9}{total / size:>9.3f}")
    print(f"  of which discovery: {discovery} ({discovery / size:.3f} per VM); throttled: {throttled}")
    print("  by step: " + ", ".join(f"{step} {n / size:.2f}" for step, n in sorted(by_step.items())))
    met = beyond <= TARGET_BEYOND_SNAPSHOTS
    print(
        f"\nARM requests per VM beyond the snapshot writes: {beyond:.3f} "
        f"(target <= {TARGET_BEYOND_SNAPSHOTS:g}: {'met' if met else 'MISSED'})"
    )
    print(f"wall time {seconds:.1f} s")
    waited_by_step: dict[str, list[float]] = {}
    for row in waits:
        waited_by_step.setdefault(row["step"], []).append(row["wait_s"])
    said = f"{woken} ARM events to the waker" if WAKE else "none (without --wake): the short polls"
    print(f"\nwake-ups: {said}; from the fake's last operation ending to the engine moving on, per step:")
    for step, waited in waited_by_step.items():
        print(
            f"  {step:<16} max {max(waited):6.0f} s  mean {sum(waited) / len(waited):6.0f} s  over {len(waited)} waves"
        )

    figures = {
        "vms": size,
        "status": run.status,
        "summary": run.summary(),
        "waves": len(run.waves),
        "deliveries": deliveries,
        "dead_letters": dead,
        "seconds": round(seconds, 1),
        "requests": dict(sorted(counts.items())),
        "requests_per_vm": {op: round(n / size, 3) for op, n in sorted(counts.items())},
        "requests_per_vm_by_step": {step: round(n / size, 3) for step, n in sorted(by_step.items())},
        "discovery_requests": discovery,
        "all_requests": total,
        "all_requests_per_vm": round(total / size, 3),
        "requests_per_vm_beyond_snapshot_puts": round(beyond, 3),
        "target_requests_per_vm_beyond_snapshot_puts": TARGET_BEYOND_SNAPSHOTS,
        "requests_per_vm_beyond_snapshot_writes": round(beyond, 3),
        "target_requests_per_vm_beyond_snapshot_writes": TARGET_BEYOND_SNAPSHOTS,
        "met": met,
        "wake_ups": WAKE,
        "run_command_ends_spread_s": 90 if SPREAD else 0,
        "install_ends_spread_s": SPREAD_ALL_S["/installpatches"] if SPREAD_ALL else 0,
        "snapshot_ends_spread_s": SPREAD_ALL_S["/snapshots/"] if SPREAD_ALL else 0,
        "arm_events": woken,
        "event_delay_s": EVENT_DELAY.total_seconds(),
        "virtual_duration_min": round((clock.now() - START).total_seconds() / 60, 1),
        "step_wait_s": {
            step: {"max": max(v), "mean": round(sum(v) / len(v), 1), "waves": len(v)}
            for step, v in waited_by_step.items()
        },
        "step_waits": waits,
    }
    write_results(
        ("azure_calls_woken" if WAKE else "azure_calls")
        + ("_spread_all" if SPREAD_ALL else "_spread" if SPREAD else ""),
        "Azure ARM requests of one run (fake ARM + real SDK clients), per operation; the engine's waits per step"
        + (", with wake-ups (--wake)" if WAKE else "")
        + (", Run Command ends spread over 90 s (--spread)" if SPREAD and not SPREAD_ALL else "")
        + (
            ", Run Command, install and snapshot ends spread over 90 s, 20 min, 2 min (--spread-all)"
            if SPREAD_ALL
            else ""
        ),
        figures,
    )
    if run.status != "succeeded" or dead or not met:
        raise SystemExit(1)


def step_waits(run: Run, events: ArmEvents, applied: dict[str, datetime]) -> list[dict[str, Any]]:
    """Per PatchPilot fleet command of the run that started ARM operations: the engine's wait after
    the last of them ended."""
    rows = []
    for command_id in sorted(run.issued, key=lambda c: applied.get(c, datetime.max.replace(tzinfo=UTC))):
        ended, moved = events.finished(command_id), applied.get(command_id)
        found = re.search(r":w(\d+):([a-z_-]+)$", command_id)
        if ended is None or moved is None or found is None:
            continue
        rows.append({"wave": int(found[1]), "step": found[2], "wait_s": max(0.0, (moved - ended).total_seconds())})
    return rows


def _step(operation: str) -> str:
    """Which kind of work an operation is, for the summary line."""
    path = operation.lower()
    if "resourcegraph" in path:
        return "resource graph"
    if "/snapshots" in path:
        return "snapshots"
    if "/disks" in path or "/deallocate" in path or "/start" in path:
        return "rollback"
    if "installpatches" in path:
        return "install"
    if "runcommands" in path:
        return "run command"
    if "instanceview" in path:
        return "instance view"
    if path.startswith("patch"):
        return "tags and swaps"
    return "vm reads"


if __name__ == "__main__":
    main()
