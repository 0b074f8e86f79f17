"""What DynamoDbLeases costs on moto: a TransactWriteItems per hundred machines, and a second one
for a hundred where another run holds some; and what DynamoDB answers that moto never does (a
transaction cancelled by another one on the same item, a refusal without the item, a throttled
item), injected through botocore's event hooks. The port's behaviour itself is the contract in
tests/test_leases_contract.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto_support import TABLE, Calls, aws, dynamodb, record

import patchpilot.adapters.aws.leases as leases_module
from patchpilot.adapters.aws.leases import ATTEMPTS, DynamoDbLeases

T0 = datetime(2026, 12, 12, 1, 0, tzinfo=UTC)
HOLD = timedelta(minutes=30)
MACHINES = [f"i-{n:017x}" for n in range(250)]
HELD = MACHINES[::25]  # 10 machines, spread over the three chunks (100, 100, 50)
VM = "/subscriptions/0000-aa/resourceGroups/Prod-RG/providers/Microsoft.Compute/virtualMachines/web-1"


def transactions(calls: Calls) -> list[int]:
    """The number of items of each TransactWriteItems, in order."""
    return [len(params["TransactItems"]) for params in calls.of("TransactWriteItems")]


def holders(client: Any) -> dict[str, str]:
    items = client.scan(TableName=TABLE, ConsistentRead=True)["Items"]
    return {item["instance_id"]["S"]: item["holder"]["S"] for item in items}


def cancelled(*codes: str) -> ClientError:
    """The error DynamoDB answers a cancelled transaction with, one reason per item."""
    reasons = [{"Code": code} for code in codes]
    return ClientError(
        {"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"}, "CancellationReasons": reasons},
        "TransactWriteItems",
    )


def test_250_free_machines_cost_three_transactions_to_acquire_and_three_to_release() -> None:
    with aws():
        client = dynamodb()
        calls = record(client, "TransactWriteItems", "PutItem", "DeleteItem", "GetItem")
        leases = DynamoDbLeases(TABLE, client)
        assert leases.acquire(MACHINES, "run-a", T0 + HOLD, T0) == {}
        assert transactions(calls) == [100, 100, 50]
        assert holders(client) == dict.fromkeys(MACHINES, "run-a")
        calls.clear()
        leases.release(MACHINES, "run-a")
        assert transactions(calls) == [100, 100, 50]
        assert [name for name, _ in calls.made] == ["TransactWriteItems"] * 3
        assert holders(client) == {}


def test_250_machines_of_which_another_run_holds_10_cost_three_transactions_and_three_more() -> None:
    with aws():
        DynamoDbLeases(TABLE, dynamodb()).acquire(HELD, "run-other", T0 + HOLD, T0)
        client = dynamodb()
        calls = record(client, "TransactWriteItems", "PutItem", "GetItem")
        assert DynamoDbLeases(TABLE, client).acquire(MACHINES, "run-a", T0 + HOLD, T0) == dict.fromkeys(
            HELD, "run-other"
        )
        assert transactions(calls) == [100, 96, 100, 96, 50, 48]  # each chunk: refused, then the free ones
        assert not calls.of("GetItem") and not calls.of("PutItem")  # the holders came with the refusals
        assert holders(client) == {m: "run-other" if m in HELD else "run-a" for m in MACHINES}


def test_releasing_machines_of_which_another_run_holds_10_frees_only_ours() -> None:
    with aws():
        DynamoDbLeases(TABLE, dynamodb()).acquire(HELD, "run-other", T0 + HOLD, T0)
        client = dynamodb()
        leases = DynamoDbLeases(TABLE, client)
        leases.acquire(MACHINES, "run-a", T0 + HOLD, T0)
        calls = record(client, "TransactWriteItems", "DeleteItem")
        leases.release(MACHINES, "run-a")
        assert transactions(calls) == [100, 96, 100, 96, 50, 48]  # each chunk: refused, then ours
        assert holders(client) == dict.fromkeys(HELD, "run-other")
        calls.clear()
        leases.release(MACHINES, "run-a")  # again: nothing of ours is left, nothing else is touched
        assert transactions(calls) == [100, 96, 100, 96, 50, 48]
        assert holders(client) == dict.fromkeys(HELD, "run-other")


def test_a_machine_another_run_takes_between_the_two_transactions_is_reported_held() -> None:
    with aws():
        DynamoDbLeases(TABLE, dynamodb()).acquire(MACHINES[:1], "run-other", T0 + HOLD, T0)
        intruder = DynamoDbLeases(TABLE, dynamodb())  # another client: its calls are not recorded

        def race(operation: str, params: dict[str, Any]) -> None:
            if len(calls.of(operation)) == 2:  # just before the second transaction
                assert intruder.acquire(MACHINES[1:2], "run-intruder", T0 + HOLD, T0) == {}

        client = dynamodb()
        calls = record(client, "TransactWriteItems", before=race)
        assert DynamoDbLeases(TABLE, client).acquire(MACHINES[:5], "run-a", T0 + HOLD, T0) == {
            MACHINES[0]: "run-other",
            MACHINES[1]: "run-intruder",
        }
        assert transactions(calls) == [5, 4, 3]
        assert holders(client) == {
            MACHINES[0]: "run-other",
            MACHINES[1]: "run-intruder",
            **dict.fromkeys(MACHINES[2:5], "run-a"),
        }


def test_a_holder_missing_from_the_refusal_is_read() -> None:
    with aws():
        DynamoDbLeases(TABLE, dynamodb()).acquire(HELD[:2], "run-other", T0 + HOLD, T0)
        client = dynamodb()

        def without_items(parsed: dict[str, Any], **_: Any) -> None:
            for reason in parsed.get("CancellationReasons", []):
                reason.pop("Item", None)

        client.meta.events.register("after-call.dynamodb.TransactWriteItems", without_items)
        calls = record(client, "TransactWriteItems", "GetItem")
        assert DynamoDbLeases(TABLE, client).acquire(MACHINES[:30], "run-a", T0 + HOLD, T0) == dict.fromkeys(
            HELD[:2], "run-other"
        )
        assert len(calls.of("GetItem")) == 2 and transactions(calls) == [30, 28]


def test_a_transaction_cancelled_by_another_one_on_the_same_items_is_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(leases_module, "CONFLICT_PAUSE", 0.0)
    with aws():

        def conflict_once(operation: str, params: dict[str, Any]) -> None:
            if len(calls.of(operation)) == 1:
                raise cancelled("TransactionConflict", "None", "TransactionConflict")

        client = dynamodb()
        calls = record(client, "TransactWriteItems", before=conflict_once)
        assert DynamoDbLeases(TABLE, client).acquire(MACHINES[:3], "run-a", T0 + HOLD, T0) == {}
        assert transactions(calls) == [3, 3]
        assert holders(client) == dict.fromkeys(MACHINES[:3], "run-a")


def test_runs_racing_without_end_give_up_with_an_error_that_names_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases_module, "CONFLICT_PAUSE", 0.0)
    with aws():

        def conflict(operation: str, params: dict[str, Any]) -> None:
            raise cancelled("TransactionConflict", "None")

        client = dynamodb()
        calls = record(client, "TransactWriteItems", before=conflict)
        with pytest.raises(RuntimeError, match=f"leases in {TABLE}: 2 of 2 writes for run-a cancelled"):
            DynamoDbLeases(TABLE, client).acquire(MACHINES[:2], "run-a", T0 + HOLD, T0)
        assert len(calls.of("TransactWriteItems")) == ATTEMPTS
        with pytest.raises(RuntimeError, match=f"leases in {TABLE}"):
            DynamoDbLeases(TABLE, client).release(MACHINES[:2], "run-a")


def test_a_transaction_cancelled_for_another_reason_is_raised_not_taken_for_a_held_machine() -> None:
    with aws():

        def throttled(operation: str, params: dict[str, Any]) -> None:
            raise cancelled("ConditionalCheckFailed", "ThrottlingError")

        client = dynamodb()
        record(client, "TransactWriteItems", before=throttled)
        with pytest.raises(ClientError, match="TransactionCanceledException"):
            DynamoDbLeases(TABLE, client).acquire(MACHINES[:2], "run-a", T0 + HOLD, T0)
        with pytest.raises(ClientError, match="TransactionCanceledException"):
            DynamoDbLeases(TABLE, client).release(MACHINES[:2], "run-a")


def test_one_machine_named_in_two_cases_is_written_once_and_reported_under_both_names() -> None:
    with aws():
        DynamoDbLeases(TABLE, dynamodb()).acquire([VM], "run-other", T0 + HOLD, T0)
        client = dynamodb()
        calls = record(client, "TransactWriteItems")
        leases = DynamoDbLeases(TABLE, client)
        assert leases.acquire([VM, "i-1", VM.upper()], "run-a", T0 + HOLD, T0) == {
            VM: "run-other",
            VM.upper(): "run-other",
        }
        assert transactions(calls) == [2, 1]  # a transaction may not write one item twice
        calls.clear()
        leases.release(["I-1", "i-1", VM.lower()], "run-a")
        assert transactions(calls) == [2, 1]
        assert holders(client) == {VM: "run-other"}
