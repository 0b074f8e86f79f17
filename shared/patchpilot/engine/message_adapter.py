"""`MESSAGE`: every message of a run read from and written to its JSON (the stores, the queues, the
engine), in a module of its own that loads no message: a process that only writes messages (a
waker, an approval) loads the ones it builds, and the first read loads them all (engine/messages.py).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, cast, get_args

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import from_json

if TYPE_CHECKING:
    from pydantic.json_schema import JsonSchemaMode

    from patchpilot.engine.message_union import Message


class MessageAdapter:
    """`TypeAdapter(Message)` as the stores, queues and the engine use it (`validate_json`,
    `dump_json`, `json_schema`), building only the messages a process reads and writes: a cold
    start handles one or two of them, and the union of them all costs it several milliseconds.

    A message is written by its own class (the bytes the union writes: it picks that class's
    serializer by `type`), and read by the class its `type` names. A body that is not a valid
    message is read again by the union, so that its error is the one the union gives. Writing
    loads nothing; the first read (or schema) loads every message (engine/messages.py)."""

    def __init__(self) -> None:
        self._classes: dict[str, type[BaseModel]] = {}

    @functools.cached_property
    def union(self) -> TypeAdapter[Message]:
        from patchpilot.engine.message_union import Message

        return TypeAdapter(Message)

    def _class_of(self, kind: object) -> type[BaseModel] | None:
        if not self._classes:
            from patchpilot.engine.message_union import Message

            members = get_args(get_args(Message)[0])
            self._classes.update((member.model_fields["type"].default, member) for member in members)
        return self._classes.get(kind) if isinstance(kind, str) else None

    def validate_json(self, data: str | bytes | bytearray) -> Message:
        try:
            parsed = from_json(data)
        except ValueError:
            parsed = None
        cls = self._class_of(parsed.get("type")) if isinstance(parsed, dict) else None
        if cls is not None:
            try:
                return cast("Message", cls.model_validate_json(data))
            except ValidationError:
                pass  # said as the union says it
        return self.union.validate_json(data)

    def dump_json(self, message: Message) -> bytes:
        return message.__pydantic_serializer__.to_json(message)

    def json_schema(self, *, mode: JsonSchemaMode = "validation") -> dict[str, Any]:
        return self.union.json_schema(mode=mode)


MESSAGE = MessageAdapter()
