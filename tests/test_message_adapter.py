"""`MESSAGE` reads and writes each message through its own class (engine/messages.py
`MessageAdapter`): the same bytes, the same messages and the same errors as the union of them
all, which a cold start no longer builds to handle one message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
from chaos import RUN_ID, reference_run
from pydantic import TypeAdapter, ValidationError

from patchpilot.engine.messages import MESSAGE, AwaitedFleetCommand, FleetCommand, Message, MessageAdapter, ProbeAgents
from patchpilot.engine.run import Run
from patchpilot.inventory import Instance


def test_every_message_a_run_writes_is_written_and_read_as_the_union_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Message] = []
    dump = MessageAdapter.dump_json

    def recording(adapter: MessageAdapter, message: Message) -> bytes:
        written.append(message)
        return dump(adapter, message)

    monkeypatch.setattr(MessageAdapter, "dump_json", recording)
    reference_run(tmp_path)  # every path: leases, starts, drains, hooks, installs, rollbacks, notices
    monkeypatch.undo()
    assert len({type(m) for m in written}) >= 12  # the commands of every step, and notices
    for message in written:
        body = MESSAGE.dump_json(message)
        assert body == MESSAGE.union.dump_json(message)
        assert MESSAGE.validate_json(body) == message == MESSAGE.union.validate_json(body)
        assert MESSAGE.validate_json(body.decode()) == message


@pytest.mark.parametrize(
    "body",
    [
        b"{",  # not JSON
        b"[]",  # not an object
        b'{"id": "m", "run_id": "r"}',  # no type
        b'{"type": "Nope", "id": "m", "run_id": "r"}',  # no such message
        b'{"type": "Wait", "id": "m", "run_id": "r"}',  # a message without its fields
        b'{"type": "Wait", "id": "m", "run_id": "r", "until": "2026-12-12T02:00:00Z", "extra": 1}',
        b'{"type": 1}',
    ],
)
def test_a_body_that_is_no_message_is_refused_as_the_union_refuses_it(body: bytes) -> None:
    with pytest.raises(ValidationError) as ours:
        MESSAGE.validate_json(body)
    with pytest.raises(ValidationError) as union:
        MESSAGE.union.validate_json(body)
    assert ours.value.errors() == union.value.errors()


def test_reading_and_writing_a_message_builds_only_its_class() -> None:
    adapter = MessageAdapter()
    machine = Instance(id="i-1", cloud="aws", region="us-east-1", os="linux")
    probe = ProbeAgents(id="r:w1:probe", run_id="r", wave=1, targets=[machine])
    assert adapter.validate_json(adapter.dump_json(probe)) == probe
    assert "union" not in vars(adapter)  # the union of every message was not built


def test_the_json_schema_is_the_unions() -> None:
    assert MESSAGE.json_schema(mode="serialization") == MESSAGE.union.json_schema(mode="serialization")


def test_a_runs_awaited_command_is_written_and_read_as_the_union_of_fleet_commands_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run reads its awaited command by the command's own class (engine/fleet_commands.py
    `HeldAwaitedCommand`), not through a copy of every fleet command's validator built into its
    own: the stored run is the same, and so is every command read back."""
    written: list[Message] = []
    dump = MessageAdapter.dump_json
    monkeypatch.setattr(MessageAdapter, "dump_json", lambda a, m: written.append(m) or dump(a, m))
    runtime = reference_run(tmp_path)
    monkeypatch.undo()
    union = TypeAdapter(AwaitedFleetCommand)
    commands = [m for m in written if isinstance(m, FleetCommand)]
    assert {type(c) for c in commands} == set(get_args(FleetCommand))  # every kind a run awaits
    run = runtime.load(RUN_ID)
    for command in commands:
        held = run.model_copy(update={"awaited_command": command})
        for mode in ("python", "json"):
            for exclude_none in (False, True):
                stored = held.model_dump(mode=mode, exclude_none=exclude_none)["awaited_command"]
                assert stored == union.dump_python(command, mode=mode, exclude_none=exclude_none)
        body = held.model_dump_json()
        assert Run.model_validate_json(body) == held
        assert Run.model_validate(json.loads(body)).awaited_command == command
    stored = json.loads(run.model_dump_json())
    for wrong in ({"type": "Notify", "id": "n", "run_id": RUN_ID}, {"id": "x"}, "ProbeAgents"):
        with pytest.raises(ValidationError) as refused:
            Run.model_validate({**stored, "awaited_command": wrong})
        assert [e["loc"] for e in refused.value.errors()] == [("awaited_command",)]
