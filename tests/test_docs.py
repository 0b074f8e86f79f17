"""Generated documents stay in step with the code (`make docs` regenerates them), and the
example policies stay valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchpilot.cli import messages_schema, policy_schema
from patchpilot.engine.diagram import document
from patchpilot.policy import load_policy

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_policy_schema_in_docs_is_current() -> None:
    assert json.loads((DOCS / "policy.schema.json").read_text()) == policy_schema()


def test_message_schema_in_docs_is_current() -> None:
    assert json.loads((DOCS / "messages.schema.json").read_text()) == messages_schema()


def test_state_diagram_in_docs_is_current() -> None:
    assert (DOCS / "state-machine.md").read_text() == document()


def test_state_diagram_names_every_transition() -> None:
    text = document()
    for needle in ("probing --> snapshotting: AgentsProbed", "soaking --> awaiting_approval: TimerFired"):
        assert needle in text


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_policy_is_valid(example: Path) -> None:
    policy = load_policy(str(example))
    assert policy.rings
