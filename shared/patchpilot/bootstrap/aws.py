"""The composition root of the AWS runtime (the bootstrap of Lambda): settings from the Lambda
environment, clients, adapters and the one `Service`, built once per warm container (`deps()`),
handed to the application (`patchpilot.bootstrap.serverless.ServerlessRuntime`, `patchpilot.app`).

Each part is built on first use, and its module imported there: the three functions use
different parts (the timer needs the run store, the queue and the fleet only when a run starts;
the approve function never uses the fleet), and a cold start pays for every import and every
boto3 client (tens of milliseconds each). What all three use is imported here (the policy
models: every run holds its policy); each handler module imports the parts that every one of its
invocations uses, so that Lambda's init phase, not the first request, pays for them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from patchpilot.adapters.aws.policy_source import load_policy_from
from patchpilot.adapters.aws.sessions import AwsSessions, ClientFactory
from patchpilot.adapters.serverless import ReportingNotifier, WallClock
from patchpilot.bootstrap.serverless import ServerlessRuntime, ports_of
from patchpilot.errors import InputError, Problem
from patchpilot.policy import Policy

if TYPE_CHECKING:
    from patchpilot.adapters.aws.dynamodb_store import DynamoDbRunStore
    from patchpilot.adapters.aws.fleet import Ec2SsmFleet
    from patchpilot.adapters.aws.reports import S3Reports
    from patchpilot.adapters.aws.secrets import SecretsManagerSecrets
    from patchpilot.adapters.aws.sqs_queue import SqsQueue
    from patchpilot.adapters.aws.wake_events import WakeScope
    from patchpilot.app.waker import Waker
    from patchpilot.ports import Claims, Clock, Notifier
    from patchpilot.service import Service
    from patchpilot.wakeups import WakeUp


def _comma_separated(value: object) -> object:
    return tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value


# ASCII digits: pydantic-core's `\d` is any Unicode digit (policy/model.py AwsAccount)
Region = Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")]
ForwardingAccount = Annotated[str, Field(pattern=r"^([0-9]{12}|\*)$")]  # "*": every account of the organization


class AwsEnvironment(BaseModel):
    """What template.yaml passes to every function, validated once."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    table: str = Field(alias="PATCHPILOT_TABLE", min_length=1)
    queue_url: str = Field(alias="PATCHPILOT_QUEUE_URL", min_length=1)
    dead_letter_url: str | None = Field(default=None, alias="PATCHPILOT_DLQ_URL")
    policy: str = Field(alias="PATCHPILOT_POLICY", min_length=1)  # s3://bucket/key or ssm:/name
    override_bucket: str | None = Field(default=None, alias="PATCHPILOT_OVERRIDE_BUCKET")
    approval_secret: str | None = Field(default=None, alias="PATCHPILOT_APPROVAL_SECRET")  # secret name
    # the previous approval key (a secret name) during a rotation: its links still verify
    approval_previous_secret: str | None = Field(default=None, alias="PATCHPILOT_APPROVAL_PREVIOUS_SECRET")
    approval_url: str | None = Field(default=None, alias="PATCHPILOT_APPROVAL_URL")  # links in approval notices
    # the Slack app's signing secret (a secret's name): approvals from Slack buttons
    slack_signing_secret: str | None = Field(default=None, alias="PATCHPILOT_SLACK_SIGNING_SECRET")
    # a Slack bot token (a secret's name; scope usergroups:read): members of the rings' Slack user groups
    slack_bot_token_secret: str | None = Field(default=None, alias="PATCHPILOT_SLACK_BOT_TOKEN_SECRET")
    region: str = Field(alias="AWS_REGION", min_length=1)
    # The stack's waker turns Run Command and EBS snapshot events into wake-ups (template.yaml sets
    # it): the fleet then polls the steps it covers less often (adapters/aws/fleet WOKEN_POLLS).
    wake_events: bool = Field(default=False, alias="PATCHPILOT_WAKE_EVENTS")
    account: str | None = Field(default=None, alias="PATCHPILOT_ACCOUNT")  # the stack's own account id
    # Where else the waker hears from: the regions and the other accounts whose forwarding stacks
    # (infra/aws/wake-forwarder.yaml) send their events to the stack's wake bus, comma-separated
    # (template.yaml's WakeForwardRegions, WakeForwardAccounts or "*" for WakeForwardOrganizationId).
    wake_regions: Annotated[tuple[Region, ...], BeforeValidator(_comma_separated)] = Field(
        default=(), alias="PATCHPILOT_WAKE_REGIONS"
    )
    wake_accounts: Annotated[tuple[ForwardingAccount, ...], BeforeValidator(_comma_separated)] = Field(
        default=(), alias="PATCHPILOT_WAKE_ACCOUNTS"
    )

    def wake_scope(self) -> WakeScope | None:
        """Where the waker hears step ends from; None without a waker."""
        if not self.wake_events:
            return None
        from patchpilot.adapters.aws.wake_events import WakeScope

        accounts: frozenset[str] | Literal["*"] = "*" if "*" in self.wake_accounts else frozenset(self.wake_accounts)
        return WakeScope(self.account, self.region, accounts, frozenset(self.wake_regions))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AwsEnvironment:
        try:
            return cls.model_validate(dict(environ))
        except ValidationError as exc:
            problems = [Problem(tuple(e["loc"]), e["msg"]) for e in exc.errors(include_url=False)]
            raise InputError("environment", problems) from None


class AwsRuntime(ServerlessRuntime):
    """The adapters and the `Service` over them, each built on first use (see the module's docstring)."""

    env: AwsEnvironment

    def __init__(self, env: AwsEnvironment, clients: ClientFactory, log: Any, clock: Clock) -> None:
        self.env = env
        self.clients = clients
        self.log = log
        self.clock = clock
        super().__init__(ports_of(self, env, log, clock))

    @classmethod
    def build(cls, env: AwsEnvironment, log: Any, clients: ClientFactory | None = None) -> AwsRuntime:
        """Without `clients`, the Lambda's own credentials, assuming in each other account the role
        the deployed policy names for it (`aws.accounts[].role`, `aws.organization.role_name`),
        looked up on the account's first use in the warm container."""
        runtime: AwsRuntime | None = None

        def role_of(account: str) -> str | None:
            from patchpilot.adapters.aws.accounts import member_role

            assert runtime is not None  # asked only once a client of an account is wanted
            return member_role(runtime.policy().aws, account)

        runtime = cls(env, clients or AwsSessions(role_of=role_of), log, WallClock())
        return runtime

    @functools.cached_property
    def store(self) -> DynamoDbRunStore:
        from patchpilot.adapters.aws.dynamodb_store import DynamoDbRunStore

        return DynamoDbRunStore(self.env.table, self.clients("dynamodb", None, self.env.region))

    @functools.cached_property
    def claims(self) -> Claims:
        from patchpilot.adapters.aws.claims import DynamoDbClaims

        return DynamoDbClaims(self.env.table, self.clients("dynamodb", None, self.env.region), self.clock)

    @functools.cached_property
    def queue(self) -> SqsQueue:
        from patchpilot.adapters.aws.sqs_queue import SqsQueue

        client = self.clients("sqs", None, self.env.region)
        return SqsQueue(self.env.queue_url, client, self.clock, self.env.dead_letter_url)

    @functools.cached_property
    def fleet(self) -> Ec2SsmFleet:
        """The Lambda's own region is the fleet's default (`bootstrap.clouds.aws_default_region`)."""
        from patchpilot.bootstrap.clouds import aws_fleet

        env = self.env
        return aws_fleet(
            self.clients,
            self.clock,
            env.region,
            override_bucket=env.override_bucket,
            wake=env.wake_scope(),
        )

    @functools.cached_property
    def secrets(self) -> SecretsManagerSecrets:
        from patchpilot.adapters.aws.secrets import SecretsManagerSecrets

        return SecretsManagerSecrets(self.clients("secretsmanager", None, self.env.region))

    @functools.cached_property
    def service(self) -> Service:
        from patchpilot.adapters.aws.leases import DynamoDbLeases
        from patchpilot.adapters.aws.traffic import Elbv2Traffic
        from patchpilot.adapters.metrics import EmfMetrics
        from patchpilot.adapters.wave_hooks import HttpsWaveHooks
        from patchpilot.notify import LazySecrets
        from patchpilot.service import Service

        notifier: Notifier = self.notifier
        if self.report_store is not None:
            notifier = ReportingNotifier(notifier, self.store, self.report_store.publish, self.refresh_overview)
        return Service(
            store=self.store,
            queue=self.queue,
            fleet=self.fleet,
            notifier=notifier,
            clock=self.clock,
            metrics=EmfMetrics(),
            leases=DynamoDbLeases(self.env.table, self.clients("dynamodb", None, self.env.region)),
            runtime="aws",
            wave_hooks=HttpsWaveHooks(LazySecrets(lambda: self.secrets), self.clock),  # Secrets Manager
            traffic=Elbv2Traffic(self.clients, self.clock, default_region=self.env.region),
            deployed_policy=self.policy,  # a follow-up or retry checks the freezes as deployed now
            claims=self.claims,  # one window's wake-ups poll once
        )

    @functools.cached_property
    def report_store(self) -> S3Reports | None:
        """Run and compliance reports, under reports/ of the stack's configuration bucket (if any)."""
        if not self.env.override_bucket:
            return None
        from patchpilot.adapters.aws.reports import S3Reports

        return S3Reports(self.env.override_bucket, self.clients("s3", None, self.env.region))

    def policy(self) -> Policy:
        """The deployed policy, read and validated on each use: operators change it without a deploy."""
        location, region = self.env.policy, self.env.region
        # Only the client that the location names is built.
        s3 = self.clients("s3", None, region) if location.startswith("s3://") else None
        ssm = self.clients("ssm", None, region) if location.startswith("ssm:") else None
        return load_policy_from(location, s3, ssm, lambda: ssm or self.clients("ssm", None, region))

    @functools.cached_property
    def waker(self) -> Waker:
        from patchpilot.app.waker import Waker

        return Waker(lambda: self.store, lambda: self.queue, self.clock, home_account=self.env.account)

    def wake(self, event: Mapping[str, Any]) -> list[WakeUp]:
        """One EventBridge event (the waker's rules): the wake-ups of the runs it concerns, published
        on the step queue (`patchpilot.app.waker`). An event that wakes nothing is no error."""
        from patchpilot.adapters.aws.wake_events import read_event

        return self.waker.wake(read_event(event, self.clock.now()))

    def handle_record(self, record: Mapping[str, Any], on_run: Callable[[str], None] = lambda _: None) -> None:
        """One SQS record from Lambda. `on_run` learns the run id first (the logs' correlation id).
        Raises only when the record must be delivered again."""
        delivery = self.queue.from_sqs_record(record)
        if delivery is None:
            return  # a hop forwarded or an unreadable body dead-lettered: done
        on_run(delivery.message.run_id)
        self.service.handle(delivery)


@functools.cache
def deps(log: Any = None) -> AwsRuntime:
    """Built once per warm container, on first use (never at import time)."""
    import logging

    return AwsRuntime.build(AwsEnvironment.from_environ(os.environ), log or logging.getLogger("patchpilot"))
