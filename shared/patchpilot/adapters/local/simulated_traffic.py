"""Traffic pools, scaling groups and host hooks of the simulated fleet (the local runtime's
`TrafficPools`; `SimulatedFleet` answers through `SimulatedPools` and `host_hook`).

Membership lives in SQLite (`sim_pool_members`), on the fleet's virtual clock:

- a traffic pool (the inventory's `traffic_pools`): `serving` 1 while the machine is in it (taking
  traffic once healthy, `REJOIN_HEALTHY` after `since`), 0 once it left (drained `DRAIN` after
  `since`);
- an Auto Scaling group (the inventory's `scaling_group`, with `standby`): `serving` 1 InService,
  0 in Standby (both take effect at once).

A machine without a row is in: every machine starts serving in each of its pools.

`LeavePools` and `RejoinPools` read before they write: the first execution of a command id takes
out (or puts back) only what is in (or out), and records per target what it changed and when it is
done (`sim_pool_ops`), all in one transaction; a later execution of the same command, from any
process, only reports on that record, so a redelivery or a crash changes nothing twice. A target
already out (already in) is left as it is and its outcome's `items` are empty.

An outcome's `items` are registrations: `"pool|<pool id>"` or `"standby|<scaling group>"` (split at
the first `|`). A `LeavePools` outcome lists what it took out; `RejoinPools` puts back exactly the
`registrations` it is given for a target (each machine's `LeavePools` items), or, for a target it is
given none for, every pool of the machine (and its group, with `standby`); its outcome lists what it
actually put back.

Hints (`Simulation`): `drain: timeout` never drains (`InProgress` until the command's timeout; with
none, the pool's own default, `DEFAULT_DRAIN_TIMEOUT`, fails it here); `pool_health: fail` keeps the
pool reporting the machine unhealthy after it rejoins, until a rollback restored it (`InProgress`
"pool X reports it unhealthy" with `pool_health`, which the service fails at the timeout).

Each time a machine leaves a pool the run records an outage (`sim_pool_outages`): from the moment
it left to the moment it was healthy in the pool again (open while it is not). `capacity` reads
them back for the report.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from patchpilot.adapters.local.simulated_catalog import hints
from patchpilot.engine.messages import LeavePools, Outcome, RejoinPools
from patchpilot.inventory import Instance
from patchpilot.policy.fields import format_duration
from patchpilot.policy.model import HostHook
from patchpilot.ports import Clock, InProgress, Progress
from patchpilot.wording import plural

DRAIN = timedelta(seconds=30)  # from leaving a pool to drained
REJOIN_HEALTHY = timedelta(seconds=20)  # from rejoining a pool to healthy in it
DEFAULT_DRAIN_TIMEOUT = timedelta(minutes=5)  # a LeavePools without timeout: ELBv2's default deregistration delay
POLL = timedelta(minutes=1)  # how soon a wait that no time ends is looked at again
HOOK_SECONDS = 10  # a host hook's run on one machine

POOL, STANDBY = "pool", "standby"
NEVER = datetime(2000, 1, 1, tzinfo=UTC)  # since when a machine with no record is in: it always was

POOL_SCHEMA = """
CREATE TABLE IF NOT EXISTS sim_pool_members (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    serving INTEGER NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (kind, name, instance_id)
);
CREATE TABLE IF NOT EXISTS sim_pool_ops (
    command_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    done_at TEXT,
    ok INTEGER NOT NULL,
    waiting TEXT NOT NULL,
    detail TEXT NOT NULL,
    items TEXT NOT NULL,
    PRIMARY KEY (command_id, instance_id)
);
CREATE TABLE IF NOT EXISTS sim_pool_outages (
    run_id TEXT NOT NULL,
    wave INTEGER,
    pool TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    out_at TEXT NOT NULL,
    back_at TEXT
);
CREATE INDEX IF NOT EXISTS sim_pool_outages_by_run ON sim_pool_outages (run_id);
"""


@dataclass(frozen=True)
class PoolCapacity:
    """How much of one pool served during one wave of a run: `members` is the number of machines
    in the pool (the instances given that list it, and any the run took out of it), `lowest` how
    many of them served at the lowest point of the wave (members minus the most that were out at
    once, drained or not yet healthy again, whichever wave took them out)."""

    wave: int
    pool: str
    members: int
    lowest: int


@dataclass(frozen=True)
class _Op:
    instance_id: str
    done_at: datetime | None  # None: never (a hint)
    waiting: str  # what it waits for until done_at
    detail: str
    items: list[str]
    ok: bool = True
    kind: str = ""  # leave | rejoin (as loaded)
    at: datetime | None = None  # when the command was first executed (as loaded)


def host_hook(instance: Instance, phase: str, hook: HostHook) -> tuple[bool, str]:
    """What the hook's run on the machine ends with (it takes `HOOK_SECONDS`): exit 0, or, on the
    machine's `<phase>_hook: fail` hint, exit 1 with the output's tail."""
    if hook.script_for(instance.os) is None:
        return True, f"no {instance.os} script in the {phase} hook: nothing run"
    verdict = hints(instance).before_install_hook if phase == "before_install" else hints(instance).after_install_hook
    if verdict == "fail":
        tail = "service did not stop" if phase == "before_install" else "service did not start"
        return False, f"exit code 1: hook: {tail}"
    return True, "exit code 0"


def item(kind: str, name: str) -> str:
    return f"{kind}|{name}"


def _parse(registration: str) -> tuple[str, str] | None:
    kind, _, name = registration.partition("|")
    return (kind, name) if kind in (POOL, STANDBY) and name else None


def _own(instance: Instance, standby: bool) -> list[tuple[str, str]]:
    """The machine's pools, and its scaling group when it is to go into Standby."""
    places = [(POOL, pool) for pool in dict.fromkeys(instance.traffic_pools)]
    if standby and instance.scaling_group:
        places.append((STANDBY, instance.scaling_group))
    return places


def _unique(targets: Iterable[Instance]) -> list[Instance]:
    return list({t.id: t for t in targets}.values())


def _names(kind: str, places: Iterable[tuple[str, str]]) -> str:
    return ", ".join(name for k, name in places if k == kind)


class SimulatedPools:
    """`TrafficPools` of the simulated fleet, on its database connection (see the module)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, clock: Clock) -> None:
        self._db = db
        self._lock = lock
        self._clock = clock

    # ------------------------------------------------------------ TrafficPools

    def leave_pools(self, command: LeavePools) -> Progress:
        ops = self._once(command.id, command.run_id, "leave", lambda now: self._leave(command, now))
        started = min((op.at for op in ops if op.at is not None), default=command.issued_at)
        deadline = started + DEFAULT_DRAIN_TIMEOUT if command.timeout is None else None
        late = f"{format_duration(DEFAULT_DRAIN_TIMEOUT)}, the default deregistration delay (no traffic.drain_timeout)"
        return self._answer(ops, deadline, late)

    def rejoin_pools(self, command: RejoinPools) -> Progress:
        return self._answer(self._once(command.id, command.run_id, "rejoin", lambda now: self._rejoin(command, now)))

    # ------------------------------------------------------------ for the reports

    def out_of_service(self) -> set[str]:
        """The machines out of a pool or in Standby now (what a run's end must leave only broken)."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT instance_id FROM sim_pool_members WHERE serving = 0").fetchall()
        return {str(row[0]) for row in rows}

    def capacity(self, run_id: str, instances: Sequence[Instance]) -> list[PoolCapacity]:
        """Per wave that took a machine out of a pool, for each pool the run took one out of: its
        members and how many served at the wave's lowest point (`PoolCapacity`), by wave then pool.
        A wave lasts from its first machine leaving a pool to its last one healthy in it again."""
        with self._lock:
            rows = self._db.execute(
                "SELECT wave, pool, instance_id, out_at, back_at FROM sim_pool_outages WHERE run_id = ?", (run_id,)
            ).fetchall()
        outages = [
            (wave, str(pool), str(iid), datetime.fromisoformat(out), datetime.fromisoformat(back) if back else None)
            for wave, pool, iid, out, back in rows
        ]
        pools = sorted({pool for _, pool, _, _, _ in outages})
        members = {
            p: {i.id for i in instances if p in i.traffic_pools} | {o[2] for o in outages if o[1] == p} for p in pools
        }
        spans: dict[int, tuple[datetime, datetime]] = {}
        for wave, _, _, out, back in outages:
            if wave is None:
                continue
            start, end = spans.get(wave, (out, out))
            spans[wave] = (min(start, out), max(end, out, back or out))
        result = []
        for wave, (start, end) in sorted(spans.items()):
            for pool in pools:
                spells = [(out, back) for _, p, _, out, back in outages if p == pool]
                moments = [start] + [out for out, _ in spells if start < out <= end]
                most = max(sum(1 for out, back in spells if out <= t and (back is None or back > t)) for t in moments)
                result.append(PoolCapacity(wave, pool, len(members[pool]), len(members[pool]) - most))
        return result

    # ------------------------------------------------------------ what each command does

    def _leave(self, command: LeavePools, now: datetime) -> list[_Op]:
        ops = []
        for target in _unique(command.targets):
            places = _own(target, command.standby)
            if not places:
                ops.append(_Op(target.id, now, "", "no traffic pools", []))
                continue
            removed, drained_at, waiting = [], now, ""
            never = hints(target).drain == "timeout" and any(k == POOL for k, _ in places)
            for kind, name in places:
                changed, since = self._set(kind, name, target.id, serving=False, now=now)
                if changed:
                    removed.append((kind, name))
                    if kind == POOL:
                        self._outage_starts(command.run_id, command.wave, name, target.id, now)
                if kind == POOL:
                    waiting = waiting or f"still draining from pool {name}"
                    drained_at = max(drained_at, since + DRAIN)
            detail = _left(places, removed)
            ops.append(_Op(target.id, None if never else drained_at, waiting, detail, [item(*p) for p in removed]))
        return ops

    def _rejoin(self, command: RejoinPools, now: datetime) -> list[_Op]:
        ops = []
        for target in _unique(command.targets):
            given = command.registrations.get(target.id)
            parsed = [(r, _parse(r)) for r in given or ()]
            if unknown := [r for r, place in parsed if place is None]:
                why = f"not a registration of the simulated fleet: {unknown[0]!r} (pool|<id> or standby|<group>)"
                ops.append(_Op(target.id, now, "", why, [], ok=False))
                continue
            places = [p for _, p in parsed if p] if given is not None else _own(target, command.standby)
            if not places:
                detail = "nothing to put back" if given is not None else "no traffic pools"
                ops.append(_Op(target.id, now, "", detail, []))
                continue
            unhealthy = (
                hints(target).pool_health == "fail"
                and any(k == POOL for k, _ in places)
                and not self._restored(command.run_id, target.id, now)
            )
            added, healthy_at, waiting = [], now, ""
            for kind, name in places:
                changed, since = self._set(kind, name, target.id, serving=True, now=now)
                if changed:
                    added.append((kind, name))
                if kind == POOL:
                    back = None if unhealthy else since + REJOIN_HEALTHY
                    self._outage_ends(name, target.id, back)
                    if unhealthy:
                        waiting = waiting or f"pool {name} reports it unhealthy"
                    else:
                        waiting = waiting or f"not healthy in pool {name} yet"
                        healthy_at = max(healthy_at, since + REJOIN_HEALTHY)
            done_at = (None if unhealthy else healthy_at) if command.pool_health else now
            ops.append(
                _Op(
                    target.id,
                    done_at,
                    waiting,
                    _rejoined(places, added, command.pool_health),
                    [item(*p) for p in added],
                )
            )
        return ops

    # ------------------------------------------------------------ the mechanism

    def _set(self, kind: str, name: str, instance_id: str, *, serving: bool, now: datetime) -> tuple[bool, datetime]:
        """Put the machine in (out of) the pool or group unless it is already: whether this changed
        it, and since when it is so (in since ever: `NEVER`). Within the caller's transaction."""
        row = self._db.execute(
            "SELECT serving, since FROM sim_pool_members WHERE kind = ? AND name = ? AND instance_id = ?",
            (kind, name, instance_id),
        ).fetchone()
        current = True if row is None else bool(row[0])
        if current == serving:
            return False, NEVER if row is None else datetime.fromisoformat(row[1])
        self._db.execute(
            "INSERT INTO sim_pool_members (kind, name, instance_id, serving, since) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (kind, name, instance_id) DO UPDATE SET serving = excluded.serving, since = excluded.since",
            (kind, name, instance_id, int(serving), now.isoformat()),
        )
        return True, now

    def _outage_starts(self, run_id: str, wave: int | None, pool: str, instance_id: str, now: datetime) -> None:
        """An outage of the machine in the pool begins, unless one is still open (it rejoined
        unhealthy and is taken out again)."""
        open_ = self._db.execute(
            "SELECT 1 FROM sim_pool_outages WHERE pool = ? AND instance_id = ? AND back_at IS NULL", (pool, instance_id)
        ).fetchone()
        if open_ is None:
            self._db.execute(
                "INSERT INTO sim_pool_outages (run_id, wave, pool, instance_id, out_at, back_at)"
                " VALUES (?, ?, ?, ?, ?, NULL)",
                (run_id, wave, pool, instance_id, now.isoformat()),
            )

    def _outage_ends(self, pool: str, instance_id: str, back: datetime | None) -> None:
        """The open outage ends when the machine is healthy in the pool again (never: stays open)."""
        if back is not None:
            self._db.execute(
                "UPDATE sim_pool_outages SET back_at = ? WHERE pool = ? AND instance_id = ? AND back_at IS NULL",
                (back.isoformat(), pool, instance_id),
            )

    def _restored(self, run_id: str, instance_id: str, now: datetime) -> bool:
        """Whether a rollback of this run restored the machine (the fleet's record): its pools
        find the restored machine healthy, as the health check after a rollback passes."""
        row = self._db.execute(
            "SELECT 1 FROM sim_ops WHERE run_id = ? AND instance_id = ? AND kind = 'rollback' AND ok = 1"
            " AND done_at <= ? LIMIT 1",
            (run_id, instance_id, now.isoformat()),
        ).fetchone()
        return row is not None

    def _once(self, command_id: str, run_id: str, kind: str, apply: Callable[[datetime], list[_Op]]) -> list[_Op]:
        """The command's record: made by its first execution (reading and writing the membership
        in the same transaction), read back by every later one."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                ops = self._load(command_id)
                if ops and ops[0].kind != kind:
                    raise ValueError(f"command {command_id} was first executed as {ops[0].kind}, now as {kind}")
                if not ops:
                    now = self._clock.now()
                    for position, op in enumerate(apply(now)):
                        db.execute(
                            "INSERT INTO sim_pool_ops (command_id, instance_id, position, run_id, kind, at, done_at,"
                            " ok, waiting, detail, items) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                command_id,
                                op.instance_id,
                                position,
                                run_id,
                                kind,
                                now.isoformat(),
                                op.done_at.isoformat() if op.done_at else None,
                                int(op.ok),
                                op.waiting,
                                op.detail,
                                json.dumps(op.items),
                            ),
                        )
                    ops = self._load(command_id)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return ops

    def _load(self, command_id: str) -> list[_Op]:
        rows = self._db.execute(
            "SELECT instance_id, done_at, waiting, detail, items, ok, kind, at FROM sim_pool_ops"
            " WHERE command_id = ? ORDER BY position",
            (command_id,),
        ).fetchall()
        return [
            _Op(
                iid,
                datetime.fromisoformat(done) if done else None,
                waiting,
                detail,
                json.loads(items),
                bool(ok),
                kind,
                datetime.fromisoformat(at),
            )
            for iid, done, waiting, detail, items, ok, kind, at in rows
        ]

    def _answer(self, ops: list[_Op], deadline: datetime | None = None, late: str = "") -> Progress:
        """One outcome per target once every one is done; before, `InProgress` until the next is
        due. Past `deadline` (the adapter's own), those not done have failed."""
        now = self._clock.now()
        pending = [op for op in ops if op.done_at is None or op.done_at > now]
        if pending and (deadline is None or now < deadline):
            due = [op.done_at for op in pending if op.done_at is not None]
            retry_at = min(min(due, default=now + POLL), now + POLL)
            if deadline is not None:
                retry_at = min(retry_at, deadline)
            first = pending[0]
            finished = tuple(
                Outcome(id=op.instance_id, ok=op.ok, detail=op.detail, items=op.items, at=op.done_at)
                for op in ops
                if op not in pending
            )
            note = f"{len(ops) - len(pending)}/{len(ops)} done; {first.instance_id}: {first.waiting}"
            started = min((op.at for op in ops if op.at is not None), default=None)
            return InProgress(retry_at, note, finished, started)
        outcomes = []
        for op in ops:
            if op in pending:
                detail = f"{op.waiting} after {late}"
                outcomes.append(Outcome(id=op.instance_id, ok=False, detail=detail, at=now))
            else:
                outcomes.append(Outcome(id=op.instance_id, ok=op.ok, detail=op.detail, items=op.items, at=op.done_at))
        return outcomes


def _left(places: list[tuple[str, str]], removed: list[tuple[str, str]]) -> str:
    parts = []
    if pools := [p for p in places if p[0] == POOL]:
        taken = [p for p in removed if p[0] == POOL]
        parts.append(
            f"left {plural(len(taken), 'pool')} ({_names(POOL, taken)})" if taken else "already out of its pools"
        )
        if len(taken) < len(pools) and taken:
            parts[-1] += f", already out of {_names(POOL, [p for p in pools if p not in taken])}"
    if groups := [p for p in places if p[0] == STANDBY]:
        verb = "entered Standby in" if groups[0] in removed else "already in Standby in"
        parts.append(f"{verb} scaling group {groups[0][1]}")
    return "; ".join(parts)


def _rejoined(places: list[tuple[str, str]], added: list[tuple[str, str]], checked: bool) -> str:
    parts = []
    if pools := [p for p in places if p[0] == POOL]:
        back = [p for p in added if p[0] == POOL]
        parts.append(f"rejoined {plural(len(back), 'pool')} ({_names(POOL, back)})" if back else "already in its pools")
        if len(back) < len(pools) and back:
            parts[-1] += f", already in {_names(POOL, [p for p in pools if p not in back])}"
        if checked:
            parts[-1] += ": healthy"
    if groups := [p for p in places if p[0] == STANDBY]:
        verb = "left Standby in" if groups[0] in added else "already InService in"
        parts.append(f"{verb} scaling group {groups[0][1]}")
    return "; ".join(parts)
