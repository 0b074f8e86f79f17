"""The Leases port (one machine, one run at a time) on every runtime: SQLite locally, DynamoDB on
moto, Table Storage on Azurite (the `leases` fixture of tests/leases_runtimes.py: each call a fresh
adapter, as another process would have); the calls DynamoDB is charged; and the purge of lapsed
leases that stands in for a TTL on Table Storage."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from azure.data.tables import TableClient
from moto_support import TABLE, aws, dynamodb, record

from patchpilot.adapters.aws.leases import DynamoDbLeases
from patchpilot.adapters.azure.leases import TableLeases
from patchpilot.ports import Leases

pytestmark = pytest.mark.slow  # 14 s alone (SQLite, moto and Azurite): `make test-fast` leaves it out

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite", "leases_runtimes"]

T0 = datetime(2026, 12, 12, 1, 0, tzinfo=UTC)
HOLD = timedelta(minutes=30)
VM = "/subscriptions/0000-aa/resourceGroups/Prod-RG/providers/Microsoft.Compute/virtualMachines/Web'1 #a?b"
ARC = "/subscriptions/0000-aa/resourceGroups/prod-rg/providers/Microsoft.HybridCompute/machines/db%2F1\\x"
MACHINES = ["i-0a1", "i-0a2", "i-0a3"]


def test_free_machines_are_acquired_and_another_run_is_told_who_holds_each(leases: Callable[[], Leases]) -> None:
    first, second = leases(), leases()
    assert first.acquire(MACHINES[:2], "run-a", T0 + HOLD, T0) == {}
    assert second.acquire(MACHINES, "run-b", T0 + HOLD, T0) == {"i-0a1": "run-a", "i-0a2": "run-a"}
    assert first.acquire(MACHINES, "run-a", T0 + HOLD, T0) == {"i-0a3": "run-b"}  # run-b took the free one


def test_the_holder_acquiring_again_extends_its_lease(leases: Callable[[], Leases]) -> None:
    holder, other = leases(), leases()
    assert holder.acquire(MACHINES, "run-a", T0 + HOLD, T0) == {}
    later = T0 + HOLD - timedelta(minutes=1)
    assert holder.acquire(MACHINES, "run-a", later + HOLD, later) == {}  # extended to later + HOLD
    past_first_lease = T0 + HOLD + timedelta(minutes=5)
    assert other.acquire(MACHINES, "run-b", past_first_lease + HOLD, past_first_lease) == dict.fromkeys(
        MACHINES, "run-a"
    )


def test_a_lapsed_lease_is_taken_over(leases: Callable[[], Leases]) -> None:
    died, successor, third = leases(), leases(), leases()
    assert died.acquire(MACHINES, "run-dead", T0 + HOLD, T0) == {}
    at_until = T0 + HOLD
    assert successor.acquire(MACHINES, "run-b", at_until + HOLD, at_until) == dict.fromkeys(MACHINES, "run-dead")
    lapsed = T0 + HOLD + timedelta(seconds=1)
    assert successor.acquire(MACHINES, "run-b", lapsed + HOLD, lapsed) == {}
    assert third.acquire(MACHINES, "run-c", lapsed + HOLD, lapsed) == dict.fromkeys(MACHINES, "run-b")
    assert died.acquire(MACHINES[:1], "run-dead", lapsed + HOLD, lapsed) == {"i-0a1": "run-b"}  # it came back: too late


def test_release_frees_only_the_holders_leases(leases: Callable[[], Leases]) -> None:
    a, b = leases(), leases()
    assert a.acquire(MACHINES[:2], "run-a", T0 + HOLD, T0) == {}
    assert b.acquire(MACHINES[2:], "run-b", T0 + HOLD, T0) == {}
    b.release(MACHINES, "run-b")  # run-a's machines are not run-b's to give up
    assert leases().acquire(MACHINES, "run-c", T0 + HOLD, T0) == {"i-0a1": "run-a", "i-0a2": "run-a"}
    a.release(MACHINES[:1], "run-a")
    a.release(MACHINES[:1], "run-a")  # idempotent
    a.release(["i-never-leased"], "run-a")
    assert b.acquire(MACHINES, "run-b", T0 + HOLD, T0) == {"i-0a2": "run-a", "i-0a3": "run-c"}


def test_two_runs_racing_for_the_same_machines_never_both_get_one(leases: Callable[[], Leases]) -> None:
    """Two acquirers started together on the same machines, many rounds: every machine goes to
    exactly one of them, and a third reader sees that one holding it. The winners release their
    machines after odd rounds (the next round races to create the leases) and let them lapse
    after even ones (the next round races to take lapsed leases over)."""
    machines = [f"i-{n:04x}" for n in range(8)]
    now = T0
    for round_ in range(16):
        runs = (f"run-{round_}-a", f"run-{round_}-b")
        contenders = [(leases(), holder) for holder in runs]
        barrier = threading.Barrier(len(contenders))

        def race(
            contender: tuple[Leases, str], now: datetime = now, barrier: threading.Barrier = barrier
        ) -> dict[str, str]:
            adapter, holder = contender
            barrier.wait()
            return adapter.acquire(machines, holder, now + HOLD, now)

        with ThreadPoolExecutor(len(contenders)) as pool:
            refused = dict(zip(runs, pool.map(race, contenders), strict=True))
        a, b = runs
        got = {holder: set(machines) - set(refused[holder]) for holder in runs}
        assert not got[a] & got[b], f"round {round_}: both runs hold {sorted(got[a] & got[b])}"
        assert got[a] | got[b] == set(machines)
        assert set(refused[a].values()) <= {b} and set(refused[b].values()) <= {a}
        assert leases().acquire(machines, "reader", now + HOLD, now) == {m: a if m in got[a] else b for m in machines}
        if round_ % 2:
            for adapter, holder in contenders:
                adapter.release(machines, holder)
        now += HOLD + timedelta(minutes=1)


def test_arm_ids_with_slashes_and_quotes_are_leased_like_any_other(leases: Callable[[], Leases]) -> None:
    """(An ARM id in another case is the same machine: tests/security/test_machine_leases.py.)"""
    first, second = leases(), leases()
    assert first.acquire([VM, ARC], "run-a", T0 + HOLD, T0) == {}
    assert second.acquire([VM, ARC, VM + "0"], "run-b", T0 + HOLD, T0) == {VM: "run-a", ARC: "run-a"}
    first.release([VM], "run-a")
    assert second.acquire([VM, ARC], "run-b", T0 + HOLD, T0) == {ARC: "run-a"}


def test_dynamodb_writes_the_machines_in_one_transaction_and_keeps_the_instance_id() -> None:
    """(The calls for hundreds of machines, held or not: tests/test_aws_leases.py.)"""
    with aws():
        client = dynamodb()
        calls = record(client, "TransactWriteItems", "PutItem", "GetItem", "DeleteItem")
        DynamoDbLeases(TABLE, client).acquire([VM, *MACHINES], "run-a", T0 + HOLD, T0)
        assert DynamoDbLeases(TABLE, client).acquire([VM, *MACHINES], "run-b", T0 + HOLD, T0) == dict.fromkeys(
            [VM, *MACHINES], "run-a"
        )
        assert [len(c["TransactItems"]) for c in calls.of("TransactWriteItems")] == [4, 4]  # all held: no second one
        assert not calls.of("GetItem")  # the holder came with the refusal
        DynamoDbLeases(TABLE, client).release([VM, *MACHINES], "run-a")
        assert [len(c["TransactItems"]) for c in calls.of("TransactWriteItems")] == [4, 4, 4]
        assert not calls.of("PutItem") and not calls.of("DeleteItem")
        DynamoDbLeases(TABLE, client).acquire([VM], "run-b", T0 + HOLD, T0)
        item = client.scan(TableName=TABLE)["Items"][0]
        assert item["instance_id"] == {"S": VM} and item["holder"] == {"S": "run-b"}
        assert item["sk"] == {"S": "lease"} and item["pk"]["S"].startswith("lease#")
        assert item["until"] == {"N": str(int((T0 + HOLD).timestamp()))}  # the attribute the table's TTL reads


def test_lapsed_leases_are_purged_from_table_storage_a_bounded_number_at_a_time(azurite: Azurite) -> None:
    name = azurite.unique_name("runs")
    table = TableClient.from_connection_string(azurite.connection_string, name)
    table.create_table()
    leases = TableLeases(table)
    assert leases.acquire([f"vm-{n}" for n in range(5)], "run-dead", T0 + HOLD, T0) == {}
    assert leases.acquire(["vm-live"], "run-live", T0 + 3 * HOLD, T0) == {}
    table.create_entity({"PartitionKey": "runs", "RowKey": "run-x", "until": T0})  # not a lease: never purged
    after = T0 + 2 * HOLD
    assert leases.purge_lapsed(after, limit=3) == 3
    assert leases.purge_lapsed(after) == 2
    assert leases.purge_lapsed(after) == 0
    remaining: list[dict[str, Any]] = list(table.list_entities())
    assert sorted((e["PartitionKey"], e.get("holder")) for e in remaining) == [("leases", "run-live"), ("runs", None)]
    assert leases.acquire(["vm-0"], "run-b", after + HOLD, after) == {}


def test_a_lease_taken_over_while_being_purged_is_kept(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    name = azurite.unique_name("runs")
    table = TableClient.from_connection_string(azurite.connection_string, name)
    table.create_table()
    successor = TableLeases(TableClient.from_connection_string(azurite.connection_string, name))
    assert TableLeases(table).acquire(["vm-1"], "run-dead", T0 + HOLD, T0) == {}
    after = T0 + 2 * HOLD
    delete = table.delete_entity

    def taken_over_first(*args: Any, **kwargs: Any) -> None:  # between the purge's query and its delete
        assert successor.acquire(["vm-1"], "run-b", after + HOLD, after) == {}
        delete(*args, **kwargs)

    monkeypatch.setattr(table, "delete_entity", taken_over_first)
    assert TableLeases(table).purge_lapsed(after) == 0
    assert successor.acquire(["vm-1"], "run-c", after + HOLD, after) == {"vm-1": "run-b"}
