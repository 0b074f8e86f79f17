"""The SQLite RunStore: round trips, optimistic concurrency, partial writes, the identity map."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from patchpilot.adapters.local.sqlite_store import SqliteRunStore
from patchpilot.engine.decide import decide, start_run
from patchpilot.engine.messages import (
    AgentsProbed,
    CheckHealth,
    Command,
    Event,
    HealthChecked,
    InstallPatches,
    Outcome,
    PatchesInstalled,
    ProbeAgents,
    SnapshotsTaken,
    TakeSnapshots,
    TimerFired,
    Wait,
)
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance, load_inventory
from patchpilot.planning import plan
from patchpilot.policy import Policy, load_policy
from patchpilot.ports import ConflictError, UnknownRunError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
START = datetime(2025, 3, 14, 17, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(str(EXAMPLES / "policy.yaml"))


@pytest.fixture(scope="module")
def instances() -> list[Instance]:
    return load_inventory(str(EXAMPLES / "fleet.json"))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "patchpilot.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteRunStore]:
    with SqliteRunStore(db) as opened:
        yield opened


@pytest.fixture
def other(db: Path, store: SqliteRunStore) -> Iterator[SqliteRunStore]:
    """A second store on the same file: another connection, as another process would have."""
    with SqliteRunStore(db) as opened:
        yield opened


def started(policy: Policy, instances: list[Instance], run_id: str = "run-1") -> tuple[Run, list[Command]]:
    decision = start_run(run_id, policy, plan(policy, instances), START)
    return decision.run.model_copy(update={"version": 1}), decision.commands


def result_of(command: Command, ok: bool = True) -> Event | None:
    """The event a healthy fleet would answer `command` with (None for a notification)."""
    if isinstance(command, Wait):
        return TimerFired(id=command.result_id, run_id=command.run_id, command_id=command.id)
    if isinstance(command, ProbeAgents | CheckHealth):
        ids = [t.id for t in command.targets]
        kind: type[AgentsProbed] | type[HealthChecked]
        kind = AgentsProbed if isinstance(command, ProbeAgents) else HealthChecked
        outcomes = [Outcome(id=i, ok=ok) for i in ids]
        return kind(id=command.result_id, run_id=command.run_id, command_id=command.id, results=outcomes)
    if isinstance(command, TakeSnapshots):
        outcomes = [Outcome(id=t.id, ok=ok, items=[f"snap-{t.id}"]) for t in command.targets]
        return SnapshotsTaken(id=command.result_id, run_id=command.run_id, command_id=command.id, results=outcomes)
    if isinstance(command, InstallPatches):
        outcomes = [Outcome(id=t.instance.id, ok=ok, items=["KB5001"]) for t in command.targets]
        return PatchesInstalled(id=command.result_id, run_id=command.run_id, command_id=command.id, results=outcomes)
    return None


def step(run: Run, commands: list[Command], at: datetime) -> tuple[Run, list[Command]]:
    """Answer the one command the run waits for; the new run has the next version."""
    (event,) = [e for c in commands if c.id == run.awaiting and (e := result_of(c)) is not None]
    decision = decide(run, event, at)
    assert not decision.ignored, decision.ignored
    return decision.run.model_copy(update={"version": run.version + 1}), decision.commands


def count_wave_writes(db: Path) -> sqlite3.Connection:
    """Record in `wave_writes` the position of every run_waves row written from now on."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(
        """
        CREATE TABLE wave_writes (position INTEGER);
        CREATE TRIGGER wave_inserted AFTER INSERT ON run_waves
            BEGIN INSERT INTO wave_writes VALUES (NEW.position); END;
        CREATE TRIGGER wave_updated AFTER UPDATE ON run_waves
            BEGIN INSERT INTO wave_writes VALUES (NEW.position); END;
        """
    )
    return conn


# ---------------------------------------------------------------- round trips


def test_a_created_run_loads_back_equal_from_another_store(
    store: SqliteRunStore, other: SqliteRunStore, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    store.create(run, commands)

    loaded = other.load("run-1")

    assert loaded == run
    assert loaded is not run
    assert len(loaded.waves) == len(run.waves) > 1 and loaded.excluded == run.excluded


def test_every_state_of_a_whole_run_loads_back_equal(
    store: SqliteRunStore, db: Path, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    store.create(run, commands)
    at = START
    while not run.finished:
        at += timedelta(seconds=30)
        previous = run
        run, commands = step(run, commands, at)
        store.save(run, commands, previous)
        with SqliteRunStore(db) as fresh:
            assert fresh.load(run.run_id) == run
    assert run.state == "succeeded"
    assert run.version > 3 * len(run.waves), run.version


def test_a_run_survives_reopening_the_database(db: Path, policy: Policy, instances: list[Instance]) -> None:
    run, commands = started(policy, instances)
    with SqliteRunStore(db) as first:
        first.create(run, commands)
    with SqliteRunStore(db) as second:
        assert second.load("run-1") == run
        assert second.outbox("run-1") == commands


def test_loading_an_unknown_run_raises_unknown_run_error(store: SqliteRunStore) -> None:
    with pytest.raises(UnknownRunError):
        store.load("nope")
    with pytest.raises(KeyError):  # UnknownRunError is a KeyError
        store.load("nope")


def test_saving_an_unknown_run_raises_unknown_run_error(
    store: SqliteRunStore, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    new, _ = step(run, commands, START)
    with pytest.raises(UnknownRunError):
        store.save(new, [], previous=run)


def test_run_ids_lists_runs_oldest_first(store: SqliteRunStore, policy: Policy, instances: list[Instance]) -> None:
    for run_id, hours in [("b", 2), ("a", 3), ("c", 1)]:
        run, _ = started(policy, instances, run_id)
        store.create(run.model_copy(update={"created_at": START + timedelta(hours=hours)}), [])
    assert store.run_ids() == ["c", "b", "a"]


# ---------------------------------------------------------------- optimistic concurrency


def test_creating_a_run_twice_is_a_conflict_and_keeps_the_first(
    store: SqliteRunStore, other: SqliteRunStore, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    store.create(run, commands)
    again = run.model_copy(update={"reason": "second"})

    with pytest.raises(ConflictError):
        other.create(again, [])

    assert other.load("run-1") == run
    assert other.outbox("run-1") == commands


def test_saving_over_a_stale_previous_is_a_conflict_and_writes_nothing(
    store: SqliteRunStore, other: SqliteRunStore, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    store.mark_sent("run-1", [c.id for c in commands])
    v2, v2_commands = step(v1, commands, START)
    store.save(v2, v2_commands, previous=v1)
    rival = v1.model_copy(update={"version": 2, "reason": "rival"})

    with pytest.raises(ConflictError):
        other.save(rival, [*v2_commands, *v2_commands], previous=v1)

    assert other.load("run-1") == v2
    assert other.outbox("run-1") == v2_commands


def test_concurrent_saves_on_separate_connections_let_exactly_one_win(
    db: Path, store: SqliteRunStore, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    contenders = [v1.model_copy(update={"version": 2, "reason": f"writer {n}"}) for n in range(8)]
    barrier = threading.Barrier(len(contenders))
    outcomes: list[str] = []

    def save(run: Run) -> None:
        with SqliteRunStore(db) as own:
            own.load("run-1")
            barrier.wait()
            try:
                own.save(run, [], previous=v1)
                outcomes.append(run.reason)
            except ConflictError:
                outcomes.append("conflict")

    threads = [threading.Thread(target=save, args=(run,)) for run in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [o for o in outcomes if o != "conflict"]
    assert len(outcomes) == 8 and len(winners) == 1
    assert store.load("run-1").reason == winners[0]


def test_a_save_whose_version_does_not_follow_the_previous_is_refused(
    store: SqliteRunStore, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    with pytest.raises(ValueError, match="does not follow"):
        store.save(v1.model_copy(update={"reason": "same version"}), [], previous=v1)


# ---------------------------------------------------------------- partial writes


def test_a_save_rewrites_only_the_waves_that_changed(
    store: SqliteRunStore, db: Path, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    writes = count_wave_writes(db)
    v2, v2_commands = step(v1, commands, START)  # probed: only the first wave changes
    assert [i for i, w in enumerate(v2.waves) if w is not v1.waves[i]] == [0]

    store.save(v2, v2_commands, previous=v1)

    assert writes.execute("SELECT position FROM wave_writes").fetchall() == [(0,)]
    writes.close()


def test_a_save_that_changes_no_wave_writes_no_wave(
    store: SqliteRunStore, db: Path, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    writes = count_wave_writes(db)
    v2 = v1.model_copy(update={"version": 2, "reason": "header only"})

    store.save(v2, [], previous=v1)

    assert writes.execute("SELECT COUNT(*) FROM wave_writes").fetchone() == (0,)
    writes.close()
    with SqliteRunStore(db) as fresh:
        assert fresh.load("run-1") == v2


# ---------------------------------------------------------------- the identity map


def test_load_returns_the_same_object_while_nobody_saved(
    store: SqliteRunStore, other: SqliteRunStore, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    assert store.load("run-1") is v1  # what it created

    first = other.load("run-1")
    assert other.load("run-1") is first

    v2, v2_commands = step(v1, commands, START)
    store.save(v2, v2_commands, previous=v1)
    assert store.load("run-1") is v2  # what it saved


def test_a_save_by_another_store_invalidates_the_identity_map(
    store: SqliteRunStore, other: SqliteRunStore, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    assert store.load("run-1") is v1
    v2, v2_commands = step(v1, commands, START)

    other.save(v2, v2_commands, previous=other.load("run-1"))

    reloaded = store.load("run-1")
    assert reloaded is not v1 and reloaded is not v2
    assert reloaded == v2
    assert store.load("run-1") is reloaded


# ---------------------------------------------------------------- the outbox


def test_the_outbox_keeps_publish_order_until_marked_sent(
    store: SqliteRunStore, other: SqliteRunStore, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    v2, v2_commands = step(v1, commands, START)
    store.save(v2, v2_commands, previous=v1)
    assert [c.type for c in commands] == ["Notify", "ProbeAgents"]
    assert [c.type for c in v2_commands] == ["TakeSnapshots"]

    assert store.outbox("run-1") == [*commands, *v2_commands]

    store.mark_sent("run-1", [commands[1].id])
    assert other.outbox("run-1") == [commands[0], *v2_commands]
    other.mark_sent("run-1", [commands[0].id, v2_commands[0].id, "not-in-the-outbox"])
    assert store.outbox("run-1") == []


def test_the_outbox_of_one_run_is_not_another_runs(
    store: SqliteRunStore, policy: Policy, instances: list[Instance]
) -> None:
    a, a_commands = started(policy, instances, "a")
    b, b_commands = started(policy, instances, "b")
    store.create(a, a_commands)
    store.create(b, b_commands)

    store.mark_sent("a", [c.id for c in a_commands])

    assert store.outbox("a") == []
    assert store.outbox("b") == b_commands
    assert store.outbox("unknown") == []
