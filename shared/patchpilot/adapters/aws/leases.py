"""The `Leases` port on the run table (DynamoDB): one conditional write per machine.

A lease is the item ``pk = lease#<sha256 of the lower-cased instance id>``, ``sk = lease``
(instance ids compare without case, as ARM ids do; hashed because an ARM id is long and full of
slashes), with ``instance_id`` (as its holder gave it), ``holder`` (the run id) and ``until``
(epoch seconds: the attribute the table's TTL deletes lapsed items by, some time after they
lapse; until then the condition below treats them as free).

Calls: acquiring N machines is N PutItem calls, each conditioned on
``attribute_not_exists(pk) OR holder = :me OR until < :now`` (free, our own: extended, or
lapsed: taken over). A failed condition returns the item that stood in the way
(``ReturnValuesOnConditionCheckFailure=ALL_OLD``), so the other holder costs no extra read; a
GetItem only if that item is missing from the answer. Releasing N machines is N DeleteItem calls
conditioned on ``holder = :me`` (a failed condition is a lease we do not hold: left as it is).
BatchWriteItem takes no conditions and TransactWriteItems is all or nothing, while an acquire
must take what is free and report the rest: hence one write per machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

SORT_KEY = "lease"
ATTEMPTS = 3  # a lease released between our failed write and the read of its holder: write again
_NAMES = {"#holder": "holder", "#until": "until"}


class DynamoDbLeases:
    def __init__(self, table_name: str, client: DynamoDBClient) -> None:
        self.table_name = table_name
        self.client = client

    def acquire(self, instance_ids: Sequence[str], holder: str, until: datetime, now: datetime) -> dict[str, str]:
        held: dict[str, str] = {}
        for instance_id in instance_ids:
            other = self._take(instance_id, holder, until, now)
            if other is not None:
                held[instance_id] = other
        return held

    def release(self, instance_ids: Sequence[str], holder: str) -> None:
        for instance_id in instance_ids:
            try:
                self.client.delete_item(
                    TableName=self.table_name,
                    Key=_key(instance_id),
                    ConditionExpression="#holder = :me",
                    ExpressionAttributeNames={"#holder": "holder"},
                    ExpressionAttributeValues={":me": {"S": holder}},
                )
            except ClientError as error:
                if not _condition_failed(error):
                    raise

    def _take(self, instance_id: str, holder: str, until: datetime, now: datetime) -> str | None:
        """None when the lease is ours now; else the run that holds it."""
        item: dict[str, AttributeValueTypeDef] = {
            **_key(instance_id),
            "instance_id": {"S": instance_id},
            "holder": {"S": holder},
            "until": {"N": str(int(until.timestamp()))},
        }
        for _ in range(ATTEMPTS):
            try:
                self.client.put_item(
                    TableName=self.table_name,
                    Item=item,
                    ConditionExpression="attribute_not_exists(pk) OR #holder = :me OR #until < :now",
                    ExpressionAttributeNames=_NAMES,
                    ExpressionAttributeValues={":me": {"S": holder}, ":now": {"N": str(int(now.timestamp()))}},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                return None
            except ClientError as error:
                if not _condition_failed(error):
                    raise
                old = cast(Mapping[str, Any], error.response).get("Item")
            if old is None:  # not returned: read it
                old = self.client.get_item(TableName=self.table_name, Key=_key(instance_id), ConsistentRead=True).get(
                    "Item"
                )
            if old is not None:
                return str(old["holder"]["S"])
        raise RuntimeError(f"lease on {instance_id} in {self.table_name}: refused {ATTEMPTS} times yet held by no run")


def _key(instance_id: str) -> dict[str, AttributeValueTypeDef]:
    digest = hashlib.sha256(instance_id.lower().encode()).hexdigest()
    return {"pk": {"S": f"lease#{digest}"}, "sk": {"S": SORT_KEY}}


def _condition_failed(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
