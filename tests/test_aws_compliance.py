"""AWS patch compliance (`Ec2SsmFleet.start_assessment`, `Ec2SsmFleet.patch_states`).

moto implements none of the Patch Manager reads (DescribeInstancePatchStates,
DescribeInstancePatches, DescribeInstanceInformation) and its SendCommand with InstanceIds
targets every instance of the region. So:

- scans are started against `fake_aws.FleetServices`, the stateful Systems Manager of the
  end-to-end tests, answering behind real boto3 clients (requests and answers validated against
  the service model), inside moto (which the fake uses for its own EC2 and S3 reads);
- patch states and the release dates of the SSM patch catalogue (DescribeAvailablePatches, which
  moto lacks too) are read through a botocore `Stubber` with the answers recorded in
  tests/events/aws/ (the Stubber checks the requests and the answers against the model).

Each test's docstring says which.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_payloads import StubbedClients, recorded
from botocore.stub import Stubber
from clocks import ManualClock
from fake_aws import Clients, FleetServices, Patch
from moto_support import aws

from patchpilot.adapters.aws.compliance import NO_STATE, severity
from patchpilot.adapters.aws.fleet import Ec2SsmFleet
from patchpilot.compliance.model import PatchState
from patchpilot.inventory import Instance

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
REGION = "eu-west-1"
OTHER = "eu-central-1"
TOKEN = "compliance:web:2026-12-02T05:00"
GAPS = {"Key": "State", "Values": ["Missing", "Failed", "InstalledPendingReboot"]}
WINDOWS_KBS = ["KB4052623", "KB5046540", "KB5047001", "KB5048654", "KB5048661", "KB890830"]  # the recorded listing's


def machines(count: int, region: str = REGION, prefix: str = "0", os: str = "linux") -> list[Instance]:
    return [
        Instance(id=f"i-{prefix}{n:016x}", cloud="aws", region=region, os=os)  # type: ignore[arg-type]
        for n in range(count)
    ]


def recorded_instance(suffix: int, os: str = "linux") -> Instance:
    return Instance(id=f"i-0a1b2c3d4e5f6{suffix:04d}", cloud="aws", region=REGION, os=os)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def world(clock: ManualClock) -> Iterator[tuple[FleetServices, Clients]]:
    with aws():
        services = FleetServices(clock, REGION)
        yield services, Clients(services)


# ---------------------------------------------------------------- starting scans (stateful fake)


def test_a_scan_starts_once_per_token_in_batches_of_fifty_and_installs_nothing(
    world: tuple[FleetServices, Clients], clock: ManualClock
) -> None:
    """FleetServices (stateful SSM fake) inside moto."""
    services, clients = world
    fleet = Ec2SsmFleet(clients, clock, default_region=REGION)
    here, there = machines(120), machines(30, OTHER, prefix="1")
    for instance in here + there:
        services.manage(instance.id, "linux")
    services.release(Patch("openssl-libs.x86_64", "linux", NOW - timedelta(days=3)))

    first = fleet.start_assessment(here + there, TOKEN)

    sent = clients.params("SendCommand")
    assert first.started == 150 and first.refused == ()
    assert [len(p["InstanceIds"]) for p in sent] == [30, 50, 50, 20]  # eu-central-1, then eu-west-1
    assert all(p["Parameters"] == {"Operation": ["Scan"], "RebootOption": ["NoReboot"]} for p in sent)
    assert all(p["DocumentName"] == "AWS-RunPatchBaseline" for p in sent)
    assert len(first.operations) == 4

    clock.advance(timedelta(minutes=1))
    again = fleet.start_assessment(here + there, TOKEN)
    assert clients.count("SendCommand") == 4  # nothing new
    assert again.started == 150 and set(again.operations) == set(first.operations)
    assert all(services.installed(i.id) == [] for i in here + there)  # a scan installs nothing

    fleet.start_assessment(here[:10], "compliance:web:2026-12-03T05:00")  # another slot scans again
    assert clients.count("SendCommand") == 5


def test_a_later_start_with_the_same_token_scans_only_the_machines_it_had_not_covered(
    world: tuple[FleetServices, Clients], clock: ManualClock
) -> None:
    """FleetServices (stateful SSM fake) inside moto."""
    services, clients = world
    fleet = Ec2SsmFleet(clients, clock, default_region=REGION)
    fleet_now = machines(60)
    for instance in fleet_now:
        services.manage(instance.id, "linux")
    fleet.start_assessment(fleet_now[:40], TOKEN)
    result = fleet.start_assessment(fleet_now, TOKEN)
    assert [sorted(p["InstanceIds"]) for p in clients.params("SendCommand")] == [
        sorted(i.id for i in fleet_now[:40]),
        sorted(i.id for i in fleet_now[40:]),
    ]
    assert result.started == 60 and len(result.operations) == 2


def test_machines_ssm_cannot_reach_are_refused_with_why_and_the_others_scanned(
    world: tuple[FleetServices, Clients], clock: ManualClock
) -> None:
    """FleetServices (stateful SSM fake) inside moto: SSM refuses a SendCommand naming an
    unmanaged or offline instance (InvalidInstanceId)."""
    services, clients = world
    fleet = Ec2SsmFleet(clients, clock, default_region=REGION)
    managed, unmanaged, offline = machines(3)
    services.manage(managed.id, "linux")
    services.manage(offline.id, "linux", online=False)
    azure = Instance(
        id="/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
        cloud="azure",
        region="westeurope",
        os="linux",
    )

    result = fleet.start_assessment([managed, unmanaged, offline, azure], TOKEN)

    assert result.started == 1
    assert dict(result.refused) == {
        unmanaged.id: "not a managed instance (no SSM agent registered)",
        offline.id: "SSM agent ConnectionLost",
        azure.id: "not an AWS instance (azure)",
    }
    assert clients.params("SendCommand")[-1]["InstanceIds"] == [managed.id]


def test_a_scan_then_the_patch_states_show_what_the_scan_found(
    world: tuple[FleetServices, Clients], clock: ManualClock
) -> None:
    """FleetServices (stateful SSM fake) inside moto: Scan, DescribeInstancePatchStates,
    DescribeInstancePatches end to end."""
    services, clients = world
    fleet = Ec2SsmFleet(clients, clock, default_region=REGION)
    current, behind = machines(2)
    services.release(Patch("curl.x86_64", "linux", NOW - timedelta(days=9), severity="Medium"))
    services.manage(current.id, "linux")
    services.manage(behind.id, "linux")
    services.machines[current.id].installed.append(("curl.x86_64", NOW - timedelta(days=1)))

    assert [s.error for s in fleet.patch_states([current, behind])] == [NO_STATE, NO_STATE]
    fleet.start_assessment([current, behind], TOKEN)
    clock.advance(timedelta(minutes=10))
    clients.calls.clear()
    states = fleet.patch_states([current, behind])

    assert states[0].missing == () and states[0].error == "" and states[0].assessed_at is not None
    assert [(p.id, p.severity, p.gap) for p in states[1].missing] == [("curl.x86_64", "Moderate", "missing")]
    assert clients.count("DescribeInstancePatchStates") == 1
    assert [p["InstanceId"] for p in clients.params("DescribeInstancePatches")] == [behind.id]


# ---------------------------------------------------------------- reading states (Stubber)


def stubbed() -> tuple[StubbedClients, Stubber, Ec2SsmFleet]:
    clients = StubbedClients("ssm")
    return clients, clients.stub("ssm", REGION), Ec2SsmFleet(clients, ManualClock(NOW), default_region=REGION)


def test_patch_states_come_from_the_counts_and_only_non_compliant_machines_cost_a_patch_listing() -> None:
    """Stubber: DescribeInstancePatchStates and DescribeInstancePatches, recorded answers."""
    clients, stub, fleet = stubbed()
    ssm = clients.client("ssm", REGION)
    compliant, windows, installed, failed = (
        recorded_instance(1, "windows"),
        recorded_instance(2, "windows"),
        recorded_instance(3),
        recorded_instance(4),
    )
    never = recorded_instance(5)
    ids = [i.id for i in (compliant, windows, installed, failed, never)]
    stub.add_response(
        "describe_instance_patch_states",
        recorded(ssm, "DescribeInstancePatchStates", "ssm_describe_instance_patch_states"),
        {"InstanceIds": ids, "MaxResults": 50},
    )
    stub.add_response(
        "describe_instance_patches",
        recorded(ssm, "DescribeInstancePatches", "ssm_describe_instance_patches_windows"),
        {"InstanceId": windows.id, "Filters": [GAPS], "MaxResults": 100},
    )
    stub.add_response(
        "describe_instance_patches",
        recorded(ssm, "DescribeInstancePatches", "ssm_describe_instance_patches_linux"),
        {"InstanceId": failed.id, "Filters": [GAPS], "MaxResults": 100},
    )
    stub.add_response(  # the Windows patches' release dates; Amazon Linux 2023 is not in the catalogue
        "describe_available_patches",
        recorded(ssm, "DescribeAvailablePatches", "ssm_describe_available_patches_windows"),
        {"Filters": [{"Key": "PATCH_ID", "Values": WINDOWS_KBS}], "MaxResults": 100},
    )

    states = fleet.patch_states([compliant, windows, installed, failed, never])

    clients.done()
    assert [s.instance_id for s in states] == ids
    assert clients.count("DescribeInstancePatches") == 2  # not for the compliant ones
    assert clients.count("DescribeAvailablePatches") == 1
    ok, win, done, broken, unknown = states
    assert ok == PatchState(
        compliant.id,
        assessed_at=datetime(2026, 12, 2, 5, 2, 13, tzinfo=UTC),
        notes=("last operation a Scan: SSM keeps no time of the last install",),
    )
    assert win.reboot_pending and win.last_install_at is None
    assert [(p.id, p.gap) for p in win.missing][:2] == [("KB5048654", "missing"), ("KB5048661", "pending_reboot")]
    assert "2 security updates available that the patch baseline does not approve" in win.notes
    assert done.last_install_at == datetime(2026, 11, 30, 2, 31, 47, tzinfo=UTC) and done.missing == ()
    assert broken.last_install_at is None  # the last install failed for two patches
    assert "the last install (2026-11-30) failed for 2 patches" in broken.notes
    assert [(p.id, p.gap, p.version) for p in broken.missing] == [
        ("openssl-libs.x86_64", "failed", "3.0.8-1.amzn2023.0.18"),
        ("kernel.x86_64", "failed", "6.1.158-180.294.amzn2023"),
        ("curl.x86_64", "missing", "8.11.1-4.amzn2023.0.1"),
    ]
    assert unknown == PatchState(never.id, error=NO_STATE)


def test_windows_and_linux_severities_map_onto_one_scale() -> None:
    """Stubber: DescribeInstancePatchStates and DescribeInstancePatches, recorded answers."""
    clients, stub, fleet = stubbed()
    ssm = clients.client("ssm", REGION)
    windows, linux = recorded_instance(2, "windows"), recorded_instance(4)
    states = recorded(ssm, "DescribeInstancePatchStates", "ssm_describe_instance_patch_states")
    stub.add_response("describe_instance_patch_states", states)
    stub.add_response(
        "describe_instance_patches", recorded(ssm, "DescribeInstancePatches", "ssm_describe_instance_patches_windows")
    )
    stub.add_response(
        "describe_instance_patches", recorded(ssm, "DescribeInstancePatches", "ssm_describe_instance_patches_linux")
    )
    stub.add_response(
        "describe_available_patches",
        recorded(ssm, "DescribeAvailablePatches", "ssm_describe_available_patches_windows"),
    )

    win, lin = fleet.patch_states([windows, linux])

    assert {p.id: p.severity for p in win.missing} == {
        "KB5048654": "Critical",
        "KB5048661": "Important",
        "KB5046540": "Moderate",
        "KB890830": "Unspecified",
        "KB5047001": "Low",
        "KB4052623": "Unspecified",  # no severity given
    }
    assert [p.severity for p in lin.missing] == ["Critical", "Important", "Moderate"]  # Amazon Linux "Medium"
    assert win.missing[0].classification == "SecurityUpdates" and "KB5048654" in win.missing[0].title
    # Ubuntu's and Debian's priorities, in any case.
    assert [severity(s) for s in ("HIGH", "negligible", "Required", None)] == [
        "Important",
        "Low",
        "Unspecified",
        "Unspecified",
    ]


def summary(instance_id: str, missing: int = 0) -> dict[str, Any]:
    return {
        "InstanceId": instance_id,
        "PatchGroup": "production",
        "BaselineId": "pb-0c10e65780ab12345",
        "InstalledCount": 40,
        "MissingCount": missing,
        "FailedCount": 0,
        "NotApplicableCount": 0,
        "OperationStartTime": NOW - timedelta(hours=1),
        "OperationEndTime": NOW - timedelta(minutes=58),
        "Operation": "Scan",
    }


def test_patch_states_ask_for_fifty_instances_a_call_per_account_and_region() -> None:
    """Stubber: DescribeInstancePatchStates in two regions (one client each)."""
    clients = StubbedClients("ssm")
    fleet = Ec2SsmFleet(clients, ManualClock(NOW), default_region=REGION)
    here, there = machines(120), machines(7, OTHER, prefix="1")
    for chunk in (here[:50], here[50:100], here[100:]):
        clients.stub("ssm", REGION).add_response(
            "describe_instance_patch_states",
            {"InstancePatchStates": [summary(i.id) for i in chunk]},
            {"InstanceIds": [i.id for i in chunk], "MaxResults": 50},
        )
    clients.stub("ssm", OTHER).add_response(
        "describe_instance_patch_states",
        {"InstancePatchStates": [summary(i.id) for i in there]},
        {"InstanceIds": [i.id for i in there], "MaxResults": 50},
    )

    states = fleet.patch_states(there[:3] + here + there[3:])

    clients.done()
    assert [s.instance_id for s in states] == [i.id for i in there[:3] + here + there[3:]]
    assert all(s.error == "" and s.missing == () for s in states)
    assert clients.count("DescribeInstancePatchStates") == 4 and clients.count("DescribeInstancePatches") == 0


def test_a_region_that_denies_access_leaves_its_machines_unknown_and_the_others_are_read() -> None:
    """Stubber: AccessDeniedException from DescribeInstancePatchStates in one region."""
    clients = StubbedClients("ssm")
    fleet = Ec2SsmFleet(clients, ManualClock(NOW), default_region=REGION)
    [here], [there] = machines(1), machines(1, OTHER, prefix="1")
    clients.stub("ssm", REGION).add_response(
        "describe_instance_patch_states", {"InstancePatchStates": [summary(here.id)]}
    )
    clients.stub("ssm", OTHER).add_client_error(
        "describe_instance_patch_states", "AccessDeniedException", "not authorized to perform ssm:Describe…"
    )

    ok, denied = fleet.patch_states([here, there])

    assert ok.error == "" and ok.assessed_at == NOW - timedelta(minutes=58)
    assert denied.error.startswith("DescribeInstancePatchStates failed: AccessDeniedException")
    assert denied.missing == () and denied.assessed_at is None  # unknown, never compliant


def test_a_listing_that_fails_leaves_the_machine_unknown_not_compliant() -> None:
    """Stubber: DescribeInstancePatches throttled past botocore's retries."""
    _, stub, fleet = stubbed()
    [instance] = machines(1)
    stub.add_response("describe_instance_patch_states", {"InstancePatchStates": [summary(instance.id, missing=4)]})
    stub.add_client_error("describe_instance_patches", "ThrottlingException", "Rate exceeded", http_status_code=400)

    [state] = fleet.patch_states([instance])

    assert state.missing == ()
    assert state.error == "4 patches missing, but DescribeInstancePatches failed: ThrottlingException: Rate exceeded"


def test_more_patches_than_listed_are_said_in_a_note() -> None:
    """Stubber: DescribeInstancePatches answers fewer patches than the counts."""
    clients, stub, fleet = stubbed()
    ssm = clients.client("ssm", REGION)
    [instance] = machines(1)
    stub.add_response("describe_instance_patch_states", {"InstancePatchStates": [summary(instance.id, missing=5)]})
    stub.add_response(
        "describe_instance_patches", recorded(ssm, "DescribeInstancePatches", "ssm_describe_instance_patches_linux")
    )

    [state] = fleet.patch_states([instance])

    assert len(state.missing) == 3
    assert "2 more missing patches counted by SSM but not listed" in state.notes


# ---------------------------------------------------------------- release dates (Stubber)

AMAZON_LINUX_2_FILTERS = [
    {"Key": "PRODUCT", "Values": ["AmazonLinux2", "AmazonLinux2.0"]},
    {"Key": "NAME", "Values": ["ca-certificates", "kernel", "openssl-libs"]},
    {"Key": "ARCH", "Values": ["noarch", "x86_64"]},
    {"Key": "VERSION", "Values": ["1.0.2k", "2025.2.80", "5.10.245"]},
    {"Key": "RELEASE", "Values": ["1.0.amzn2.0.1", "24.amzn2.0.16", "241.976.amzn2"]},
]


def dated_fleet(stub: Stubber, ssm: Any) -> list[Instance]:
    """Two Windows Server machines lacking the same patches, one on Amazon Linux 2023 (the recorded
    Linux listing) and one on Amazon Linux 2; their states and listings stubbed in call order."""
    windows, also_windows = recorded_instance(2, "windows"), recorded_instance(6, "windows")
    al2023, al2 = recorded_instance(4), recorded_instance(7)
    states = recorded(ssm, "DescribeInstancePatchStates", "ssm_describe_instance_patch_states")["InstancePatchStates"]
    second = {**states[1], "InstanceId": also_windows.id}
    stub.add_response(
        "describe_instance_patch_states",
        {"InstancePatchStates": [states[1], states[3], second, summary(al2.id, missing=3)]},
    )
    for instance, listing in (
        (windows, "windows"),
        (al2023, "linux"),
        (also_windows, "windows"),
        (al2, "amazon_linux_2"),
    ):
        stub.add_response(
            "describe_instance_patches",
            recorded(ssm, "DescribeInstancePatches", f"ssm_describe_instance_patches_{listing}"),
            {"InstanceId": instance.id, "Filters": [GAPS], "MaxResults": 100},
        )
    return [windows, al2023, also_windows, al2]


def test_release_dates_come_from_the_patch_catalogue_looking_each_distinct_patch_up_once() -> None:
    """Stubber: DescribeAvailablePatches by PATCH_ID (Windows, two pages) and by PRODUCT, NAME, ARCH,
    VERSION and RELEASE (Amazon Linux 2), recorded answers; Amazon Linux 2023 is not looked up."""
    clients, stub, fleet = stubbed()
    ssm = clients.client("ssm", REGION)
    instances = dated_fleet(stub, ssm)
    catalogue = recorded(ssm, "DescribeAvailablePatches", "ssm_describe_available_patches_windows")["Patches"]
    windows_filters = [{"Key": "PATCH_ID", "Values": WINDOWS_KBS}]
    stub.add_response(
        "describe_available_patches",
        {"Patches": catalogue[:4], "NextToken": "page-2"},
        {"Filters": windows_filters, "MaxResults": 100},
    )
    stub.add_response(
        "describe_available_patches",
        {"Patches": catalogue[4:]},
        {"Filters": windows_filters, "MaxResults": 100, "NextToken": "page-2"},
    )
    stub.add_response(
        "describe_available_patches",
        recorded(ssm, "DescribeAvailablePatches", "ssm_describe_available_patches_amazon_linux_2"),
        {"Filters": AMAZON_LINUX_2_FILTERS, "MaxResults": 100},
    )

    windows, al2023, also_windows, al2 = fleet.patch_states(instances)

    clients.done()
    assert clients.count("DescribeAvailablePatches") == 3  # two pages for Windows, one for Amazon Linux 2
    november = datetime(2026, 11, 11, 18, 0, tzinfo=UTC)
    assert {p.id: p.released_at for p in windows.missing} == {
        "KB5048654": november,  # listed for two products, one date
        "KB5048661": november,
        "KB5046540": november,
        "KB890830": november,
        "KB5047001": None,  # not in the catalogue
        "KB4052623": datetime(2026, 11, 27, 17, 30, tzinfo=UTC),  # a reused KB: its newest release
    }
    assert also_windows.missing == windows.missing
    assert [(p.id, p.released_at) for p in al2.missing] == [
        ("kernel.x86_64", datetime(2026, 11, 19, 22, 41, tzinfo=UTC)),
        ("openssl-libs.x86_64", datetime(2026, 11, 25, 19, 2, tzinfo=UTC)),
        ("ca-certificates.noarch", None),  # asked for, not listed
    ]
    assert [p.released_at for p in al2023.missing] == [None, None, None]
    assert not any("release date" in note for s in (windows, al2023, also_windows, al2) for note in s.notes)


def test_a_fleet_sharing_many_patches_costs_one_catalogue_lookup_per_twenty_distinct_patches() -> None:
    """Stubber: 60 Windows machines lacking overlapping slices of 45 KBs; DescribeAvailablePatches
    is asked for each KB once, 20 PATCH_ID values a call."""
    clients, stub, fleet = stubbed()
    kbs = [f"KB50{n:05d}" for n in range(45)]
    instances = machines(60, os="windows")
    lacking = {i.id: kbs[n % 31 : n % 31 + 15] for n, i in enumerate(instances)}
    for chunk in (instances[:50], instances[50:]):
        stub.add_response(
            "describe_instance_patch_states",
            {"InstancePatchStates": [summary(i.id, missing=len(lacking[i.id])) for i in chunk]},
        )
        for instance in chunk:
            stub.add_response(
                "describe_instance_patches",
                {
                    "Patches": [
                        {
                            "Title": f"2026-11 Security Update ({kb})",
                            "KBId": kb,
                            "Classification": "SecurityUpdates",
                            "Severity": "Important",
                            "State": "Missing",
                            "InstalledTime": datetime(1970, 1, 1, tzinfo=UTC),
                        }
                        for kb in lacking[instance.id]
                    ]
                },
            )
    released = {kb: NOW - timedelta(days=n + 1) for n, kb in enumerate(kbs)}
    for asked in (kbs[:20], kbs[20:40], kbs[40:]):
        stub.add_response(
            "describe_available_patches",
            {
                "Patches": [
                    {"KbNumber": kb, "ReleaseDate": released[kb], "Product": "WindowsServer2022"} for kb in asked
                ]
            },
            {"Filters": [{"Key": "PATCH_ID", "Values": asked}], "MaxResults": 100},
        )

    states = fleet.patch_states(instances)

    clients.done()
    assert clients.count("DescribeAvailablePatches") == 3
    assert all(p.released_at == released[p.id] for s in states for p in s.missing)
    assert sum(len(s.missing) for s in states) == 60 * 15


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("AccessDeniedException", "not authorized to perform ssm:DescribeAvailablePatches"),
        ("ThrottlingException", "Rate exceeded"),
    ],
)
def test_a_catalogue_lookup_that_fails_leaves_those_dates_empty_and_says_so_and_the_states_stand(
    code: str, message: str
) -> None:
    """Stubber: DescribeAvailablePatches fails for the Windows patches (denied, or throttled past
    botocore's retries); the Amazon Linux 2 lookup answers."""
    clients, stub, fleet = stubbed()
    ssm = clients.client("ssm", REGION)
    instances = dated_fleet(stub, ssm)
    stub.add_client_error("describe_available_patches", code, message, http_status_code=400)
    stub.add_response(
        "describe_available_patches",
        recorded(ssm, "DescribeAvailablePatches", "ssm_describe_available_patches_amazon_linux_2"),
        {"Filters": AMAZON_LINUX_2_FILTERS, "MaxResults": 100},
    )

    windows, al2023, also_windows, al2 = fleet.patch_states(instances)

    clients.done()
    note = f"release date unknown for 6 patches: DescribeAvailablePatches failed: {code}: {message}"
    for state in (windows, also_windows):
        assert state.error == "" and len(state.missing) == 6
        assert all(p.released_at is None for p in state.missing)
        assert note in state.notes
    assert [p.released_at is not None for p in al2.missing] == [True, True, False]
    assert not any("release date" in n for s in (al2023, al2) for n in s.notes)
