"""The `RunStore` on AWS: runs and their outbox in one DynamoDB table.

Item layout (partition key `pk` = ``RUN#<run id>``, sort key `sk`):

``HEAD``
    The run's pointer item: ``version`` (the optimistic-concurrency counter), ``created_at``
    (fixed-width UTC ISO text), ``outbox_seq`` (the last outbox sequence number given), the
    ``manifest`` (JSON: which part items make up this version, see below) and, when it fits,
    the run header itself (the Run without its waves) as zlib-compressed JSON in ``header``
    (Binary). ``kind`` = ``run`` puts HEAD items, and only them, in the sparse ``runs`` GSI.
``WAVE#<position 0000>#<tag>#<chunk 00>``
    One wave's JSON, zlib-compressed, in ``data`` (Binary), split into chunks of at most
    `CHUNK_BYTES` when one item (≤ 400 KB) cannot hold it; ``written_at`` (epoch seconds).
``HDR#<tag>#<chunk 00>``
    The header's compressed JSON when it does not fit in the HEAD item (a run with thousands of
    excluded instances or a long log).
``active`` = ``run`` is set on HEAD items of runs that have not finished, and removed when they
finish: the sparse ``active`` GSI (partition ``active``, sort ``created_at``, keys only) lists the
runs under way in one small query, whatever the table's history (`active_run_ids`: the waker).
``OUT#<seq 000000>``
    One outbox message: ``message_id``, ``body`` (zlib JSON, Binary), ``sent`` (BOOL) and, while
    unsent, ``pending`` (the seq again): the sort key of the sparse ``pending`` LSI (which
    projects ``message_id`` and ``body``), so `outbox` reads only what is unsent, strongly
    consistent, however long the run. `mark_sent` sets ``sent`` and removes ``pending``.

Part items (waves and header chunks) are immutable. Each save writes the parts it changes
under a fresh *tag* (``v<version>-<random>``) and the manifest in HEAD names, per wave, the tag
and chunk count to read; unchanged waves keep their tag (a save rewrites only the waves
`decide` changed: `run.waves[i] is not previous.waves[i]`). So a reader never mixes versions:
it reads HEAD (consistent), then exactly the part keys that HEAD names (BatchGetItem,
consistent). A part is never overwritten, only deleted once superseded; a reader that finds a
part gone (a concurrent save committed and cleaned up in between) starts over. The manifest,
the encoding of a run into parts and its reassembly are `patchpilot.adapters.run_parts`,
shared with the Table Storage store.

A create or save is one TransactWriteItems: the HEAD write (create: a Put conditioned on
``attribute_not_exists(pk)``; save: an Update conditioned on ``version = previous.version``,
which leaves ``kind``/``created_at`` alone so the GSI is not rewritten), the new outbox items
(conditioned on not existing) and, when they fit (≤ 100 items, ≤ 4 MB in all), the new parts.
When they do not fit, the new parts are written first with BatchWriteItem and the transaction
carries only HEAD and the outbox: parts under a fresh tag are invisible until a HEAD names
them, so if the conditional write then fails they are merely orphans (the loser deletes them,
best effort; `vacuum` removes any a crash left, using the version in the tag and the part's
``written_at``). After a commit the parts the new HEAD no longer names are deleted, best
effort. The transaction carries a fresh ClientRequestToken, so an SDK retry of a transaction
that did commit is a success rather than a conflict with itself.

`load` keeps an identity map like the SQLite store: the last Run per id, returned again while
the HEAD version is unchanged; when it changed, waves whose tag is unchanged are reused as the
very same objects and only the changed parts are fetched. The check reads the whole HEAD item
(DynamoDB bills a GetItem by item size whatever its projection, and the miss path needs the
manifest anyway), but decompresses and parses nothing on a hit.

`run_ids` queries the sparse ``runs`` GSI (partition ``kind``, sort ``created_at``): cheap, but
eventually consistent, so a run created a moment ago may be missing; only `Service.recover`
uses it.
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from botocore.exceptions import ClientError

from patchpilot.adapters.run_parts import Encoded, Manifest, PartLayout, Version, compress
from patchpilot.batching import chunks
from patchpilot.engine.message_adapter import MESSAGE  # writing loads no message: the first read does
from patchpilot.engine.run import Run
from patchpilot.ports import ConflictError, UnknownRunError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        CreateTableInputTypeDef,
        KeysAndAttributesTypeDef,
        TransactWriteItemTypeDef,
        WriteRequestTypeDef,
    )

    from patchpilot.engine.messages import Message

    Item = dict[str, AttributeValueTypeDef]

log = logging.getLogger("patchpilot.aws.dynamodb")

HEAD = "HEAD"
RUNS_INDEX = "runs"  # sparse GSI over HEAD items: kind (HASH), created_at (RANGE)
PENDING_INDEX = "pending"  # sparse LSI over unsent outbox items: pk (HASH), pending (RANGE)
RUN_KIND = "run"
ACTIVE_INDEX = "active"  # sparse GSI over HEAD items of unfinished runs: active (HASH), created_at (RANGE)

CHUNK_BYTES = 350_000  # compressed bytes per part item, well under the 400 KB item limit
INLINE_HEADER_BYTES = 300_000  # header and manifest bytes kept in the HEAD item
MAX_TRANSACT_ITEMS = 100
MAX_TRANSACT_BYTES = 3_800_000  # the limit is 4 MB for all items of a transaction together
ITEM_OVERHEAD_BYTES = 200  # keys and attribute names, counted generously
BATCH_WRITE_ITEMS = 25
BATCH_GET_KEYS = 100
LOAD_ATTEMPTS = 5
BATCH_ATTEMPTS = 8
_CONFLICTS = frozenset({"ConditionalCheckFailed", "TransactionConflict"})
_LAYOUT = PartLayout(
    wave_key="WAVE#{position:04d}#{tag}#{chunk:02d}",
    header_key="HDR#{tag}#{chunk:02d}",
    chunk_bytes=CHUNK_BYTES,
    fits_in_head=lambda header, manifest: len(header) + len(manifest.dump()) <= INLINE_HEADER_BYTES,
)


def table_definition(table_name: str) -> CreateTableInputTypeDef:
    """The table as `CreateTable` takes it (tests create it from here; the SAM template mirrors
    it): on-demand billing, the sparse ``runs`` and ``active`` GSIs and the sparse ``pending`` LSI."""
    return {
        "TableName": table_name,
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "kind", "AttributeType": "S"},
            {"AttributeName": "created_at", "AttributeType": "S"},
            {"AttributeName": "pending", "AttributeType": "S"},
            {"AttributeName": "active", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": RUNS_INDEX,
                "KeySchema": [
                    {"AttributeName": "kind", "KeyType": "HASH"},
                    {"AttributeName": "created_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["inserted_ns"]},
            },
            {
                "IndexName": ACTIVE_INDEX,
                "KeySchema": [
                    {"AttributeName": "active", "KeyType": "HASH"},
                    {"AttributeName": "created_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            },
        ],
        "LocalSecondaryIndexes": [
            {
                "IndexName": PENDING_INDEX,
                "KeySchema": [
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "pending", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["message_id", "body"]},
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


class _Stored(NamedTuple):
    """What the store knows of a run version: the Run and where its parts are."""

    run: Run
    manifest: Manifest
    outbox_seq: int


class DynamoDbRunStore:
    """A `RunStore` on the DynamoDB table `table_name` (created from `table_definition`)."""

    def __init__(self, table_name: str, client: DynamoDBClient) -> None:
        self.table_name = table_name
        self.client = client
        self._runs: dict[str, _Stored] = {}  # the identity map: the last version seen per id
        self._unsent: dict[str, dict[str, list[str]]] = {}  # per run: message id -> outbox keys

    # ------------------------------------------------------------ RunStore

    def create(self, run: Run, outbox: Sequence[Message]) -> None:
        encoded = _LAYOUT.encode(run)
        parts, manifest, inline = _part_items(run.run_id, encoded), encoded.manifest, encoded.header
        head: Item = {
            "pk": {"S": _pk(run.run_id)},
            "sk": {"S": HEAD},
            "kind": {"S": RUN_KIND},
            "version": {"N": str(run.version)},
            "created_at": {"S": _utc(run.created_at)},
            "inserted_ns": {"N": str(time.time_ns())},  # orders runs created in the same instant
            "outbox_seq": {"N": str(len(outbox))},
            "manifest": {"S": manifest.dump()},
        }
        if inline is not None:
            head["header"] = {"B": inline}
        if not run.finished:
            head["active"] = {"S": RUN_KIND}
        write: TransactWriteItemTypeDef = {
            "Put": {"TableName": self.table_name, "Item": head, "ConditionExpression": "attribute_not_exists(pk)"}
        }
        try:
            self._commit(write, _size(head), parts, self._outbox_items(run.run_id, outbox, first_seq=1))
        except _Cancelled as cancelled:
            raise ConflictError(f"run {run.run_id} exists already") from cancelled.error
        self._runs[run.run_id] = _Stored(run, manifest, len(outbox))

    def load(self, run_id: str) -> Run:
        for _ in range(LOAD_ATTEMPTS):
            item = self._get_head(run_id)
            if item is None:
                self._runs.pop(run_id, None)
                raise UnknownRunError(run_id)
            version = _int(item, "version")
            cached = self._runs.get(run_id)
            if cached is not None and cached.run.version == version:
                return cached.run
            stored = self._assemble(run_id, item, cached)
            if stored is not None:
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
        run_id = run.run_id
        base = self._stored_at(run_id, previous.version)
        encoded = _LAYOUT.encode(run, Version(previous, base.manifest))
        parts, manifest, inline = _part_items(run_id, encoded), encoded.manifest, encoded.header
        outbox_seq = base.outbox_seq + len(outbox)
        values: dict[str, AttributeValueTypeDef] = {
            ":previous": {"N": str(previous.version)},
            ":version": {"N": str(run.version)},
            ":manifest": {"S": manifest.dump()},
            ":outbox_seq": {"N": str(outbox_seq)},
        }
        sets = ["#version = :version", "#manifest = :manifest", "#outbox_seq = :outbox_seq"]
        removes = []
        if inline is not None:
            values[":header"] = {"B": inline}
            sets.append("#header = :header")
        else:
            removes.append("#header")
        if run.finished:
            removes.append("#active")  # out of the active index
        else:
            values[":active"] = {"S": RUN_KIND}
            sets.append("#active = :active")
        write: TransactWriteItemTypeDef = {
            "Update": {
                "TableName": self.table_name,
                "Key": {"pk": {"S": _pk(run_id)}, "sk": {"S": HEAD}},
                "UpdateExpression": "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else ""),
                "ConditionExpression": "#version = :previous",
                "ExpressionAttributeNames": {
                    "#version": "version",
                    "#manifest": "manifest",
                    "#outbox_seq": "outbox_seq",
                    "#header": "header",
                    "#active": "active",
                },
                "ExpressionAttributeValues": values,
            }
        }
        head_bytes = ITEM_OVERHEAD_BYTES + len(inline or b"") + len(values[":manifest"]["S"])
        outbox_items = self._outbox_items(run_id, outbox, first_seq=base.outbox_seq + 1)
        try:
            self._commit(write, head_bytes, parts, outbox_items)
        except _Cancelled as cancelled:
            self._runs.pop(run_id, None)
            if self._get_head(run_id) is None:
                raise UnknownRunError(run_id) from cancelled.error
            raise ConflictError(f"run {run_id} is no longer at version {previous.version}") from cancelled.error
        self._runs[run_id] = _Stored(run, manifest, outbox_seq)
        self._delete_quietly(self._superseded(run_id, base.manifest, manifest))

    def outbox(self, run_id: str) -> list[Message]:
        messages: list[Message] = []
        unsent: dict[str, list[str]] = {}
        for item in self._query_pending(run_id, with_body=True):
            messages.append(MESSAGE.validate_json(zlib.decompress(_bytes(item, "body"))))
            unsent.setdefault(_str(item, "message_id"), []).append(_str(item, "sk"))
        self._unsent[run_id] = unsent
        return messages

    def mark_sent(self, run_id: str, message_ids: Sequence[str]) -> None:
        known = self._unsent.get(run_id, {})
        if any(message_id not in known for message_id in message_ids):
            known = {}
            for item in self._query_pending(run_id, with_body=False):
                known.setdefault(_str(item, "message_id"), []).append(_str(item, "sk"))
        for message_id in message_ids:
            for sk in known.pop(message_id, []):
                # Marking twice is harmless: the second update finds the item already sent.
                self.client.update_item(
                    TableName=self.table_name,
                    Key={"pk": {"S": _pk(run_id)}, "sk": {"S": sk}},
                    UpdateExpression="SET #sent = :true REMOVE #pending",
                    ExpressionAttributeNames={"#sent": "sent", "#pending": "pending"},
                    ExpressionAttributeValues={":true": {"BOOL": True}},
                )
        self._unsent[run_id] = known

    def run_ids(self) -> list[str]:
        rows = [
            (_str(item, "created_at"), _int(item, "inserted_ns"), _str(item, "pk"))
            for item in self._runs_in(RUNS_INDEX, "kind")
        ]
        rows.sort(key=lambda row: (row[0], row[1]))
        return [pk.removeprefix("RUN#") for _, _, pk in rows]

    # ------------------------------------------------------------ beyond the port

    def active_run_ids(self) -> list[str]:
        """The runs that have not finished, oldest first: one query of the sparse ``active`` GSI
        (eventually consistent: a run saved a moment ago may be listed as it was)."""
        rows = sorted((_str(item, "created_at"), _str(item, "pk")) for item in self._runs_in(ACTIVE_INDEX, "active"))
        return [pk.removeprefix("RUN#") for _, pk in rows]

    def _runs_in(self, index: str, attribute: str) -> Iterator[Item]:
        """The run HEAD items of a GSI whose key `attribute` holds RUN_KIND, every page of it."""
        for page in self.client.get_paginator("query").paginate(
            TableName=self.table_name,
            IndexName=index,
            KeyConditionExpression="#key = :run",
            ExpressionAttributeNames={"#key": attribute},
            ExpressionAttributeValues={":run": {"S": RUN_KIND}},
        ):
            yield from page["Items"]

    def vacuum(self, run_id: str, older_than: timedelta = timedelta(hours=1)) -> int:
        """Delete the part items of `run_id` that no HEAD names and never will: orphans left by
        a crash between writing parts and committing, or before the cleanup after a commit.
        An unnamed part of a version above the current one may belong to a save under way; it
        is kept unless written more than `older_than` ago. Returns how many were deleted."""
        item = self._get_head(run_id)
        if item is None:
            return 0
        version = _int(item, "version")
        named = set(_LAYOUT.keys(Manifest.parse(_str(item, "manifest"))))
        cutoff = time.time() - older_than.total_seconds()
        doomed: list[str] = []
        for page in self.client.get_paginator("query").paginate(
            TableName=self.table_name,
            KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames={"#pk": "pk", "#sk": "sk", "#written_at": "written_at"},
            ExpressionAttributeValues={":pk": {"S": _pk(run_id)}},
            ProjectionExpression="#sk, #written_at",
            ConsistentRead=True,
        ):
            for row in page["Items"]:
                sk = _str(row, "sk")
                part_version = _tag_version(sk)
                if part_version is None or sk in named:
                    continue
                if part_version <= version or float(row["written_at"]["N"]) < cutoff:
                    doomed.append(sk)
        self._delete(run_id, doomed)
        return len(doomed)

    # ------------------------------------------------------------ writing

    def _outbox_items(self, run_id: str, outbox: Sequence[Message], first_seq: int) -> list[Item]:
        items: list[Item] = []
        for seq, message in enumerate(outbox, start=first_seq):
            body = compress(MESSAGE.dump_json(message).decode())
            if len(body) > CHUNK_BYTES:
                raise ValueError(f"message {message.id} is {len(body)} bytes compressed: too big for the outbox")
            items.append(
                {
                    "pk": {"S": _pk(run_id)},
                    "sk": {"S": f"OUT#{seq:06d}"},
                    "pending": {"S": f"{seq:06d}"},
                    "message_id": {"S": message.id},
                    "body": {"B": body},
                    "sent": {"BOOL": False},
                }
            )
        return items

    def _commit(self, head: TransactWriteItemTypeDef, head_bytes: int, parts: list[Item], outbox: list[Item]) -> None:
        """One transaction for the HEAD write and the outbox, with the parts when they fit;
        otherwise the parts first (invisible until a HEAD names them). Raises _Cancelled when
        a condition fails, after deleting the parts it wrote."""
        items: list[TransactWriteItemTypeDef] = [head]
        items.extend(
            {"Put": {"TableName": self.table_name, "Item": item, "ConditionExpression": "attribute_not_exists(sk)"}}
            for item in outbox
        )
        fixed_bytes = head_bytes + sum(_size(item) for item in outbox)
        if len(items) > MAX_TRANSACT_ITEMS or fixed_bytes > MAX_TRANSACT_BYTES:
            raise ValueError(
                f"{len(outbox)} outbox messages ({fixed_bytes} bytes with the run header) do not fit"
                " in one DynamoDB transaction"
            )
        parts_bytes = sum(_size(item) for item in parts)
        prewritten: list[Item] = []
        if len(items) + len(parts) <= MAX_TRANSACT_ITEMS and fixed_bytes + parts_bytes <= MAX_TRANSACT_BYTES:
            items.extend({"Put": {"TableName": self.table_name, "Item": item}} for item in parts)
        else:
            self._batch_write([{"PutRequest": {"Item": item}} for item in parts])
            prewritten = parts
        try:
            # The token makes an SDK retry of a transaction that did commit a success, not a
            # conflict with itself.
            self.client.transact_write_items(TransactItems=items, ClientRequestToken=uuid.uuid4().hex)
        except ClientError as error:
            reasons = {str(r.get("Code", "")) for r in error.response.get("CancellationReasons", [])}
            if _error_code(error) != "TransactionCanceledException" or not reasons & _CONFLICTS:
                raise
            self._delete_quietly([(_str(item, "pk"), _str(item, "sk")) for item in prewritten])
            raise _Cancelled(error) from error

    # ------------------------------------------------------------ reading

    def _get_head(self, run_id: str) -> Item | None:
        response = self.client.get_item(
            TableName=self.table_name, Key={"pk": {"S": _pk(run_id)}, "sk": {"S": HEAD}}, ConsistentRead=True
        )
        return response.get("Item")

    def _stored_at(self, run_id: str, version: int) -> _Stored | _Base:
        """Where the parts of `run_id` at `version` are: from the identity map, or from HEAD.
        ConflictError early when HEAD is elsewhere (the transaction checks again)."""
        cached = self._runs.get(run_id)
        if cached is not None and cached.run.version == version:
            return cached
        item = self._get_head(run_id)
        if item is None:
            raise UnknownRunError(run_id)
        stored = _int(item, "version")
        if stored != version:
            raise ConflictError(f"run {run_id} is at version {stored}, not {version} as loaded")
        return _Base(Manifest.parse(_str(item, "manifest")), _int(item, "outbox_seq"))

    def _assemble(self, run_id: str, head: Item, cached: _Stored | None) -> _Stored | None:
        """The Run that `head` names, reusing the cached waves whose part is unchanged; None
        when a part is gone (superseded meanwhile)."""
        manifest = Manifest.parse(_str(head, "manifest"))
        run = _LAYOUT.decode(
            manifest,
            head_header=lambda: _bytes(head, "header"),
            fetch=lambda sks: self._batch_get(_pk(run_id), sks),
            cached=None if cached is None else Version(cached.run, cached.manifest),
        )
        if run is None:
            return None
        return _Stored(run, manifest, _int(head, "outbox_seq"))

    def _batch_get(self, pk: str, sks: list[str]) -> dict[str, bytes]:
        """The `data` of the items `sks` under `pk` that exist, by sort key (consistent)."""
        found: dict[str, bytes] = {}
        for batch in chunks(sks, BATCH_GET_KEYS):
            request: dict[str, KeysAndAttributesTypeDef] = {
                self.table_name: {
                    "Keys": [{"pk": {"S": pk}, "sk": {"S": sk}} for sk in batch],
                    "ConsistentRead": True,
                }
            }
            for attempt in _attempts():
                response = self.client.batch_get_item(RequestItems=request)
                for item in response["Responses"].get(self.table_name, []):
                    found[_str(item, "sk")] = _bytes(item, "data")
                unprocessed = response.get("UnprocessedKeys", {})
                if not unprocessed:
                    break
                request = unprocessed  # type: ignore[assignment]
                attempt.backoff()
            else:
                raise RuntimeError(f"{pk}: DynamoDB left keys unread after {BATCH_ATTEMPTS} attempts")
        return found

    def _query_pending(self, run_id: str, with_body: bool) -> Iterator[Item]:
        names = {"#pk": "pk", "#sk": "sk", "#message_id": "message_id"}
        if with_body:
            names["#body"] = "body"
        for page in self.client.get_paginator("query").paginate(
            TableName=self.table_name,
            IndexName=PENDING_INDEX,
            KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={":pk": {"S": _pk(run_id)}},
            ProjectionExpression=", ".join(n for n in names if n != "#pk"),
            ConsistentRead=True,
        ):
            yield from page["Items"]

    # ------------------------------------------------------------ deleting

    def _superseded(self, run_id: str, old: Manifest, new: Manifest) -> list[tuple[str, str]]:
        pk = _pk(run_id)
        return [(pk, sk) for sk in _LAYOUT.superseded(old, new)]

    def _delete(self, run_id: str, sks: list[str]) -> None:
        pk = _pk(run_id)
        self._batch_write([{"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"S": sk}}}} for sk in sks])

    def _delete_quietly(self, keys: list[tuple[str, str]]) -> None:
        """Delete parts nobody can name any more; a failure leaves garbage for `vacuum`."""
        try:
            self._batch_write([{"DeleteRequest": {"Key": {"pk": {"S": pk}, "sk": {"S": sk}}}} for pk, sk in keys])
        except (ClientError, RuntimeError) as error:
            log.warning("could not delete %d superseded items (left for vacuum): %s", len(keys), error)

    def _batch_write(self, requests: list[WriteRequestTypeDef]) -> None:
        for batch in chunks(requests, BATCH_WRITE_ITEMS):
            pending: dict[str, Sequence[WriteRequestTypeDef]] = {self.table_name: batch}
            for attempt in _attempts():
                response = self.client.batch_write_item(RequestItems=pending)
                unprocessed = response.get("UnprocessedItems", {})
                if not unprocessed:
                    break
                pending = unprocessed  # type: ignore[assignment]
                attempt.backoff()
            else:
                raise RuntimeError(f"DynamoDB left items unwritten after {BATCH_ATTEMPTS} attempts")


class _Base(NamedTuple):
    """HEAD's manifest and outbox counter at a version the identity map did not hold."""

    manifest: Manifest
    outbox_seq: int


class _Cancelled(Exception):
    """The transaction's conditions failed."""

    def __init__(self, error: ClientError) -> None:
        super().__init__(str(error))
        self.error = error


class _Attempt:
    def __init__(self, n: int) -> None:
        self.n = n

    def backoff(self) -> None:
        time.sleep(min(0.05 * 2**self.n, 2.0))


def _attempts() -> Iterator[_Attempt]:
    return (_Attempt(n) for n in range(BATCH_ATTEMPTS))


# ---------------------------------------------------------------- helpers


def _pk(run_id: str) -> str:
    return f"RUN#{run_id}"


def _tag_version(sk: str) -> int | None:
    """The version in a part item's tag; None for HEAD and outbox items."""
    fields = sk.split("#")
    if fields[0] == "WAVE" and len(fields) == 4:
        tag = fields[2]
    elif fields[0] == "HDR" and len(fields) == 3:
        tag = fields[1]
    else:
        return None
    return int(tag[1:].split("-", 1)[0])


def _part_items(run_id: str, encoded: Encoded) -> list[Item]:
    """The items of the parts a save writes, with the time written (for `vacuum`)."""
    pk = _pk(run_id)
    written_at: AttributeValueTypeDef = {"N": str(int(time.time()))}
    return [
        {"pk": {"S": pk}, "sk": {"S": sk}, "data": {"B": data}, "written_at": written_at} for sk, data in encoded.chunks
    ]


def _utc(moment: datetime) -> str:
    """A fixed-width UTC ISO 8601 text, so that texts sort as the moments do."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: pass an aware (UTC) datetime")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _size(item: Item) -> int:
    total = ITEM_OVERHEAD_BYTES
    for value in item.values():
        if "B" in value:
            total += len(value["B"])
        elif "S" in value:
            total += len(value["S"].encode())
        else:
            total += 16
    return total


def _str(item: dict[str, Any], name: str) -> str:
    return str(item[name]["S"])


def _int(item: dict[str, Any], name: str) -> int:
    return int(item[name]["N"])


def _bytes(item: dict[str, Any], name: str) -> bytes:
    value = item[name]["B"]
    return bytes(value)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
