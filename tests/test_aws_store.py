"""The DynamoDB RunStore on moto beyond the contract (test_run_store_contract.py): the table,
which items a save writes and a load reads, and what DynamoDB's limits add: big waves in
chunks, saves too big for one transaction, orphans and vacuum, readers racing writers."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from moto_support import TABLE, record
from test_run_store_contract import START, DynamoDbStores, dynamodb_stores, fresh, items, started, step, wave_positions

from patchpilot.adapters.aws.dynamodb_store import CHUNK_BYTES, HEAD, DynamoDbRunStore
from patchpilot.engine.run import InstanceRecord, LogEntry, Run, Step, WaveState
from patchpilot.inventory import Instance
from patchpilot.ports import ConflictError

ITEM_LIMIT = 400 * 1024


@pytest.fixture
def stores() -> Iterator[DynamoDbStores]:
    with dynamodb_stores() as made:
        yield made


@pytest.fixture
def client(stores: DynamoDbStores) -> Any:
    return stores.client


@pytest.fixture
def store(stores: DynamoDbStores) -> DynamoDbRunStore:
    return stores.store


@pytest.fixture
def other(stores: DynamoDbStores) -> DynamoDbRunStore:
    """A second store with its own client: another Lambda container."""
    return stores.other


def big_wave(index: int, size: int, seed: int = 0) -> WaveState:
    """A wave of `size` instances with realistic, poorly compressible ids and step details."""
    rng = random.Random(seed)

    def noise(n: int) -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits, k=n))

    records = {}
    for n in range(size):
        instance = Instance(
            id=f"i-{rng.getrandbits(68):017x}",
            cloud="aws",
            region="ap-northeast-1",
            os="linux" if n % 3 else "windows",
            name=f"app-{noise(8)}",
            zone=f"ap-northeast-1{'acd'[n % 3]}",
            tags={"Environment": "production", "Owner": noise(10), "CostCenter": noise(6)},
        )
        records[instance.id] = InstanceRecord(
            instance=instance,
            ring="production",
            wave=index,
            state="patched",
            snapshot_ids=[f"snap-{rng.getrandbits(68):017x}" for _ in range(2)],
            installed=["openssl-3.0.13-1.el9", "kernel-5.14.0-503.el9"],
            steps=[
                Step(step=s, at=START + timedelta(seconds=rng.randint(0, 9999)), ok=True, detail=noise(40))
                for s in ("probe", "snapshot", "install", "health")
            ],
        )
    return WaveState(index=index, ring="production", ring_position=1, records=records)


def with_waves(run: Run, waves: list[WaveState]) -> Run:
    return run.model_copy(update={"waves": tuple(waves), "cursor": 0})


# ---------------------------------------------------------------- the table


def test_the_table_definition_has_the_keys_and_sparse_indexes(client: Any) -> None:
    table = client.describe_table(TableName=TABLE)["Table"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["pk", "sk"]
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["runs", "active"]
    assert [i["IndexName"] for i in table["LocalSecondaryIndexes"]] == ["pending"]


def test_only_runs_under_way_are_listed_as_active(store: DynamoDbRunStore) -> None:
    """The waker's index: a run is in it from its creation until the save that finishes it."""
    v1, commands = started()
    store.create(v1, commands)
    assert store.active_run_ids() == [v1.run_id]
    v2 = v1.model_copy(update={"version": 2, "state": "halted", "awaiting": None})
    store.save(v2, [], previous=v1)
    assert store.active_run_ids() == []
    assert store.run_ids() == [v1.run_id]


# ---------------------------------------------------------------- the items a save writes


def test_a_save_of_one_changed_wave_is_one_transaction(store: DynamoDbRunStore, client: Any) -> None:
    v1, commands = started()
    store.create(v1, commands)
    calls = record(client, "PutItem", "BatchWriteItem", "TransactWriteItems")
    v2, v2_commands = step(v1, commands, START)  # probed: only the first wave changes

    store.save(v2, v2_commands, previous=v1)

    (transaction,) = calls.of("TransactWriteItems")
    assert len(transaction["TransactItems"]) == 1 + 1 + len(v2_commands)  # HEAD, wave 0, outbox
    assert calls.of("PutItem") == []


def test_a_save_that_changes_no_wave_writes_only_the_head_item(store: DynamoDbRunStore, client: Any) -> None:
    v1, commands = started()
    store.create(v1, commands)
    calls = record(client, "PutItem", "BatchWriteItem", "TransactWriteItems")

    store.save(v1.model_copy(update={"version": 2, "reason": "header only"}), [], previous=v1)

    assert calls.written_keys() == [HEAD]


def test_sent_outbox_items_leave_the_pending_index(
    store: DynamoDbRunStore, other: DynamoDbRunStore, client: Any
) -> None:
    v1, commands = started()
    store.create(v1, commands)
    other.outbox("run-1")
    ids = [c.id for c in commands]

    store.mark_sent("run-1", ids)
    other.mark_sent("run-1", ids)  # its view of the outbox is stale

    outbox = items(client, "OUT#")
    assert len(outbox) == len(commands)
    assert all(i["sent"]["BOOL"] and "pending" not in i for i in outbox)


# ---------------------------------------------------------------- the items a load reads


def test_a_hit_reads_only_the_head_item(store: DynamoDbRunStore, client: Any) -> None:
    v1, commands = started()
    store.create(v1, commands)
    calls = record(client, "GetItem", "BatchGetItem", "Query")

    assert store.load("run-1") is v1

    assert [name for name, _ in calls.made] == ["GetItem"]


def test_after_a_save_by_another_store_only_the_changed_waves_are_read(
    store: DynamoDbRunStore, other: DynamoDbRunStore, client: Any
) -> None:
    v1, commands = started()
    store.create(v1, commands)
    v2, v2_commands = step(v1, commands, START)
    other.save(v2, v2_commands, previous=v1)  # v2 shares v1's unchanged wave objects
    calls = record(client, "BatchGetItem")

    reloaded = store.load("run-1")

    assert reloaded == v2
    assert all(reloaded.waves[i] is v1.waves[i] for i in range(1, len(v1.waves)))  # unchanged: reused
    (batch,) = calls.of("BatchGetItem")
    assert [k["sk"]["S"].split("#")[1] for k in batch["RequestItems"][TABLE]["Keys"]] == ["0000"]


# ---------------------------------------------------------------- DynamoDB's limits


def test_a_wave_of_5000_instances_is_compressed_and_split_into_items_under_400_kb(
    store: DynamoDbRunStore,
    client: Any,
) -> None:
    run, commands = started()
    wave = big_wave(1, 5000)
    assert len(wave.model_dump_json()) > 3 * 1024 * 1024
    run = with_waves(run, [wave, *run.waves[1:]])
    calls = record(client, "TransactWriteItems", "BatchWriteItem")

    store.create(run, commands)

    chunks = [i for i in items(client, "WAVE#0000#")]
    assert len(chunks) >= 2, "the wave did not need splitting: make it bigger"
    assert all(len(i["data"]["B"]) <= CHUNK_BYTES < ITEM_LIMIT for i in chunks)
    assert len(calls.of("TransactWriteItems")) == 1 and calls.of("BatchWriteItem") == []  # all in one
    assert fresh().load("run-1") == run

    changed = with_waves(run, [*run.waves[:1], big_wave(2, 1, seed=1), *run.waves[2:]])
    changed = changed.model_copy(update={"version": 2})
    calls.clear()
    store.save(changed, [], previous=run)
    assert 0 not in wave_positions(calls.written_keys())  # the big wave is not written again
    assert fresh().load("run-1") == changed


def test_a_header_too_big_for_the_head_item_goes_to_its_own_items(
    store: DynamoDbRunStore,
    client: Any,
) -> None:
    run, commands = started()
    rng = random.Random(7)
    noise = [LogEntry(at=START, text="".join(rng.choices(string.printable, k=400))) for _ in range(2000)]
    big = run.model_copy(update={"log": tuple(noise)})

    store.create(big, commands)

    assert items(client, "HDR#")
    assert "header" not in items(client, HEAD)[0]
    assert fresh().load("run-1") == big
    small = big.model_copy(update={"version": 2, "log": ()})
    store.save(small, [], previous=big)
    assert items(client, "HDR#") == []  # superseded and deleted
    assert fresh().load("run-1") == small


def many_waves(run: Run, count: int) -> Run:
    wave = run.waves[0]
    return with_waves(run, [wave.model_copy(update={"index": n + 1}) for n in range(count)])


def test_a_save_too_big_for_one_transaction_writes_the_waves_first_then_the_head(
    store: DynamoDbRunStore,
    client: Any,
) -> None:
    run, commands = started()
    run = many_waves(run, 150)
    calls = record(client, "TransactWriteItems", "BatchWriteItem")

    store.create(run, commands)

    (transaction,) = calls.of("TransactWriteItems")
    assert transaction["TransactItems"][0]["Put"]["Item"]["sk"]["S"] == HEAD
    assert len(transaction["TransactItems"]) == 1 + len(commands)
    assert len(calls.of("BatchWriteItem")) == 6  # 150 waves, 25 per call
    assert fresh().load("run-1") == run


def test_waves_written_first_by_a_losing_save_are_never_read_and_are_removed(
    store: DynamoDbRunStore,
    other: DynamoDbRunStore,
    client: Any,
) -> None:
    run, commands = started()
    run = many_waves(run, 120)
    store.create(run, commands)
    winner = run.model_copy(update={"version": 2, "reason": "winner"})
    other.save(winner, [], previous=other.load("run-1"))
    count = len(items(client, "WAVE#"))
    loser = many_waves(run, 120).model_copy(update={"version": 2, "reason": "loser"})  # every wave changed

    with pytest.raises(ConflictError):
        store.save(loser, [], previous=run)

    assert len(items(client, "WAVE#")) == count  # its 120 pre-written waves were deleted
    assert fresh().load("run-1") == winner


def crash_before_the_head(run: Run) -> None:
    """Another container saves version 2 of `run` with 120 changed waves and dies after
    writing the waves, before the transaction that commits HEAD."""

    def crash(operation: str, params: dict[str, Any]) -> None:
        raise KeyboardInterrupt("the container dies")

    crashing = fresh()
    record(crashing.client, "TransactWriteItems", before=crash)
    with pytest.raises(KeyboardInterrupt):
        crashing.save(many_waves(run, 120).model_copy(update={"version": 2}), [], previous=run)


def test_a_crash_between_the_waves_and_the_head_leaves_only_garbage_that_vacuum_removes(
    store: DynamoDbRunStore, client: Any
) -> None:
    run, commands = started()
    run = many_waves(run, 120)
    store.create(run, commands)
    before = len(items(client, "WAVE#"))

    crash_before_the_head(run)

    assert len(items(client, "WAVE#")) == before + 120  # orphans, named by no HEAD
    assert fresh().load("run-1") == run
    assert store.vacuum("run-1") == 0  # version 2 may still be being saved by someone
    assert store.vacuum("run-1", older_than=timedelta(0)) == 120  # not after a while
    assert len(items(client, "WAVE#")) == before
    assert fresh().load("run-1") == run


def test_vacuum_removes_orphans_of_versions_the_run_has_passed(store: DynamoDbRunStore, client: Any) -> None:
    run, commands = started()
    run = many_waves(run, 120)
    store.create(run, commands)
    crash_before_the_head(run)
    v2 = run.model_copy(update={"version": 2, "reason": "the redelivered event"})
    store.save(v2, [], previous=run)

    assert store.vacuum("run-1") == 120
    assert len(items(client, "WAVE#")) == 120
    assert fresh().load("run-1") == v2


def test_a_load_racing_a_save_returns_one_whole_version(
    store: DynamoDbRunStore,
) -> None:
    """The reader has HEAD of version 1 when a writer commits version 2 and deletes the parts
    it superseded: the reader's part reads miss, and it loads again instead of mixing."""
    v1, commands = started()
    store.create(v1, commands)
    v2, v2_commands = step(v1, commands, START)
    reader = fresh()
    raced: list[bool] = []

    def writer_commits_first(operation: str, params: dict[str, Any]) -> None:
        if not raced:
            raced.append(True)
            store.save(v2, v2_commands, previous=v1)

    calls = record(reader.client, "BatchGetItem", before=writer_commits_first)

    assert reader.load("run-1") == v2
    assert len(calls.of("BatchGetItem")) == 2
