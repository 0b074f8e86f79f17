"""`patchpilot aws sync`: Patch Manager baselines, patch groups and patch-group tags from the policy.

Each test says what stands in for AWS:
- pure: nothing; `desired_baselines`, `desired_tags` and `diff` do no I/O.
- Stubber: botocore's Stubber, which checks requests and canned answers against the service
  model. Used for the calls moto 5.2.5 lacks: GetPatchBaseline, UpdatePatchBaseline,
  DescribePatchGroups. A Stubber with no write queued also proves a dry run writes nothing.
- moto: CreatePatchBaseline, RegisterPatchBaselineForPatchGroup, DescribePatchBaselines,
  GetPatchBaselineForPatchGroup, EC2 tags, STS. moto's gaps met on the way: NAME_PREFIX is
  matched as an exact name, and a patch group takes a baseline for only one operating system.
- FakePatchManager: the baseline and patch-group calls kept in memory behind a real boto3
  client. Requests are validated and serialized by botocore before it answers (as with Stubber)
  and its answers are checked against the output shapes; unlike Stubber it keeps state, so
  `--apply` followed by a dry run can be checked end to end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.awsrequest import AWSResponse
from botocore.stub import ANY, Stubber
from botocore.validate import validate_parameters
from click.testing import CliRunner, Result
from moto import mock_aws

from patchpilot.adapters.aws.baselines import (
    Actual,
    ActualBaseline,
    Blocked,
    CreateBaseline,
    DeregisterPatchGroup,
    Desired,
    RegisterPatchGroup,
    Registration,
    Rule,
    TagInstances,
    Target,
    UpdateBaseline,
    apply,
    desired_baselines,
    desired_tags,
    diff,
    leftovers,
    owned_by,
    policy_problems,
    read_actual,
)
from patchpilot.cli_aws import aws
from patchpilot.errors import InputError
from patchpilot.inventory import Instance
from patchpilot.policy import Policy, parse_policy

REGION = "ap-northeast-1"
WINDOWS = "patchpilot-monthly-windows"
AL2023 = "patchpilot-monthly-amazon_linux_2023"


def policy_doc(**baselines: Any) -> dict[str, Any]:
    return {
        "name": "monthly",
        "rings": [
            {"name": "staging", "select": {"tags": {"Environment": "staging"}}},
            {"name": "production", "select": {"tags": {"Environment": "production"}}},
        ],
        "exclude": {"tags": {"PatchPolicy": "frozen"}},
        "patches": {"classifications": ["Critical", "Security"], "include": [], "exclude": []},
        "aws": {
            "regions": [REGION],
            "baselines": {
                "operating_systems": ["AMAZON_LINUX_2023", "WINDOWS"],
                "approve_after_days": 7,
                "severities": ["Critical", "Important"],
                "compliance_level": "CRITICAL",
                **baselines,
            },
        },
    }


def make(doc: dict[str, Any]) -> Policy:
    return parse_policy(yaml.safe_dump(doc, sort_keys=False), "policy.yaml")


def spec_named(policy: Policy, name: str) -> Any:
    return next(s for s in desired_baselines(policy) if s.name == name)


def problems_of(doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, p.path))}: {p.message}" for p in policy_problems(make(doc))]


def instance(id_: str, env: str, region: str = REGION, **tags: str) -> Instance:
    return Instance(id=id_, cloud="aws", region=region, os="linux", tags={"Environment": env, **tags})


def in_sync(desired: Desired) -> Actual:
    """What AWS holds once `desired` has been applied."""
    baselines = {
        s.name: ActualBaseline(f"pb-{i:017d}", s.name, s.operating_system, s.fields)
        for i, s in enumerate(desired.baselines)
    }
    registrations = tuple(
        Registration(group, baselines[s.name].baseline_id, s.name, s.operating_system)
        for s in desired.baselines
        for group in s.patch_groups
    )
    tags = dict(desired.tags.wanted) if desired.tags else {}
    return Actual(baselines, registrations, tags)


# ------------------------------------------------------------------ desired baselines (pure)


def test_one_baseline_per_operating_system_named_after_the_policy() -> None:
    """pure"""
    specs = desired_baselines(make(policy_doc()))
    assert [(s.name, s.operating_system) for s in specs] == [(AL2023, "AMAZON_LINUX_2023"), (WINDOWS, "WINDOWS")]
    assert all(s.fields.rejected_patches_action == "BLOCK" for s in specs)
    assert all("PatchPilot policy monthly" in s.fields.description for s in specs)


def test_every_ring_is_a_patch_group_registered_for_every_baseline() -> None:
    """pure"""
    specs = desired_baselines(make(policy_doc()))
    assert {s.patch_groups for s in specs} == {("monthly-staging", "monthly-production")}


def test_windows_severities_filter_security_updates_and_critical_updates_have_their_own_rule() -> None:
    """pure: Microsoft gives non-security updates no MSRC severity, so a severity filter on
    CriticalUpdates would approve none of them."""
    spec = spec_named(make(policy_doc()), WINDOWS)
    assert spec.fields.rules == tuple(
        sorted(
            [
                Rule((("CLASSIFICATION", ("CriticalUpdates",)),), 7, "CRITICAL"),
                Rule(
                    (("CLASSIFICATION", ("SecurityUpdates",)), ("MSRC_SEVERITY", ("Critical", "Important"))),
                    7,
                    "CRITICAL",
                ),
            ]
        )
    )
    request = spec.rules_request()
    assert all("EnableNonSecurity" not in rule for rule in request)  # Linux only
    assert request[0]["ApproveAfterDays"] == 7


def test_linux_critical_and_security_select_security_advisories() -> None:
    """pure"""
    spec = spec_named(make(policy_doc()), AL2023)
    assert spec.fields.rules == (
        Rule((("CLASSIFICATION", ("Security",)), ("SEVERITY", ("Critical", "Important"))), 7, "CRITICAL"),
    )
    assert spec.fields.approved_patches_compliance_level == "CRITICAL"


def test_other_turns_on_non_security_updates_on_linux() -> None:
    """pure"""
    doc = policy_doc(operating_systems=["AMAZON_LINUX_2023"])
    doc["patches"]["classifications"] = ["Security", "Other"]
    rules = spec_named(make(doc), AL2023).fields.rules
    assert (
        Rule((("CLASSIFICATION", ("Bugfix", "Enhancement", "Newpackage", "Recommended")),), 7, "CRITICAL", True)
        in rules
    )


def test_ubuntu_ignores_approve_after_days_and_severities_with_notes() -> None:
    """pure"""
    spec = spec_named(make(policy_doc(operating_systems=["UBUNTU", "WINDOWS"])), "patchpilot-monthly-ubuntu")
    (rule,) = spec.fields.rules
    assert rule.approve_after_days is None
    assert "ApproveAfterDays" not in spec.rules_request()[0]
    assert any("approve_after_days not used" in note for note in spec.notes)
    assert any("severities not used" in note for note in spec.notes)


def test_each_operating_system_may_have_its_own_severities() -> None:
    """pure"""
    policy = make(policy_doc(severities={"WINDOWS": ["Critical"], "AMAZON_LINUX_2023": ["Critical", "Medium"]}))
    assert ("SEVERITY", ("Critical", "Medium")) in spec_named(policy, AL2023).fields.rules[0].filters
    windows_rules = spec_named(policy, WINDOWS).fields.rules
    assert any(("MSRC_SEVERITY", ("Critical",)) in rule.filters for rule in windows_rules)


def test_include_and_exclude_become_approved_and_rejected_patches_per_system() -> None:
    """pure: KB and MS ids go to Windows, package names to Linux; rejected patches are blocked."""
    doc = policy_doc()
    doc["patches"]["include"] = ["KB5034441", "openssl"]
    doc["patches"]["exclude"] = ["MS17-010", "kernel*"]
    policy = make(doc)
    windows, linux = spec_named(policy, WINDOWS).fields, spec_named(policy, AL2023).fields
    assert (windows.approved_patches, windows.rejected_patches) == (("KB5034441",), ("MS17-010",))
    assert (linux.approved_patches, linux.rejected_patches) == (("openssl",), ("kernel*",))
    assert linux.approved_patches_enable_non_security and not windows.approved_patches_enable_non_security
    assert windows.rejected_patches_action == linux.rejected_patches_action == "BLOCK"


# ------------------------------------------------------------------ policy errors (pure)


def test_more_than_50_approved_patches_is_a_policy_error_naming_the_field() -> None:
    """pure"""
    doc = policy_doc()
    doc["patches"]["include"] = [f"KB{5000000 + n}" for n in range(51)]
    assert problems_of(doc) == ["patches.include: at most 50 for a Patch Manager baseline (ApprovedPatches), got 51"]
    with pytest.raises(InputError):
        desired_baselines(make(doc))


def test_more_than_50_rejected_patches_is_a_policy_error_too() -> None:
    """pure"""
    doc = policy_doc()
    doc["patches"]["exclude"] = [f"pkg{n}" for n in range(60)]
    assert problems_of(doc) == ["patches.exclude: at most 50 for a Patch Manager baseline (RejectedPatches), got 60"]


@pytest.mark.parametrize("days", [-1, 361, "soon"])
def test_approve_after_days_out_of_range_is_a_policy_error(days: object) -> None:
    """pure"""
    with pytest.raises(InputError) as caught:
        make(policy_doc(approve_after_days=days))
    (problem,) = caught.value.problems
    assert problem.path == ("aws", "baselines", "approve_after_days")
    assert problem.line is not None


def test_a_classification_that_fits_no_operating_system_is_an_error() -> None:
    """pure"""
    doc = policy_doc(operating_systems=["AMAZON_LINUX_2023"])
    doc["patches"]["classifications"] = ["Security", "UpdateRollup"]
    (problem,) = problems_of(doc)
    assert problem.startswith('patches.classifications.1: "UpdateRollup" applies to none of')
    assert "Windows Server" in problem


def test_a_baseline_that_would_approve_nothing_is_an_error() -> None:
    """pure: Other is a Linux classification; Windows would get no rule and no patch."""
    doc = policy_doc(operating_systems=["WINDOWS", "UBUNTU"], severities=[])
    doc["patches"]["classifications"] = ["Other"]
    assert problems_of(doc) == [
        "patches.classifications: the WINDOWS baseline would approve nothing: none of these classifications "
        "applies to Windows Server (Critical, Security, UpdateRollup, FeaturePack, ServicePack, Definition, "
        "Tools, Updates do) and patches.include names no Windows update for it"
    ]


def test_a_severity_an_operating_system_lacks_is_an_error() -> None:
    """pure: Amazon Linux says Medium, Microsoft says Moderate."""
    (problem,) = problems_of(policy_doc(severities=["Critical", "Medium"]))
    assert problem.startswith('aws.baselines.severities.1: "Medium" is not a WINDOWS severity')
    assert "give each operating system its own list" in problem


def test_severities_for_a_system_without_a_severity_filter_or_not_listed_are_errors() -> None:
    """pure"""
    doc = policy_doc(operating_systems=["UBUNTU", "WINDOWS"], severities={"UBUNTU": ["High"], "SUSE": ["Low"]})
    assert problems_of(doc) == [
        "aws.baselines.severities.UBUNTU: Ubuntu Server baselines have no severity filter (Patch Manager offers none)",
        "aws.baselines.severities.SUSE: not one of aws.baselines.operating_systems",
    ]


def test_severities_without_a_security_classification_are_an_error() -> None:
    """pure: on Windows, Critical means CriticalUpdates, which carry no MSRC severity."""
    doc = policy_doc(operating_systems=["WINDOWS"])
    doc["patches"]["classifications"] = ["Critical"]
    (problem,) = problems_of(doc)
    assert problem.startswith("aws.baselines.severities: severities filter security updates")


def test_patch_ids_need_a_system_they_belong_to() -> None:
    """pure"""
    doc = policy_doc(operating_systems=["AMAZON_LINUX_2023"])
    doc["patches"]["include"] = ["KB5034441"]
    assert problems_of(doc) == [
        'patches.include.0: "KB5034441" is a Windows update id, but aws.baselines has no WINDOWS'
    ]


def test_ring_names_must_make_valid_patch_groups_and_the_tag_key_one_patch_manager_reads() -> None:
    """pure"""
    doc = policy_doc()
    doc["rings"][0]["name"] = "stage#1"
    doc["aws"]["patch_group_tag"] = "Ring"
    problems = problems_of(doc)
    assert (
        'rings.0.name: the patch group "monthly-stage#1" may hold only letters, digits, spaces '
        "and _ . : / = + - @ (found #)" in problems
    )
    assert any(
        p.startswith('aws.patch_group_tag: Patch Manager reads only the tag keys "PatchGroup"') for p in problems
    )


def test_duplicate_operating_systems_and_a_missing_baselines_section_are_errors() -> None:
    """pure"""
    assert problems_of(policy_doc(operating_systems=["WINDOWS", "WINDOWS"])) == [
        'aws.baselines.operating_systems.1: duplicate "WINDOWS"'
    ]
    doc = policy_doc()
    del doc["aws"]["baselines"]
    assert problems_of(doc) == [
        "aws.baselines: required by aws sync: give aws.baselines with operating_systems at least"
    ]


# ------------------------------------------------------------------ diff (pure)


def desired_of(policy: Policy, instances: list[Instance] | None = None) -> Desired:
    tags = desired_tags(policy, instances, Target(None, REGION), accounts=0) if instances is not None else None
    return Desired(policy.name, tuple(desired_baselines(policy)), tags)


def test_nothing_differs_once_applied() -> None:
    """pure"""
    desired = desired_of(make(policy_doc()), [instance("i-1", "staging")])
    assert diff(desired, in_sync(desired)) == []


def test_a_missing_baseline_is_created_and_registered_for_every_ring() -> None:
    """pure"""
    desired = desired_of(make(policy_doc()))
    changes = diff(desired, Actual())
    assert [type(c) for c in changes] == [CreateBaseline, CreateBaseline] + [RegisterPatchGroup] * 4
    assert {(c.patch_group, c.baseline_name, c.baseline_id) for c in changes if isinstance(c, RegisterPatchGroup)} == {
        (group, name, None) for group in ("monthly-staging", "monthly-production") for name in (AL2023, WINDOWS)
    }


def test_changed_fields_are_shown_old_and_new() -> None:
    """pure"""
    desired = desired_of(make(policy_doc()))
    actual = in_sync(desired)
    old = actual.baselines[AL2023]
    drifted = ActualBaseline(
        old.baseline_id,
        old.name,
        old.operating_system,
        type(old.fields)(
            description=old.fields.description,
            rules=(Rule((("CLASSIFICATION", ("Security",)),), 14, "HIGH"),),
            approved_patches_compliance_level="CRITICAL",
            rejected_patches=("telnet",),
            rejected_patches_action="ALLOW_AS_DEPENDENCY",
            global_filters=(("PRODUCT", ("AmazonLinux2023",)),),
        ),
    )
    (change,) = diff(desired, Actual({**actual.baselines, AL2023: drifted}, actual.registrations))
    assert isinstance(change, UpdateBaseline) and change.baseline_id == old.baseline_id
    shown = {f.label: (f.old, f.new) for f in change.fields}
    assert shown == {
        "approval rules": (
            "CLASSIFICATION=Security, after 14 days, HIGH",
            "CLASSIFICATION=Security SEVERITY=Critical,Important, after 7 days, CRITICAL",
        ),
        "rejected patches": ("telnet", "none"),
        "rejected patches action": ("ALLOW_AS_DEPENDENCY", "BLOCK"),
        "global filters": ("PRODUCT=AmazonLinux2023", "none"),
    }


def test_a_removed_ring_is_deregistered_and_other_policies_are_left_alone() -> None:
    """pure: patchpilot-monthly-eu-windows belongs to policy monthly-eu, not monthly."""
    desired = desired_of(make(policy_doc()))
    actual = in_sync(desired)
    stale = Registration("monthly-canary", actual.baselines[WINDOWS].baseline_id, WINDOWS, "WINDOWS")
    other = Registration("monthly-eu-staging", "pb-00000000000000099", "patchpilot-monthly-eu-windows", "WINDOWS")
    changes = diff(desired, Actual(actual.baselines, (*actual.registrations, stale, other)))
    assert changes == [
        DeregisterPatchGroup("monthly-canary", WINDOWS, stale.baseline_id, "WINDOWS", "the policy has no such ring")
    ]
    assert owned_by("monthly", WINDOWS) and not owned_by("monthly", "patchpilot-monthly-eu-windows")
    assert owned_by("monthly-eu", "patchpilot-monthly-eu-windows")


def test_a_patch_group_held_by_another_baseline_is_blocked_not_taken_over() -> None:
    """pure"""
    desired = desired_of(make(policy_doc()))
    actual = in_sync(desired)
    theirs = Registration("monthly-staging", "pb-0aaaaaaaaaaaaaaaa", "team-windows", "WINDOWS")
    registrations = tuple(
        r for r in actual.registrations if (r.patch_group, r.operating_system) != ("monthly-staging", "WINDOWS")
    )
    changes = diff(desired, Actual(actual.baselines, (*registrations, theirs)))
    assert changes == [
        Blocked(
            "patch group monthly-staging",
            "uses baseline team-windows (pb-0aaaaaaaaaaaaaaaa) for WINDOWS; deregister it there or rename the ring",
        )
    ]


def test_a_dropped_operating_system_loses_its_patch_groups_and_its_baseline_is_left() -> None:
    """pure"""
    before = desired_of(make(policy_doc()))
    after = desired_of(make(policy_doc(operating_systems=["WINDOWS"], severities=[])))
    actual = in_sync(before)
    changes = diff(after, actual)
    assert all(
        isinstance(c, DeregisterPatchGroup) and c.baseline_name == AL2023
        for c in changes
        if not isinstance(c, UpdateBaseline)
    )
    assert {c.patch_group for c in changes if isinstance(c, DeregisterPatchGroup)} == {
        "monthly-staging",
        "monthly-production",
    }
    assert leftovers(after, actual) == [
        f"baseline {AL2023} ({actual.baselines[AL2023].baseline_id}) is no longer in the policy; "
        "delete it when nothing needs it"
    ]


def test_instances_get_their_rings_patch_group_and_the_rest_is_left_alone() -> None:
    """pure"""
    instances = [
        instance("i-stg", "staging"),
        instance("i-prd", "production", PatchGroup="old-group"),
        instance("i-ok", "production", PatchGroup="monthly-production"),
        instance("i-frozen", "production", PatchPolicy="frozen"),
        instance("i-nowhere", "development"),
        instance("i-osaka", "staging", region="ap-northeast-3"),
        Instance(id="vm-1", cloud="azure", region=REGION, os="linux", tags={"Environment": "staging"}),
    ]
    desired = desired_of(make(policy_doc()), instances)
    assert desired.tags is not None
    assert dict(desired.tags.wanted) == {
        "i-stg": "monthly-staging",
        "i-prd": "monthly-production",
        "i-ok": "monthly-production",
    }
    actual = Actual(
        in_sync(desired).baselines, in_sync(desired).registrations, {"i-prd": "old-group", "i-ok": "monthly-production"}
    )
    assert diff(desired, actual) == [
        TagInstances("PatchGroup", "monthly-production", ("i-prd",), (("old-group", 1),)),
        TagInstances("PatchGroup", "monthly-staging", ("i-stg",), ((None, 1),)),
    ]
    assert desired.tags.notes == ("2 instance(s) excluded or in no ring: their PatchGroup tag is left as it is",)


def test_instances_of_other_accounts_are_not_tagged_here() -> None:
    """pure"""
    policy = make(policy_doc())
    instances = [
        Instance(
            id="i-a", cloud="aws", region=REGION, os="linux", tags={"Environment": "staging"}, account="111111111111"
        ),
        Instance(
            id="i-b", cloud="aws", region=REGION, os="linux", tags={"Environment": "staging"}, account="222222222222"
        ),
        Instance(id="i-c", cloud="aws", region=REGION, os="linux", tags={"Environment": "staging"}),
    ]
    plan = desired_tags(policy, instances, Target("111111111111", REGION), accounts=2)
    assert list(plan.wanted) == ["i-a"]
    assert "1 instance(s) without an account" in plan.notes[-1]


# ------------------------------------------------------------------ read and apply (Stubber, moto)


def client(service: str) -> Any:
    return boto3.client(service, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")


def get_answer(baseline_id: str, name: str, os: str, **fields: Any) -> dict[str, Any]:
    return {"BaselineId": baseline_id, "Name": name, "OperatingSystem": os, **fields}


def test_read_actual_pages_through_baselines_and_reads_only_the_policys_own() -> None:
    """Stubber: DescribePatchBaselines (two pages, NAME_PREFIX), GetPatchBaseline, DescribePatchGroups.
    No GetPatchBaseline is queued for the other policy's baseline: reading it would fail."""
    ssm = client("ssm")
    prefix = [{"Key": "NAME_PREFIX", "Values": ["patchpilot-monthly-"]}]
    with Stubber(ssm) as stub:
        stub.add_response(
            "describe_patch_baselines",
            {
                "BaselineIdentities": [
                    {"BaselineId": "pb-00000000000000001", "BaselineName": WINDOWS, "OperatingSystem": "WINDOWS"},
                    {"BaselineId": "pb-00000000000000002", "BaselineName": "patchpilot-monthly-eu-windows"},
                ],
                "NextToken": "page2",
            },
            {"Filters": prefix, "MaxResults": 100},
        )
        stub.add_response(
            "get_patch_baseline",
            get_answer(
                "pb-00000000000000001",
                WINDOWS,
                "WINDOWS",
                Description="d",
                ApprovalRules={
                    "PatchRules": [
                        {
                            "PatchFilterGroup": {
                                "PatchFilters": [{"Key": "CLASSIFICATION", "Values": ["SecurityUpdates"]}]
                            },
                            "ApproveAfterDays": 3,
                            "ComplianceLevel": "HIGH",
                            "EnableNonSecurity": False,
                        }
                    ]
                },
                RejectedPatches=["KB1"],
                RejectedPatchesAction="BLOCK",
                PatchGroups=["monthly-staging"],
            ),
            {"BaselineId": "pb-00000000000000001"},
        )
        stub.add_response(
            "describe_patch_baselines",
            {"BaselineIdentities": [{"BaselineId": "pb-00000000000000003", "BaselineName": AL2023}]},
            {"Filters": prefix, "MaxResults": 100, "NextToken": "page2"},
        )
        stub.add_response(
            "get_patch_baseline",
            get_answer("pb-00000000000000003", AL2023, "AMAZON_LINUX_2023"),
            {"BaselineId": "pb-00000000000000003"},
        )
        stub.add_response(
            "describe_patch_groups",
            {
                "Mappings": [
                    {
                        "PatchGroup": "monthly-staging",
                        "BaselineIdentity": {
                            "BaselineId": "pb-00000000000000001",
                            "BaselineName": WINDOWS,
                            "OperatingSystem": "WINDOWS",
                        },
                    }
                ]
            },
            {"Filters": [{"Key": "NAME_PREFIX", "Values": ["monthly-"]}], "MaxResults": 100},
        )
        actual = read_actual(ssm, "monthly")
        stub.assert_no_pending_responses()
    assert sorted(actual.baselines) == [AL2023, WINDOWS]
    windows = actual.baselines[WINDOWS]
    assert windows.fields.rules == (Rule((("CLASSIFICATION", ("SecurityUpdates",)),), 3, "HIGH"),)
    assert (windows.fields.rejected_patches, windows.fields.rejected_patches_action) == (("KB1",), "BLOCK")
    assert actual.baselines[AL2023].fields.rejected_patches_action == "ALLOW_AS_DEPENDENCY"  # the API's default
    assert actual.registrations == (Registration("monthly-staging", "pb-00000000000000001", WINDOWS, "WINDOWS"),)


def test_update_replaces_every_field_of_the_baseline() -> None:
    """Stubber: UpdatePatchBaseline with Replace, so fields PatchPilot does not write are cleared."""
    spec = spec_named(make(policy_doc()), AL2023)
    ssm = client("ssm")
    with Stubber(ssm) as stub:
        stub.add_response(
            "update_patch_baseline",
            {"BaselineId": "pb-00000000000000003"},
            {
                "BaselineId": "pb-00000000000000003",
                "Name": AL2023,
                "Description": spec.fields.description,
                "ApprovalRules": {
                    "PatchRules": [
                        {
                            "PatchFilterGroup": {
                                "PatchFilters": [
                                    {"Key": "CLASSIFICATION", "Values": ["Security"]},
                                    {"Key": "SEVERITY", "Values": ["Critical", "Important"]},
                                ]
                            },
                            "ComplianceLevel": "CRITICAL",
                            "ApproveAfterDays": 7,
                            "EnableNonSecurity": False,
                        }
                    ]
                },
                "ApprovedPatches": [],
                "ApprovedPatchesComplianceLevel": "CRITICAL",
                "ApprovedPatchesEnableNonSecurity": False,
                "RejectedPatches": [],
                "RejectedPatchesAction": "BLOCK",
                "Replace": True,
            },
        )
        made = apply(ssm, [UpdateBaseline(spec, "pb-00000000000000003", ())])
        stub.assert_no_pending_responses()
    assert len(made) == 1


def test_tags_are_written_in_batches_of_1000() -> None:
    """Stubber: EC2 CreateTags takes at most 1000 resource ids a call."""
    ids = tuple(f"i-{n:017x}" for n in range(1001))
    ec2 = client("ec2")
    tag = [{"Key": "PatchGroup", "Value": "monthly-staging"}]
    with Stubber(ec2) as stub:
        stub.add_response("create_tags", {}, {"Resources": list(ids[:1000]), "Tags": tag})
        stub.add_response("create_tags", {}, {"Resources": [ids[1000]], "Tags": tag})
        apply(client("ssm"), [TagInstances("PatchGroup", "monthly-staging", ids, ((None, 1001),))], ec2=ec2)
        stub.assert_no_pending_responses()


@mock_aws
def test_apply_creates_baselines_and_registers_patch_groups() -> None:
    """moto: CreatePatchBaseline (the ClientToken is sent; moto does not check it),
    RegisterPatchBaselineForPatchGroup, DescribePatchBaselines, GetPatchBaselineForPatchGroup, EC2
    tags. One operating system only: moto lets a patch group take a baseline for just one."""
    policy = make(policy_doc(operating_systems=["WINDOWS"]))
    ssm, ec2 = boto3.client("ssm", region_name=REGION), boto3.client("ec2", region_name=REGION)
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2)["Instances"]]
    instances = [instance(ids[0], "staging"), instance(ids[1], "production")]
    desired = desired_of(policy, instances)
    changes = diff(desired, Actual(tags=dict.fromkeys(ids)))
    assert apply(ssm, changes, ec2=ec2) == changes

    (identity,) = ssm.describe_patch_baselines()["BaselineIdentities"]
    assert (identity["BaselineName"], identity["OperatingSystem"]) == (WINDOWS, "WINDOWS")
    for group in ("monthly-staging", "monthly-production"):
        found = ssm.get_patch_baseline_for_patch_group(PatchGroup=group, OperatingSystem="WINDOWS")
        assert found["BaselineId"] == identity["BaselineId"]
    tags = ec2.describe_tags(Filters=[{"Name": "key", "Values": ["PatchGroup"]}])["Tags"]
    assert {(t["ResourceId"], t["Value"]) for t in tags} == {
        (ids[0], "monthly-staging"),
        (ids[1], "monthly-production"),
    }


# ------------------------------------------------------------------ the command


class FakePatchManager:
    """Patch Manager's baseline and patch-group calls, in memory, behind a real boto3 SSM client."""

    def __init__(self) -> None:
        self.baselines: dict[str, dict[str, Any]] = {}
        self.groups: dict[tuple[str, str], str] = {}  # (patch group, operating system) -> baseline id
        self.tokens: dict[str, str] = {}
        self.calls: list[str] = []
        self.page_size = 1  # small pages: the paginators must follow NextToken
        self.denied: set[str] = set()  # operations answered with AccessDeniedException

    def client(self) -> Any:
        ssm = client("ssm")
        ssm.meta.events.register("before-call.ssm", self._answer)
        return ssm

    def _answer(self, model: Any, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        self.calls.append(model.name)
        request = json.loads(params["body"] or b"{}")
        if model.name in self.denied:
            return AWSResponse("", 400, {}, None), {"Error": {"Code": "AccessDeniedException", "Message": "denied"}}
        try:
            result = getattr(self, model.name)(request)
        except LookupError as exc:
            code = (
                "AlreadyExistsException"
                if isinstance(exc, KeyError) and exc.args[0] == "exists"
                else "DoesNotExistException"
            )
            return AWSResponse("", 400, {}, None), {"Error": {"Code": code, "Message": str(exc)}}
        validate_parameters(result, model.output_shape)
        return AWSResponse("", 200, {}, None), result

    def _page(self, items: list[Any], request: dict[str, Any], key: str) -> dict[str, Any]:
        start = int(request.get("NextToken", "0"))
        end = start + self.page_size
        page: dict[str, Any] = {key: items[start:end]}
        if end < len(items):
            page["NextToken"] = str(end)
        return page

    @staticmethod
    def _prefix(request: dict[str, Any]) -> str:
        return next((f["Values"][0] for f in request.get("Filters", []) if f["Key"] == "NAME_PREFIX"), "")

    def CreatePatchBaseline(self, request: dict[str, Any]) -> dict[str, Any]:
        token = request.get("ClientToken")
        if token in self.tokens:
            return {"BaselineId": self.tokens[token]}
        baseline_id = f"pb-{len(self.baselines) + 1:017d}"
        self.baselines[baseline_id] = {k: v for k, v in request.items() if k != "ClientToken"}
        if token:
            self.tokens[token] = baseline_id
        return {"BaselineId": baseline_id}

    def UpdatePatchBaseline(self, request: dict[str, Any]) -> dict[str, Any]:
        old = self.baselines[request["BaselineId"]]
        fields = {k: v for k, v in request.items() if k not in ("BaselineId", "Replace")}
        kept = {"OperatingSystem": old["OperatingSystem"]} if request.get("Replace") else old
        self.baselines[request["BaselineId"]] = {**kept, **fields}
        return {"BaselineId": request["BaselineId"]}

    def DescribePatchBaselines(self, request: dict[str, Any]) -> dict[str, Any]:
        prefix = self._prefix(request)
        found = [
            {"BaselineId": i, "BaselineName": b["Name"], "OperatingSystem": b["OperatingSystem"]}
            for i, b in self.baselines.items()
            if b["Name"].startswith(prefix)
        ]
        return self._page(found, request, "BaselineIdentities")

    def GetPatchBaseline(self, request: dict[str, Any]) -> dict[str, Any]:
        baseline_id = request["BaselineId"]
        groups = [group for (group, _), i in self.groups.items() if i == baseline_id]
        return {"BaselineId": baseline_id, **self.baselines[baseline_id], "PatchGroups": groups}

    def DescribePatchGroups(self, request: dict[str, Any]) -> dict[str, Any]:
        mappings = [
            {
                "PatchGroup": group,
                "BaselineIdentity": {
                    "BaselineId": i,
                    "BaselineName": self.baselines[i]["Name"],
                    "OperatingSystem": os,
                },
            }
            for (group, os), i in sorted(self.groups.items())
            if group.startswith(self._prefix(request))
        ]
        return self._page(mappings, request, "Mappings")

    def RegisterPatchBaselineForPatchGroup(self, request: dict[str, Any]) -> dict[str, Any]:
        os = self.baselines[request["BaselineId"]]["OperatingSystem"]
        if (request["PatchGroup"], os) in self.groups:
            raise KeyError("exists")
        self.groups[(request["PatchGroup"], os)] = request["BaselineId"]
        return {"BaselineId": request["BaselineId"], "PatchGroup": request["PatchGroup"]}

    def DeregisterPatchBaselineForPatchGroup(self, request: dict[str, Any]) -> dict[str, Any]:
        os = self.baselines[request["BaselineId"]]["OperatingSystem"]
        del self.groups[(request["PatchGroup"], os)]
        return {"BaselineId": request["BaselineId"], "PatchGroup": request["PatchGroup"]}

    WRITES = frozenset(
        {
            "CreatePatchBaseline",
            "UpdatePatchBaseline",
            "RegisterPatchBaselineForPatchGroup",
            "DeregisterPatchBaselineForPatchGroup",
        }
    )


def factory(ssm: Any, ec2: Any | None = None) -> Callable[[str, str | None, str], Any]:
    def clients(service: str, account: str | None, region: str) -> Any:
        assert region == REGION
        found = {"ssm": ssm, "ec2": ec2}[service]
        assert found is not None, f"no {service} client in this test"
        return found

    return clients


def has_row(output: str, *cells: str) -> bool:
    """A table row holding these cells, in order."""
    for line in output.splitlines():
        parts = line.split("│")[1:]
        if len(parts) >= len(cells) and all(cell in part for cell, part in zip(cells, parts, strict=False)):
            return True
    return False


def sync(clients: Callable[..., Any], *args: str) -> Result:
    return CliRunner().invoke(aws, ["sync", *args], obj=clients, env={"COLUMNS": "250"}, catch_exceptions=False)


@pytest.fixture
def files(tmp_path: Path) -> Callable[..., tuple[str, str]]:
    def write(doc: dict[str, Any], instances: list[dict[str, Any]] | None = None) -> tuple[str, str]:
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        inventory = tmp_path / "fleet.json"
        inventory.write_text(json.dumps({"instances": instances or []}), encoding="utf-8")
        return str(policy), str(inventory)

    return write


@pytest.fixture
def ec2_fleet() -> Iterator[tuple[Any, list[dict[str, Any]]]]:
    """moto EC2: three instances, one per ring and one frozen, as an inventory."""
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        ids = [i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12c6146b", MinCount=3, MaxCount=3)["Instances"]]
        envs = [
            {"Environment": "staging"},
            {"Environment": "production"},
            {"Environment": "production", "PatchPolicy": "frozen"},
        ]
        yield (
            ec2,
            [
                {"id": i, "cloud": "aws", "region": REGION, "zone": f"{REGION}a", "os": "linux", "tags": tags}
                for i, tags in zip(ids, envs, strict=True)
            ],
        )


def test_apply_then_a_second_dry_run_shows_no_difference(files: Any, ec2_fleet: Any) -> None:
    """FakePatchManager for SSM, moto for EC2 tags."""
    ec2, inventory = ec2_fleet
    policy, fleet = files(policy_doc(), inventory)
    patch_manager = FakePatchManager()
    clients = factory(patch_manager.client(), ec2)

    first = sync(clients, "--policy", policy, "--inventory", fleet, "--apply")
    assert first.exit_code == 0, first.output
    assert "Applied 8 changes." in first.output  # 2 baselines, 4 registrations, 2 tag values
    assert len(patch_manager.baselines) == 2 and len(patch_manager.groups) == 4

    second = sync(clients, "--policy", policy, "--inventory", fleet)
    assert second.exit_code == 0, second.output
    assert "ap-northeast-1: in sync" in second.output
    assert "Everything is in sync with the policy." in second.output
    frozen = inventory[2]["id"]
    assert not ec2.describe_tags(
        Filters=[{"Name": "resource-id", "Values": [frozen]}, {"Name": "key", "Values": ["PatchGroup"]}]
    )["Tags"]


def test_a_failed_apply_stops_and_the_next_sync_picks_up_from_there(files: Any) -> None:
    """FakePatchManager: RegisterPatchBaselineForPatchGroup denied on the first run."""
    policy, _ = files(policy_doc())
    patch_manager = FakePatchManager()
    patch_manager.denied = {"RegisterPatchBaselineForPatchGroup"}
    clients = factory(patch_manager.client())
    first = sync(clients, "--policy", policy, "--apply")
    assert first.exit_code == 1
    assert "AccessDeniedException" in first.output and "Applied 2 changes." in first.output

    patch_manager.denied = set()
    second = sync(clients, "--policy", policy, "--json")
    (target,) = json.loads(second.output)["targets"]
    assert [c["action"] for c in target["changes"]] == ["register_patch_group"] * 4
    assert sync(clients, "--policy", policy, "--apply").exit_code == 0
    assert sync(clients, "--policy", policy).exit_code == 0


def test_a_dry_run_shows_every_difference_and_changes_nothing(files: Any, ec2_fleet: Any) -> None:
    """FakePatchManager for SSM (it records every call), moto for EC2 tags."""
    ec2, inventory = ec2_fleet
    policy, fleet = files(policy_doc(), inventory)
    patch_manager = FakePatchManager()
    result = sync(factory(patch_manager.client(), ec2), "--policy", policy, "--inventory", fleet)
    assert result.exit_code == 1, result.output
    assert not patch_manager.WRITES & set(patch_manager.calls)
    assert has_row(result.output, "create baseline", AL2023, "SEVERITY=Critical,Important, after 7 days, CRITICAL")
    assert has_row(result.output, "register patch group", "monthly-staging", f"{WINDOWS} for WINDOWS")
    assert has_row(result.output, "tag instances", "PatchGroup=monthly-staging on 1", "(was: untagged ×1)")
    assert "note: 1 instance(s) excluded or in no ring" in result.output
    assert result.output.endswith("8 changes. dry run: nothing changed; re-run with --apply\n")


def test_a_dry_run_against_drifted_baselines_reads_only(files: Any) -> None:
    """Stubber: only DescribePatchBaselines, GetPatchBaseline and DescribePatchGroups are queued;
    any write would raise UnStubbedResponseError and show up as the target's error."""
    policy, _ = files(policy_doc(operating_systems=["WINDOWS"]))
    ssm = client("ssm")
    with Stubber(ssm) as stub:
        stub.add_response(
            "describe_patch_baselines",
            {"BaselineIdentities": [{"BaselineId": "pb-00000000000000001", "BaselineName": WINDOWS}]},
            {"Filters": ANY, "MaxResults": 100},
        )
        stub.add_response(
            "get_patch_baseline", get_answer("pb-00000000000000001", WINDOWS, "WINDOWS", Description="old")
        )
        stub.add_response("describe_patch_groups", {"Mappings": []}, {"Filters": ANY, "MaxResults": 100})
        result = sync(factory(ssm), "--policy", policy, "--json")
        stub.assert_no_pending_responses()
    assert result.exit_code == 1, result.output
    (target,) = json.loads(result.output)["targets"]
    assert target["error"] is None and target["applied"] == 0
    assert [c["action"] for c in target["changes"]] == [
        "update_baseline",
        "register_patch_group",
        "register_patch_group",
    ]
    assert target["changes"][0]["fields"]["description"]["old"] == "old"
    assert "no --inventory: instance tags not checked" in target["notes"]


def test_bad_input_exits_2_naming_the_field_and_line(files: Any) -> None:
    """pure: nothing is called."""
    doc = policy_doc()
    doc["patches"]["include"] = [f"KB{n}" for n in range(51)]
    policy, _ = files(doc)
    result = sync(factory(None), "--policy", policy)
    assert result.exit_code == 2
    assert f"{policy}:" in result.stderr and "patches.include: at most 50" in result.stderr
    assert result.stderr.split(":")[1].isdigit()  # the line

    policy, _ = files(policy_doc(approve_after_days=400))
    result = sync(factory(None), "--policy", policy)
    assert result.exit_code == 2
    assert "aws.baselines.approve_after_days: input should be less than or equal to 360" in result.stderr


def test_no_region_anywhere_is_bad_input(files: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pure"""
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    doc = policy_doc()
    doc["aws"]["regions"] = []
    policy, _ = files(doc)
    result = sync(factory(None), "--policy", policy)
    assert result.exit_code == 2
    assert "aws.regions: no region" in result.stderr


@mock_aws
def test_accounts_with_a_role_are_reached_through_sts(files: Any) -> None:
    """moto: STS AssumeRole through the default client factory (adapters/aws/sessions.py)."""
    from patchpilot.cli_aws import _default_clients, _targets

    doc = policy_doc()
    doc["aws"]["accounts"] = [
        {"id": "111111111111", "role": "arn:aws:iam::111111111111:role/patchpilot"},
        {"id": "222222222222"},
    ]
    policy = make(doc)
    assert _targets(policy, ["us-east-1", REGION], "p") == [
        Target("111111111111", "us-east-1"),
        Target("111111111111", REGION),
        Target("222222222222", "us-east-1"),
        Target("222222222222", REGION),
    ]
    sts = _default_clients(policy)("sts", "111111111111", REGION)
    assert ":assumed-role/patchpilot/" in sts.get_caller_identity()["Arn"]
