"""The composition root of the Azure runtime (the bootstrap of Functions): the Function App's
settings, clients, adapters and the one `Service`, built once per warm worker (`deps()`), never
at import time, handed to the application (`patchpilot.bootstrap.serverless.ServerlessRuntime`,
`patchpilot.app`).

Each part is built on first use, and its module imported there, as on AWS
(`patchpilot.bootstrap.aws`): a timer tick before the window reads the policy blob and
nothing else; the approve function never builds the fleet.

Storage is reached the way the Functions host reaches it, through the `AzureWebJobsStorage`
connection: a connection string (local development, Azurite), or identity-based settings
(`AzureWebJobsStorage__accountName`, or the `__queueServiceUri` / `__tableServiceUri` /
`__blobServiceUri` trio for other clouds) with the app's managed identity
(`DefaultAzureCredential`; `AZURE_CLIENT_ID` names the user-assigned identity).
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.policy_source import SCHEME, blob_location, load_policy_from
from patchpilot.adapters.serverless import ReportingNotifier, WallClock
from patchpilot.bootstrap.serverless import ServerlessRuntime, ports_of
from patchpilot.errors import InputError, Problem
from patchpilot.policy import Policy

if TYPE_CHECKING:
    from azure.data.tables import TableClient
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueClient

    from patchpilot.adapters.azure.fleet import AzureFleet
    from patchpilot.adapters.azure.leases import TableLeases
    from patchpilot.adapters.azure.reports import BlobReports
    from patchpilot.adapters.azure.storage_queue import StorageQueue
    from patchpilot.adapters.azure.table_store import TableRunStore
    from patchpilot.adapters.azure.traffic import AzureBackendPools
    from patchpilot.app.azure_advisories import AzureAdvisoriesRead
    from patchpilot.app.update_manager_events import UpdateManagerEvent, UpdateManagerEvents
    from patchpilot.app.waker import Waker
    from patchpilot.ports import Claims, Clock, Secrets
    from patchpilot.service import Service
    from patchpilot.triggers import TriggerDecision
    from patchpilot.wakeups import WakeUp

QUEUE_NAME_RULE = (
    "3 to 56 lower-case letters, digits and single hyphens (the poison queue adds -poison), "
    "starting and ending with a letter or digit"
)
TABLE_NAME_RULE = "3 to 63 letters and digits, starting with a letter"


@dataclass(frozen=True)
class StorageEndpoints:
    """Identity-based access: one URL per storage service."""

    queue: str
    table: str
    blob: str


class AzureEnvironment(BaseModel):
    """The Function App's settings (infra/azure/main.bicep, local.settings.json), validated once."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    storage_connection: str | None = Field(default=None, alias="AzureWebJobsStorage")
    storage_account: str | None = Field(default=None, alias="AzureWebJobsStorage__accountName")
    queue_service_uri: str | None = Field(default=None, alias="AzureWebJobsStorage__queueServiceUri")
    table_service_uri: str | None = Field(default=None, alias="AzureWebJobsStorage__tableServiceUri")
    blob_service_uri: str | None = Field(default=None, alias="AzureWebJobsStorage__blobServiceUri")
    table: str = Field(alias="PATCHPILOT_TABLE")
    queue: str = Field(alias="PATCHPILOT_QUEUE")
    policy: str = Field(alias="PATCHPILOT_POLICY")  # blob://container/name in the same storage account
    key_vault_url: str | None = Field(default=None, alias="PATCHPILOT_KEY_VAULT_URL")
    approval_secret: str | None = Field(default=None, alias="PATCHPILOT_APPROVAL_SECRET")  # secret name
    # the previous approval key (a secret name) during a rotation: its links still verify
    approval_previous_secret: str | None = Field(default=None, alias="PATCHPILOT_APPROVAL_PREVIOUS_SECRET")
    # the approve function's URL (https://<app>/api/approve): signed links in approval notices
    approval_url: str | None = Field(default=None, alias="PATCHPILOT_APPROVAL_URL")
    # the Slack app's signing secret (a secret's name): approvals from Slack buttons
    slack_signing_secret: str | None = Field(default=None, alias="PATCHPILOT_SLACK_SIGNING_SECRET")
    # a Slack bot token (a secret's name; scope usergroups:read): members of the rings' Slack user groups
    slack_bot_token_secret: str | None = Field(default=None, alias="PATCHPILOT_SLACK_BOT_TOKEN_SECRET")
    reports: str = Field(default="patchpilot-reports", alias="PATCHPILOT_REPORTS")  # blob container of run reports
    # The account of the run table, the steps queue, the policy and the reports when it is not the
    # host's own: the HTTP app's host keeps its keys in an account of its own (infra/azure).
    data_account: str | None = Field(default=None, alias="PATCHPILOT_STORAGE_ACCOUNT")
    # The subscription whose ARM events wake the worker (main.bicep's wake-up topic, set once its
    # Event Grid subscription exists): the fleet then polls a one-VM snapshot step, which its event
    # ends, less often (adapters/azure/fleet WOKEN_POLLS; patchpilot.wakeups says which steps an
    # event wakes). Unset: no wake-ups, the short polls.
    wake_subscription: str | None = Field(default=None, alias="PATCHPILOT_WAKE_SUBSCRIPTION")

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        ok = 3 <= len(value) <= 56 and value[0].isalnum() and value[-1].isalnum() and "--" not in value
        if not ok or any(not (c.isdigit() or c == "-" or (c.isascii() and c.islower())) for c in value):
            raise ValueError(f"{value!r} is not a queue name: {QUEUE_NAME_RULE}")
        return value

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not (3 <= len(value) <= 63 and value.isascii() and value.isalnum() and value[0].isalpha()):
            raise ValueError(f"{value!r} is not a table name: {TABLE_NAME_RULE}")
        return value

    @field_validator("policy")
    @classmethod
    def _policy_location(cls, value: str) -> str:
        try:
            blob_location(value)
        except InputError:
            raise ValueError(f"expected {SCHEME}CONTAINER/NAME, not {value!r}") from None
        return value

    @field_validator("data_account")
    @classmethod
    def _account_name(cls, value: str | None) -> str | None:
        if value is not None and not (
            3 <= len(value) <= 24 and value.isascii() and value.isalnum() and value.islower()
        ):
            raise ValueError(f"{value!r} is not a storage account name: 3 to 24 lower-case letters and digits")
        return value

    @field_validator("wake_subscription")
    @classmethod
    def _subscription_id(cls, value: str | None) -> str | None:
        """A GUID, kept in its canonical form (lower case, no braces): ARM ids are compared with it."""
        if value is None:
            return None
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"{value!r} is not a subscription id (a GUID)") from None

    @field_validator("key_vault_url", "queue_service_uri", "table_service_uri", "blob_service_uri")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError(f"expected an https:// URL, not {value!r}")
        return value

    @model_validator(mode="after")
    def _reachable(self) -> AzureEnvironment:
        uris = (self.queue_service_uri, self.table_service_uri, self.blob_service_uri)
        if not self.data_account and not self.storage_connection and not self.storage_account and not all(uris):
            raise ValueError(
                "no storage connection: set AzureWebJobsStorage (a connection string), or "
                "AzureWebJobsStorage__accountName (identity-based), or all three of "
                "AzureWebJobsStorage__queueServiceUri, __tableServiceUri and __blobServiceUri"
            )
        if self.approval_secret and not self.key_vault_url:
            raise ValueError("PATCHPILOT_APPROVAL_SECRET names a Key Vault secret: set PATCHPILOT_KEY_VAULT_URL too")
        return self

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AzureEnvironment:
        """The settings of `environ`; a blank one (local.settings.json and portal forms leave
        unused settings empty) counts as unset."""
        try:
            return cls.model_validate({name: value for name, value in environ.items() if value.strip()})
        except ValidationError as exc:
            problems = [
                Problem((str(e["loc"][0]),) if e["loc"] else (), e["msg"].removeprefix("Value error, "))
                for e in exc.errors(include_url=False)
            ]
            raise InputError("app settings", problems) from None

    @property
    def queue_names(self) -> tuple[str, str]:
        """The steps queue and its poison queue (where the Functions host moves failures)."""
        return self.queue, f"{self.queue}-poison"

    def endpoints(self) -> StorageEndpoints | None:
        """The service URLs for identity-based access; None when a connection string is used."""
        if self.data_account:
            base = f"https://{self.data_account}"
            return StorageEndpoints(
                f"{base}.queue.core.windows.net", f"{base}.table.core.windows.net", f"{base}.blob.core.windows.net"
            )
        if self.storage_connection:
            return None
        account = self.storage_account
        return StorageEndpoints(
            queue=self.queue_service_uri or f"https://{account}.queue.core.windows.net",
            table=self.table_service_uri or f"https://{account}.table.core.windows.net",
            blob=self.blob_service_uri or f"https://{account}.blob.core.windows.net",
        )


class AzureRuntime(ServerlessRuntime):
    """The adapters and the `Service` over them, each built on first use (see the module's docstring)."""

    env: AzureEnvironment

    def __init__(
        self,
        env: AzureEnvironment,
        clients: AzureClients,
        log: Any,
        clock: Clock,
        *,
        secrets: Secrets | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.env = env
        self.clients = clients
        self.log = log
        self.clock = clock
        self.storage_options = dict(storage_options or {})
        if secrets is not None:
            self.secrets = secrets
        super().__init__(ports_of(self, env, log, clock, scheduled_elsewhere))

    @classmethod
    def build(
        cls,
        env: AzureEnvironment,
        log: Any,
        *,
        clients: AzureClients | None = None,
        clock: Clock | None = None,
        secrets: Secrets | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> AzureRuntime:
        """`clients` carries the credential (the managed identity by default) and, in tests, the
        transport of a fake ARM; `secrets` replaces Key Vault and `storage_options` go to every
        Storage client (tests: Azurite's clock hook)."""
        return cls(
            env,
            clients or AzureClients(),
            log,
            clock or WallClock(),
            secrets=secrets,
            storage_options=storage_options,
        )

    @functools.cached_property
    def store(self) -> TableRunStore:
        from patchpilot.adapters.azure.table_store import TableRunStore

        return TableRunStore(_table_client(self.env, self.clients, self.storage_options))

    @functools.cached_property
    def claims(self) -> Claims:
        from patchpilot.adapters.azure.claims import TableClaims

        return TableClaims(self.store.client, self.clock)

    @functools.cached_property
    def leases(self) -> TableLeases:
        from patchpilot.adapters.azure.leases import TableLeases

        return TableLeases(self.store.client)

    def purge_lapsed(self) -> int:
        """Table Storage has no TTL: the timer deletes lapsed claims and leases, a bounded number
        each per tick. Returns how many."""
        from patchpilot.adapters.azure.claims import TableClaims

        now = self.clock.now()
        return TableClaims(self.store.client, self.clock).purge_lapsed(now) + self.leases.purge_lapsed(now)

    @functools.cached_property
    def queue(self) -> StorageQueue:
        from patchpilot.adapters.azure.storage_queue import StorageQueue

        steps, poison = _queue_clients(self.env, self.clients, self.storage_options)
        return StorageQueue(steps, poison, self.clock)

    @functools.cached_property
    def fleet(self) -> AzureFleet:
        """Built without the policy: each TakeSnapshots carries azure.patch_without_rollback."""
        from patchpilot.bootstrap.clouds import azure_fleet

        return azure_fleet(self.clients, self.clock, woken_subscription=self.env.wake_subscription)

    @functools.cached_property
    def traffic(self) -> AzureBackendPools:
        """Load Balancer and Application Gateway backend pools around the install (docs/traffic.md)."""
        from patchpilot.adapters.azure.traffic import AzureBackendPools

        return AzureBackendPools(self.clients, self.clock)

    @functools.cached_property
    def blobs(self) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        endpoints, options = self.env.endpoints(), self.storage_options
        if endpoints is None:
            return BlobServiceClient.from_connection_string(self.env.storage_connection or "", **options)
        return BlobServiceClient(endpoints.blob, credential=self.clients.credential, **options)

    @functools.cached_property
    def reports(self) -> BlobReports:
        """Run reports, in their container (created if missing with a connection string, as the
        table and queues are; in Azure the Bicep template creates it)."""
        from patchpilot.adapters.azure.reports import BlobReports

        container = self.blobs.get_container_client(self.env.reports)
        if self.env.endpoints() is None:
            _create_if_missing(container.create_container)
        return BlobReports(container)

    @property
    def report_store(self) -> BlobReports:
        """Run and compliance reports: one container."""
        return self.reports

    @functools.cached_property
    def secrets(self) -> Secrets | None:
        """Key Vault, when the settings name a vault."""
        if not self.env.key_vault_url:
            return None
        from azure.keyvault.secrets import SecretClient

        from patchpilot.adapters.azure.secrets import KeyVaultSecrets

        return KeyVaultSecrets(SecretClient(self.env.key_vault_url, self.clients.credential))

    @functools.cached_property
    def service(self) -> Service:
        from patchpilot.adapters.azure.maintenance_events import UpdateManagerCanceller
        from patchpilot.adapters.metrics import LogMetrics
        from patchpilot.adapters.wave_hooks import HttpsWaveHooks
        from patchpilot.notify import LazySecrets
        from patchpilot.service import Service

        return Service(
            store=self.store,
            queue=self.queue,
            fleet=self.fleet,
            notifier=ReportingNotifier(self.notifier, self.store, self.reports.publish, self.refresh_overview),
            clock=self.clock,
            maintenance=UpdateManagerCanceller(self.clients),
            metrics=LogMetrics(),
            leases=self.leases,
            runtime="azure",
            wave_hooks=HttpsWaveHooks(LazySecrets(lambda: self.secrets), self.clock),  # Key Vault
            traffic=self.traffic,
            deployed_policy=self.policy,  # a follow-up or retry checks the freezes as deployed now
            claims=self.claims,  # one window's wake-ups poll once
        )

    @functools.cached_property
    def waker(self) -> Waker:
        from patchpilot.app.waker import Waker

        return Waker(lambda: self.store, lambda: self.queue, self.clock)

    def wake(self, event: Mapping[str, Any]) -> list[WakeUp]:
        """One Event Grid event of the subscription's resources (the `wake_up` function): the
        wake-ups of the runs it concerns, on the steps queue (`patchpilot.app.waker`). An event
        that wakes nothing is no error."""
        from patchpilot.adapters.azure.wake_events import read_event

        return self.waker.wake(read_event(event, self.clock.now()))

    def policy(self) -> Policy:
        """The deployed policy, read and validated on each use: operators change it without a deploy."""
        return load_policy_from(self.env.policy, self.blobs)

    def handle_message(
        self, message_id: str, body: str, dequeue_count: int, on_run: Callable[[str], None] = lambda _: None
    ) -> None:
        """One message of the steps queue, as the queue trigger hands it over (the host has undone
        the base64). `on_run` learns the run id first (the logs' correlation id). Raises only when
        the host must deliver the message again."""
        delivery = self.queue.from_function_message(message_id, body, dequeue_count)
        if delivery is None:
            return  # a hop sent on, or an unreadable body poisoned: done
        on_run(delivery.message.run_id)
        self.service.handle(delivery)

    @functools.cached_property
    def update_manager_events(self) -> UpdateManagerEvents:
        from patchpilot.adapters.azure.maintenance_events import machines_in_run
        from patchpilot.app.update_manager_events import UpdateManagerEvents

        def scheduled(event: UpdateManagerEvent) -> list[str]:
            return [m.resource_id for m in machines_in_run(self.clients, event.correlation_id, event.subscription_ids)]

        return UpdateManagerEvents(
            store=lambda: self.store,
            service=lambda: self.service,
            policy=self.policy,
            fleet=lambda: self.fleet,
            scheduled=scheduled,
        )

    def maintenance_event(self, raw: object) -> list[str]:
        """Event Grid's delivery of Update Manager events (either schema, any key casing): one
        answer per event (`patchpilot.app.update_manager_events`). InputError for a malformed
        event, naming the field."""
        from patchpilot.adapters.azure.maintenance_events import MaintenanceEvent, parse_maintenance_events

        return [
            self.update_manager_events(event)
            if isinstance(event, MaintenanceEvent)
            else f"ignored event {event.event_id or '(no id)'}: {event.reason}"
            for event in parse_maintenance_events(raw)
        ]

    def azure_advisories(self, *, act: bool = True) -> AzureAdvisoriesRead:
        """Azure's own advisories (Defender for Cloud findings, Update Manager's critical updates),
        read and answered like Inspector findings (`patchpilot.app.azure_advisories`): on the
        timer, and by `patchpilot advisories --cloud azure` (`act=False` without `--start`)."""
        from patchpilot.adapters.azure.defender import AzureDefenderFindings
        from patchpilot.app.azure_advisories import read_azure_advisories

        policy, now = self.policy(), self.clock.now()
        return read_azure_advisories(
            policy,
            defender=AzureDefenderFindings(self.fleet.access),
            assessor=self.fleet,
            fleet=lambda: self.discovered(policy, now),
            store=self.store,
            claims=self.claims,
            clock=self.clock,
            start=self.service.start,
            tell=lambda notice: self.routed.send(notice, policy.notifications),
            follow_up=self.service.request_follow_up,
            act=act,
        )

    def status(self, run_id: str) -> dict[str, Any]:
        """The run as `patchpilot status --json` shows it; UnknownRunError when there is none."""
        return self.store.load(run_id).document()


def scheduled_elsewhere(policy: Policy) -> TriggerDecision | None:
    """Update Manager's schedules run a policy with azure.maintenance: no run of the timer's."""
    from patchpilot.triggers import TriggerDecision

    if policy.azure is None or policy.azure.maintenance is None:
        return None
    return TriggerDecision(
        False,
        f"Update Manager schedules run policy {policy.name} (azure.maintenance): "
        "PatchPilot acts on their pre- and post-maintenance events",
    )


def _table_client(env: AzureEnvironment, clients: AzureClients, options: Mapping[str, Any]) -> TableClient:
    """The run table. With a connection string (local development) it is created if missing; in
    Azure the Bicep template has created it and the identity may only use it."""
    from azure.data.tables import TableClient

    endpoints = env.endpoints()
    if endpoints is not None:
        return TableClient(endpoints.table, env.table, credential=clients.credential, **options)
    table = TableClient.from_connection_string(env.storage_connection or "", env.table, **options)
    _create_if_missing(table.create_table)
    return table


def _queue_clients(
    env: AzureEnvironment, clients: AzureClients, options: Mapping[str, Any]
) -> tuple[QueueClient, QueueClient]:
    """The steps queue and its poison queue, created if missing as the table is."""
    from azure.storage.queue import QueueClient

    endpoints = env.endpoints()
    if endpoints is not None:
        credential = clients.credential
        steps, poison = (
            QueueClient(endpoints.queue, name, credential=credential, **options) for name in env.queue_names
        )
        return steps, poison
    conn = env.storage_connection or ""
    steps, poison = (QueueClient.from_connection_string(conn, name, **options) for name in env.queue_names)
    for queue in (steps, poison):
        _create_if_missing(queue.create_queue)
    return steps, poison


def _create_if_missing(create: Callable[[], object]) -> None:
    from azure.core.exceptions import ResourceExistsError

    with contextlib.suppress(ResourceExistsError):
        create()


@functools.cache
def deps(log: Any = None) -> AzureRuntime:
    """Built once per warm worker, on first use (never at import time)."""
    import logging

    return AzureRuntime.build(AzureEnvironment.from_environ(os.environ), log or logging.getLogger("patchpilot"))
