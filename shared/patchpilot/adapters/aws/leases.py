"""The `Leases` port on the run table (DynamoDB): conditional writes, a hundred machines a call.

A lease is the item ``pk = lease#<sha256 of the lower-cased instance id>``, ``sk = lease``
(instance ids compare without case, as ARM ids do; hashed because an ARM id is long and full of
slashes), with ``instance_id`` (as its holder gave it), ``holder`` (the run id) and ``until``
(epoch seconds: the attribute the table's TTL deletes lapsed items by, some time after they
lapse; until then the condition below treats them as free).

Calls: acquiring N machines is one TransactWriteItems per chunk of at most 100 (the most one
transaction takes): a Put per machine conditioned on
``attribute_not_exists(pk) OR holder = :me OR until < :now`` (free, our own: extended, or
lapsed: taken over). When none is held by another run that is all: ⌈N/100⌉ calls. A
transaction is all or nothing while an acquire takes what is free and reports the rest, so when
another run holds machines of a chunk DynamoDB cancels its transaction, and the
``CancellationReasons`` (one per Put, in order: ``ConditionalCheckFailed`` or ``"None"``) name
them, each with the item that stood in the way (``ReturnValuesOnConditionCheckFailure=ALL_OLD``):
the other holder costs no extra read (a GetItem only if that item is missing from the answer). A
second transaction then takes the rest of the chunk, and another while new refusals appear (a
run took one meanwhile), at most `ATTEMPTS` a chunk: a chunk with held machines costs two calls.
Releasing N machines is one TransactWriteItems of Deletes per chunk, conditioned on
``attribute_not_exists(pk) OR holder = :me`` (no lease: nothing to delete); a refused Delete is a
lease another run holds, left as it is, and the chunk's other Deletes are sent again without it.
An item cancelled because another transaction was writing it (``TransactionConflict``: two runs
racing) is sent again after a short, jittered pause; any other reason is raised.

Capacity: a transactional write costs twice the write capacity of a plain one (DynamoDB prepares
and then commits each item; AWS, "Capacity management for transactions"): a lease is under 1 KB,
so 2 write units a machine instead of 1. The calls drop up to a hundredfold, the capacity doubles.

No ClientRequestToken: the SDK retrying a transaction that did commit is harmless without one
(an acquire again by the same holder extends its leases; a release again deletes nothing).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from patchpilot.batching import chunks

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, TransactWriteItemTypeDef

SORT_KEY = "lease"
TRANSACT_ITEMS = 100  # the most one TransactWriteItems takes
ATTEMPTS = 4  # transactions a chunk: one more each time a race changed what it found
CONFLICT_PAUSE = 0.05  # seconds, doubled each attempt, jittered: another transaction on an item
_NAMES = {"#holder": "holder", "#until": "until"}
_TAKE = "attribute_not_exists(pk) OR #holder = :me OR #until < :now"
_GIVE_UP = "attribute_not_exists(pk) OR #holder = :me"
_REFUSED = "ConditionalCheckFailed"
_CONFLICT = "TransactionConflict"
_PASSED = "None"  # the code of an item that met its condition, as a string


class DynamoDbLeases:
    def __init__(self, table_name: str, client: DynamoDBClient) -> None:
        self.table_name = table_name
        self.client = client

    def acquire(self, instance_ids: Sequence[str], holder: str, until: datetime, now: datetime) -> dict[str, str]:
        spellings = _by_key(instance_ids)
        values: dict[str, AttributeValueTypeDef] = {
            ":me": {"S": holder},
            ":now": {"N": str(int(now.timestamp()))},
        }
        expiry: AttributeValueTypeDef = {"N": str(int(until.timestamp()))}
        held: dict[str, str] = {}
        for batch in chunks(list(spellings), TRANSACT_ITEMS):
            puts: dict[str, TransactWriteItemTypeDef] = {
                pk: {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": {
                            **_key(pk),
                            "instance_id": {"S": spellings[pk][0]},
                            "holder": {"S": holder},
                            "until": expiry,
                        },
                        "ConditionExpression": _TAKE,
                        "ExpressionAttributeNames": _NAMES,
                        "ExpressionAttributeValues": values,
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                }
                for pk in batch
            }
            for pk, other in self._write(puts, holder, now).items():
                held.update(dict.fromkeys(spellings[pk], other))
        return held

    def release(self, instance_ids: Sequence[str], holder: str) -> None:
        for batch in chunks(list(_by_key(instance_ids)), TRANSACT_ITEMS):
            deletes: dict[str, TransactWriteItemTypeDef] = {
                pk: {
                    "Delete": {
                        "TableName": self.table_name,
                        "Key": _key(pk),
                        "ConditionExpression": _GIVE_UP,
                        "ExpressionAttributeNames": {"#holder": "holder"},
                        "ExpressionAttributeValues": {":me": {"S": holder}},
                    }
                }
                for pk in batch
            }
            self._write(deletes, holder, None)

    def _write(self, actions: dict[str, TransactWriteItemTypeDef], holder: str, now: datetime | None) -> dict[str, str]:
        """Commit the actions (≤ 100, keyed by lease pk) whose condition holds, dropping the
        refused ones; returns {pk: the run that holds it} for the refused Puts (`now` is the
        acquire's time; None for Deletes, whose refusals are not reported)."""
        pending = dict(actions)
        held: dict[str, str] = {}
        for attempt in range(ATTEMPTS):
            try:
                self.client.transact_write_items(TransactItems=list(pending.values()))
                return held
            except ClientError as error:
                reasons = _reasons(error, len(pending))
            again: dict[str, TransactWriteItemTypeDef] = {}
            for (pk, action), reason in zip(pending.items(), reasons, strict=True):
                code = reason.get("Code")
                if code in (_PASSED, _CONFLICT):
                    again[pk] = action
                elif now is not None:  # a Put refused: who holds the machine
                    other = self._holder(pk, reason.get("Item"), holder, now)
                    if other is None:  # released or lapsed since: take it
                        again[pk] = action
                    else:
                        held[pk] = other
            if not again:
                return held
            if any(r.get("Code") == _CONFLICT for r in reasons):
                time.sleep(random.uniform(0, CONFLICT_PAUSE * 2**attempt))
            pending = again
        raise RuntimeError(
            f"leases in {self.table_name}: {len(pending)} of {len(actions)} writes for {holder} cancelled"
            f" {ATTEMPTS} times by runs racing for the same machines"
        )

    def _holder(self, pk: str, old: Mapping[str, Any] | None, holder: str, now: datetime) -> str | None:
        """The run that holds lease `pk` against `holder` at `now`, from the item returned with
        the refusal or else read; None when it stands in the way no longer."""
        if old is None:  # not returned: read it
            old = self.client.get_item(TableName=self.table_name, Key=_key(pk), ConsistentRead=True).get("Item")
        if old is None:
            return None
        other = str(old["holder"]["S"])
        if other == holder or int(old["until"]["N"]) < int(now.timestamp()):
            return None
        return other


def _by_key(instance_ids: Sequence[str]) -> dict[str, list[str]]:
    """The lease pk of each machine, in order, with the spellings it was given in: one machine
    named twice (in two cases) is one item, and a transaction may write an item only once."""
    spellings: dict[str, list[str]] = {}
    for instance_id in instance_ids:
        spellings.setdefault(_pk(instance_id), []).append(instance_id)
    return spellings


def _pk(instance_id: str) -> str:
    return "lease#" + hashlib.sha256(instance_id.lower().encode()).hexdigest()


def _key(pk: str) -> dict[str, AttributeValueTypeDef]:
    return {"pk": {"S": pk}, "sk": {"S": SORT_KEY}}


def _reasons(error: ClientError, count: int) -> list[Mapping[str, Any]]:
    """The cancellation reasons of a transaction, one per action in order, each a refusal
    (ConditionalCheckFailed), a race (TransactionConflict) or "None"; any other error raised."""
    if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        raise error
    reasons = [cast(Mapping[str, Any], r) for r in error.response.get("CancellationReasons", [])]
    if len(reasons) != count or any(r.get("Code") not in (_PASSED, _REFUSED, _CONFLICT) for r in reasons):
        raise error
    return reasons
