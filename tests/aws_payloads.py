"""Recorded AWS answers (tests/events/aws/*.json) and a client factory of botocore Stubbers.

The payloads are shaped from the botocore service models and the API reference examples; times
are ISO 8601 strings in the files and become datetimes here, where the operation's output
shape says a member is a timestamp (as botocore's parser would make them), so a Stubber hands
the adapter what a real answer would.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.model import Shape
from botocore.stub import Stubber

EVENTS = Path(__file__).resolve().parent / "events" / "aws"


def recorded(client: Any, operation: str, name: str, **changes: Any) -> dict[str, Any]:
    """The answer in tests/events/aws/<name>.json for `operation` (the API name, e.g.
    DescribeInstancePatchStates) with its timestamps parsed; `changes` replace top-level members."""
    body = json.loads((EVENTS / f"{name}.json").read_text())
    body.update(changes)
    shape = client.meta.service_model.operation_model(operation).output_shape
    parsed: dict[str, Any] = _parse(body, shape)
    return parsed


def _parse(value: Any, shape: Shape) -> Any:
    if shape.type_name == "structure" and isinstance(value, dict):
        return {k: _parse(v, shape.members[k]) if k in shape.members else v for k, v in value.items()}
    if shape.type_name == "list" and isinstance(value, list):
        return [_parse(v, shape.member) for v in value]  # type: ignore[attr-defined]
    if shape.type_name == "timestamp" and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


class StubbedClients:
    """A `ClientFactory`: one client per (service, account, region), each wrapped in an active
    Stubber for the services named in `stubbed` (moto answers the others, inside mock_aws).
    Every call is recorded as (service, account, region, operation, parameters)."""

    def __init__(self, *stubbed: str) -> None:
        self.stubbed = set(stubbed)
        self.clients: dict[tuple[str, str | None, str], Any] = {}
        self.stubbers: dict[tuple[str, str | None, str], Stubber] = {}
        self.calls: list[tuple[str, str | None, str, str, dict[str, Any]]] = []

    def __call__(self, service: str, account: str | None, region: str) -> Any:
        key = (service, account, region)
        if key not in self.clients:
            client = boto3.client(service, region_name=region)

            def given(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
                context["aws_payloads.params"] = dict(params)

            def called(event_name: str, context: dict[str, Any], **_: Any) -> None:
                operation = event_name.split(".", 2)[2]
                self.calls.append((service, account, region, operation, context.get("aws_payloads.params", {})))

            client.meta.events.register_first("before-parameter-build.*.*", given)
            client.meta.events.register_first("before-call.*.*", called)
            if service in self.stubbed:
                stubber = Stubber(client)
                stubber.activate()
                self.stubbers[key] = stubber
            self.clients[key] = client
        return self.clients[key]

    def stub(self, service: str, region: str, account: str | None = None) -> Stubber:
        self(service, account, region)
        return self.stubbers[(service, account, region)]

    def client(self, service: str, region: str, account: str | None = None) -> Any:
        return self(service, account, region)

    def count(self, operation: str) -> int:
        return sum(1 for call in self.calls if call[3] == operation)

    def params(self, operation: str) -> list[dict[str, Any]]:
        return [call[4] for call in self.calls if call[3] == operation]

    def done(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()
