"""Azure patch compliance (`AzureFleet.start_assessment`, `patch_states`) through the real SDK
clients (azure-mgmt-compute, -hybridcompute, -resourcegraph) to the fake ARM at the HTTP
transport: tests/fake_azure_compute.py models the machines, tests/fake_azure_assessment.py the
assessPatches operation and Resource Graph's assessment tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure_rbac import arm_action, fleet_role_actions
from clocks import ManualClock
from fake_arm import ArmError, FakeArm, Request, Response
from fake_azure_assessment import FakeAzureAssessment
from fake_azure_compute import SUB, VM, FakeAzureCompute, Patch

from patchpilot.adapters.azure.access import mark
from patchpilot.adapters.azure.clients import AzureClients
from patchpilot.adapters.azure.compliance import NOT_ASSESSED, RESEND_AFTER, TAG_ASSESSMENT, msrc_severity
from patchpilot.adapters.azure.fleet import AzureFleet
from patchpilot.inventory import Instance

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
TOKEN = "weu-monthly:compliance:2026-12-01T06:00Z"
OPENSSL = Patch("openssl", "Security", version="3.0.13-1", severity="Important")
VIM = Patch("vim", "Other", version="9.1-1")
KB_CU = Patch(
    "2026-12 Cumulative Update for Windows Server 2022",
    "Security",
    kb="5034441",
    severity="Critical",
    published="2026-11-10T18:00:00Z",
)
KB_DEF = Patch("Defender definitions", "Definition", kb="2267602", severity="Unspecified")


class World:
    def __init__(self) -> None:
        self.clock = ManualClock(T0)
        self.arm = FakeArm(self.clock)
        self.azure = FakeAzureCompute(self.arm)
        self.assessment = FakeAzureAssessment(self.azure)
        clients = AzureClients(
            self.arm.credential, transport=self.arm.transport(), polling_interval=0, retry_backoff_factor=0
        )
        self.fleet = AzureFleet(clients, self.clock)

    def instance(self, machine_id: str) -> Instance:
        return self.azure.instance(machine_id)

    def posts(self) -> int:
        return sum(1 for c in self.arm.calls if c.method == "POST" and c.path.endswith("/assesspatches"))

    def graph_queries(self) -> int:
        return sum(1 for c in self.arm.calls if "microsoft.resourcegraph" in c.path)

    def assert_role_allows_every_call(self) -> None:
        called = {arm_action(c.method, c.path) for c in self.arm.calls}
        assert called - fleet_role_actions() == set()


@pytest.fixture
def world() -> World:
    return World()


# ---------------------------------------------------------------- starting assessments


def test_an_assessment_starts_once_per_token_without_waiting_for_it(world: World) -> None:
    vms = [world.azure.add_vm(f"vm-{n}", available=[OPENSSL]) for n in range(2)]
    arc = world.azure.add_arc("onprem-1", available=[VIM])
    instances = [world.instance(m) for m in [*vms, arc]]

    first = world.fleet.start_assessment(instances, TOKEN)

    assert (first.started, first.refused) == (3, ())
    assert len(first.operations) == 3
    assert world.posts() == 3
    assert not any("/fake/operations/" in c.path for c in world.arm.calls)  # the operations are not polled
    assert all(world.arm.get(m)["tags"][TAG_ASSESSMENT].startswith(TOKEN + "|") for m in [*vms, arc])
    posts_to_arc = [c for c in world.arm.calls if c.method == "POST" and "microsoft.hybridcompute" in c.path]
    assert len(posts_to_arc) == 1

    world.clock.advance(timedelta(minutes=1))
    again = world.fleet.start_assessment(instances, TOKEN)  # a redelivery of the same timer slot

    assert (again.started, again.refused) == (3, ())
    assert world.posts() == 3
    assert sum(world.assessment.assess_requests.values()) == 3

    world.clock.advance(timedelta(hours=24))
    tomorrow = world.fleet.start_assessment(instances, TOKEN + "-next")

    assert tomorrow.started == 3 and world.posts() == 6
    world.assert_role_allows_every_call()


SCALE_SET = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachineScaleSets/ss"
UNIFORM_ID = f"{SCALE_SET}/virtualMachines/0"


def test_machines_that_cannot_be_assessed_are_refused_with_why_and_left_untouched(world: World) -> None:
    fine = world.azure.add_vm("vm-ok")
    stopped = world.azure.add_vm("vm-off", power="deallocated")
    no_agent = world.azure.add_vm("vm-noagent", agent="Not Ready")
    offline = world.azure.add_arc("onprem-off", arc_status="Disconnected")
    gone = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/vm-gone"
    instances = [world.instance(m) for m in (fine, stopped, no_agent, offline)]
    instances += [
        Instance(id=gone, cloud="azure", region="westeurope", os="linux"),
        Instance(id="i-0abc", cloud="azure", region="westeurope", os="linux"),
        Instance(
            id=UNIFORM_ID, cloud="azure", region="westeurope", os="linux", scaling_group="ss", scale_set_mode="uniform"
        ),
    ]

    result = world.fleet.start_assessment(instances, TOKEN)

    assert result.started == 1
    assert dict(result.refused) == {
        stopped: "VM deallocated",
        no_agent: "VM agent Not Ready",
        offline: "Arc agent Disconnected",
        gone: "VM not found",
        "i-0abc": "not an Azure VM or Arc server resource id (/subscriptions/.../virtualMachines/<name>)",
        UNIFORM_ID: "a Uniform scale set instance: PatchPilot neither assesses nor patches it (patch its image)",
    }
    assert world.assessment.assess_requests == {fine.lower(): 1}
    assert all(TAG_ASSESSMENT not in world.arm.get(m).get("tags", {}) for m in (stopped, no_agent, offline))


def test_a_mark_whose_assessment_never_started_is_sent_again_after_the_grace(world: World) -> None:
    vm = world.azure.add_vm("vm-1")
    world.arm.get(vm)["tags"][TAG_ASSESSMENT] = mark(TOKEN, T0)  # marked, then the worker died before the POST
    instances = [world.instance(vm)]

    world.clock.advance(RESEND_AFTER - timedelta(minutes=1))
    assert world.fleet.start_assessment(instances, TOKEN).started == 1
    assert world.posts() == 0  # within the grace the POST may still be on its way

    world.clock.advance(timedelta(minutes=2))
    assert world.fleet.start_assessment(instances, TOKEN).started == 1
    assert world.posts() == 1

    world.clock.advance(RESEND_AFTER * 2)  # it ran: the instance view shows it
    assert world.fleet.start_assessment(instances, TOKEN).started == 1
    assert world.posts() == 1


def test_a_refused_assessment_is_reported_and_not_sent_again_for_the_token(world: World) -> None:
    vm = world.azure.add_vm("vm-1")

    def refuse(request: Request) -> Response:
        raise ArmError(400, "OperationNotAllowed", "Patch assessment is not supported for this image.")

    world.arm.on("POST", VM + r"/assessPatches", refuse)
    instances = [world.instance(vm)]
    reason = "assessPatches was refused: OperationNotAllowed: Patch assessment is not supported for this image."

    assert world.fleet.start_assessment(instances, TOKEN).refused == ((vm, reason),)
    world.clock.advance(RESEND_AFTER * 2)
    assert world.fleet.start_assessment(instances, TOKEN).refused == ((vm, reason),)
    assert world.posts() == 1


# ---------------------------------------------------------------- reading patch states


def test_patch_states_read_a_fixed_number_of_resource_graph_queries_whatever_the_fleet_size(world: World) -> None:
    small = [world.azure.add_vm(f"vm-{n}", available=[OPENSSL, VIM]) for n in range(3)]
    large = small + [world.azure.add_vm(f"vm-{n}", rg="rg-api", available=[OPENSSL]) for n in range(3, 60)]
    for machine in large:
        world.assessment.seed(machine, T0 - timedelta(hours=3))

    before = len(world.arm.calls)
    world.fleet.patch_states([world.instance(m) for m in small])
    for_three = len(world.arm.calls) - before
    before = len(world.arm.calls)
    states = world.fleet.patch_states([world.instance(m) for m in large])
    for_sixty = len(world.arm.calls) - before

    assert for_three == for_sixty == 2  # the assessments (summaries and patches) and the installations
    assert world.graph_queries() == 4 and len(world.arm.calls) == 4  # nothing but Resource Graph
    assert [s.instance_id for s in states] == large
    assert all(not s.error and s.missing for s in states)


def test_missing_patches_carry_classification_severity_age_reboot_and_the_last_install(world: World) -> None:
    linux = world.azure.add_vm("web-1", available=[OPENSSL, VIM], install_minutes=20)
    windows = world.azure.add_vm("sql-1", os="Windows", available=[KB_CU, KB_DEF])
    world.azure.maintenance_install([linux], "run-1", {"classificationsToInclude": ["Critical", "Security"]})
    world.clock.advance(timedelta(minutes=20))
    world.azure.tick()  # the installation ends
    world.assessment.seed(linux, T0 + timedelta(minutes=40))
    world.assessment.seed(windows, T0 + timedelta(minutes=45), reboot_pending=True)
    world.clock.advance(timedelta(hours=1))

    web, sql = world.fleet.patch_states([world.instance(linux), world.instance(windows)])

    assert web.assessed_at == T0 + timedelta(minutes=40) and not web.reboot_pending
    assert [(p.id, p.classification, p.severity, p.version) for p in web.missing] == [
        ("vim", "Other", "Unspecified", "9.1-1")
    ]
    assert web.last_install_at == T0 + timedelta(minutes=20)
    assert sql.reboot_pending and sql.last_install_at is None
    by_id = {p.id: p for p in sql.missing}
    assert set(by_id) == {"KB5034441", "KB2267602"}
    cumulative = by_id["KB5034441"]
    assert (cumulative.title, cumulative.classification, cumulative.severity) == (KB_CU.name, "Security", "Critical")
    assert cumulative.released_at == datetime(2026, 11, 10, 18, 0, tzinfo=UTC)
    assert by_id["KB2267602"].severity == "Unspecified" and by_id["KB2267602"].released_at is None


@pytest.mark.parametrize(
    ("reported", "severity"),
    [
        ("Critical", "Critical"),
        ("Important", "Important"),
        ("moderate", "Moderate"),
        ("Low", "Low"),
        ("Unspecified", "Unspecified"),
        ("NotAvailable", "Unspecified"),
        (None, "Unspecified"),
        ("", "Unspecified"),
    ],
)
def test_msrc_severities_map_onto_the_one_scale(reported: Any, severity: str) -> None:
    assert msrc_severity(reported) == severity


def test_machines_without_a_recent_assessment_are_unknown_never_compliant(world: World) -> None:
    never = world.azure.add_vm("vm-new", available=[OPENSSL])
    failed = world.azure.add_vm("vm-broken", available=[OPENSSL])
    world.assessment.seed(failed, T0, error="Failed to assess the machine: apt-get update returned 100")

    unknown, broken = world.fleet.patch_states([world.instance(never), world.instance(failed)])

    assert (unknown.error, unknown.missing, unknown.assessed_at) == (NOT_ASSESSED, (), None)
    assert broken.missing == () and broken.assessed_at == T0
    assert broken.error == "the last assessment failed (Failed to assess the machine: apt-get update returned 100)"


def test_an_assessment_started_on_vms_and_arc_servers_is_read_back_once_indexed(world: World) -> None:
    vm = world.azure.add_vm("vm-1", available=[OPENSSL])
    arc = world.azure.add_arc("onprem-1", os="Windows", available=[KB_CU])
    instances = [world.instance(vm), world.instance(arc)]
    world.assessment.assessments_indexed = False
    world.fleet.start_assessment(instances, TOKEN)
    world.clock.advance(timedelta(minutes=world.assessment.assess_minutes))

    assert [s.error for s in world.fleet.patch_states(instances)] == [NOT_ASSESSED, NOT_ASSESSED]

    world.assessment.assessments_indexed = True
    vm_state, arc_state = world.fleet.patch_states(instances)

    assert [p.id for p in vm_state.missing] == ["openssl"] and vm_state.missing[0].severity == "Important"
    assert [p.id for p in arc_state.missing] == ["KB5034441"]
    assert arc_state.assessed_at == T0 + timedelta(minutes=world.assessment.assess_minutes)
    world.assert_role_allows_every_call()
