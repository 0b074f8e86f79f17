"""The composition root of the AWS runtime: settings from the Lambda environment, clients,
adapters and the one `Service`, built once per warm container (`deps()`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchpilot.adapters.aws.dynamodb_store import DynamoDbRunStore
from patchpilot.adapters.aws.fleet import Ec2SsmFleet
from patchpilot.adapters.aws.policy_source import load_policy_from
from patchpilot.adapters.aws.secrets import SecretsManagerSecrets
from patchpilot.adapters.aws.sessions import AwsSessions, ClientFactory
from patchpilot.adapters.aws.sqs_queue import SqsQueue
from patchpilot.approvals import ApprovalLinkError, verify_approval
from patchpilot.engine.messages import Notify
from patchpilot.errors import InputError, Problem
from patchpilot.policy import Policy
from patchpilot.service import Service
from patchpilot.triggers import TriggerDecision, scheduled_trigger


class AwsEnvironment(BaseModel):
    """What template.yaml passes to every function, validated once."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    table: str = Field(alias="PATCHPILOT_TABLE", min_length=1)
    queue_url: str = Field(alias="PATCHPILOT_QUEUE_URL", min_length=1)
    dead_letter_url: str | None = Field(default=None, alias="PATCHPILOT_DLQ_URL")
    policy: str = Field(alias="PATCHPILOT_POLICY", min_length=1)  # s3://bucket/key or ssm:/name
    override_bucket: str | None = Field(default=None, alias="PATCHPILOT_OVERRIDE_BUCKET")
    approval_secret: str | None = Field(default=None, alias="PATCHPILOT_APPROVAL_SECRET")  # secret name
    region: str = Field(alias="AWS_REGION", min_length=1)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AwsEnvironment:
        try:
            return cls.model_validate(dict(environ))
        except ValidationError as exc:
            problems = [Problem((str(e["loc"][0]),), e["msg"]) for e in exc.errors(include_url=False)]
            raise InputError("environment", problems) from None


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class LogNotifier:
    """Until Slack and Teams are routed, notifications go to the structured log."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def notify(self, command: Notify) -> None:
        self.log.info(command.text, extra={"topic": command.topic, "severity": command.severity})


@dataclass
class AwsRuntime:
    env: AwsEnvironment
    clients: ClientFactory
    service: Service
    queue: SqsQueue
    fleet: Ec2SsmFleet
    secrets: SecretsManagerSecrets

    @classmethod
    def build(cls, env: AwsEnvironment, log: Any, clients: ClientFactory | None = None) -> AwsRuntime:
        clients = clients or AwsSessions()
        clock = WallClock()
        region = env.region
        queue = SqsQueue(env.queue_url, clients("sqs", None, region), clock, env.dead_letter_url)
        fleet = Ec2SsmFleet(clients, clock, override_bucket=env.override_bucket, default_region=region)
        store = DynamoDbRunStore(env.table, clients("dynamodb", None, region))
        service = Service(store=store, queue=queue, fleet=fleet, notifier=LogNotifier(log), clock=clock)
        secrets = SecretsManagerSecrets(clients("secretsmanager", None, region))
        return cls(env, clients, service, queue, fleet, secrets)

    def policy(self) -> Policy:
        """The deployed policy, read and validated on each use: operators change it without a deploy."""
        region = self.env.region
        return load_policy_from(self.env.policy, self.clients("s3", None, region), self.clients("ssm", None, region))

    def handle_record(self, record: Mapping[str, Any], on_run: Callable[[str], None] = lambda _: None) -> None:
        """One SQS record from Lambda. `on_run` learns the run id first (the logs' correlation id).
        Raises only when the record must be delivered again."""
        delivery = self.queue.from_sqs_record(record)
        if delivery is None:
            return  # a hop forwarded or an unreadable body dead-lettered: done
        on_run(delivery.message.run_id)
        self.service.handle(delivery)

    def trigger(self) -> TriggerDecision:
        """The timer: start the scheduled run when its window has begun (at most once)."""
        policy = self.policy()
        decision = scheduled_trigger(policy, self.service.clock.now())
        if decision.start:
            discovered = self.fleet.discover(policy)
            # `instances` holds every instance found, the unreachable ones included (they are
            # planned once and skipped at the probe, with why).
            self.service.start(decision.run_id, policy, discovered.instances)
        return decision

    def approve(self, token: str) -> str:
        """A signed approval link: grant the ring it names, if the run waits for exactly that."""
        if not self.env.approval_secret:
            raise ApprovalLinkError("approval links are not configured (PATCHPILOT_APPROVAL_SECRET)")
        request = verify_approval(token, self.secrets.get(self.env.approval_secret))
        run = self.service.store.load(request.run_id)
        if run.state != "awaiting_approval" or run.current.ring != request.ring:
            return f"run {request.run_id} is not waiting for approval of ring {request.ring} ({run.status})"
        return self.service.approve(request.run_id, by="approval link")


@functools.cache
def deps(log: Any = None) -> AwsRuntime:
    """Built once per warm container, on first use (never at import time)."""
    import logging

    return AwsRuntime.build(AwsEnvironment.from_environ(os.environ), log or logging.getLogger("patchpilot"))
