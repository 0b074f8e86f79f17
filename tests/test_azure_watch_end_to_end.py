"""The compliance timer and the maintenance watch on Azure, through the real timer function.

The Function App is test_azure_runtime's (`world`: its app settings in the environment, `deps()`
building the AzureRuntime on Azurite's tables, queues and blobs, Azure Resource Manager the fake
ARM behind the real management clients); tests/fake_azure_assessment.py adds assessPatches and
Resource Graph's `patchassessmentresources`, `maintenanceresources` and
`servicehealthresources`. The policy has a `compliance` and a `maintenance_watch` section and
routes its notices to a Slack webhook on a real local server (tests/webhook_server.py), its URL
a Key Vault secret (the runtime's secrets, a dictionary here). Every ARM request is checked against
the custom fleet role of infra/azure.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import test_azure_runtime as functions
from azure.storage.blob import BlobServiceClient
from azure_rbac import arm_action, fleet_role_actions
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_assessment import FakeAzureAssessment
from fake_azure_compute import FakeAzureCompute, Patch
from test_azure_runtime import arm, clock, settings, world  # noqa: F401  # the Function App's fixtures
from webhook_server import WebhookServer, webhook_server

import patchpilot.bootstrap.azure as runtime_module

pytestmark = pytest.mark.slow  # end to end: `make test-fast` leaves it out

if TYPE_CHECKING:
    from test_azure_runtime import FunctionsHost

pytest_plugins = ["azurite"]

SLACK = "/slack/T000/B000/azure-watch"
WEBHOOK_SECRET = "patchpilot-notifications-ops"
NOTIFY = f"""
notifications:
  channels: [{{name: ops, kind: slack, webhook: {WEBHOOK_SECRET}}}]
  routes: [{{topics: "*", channels: [ops]}}]
"""
WATCH = """
compliance: {scan: "cron(0 5 * * ? *)", timezone: UTC, report_after: 1h}
maintenance_watch: {digest: "cron(0 8 ? * TUE *)", timezone: UTC}
"""
SCAN_AT = datetime(2026, 12, 8, 5, 0, tzinfo=UTC)  # a Tuesday, days before the window (12-12 01:00 UTC)
DIGEST_AT = datetime(2026, 12, 8, 8, 0, tzinfo=UTC)
OPENSSL = Patch("openssl", "Security", version="3.0.13-1")

World = tuple["FunctionsHost", FakeAzureCompute]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookServer]:
    """The webhook, its URL one more secret of the Function App's vault."""
    with webhook_server() as running:

        class Vault(functions.StaticSecrets):
            def __init__(self, values: dict[str, str]) -> None:
                super().__init__({**values, WEBHOOK_SECRET: running.url(SLACK)})

        monkeypatch.setattr(functions, "StaticSecrets", Vault)
        yield running


def _tick(host: FunctionsHost, time: ManualClock, at: datetime, cold: bool = True) -> None:
    """The timer function at `at`, on a fresh worker unless `cold` is False."""
    time.set(at)
    if cold:
        runtime_module.deps.cache_clear()
    host.timer()


def _titles(server: WebhookServer) -> list[str]:
    return [str(p.json["blocks"][0]["text"]["text"]) for p in server.to(SLACK)]


def _blob_names(app: dict[str, str]) -> list[str]:
    service = BlobServiceClient.from_connection_string(app["AzureWebJobsStorage"])
    return sorted(b.name for b in service.get_container_client(app["PATCHPILOT_REPORTS"]).list_blobs())


def _blob(app: dict[str, str], name: str) -> str:
    service = BlobServiceClient.from_connection_string(app["AzureWebJobsStorage"])
    blob = service.get_blob_client(app["PATCHPILOT_REPORTS"], name)
    return bytes(blob.download_blob().readall()).decode("utf-8")


def _outside_the_role(fake: FakeArm) -> set[str]:
    called = {arm_action(call.method, call.path) for call in fake.calls}
    assert called
    return called - fleet_role_actions()


def test_the_timer_assesses_once_reports_once_and_alerts_and_digests_platform_maintenance_once(
    world: World,  # noqa: F811
    server: WebhookServer,
    arm: FakeArm,  # noqa: F811
    clock: ManualClock,  # noqa: F811
    settings: dict[str, str],  # noqa: F811
) -> None:
    host, azure = world
    functions.upload(settings, functions.RUN_POLICY + WATCH + NOTIFY)
    platform = FakeAzureAssessment(azure)
    vms = {
        name: azure.add_vm(name, zone=zone, tags={"Environment": env}, available=[OPENSSL] if env == "staging" else [])
        for name, env, zone in [("stg-1", "staging", "1"), ("prd-1", "production", "1"), ("prd-2", "production", "2")]
    }
    dev = azure.add_vm("dev-1", tags={"Environment": "dev"}, available=[OPENSSL])  # in no ring
    platform.add_update(vms["prd-1"], impact="Restart", not_before=datetime(2026, 12, 10, 3, 0, tzinfo=UTC))
    later = datetime(2026, 12, 15, 2, 0, tzinfo=UTC)  # after the window: the digest's
    platform.add_planned_event("7NQ5-BZ8", later, later + timedelta(hours=4), [vms["prd-2"]])

    # 05:01: the scan slot: assessPatches on the ring's machines, and the hourly read: one alert.
    _tick(host, clock, SCAN_AT + timedelta(minutes=1))
    _tick(host, clock, SCAN_AT + timedelta(minutes=6), cold=False)  # the same period again
    _tick(host, clock, SCAN_AT + timedelta(minutes=11))  # ... on another worker
    assert {vm: platform.assess_requests[vm.lower()] for vm in vms.values()} == {vm: 1 for vm in vms.values()}
    assert platform.assess_requests[dev.lower()] == 0
    assert _titles(server) == ["Cloud maintenance before the next window: weu-monthly"]
    assert "prd-1" in str(server.posts[0].raw) and "prd-2" not in str(server.posts[0].raw)

    # 06:01: report_after later: the reports in the reports container, one compliance notice.
    _tick(host, clock, SCAN_AT + timedelta(hours=1, minutes=1))
    _tick(host, clock, SCAN_AT + timedelta(hours=1, minutes=6))
    assert len(server.posts) == 2 and _titles(server)[1].startswith("Patch compliance")
    stem = "compliance-weu-monthly-20261208-0601"
    summaries = ["summaries/compliance-weu-monthly.json", "summaries/maintenance-weu-monthly.json"]
    assert _blob_names(settings) == [f"{stem}.csv", f"{stem}.html", f"{stem}.md", "index.html", *summaries]
    overview = _blob(settings, "index.html")
    assert f'href="{stem}.html"' in overview and 'href="summaries/maintenance-weu-monthly.json"' in overview
    csv = _blob(settings, f"{stem}.csv")
    lacking = {line.split(",")[2] for line in csv.splitlines()[1:] if ",openssl," in line}
    assert lacking == {"stg-1"}
    assert "<svg" in _blob(settings, f"{stem}.html")
    assert f"{stem}.html" in str(server.posts[1].raw)

    # 08:01 (Tuesday): the digest, once, with the Maintenance RP update and the planned event.
    _tick(host, clock, DIGEST_AT + timedelta(minutes=1))
    _tick(host, clock, DIGEST_AT + timedelta(minutes=4))
    assert len(server.posts) == 3 and _titles(server)[2].startswith("Cloud maintenance this week")
    digest = str(server.posts[2].raw)
    assert "prd-1" in digest and "prd-2" in digest

    assert runtime_module.deps().store.run_ids() == []  # days before the window: no run
    assert _outside_the_role(arm) == set()


NOTHING_PENDING = f"""
name: weu-monthly
kind: non_periodic
schedule: {{monthly: "Second Tuesday Offset+4", at: "02:00", timezone: W. Europe Standard Time, duration: 10h}}
rings:
  - {{name: all, select: {{tags: {{Environment: production}}}}}}
compliance: {{scan: "cron(0 5 * * ? *)", timezone: UTC}}
azure: {{subscriptions: [{functions.SUB}], resource_groups: [rg-web], locations: [westeurope]}}
{NOTIFY}"""


def test_a_non_periodic_window_with_nothing_pending_starts_no_run_and_says_so_once(
    world: World,  # noqa: F811
    server: WebhookServer,
    arm: FakeArm,  # noqa: F811
    clock: ManualClock,  # noqa: F811
    settings: dict[str, str],  # noqa: F811
) -> None:
    host, azure = world
    functions.upload(settings, NOTHING_PENDING)
    platform = FakeAzureAssessment(azure)
    vms = [azure.add_vm(f"prd-{n}", zone=str(n), tags={"Environment": "production"}, available=[]) for n in (1, 2)]
    scan = functions.START.replace(hour=5, minute=0) - timedelta(days=1)  # the day before the window
    _tick(host, clock, scan + timedelta(minutes=1))
    assert all(platform.assess_requests[vm.lower()] == 1 for vm in vms)

    _tick(host, clock, functions.START + timedelta(minutes=5))
    _tick(host, clock, functions.START + timedelta(minutes=10))  # a retry of the tick, on another worker

    assert runtime_module.deps().store.run_ids() == []
    assert host.drain() == 0  # nothing queued: no run
    assert all(not azure.state(vm).install_requests for vm in vms)
    (skipped,) = server.to(SLACK)
    assert "Run skipped" in str(skipped.raw) and f"{functions.RUN_ID}" in str(skipped.raw)
    assert "nothing pending on 2 machines" in str(skipped.raw)
    assert _outside_the_role(arm) == set()
