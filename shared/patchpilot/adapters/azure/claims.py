"""The `Claims` port on the run table (Table Storage): an insert per key, or an ETag-conditional
update of a lapsed one.

Table Storage has no TTL: `purge_lapsed`, called from the Azure timer, deletes the claims whose
`until` has passed (`delete_lapsed` does it for the leases too).
"""

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
PURGE_LIMIT = 1000  # entities deleted per purge: a timer tick stays short, the next goes on


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

    def purge_lapsed(self, now: datetime, limit: int = PURGE_LIMIT) -> int:
        """Delete up to `limit` claims that lapsed before `now`; how many were deleted."""
        return delete_lapsed(self.client, PARTITION, now, limit)

    def _create(self, entity: dict[str, object]) -> bool:
        try:
            self.client.create_entity(entity)
        except ResourceExistsError:
            return False
        return True


def delete_lapsed(client: TableClient, partition: str, now: datetime, limit: int) -> int:
    """Delete up to `limit` entities of `partition` whose `until` is before `now`: one filtered
    query, then a delete per entity on the condition of its ETag, so that one renewed or taken
    again since the query stays. How many were deleted."""
    lapsed = client.query_entities(
        "PartitionKey eq @pk and until lt @now",
        parameters={"pk": partition, "now": now},
        select=["RowKey"],
        results_per_page=max(1, min(limit, 1000)),
    )
    deleted = 0
    for entity in lapsed:
        if deleted >= limit:
            break
        try:
            client.delete_entity(
                partition, entity["RowKey"], etag=entity.metadata["etag"], match_condition=MatchConditions.IfNotModified
            )
        except ResourceModifiedError:  # written again since the query: no longer lapsed
            continue
        deleted += 1
    return deleted
