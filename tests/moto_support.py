"""What the AWS adapter tests share: moto accounts, the table and queues, a recorder of the
API calls made, and SQS on virtual time.

moto's SQS keeps real time (delays, visibility timeouts). `sqs_follows` makes it read a test
clock instead, by replacing the two time functions its SQS models import from moto.core.utils:
an internal of moto 5.x, used only here. `next_due` likewise reads moto's queue to tell a
virtual-clock driver when the next message becomes visible.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from moto import mock_aws

from patchpilot.adapters.aws.dynamodb_store import table_definition
from patchpilot.ports import Clock

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
TABLE = "patchpilot-runs"


@contextmanager
def aws() -> Iterator[None]:
    """moto for every service, with fake credentials and a region whatever the environment."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    try:
        with mock_aws():
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dynamodb(table: str = TABLE) -> Any:
    """A DynamoDB client, with the run table created if it does not exist yet."""
    client = boto3.client("dynamodb", region_name=REGION)
    if table not in client.list_tables()["TableNames"]:
        client.create_table(**table_definition(table))
    return client


@contextmanager
def atomic_items() -> Iterator[None]:
    """DynamoDB applies each write to an item atomically, condition included; moto 5.x evaluates
    the condition and then writes, with no lock between, so two threads can both pass it. Inside
    this, moto applies each item request whole, as DynamoDB does (for tests that race workers)."""
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    names = ("put_item", "update_item", "delete_item", "get_item", "transact_write_items")
    saved = {name: getattr(DynamoDBBackend, name) for name in names}

    def locked(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return original(*args, **kwargs)

        return call

    for name, original in saved.items():
        setattr(DynamoDBBackend, name, locked(original))
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(DynamoDBBackend, name, original)


@dataclass
class Queues:
    client: Any
    url: str
    dead_letter_url: str
    name: str


def queues(name: str = "patchpilot", visibility_timeout: int = 900, max_receive_count: int = 5) -> Queues:
    """A standard queue whose redrive policy moves a message to `<name>-dlq` after
    `max_receive_count` receives."""
    client = boto3.client("sqs", region_name=REGION)
    dlq_url = client.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = client.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": "{max_receive_count}"}}',
        },
    )["QueueUrl"]
    return Queues(client, url, dlq_url, name)


@dataclass
class Calls:
    """The parameters of every call a client made to the recorded operations."""

    made: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.made if name == operation]

    def clear(self) -> None:
        self.made.clear()

    def written_keys(self) -> list[str]:
        """The sort keys of every item a DynamoDB client put, in order."""
        keys: list[str] = []
        for name, params in self.made:
            if name == "PutItem":
                keys.append(params["Item"]["sk"]["S"])
            elif name == "BatchWriteItem":
                for requests in params["RequestItems"].values():
                    keys.extend(r["PutRequest"]["Item"]["sk"]["S"] for r in requests if "PutRequest" in r)
            elif name == "TransactWriteItems":
                for action in params["TransactItems"]:
                    if "Put" in action:
                        keys.append(action["Put"]["Item"]["sk"]["S"])
                    elif "Update" in action:
                        keys.append(action["Update"]["Key"]["sk"]["S"])
        return keys


def record(client: Any, *operations: str, before: Callable[[str, dict[str, Any]], None] | None = None) -> Calls:
    """Record the parameters of `operations` called on `client` (a botocore event hook, so the
    calls still go to moto); `before` may raise to make a call fail before it is sent."""
    calls = Calls()
    service = client.meta.service_model.service_id.hyphenize()
    for operation in operations:

        def hook(params: dict[str, Any], operation: str = operation, **_: Any) -> None:
            calls.made.append((operation, params))
            if before is not None:
                before(operation, params)

        client.meta.events.register(f"before-parameter-build.{service}.{operation}", hook)
    return calls


@contextmanager
def sqs_follows(clock: Clock) -> Iterator[None]:
    """Make moto's SQS keep `clock`'s time instead of the real one."""
    import moto.sqs.models as sqs_models

    last = [0.0]

    def unix_time(dt: datetime | None = None) -> float:
        # Strictly increasing by a microsecond a call, as real time would: moto shows a message
        # only once its time is strictly past, so a visibility of 0 needs the clock to move.
        if dt is not None:
            return dt.timestamp()
        last[0] = max(clock.now().timestamp(), last[0] + 1e-6)
        return last[0]

    def unix_time_millis(dt: datetime | None = None) -> float:
        return unix_time(dt) * 1000.0

    saved = {name: getattr(sqs_models, name) for name in ("unix_time", "unix_time_millis")}
    setattr(sqs_models, "unix_time", unix_time)  # noqa: B010 (a private name of moto's)
    setattr(sqs_models, "unix_time_millis", unix_time_millis)  # noqa: B010
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(sqs_models, name, function)


def next_due(name: str, region: str = REGION) -> datetime | None:
    """When the earliest message of queue `name` (waiting, delayed or in flight) becomes
    receivable; None when it is empty. moto shows a message once its time is strictly past."""
    from moto.sqs.models import sqs_backends

    messages = sqs_backends[ACCOUNT][region].queues[name]._messages
    if not messages:
        return None
    millis = min(max(m.visible_at, m.delayed_until) for m in messages)
    return datetime.fromtimestamp(millis / 1000, UTC) + timedelta(milliseconds=1)


def depth(client: Any, url: str) -> int:
    """Messages in the queue: visible, in flight and delayed."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attributes[n]) for n in names)
