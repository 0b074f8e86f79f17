"""Azure's own advisories end to end on the Azure runtime's real ports: the run table and its
claims on Azurite's Table service, the steps queue on its Queue service, Resource Graph and the
machines the fake ARM behind the real management clients (test_azure_runtime's `runtime`, built
as the Function App builds it). Each tick is a fresh runtime (a cold container) over the same
storage, as the timer's ticks are.

The last test goes through the timer function itself (`azure_functions/timer.py`), as the
Functions host fires it, with the policy read from its blob.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from azure_rbac import arm_action, fleet_role_actions
from click.testing import CliRunner
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_compute import SUB, FakeAzureCompute
from fake_azure_security import FakeAzureSecurity
from test_azure_runtime import (  # noqa: F401  # fixtures
    RUN_POLICY,
    SIGNING_KEY,
    FunctionsHost,
    StaticSecrets,
    arm,
    clock,
    settings,
    upload,
    world,
)

from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.defender import AzureDefenderFindings
from patchpilot.adapters.azure.table_store import TableRunStore
from patchpilot.app.azure_advisories import AzureAdvisoriesRead, read_azure_advisories
from patchpilot.bootstrap.azure import AzureEnvironment, AzureRuntime
from patchpilot.cli import main
from patchpilot.inventory import Instance
from patchpilot.policy import parse_policy

pytestmark = pytest.mark.slow  # Azurite: `make test-fast` leaves it out

pytest_plugins = ["azurite"]

CVE = "CVE-2026-21001"
POLICY = parse_policy(
    """
name: weu-web
rings:
  - name: staging
    select: {tags: {Environment: staging}}
  - name: production
    select: {tags: {Environment: production}}
emergency: {min_severity: HIGH, soak: 15m}
"""
)


class Tick:
    """One timer tick's worth of the Azure runtime: built fresh over the same storage and ARM."""

    def __init__(self, app: dict[str, str], fake: FakeArm, time: ManualClock) -> None:
        clients = AzureClients(fake.credential, transport=fake.transport(), polling_interval=0, retry_backoff_factor=0)
        self.runtime = AzureRuntime.build(
            AzureEnvironment.from_environ(app),
            log=logging.getLogger("patchpilot"),
            clients=clients,
            clock=time,
            secrets=StaticSecrets({app["PATCHPILOT_APPROVAL_SECRET"]: SIGNING_KEY}),
        )
        self.told: list[str] = []

    def read(self, instances: list[Instance]) -> AzureAdvisoriesRead:
        runtime = self.runtime
        service = runtime.service
        return read_azure_advisories(
            POLICY,
            defender=AzureDefenderFindings(runtime.fleet.access),
            assessor=runtime.fleet,
            fleet=lambda: instances,
            store=runtime.store,
            claims=runtime.claims,
            clock=runtime.clock,
            start=service.start,
            tell=lambda notice: self.told.append(notice.text),
            follow_up=service.request_follow_up,
        )


def machine(fake: FakeArm, name: str, environment: str) -> Instance:
    resource = fake.get(
        f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/{name}"
    )
    return Instance(
        id=resource["id"],
        cloud="azure",
        region=resource["location"],
        os="windows",
        name=name,
        zone="1",
        tags={"Environment": environment},
        account=SUB,
    )


def test_one_tick_starts_one_emergency_run_and_the_next_starts_nothing_new(
    settings: dict[str, str],  # noqa: F811
    arm: FakeArm,  # noqa: F811
    clock: ManualClock,  # noqa: F811
) -> None:
    clock.set(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    compute = FakeAzureCompute(arm)
    security = FakeAzureSecurity(arm)
    for name, environment in [("web-win-1", "staging"), ("web-win-2", "production")]:
        compute.add_vm(name, os="Windows", tags={"Environment": environment})
    fleet = [machine(arm, "web-win-1", "staging"), machine(arm, "web-win-2", "production")]
    for vm in fleet:
        security.add(CVE, vm.id)

    first = Tick(settings, arm, clock)
    read = first.read(fleet)
    (answer,) = read.answers
    assert (answer.action, answer.source, set(answer.instances)) == ("start", "defender", {vm.id for vm in fleet})
    run = first.runtime.store.load(answer.run_id)
    assert run.status == "running" and run.policy.patches.include == ["KB5048661"]
    assert sorted(first.runtime.store.run_ids()) == [answer.run_id]
    assert len(first.told) == 1

    clock.advance(timedelta(minutes=15))
    second = Tick(settings, arm, clock)  # a cold container: only the run table remembers
    again = second.read(fleet)
    assert (again.answers, again.not_read, again.answered_before) == ([], [], 1)
    assert sorted(second.runtime.store.run_ids()) == [answer.run_id]
    assert second.told == []
    assert len(security.queries) == 2  # one Resource Graph query per tick

    called = {arm_action(c.method, c.path) for c in arm.calls}
    assert called and called - fleet_role_actions() == set()


def test_a_tick_whose_defender_read_is_refused_says_not_read(
    settings: dict[str, str],  # noqa: F811
    arm: FakeArm,  # noqa: F811
    clock: ManualClock,  # noqa: F811
) -> None:
    compute = FakeAzureCompute(arm)
    security = FakeAzureSecurity(arm)
    compute.add_vm("web-win-1", os="Windows", tags={"Environment": "staging"})
    security.deny()
    tick = Tick(settings, arm, clock)
    read = tick.read([machine(arm, "web-win-1", "staging")])
    assert read.answers == [] and [s for s, _ in read.not_read] == ["defender"]
    assert any(line.startswith("not read: defender: Defender for Cloud findings") for line in read.lines())
    assert list(tick.runtime.store.run_ids()) == []
    assert any("not read: defender" in text for text in tick.told)


def test_the_timer_function_starts_one_emergency_run_from_defender_and_the_next_tick_nothing_new(
    world: tuple[FunctionsHost, FakeAzureCompute],  # noqa: F811
    settings: dict[str, str],  # noqa: F811
    arm: FakeArm,  # noqa: F811
    clock: ManualClock,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The deployed policy has an `emergency` section: each timer tick reads Defender's findings
    (one Resource Graph query); the first tick starts the emergency run, the second starts nothing."""
    host, compute = world
    upload(settings, RUN_POLICY + "emergency: {min_severity: HIGH, soak: 15m}\n")
    clock.set(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))  # no patch window opens today
    security = FakeAzureSecurity(arm)
    for name, environment in [("web-win-1", "staging"), ("web-win-2", "production")]:
        compute.add_vm(name, os="Windows", tags={"Environment": environment})
        security.add(CVE, machine(arm, name, environment).id)
    runs = TableRunStore.from_connection_string(settings["AzureWebJobsStorage"], settings["PATCHPILOT_TABLE"])

    with caplog.at_level(logging.INFO, logger="patchpilot"):
        host.timer()
    (run_id,) = runs.run_ids()
    run = runs.load(run_id)
    assert run.status == "running" and run.policy.patches.include == ["KB5048661"]
    assert {r.instance.name for r in run.records()} == {"web-win-1", "web-win-2"}
    assert any(CVE in r.getMessage() for r in caplog.records)

    clock.advance(timedelta(minutes=15))
    host.timer()
    assert runs.run_ids() == [run_id]  # the same findings: nothing new
    assert len(security.queries) == 2  # one Resource Graph query per tick


def test_the_advisories_command_says_what_the_sources_hold_and_starts_only_with_start(
    world: tuple[FunctionsHost, FakeAzureCompute],  # noqa: F811
    settings: dict[str, str],  # noqa: F811
    arm: FakeArm,  # noqa: F811
    clock: ManualClock,  # noqa: F811
) -> None:
    """`patchpilot advisories --cloud azure` over the deployed Function App's settings: a dry run
    answers "start" and starts nothing (exit 1); `--start` starts the run (exit 0); a refused
    source is said and exits 4."""
    _, compute = world
    upload(settings, RUN_POLICY + "emergency: {min_severity: HIGH, soak: 15m}\n")
    clock.set(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    security = FakeAzureSecurity(arm)
    compute.add_vm("web-win-1", os="Windows", tags={"Environment": "staging"})
    security.add(CVE, machine(arm, "web-win-1", "staging").id)
    runs = TableRunStore.from_connection_string(settings["AzureWebJobsStorage"], settings["PATCHPILOT_TABLE"])

    dry = CliRunner().invoke(main, ["advisories", "--cloud", "azure", "--json"])
    assert dry.exit_code == 1, dry.output
    document = json.loads(dry.stdout)
    assert [a["action"] for a in document["answers"]] == ["start"] and document["started"] is False
    assert runs.run_ids() == []

    started = CliRunner().invoke(main, ["advisories", "--cloud", "azure", "--start"])
    assert started.exit_code == 0, started.output
    assert CVE in started.stdout
    (run_id,) = runs.run_ids()
    assert run_id in started.stdout

    security.deny()
    refused = CliRunner().invoke(main, ["advisories", "--cloud", "azure"])
    assert refused.exit_code == 4, refused.output
    assert "not read: defender" in refused.stdout
