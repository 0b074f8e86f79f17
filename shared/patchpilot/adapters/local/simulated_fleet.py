"""The local fleet: a deterministic stand-in for EC2 + SSM and Azure Compute on a virtual clock.

Like the real providers, an operation starts once per command id and then takes time: the first
execution of a command records, in one transaction, each target's operation with its (already
decided) outcome and finish time; every later execution of the same command id, from any
process, only reports on it. Until every target is done the answer is `InProgress`, polled
again at most every ten minutes; then it is one `Outcome` per target.

Nothing is random. Durations come from a stable hash of the instance id, outcomes from the
instance's `simulation` fault hints (all ok by default), snapshot ids from a hash of the command
and instance. Each answer is in the words of the cloud adapters and true of the command it
answers: a failed health check names a check the command has (the policy's alarm, HTTP check or
script, else the cloud's own status check), a failed install names one of its patches, a rollback
says which volumes it restored. Each real effect (a snapshot, an install, a rollback) is written
once to a ledger, so tests can check that no instance is ever touched twice by redelivery, polls
or crashes. Host hooks run the same way (ten seconds each); traffic pools and scaling groups are
`SimulatedPools` (simulated_traffic.py), the patch catalogue and the assessment
simulated_catalog.py.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, TypeAlias, TypeVar

from patchpilot.adapters.health import UnsafeUrlValueError, fill, fill_url
from patchpilot.adapters.local._sqlite import connect_read_only
from patchpilot.adapters.local.simulated_catalog import (
    CATALOG,
    HINTED_CLASSIFICATION,
    assessment,
    digest,
    for_os,
    hints,
    matches,
    select_patches,
)
from patchpilot.adapters.local.simulated_catalog import lacking as lacking  # read here by the compliance tests
from patchpilot.adapters.local.simulated_maintenance import SimulatedMaintenance
from patchpilot.adapters.local.simulated_traffic import (
    HOOK_SECONDS,
    POOL_SCHEMA,
    PoolCapacity,
    SimulatedPools,
    host_hook,
)
from patchpilot.compliance.model import AssessmentStarted, PatchState
from patchpilot.engine.messages import (
    CheckHealth,
    InstallPatches,
    InstallTarget,
    LeavePools,
    Outcome,
    ProbeAgents,
    RejoinPools,
    ReturnMachines,
    RollBack,
    RunHostHook,
    StartMachines,
    TakeSnapshots,
)
from patchpilot.hotpatch import NO_REBOOT_NOTE
from patchpilot.inventory import Instance, OsFamily
from patchpilot.maintenance.model import WatchResult
from patchpilot.planning.estimate import (  # the step durations a plan estimates with
    HEALTH_MINUTES,
    INSTALL_MINUTES,
    REBOOT_MINUTES,
    ROLLBACK_MINUTES,
    SNAPSHOT_MINUTES,
)
from patchpilot.policy import Policy
from patchpilot.policy.model import HealthChecks
from patchpilot.ports import Clock, InProgress, Progress
from patchpilot.wording import plural

Kind: TypeAlias = Literal["probe", "snapshot", "install", "health", "rollback", "hook", "start", "return"]
START_MINUTES = 2  # a stopped machine boots and its agent answers
RETURN_MINUTES = 1  # stop or deallocate
T = TypeVar("T")
EFFECT_KINDS: frozenset[str] = frozenset({"snapshot", "install", "rollback"})

POLL_INTERVAL = timedelta(minutes=10)
BUSY_TIMEOUT_MS = 10_000

SCAN_MINUTES = 0  # a simulated scan ends at once

_ARM_VM = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.Compute/virtualMachines/(?P<vm>[^/]+)$",
    re.IGNORECASE,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sim_ops (
    command_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    started_at TEXT NOT NULL,
    done_at TEXT NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL,
    items TEXT NOT NULL,
    PRIMARY KEY (command_id, instance_id)
);
CREATE TABLE IF NOT EXISTS sim_effects (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (command_id, instance_id, kind)
);
CREATE INDEX IF NOT EXISTS sim_effects_by_run ON sim_effects (run_id);
CREATE TABLE IF NOT EXISTS sim_scans (
    token TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (token, instance_id)
);
"""


@dataclass(frozen=True)
class _Plan:
    """What will happen to one target: decided when the command is first executed."""

    instance_id: str
    minutes: int
    ok: bool
    detail: str
    items: list[str]
    seconds: int = 0


@dataclass(frozen=True)
class _Op:
    instance_id: str
    kind: str
    done_at: datetime
    ok: bool
    detail: str
    items: list[str]
    started_at: datetime | None = None  # when the command was first executed


class SimulatedFleet:
    """A `FleetProvider` and `TrafficPools` (simulated_traffic.py) whose operations live in SQLite
    (`db_path`) and take virtual time."""

    def __init__(self, db_path: str | Path, clock: Clock, *, read_only: bool = False) -> None:
        """With `read_only`, an existing database for `patch_states` only (`compliance`)."""
        self.clock = clock
        self._lock = threading.Lock()
        if read_only:
            self._db = connect_read_only(Path(db_path))
        else:
            self._db = sqlite3.connect(
                str(db_path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA + POOL_SCHEMA)
        self.pools = SimulatedPools(self._db, self._lock, clock)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SimulatedFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upcoming_maintenance(self, policy: Policy, instances: Sequence[Instance], now: datetime) -> WatchResult:
        """The `maintenance` hints of the instances (`SimulatedMaintenance`)."""
        return SimulatedMaintenance().upcoming_maintenance(policy, instances, now)

    # ------------------------------------------------------------ FleetProvider

    def probe_agents(self, command: ProbeAgents) -> Progress:
        return self._execute(command.id, command.run_id, "probe", lambda: _per_instance(command.targets, _probe))

    def take_snapshots(self, command: TakeSnapshots) -> Progress:
        def plan(instance: Instance) -> _Plan:
            return _snapshot(instance, command.id)

        return self._execute(command.id, command.run_id, "snapshot", lambda: _per_instance(command.targets, plan))

    def install_patches(self, command: InstallPatches) -> Progress:
        def plans() -> list[_Plan]:
            return _plans(command.targets, lambda t: t.instance.id, lambda t: _install(t, command))

        return self._execute(command.id, command.run_id, "install", plans)

    def check_health(self, command: CheckHealth) -> Progress:
        def plans() -> list[_Plan]:
            rebooted = self._rebooted(command.run_id)

            def plan(instance: Instance) -> _Plan:
                return _health(instance, command.checks, command.after_rollback, rebooted.get(instance.id, False))

            return _per_instance(command.targets, plan)

        return self._execute(command.id, command.run_id, "health", plans)

    def start_machines(self, command: StartMachines) -> Progress:
        """Each target found stopped or deallocated (`Instance.power`) runs after START_MINUTES;
        one already running (started by an earlier command) is left as it is."""
        return self._power(command.id, command.run_id, "start", command.targets)

    def return_machines(self, command: ReturnMachines) -> Progress:
        """Each target back in the state it was found in after RETURN_MINUTES; one already there
        is left as it is."""
        return self._power(command.id, command.run_id, "return", command.targets)

    def power(self, instance: Instance) -> str:
        """The machine's power state now: "running", or the state it was found in while no start
        is in effect (the last successful start or return, by the time it was done, decides)."""
        if instance.power is None:
            return "running"
        with self._lock:
            row = self._db.execute(
                "SELECT kind FROM sim_ops WHERE instance_id = ? AND kind IN ('start', 'return') AND ok = 1"
                " AND done_at <= ? ORDER BY done_at DESC, command_id DESC LIMIT 1",
                (instance.id, self.clock.now().isoformat()),
            ).fetchone()
        return "running" if row is not None and row[0] == "start" else instance.power

    def _power(self, command_id: str, run_id: str, kind: Kind, targets: Sequence[Instance]) -> Progress:
        def plans() -> list[_Plan]:
            def plan(instance: Instance) -> _Plan:
                running = self.power(instance) == "running"
                if kind == "start":
                    if running:
                        return _Plan(instance.id, 0, True, "already running", [])
                    return _Plan(instance.id, START_MINUTES, True, f"started (was {instance.power})", [])
                if not running:
                    return _Plan(instance.id, 0, True, f"already {instance.power}", [])
                return _Plan(instance.id, RETURN_MINUTES, True, f"{instance.power} again", [])

            return _per_instance(targets, plan)

        return self._execute(command_id, run_id, kind, plans)

    def run_hook(self, command: RunHostHook) -> Progress:
        def plan(instance: Instance) -> _Plan:
            ok, detail = host_hook(instance, command.phase, command.hook)
            return _Plan(instance.id, 0, ok, detail, [], seconds=HOOK_SECONDS)

        return self._execute(command.id, command.run_id, "hook", lambda: _per_instance(command.targets, plan))

    def leave_pools(self, command: LeavePools) -> Progress:
        return self.pools.leave_pools(command)

    def rejoin_pools(self, command: RejoinPools) -> Progress:
        return self.pools.rejoin_pools(command)

    def pool_capacity(self, run_id: str, instances: Sequence[Instance]) -> list[PoolCapacity]:
        """For the report: per wave, how many members of each pool served at the lowest point."""
        return self.pools.capacity(run_id, instances)

    def roll_back(self, command: RollBack) -> Progress:
        def plans() -> list[_Plan]:
            return _plans(
                command.targets,
                lambda t: t.instance.id,
                lambda t: _rollback(t.instance, t.snapshot_ids, command.restore_data_volumes),
            )

        return self._execute(command.id, command.run_id, "rollback", plans)

    # ------------------------------------------------------------ PatchAssessor

    def start_assessment(self, instances: Sequence[Instance], token: str) -> AssessmentStarted:
        """A scan of each reachable machine, recorded once per token (it ends at once)."""
        now = self.clock.now().isoformat()
        reachable = [i for i in instances if hints(i).agent == "online"]
        refused = tuple((i.id, _unreachable(i)) for i in instances if hints(i).agent != "online")
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO sim_scans (token, instance_id, at) VALUES (?, ?, ?)",
                [(token, i.id, now) for i in reachable],
            )
        return AssessmentStarted(started=len(reachable), refused=refused, operations=(f"sim-scan-{token}",))

    def patch_states(self, instances: Sequence[Instance]) -> list[PatchState]:
        """What each machine lacks now: its `missing` hint (else its share of the catalogue),
        minus what a successful install put on it (a rollback takes that back off). The last scan
        is the assessment time; without one, the machine is assessed as of now."""
        now = self.clock.now()
        with self._lock:
            scans = dict(self._db.execute("SELECT instance_id, MAX(at) FROM sim_scans GROUP BY instance_id").fetchall())
            ops = self._db.execute(
                "SELECT instance_id, run_id, kind, done_at, ok, detail, items FROM sim_ops"
                " WHERE kind IN ('install', 'rollback') AND done_at <= ? ORDER BY done_at, command_id",
                (now.isoformat(),),
            ).fetchall()
        history: dict[str, list[tuple[str, str, str, bool, str, list[str]]]] = {}
        for instance_id, run_id, kind, done_at, ok, detail, items in ops:
            history.setdefault(instance_id, []).append((run_id, kind, done_at, bool(ok), detail, json.loads(items)))
        states = []
        for instance in instances:
            if hints(instance).agent != "online":
                states.append(PatchState(instance.id, error=_unreachable(instance)))
                continue
            scanned = scans.get(instance.id)
            assessed = datetime.fromisoformat(scanned) if scanned else now
            states.append(assessment(instance, history.get(instance.id, []), assessed, now))
        return states

    # ------------------------------------------------------------ for tests and the local CLI

    def effects(self, run_id: str) -> dict[tuple[str, str], int]:
        """How often each (kind, instance id) was really snapshotted, installed or rolled back."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, instance_id, COUNT(*) FROM sim_effects WHERE run_id = ?"
                " GROUP BY kind, instance_id ORDER BY kind, instance_id",
                (run_id,),
            ).fetchall()
        return {(str(kind), str(instance_id)): int(count) for kind, instance_id, count in rows}

    # ------------------------------------------------------------ the mechanism

    def _rebooted(self, run_id: str) -> dict[str, bool]:
        """Whether this run's last successful install on each instance rebooted it."""
        with self._lock:
            rows = self._db.execute(
                "SELECT instance_id, detail FROM sim_ops WHERE run_id = ? AND kind = 'install' AND ok = 1"
                " ORDER BY done_at, command_id",
                (run_id,),
            ).fetchall()
        return {str(instance_id): "not rebooted" not in str(detail) for instance_id, detail in rows}

    def _execute(self, command_id: str, run_id: str, kind: Kind, plans: Callable[[], list[_Plan]]) -> Progress:
        ops = self._load(command_id)
        if not ops:
            started = self.clock.now()
            planned = plans()
            if not planned:
                return []
            ops = self._start(command_id, run_id, kind, started, planned)
        if any(op.kind != kind for op in ops):
            raise ValueError(f"command {command_id} was first executed as {ops[0].kind}, now as {kind}")
        now = self.clock.now()
        running = [op for op in ops if op.done_at > now]
        if running:
            last = max(op.done_at for op in running)
            done = len(ops) - len(running)
            finished = tuple(
                Outcome(id=op.instance_id, ok=op.ok, detail=op.detail, items=op.items, at=op.done_at)
                for op in ops
                if op.done_at <= now
            )
            return InProgress(
                retry_at=min(last, now + POLL_INTERVAL),
                note=f"{kind}: {done}/{len(ops)} done, last due {last.isoformat()}",
                finished=finished,
                started=min((op.started_at for op in ops if op.started_at is not None), default=None),
            )
        return [Outcome(id=op.instance_id, ok=op.ok, detail=op.detail, items=op.items, at=op.done_at) for op in ops]

    def _load(self, command_id: str) -> list[_Op]:
        with self._lock:
            rows = self._db.execute(
                "SELECT instance_id, kind, done_at, ok, detail, items, started_at FROM sim_ops"
                " WHERE command_id = ? ORDER BY position",
                (command_id,),
            ).fetchall()
        return [
            _Op(
                instance_id=instance_id,
                kind=kind,
                done_at=datetime.fromisoformat(done_at),
                ok=bool(ok),
                detail=detail,
                items=[str(item) for item in json.loads(items)],
                started_at=datetime.fromisoformat(started_at),
            )
            for instance_id, kind, done_at, ok, detail, items, started_at in rows
        ]

    def _start(
        self, command_id: str, run_id: str, kind: Kind, started: datetime, planned: Sequence[_Plan]
    ) -> list[_Op]:
        """Record every target's operation and effect in one transaction, unless another
        execution of the same command got there first."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                exists = db.execute("SELECT 1 FROM sim_ops WHERE command_id = ? LIMIT 1", (command_id,))
                if exists.fetchone() is None:
                    for position, plan in enumerate(planned):
                        done_at = started + timedelta(minutes=plan.minutes, seconds=plan.seconds)
                        db.execute(
                            "INSERT INTO sim_ops (command_id, instance_id, position, run_id, kind,"
                            " started_at, done_at, ok, detail, items) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                command_id,
                                plan.instance_id,
                                position,
                                run_id,
                                kind,
                                started.isoformat(),
                                done_at.isoformat(),
                                int(plan.ok),
                                plan.detail,
                                json.dumps(plan.items),
                            ),
                        )
                        if kind in EFFECT_KINDS:
                            db.execute(
                                "INSERT INTO sim_effects (run_id, kind, instance_id, command_id, at)"
                                " VALUES (?, ?, ?, ?, ?)",
                                (run_id, kind, plan.instance_id, command_id, started.isoformat()),
                            )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self._load(command_id)


# ---------------------------------------------------------------- what each operation does


def _plans(targets: Sequence[T], key: Callable[[T], str], plan: Callable[[T], _Plan]) -> list[_Plan]:
    """One plan per distinct instance, in the command's order."""
    seen: set[str] = set()
    result = []
    for target in targets:
        if key(target) not in seen:
            seen.add(key(target))
            result.append(plan(target))
    return result


def _per_instance(instances: Sequence[Instance], plan: Callable[[Instance], _Plan]) -> list[_Plan]:
    return _plans(instances, lambda instance: instance.id, plan)


def _minutes(salt: str, instance_id: str, low: int, high: int) -> int:
    """A stable duration in [low, high] minutes for this instance."""
    value = int.from_bytes(digest(salt, instance_id)[:8], "big")
    return low + value % (high - low + 1)


def _probe(instance: Instance) -> _Plan:
    online = hints(instance).agent == "online"
    if instance.cloud == "aws":
        detail = "SSM agent online (PingStatus Online)" if online else "SSM agent not reporting (ConnectionLost)"
    else:
        detail = "VM agent ready" if online else "VM agent not ready (ProvisioningState/Unavailable)"
    return _Plan(instance.id, 0, online, detail, [])


def _disks(instance: Instance) -> list[str]:
    return ["osdisk"] if instance.os == "linux" else ["osdisk", "datadisk-0"]


def _snapshot_id(instance: Instance, command_id: str, disk: str) -> str:
    code = digest("snapshot", command_id, instance.id, disk).hex()
    if instance.cloud == "aws":
        return f"snap-{code[:17]}"
    name = f"{instance.short_name}-{disk}-pp-{code[:8]}"
    arm = _ARM_VM.match(instance.id)
    if arm is None:
        return name
    return f"/subscriptions/{arm['sub']}/resourceGroups/{arm['rg']}/providers/Microsoft.Compute/snapshots/{name}"


def _snapshot(instance: Instance, command_id: str) -> _Plan:
    minutes = _minutes("snapshot", instance.id, *SNAPSHOT_MINUTES)
    if hints(instance).snapshot == "fail":
        if instance.cloud == "aws":
            detail = "CreateSnapshots failed: SnapshotCreationPerVolumeRateExceeded"
        else:
            detail = "snapshot creation failed: OperationNotAllowed (the disk is being updated)"
        return _Plan(instance.id, minutes, False, detail, [])
    ids = [_snapshot_id(instance, command_id, disk) for disk in _disks(instance)]
    disks = "1 disk" if len(ids) == 1 else f"{len(ids)} disks"
    return _Plan(instance.id, minutes, True, f"snapshotted {disks}", ids)


def _install(target: InstallTarget, command: InstallPatches) -> _Plan:
    instance, only, excluded = target.instance, target.only, [*command.exclude, *target.exclude]  # + its exceptions
    hinted = hints(instance)
    minutes = hinted.install_minutes or _minutes("install", instance.id, *INSTALL_MINUTES)
    reboot = target.reboot_for(command.reboot)
    reboots = reboot != "never"
    if reboots:
        minutes += REBOOT_MINUTES
    if only is not None:
        patches = [p for p in dict.fromkeys(only) if not any(matches(p, pattern) for pattern in target.exclude)]
    else:
        patches = select_patches(instance.os, command.classifications, command.include, excluded)
        if HINTED_CLASSIFICATION in command.classifications:  # hinted patches the catalogue does not know
            known = {p for p, _ in CATALOG[instance.os]}
            extra = [p for p in hinted.missing or () if p not in known and p not in patches]
            patches += [p for p in extra if not any(matches(p, pattern) for pattern in excluded)]
    if hinted.install == "fail":
        return _Plan(instance.id, minutes, False, _install_failure(instance.os, patches), [])
    count = plural(len(patches), "patch")
    tail = "rebooted" if reboots else f"not rebooted ({NO_REBOOT_NOTE if target.reboot else 'reboot: never'})"
    return _Plan(instance.id, minutes, True, f"{count} installed, {tail}", patches)


def _install_failure(os: OsFamily, patches: Sequence[str]) -> str:
    """Why an install failed, naming the first of its patches for this OS (none: the package
    manager failed before installing anything)."""
    first = next((patch for patch in patches if for_os(patch, os)), None)
    if os == "windows":
        if first is None:
            return "exit code 0x80070643: the update installer failed before installing anything"
        return f"exit code 0x80070643: {first} failed to install (fatal error during installation)"
    if first is None:
        return "exit code 1: the package manager failed before installing anything (rpmdb lock held)"
    return f"exit code 1: package conflict: {first} conflicts with a version-locked installed package"


def _private_ip(instance: Instance) -> str:
    """A stable private address in 10.0.0.0/8 for this instance (for {private_ip} in checks)."""
    a, b, c = digest("private-ip", instance.id)[:3]
    return f"10.{a}.{b}.{max(c, 4)}"


def _health(instance: Instance, checks: HealthChecks, after_rollback: bool, rebooted: bool) -> _Plan:
    """The cloud's own status checks, then the policy's checks, in the order and the words of the
    cloud adapters (AWS: alarms, HTTP, script; Azure: HTTP, script, and CloudWatch alarms are not
    read there). A `health: fail` hint fails the first of the policy's checks that applies to the
    machine, else the cloud's status check; the check after a rollback passes (the snapshot was
    healthy). An HTTP check whose URL cannot be built for the machine fails, as on the clouds."""
    aws = instance.cloud == "aws"
    address = _private_ip(instance)
    own: list[tuple[str, str, bool]] = []  # the policy's checks here: (failed, passed, fails anyway)
    if aws and checks.alarms:
        names = [fill(alarm, instance, "") for alarm in checks.alarms]  # as Ec2SsmFleet: no {private_ip}
        own.append((f"alarm {names[0]} is ALARM", f"{plural(len(names), 'alarm')} OK", False))
    if checks.http:
        try:
            urls = [fill_url(template, instance, address) for template in checks.http]
            own.append((f"GET {urls[0]}: HTTP 503", "HTTP " + ", ".join("200" for _ in urls), False))
        except UnsafeUrlValueError as exc:  # waiting will not make the value usable
            own.append((str(exc), "", True))
    script = checks.script_for(instance.os)
    if script:
        own.append(
            ("health script: exit code 1" if aws else "health script failed, exit code 1", "script exit 0", False)
        )
    sick = hints(instance).health == "fail" and not after_rollback
    for failure, _, fails_anyway in own:
        if sick or fails_anyway:
            return _Plan(instance.id, HEALTH_MINUTES, False, failure, [])
    if sick:
        return _Plan(instance.id, HEALTH_MINUTES, False, _status_failure(instance, rebooted), [])
    passed = ["status checks 2/2 passed, SSM agent online" if aws else "VM running, VM agent Ready"]
    passed += [success for _, success, _ in own]
    if not aws and checks.alarms:
        passed.append("CloudWatch alarms not checked (AWS only)")
    return _Plan(instance.id, HEALTH_MINUTES, True, ", ".join(passed), [])


def _status_failure(instance: Instance, rebooted: bool) -> str:
    """The cloud's own status check, failed: what a machine broken by its patches shows."""
    if instance.cloud == "aws":
        agent = ", SSM agent not back after the reboot (ConnectionLost)" if rebooted else ""
        return f"EC2 status check: instance impaired{agent}"
    return f"Azure status check: VM agent Not Ready{' after the reboot' if rebooted else ''}"


def _rollback(instance: Instance, snapshot_ids: list[str], restore_data_volumes: bool) -> _Plan:
    """The root volume (OS disk) from the first snapshot; the data volumes (disks) from the others
    when the policy asks for them too."""
    minutes = _minutes("rollback", instance.id, *ROLLBACK_MINUTES)
    if not snapshot_ids:
        return _Plan(instance.id, minutes, False, "no snapshot to restore from", [])
    source = snapshot_ids[0]
    aws = instance.cloud == "aws"
    if hints(instance).rollback == "fail":
        if aws:
            detail = f"CreateReplaceRootVolumeTask from {source} failed: IncorrectState"
        else:
            detail = f"OS disk swap to a disk from {source} failed: OperationNotAllowed"
        return _Plan(instance.id, minutes, False, detail, [])
    restored = list(snapshot_ids) if restore_data_volumes else [source]
    detail = f"{'root volume' if aws else 'OS disk'} restored from {source}"
    if len(restored) > 1:
        detail += f" and {plural(len(restored) - 1, 'data volume' if aws else 'data disk')} from its snapshots"
    return _Plan(instance.id, minutes, True, detail, restored)


# ---------------------------------------------------------------- the simulated assessment


def _unreachable(instance: Instance) -> str:
    if instance.cloud == "aws":
        return "SSM agent not reporting (ConnectionLost): no patch scan"
    return "VM agent not ready: no patch assessment"
