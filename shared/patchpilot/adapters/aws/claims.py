"""The `Claims` port on the run table (DynamoDB): one conditional put per key."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from patchpilot.ports import Clock

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef


class DynamoDbClaims:
    """An item `claim#<sha256 of the key>` per claim, written only if absent or lapsed."""

    def __init__(self, table_name: str, client: DynamoDBClient, clock: Clock) -> None:
        self.table_name = table_name
        self.client = client
        self.clock = clock

    def claim(self, key: str, until: datetime) -> bool:
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=_item(key, until),
                ConditionExpression="attribute_not_exists(pk) OR #until < :now",
                ExpressionAttributeNames={"#until": "until"},
                ExpressionAttributeValues={":now": {"N": str(int(self.clock.now().timestamp()))}},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def renew(self, key: str, until: datetime) -> None:
        self.client.put_item(TableName=self.table_name, Item=_item(key, until))


def _item(key: str, until: datetime) -> dict[str, AttributeValueTypeDef]:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return {"pk": {"S": f"claim#{digest}"}, "sk": {"S": "claim"}, "until": {"N": str(int(until.timestamp()))}}
