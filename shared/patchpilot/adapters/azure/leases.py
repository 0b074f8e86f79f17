"""The `Leases` port on the run table (Table Storage): an entity per machine, written on the
condition of its ETag.

A lease is the entity ``PartitionKey = leases``, ``RowKey = <sha256 of the lower-cased instance
id>`` (instance ids compare without case, as ARM ids do; a RowKey may not hold the slashes of
an ARM id), with ``instance_id`` (as its holder gave it), ``holder`` (the run id) and ``until``.

Taking one: create the entity (a free machine: one call); if it exists, read it and, when it is
our own or has lapsed, replace it on the condition of the ETag just read (three calls). Losing
that race (412) or finding it deleted in between reads again, so the run that won is reported.
Releasing one: read it and, when `holder` holds it, delete it on the condition of that ETag.
Table Storage has no TTL: `purge_lapsed` (the Azure timer) deletes lapsed leases.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from patchpilot.adapters.azure.claims import PURGE_LIMIT, delete_lapsed

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableEntity

PARTITION = "leases"
ATTEMPTS = 5  # writes that lose to another writer before the lease is read and settled


class TableLeases:
    def __init__(self, client: TableClient) -> None:
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
            lease = self._get(_row_key(instance_id))
            if lease is None or lease["holder"] != holder:
                continue
            etag = lease.metadata["etag"]
            with contextlib.suppress(ResourceModifiedError):  # taken over since it lapsed: no longer ours
                self.client.delete_entity(
                    PARTITION, lease["RowKey"], etag=etag, match_condition=MatchConditions.IfNotModified
                )

    def purge_lapsed(self, now: datetime, limit: int = PURGE_LIMIT) -> int:
        """Delete up to `limit` leases that lapsed before `now`; how many were deleted."""
        return delete_lapsed(self.client, PARTITION, now, limit)

    def _take(self, instance_id: str, holder: str, until: datetime, now: datetime) -> str | None:
        """None when the lease is ours now; else the run that holds it."""
        row_key = _row_key(instance_id)
        entity = {
            "PartitionKey": PARTITION,
            "RowKey": row_key,
            "instance_id": instance_id,
            "holder": holder,
            "until": until,
        }
        for _ in range(ATTEMPTS):
            try:
                self.client.create_entity(entity)
                return None
            except ResourceExistsError:
                pass
            lease = self._get(row_key)
            if lease is None:  # released in between: create again
                continue
            if lease["holder"] != holder and lease["until"] >= now:
                return str(lease["holder"])
            try:
                self.client.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=lease.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return None
            except (ResourceModifiedError, ResourceNotFoundError):  # another writer got there first
                continue
        raise RuntimeError(f"lease on {instance_id}: changed by other writers {ATTEMPTS} times in a row")

    def _get(self, row_key: str) -> TableEntity | None:
        try:
            return self.client.get_entity(PARTITION, row_key)
        except ResourceNotFoundError:
            return None


def _row_key(instance_id: str) -> str:
    return hashlib.sha256(instance_id.lower().encode()).hexdigest()
