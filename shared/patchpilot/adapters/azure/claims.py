"""The `Claims` port on the run table (Table Storage): an insert per key, or an ETag-conditional
update of a lapsed one."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from patchpilot.ports import Clock

if TYPE_CHECKING:
    from azure.data.tables import TableClient

PARTITION = "claims"


class TableClaims:
    def __init__(self, client: TableClient, clock: Clock) -> None:
        self.client = client
        self.clock = clock

    def claim(self, key: str, until: datetime) -> bool:
        row_key = hashlib.sha256(key.encode()).hexdigest()
        entity = {"PartitionKey": PARTITION, "RowKey": row_key, "until": until}
        try:
            self.client.create_entity(entity)
            return True
        except ResourceExistsError:
            pass
        try:
            held = self.client.get_entity(PARTITION, row_key)
        except ResourceNotFoundError:  # deleted in between: try once more
            return self._create(entity)
        if held["until"] > self.clock.now():
            return False
        try:
            self.client.update_entity(entity, etag=held.metadata["etag"], match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):  # another claim got there first
            return False
        return True

    def renew(self, key: str, until: datetime) -> None:
        row_key = hashlib.sha256(key.encode()).hexdigest()
        self.client.upsert_entity(
            {"PartitionKey": PARTITION, "RowKey": row_key, "until": until}, mode=UpdateMode.REPLACE
        )

    def _create(self, entity: dict[str, object]) -> bool:
        try:
            self.client.create_entity(entity)
        except ResourceExistsError:
            return False
        return True
