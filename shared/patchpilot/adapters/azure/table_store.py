"""The `RunStore` on Azure: runs and their outbox in one Table Storage table.

The model of the DynamoDB store (`patchpilot.adapters.aws.dynamodb_store`: read its docstring),
fitted to Table Storage's limits: an entity of at most 1 MiB, a property of at most 64 KiB, an
entity-group transaction of at most 100 entities, all in ONE partition, and 4 MiB.

Each run is one partition, ``run:<run id>``. Its rows:

``head``
    ``version``, ``outbox_seq`` (the last outbox sequence number given), ``created_at``, the
    *manifest* (which part rows make up this version) and, when it fits, the run header (the
    Run without its waves), both zlib-compressed JSON split over binary properties of 64 KiB
    (``m00``, ``m01``, ... and ``h00``, ...). Its ETag is the optimistic-concurrency check.
``wave:<position 0000>:<tag>:<chunk 00>``
    One wave's compressed JSON in properties ``d00``... (at most `ROW_BYTES` a row; a bigger
    wave continues in the next chunk).
``header:<tag>:<chunk 00>``
    The header when it does not fit in ``head`` (thousands of excluded instances, a long log).
``out:<seq 000000>``
    One unsent outbox message: ``message_id`` and its compressed JSON (``b00``...). `mark_sent`
    deletes it: Table Storage has no sparse index to find the unsent among many sent rows.

Part rows (waves and header chunks) are immutable. A save writes the parts it changes under a
fresh *tag* (``v<version>-<random>``) and the manifest names, per wave, the tag and chunk count
to read; unchanged waves keep theirs (a save rewrites only the waves `decide` changed:
`run.waves[i] is not previous.waves[i]`). A reader reads ``head``, then exactly the parts it
names; a part is never overwritten, only deleted once superseded, so a reader that finds one
gone (a save committed and cleaned up in between) reads again. The manifest, the encoding of a
run into parts and its reassembly are `patchpilot.adapters.run_parts`, shared with DynamoDB.

A create or save is one entity-group transaction: ``head`` (created, or replaced on the
condition that its ETag is still the one the run was loaded with: 412 is a ConflictError), the
new outbox rows and, when they fit (`MAX_TRANSACTION_ENTITIES`, `MAX_TRANSACTION_BYTES`), the new
parts. When they do not, the parts are written first in transactions of their own: under a
fresh tag they are invisible until a ``head`` names them, so a save that then loses the race
merely leaves orphans (it deletes them, best effort; `vacuum` removes any a crash left). After
a commit the parts the new ``head`` no longer names are deleted, best effort. Table Storage has
no idempotency token: an SDK retry of a transaction that did commit reports a conflict, and the
shell reloads and finds its own write, which it treats like anyone else's.

`load` keeps an identity map like the other stores: the last Run per id, returned again while
``head``'s version is unchanged (one small read, ``select=version``); waves whose part is
unchanged are reused as the very same objects and only the changed parts are read.

`run_ids` reads the partition ``runs``: one row per run (``created_at``, ``inserted_ns``),
written before the run's transaction (the first writer's stays) and marked ``confirmed`` after
it. A row left unconfirmed (a create that failed or died half-way) is listed only if the run's
``head`` exists.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, TableTransactionError, UpdateMode

from patchpilot.adapters.run_parts import Encoded, Manifest, PartLayout, Version, compress, split
from patchpilot.batching import chunks
from patchpilot.engine.messages import MESSAGE, Message
from patchpilot.engine.run import Run
from patchpilot.ports import ConflictError, UnknownRunError

log = logging.getLogger("patchpilot.azure.table")

# One operation of `TableClient.submit_transaction`: ("create", row) or ("update", row, options).
Operation = tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], Mapping[str, Any]]

HEAD = "head"
RUNS_PARTITION = "runs"
PROPERTY_BYTES = 64 * 1024  # a binary property
ROW_BYTES = 10 * PROPERTY_BYTES  # compressed bytes a part or outbox row holds: < 1 MiB once base64 in JSON
HEADER_PROPERTIES = 6  # header bytes kept in the head row: 6 properties of 64 KiB
MANIFEST_PROPERTIES = 3
MAX_TRANSACTION_ENTITIES = 100
MAX_TRANSACTION_BYTES = 3_800_000  # of JSON; the limit is 4 MiB for the whole request
ENTITY_OVERHEAD_BYTES = 600  # keys, metadata and the multipart framing of one operation
POINT_READS = 4  # up to this many part rows are read one by one; more by one query of the partition
LOAD_ATTEMPTS = 5
_CONFLICTS = frozenset({"EntityAlreadyExists", "UpdateConditionNotSatisfied", "ResourceNotFound"})
_FORBIDDEN_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_PARTS_FILTER = (
    "PartitionKey eq @pk and ((RowKey ge 'header:' and RowKey lt 'header;')"
    " or (RowKey ge 'wave:' and RowKey lt 'wave;'))"
)
_LAYOUT = PartLayout(
    wave_key="wave:{position:04d}:{tag}:{chunk:02d}",
    header_key="header:{tag}:{chunk:02d}",
    chunk_bytes=ROW_BYTES,
    fits_in_head=lambda header, _manifest: len(header) <= HEADER_PROPERTIES * PROPERTY_BYTES,
)


@dataclass(frozen=True)
class _Stored:
    """What the store knows of a run version: the Run (None when only its head was read),
    where its parts are, its outbox counter and the head row's ETag."""

    run: Run | None
    version: int
    manifest: Manifest
    outbox_seq: int
    etag: str


class _Cancelled(Exception):
    """The transaction's condition failed (or the run is gone)."""

    def __init__(self, error: TableTransactionError) -> None:
        super().__init__(str(error))
        self.error = error


class TableRunStore:
    """A `RunStore` on the table of `client` (which must exist: `from_connection_string` creates it)."""

    def __init__(self, client: TableClient) -> None:
        self.client = client
        self._runs: dict[str, _Stored] = {}  # the identity map: the last version seen per id
        self._unsent: dict[str, dict[str, list[str]]] = {}  # per run: message id -> outbox row keys

    @classmethod
    def from_connection_string(cls, conn: str, table: str) -> TableRunStore:
        """The store on table `table` of the storage account of `conn`, created if missing."""
        client = TableClient.from_connection_string(conn, table)
        with contextlib.suppress(ResourceExistsError):
            client.create_table()
        return cls(client)

    # ------------------------------------------------------------ RunStore

    def create(self, run: Run, outbox: Sequence[Message]) -> None:
        pk = _pk(run.run_id)
        encoded = _LAYOUT.encode(run)
        parts, manifest = _part_rows(pk, encoded), encoded.manifest
        head = self._head_row(run, manifest, encoded.header, outbox_seq=len(outbox))
        outbox_rows = self._outbox_rows(pk, outbox, first_seq=1)
        _fixed_bytes(head, outbox_rows)  # too big: refused before anything is written
        self._index(run)
        try:
            etag = self._commit(("create", head), parts, outbox_rows)
        except _Cancelled as cancelled:
            raise ConflictError(f"run {run.run_id} exists already") from cancelled.error
        self._confirm(run.run_id)
        self._runs[run.run_id] = _Stored(run, run.version, manifest, len(outbox), etag)

    def load(self, run_id: str) -> Run:
        pk = _pk(run_id)
        for _ in range(LOAD_ATTEMPTS):
            version = self._head_version(pk)
            cached = self._runs.get(run_id)
            if version is None:
                self._runs.pop(run_id, None)
                raise UnknownRunError(run_id)
            if cached is not None and cached.run is not None and cached.version == version:
                return cached.run
            head = self._get(pk, HEAD)
            if head is None:
                continue
            stored = self._assemble(run_id, head, cached)
            if stored is not None and stored.run is not None:
                self._runs[run_id] = stored
                return stored.run
            log.info("run %s: parts of version %s were superseded while loading; loading again", run_id, version)
        raise RuntimeError(f"run {run_id}: could not read a consistent version in {LOAD_ATTEMPTS} attempts")

    def save(self, run: Run, outbox: Sequence[Message], previous: Run) -> None:
        if run.run_id != previous.run_id:
            raise ValueError(f"cannot save run {run.run_id} over run {previous.run_id}")
        if run.version != previous.version + 1:
            # Equal versions must mean equal runs, or the identity map of another store would
            # serve a stale run as current.
            raise ValueError(f"run {run.run_id}: version {run.version} does not follow {previous.version}")
        run_id, pk = run.run_id, _pk(run.run_id)
        base = self._stored_at(run_id, previous.version)
        encoded = _LAYOUT.encode(run, Version(previous, base.manifest))
        parts, manifest = _part_rows(pk, encoded), encoded.manifest
        outbox_seq = base.outbox_seq + len(outbox)
        head = self._head_row(run, manifest, encoded.header, outbox_seq)
        update = ("update", head, {"mode": UpdateMode.REPLACE, "etag": base.etag, "match_condition": _UNCHANGED})
        try:
            etag = self._commit(update, parts, self._outbox_rows(pk, outbox, first_seq=base.outbox_seq + 1))
        except _Cancelled as cancelled:
            self._runs.pop(run_id, None)
            if self._head_version(pk) is None:
                raise UnknownRunError(run_id) from cancelled.error
            raise ConflictError(f"run {run_id} is no longer at version {previous.version}") from cancelled.error
        self._runs[run_id] = _Stored(run, run.version, manifest, outbox_seq, etag)
        if run.finished and not previous.finished:
            self._mark_index(run_id, finished=True)
        self._delete_quietly(pk, _LAYOUT.superseded(base.manifest, manifest))

    def outbox(self, run_id: str) -> list[Message]:
        messages: list[Message] = []
        unsent: dict[str, list[str]] = {}
        for row in self._outbox_query(run_id, select=None):
            messages.append(MESSAGE.validate_json(zlib.decompress(_joined(row, "b"))))
            unsent.setdefault(str(row["message_id"]), []).append(str(row["RowKey"]))
        self._unsent[run_id] = unsent
        return messages

    def mark_sent(self, run_id: str, message_ids: Sequence[str]) -> None:
        known = self._unsent.get(run_id, {})
        if any(message_id not in known for message_id in message_ids):
            known = {}
            for row in self._outbox_query(run_id, select=["RowKey", "message_id"]):
                known.setdefault(str(row["message_id"]), []).append(str(row["RowKey"]))
        for message_id in message_ids:
            for row_key in known.pop(message_id, []):
                self.client.delete_entity(_pk(run_id), row_key)  # gone already is fine
        self._unsent[run_id] = known

    def run_ids(self) -> list[str]:
        rows: list[tuple[str, str, str]] = []
        for row in self.client.query_entities("PartitionKey eq @pk", parameters={"pk": RUNS_PARTITION}):
            run_id = str(row["RowKey"])
            if not row.get("confirmed"):
                if self._head_version(_pk(run_id)) is None:
                    continue  # its create failed, or is under way
                self._confirm(run_id)
            rows.append((str(row["created_at"]), str(row["inserted_ns"]), run_id))
        rows.sort()
        return [run_id for _, _, run_id in rows]

    # ------------------------------------------------------------ beyond the port

    def active_run_ids(self) -> list[str]:
        """The runs that have not finished, oldest first: one query of the index partition, whose
        rows a save that finishes a run marks `finished` (after its commit, best effort: a run
        whose mark a crash lost is listed, and the waker skips it once loaded)."""
        rows: list[tuple[str, str, str]] = []
        for row in self.client.query_entities("PartitionKey eq @pk", parameters={"pk": RUNS_PARTITION}):
            if not row.get("finished") and row.get("confirmed"):
                rows.append((str(row["created_at"]), str(row["inserted_ns"]), str(row["RowKey"])))
        rows.sort()
        return [run_id for _, _, run_id in rows]

    def vacuum(self, run_id: str, older_than: timedelta = timedelta(hours=1)) -> int:
        """Delete the part rows of `run_id` that no head names and never will: orphans left by a
        crash between writing parts and committing, or before the cleanup after a commit. An
        unnamed part of a version above the current one may belong to a save under way; it is
        kept unless written more than `older_than` ago. Returns how many were deleted."""
        pk = _pk(run_id)
        head = self._get(pk, HEAD)
        if head is None:
            return 0
        version = int(head["version"])
        named = set(_LAYOUT.keys(_manifest(head)))
        cutoff = datetime.now(UTC) - older_than
        doomed: list[str] = []
        for row in self.client.query_entities(_PARTS_FILTER, parameters={"pk": pk}, select=["RowKey", "Timestamp"]):
            key = str(row["RowKey"])
            written = row.metadata.get("timestamp")
            if key in named:
                continue
            if _tag_version(key) <= version or (isinstance(written, datetime) and written < cutoff):
                doomed.append(key)
        self._delete(pk, doomed)
        return len(doomed)

    # ------------------------------------------------------------ writing

    def _head_row(self, run: Run, manifest: Manifest, header: bytes | None, outbox_seq: int) -> dict[str, Any]:
        dumped = compress(manifest.dump())
        if len(dumped) > MANIFEST_PROPERTIES * PROPERTY_BYTES:
            raise ValueError(f"run {run.run_id}: the manifest of {len(run.waves)} waves is too big for a table row")
        head = _row(_pk(run.run_id), HEAD, "m", dumped)
        head.update(version=run.version, outbox_seq=outbox_seq, created_at=_utc(run.created_at))
        if header is not None:
            head.update(_properties("h", header))
        return head

    def _outbox_rows(self, pk: str, outbox: Sequence[Message], first_seq: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for seq, message in enumerate(outbox, start=first_seq):
            body = compress(MESSAGE.dump_json(message).decode())
            if len(body) > ROW_BYTES:
                raise ValueError(f"message {message.id} is {len(body)} bytes compressed: too big for the outbox")
            row = _row(pk, f"out:{seq:06d}", "b", body)
            row["message_id"] = message.id
            rows.append(row)
        return rows

    def _index(self, run: Run) -> None:
        """The run's row in the `runs` partition; the first creator's stays."""
        row = {
            "PartitionKey": RUNS_PARTITION,
            "RowKey": run.run_id,
            "created_at": _utc(run.created_at),
            "inserted_ns": f"{time.time_ns():020d}",  # orders runs created in the same instant
            "confirmed": False,
        }
        with contextlib.suppress(ResourceExistsError):
            self.client.create_entity(row)

    def _confirm(self, run_id: str) -> None:
        self._mark_index(run_id, confirmed=True)

    def _mark_index(self, run_id: str, **marks: bool) -> None:
        try:
            self.client.update_entity(
                {"PartitionKey": RUNS_PARTITION, "RowKey": run_id, **marks}, mode=UpdateMode.MERGE
            )
        except HttpResponseError as error:  # run_ids checks the head instead; a lost `finished` lists it a while
            log.warning("run %s: could not mark its index row %s: %s", run_id, sorted(marks), error)

    def _commit(self, head: Operation, parts: list[dict[str, Any]], outbox: list[dict[str, Any]]) -> str:
        """One transaction for the head write and the outbox, with the parts when they fit;
        otherwise the parts first (invisible until a head names them). The head's new ETag.
        Raises _Cancelled when the head's condition fails, after deleting the parts it wrote."""
        operations: list[Operation] = [head, *(("create", row) for row in outbox)]
        fixed_bytes = _fixed_bytes(head[1], outbox)
        parts_bytes = sum(_json_bytes(row) for row in parts)
        prewritten: list[dict[str, Any]] = []
        if (
            len(operations) + len(parts) <= MAX_TRANSACTION_ENTITIES
            and fixed_bytes + parts_bytes <= MAX_TRANSACTION_BYTES
        ):
            operations.extend(("create", row) for row in parts)
        else:
            for group in _groups(parts):
                self.client.submit_transaction([("upsert", row, {"mode": UpdateMode.REPLACE}) for row in group])
            prewritten = parts
        try:
            results = self.client.submit_transaction(operations)
        except TableTransactionError as error:
            if str(getattr(error, "error_code", "")) not in _CONFLICTS:
                raise
            if prewritten:
                self._delete_quietly(prewritten[0]["PartitionKey"], [row["RowKey"] for row in prewritten])
            raise _Cancelled(error) from error
        return str(results[0]["etag"])

    # ------------------------------------------------------------ reading

    def _get(self, pk: str, row_key: str, select: list[str] | None = None) -> TableEntity | None:
        try:
            return self.client.get_entity(pk, row_key, select=select)
        except ResourceNotFoundError:
            return None

    def _head_version(self, pk: str) -> int | None:
        head = self._get(pk, HEAD, select=["version"])
        return None if head is None else int(head["version"])

    def _stored_at(self, run_id: str, version: int) -> _Stored:
        """Where the parts of `run_id` at `version` are, and the head's ETag: from the identity
        map, or from the head row. ConflictError early when the head is at another version
        (the transaction checks again)."""
        cached = self._runs.get(run_id)
        if cached is not None and cached.version == version:
            return cached
        head = self._get(_pk(run_id), HEAD, select=["version", "outbox_seq", *_names("m", MANIFEST_PROPERTIES)])
        if head is None:
            raise UnknownRunError(run_id)
        stored = int(head["version"])
        if stored != version:
            raise ConflictError(f"run {run_id} is at version {stored}, not {version} as loaded")
        manifest = _manifest(head)
        return _Stored(None, stored, manifest, int(head["outbox_seq"]), str(head.metadata["etag"]))

    def _assemble(self, run_id: str, head: TableEntity, cached: _Stored | None) -> _Stored | None:
        """The Run that `head` names, reusing the cached waves whose part is unchanged; None
        when a part is gone (superseded meanwhile)."""
        manifest = _manifest(head)
        run = _LAYOUT.decode(
            manifest,
            head_header=lambda: _joined(head, "h"),
            fetch=lambda row_keys: self._fetch(_pk(run_id), row_keys),
            cached=None if cached is None or cached.run is None else Version(cached.run, cached.manifest),
        )
        if run is None:
            return None
        return _Stored(run, run.version, manifest, int(head["outbox_seq"]), str(head.metadata["etag"]))

    def _fetch(self, pk: str, row_keys: list[str]) -> dict[str, bytes]:
        """The data of the part rows `row_keys` that exist: a few read one by one, more by one
        query of the partition's parts (which returns superseded ones not yet deleted too)."""
        wanted = set(row_keys)
        if len(wanted) <= POINT_READS:
            rows: Iterable[TableEntity] = (row for key in wanted if (row := self._get(pk, key)) is not None)
        else:
            rows = self.client.query_entities(_PARTS_FILTER, parameters={"pk": pk})
        return {str(row["RowKey"]): _joined(row, "d") for row in rows if row["RowKey"] in wanted}

    def _outbox_query(self, run_id: str, select: list[str] | None) -> Iterable[TableEntity]:
        return self.client.query_entities(
            "PartitionKey eq @pk and RowKey ge 'out:' and RowKey lt 'out;'",
            parameters={"pk": _pk(run_id)},
            select=select,
        )

    # ------------------------------------------------------------ deleting

    def _delete(self, pk: str, row_keys: list[str]) -> None:
        """Delete rows, a transaction per hundred; one by one if a transaction fails (one of
        them is gone already: a delete of a missing row fails the whole transaction)."""
        for group in chunks(row_keys, MAX_TRANSACTION_ENTITIES):
            try:
                self.client.submit_transaction([("delete", {"PartitionKey": pk, "RowKey": key}) for key in group])
            except TableTransactionError:
                for key in group:
                    self.client.delete_entity(pk, key)

    def _delete_quietly(self, pk: str, row_keys: list[str]) -> None:
        """Delete parts nobody can name any more; a failure leaves garbage for `vacuum`."""
        try:
            self._delete(pk, row_keys)
        except HttpResponseError as error:
            log.warning("could not delete %d superseded rows (left for vacuum): %s", len(row_keys), error)


# ---------------------------------------------------------------- helpers

_UNCHANGED = MatchConditions.IfNotModified


def _pk(run_id: str) -> str:
    if not run_id or len(run_id) > 512 or _FORBIDDEN_KEY.search(run_id):
        raise ValueError(
            f"run id {run_id!r} cannot be a Table Storage key: 1 to 512 characters,"
            " none of / \\ # ? or control characters"
        )
    return f"run:{run_id}"


def _tag_version(row_key: str) -> int:
    """The version in a part row's tag (``wave:0001:v7-1a2b3c4d:00`` -> 7)."""
    tag = row_key.split(":")[-2]
    return int(tag[1:].split("-", 1)[0])


def _names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n:02d}" for n in range(count)]


def _manifest(head: Mapping[str, Any]) -> Manifest:
    return Manifest.parse(zlib.decompress(_joined(head, "m")))


def _part_rows(pk: str, encoded: Encoded) -> list[dict[str, Any]]:
    return [_row(pk, row_key, "d", data) for row_key, data in encoded.chunks]


def _properties(prefix: str, data: bytes) -> dict[str, bytes]:
    """`data` split over binary properties `<prefix>00`, `<prefix>01`, ... of 64 KiB."""
    return {f"{prefix}{n:02d}": chunk for n, chunk in enumerate(split(data, PROPERTY_BYTES))}


def _row(pk: str, row_key: str, prefix: str, data: bytes) -> dict[str, Any]:
    return {"PartitionKey": pk, "RowKey": row_key, **_properties(prefix, data)}


def _joined(row: Mapping[str, Any], prefix: str) -> bytes:
    """The bytes `_properties` split over a row's properties."""
    parts: list[bytes] = []
    while (value := row.get(f"{prefix}{len(parts):02d}")) is not None:
        parts.append(bytes(value))
    return b"".join(parts)


def _fixed_bytes(head: Mapping[str, Any], outbox: list[dict[str, Any]]) -> int:
    """The size of the head and outbox rows, which must fit in one transaction (ValueError)."""
    size = _json_bytes(head) + sum(_json_bytes(row) for row in outbox)
    if 1 + len(outbox) > MAX_TRANSACTION_ENTITIES or size > MAX_TRANSACTION_BYTES:
        raise ValueError(
            f"{len(outbox)} outbox messages ({size} bytes with the run's head) do not fit in one Table Storage"
            f" transaction ({MAX_TRANSACTION_ENTITIES} entities, {MAX_TRANSACTION_BYTES} bytes)"
        )
    return size


def _groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows in groups that fit in one transaction."""
    groups: list[list[dict[str, Any]]] = []
    size = 0
    for row in rows:
        length = _json_bytes(row)
        if not groups or len(groups[-1]) == MAX_TRANSACTION_ENTITIES or size + length > MAX_TRANSACTION_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(row)
        size += length
    return groups


def _json_bytes(row: Mapping[str, Any]) -> int:
    """A generous estimate of a row's size in a request: binary values travel as base64."""
    total = ENTITY_OVERHEAD_BYTES
    for name, value in row.items():
        total += 2 * len(name) + 40
        if isinstance(value, bytes):
            total += 4 * math.ceil(len(value) / 3)
        else:
            total += len(str(value).encode())
    return total


def _utc(moment: datetime) -> str:
    """A fixed-width UTC ISO 8601 text, so that texts sort as the moments do."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: pass an aware (UTC) datetime")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
