"""The RunStore contract: what every adapter of the port does alike (round trips, optimistic
concurrency, partial writes, the identity map, the outbox), checked on each of them:
SqliteRunStore, DynamoDbRunStore on moto, and TableRunStore on Azurite.

Each adapter comes as a `Stores`: two stores on the same state (`other` is another connection,
another process or Lambda container) and the few ways to look behind the port that a behaviour
needs (which waves a save wrote, everything stored). What only one adapter does is tested in
test_sqlite_store.py and test_aws_store.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from azure.data.tables import TableClient
from moto_support import TABLE, aws, dynamodb, record

from patchpilot.adapters.aws.dynamodb_store import DynamoDbRunStore
from patchpilot.adapters.azure.table_store import TableRunStore
from patchpilot.adapters.local.sqlite_store import SqliteRunStore
from patchpilot.engine.decide import decide, start_run
from patchpilot.engine.messages import (
    AgentsProbed,
    CheckHealth,
    Command,
    Event,
    HealthChecked,
    InstallPatches,
    InstancesLeased,
    LeaseInstances,
    LeavePools,
    Outcome,
    PatchesInstalled,
    PoolsLeft,
    PoolsRejoined,
    ProbeAgents,
    RejoinPools,
    SnapshotsTaken,
    TakeSnapshots,
    TimerFired,
    Wait,
)
from patchpilot.engine.run import Run
from patchpilot.inventory import load_inventory
from patchpilot.planning import plan
from patchpilot.policy import load_policy
from patchpilot.ports import ConflictError, RunStore, UnknownRunError

pytestmark = pytest.mark.slow  # 18 s alone (SQLite, moto and Azurite): `make test-fast` leaves it out

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
START = datetime(2025, 3, 14, 17, 0, tzinfo=UTC)
POLICY = load_policy(str(EXAMPLES / "policy.yaml"))
INSTANCES = load_inventory(str(EXAMPLES / "fleet.json"))


# ---------------------------------------------------------------- runs to store


def started(run_id: str = "run-1") -> tuple[Run, list[Command]]:
    """Version 1 of a run of the example policy and fleet, and the commands it starts with."""
    decision = start_run(run_id, POLICY, plan(POLICY, INSTANCES), START)
    return decision.run.model_copy(update={"version": 1}), decision.commands


def result_of(command: Command, ok: bool = True) -> Event | None:
    """The event a healthy fleet would answer `command` with (None for a notification)."""
    if isinstance(command, Wait):
        return TimerFired(id=command.result_id, run_id=command.run_id, command_id=command.id)
    if isinstance(command, LeaseInstances):
        leased = [Outcome(id=i, ok=ok) for i in command.targets]
        return InstancesLeased(id=command.result_id, run_id=command.run_id, command_id=command.id, results=leased)
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
    if isinstance(command, LeavePools | RejoinPools):  # the example policy drains (docs/traffic.md)
        outcomes = [Outcome(id=t.id, ok=ok, items=[f"pool|{p}" for p in t.traffic_pools]) for t in command.targets]
        result = PoolsLeft if isinstance(command, LeavePools) else PoolsRejoined
        return result(id=command.result_id, run_id=command.run_id, command_id=command.id, results=outcomes)
    return None


def step(run: Run, commands: list[Command], at: datetime) -> tuple[Run, list[Command]]:
    """Answer the one command the run waits for; the new run has the next version."""
    (event,) = [e for c in commands if c.id == run.awaiting and (e := result_of(c)) is not None]
    decision = decide(run, event, at)
    assert not decision.ignored, decision.ignored
    return decision.run.model_copy(update={"version": run.version + 1}), decision.commands


# ---------------------------------------------------------------- the adapters


class Stores(Protocol):
    """Two stores of one adapter on the same state, and what the tests read behind the port."""

    store: RunStore
    other: RunStore

    def reload(self, run_id: str) -> Run:
        """Load the run with a store that has never seen it."""

    def count_wave_writes(self) -> Callable[[], list[int]]:
        """From now on, count the waves written: the returned function lists their positions."""

    def stored(self) -> list[Any]:
        """Everything stored, to compare before and after."""

    def stored_wave_parts(self) -> int:
        """How many pieces of waves are stored: no superseded one may be left."""


@dataclass
class SqliteStores:
    db: Path
    store: SqliteRunStore
    other: SqliteRunStore
    cleanup: ExitStack = field(default_factory=ExitStack)  # closes what count_wave_writes opened

    def reload(self, run_id: str) -> Run:
        with SqliteRunStore(self.db) as fresh:
            return fresh.load(run_id)

    def count_wave_writes(self) -> Callable[[], list[int]]:
        """Triggers record in `wave_writes` the position of every run_waves row written."""
        conn = self.cleanup.enter_context(closing(sqlite3.connect(self.db, isolation_level=None)))
        conn.executescript(
            """
            CREATE TABLE wave_writes (position INTEGER);
            CREATE TRIGGER wave_inserted AFTER INSERT ON run_waves
                BEGIN INSERT INTO wave_writes VALUES (NEW.position); END;
            CREATE TRIGGER wave_updated AFTER UPDATE ON run_waves
                BEGIN INSERT INTO wave_writes VALUES (NEW.position); END;
            """
        )
        return lambda: [position for (position,) in conn.execute("SELECT position FROM wave_writes")]

    def stored(self) -> list[Any]:
        with closing(sqlite3.connect(self.db)) as conn:
            return list(conn.iterdump())

    def stored_wave_parts(self) -> int:
        with closing(sqlite3.connect(self.db)) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM run_waves").fetchone()
            return int(count)


@contextmanager
def sqlite_stores(db: Path) -> Iterator[SqliteStores]:
    with SqliteRunStore(db) as store, SqliteRunStore(db) as other:
        made = SqliteStores(db, store, other)
        with made.cleanup:
            yield made


def items(client: Any, prefix: str = "") -> list[dict[str, Any]]:
    """The items of the run table whose sort key starts with `prefix`."""
    found: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=TABLE):
        found.extend(i for i in page["Items"] if i["sk"]["S"].startswith(prefix))
    return found


def wave_positions(keys: list[str]) -> list[int]:
    """The positions of the waves among the sort keys written."""
    return [int(k.split("#")[1]) for k in keys if k.startswith("WAVE#")]


def fresh() -> DynamoDbRunStore:
    """A DynamoDB store with its own client and an empty identity map: a new Lambda container."""
    return DynamoDbRunStore(TABLE, dynamodb())


@dataclass
class DynamoDbStores:
    client: Any
    store: DynamoDbRunStore
    other: DynamoDbRunStore

    def reload(self, run_id: str) -> Run:
        return fresh().load(run_id)

    def count_wave_writes(self) -> Callable[[], list[int]]:
        calls = record(self.client, "PutItem", "BatchWriteItem", "TransactWriteItems")
        return lambda: wave_positions(calls.written_keys())

    def stored(self) -> list[Any]:
        return items(self.client)

    def stored_wave_parts(self) -> int:
        return len(items(self.client, "WAVE#"))


@contextmanager
def dynamodb_stores() -> Iterator[DynamoDbStores]:
    with aws():
        client = dynamodb()
        yield DynamoDbStores(client, DynamoDbRunStore(TABLE, client), fresh())


def record_writes(client: TableClient) -> list[str]:
    """From now on, the row keys of the entities `client` creates, updates or upserts."""
    written: list[str] = []

    def recording(name: str) -> Callable[..., Any]:
        original = getattr(client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "submit_transaction":
                operations = list(args[0])
                written.extend(op[1]["RowKey"] for op in operations if op[0] != "delete")
                return original(operations, *args[1:], **kwargs)
            written.append(args[0]["RowKey"])
            return original(*args, **kwargs)

        return call

    for name in ("submit_transaction", "create_entity", "update_entity", "upsert_entity"):
        setattr(client, name, recording(name))
    return written


def entities(client: TableClient, prefix: str = "") -> list[tuple[dict[str, Any], str]]:
    """The rows of the run table whose row key starts with `prefix`, with their ETags."""
    rows = [(dict(e), str(e.metadata["etag"])) for e in client.list_entities() if e["RowKey"].startswith(prefix)]
    return sorted(rows, key=lambda row: (row[0]["PartitionKey"], row[0]["RowKey"]))


def table_store(azurite: Azurite, table: str) -> TableRunStore:
    """A store with its own client and an empty identity map: another Functions instance."""
    return TableRunStore(TableClient.from_connection_string(azurite.connection_string, table))


@dataclass
class TableStores:
    azurite: Azurite
    table: str
    client: TableClient
    store: TableRunStore
    other: TableRunStore

    def reload(self, run_id: str) -> Run:
        return table_store(self.azurite, self.table).load(run_id)

    def count_wave_writes(self) -> Callable[[], list[int]]:
        written = record_writes(self.client)
        return lambda: [int(key.split(":")[1]) for key in written if key.startswith("wave:")]

    def stored(self) -> list[Any]:
        return entities(self.client)

    def stored_wave_parts(self) -> int:
        return len(entities(self.client, "wave:"))


@contextmanager
def table_stores(azurite: Azurite) -> Iterator[TableStores]:
    table = azurite.unique_name()
    store = TableRunStore.from_connection_string(azurite.connection_string, table)
    yield TableStores(azurite, table, store.client, store, table_store(azurite, table))


ADAPTERS: dict[str, Callable[[pytest.FixtureRequest, Path], Any]] = {
    "sqlite": lambda request, tmp_path: sqlite_stores(tmp_path / "state" / "patchpilot.db"),
    "dynamodb": lambda request, tmp_path: dynamodb_stores(),
    "table": lambda request, tmp_path: table_stores(request.getfixturevalue("azurite")),
}


@pytest.fixture(params=list(ADAPTERS))
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    with ADAPTERS[request.param](request, tmp_path) as made:
        yield made


@pytest.fixture
def store(stores: Stores) -> RunStore:
    return stores.store


@pytest.fixture
def other(stores: Stores) -> RunStore:
    return stores.other


# ---------------------------------------------------------------- round trips


def test_a_created_run_loads_back_equal_from_another_store(store: RunStore, other: RunStore) -> None:
    run, commands = started()
    store.create(run, commands)

    loaded = other.load("run-1")

    assert loaded == run
    assert loaded is not run
    assert len(loaded.waves) == len(run.waves) > 1 and loaded.excluded == run.excluded


def test_every_state_of_a_whole_run_loads_back_equal(stores: Stores, store: RunStore) -> None:
    run, commands = started()
    store.create(run, commands)
    at = START
    while not run.finished:
        at += timedelta(seconds=30)
        previous = run
        run, commands = step(run, commands, at)
        store.save(run, commands, previous)
        assert stores.reload(run.run_id) == run
    assert run.state == "succeeded"
    assert run.version > 3 * len(run.waves), run.version
    assert stores.stored_wave_parts() == len(run.waves)  # superseded parts were cleaned up


def test_loading_an_unknown_run_raises_unknown_run_error(store: RunStore) -> None:
    with pytest.raises(UnknownRunError):
        store.load("nope")
    with pytest.raises(KeyError):  # UnknownRunError is a KeyError
        store.load("nope")


def test_saving_an_unknown_run_raises_unknown_run_error(store: RunStore) -> None:
    run, commands = started()
    new, _ = step(run, commands, START)
    with pytest.raises(UnknownRunError):
        store.save(new, [], previous=run)


def test_run_ids_lists_runs_oldest_first(store: RunStore) -> None:
    for run_id, hours in [("b", 2), ("a", 3), ("c", 1), ("d", 1)]:
        run, _ = started(run_id)
        store.create(run.model_copy(update={"created_at": START + timedelta(hours=hours)}), [])
    assert store.run_ids() == ["c", "d", "b", "a"]  # the same instant: in the order created


# ---------------------------------------------------------------- optimistic concurrency


def test_creating_a_run_twice_is_a_conflict_and_keeps_the_first(store: RunStore, other: RunStore) -> None:
    run, commands = started()
    store.create(run, commands)
    again = run.model_copy(update={"reason": "second"})

    with pytest.raises(ConflictError):
        other.create(again, [])

    assert other.load("run-1") == run
    assert other.outbox("run-1") == commands


def test_saving_over_a_stale_previous_is_a_conflict_and_writes_nothing(
    stores: Stores, store: RunStore, other: RunStore
) -> None:
    v1, commands = started()
    store.create(v1, commands)
    store.mark_sent("run-1", [c.id for c in commands])
    v2, v2_commands = step(v1, commands, START)
    store.save(v2, v2_commands, previous=v1)
    before = stores.stored()
    rival = v1.model_copy(update={"version": 2, "reason": "rival"})

    with pytest.raises(ConflictError):
        other.save(rival, [*v2_commands, *v2_commands], previous=v1)

    assert other.load("run-1") == v2
    assert other.outbox("run-1") == v2_commands
    assert stores.stored() == before


def test_of_two_stores_saving_the_same_version_exactly_one_wins(store: RunStore, other: RunStore) -> None:
    v1, commands = started()
    store.create(v1, commands)
    mine = v1.model_copy(update={"version": 2, "reason": "mine"})
    theirs = other.load("run-1").model_copy(update={"version": 2, "reason": "theirs"})

    other.save(theirs, [], previous=other.load("run-1"))  # other wins the race
    with pytest.raises(ConflictError):
        store.save(mine, [], previous=v1)  # the identity map still says version 1

    assert store.load("run-1").reason == "theirs"
    assert store.load("run-1") == theirs


def test_a_save_whose_version_does_not_follow_the_previous_is_refused(store: RunStore) -> None:
    v1, commands = started()
    store.create(v1, commands)
    with pytest.raises(ValueError, match="does not follow"):
        store.save(v1.model_copy(update={"reason": "same version"}), [], previous=v1)


# ---------------------------------------------------------------- partial writes


def test_a_save_rewrites_only_the_waves_that_changed(stores: Stores, store: RunStore) -> None:
    v1, commands = started()
    store.create(v1, commands)
    written = stores.count_wave_writes()
    v2, v2_commands = step(v1, commands, START)  # probed: only the first wave changes
    assert [i for i, w in enumerate(v2.waves) if w is not v1.waves[i]] == [0]

    store.save(v2, v2_commands, previous=v1)

    assert written() == [0]


def test_a_save_that_changes_no_wave_writes_no_wave(stores: Stores, store: RunStore) -> None:
    v1, commands = started()
    store.create(v1, commands)
    written = stores.count_wave_writes()
    v2 = v1.model_copy(update={"version": 2, "reason": "header only"})

    store.save(v2, [], previous=v1)

    assert written() == []
    assert stores.reload("run-1") == v2


# ---------------------------------------------------------------- the identity map


def test_load_returns_the_same_object_while_nobody_saved(store: RunStore, other: RunStore) -> None:
    v1, commands = started()
    store.create(v1, commands)
    assert store.load("run-1") is v1  # what it created

    first = other.load("run-1")
    assert other.load("run-1") is first

    v2, v2_commands = step(v1, commands, START)
    store.save(v2, v2_commands, previous=v1)
    assert store.load("run-1") is v2  # what it saved


def test_a_save_by_another_store_invalidates_the_identity_map(store: RunStore, other: RunStore) -> None:
    v1, commands = started()
    store.create(v1, commands)
    assert store.load("run-1") is v1
    v2, v2_commands = step(v1, commands, START)

    other.save(v2, v2_commands, previous=other.load("run-1"))

    reloaded = store.load("run-1")
    assert reloaded is not v1 and reloaded is not v2
    assert reloaded == v2
    assert store.load("run-1") is reloaded


# ---------------------------------------------------------------- the outbox


def test_the_outbox_keeps_publish_order_until_marked_sent(store: RunStore, other: RunStore) -> None:
    v1, commands = started()
    store.create(v1, commands)
    v2, v2_commands = step(v1, commands, START)
    store.save(v2, v2_commands, previous=v1)
    assert [c.type for c in commands] == ["Notify", "LeaseInstances"]
    assert [c.type for c in v2_commands] == ["ProbeAgents"]

    assert store.outbox("run-1") == [*commands, *v2_commands]

    store.mark_sent("run-1", [commands[1].id])
    assert other.outbox("run-1") == [commands[0], *v2_commands]
    other.mark_sent("run-1", [commands[0].id, v2_commands[0].id, "not-in-the-outbox"])
    assert store.outbox("run-1") == []


def test_marking_sent_twice_or_from_a_stale_view_is_harmless(store: RunStore, other: RunStore) -> None:
    v1, commands = started()
    store.create(v1, commands)
    store.outbox("run-1")
    other.outbox("run-1")
    ids = [c.id for c in commands]

    store.mark_sent("run-1", ids)
    other.mark_sent("run-1", ids)  # its view of the outbox is stale: still fine

    assert store.outbox("run-1") == []
    assert other.outbox("run-1") == []


def test_the_outbox_of_one_run_is_not_another_runs(store: RunStore) -> None:
    a, a_commands = started("a")
    b, b_commands = started("b")
    store.create(a, a_commands)
    store.create(b, b_commands)

    store.mark_sent("a", [c.id for c in a_commands])

    assert store.outbox("a") == []
    assert store.outbox("b") == b_commands
    assert store.outbox("unknown") == []
