"""The Azure composition root (`patchpilot.bootstrap.azure`): the app settings and their
errors, the policy read from its blob, and the runtime built as the Function App builds it, on
Azurite (the real Table, Queue and Blob services; tests/azurite.py) and the fake ARM behind the
real management clients (tests/fake_arm.py).
"""

from __future__ import annotations

import base64
import heapq
import http.server
import json
import logging
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlencode, urlsplit

import azure.functions as func
import pytest
from azure.functions import meta
from azure.functions.queue import QueueMessageInConverter
from azure.functions.timer import TimerRequestConverter
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient
from azure_rbac import arm_action, fleet_role_actions
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_compute import SUB, FakeAzureCompute, Patch
from fake_azure_maintenance import FakeMaintenance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the app's root: azure_functions/

import patchpilot.bootstrap.azure as runtime_module
from azure_functions import http_api, steps, timer
from azure_functions import maintenance as maintenance_module
from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.policy_source import load_policy_from
from patchpilot.adapters.azure.table_store import TableRunStore
from patchpilot.approvals import ApprovalLinkError, ApprovalRequest, sign_approval
from patchpilot.bootstrap.azure import AzureEnvironment, AzureRuntime, StorageEndpoints
from patchpilot.errors import InputError
from patchpilot.policy import parse_policy
from patchpilot.ports import UnknownRunError

pytestmark = pytest.mark.slow  # a runtime: `make test-fast` leaves it out

if TYPE_CHECKING:
    from azurite import Azurite

pytest_plugins = ["azurite"]

ROOT = Path(__file__).resolve().parents[1]
POLICY = (ROOT / "examples" / "policy.yaml").read_text()
SETTINGS = {
    "PATCHPILOT_TABLE": "patchpilotruns",
    "PATCHPILOT_QUEUE": "patchpilot-steps",
    "PATCHPILOT_POLICY": "blob://patchpilot-config/policy.yaml",
}


def problems(settings: dict[str, str]) -> str:
    with pytest.raises(InputError) as error:
        AzureEnvironment.from_environ(settings)
    return error.value.render()


# ------------------------------------------------------------------ app settings


def test_missing_settings_are_each_named() -> None:
    text = problems({"PATCHPILOT_TABLE": " "})  # blank counts as unset
    for name in ("PATCHPILOT_TABLE", "PATCHPILOT_QUEUE", "PATCHPILOT_POLICY"):
        assert f"app settings: {name}: Field required" in text


def test_no_way_to_reach_storage_is_said_with_every_way_there_is() -> None:
    text = problems(SETTINGS)
    assert "no storage connection: set AzureWebJobsStorage (a connection string)" in text
    assert "AzureWebJobsStorage__accountName (identity-based)" in text
    assert "__queueServiceUri, __tableServiceUri and __blobServiceUri" in text


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("PATCHPILOT_QUEUE", "Patch_Steps", "PATCHPILOT_QUEUE: 'Patch_Steps' is not a queue name: 3 to 56 lower-case"),
        ("PATCHPILOT_QUEUE", "s" * 57, "(the poison queue adds -poison)"),
        ("PATCHPILOT_QUEUE", "steps--x", "is not a queue name"),
        ("PATCHPILOT_TABLE", "patchpilot-runs", "PATCHPILOT_TABLE: 'patchpilot-runs' is not a table name: 3 to 63"),
        ("PATCHPILOT_POLICY", "s3://ops/policy.yaml", "PATCHPILOT_POLICY: expected blob://CONTAINER/NAME"),
        ("PATCHPILOT_POLICY", "blob://container-only", "expected blob://CONTAINER/NAME, not 'blob://container-only'"),
        ("PATCHPILOT_KEY_VAULT_URL", "http://vault", "PATCHPILOT_KEY_VAULT_URL: expected an https:// URL"),
        ("PATCHPILOT_WAKE_SUBSCRIPTION", "my-sub", "PATCHPILOT_WAKE_SUBSCRIPTION: 'my-sub' is not a subscription id"),
    ],
)
def test_a_bad_setting_is_named_with_what_it_should_be(setting: str, value: str, expected: str) -> None:
    assert expected in problems({**SETTINGS, "AzureWebJobsStorage": "UseDevelopmentStorage=true", setting: value})


def test_the_wake_subscription_reaches_the_workers_fleet() -> None:
    """main.bicep names the subscription whose events wake the worker; its fleet polls the steps
    they end less often there (adapters/azure/fleet WOKEN_POLLS). Blank (no wake-ups): unset."""
    sub = "0b1f6471-1bf0-4dda-aec3-111122223333"
    settings = {**SETTINGS, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    woken = AzureEnvironment.from_environ({**settings, "PATCHPILOT_WAKE_SUBSCRIPTION": "{" + sub.upper() + "}"})
    unset = AzureEnvironment.from_environ({**settings, "PATCHPILOT_WAKE_SUBSCRIPTION": ""})
    log = logging.getLogger("patchpilot")
    assert AzureRuntime.build(woken, log, clients=AzureClients()).fleet.woken_subscription == sub
    assert AzureRuntime.build(unset, log, clients=AzureClients()).fleet.woken_subscription is None


def test_an_approval_secret_needs_the_vault_it_lives_in() -> None:
    settings = {**SETTINGS, "AzureWebJobsStorage": "UseDevelopmentStorage=true", "PATCHPILOT_APPROVAL_SECRET": "key"}
    assert "PATCHPILOT_APPROVAL_SECRET names a Key Vault secret: set PATCHPILOT_KEY_VAULT_URL too" in problems(settings)


def test_identity_based_storage_by_account_name_reaches_the_public_cloud_endpoints() -> None:
    env = AzureEnvironment.from_environ({**SETTINGS, "AzureWebJobsStorage__accountName": "patchpilotst1"})
    assert env.endpoints() == StorageEndpoints(
        queue="https://patchpilotst1.queue.core.windows.net",
        table="https://patchpilotst1.table.core.windows.net",
        blob="https://patchpilotst1.blob.core.windows.net",
    )


def test_service_uris_reach_other_clouds_and_blank_settings_count_as_unset() -> None:
    uris = {
        "AzureWebJobsStorage": " ",  # left blank in a settings form
        "AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.chinacloudapi.cn",
        "AzureWebJobsStorage__tableServiceUri": "https://st.table.core.chinacloudapi.cn",
        "AzureWebJobsStorage__blobServiceUri": "https://st.blob.core.chinacloudapi.cn",
        "PATCHPILOT_APPROVAL_SECRET": "",
    }
    env = AzureEnvironment.from_environ({**SETTINGS, **uris})
    assert env.storage_connection is None and env.approval_secret is None
    assert env.endpoints() == StorageEndpoints(
        "https://st.queue.core.chinacloudapi.cn",
        "https://st.table.core.chinacloudapi.cn",
        "https://st.blob.core.chinacloudapi.cn",
    )


def test_a_connection_string_means_no_identity_endpoints() -> None:
    env = AzureEnvironment.from_environ({**SETTINGS, "AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert env.endpoints() is None
    assert env.queue_names == ("patchpilot-steps", "patchpilot-steps-poison")


# ------------------------------------------------------------------ on Azurite


T0 = datetime(2026, 12, 11, 16, 0, tzinfo=UTC)  # Friday 17:00 UTC... the window is Saturday 02:00 Tokyo
SIGNING_KEY = "s" * 48
SLACK_SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


class StaticSecrets:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, name: str) -> str:
        return self.values[name]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def arm(clock: ManualClock) -> FakeArm:
    return FakeArm(clock)


@pytest.fixture
def settings(azurite: Azurite) -> dict[str, str]:
    """A fresh table, queue and policy container per test, on Azurite."""
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "PATCHPILOT_TABLE": azurite.unique_name("runs"),
        "PATCHPILOT_QUEUE": azurite.unique_name("steps"),
        "PATCHPILOT_POLICY": f"blob://{azurite.unique_name('config')}/patchpilot/policy.yaml",
        "PATCHPILOT_KEY_VAULT_URL": "https://patchpilot-kv.vault.azure.net",
        "PATCHPILOT_APPROVAL_SECRET": "patchpilot-approval-signing-key",
        "PATCHPILOT_REPORTS": azurite.unique_name("reports"),
    }


def report(settings: dict[str, str], run_id: str, suffix: str = "html") -> str:
    """A run's report as the app wrote it to the reports container."""
    service = BlobServiceClient.from_connection_string(settings["AzureWebJobsStorage"])
    blob = service.get_blob_client(settings["PATCHPILOT_REPORTS"], f"{run_id}.{suffix}")
    return bytes(blob.download_blob().readall()).decode("utf-8")


def upload(settings: dict[str, str], text: str) -> None:
    container, _, name = settings["PATCHPILOT_POLICY"].removeprefix("blob://").partition("/")
    service = BlobServiceClient.from_connection_string(settings["AzureWebJobsStorage"])
    if not service.get_container_client(container).exists():
        service.create_container(container)
    service.get_blob_client(container, name).upload_blob(text.encode(), overwrite=True)


@pytest.fixture
def runtime(settings: dict[str, str], arm: FakeArm, clock: ManualClock) -> AzureRuntime:
    upload(settings, POLICY)
    clients = AzureClients(arm.credential, transport=arm.transport(), polling_interval=0, retry_backoff_factor=0)
    secrets = StaticSecrets({settings["PATCHPILOT_APPROVAL_SECRET"]: SIGNING_KEY})
    return AzureRuntime.build(
        AzureEnvironment.from_environ(settings),
        log=logging.getLogger("patchpilot"),
        clients=clients,
        clock=clock,
        secrets=secrets,
    )


def test_the_policy_is_read_from_its_blob_and_validated(settings: dict[str, str], azurite: Azurite) -> None:
    upload(settings, POLICY)
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    assert load_policy_from(settings["PATCHPILOT_POLICY"], blobs).name == "monthly-fleet"


def test_a_broken_policy_blob_names_its_problems_and_where_it_is(settings: dict[str, str], azurite: Azurite) -> None:
    upload(settings, POLICY.replace('"50%"', '"ten"'))
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    with pytest.raises(InputError) as error:
        load_policy_from(settings["PATCHPILOT_POLICY"], blobs)
    assert f"{settings['PATCHPILOT_POLICY']}:" in error.value.render()
    assert "rollout.disruption_budget: expected a whole number or a percentage" in error.value.render()


def test_a_missing_policy_blob_or_container_is_said_plainly(settings: dict[str, str], azurite: Azurite) -> None:
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    location = settings["PATCHPILOT_POLICY"]
    with pytest.raises(InputError, match=r"no blob patchpilot/policy\.yaml in container"):
        load_policy_from(location, blobs)  # the container does not exist either
    upload(settings, POLICY)
    with pytest.raises(InputError, match=r"no blob other\.yaml in container"):
        load_policy_from(location.replace("patchpilot/policy.yaml", "other.yaml"), blobs)


def test_a_policy_that_is_not_text_is_refused(settings: dict[str, str], azurite: Azurite) -> None:
    upload(settings, "")
    container, _, name = settings["PATCHPILOT_POLICY"].removeprefix("blob://").partition("/")
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    blobs.get_blob_client(container, name).upload_blob(b"\xff\xfe\x00", overwrite=True)
    with pytest.raises(InputError, match="the policy blob is not UTF-8 text"):
        load_policy_from(settings["PATCHPILOT_POLICY"], blobs)


def test_with_a_connection_string_the_runtime_creates_its_table_and_queues(
    runtime: AzureRuntime, settings: dict[str, str]
) -> None:
    assert runtime.store.run_ids() == []
    assert runtime.queue.client.queue_name == settings["PATCHPILOT_QUEUE"]
    assert runtime.queue.poison.queue_name == settings["PATCHPILOT_QUEUE"] + "-poison"
    runtime.queue.client.get_queue_properties()  # exists
    runtime.queue.poison.get_queue_properties()


def test_a_timer_before_the_window_reads_the_policy_and_calls_nothing_else(runtime: AzureRuntime, arm: FakeArm) -> None:
    decision = runtime.trigger()
    assert not decision.start and decision.reason.startswith("next window of monthly-fleet starts 2026-12-12T02:00")
    assert arm.calls == []
    assert {"store", "queue", "fleet", "service"}.isdisjoint(vars(runtime))  # built on first use only


def test_the_status_of_an_unknown_run_is_unknown(runtime: AzureRuntime) -> None:
    with pytest.raises(UnknownRunError):
        runtime.status("monthly-fleet-20261212-0200")


def test_approval_links_need_the_signing_secret(runtime: AzureRuntime, settings: dict[str, str]) -> None:
    runtime.secrets = None
    token = sign_approval(ApprovalRequest("monthly-fleet-20261212-0200", "production"), SIGNING_KEY)
    with pytest.raises(ApprovalLinkError, match="approval links are not configured"):
        runtime.approve(token)


def test_a_link_signed_with_another_key_is_refused(runtime: AzureRuntime) -> None:
    token = sign_approval(ApprovalRequest("monthly-fleet-20261212-0200", "production"), "another key" * 4)
    with pytest.raises(ApprovalLinkError, match="not valid"):
        runtime.preview_approval(token)


def test_deps_builds_the_runtime_once_per_warm_worker_from_the_app_settings(
    settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    runtime_module.deps.cache_clear()
    try:
        first = runtime_module.deps()
        assert runtime_module.deps() is first
        assert first.env.queue == settings["PATCHPILOT_QUEUE"]
    finally:
        runtime_module.deps.cache_clear()


def test_deps_refuses_to_build_on_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*SETTINGS, "AzureWebJobsStorage"]:
        monkeypatch.delenv(name, raising=False)
    runtime_module.deps.cache_clear()
    with pytest.raises(InputError, match="app settings: PATCHPILOT_TABLE: Field required"):
        runtime_module.deps()


# ------------------------------------------------------------------ a whole run through the functions

RUN_POLICY = f"""
name: weu-monthly
schedule: {{monthly: "Second Tuesday Offset+4", at: "02:00", timezone: W. Europe Standard Time, duration: 10h}}
rings:
  - {{name: staging, select: {{tags: {{Environment: staging}}}}, soak: 1h}}
  - {{name: production, select: {{tags: {{Environment: production}}}}, approval: required}}
rollout: {{mode: concurrent_zones, disruption_budget: "50%", canary: 1, max_failures: 1}}
patches: {{classifications: [Critical, Security]}}
health:
  script: {{linux: "curl -fsS http://localhost/health"}}
  timeout: 10m
azure: {{subscriptions: [{SUB}], resource_groups: [rg-web], locations: [westeurope]}}
"""
WINDOW = parse_policy(RUN_POLICY).schedule.windows(datetime(2026, 12, 1, tzinfo=UTC), 1)[0]  # type: ignore[union-attr]
START = WINDOW.start.astimezone(UTC)  # Saturday 12 December 2026, 02:00 in Amsterdam
RUN_ID = "weu-monthly-20261212-0200"
OPENSSL = Patch("openssl", "Security", version="3.0.13-1")
KERNEL = Patch("kernel", "Critical", version="6.1.90-1")
HOST_MAX_DEQUEUE_COUNT = 5  # host.json
WEBHOOKS: dict[str, str] = {}  # Key Vault secrets holding webhook URLs, set by a test


@dataclass
class FunctionsHost:
    """What the Functions host does for the app, on Azurite and the fake Azure: fires the timer,
    hands each visible message of the steps queue to `step_worker` (base64 undone, as
    messageEncoding base64 does; the trigger metadata decoded by azure.functions), deletes it when
    the function returns, and calls the HTTP functions. Time is the test's clock, which Azurite
    follows; when no message is visible the clock moves to the next one due (read from the
    visibility timeouts the app sent)."""

    clock: ManualClock
    steps: QueueClient
    poison: QueueClient
    due: list[datetime] = field(default_factory=list)
    invocations: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # message types handled
    waiting: Callable[[], bool] = lambda: False  # whether a run of the run table waits for approval

    def record(self, request: Any) -> None:
        """A raw_request_hook: the moment each message sent becomes visible."""
        http = request.http_request
        if http.method == "POST" and http.url.split("?")[0].endswith("/messages"):
            query = parse_qs(urlsplit(http.url).query)
            delay = int(query.get("visibilitytimeout", ["0"])[0])
            heapq.heappush(self.due, self.clock.now() + timedelta(seconds=delay))

    def context(self) -> Any:
        self.invocations += 1
        return SimpleNamespace(invocation_id=f"00000000-0000-4000-8000-{self.invocations:012d}")

    def timer(self) -> None:
        payload = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": {}, "IsPastDue": False}
        request = TimerRequestConverter.decode(meta.Datum(json.dumps(payload), "json"), trigger_metadata={})
        timer.timer(request, self.context())

    def drain(self, limit: int = 300, until: Callable[[], bool] = lambda: False, *, past_gates: bool = False) -> int:
        """Deliver messages until none is left or due, or `until()` holds; how many were handled.
        With nothing visible while a run waits for approval, it returns rather than moving the
        clock on to the gate's reminders (the test approves next), unless `past_gates`."""
        handled = 0
        while handled < limit and not until():
            pages = self.steps.receive_messages(messages_per_page=1, visibility_timeout=600).by_page()
            raw = next(iter(next(pages, [])), None)
            if raw is None:
                while self.due and self.due[0] <= self.clock.now():
                    heapq.heappop(self.due)
                if not self.due or (not past_gates and self.waiting()):
                    return handled
                self.clock.set(heapq.heappop(self.due))
                continue
            body = base64.b64decode(raw.content).decode()
            metadata = {
                "Id": meta.Datum(raw.id, "string"),
                "DequeueCount": meta.Datum(raw.dequeue_count, "int"),
                "PopReceipt": meta.Datum(raw.pop_receipt, "string"),
            }
            message = QueueMessageInConverter.decode(meta.Datum(body, "string"), trigger_metadata=metadata)
            assert raw.dequeue_count <= HOST_MAX_DEQUEUE_COUNT, f"message {raw.id} would go to the poison queue"
            steps.step_worker(message, self.context())  # a failure fails the test: none is expected
            self.steps.delete_message(raw.id, raw.pop_receipt)
            handled += 1
            self.kinds[json.loads(body).get("type", "?") if body.startswith("{") else "?"] += 1
        if until():
            return handled
        raise AssertionError(f"still delivering after {limit} messages: {self.kinds.most_common(5)}")

    def get(self, function: Any, url: str, **route: str) -> func.HttpResponse:
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        request = func.HttpRequest("GET", url, headers={}, params=query, route_params=route, body=b"")
        response: func.HttpResponse = function(request, self.context())
        return response

    def post_form(self, function: Any, url: str, form: dict[str, str]) -> func.HttpResponse:
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        request = func.HttpRequest("POST", url, headers=headers, params=query, body=urlencode(form).encode())
        response: func.HttpResponse = function(request, self.context())
        return response


@pytest.fixture
def world(
    azurite: Azurite, settings: dict[str, str], clock: ManualClock, arm: FakeArm, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FunctionsHost, FakeAzureCompute]]:
    """The Function App as deployed: its app settings in the environment, `deps()` building the
    runtime on first use; Azure Resource Manager is the fake, Key Vault a dictionary."""
    azure = FakeAzureCompute(arm)
    upload(settings, RUN_POLICY)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    follow = azurite.follow(clock)
    conn, queue = settings["AzureWebJobsStorage"], settings["PATCHPILOT_QUEUE"]
    host = FunctionsHost(
        clock,
        *(QueueClient.from_connection_string(conn, q, raw_request_hook=follow) for q in (queue, f"{queue}-poison")),
    )

    for client in (host.steps, host.poison):
        client.create_queue()  # as the Bicep template does
    runs = TableRunStore.from_connection_string(conn, settings["PATCHPILOT_TABLE"])  # the test's own reader
    host.waiting = lambda: any(runs.load(r).state == "awaiting_approval" for r in runs.run_ids())

    def hook(request: Any) -> None:
        follow(request)
        host.record(request)

    build = AzureRuntime.build.__func__  # type: ignore[attr-defined]

    def build_on_fakes(cls: type[AzureRuntime], env: AzureEnvironment, log: Any) -> AzureRuntime:
        clients = AzureClients(arm.credential, transport=arm.transport(), polling_interval=0, retry_backoff_factor=0)
        secrets = StaticSecrets(
            {
                settings["PATCHPILOT_APPROVAL_SECRET"]: SIGNING_KEY,
                "patchpilot-slack-signing": SLACK_SIGNING_SECRET,
                **WEBHOOKS,
            }
        )
        return build(
            cls, env, log, clients=clients, clock=clock, secrets=secrets, storage_options={"raw_request_hook": hook}
        )

    monkeypatch.setattr(AzureRuntime, "build", classmethod(build_on_fakes))
    runtime_module.deps.cache_clear()
    try:
        yield host, azure
    finally:
        runtime_module.deps.cache_clear()
        azurite.release_clock()


def test_arm_actions_are_named_as_rbac_names_them() -> None:
    vm = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
    assert arm_action("POST", vm + "/installPatches") == "microsoft.compute/virtualmachines/installpatches/action"
    assert arm_action("GET", vm + "/instanceView") == "microsoft.compute/virtualmachines/instanceview/read"
    assert arm_action("PUT", vm + "/runCommands/x") == "microsoft.compute/virtualmachines/runcommands/write"
    assert arm_action("GET", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks") == (
        "microsoft.compute/disks/read"
    )
    assert "microsoft.compute/virtualmachines/installpatches/action" in fleet_role_actions()


def test_a_scheduled_run_through_the_functions_patches_staging_then_production_after_approval(
    world: tuple[FunctionsHost, FakeAzureCompute], arm: FakeArm, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    host, azure = world
    caplog.set_level("INFO", logger="patchpilot")
    staging = [
        azure.add_vm(f"stg-{n}", zone=str(n), tags={"Environment": "staging"}, available=[OPENSSL, KERNEL])
        for n in (1, 2)
    ]
    production = [
        azure.add_vm(
            f"prd-{n}",
            zone=str(n % 3 + 1),
            tags={"Environment": "production"},
            available=[OPENSSL, KERNEL],
            breaks_when_patched=n == 2,
        )
        for n in (1, 2, 3)
    ]
    azure.add_vm("dev-1", tags={"Environment": "dev"}, available=[OPENSSL])

    clock.set(START - timedelta(minutes=10))
    host.timer()  # before the window
    assert host.drain() == 0
    clock.set(START + timedelta(minutes=1))
    host.timer()
    clock.set(START + timedelta(minutes=5))
    host.timer()  # a second tick of the same period starts nothing new
    host.drain()  # staging: probe, snapshots, install, health, soak

    status_url = f"https://patchpilot-func.azurewebsites.net/api/runs/{RUN_ID}?code=key"
    document = json.loads(host.get(http_api.status, status_url, run_id=RUN_ID).get_body())
    assert document["status"] == "waiting_approval", document
    assert {v["state"] for v in document["instances"].values() if v["ring"] == "staging"} == {"patched"}
    assert {v["state"] for v in document["instances"].values() if v["ring"] == "production"} == {"pending"}
    assert all(not azure.state(vm).install_requests for vm in production)

    token = sign_approval(ApprovalRequest(RUN_ID, "production"), SIGNING_KEY)
    link = f"https://patchpilot-func.azurewebsites.net/api/approve?code=key&token={token}"
    assert "Approve ring production of run" in host.get(http_api.approve, link).get_body().decode()
    assert host.drain() == 0  # opening the link approved nothing
    approved = host.post_form(http_api.approve, link, {"token": token}).get_body().decode()
    assert f"approved ring production of run {RUN_ID}" in approved
    host.drain()  # production: canary, waves, the broken VM rolled back

    document = json.loads(host.get(http_api.status, status_url, run_id=RUN_ID).get_body())
    states = {name: document["instances"][vm]["state"] for name, vm in zip(["stg-1", "stg-2"], staging, strict=True)}
    states |= {f"prd-{n}": document["instances"][vm]["state"] for n, vm in zip((1, 2, 3), production, strict=True)}
    assert document["status"] == "succeeded", document["reason"]
    assert states == {
        "stg-1": "patched",
        "stg-2": "patched",
        "prd-1": "patched",
        "prd-2": "rolled_back",
        "prd-3": "patched",
    }
    assert not azure.broken(production[1]) and azure.state(production[1]).power == "running"
    assert len(document["instances"]) == 5  # dev-1 is in no ring
    assert host.poison.peek_messages(max_messages=32) == []
    # every line the worker logged once it knew the message carries the run id
    worker_lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "patchpilot"]
    handled = [line for line in worker_lines if line.get("function") == "step_worker"]
    assert handled and all(line["correlation_id"] == RUN_ID for line in handled)
    assert runtime_module.deps.cache_info().currsize == 1  # one runtime for every invocation of the worker
    assert runtime_module.deps().store.run_ids() == [RUN_ID]  # two timer ticks in the window's period, one run
    # every Azure Resource Manager call was allowed by the fleet role of infra/azure
    called = {arm_action(call.method, call.path) for call in arm.calls}
    assert called - fleet_role_actions() == set()


def test_an_unreadable_message_is_poisoned_with_why_and_the_worker_returns(
    world: tuple[FunctionsHost, FakeAzureCompute],
) -> None:
    host, _ = world
    host.steps.send_message(base64.b64encode(b'{"type": "Nonsense", "id": "x1"}').decode(), time_to_live=-1)
    assert host.drain() == 1  # handled: the host deletes it instead of retrying it five times
    (poisoned,) = host.poison.peek_messages(max_messages=32)
    header, _, body = base64.b64decode(poisoned.content).decode().partition("\n")
    assert json.loads(header)["poisoned"]["message_id"] == "x1"
    assert "unreadable message" in json.loads(header)["poisoned"]["reason"]
    assert body == '{"type": "Nonsense", "id": "x1"}'


# ------------------------------------------------------------------ an Update Manager run, through Event Grid

MC_ID = (
    f"/subscriptions/{SUB}/resourceGroups/rg-maint/providers/Microsoft.Maintenance/maintenanceConfigurations/pp-prod"
)
AUM_POLICY = RUN_POLICY.replace(
    "azure: {",
    "azure: {maintenance: {resource_group: rg-maint, location: westeurope}, ",
).replace("approval: required", "approval: auto")  # Update Manager cannot wait for one: refused
AUM_START = datetime(2026, 12, 12, 1, 0, tzinfo=UTC)


def maintenance_event(kind: str, run_id: str, *, pascal_case: bool = False) -> dict[str, Any]:
    """Event Grid's delivery of an Update Manager event (Event Grid schema)."""
    data: dict[str, Any] = {
        "correlationId": run_id,
        "maintenanceConfigurationId": MC_ID,
        "startDateTime": AUM_START.isoformat(),
        "endDateTime": (AUM_START + timedelta(hours=3)).isoformat(),
        "resourceSubscriptionIds": [SUB],
    }
    if kind == "Pre":
        data["cancellationCutOffDateTime"] = (AUM_START - timedelta(minutes=10)).isoformat()
    else:
        data["status"] = "Succeeded"
    if pascal_case:
        data = {key[0].upper() + key[1:]: value for key, value in data.items()}
    return {
        "id": f"{run_id}-{kind}",
        "topic": MC_ID,
        "subject": "pp-prod",
        "eventType": f"Microsoft.Maintenance.{kind}MaintenanceEvent",
        "eventTime": datetime.now(UTC).isoformat(),
        "dataVersion": "1.0",
        "data": data,
    }


def grid_event(raw: dict[str, Any]) -> func.EventGridEvent:
    """What the host hands an Event Grid trigger."""
    return func.EventGridEvent(
        id=raw["id"],
        data=raw["data"],
        topic=raw["topic"],
        subject=raw["subject"],
        event_type=raw["eventType"],
        event_time=datetime.fromisoformat(raw["eventTime"]),
        data_version=raw["dataVersion"],
    )


@pytest.fixture
def aum(
    world: tuple[FunctionsHost, FakeAzureCompute], arm: FakeArm, settings: dict[str, str]
) -> tuple[FunctionsHost, FakeAzureCompute, FakeMaintenance]:
    host, azure = world
    maintenance = FakeMaintenance(arm)
    arm.table("resources", azure._resources_table)  # the compute fake models the machines
    upload(settings, AUM_POLICY)
    return host, azure, maintenance


def test_an_update_manager_run_is_snapshotted_before_and_rolled_back_after(
    aum: tuple[FunctionsHost, FakeAzureCompute, FakeMaintenance],
    arm: FakeArm,
    clock: ManualClock,
    settings: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="patchpilot")
    host, azure, maintenance = aum
    vms = [
        azure.add_vm(
            f"prd-{n}",
            zone=str(n),
            tags={"Environment": "production"},
            available=[OPENSSL, KERNEL],
            breaks_when_patched=n == 2,
        )
        for n in (1, 2, 3)
    ]
    run = maintenance.schedule_run(MC_ID, AUM_START, vms)
    clock.set(AUM_START - timedelta(minutes=35))
    assert "Update Manager schedules run policy weu-monthly" in runtime_module.deps().trigger().reason

    pre = maintenance_event("Pre", run)
    context = SimpleNamespace(invocation_id="pre-1")
    maintenance_module.pre_maintenance(grid_event(pre), context)  # type: ignore[arg-type]
    again = maintenance_module.on_maintenance_event(maintenance_event("Pre", run, pascal_case=True), "pre_maintenance")
    run_id = "aum-pp-prod-20261212010000"
    assert again == [f"run {run_id} already accompanies Update Manager run 20261212010000 (running)"]
    store = runtime_module.deps().store
    host.drain(until=lambda: store.load(run_id).state == "installing")
    snapshots = [c for c in arm.calls if c.method == "PUT" and "/snapshots/" in c.path]
    assert len(snapshots) == 3 * 2 and clock.now() < AUM_START - timedelta(minutes=10)  # OS and data disk, in time

    clock.set(AUM_START + timedelta(minutes=1))
    azure.maintenance_install(vms, run, {"classificationsToInclude": ["Critical", "Security"]})
    post = maintenance_module.on_maintenance_event(maintenance_event("Post", run), "post_maintenance")
    assert post == [
        f"Update Manager run 20261212010000 ended (Succeeded); run {run_id} reads the results and "
        "checks health next (installing)"
    ]
    host.drain()

    finished = store.load(run_id)
    assert finished.state == "succeeded", finished.reason
    assert {r.instance.name: r.state for r in finished.records()} == {
        "prd-1": "patched",
        "prd-2": "rolled_back",
        "prd-3": "patched",
    }
    assert not azure.broken(vms[1])
    assert [c for c in arm.calls if c.path.endswith("/installpatches")] == []  # Update Manager installed
    html = report(settings, run_id)
    assert run_id in html and "prd-2" in html and "<svg" in html  # the report, with its timeline
    assert "# " in report(settings, run_id, "md")
    overview = report(settings, "index")  # the overview page beside it, written again when the run ended
    assert f'href="{run_id}.html"' in overview and "No run needs a person." in overview
    (finished_notice,) = [r.getMessage() for r in caplog.records if f"Run {run_id} succeeded" in r.getMessage()]
    assert "Report: " in finished_notice and f"/{settings['PATCHPILOT_REPORTS']}/{run_id}.html" in finished_notice
    assert maintenance.run_status(run) == "Pending"  # not cancelled
    called = {arm_action(call.method, call.path) for call in arm.calls}
    assert called - fleet_role_actions() == set()


def test_a_failed_snapshot_cancels_the_update_manager_run(
    aum: tuple[FunctionsHost, FakeAzureCompute, FakeMaintenance], arm: FakeArm, clock: ManualClock
) -> None:
    host, azure, maintenance = aum
    vms = [azure.add_vm(f"prd-{n}", zone=str(n), tags={"Environment": "production"}) for n in (1, 2)]
    run = maintenance.schedule_run(MC_ID, AUM_START, vms)
    clock.set(AUM_START - timedelta(minutes=35))
    arm.throttle(r".*/snapshots/.*prd-2.*", times=1000, method="PUT")  # ARM refuses prd-2's snapshots
    maintenance_module.on_maintenance_event(maintenance_event("Pre", run), "pre_maintenance")
    host.drain()
    finished = runtime_module.deps().store.load("aum-pp-prod-20261212010000")
    assert finished.state == "halted" and "cancelled, nothing patched" in finished.reason
    assert maintenance.run_status(run) == "Cancelled"
    assert clock.now() < AUM_START - timedelta(minutes=10)
    called = {arm_action(call.method, call.path) for call in arm.calls}
    assert "microsoft.maintenance/applyupdates/write" in called
    assert called - fleet_role_actions() == set()


def test_events_that_are_not_maintenance_events_or_are_malformed_are_answered_not_raised(
    aum: tuple[FunctionsHost, FakeAzureCompute, FakeMaintenance],
) -> None:
    other = {**maintenance_event("Pre", "x"), "eventType": "Microsoft.Storage.BlobCreated"}
    assert maintenance_module.on_maintenance_event(other, "pre_maintenance") == [
        "ignored event x-Pre: not a maintenance event: Microsoft.Storage.BlobCreated"
    ]
    broken = maintenance_event("Pre", "not-a-run")
    del broken["data"]["startDateTime"]
    answers = maintenance_module.on_maintenance_event(broken, "pre_maintenance")
    assert answers and all(a.startswith("malformed: ") for a in answers)
    assert any("startDateTime" in a for a in answers)


def test_a_reject_link_ends_the_run_before_production(
    world: tuple[FunctionsHost, FakeAzureCompute], clock: ManualClock
) -> None:
    host, azure = world
    azure.add_vm("stg-1", zone="1", tags={"Environment": "staging"}, available=[OPENSSL])
    production = azure.add_vm("prd-1", zone="2", tags={"Environment": "production"}, available=[OPENSSL])
    clock.set(START + timedelta(minutes=1))
    host.timer()
    host.drain()  # staging done, waiting for approval of production
    token = sign_approval(ApprovalRequest(RUN_ID, "production", decision="reject"), SIGNING_KEY)
    link = f"https://patchpilot-func.azurewebsites.net/api/approve?code=key&token={token}"
    asked = host.get(http_api.approve, link).get_body().decode()
    assert f"Reject ring production of run {RUN_ID}?" in asked and ">Reject</button>" in asked
    answered = host.post_form(http_api.approve, link, {"token": token}).get_body().decode()
    assert f"rejected ring production of run {RUN_ID}: the run ends" in answered
    host.drain()
    run = runtime_module.deps().store.load(RUN_ID)
    assert run.status == "halted" and run.reason == "ring production rejected by approval link"
    assert {r.instance.name: r.state for r in run.records()} == {"stg-1": "patched", "prd-1": "not_started"}
    assert not azure.state(production).install_requests
    # its notices name the commands that work for a run on Azure (there is no local state to read)
    (halted,) = [e.text for e in run.log if e.text.startswith(f"Run {RUN_ID} halted: ")]
    assert run.runtime == "azure" and halted.splitlines()[0].endswith(
        "Nothing more is patched; see `patchpilot runs --cloud azure --policy weu-monthly`, then "
        f"`patchpilot retry --cloud azure {RUN_ID}` if the ring is to be patched after all."
    )


class SlackReplies(http.server.BaseHTTPRequestHandler):
    """Slack's response_url, on loopback: records what the app answers the presser."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        SlackReplies.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_: Any) -> None:
        pass


def test_a_slack_button_press_approves_once_and_a_replay_is_refused(
    world: tuple[FunctionsHost, FakeAzureCompute],
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from slack_sdk.signature import SignatureVerifier

    import patchpilot.chat_approvals as chat

    host, azure = world
    monkeypatch.setenv("PATCHPILOT_SLACK_SIGNING_SECRET", "patchpilot-slack-signing")
    azure.add_vm("stg-1", zone="1", tags={"Environment": "staging"}, available=[OPENSSL])
    azure.add_vm("prd-1", zone="2", tags={"Environment": "production"}, available=[OPENSSL])
    clock.set(START + timedelta(minutes=1))
    host.timer()
    host.drain()  # staging done, waiting for approval of production

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlackReplies)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reply_url = f"http://127.0.0.1:{server.server_address[1]}/actions/T0123/1/abc"
    monkeypatch.setattr(chat, "SLACK_RESPONSE_URLS", (reply_url,))
    SlackReplies.received.clear()
    token = sign_approval(ApprovalRequest(RUN_ID, "production"), SIGNING_KEY)
    payload = {
        "type": "block_actions",
        "user": {"id": "U0A1B2C3D", "username": "alice"},
        "response_url": reply_url,
        "actions": [{"action_id": "patchpilot_approve", "type": "button", "value": token}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(int(clock.now().timestamp()))
    signature = SignatureVerifier(SLACK_SIGNING_SECRET).generate_signature(timestamp=stamp, body=body)
    headers = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature or ""}

    def press() -> func.HttpResponse:
        request = func.HttpRequest("POST", "https://app/api/slack/interactions?code=k", headers=headers, body=body)
        response: func.HttpResponse = http_api.slack(request, host.context())
        return response

    try:
        assert press().status_code == 200
        assert press().status_code == 401  # the same request again: a replay
    finally:
        server.shutdown()
    (reply,) = SlackReplies.received
    assert reply["response_type"] == "ephemeral" and reply["text"] == f"approved ring production of run {RUN_ID}"
    host.drain()
    run = runtime_module.deps().store.load(RUN_ID)
    assert run.status == "succeeded"
    assert any("approved by Slack U0A1B2C3D (alice)" in entry.text for entry in run.log)


def openssl_advisory(event_id: str, at: datetime) -> dict[str, Any]:
    """A PatchPilot advisory on the Event Grid schema: CVE-2025-0001, fixed by openssl."""
    return {
        "id": event_id,
        "topic": f"/subscriptions/{SUB}/resourceGroups/rg-patchpilot/providers/Microsoft.EventGrid/topics/advisories",
        "subject": "advisories/CVE-2025-0001",
        "eventType": "PatchPilot.Advisory",
        "eventTime": at.isoformat(),
        "dataVersion": "1.0",
        "data": {"id": "SEC-1", "cve": "CVE-2025-0001", "severity": "CRITICAL", "fixes": ["openssl"]},
    }


def test_an_advisory_on_event_grid_starts_one_emergency_run_and_a_repeat_merges(
    world: tuple[FunctionsHost, FakeAzureCompute], clock: ManualClock, settings: dict[str, str]
) -> None:
    from azure_functions import advisories

    host, azure = world
    upload(settings, RUN_POLICY + "emergency: {min_severity: HIGH, soak: 30m}\n")
    staging = azure.add_vm("stg-1", zone="1", tags={"Environment": "staging"}, available=[OPENSSL])
    production = azure.add_vm("prd-1", zone="2", tags={"Environment": "production"}, available=[OPENSSL])
    clock.set(START - timedelta(days=2))
    event = openssl_advisory("b1c2d3e4-0000-4f5a-8b9c-0d1e2f3a4b5c", clock.now())
    advisories.advisory(grid_event(event), SimpleNamespace(invocation_id="a-1"))  # type: ignore[arg-type]
    (run_id,) = [r for r in runtime_module.deps().store.run_ids() if "-emergency-" in r]
    assert run_id.startswith("weu-monthly-emergency-CVE-2025-0001-")
    (again,) = advisories.on_advisory(event)  # Event Grid delivers it twice
    assert again.startswith("Merged CVE-2025-0001") and run_id in again
    host.drain()
    run = runtime_module.deps().store.load(run_id)
    assert run.status == "succeeded", run.reason
    assert {r.instance.name: r.state for r in run.records()} == {"stg-1": "patched", "prd-1": "patched"}
    assert run.policy.patches.include == ["openssl"]
    (first,) = azure.state(staging).install_requests
    assert first["linuxParameters"]["packageNameMasksToInclude"] == ["openssl"]  # only the fix
    (promoted,) = azure.state(production).install_requests
    assert promoted["linuxParameters"]["packageNameMasksToInclude"] == ["openssl=3.0.13-1"]  # what staging passed
    broken = {**event, "data": {"id": "SEC-2", "severity": "CRITICAL"}}
    answers = advisories.on_advisory(broken)
    assert answers and all(a.startswith("malformed: ") for a in answers) and any("cve" in a for a in answers)


def test_a_machine_reported_after_the_emergency_run_gets_a_follow_up_with_what_staging_passed(
    world: tuple[FunctionsHost, FakeAzureCompute], clock: ManualClock, settings: dict[str, str]
) -> None:
    from azure_functions import advisories

    host, azure = world
    upload(settings, RUN_POLICY + "emergency: {min_severity: HIGH, soak: 30m}\n")
    azure.add_vm("stg-1", zone="1", tags={"Environment": "staging"}, available=[OPENSSL])
    azure.add_vm("prd-1", zone="2", tags={"Environment": "production"}, available=[OPENSSL])
    clock.set(START - timedelta(days=2))
    event = openssl_advisory("c1c2d3e4-0000-4f5a-8b9c-0d1e2f3a4b5c", clock.now())
    advisories.on_advisory(event)
    host.drain()
    (run_id,) = [r for r in runtime_module.deps().store.run_ids() if "-emergency-" in r]
    assert runtime_module.deps().store.load(run_id).status == "succeeded"
    late = azure.add_vm("prd-2", zone="2", tags={"Environment": "production"}, available=[OPENSSL])  # launched later
    (answer,) = advisories.on_advisory({**event, "id": "c1c2d3e4-0000-4f5a-8b9c-0d1e2f3a4b5d"})  # the same window
    assert f"into run {run_id}" in answer and "1 instance not covered (prd-2): started follow-up run" in answer
    host.drain()
    (follow_up,) = [r for r in runtime_module.deps().store.run_ids() if "-followup-" in r]
    run = runtime_module.deps().store.load(follow_up)
    assert run.status == "succeeded", run.reason
    assert {r.instance.name: r.state for r in run.records()} == {"prd-2": "patched"}
    (pinned,) = azure.state(late).install_requests
    assert pinned["linuxParameters"]["packageNameMasksToInclude"] == ["openssl=3.0.13-1"]  # what staging passed
    (again,) = advisories.on_advisory({**event, "id": "c1c2d3e4-0000-4f5a-8b9c-0d1e2f3a4b5e"})
    assert "already in its follow-up runs" in again
    host.drain()
    assert [r for r in runtime_module.deps().store.run_ids() if "-followup-" in r] == [follow_up]


def test_notices_reach_slack_once_across_workers_and_a_failed_last_notice_is_in_the_status(
    world: tuple[FunctionsHost, FakeAzureCompute],
    clock: ManualClock,
    settings: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real HTTP to the local webhook server; claims in the run table (Table Storage on Azurite),
    the undelivered record through the Storage Queue into the run, after the run had ended."""
    from webhook_server import Reply, webhook_server

    from azure_functions import advisories
    from patchpilot.engine.messages import Notify

    host, azure = world
    slack_path, teams_path = "/slack/T0/B0/secret-slack-token", "/teams/workflows/invoke?sig=secret-teams-sig"
    with webhook_server() as server:
        server.always(teams_path, Reply(404, "no_service"))
        monkeypatch.setitem(WEBHOOKS, "ops-webhook", server.url(slack_path))
        monkeypatch.setitem(WEBHOOKS, "oncall-webhook", server.url(teams_path))
        upload(
            settings,
            RUN_POLICY
            + "emergency: {min_severity: HIGH, soak: 30m}\n"
            + "notifications:\n"
            + "  channels:\n"
            + "    - {name: ops, kind: slack, webhook: ops-webhook}\n"
            + "    - {name: oncall, kind: teams, webhook: oncall-webhook}\n"
            + "  routes:\n"
            + '    - {topics: "*", channels: [ops]}\n'
            + "    - {topics: [run_finished], channels: [oncall]}\n",
        )
        azure.add_vm("stg-1", zone="1", tags={"Environment": "staging"}, available=[OPENSSL])
        azure.add_vm("prd-1", zone="2", tags={"Environment": "production"}, available=[OPENSSL])
        clock.set(START - timedelta(days=2))
        data = {"id": "SEC-1", "cve": "CVE-2025-0001", "severity": "CRITICAL", "fixes": ["openssl"]}
        event = {
            "id": "b1c2d3e4-0000-4f5a-8b9c-0d1e2f3a4b5d",
            "topic": f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.EventGrid/topics/advisories",
            "subject": "advisories/CVE-2025-0001",
            "eventType": "PatchPilot.Advisory",
            "eventTime": clock.now().isoformat(),
            "dataVersion": "1.0",
            "data": data,
        }
        advisories.on_advisory(event)
        (run_id,) = [r for r in runtime_module.deps().store.run_ids() if "-emergency-" in r]
        host.drain()
        posted = [p.raw for p in server.to(slack_path)]  # the advisory's answer, run started, 2 rings, finished
        assert len(posted) == 5 and len(set(posted)) == 5

        # The run's first notice delivered again, to another worker: Slack is not posted to again.
        runtime_module.deps().queue.publish(
            [Notify(id=f"{run_id}:notify:run_started", run_id=run_id, topic="run_started", text="again")]
        )
        runtime_module.deps.cache_clear()
        host.drain()
        assert [p.raw for p in server.to(slack_path)] == posted

    status_url = f"https://patchpilot-func.azurewebsites.net/api/runs/{run_id}?code=key"
    document = json.loads(host.get(http_api.status, status_url, run_id=run_id).get_body())
    assert document["status"] == "succeeded"
    assert document["undelivered"] == [
        {
            "notice": f"{run_id}:notify:run_finished",
            "topic": "run_finished",
            "channel": "oncall",
            "reason": "HTTP 404: no_service",
        }
    ]
    assert "secret-teams-sig" not in json.dumps(document)
