"""The Table Storage RunStore on Azurite beyond the contract (test_run_store_contract.py): the
ETag condition, which rows a save writes and a load reads, and what Table Storage's limits add:
a run of 10,000 instances in rows under 1 MiB and properties under 64 KiB, saves too big for
one transaction, orphans and vacuum, readers racing writers, the list of runs."""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from azure.data.tables import TableClient, UpdateMode
from test_aws_store import big_wave, many_waves, with_waves
from test_run_store_contract import START, TableStores, entities, started, step, table_store, table_stores

from patchpilot.adapters.azure.table_store import HEAD, PROPERTY_BYTES, TableRunStore
from patchpilot.engine.messages import Notify
from patchpilot.engine.run import LogEntry, Run
from patchpilot.ports import ConflictError

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite"]

ENTITY_LIMIT = 1024 * 1024


@pytest.fixture
def stores(azurite: Azurite) -> Iterator[TableStores]:
    with table_stores(azurite) as made:
        yield made


@pytest.fixture
def client(stores: TableStores) -> TableClient:
    return stores.client


@pytest.fixture
def store(stores: TableStores) -> TableRunStore:
    return stores.store


@pytest.fixture
def other(stores: TableStores) -> TableRunStore:
    """A second store with its own client: another Functions instance."""
    return stores.other


@dataclass
class Spy:
    """The calls made to some methods of a client, by name, with their arguments."""

    made: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args, _ in self.made if called == name]

    def transactions(self) -> list[list[tuple[str, str]]]:
        """Each transaction submitted, as (operation, row key) pairs."""
        return [[(op[0], op[1]["RowKey"]) for op in args[0]] for args in self.of("submit_transaction")]


def spy(client: TableClient, *names: str, before: Callable[[str, tuple[Any, ...]], None] | None = None) -> Spy:
    """From now on, record the calls of `names` on `client`, calling `before` first."""
    recorded = Spy()

    def wrap(name: str) -> Callable[..., Any]:
        original = getattr(client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "submit_transaction":
                args = (list(args[0]), *args[1:])
            recorded.made.append((name, args, kwargs))
            if before is not None:
                before(name, args)
            return original(*args, **kwargs)

        return call

    for name in names:
        setattr(client, name, wrap(name))
    return recorded


def fresh(stores: TableStores) -> TableRunStore:
    return table_store(stores.azurite, stores.table)


def row_keys(client: TableClient, prefix: str) -> list[str]:
    return [row["RowKey"] for row, _ in entities(client, prefix)]


def json_size(row: dict[str, Any]) -> int:
    """The size of a row as the service receives it: binary values as base64 text."""
    encoded = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else str(v) for k, v in row.items()}
    return len(json.dumps(encoded).encode())


# ---------------------------------------------------------------- the ETag condition


def test_a_save_with_a_stale_etag_is_a_conflict_even_at_the_same_version(
    stores: TableStores, store: TableRunStore, client: TableClient
) -> None:
    v1, commands = started()
    store.create(v1, commands)
    client.update_entity({"PartitionKey": "run:run-1", "RowKey": HEAD, "touched": True}, mode=UpdateMode.MERGE)
    before = entities(client)
    v2, v2_commands = step(v1, commands, START)

    with pytest.raises(ConflictError):
        store.save(v2, v2_commands, previous=v1)  # the identity map holds version 1 with the old ETag

    assert entities(client) == before  # nothing half-written
    reloaded = store.load("run-1")
    assert reloaded == v1
    store.save(v2, v2_commands, previous=reloaded)  # with the current ETag
    assert fresh(stores).load("run-1") == v2


def test_only_runs_under_way_are_listed_as_active(store: TableRunStore, other: TableRunStore) -> None:
    """The waker's listing (Azurite): a run is in it from its creation until the save that finishes it."""
    v1, commands = started()
    store.create(v1, commands)
    assert other.active_run_ids() == [v1.run_id]
    v2 = v1.model_copy(update={"version": 2, "state": "halted", "awaiting": None})
    store.save(v2, [], previous=v1)
    assert other.active_run_ids() == []
    assert other.run_ids() == [v1.run_id]


def test_a_save_of_one_changed_wave_is_one_transaction(store: TableRunStore, client: TableClient) -> None:
    v1, commands = started()
    store.create(v1, commands)
    calls = spy(client, "submit_transaction", "upsert_entity", "create_entity")
    v2, v2_commands = step(v1, commands, START)  # probed: only the first wave changes

    store.save(v2, v2_commands, previous=v1)

    (written, *deletes) = calls.transactions()
    assert [op for op, _ in written] == ["update", *["create"] * (len(v2_commands) + 1)]
    assert written[0][1] == HEAD and written[-1][1].startswith("wave:0000:v2-")
    assert [op for t in deletes for op, _ in t] == ["delete"]  # the superseded wave
    assert calls.of("upsert_entity") == [] and calls.of("create_entity") == []


def test_sent_outbox_rows_are_deleted(store: TableRunStore, other: TableRunStore, client: TableClient) -> None:
    v1, commands = started()
    store.create(v1, commands)
    other.outbox("run-1")
    ids = [c.id for c in commands]

    store.mark_sent("run-1", ids)
    other.mark_sent("run-1", ids)  # its view of the outbox is stale

    assert row_keys(client, "out:") == []


def test_an_outbox_too_big_for_one_transaction_is_refused_before_anything_is_written(
    store: TableRunStore, client: TableClient
) -> None:
    run, _ = started()
    notices = [Notify(id=f"run-1:n:{n}", run_id="run-1", topic="run_started", text="x") for n in range(100)]

    with pytest.raises(ValueError, match=r"100 outbox messages .* do not fit in one Table Storage transaction"):
        store.create(run, notices)

    assert entities(client) == []


def test_a_run_id_that_cannot_be_a_table_key_is_refused(store: TableRunStore) -> None:
    run, commands = started("eu/prod")
    with pytest.raises(ValueError, match="run id 'eu/prod' cannot be a Table Storage key"):
        store.create(run, commands)


# ---------------------------------------------------------------- the rows a load reads


def test_a_hit_reads_only_the_version_of_the_head(store: TableRunStore, client: TableClient) -> None:
    v1, commands = started()
    store.create(v1, commands)
    calls = spy(client, "get_entity", "query_entities")

    assert store.load("run-1") is v1

    assert [(name, args[1], kwargs.get("select")) for name, args, kwargs in calls.made] == [
        ("get_entity", HEAD, ["version"])
    ]


def test_after_a_save_by_another_store_only_the_changed_waves_are_read(
    store: TableRunStore, other: TableRunStore, client: TableClient
) -> None:
    v1, commands = started()
    store.create(v1, commands)
    v2, v2_commands = step(v1, commands, START)
    other.save(v2, v2_commands, previous=v1)  # v2 shares v1's unchanged wave objects
    calls = spy(client, "get_entity", "query_entities")

    reloaded = store.load("run-1")

    assert reloaded == v2
    assert all(reloaded.waves[i] is v1.waves[i] for i in range(1, len(v1.waves)))  # unchanged: reused
    assert [args[1].split(":")[:2] for args in calls.of("get_entity")] == [[HEAD], [HEAD], ["wave", "0000"]]
    assert calls.of("query_entities") == []


# ---------------------------------------------------------------- Table Storage's limits


def test_a_run_of_10000_instances_fits_in_rows_and_properties_within_the_limits(
    stores: TableStores, store: TableRunStore, client: TableClient
) -> None:
    run, commands = started()
    run = with_waves(run, [big_wave(1, 5000), big_wave(2, 5000, seed=1), *run.waves[1:]])
    assert sum(len(w.records) for w in run.waves) >= 10_000

    store.create(run, commands)

    rows = [row for row, _ in entities(client)]
    assert len(row_keys(client, "wave:0000:")) >= 2, "the wave did not need splitting: make it bigger"
    assert all(len(v) <= PROPERTY_BYTES for row in rows for v in row.values() if isinstance(v, bytes))
    assert max(json_size(row) for row in rows) < ENTITY_LIMIT

    changed = with_waves(run, [*run.waves[:2], big_wave(3, 1, seed=2), *run.waves[3:]])
    changed = changed.model_copy(update={"version": 2})
    calls = spy(client, "submit_transaction")
    store.save(changed, [], previous=run)
    written = [key for t in calls.transactions() for op, key in t if op != "delete"]
    assert [key.split(":")[1] for key in written if key.startswith("wave:")] == ["0002"]  # not the big ones
    assert fresh(stores).load("run-1") == changed  # the big waves read back by a store that never saw them


def test_a_header_too_big_for_the_head_row_goes_to_its_own_rows(
    stores: TableStores, store: TableRunStore, client: TableClient
) -> None:
    run, commands = started()
    rng = random.Random(7)
    noise = [LogEntry(at=START, text="".join(rng.choices(string.printable, k=400))) for _ in range(2000)]
    big = run.model_copy(update={"log": tuple(noise)})

    store.create(big, commands)

    assert row_keys(client, "header:")
    assert "h00" not in client.get_entity("run:run-1", HEAD)
    assert fresh(stores).load("run-1") == big
    small = big.model_copy(update={"version": 2, "log": ()})
    store.save(small, [], previous=big)
    assert row_keys(client, "header:") == []  # superseded and deleted
    assert fresh(stores).load("run-1") == small


def test_a_save_too_big_for_one_transaction_writes_the_waves_first_then_the_head(
    stores: TableStores, store: TableRunStore, client: TableClient
) -> None:
    run, commands = started()
    run = many_waves(run, 150)
    calls = spy(client, "submit_transaction")

    store.create(run, commands)

    *waves_first, last = calls.transactions()
    assert [len(t) for t in waves_first] == [100, 50]
    assert all(op == "upsert" and key.startswith("wave:") for t in waves_first for op, key in t)
    assert last == [("create", HEAD), *[("create", f"out:{n:06d}") for n in range(1, len(commands) + 1)]]
    assert fresh(stores).load("run-1") == run


def test_waves_written_first_by_a_losing_save_are_never_read_and_are_removed(
    stores: TableStores, store: TableRunStore, other: TableRunStore, client: TableClient
) -> None:
    run, commands = started()
    run = many_waves(run, 120)
    store.create(run, commands)
    winner = run.model_copy(update={"version": 2, "reason": "winner"})
    other.save(winner, [], previous=other.load("run-1"))
    count = len(row_keys(client, "wave:"))
    loser = many_waves(run, 120).model_copy(update={"version": 2, "reason": "loser"})  # every wave changed

    with pytest.raises(ConflictError):
        store.save(loser, [], previous=run)

    assert len(row_keys(client, "wave:")) == count  # its 120 pre-written waves were deleted
    assert fresh(stores).load("run-1") == winner


def crash_before_the_head(stores: TableStores, run: Run) -> None:
    """Another instance saves version 2 of `run` with 120 changed waves and dies after writing
    the waves, before the transaction that commits the head."""

    def crash(name: str, args: tuple[Any, ...]) -> None:
        if any(op[1]["RowKey"] == HEAD for op in args[0]):
            raise KeyboardInterrupt("the instance dies")

    crashing = fresh(stores)
    spy(crashing.client, "submit_transaction", before=crash)
    with pytest.raises(KeyboardInterrupt):
        crashing.save(many_waves(run, 120).model_copy(update={"version": 2}), [], previous=run)


def test_a_crash_between_the_waves_and_the_head_leaves_only_garbage_that_vacuum_removes(
    stores: TableStores, store: TableRunStore, client: TableClient
) -> None:
    run, commands = started()
    run = many_waves(run, 120)
    store.create(run, commands)
    before = len(row_keys(client, "wave:"))

    crash_before_the_head(stores, run)

    assert len(row_keys(client, "wave:")) == before + 120  # orphans, named by no head
    assert fresh(stores).load("run-1") == run
    assert store.vacuum("run-1") == 0  # version 2 may still be being saved by someone
    assert store.vacuum("run-1", older_than=timedelta(0)) == 120  # not after a while
    assert len(row_keys(client, "wave:")) == before
    assert fresh(stores).load("run-1") == run


def test_vacuum_removes_orphans_of_versions_the_run_has_passed(
    stores: TableStores, store: TableRunStore, client: TableClient
) -> None:
    run, commands = started()
    run = many_waves(run, 120)
    store.create(run, commands)
    crash_before_the_head(stores, run)
    v2 = run.model_copy(update={"version": 2, "reason": "the redelivered event"})
    store.save(v2, [], previous=run)

    assert store.vacuum("run-1") == 120
    assert len(row_keys(client, "wave:")) == 120
    assert fresh(stores).load("run-1") == v2


def test_a_load_racing_a_save_returns_one_whole_version(stores: TableStores, store: TableRunStore) -> None:
    """The reader has the head of version 1 when a writer commits version 2 and deletes the part
    it superseded: the reader's part read misses, and it loads again instead of mixing."""
    v1, commands = started()
    store.create(v1, commands)
    v2, v2_commands = step(v1, commands, START)
    reader = fresh(stores)

    def writer_commits_first(name: str, args: tuple[Any, ...]) -> None:
        reads_parts = name == "query_entities" or args[1].startswith("wave:")
        if reads_parts and store.load("run-1") is v1:
            store.save(v2, v2_commands, previous=v1)

    calls = spy(reader.client, "get_entity", "query_entities", before=writer_commits_first)

    assert reader.load("run-1") == v2
    assert store.load("run-1") is v2  # the writer did commit in between
    assert [args[1] for args in calls.of("get_entity")].count(HEAD) == 4  # version and head, twice


# ---------------------------------------------------------------- the list of runs


def test_a_run_whose_create_died_before_its_transaction_is_not_listed(
    stores: TableStores, store: TableRunStore
) -> None:
    store.create(started("a")[0], [])
    dying = fresh(stores)

    def crash(name: str, args: tuple[Any, ...]) -> None:
        raise KeyboardInterrupt("the instance dies")

    spy(dying.client, "submit_transaction", before=crash)
    with pytest.raises(KeyboardInterrupt):
        dying.create(started("b")[0], [])

    assert store.run_ids() == ["a"]
    assert store.outbox("b") == []


def test_a_run_whose_index_row_was_not_confirmed_is_listed_once_its_head_exists(
    stores: TableStores, store: TableRunStore, client: TableClient
) -> None:
    unconfirmed = fresh(stores)

    def refuse(name: str, args: tuple[Any, ...]) -> None:
        raise KeyboardInterrupt("the instance dies")

    spy(unconfirmed.client, "update_entity", before=refuse)
    with pytest.raises(KeyboardInterrupt):
        unconfirmed.create(started("a")[0], [])
    assert client.get_entity("runs", "a")["confirmed"] is False

    assert store.run_ids() == ["a"]
    assert client.get_entity("runs", "a")["confirmed"] is True


def test_from_connection_string_creates_the_table_once(azurite: Azurite) -> None:
    table = azurite.unique_name()
    first = TableRunStore.from_connection_string(azurite.connection_string, table)
    run, commands = started()
    first.create(run, commands)

    again = TableRunStore.from_connection_string(azurite.connection_string, table)

    assert again.load("run-1") == run
