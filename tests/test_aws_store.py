"""The DynamoDB RunStore on moto: the SQLite store's behaviours (round trips, optimistic
concurrency, partial writes, the identity map, the outbox) plus what DynamoDB's limits add:
big waves in chunks, saves too big for one transaction, readers racing writers."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from moto_support import TABLE, aws, dynamodb, record
from test_sqlite_store import START, started, step

from patchpilot.adapters.aws.dynamodb_store import CHUNK_BYTES, HEAD, DynamoDbRunStore
from patchpilot.engine.run import InstanceRecord, LogEntry, Run, Step, WaveState
from patchpilot.inventory import Instance, load_inventory
from patchpilot.policy import Policy, load_policy
from patchpilot.ports import ConflictError, UnknownRunError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ITEM_LIMIT = 400 * 1024


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(str(EXAMPLES / "policy.yaml"))


@pytest.fixture(scope="module")
def instances() -> list[Instance]:
    return load_inventory(str(EXAMPLES / "fleet.json"))


@pytest.fixture
def client() -> Iterator[Any]:
    with aws():
        yield dynamodb()


@pytest.fixture
def store(client: Any) -> DynamoDbRunStore:
    return DynamoDbRunStore(TABLE, client)


@pytest.fixture
def other(client: Any) -> DynamoDbRunStore:
    """A second store with its own client: another Lambda container."""
    return DynamoDbRunStore(TABLE, dynamodb())


def fresh() -> DynamoDbRunStore:
    return DynamoDbRunStore(TABLE, dynamodb())


def items(client: Any, prefix: str = "") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=TABLE):
        found.extend(i for i in page["Items"] if i["sk"]["S"].startswith(prefix))
    return found


def wave_positions(keys: list[str]) -> list[int]:
    return [int(k.split("#")[1]) for k in keys if k.startswith("WAVE#")]


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
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["runs"]
    assert [i["IndexName"] for i in table["LocalSecondaryIndexes"]] == ["pending"]


# ---------------------------------------------------------------- round trips


def test_a_created_run_loads_back_equal_from_another_store(
    store: DynamoDbRunStore, other: DynamoDbRunStore, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    store.create(run, commands)

    loaded = other.load("run-1")

    assert loaded == run
    assert loaded is not run
    assert len(loaded.waves) == len(run.waves) > 1 and loaded.excluded == run.excluded


def test_every_state_of_a_whole_run_loads_back_equal(
    store: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    store.create(run, commands)
    at = START
    while not run.finished:
        at += timedelta(seconds=30)
        previous = run
        run, commands = step(run, commands, at)
        store.save(run, commands, previous)
        assert fresh().load(run.run_id) == run
    assert run.state == "succeeded"
    assert run.version > 3 * len(run.waves), run.version
    # Superseded parts were cleaned up: one item per wave is left.
    assert len(items(client, "WAVE#")) == len(run.waves)


def test_loading_an_unknown_run_raises_unknown_run_error(store: DynamoDbRunStore) -> None:
    with pytest.raises(UnknownRunError):
        store.load("nope")
    with pytest.raises(KeyError):  # UnknownRunError is a KeyError
        store.load("nope")


def test_saving_an_unknown_run_raises_unknown_run_error(
    store: DynamoDbRunStore, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    new, _ = step(run, commands, START)
    with pytest.raises(UnknownRunError):
        store.save(new, [], previous=run)


def test_run_ids_lists_runs_oldest_first(store: DynamoDbRunStore, policy: Policy, instances: list[Instance]) -> None:
    for run_id, hours in [("b", 2), ("a", 3), ("c", 1), ("d", 1)]:
        run, _ = started(policy, instances, run_id)
        store.create(run.model_copy(update={"created_at": START + timedelta(hours=hours)}), [])
    assert store.run_ids() == ["c", "d", "b", "a"]  # the same instant: in the order created


# ---------------------------------------------------------------- optimistic concurrency


def test_creating_a_run_twice_is_a_conflict_and_keeps_the_first(
    store: DynamoDbRunStore, other: DynamoDbRunStore, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    store.create(run, commands)
    again = run.model_copy(update={"reason": "second"})

    with pytest.raises(ConflictError):
        other.create(again, [])

    assert other.load("run-1") == run
    assert other.outbox("run-1") == commands


def test_saving_over_a_stale_previous_is_a_conflict_and_writes_nothing(
    store: DynamoDbRunStore, other: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    store.mark_sent("run-1", [c.id for c in commands])
    v2, v2_commands = step(v1, commands, START)
    store.save(v2, v2_commands, previous=v1)
    before = items(client)
    rival = v1.model_copy(update={"version": 2, "reason": "rival"})

    with pytest.raises(ConflictError):
        other.save(rival, [*v2_commands, *v2_commands], previous=v1)

    assert other.load("run-1") == v2
    assert other.outbox("run-1") == v2_commands
    assert items(client) == before


def test_of_two_stores_saving_the_same_version_exactly_one_wins(
    store: DynamoDbRunStore, other: DynamoDbRunStore, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    mine = v1.model_copy(update={"version": 2, "reason": "mine"})
    theirs = other.load("run-1").model_copy(update={"version": 2, "reason": "theirs"})

    other.save(theirs, [], previous=other.load("run-1"))  # other wins the race
    with pytest.raises(ConflictError):
        store.save(mine, [], previous=v1)  # the identity map still says version 1

    assert store.load("run-1").reason == "theirs"
    assert store.load("run-1") == theirs


def test_a_save_whose_version_does_not_follow_the_previous_is_refused(
    store: DynamoDbRunStore, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    with pytest.raises(ValueError, match="does not follow"):
        store.save(v1.model_copy(update={"reason": "same version"}), [], previous=v1)


# ---------------------------------------------------------------- partial writes


def test_a_save_rewrites_only_the_waves_that_changed(
    store: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    calls = record(client, "PutItem", "BatchWriteItem", "TransactWriteItems")
    v2, v2_commands = step(v1, commands, START)  # probed: only the first wave changes
    assert [i for i, w in enumerate(v2.waves) if w is not v1.waves[i]] == [0]

    store.save(v2, v2_commands, previous=v1)

    (transaction,) = calls.of("TransactWriteItems")
    assert wave_positions(calls.written_keys()) == [0]
    assert len(transaction["TransactItems"]) == 1 + 1 + len(v2_commands)  # HEAD, wave 0, outbox
    assert calls.of("PutItem") == []


def test_a_save_that_changes_no_wave_writes_no_wave(
    store: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    calls = record(client, "PutItem", "BatchWriteItem", "TransactWriteItems")
    v2 = v1.model_copy(update={"version": 2, "reason": "header only"})

    store.save(v2, [], previous=v1)

    assert calls.written_keys() == [HEAD]
    assert fresh().load("run-1") == v2


# ---------------------------------------------------------------- the identity map


def test_load_returns_the_same_object_while_nobody_saved(
    store: DynamoDbRunStore, other: DynamoDbRunStore, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    assert store.load("run-1") is v1  # what it created

    first = other.load("run-1")
    assert other.load("run-1") is first

    v2, v2_commands = step(v1, commands, START)
    store.save(v2, v2_commands, previous=v1)
    assert store.load("run-1") is v2  # what it saved


def test_a_hit_reads_only_the_head_item(
    store: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    calls = record(client, "GetItem", "BatchGetItem", "Query")

    assert store.load("run-1") is v1

    assert [name for name, _ in calls.made] == ["GetItem"]


def test_a_save_by_another_store_invalidates_the_identity_map_and_only_changed_waves_are_read(
    store: DynamoDbRunStore, other: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    assert store.load("run-1") is v1
    v2, v2_commands = step(v1, commands, START)
    other.save(v2, v2_commands, previous=v1)  # v2 shares v1's unchanged wave objects
    calls = record(client, "BatchGetItem")

    reloaded = store.load("run-1")

    assert reloaded is not v1 and reloaded is not v2
    assert reloaded == v2
    assert store.load("run-1") is reloaded
    assert all(reloaded.waves[i] is v1.waves[i] for i in range(1, len(v1.waves)))  # unchanged: reused
    (batch,) = calls.of("BatchGetItem")
    assert [k["sk"]["S"].split("#")[1] for k in batch["RequestItems"][TABLE]["Keys"]] == ["0000"]


# ---------------------------------------------------------------- the outbox


def test_the_outbox_keeps_publish_order_until_marked_sent(
    store: DynamoDbRunStore, other: DynamoDbRunStore, policy: Policy, instances: list[Instance]
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


def test_marking_sent_twice_or_from_a_stale_view_is_harmless(
    store: DynamoDbRunStore, other: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    v1, commands = started(policy, instances)
    store.create(v1, commands)
    store.outbox("run-1")
    other.outbox("run-1")
    ids = [c.id for c in commands]

    store.mark_sent("run-1", ids)
    other.mark_sent("run-1", ids)  # its view of the outbox is stale: still fine

    assert store.outbox("run-1") == []
    outbox = items(client, "OUT#")
    assert len(outbox) == len(commands)
    assert all(i["sent"]["BOOL"] and "pending" not in i for i in outbox)


def test_the_outbox_of_one_run_is_not_another_runs(
    store: DynamoDbRunStore, policy: Policy, instances: list[Instance]
) -> None:
    a, a_commands = started(policy, instances, "a")
    b, b_commands = started(policy, instances, "b")
    store.create(a, a_commands)
    store.create(b, b_commands)

    store.mark_sent("a", [c.id for c in a_commands])

    assert store.outbox("a") == []
    assert store.outbox("b") == b_commands
    assert store.outbox("unknown") == []


# ---------------------------------------------------------------- DynamoDB's limits


def test_a_wave_of_5000_instances_is_compressed_and_split_into_items_under_400_kb(
    store: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
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
    store: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
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
    store: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    run = many_waves(run, 150)
    calls = record(client, "TransactWriteItems", "BatchWriteItem")

    store.create(run, commands)

    (transaction,) = calls.of("TransactWriteItems")
    assert transaction["TransactItems"][0]["Put"]["Item"]["sk"]["S"] == HEAD
    assert len(transaction["TransactItems"]) == 1 + len(commands)
    assert len(calls.of("BatchWriteItem")) == 6  # 150 waves, 25 per call
    assert fresh().load("run-1") == run


def test_waves_written_first_by_a_losing_save_are_never_read_and_are_removed(
    store: DynamoDbRunStore, other: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
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


def test_a_crash_between_the_waves_and_the_head_leaves_only_garbage_that_vacuum_removes(
    store: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    run = many_waves(run, 120)
    store.create(run, commands)
    before = len(items(client, "WAVE#"))
    crashing = DynamoDbRunStore(TABLE, dynamodb())

    def crash(operation: str, params: dict[str, Any]) -> None:
        raise KeyboardInterrupt("the container dies")

    record(crashing.client, "TransactWriteItems", before=crash)
    new = many_waves(run, 120).model_copy(update={"version": 2})
    with pytest.raises(KeyboardInterrupt):
        crashing.save(new, [], previous=run)

    assert len(items(client, "WAVE#")) == before + 120  # orphans, named by no HEAD
    assert fresh().load("run-1") == run
    assert store.vacuum("run-1") == 0  # version 2 may still be being saved by someone
    assert store.vacuum("run-1", older_than=timedelta(0)) == 120  # not after a while
    assert len(items(client, "WAVE#")) == before
    assert fresh().load("run-1") == run


def test_vacuum_removes_orphans_of_versions_the_run_has_passed(
    store: DynamoDbRunStore, client: Any, policy: Policy, instances: list[Instance]
) -> None:
    run, commands = started(policy, instances)
    run = many_waves(run, 120)
    store.create(run, commands)
    crashing = DynamoDbRunStore(TABLE, dynamodb())
    record(crashing.client, "TransactWriteItems", before=lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        crashing.save(many_waves(run, 120).model_copy(update={"version": 2}), [], previous=run)
    v2 = run.model_copy(update={"version": 2, "reason": "the redelivered event"})
    store.save(v2, [], previous=run)

    assert store.vacuum("run-1") == 120
    assert len(items(client, "WAVE#")) == 120
    assert fresh().load("run-1") == v2


def test_a_load_racing_a_save_returns_one_whole_version(
    store: DynamoDbRunStore, policy: Policy, instances: list[Instance]
) -> None:
    """The reader has HEAD of version 1 when a writer commits version 2 and deletes the parts
    it superseded: the reader's part reads miss, and it loads again instead of mixing."""
    v1, commands = started(policy, instances)
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
