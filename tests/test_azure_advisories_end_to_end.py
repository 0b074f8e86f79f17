"""Azure's own advisories end to end on the Azure runtime's real ports: the run table and its
claims on Azurite's Table service, the steps queue on its Queue service, Resource Graph and the
machines the fake ARM behind the real management clients (test_azure_runtime's `runtime`, built
as the Function App builds it). Each tick is a fresh runtime (a cold container) over the same
storage, as the timer's ticks are.

Not yet through the timer function itself: the timer calls `read_azure_advisories` once the
application layer (issue 14) is merged; docs/advisories.md "Not yet".
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from azure_rbac import arm_action, fleet_role_actions
from clocks import ManualClock
from fake_arm import FakeArm
from fake_azure_compute import SUB, FakeAzureCompute
from fake_azure_security import FakeAzureSecurity
from test_azure_runtime import SIGNING_KEY, StaticSecrets, arm, clock, settings  # noqa: F401  # fixtures

from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.defender import AzureDefenderFindings
from patchpilot.adapters.azure.runtime import AzureEnvironment, AzureRuntime
from patchpilot.app.azure_advisories import AzureAdvisoriesRead, read_azure_advisories
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
