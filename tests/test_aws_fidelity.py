"""The AWS test doubles are held to the published APIs (issue 18).

- Every answer a `before-call` hook gives (a botocore Stubber, tests/fake_aws.py, a test's own
  hook) is checked by tests/aws_fidelity.py against botocore's service model; moto's answers
  are parsed from the wire by botocore. These tests prove the check is on for every way the
  project and the tests make clients, and that it refuses what AWS could not send.
- Every SendCommand is checked against the published parameters of its SSM document
  (tests/fixtures/aws-published/ssm-documents.json).
- Every operation a fake plays exists in the service model, and every recorded answer in
  tests/events/aws/ validates against its operation's output shape.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_fidelity import VIOLATIONS, UnvalidatedAnswer, published_documents, unpublished
from aws_payloads import EVENTS, recorded
from botocore import xform_name
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from botocore.validate import validate_parameters
from clocks import ManualClock
from fake_aws import Clients, FleetServices, moto_image
from moto_support import REGION, aws

from patchpilot.adapters.aws.baselines import override_baselines
from patchpilot.adapters.aws.compliance import SCAN_PARAMETERS
from patchpilot.adapters.aws.fleet import Ec2SsmFleet
from patchpilot.adapters.aws.fleet.health import SCRIPT_TIMEOUT_MAX
from patchpilot.adapters.aws.sessions import AwsSessions
from patchpilot.engine.messages import CheckHealth
from patchpilot.inventory import Instance
from patchpilot.policy.model import HealthChecks, HealthScript
from patchpilot.ports import InProgress

ClientMaker = Callable[[str], Any]

MAKERS: dict[str, ClientMaker] = {
    "boto3.client": lambda service: boto3.client(service, region_name=REGION),
    "boto3.Session().client": lambda service: boto3.Session().client(service, region_name=REGION),
    "AwsSessions (the runtime's factory)": lambda service: AwsSessions()(service, None, REGION),
}


@pytest.fixture(autouse=True)
def _moto() -> Iterator[None]:
    with aws():
        yield


def answering(client: Any, operation: str, status: int, body: dict[str, Any]) -> Any:
    """Make `client` answer `operation` with `body` from a bare `before-call` hook."""
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(
        f"before-call.{service}.{operation}", lambda **_: (AWSResponse(None, status, {}, None), body)
    )
    return client


def refused(call: Callable[[], Any]) -> str:
    """The message of the UnvalidatedAnswer `call` raises (the violation is then forgotten, so
    that the autouse check does not fail this test for the violation it provoked on purpose)."""
    with pytest.raises(UnvalidatedAnswer) as caught:
        call()
    VIOLATIONS.clear()
    return str(caught.value)


@pytest.mark.parametrize("maker", MAKERS.values(), ids=list(MAKERS))
def test_a_hook_answer_that_breaks_the_output_shape_fails_the_call(maker: ClientMaker) -> None:
    ssm = answering(maker("ssm"), "ListCommands", 200, {"Commands": [{"InstanceIds": "i-0abc"}]})
    message = refused(lambda: ssm.list_commands())
    assert "ssm ListCommands" in message
    assert "Commands[0].InstanceIds" in message


def test_a_hook_answer_with_an_invented_member_fails_the_call() -> None:
    ec2 = answering(
        boto3.client("ec2", region_name=REGION),
        "DescribeReplaceRootVolumeTasks",
        200,
        {"ReplaceRootVolumeTasks": [{"ReplaceRootVolumeTaskId": "replacevol-1", "State": "succeeded"}]},
    )
    message = refused(lambda: ec2.describe_replace_root_volume_tasks())
    assert "ec2 DescribeReplaceRootVolumeTasks" in message and "State" in message


def test_an_error_code_neither_modeled_nor_documented_fails_the_call() -> None:
    ssm = answering(boto3.client("ssm", region_name=REGION), "SendCommand", 400, {"Error": {"Code": "NoSuchAgent"}})
    message = refused(
        lambda: ssm.send_command(
            InstanceIds=["i-0abc"], DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]}
        )
    )
    assert "'NoSuchAgent'" in message and "error-codes.json" in message


def test_modeled_and_documented_error_codes_reach_the_caller_as_client_errors() -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    stub = Stubber(ssm)
    stub.add_client_error("list_commands", "InvalidCommandId")  # declared by the SSM model
    stub.add_client_error("list_commands", "ThrottlingException")  # common to all services
    with stub:
        for code in ("InvalidCommandId", "ThrottlingException"):
            with pytest.raises(ClientError) as caught:
                ssm.list_commands()
            assert caught.value.response["Error"]["Code"] == code


def test_a_stubber_error_with_an_invented_code_fails_the_call() -> None:
    """Stubber validates the bodies of add_response, not the codes of add_client_error."""
    ssm = boto3.client("ssm", region_name=REGION)
    with Stubber(ssm) as stub:
        stub.add_client_error("describe_instance_patch_states", "PatchStatesUnavailable")
        message = refused(lambda: ssm.describe_instance_patch_states(InstanceIds=["i-0abc"]))
    assert "PatchStatesUnavailable" in message


def test_moto_answers_come_over_the_wire_and_pass() -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    assert ec2.describe_instances()["Reservations"] == []
    assert VIOLATIONS == []


def test_every_operation_the_fleet_fake_plays_is_in_the_service_model() -> None:
    played = FleetServices(ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), REGION).operations()
    for service, operations in played.items():
        model = boto3.client(service, region_name=REGION).meta.service_model
        unknown = sorted(set(operations) - set(model.operation_names))
        assert not unknown, f"{service}: the fake plays operations AWS does not have: {unknown}"


def test_every_operation_the_patch_manager_fake_plays_is_in_the_service_model() -> None:
    """tests/test_aws_baselines.py's FakePatchManager answers by method name (the API name)."""
    from test_aws_baselines import FakePatchManager

    played = {name for name, member in vars(FakePatchManager).items() if name[:1].isupper() and callable(member)}
    assert played
    model = boto3.client("ssm", region_name=REGION).meta.service_model
    assert played <= set(model.operation_names), sorted(played - set(model.operation_names))


@pytest.mark.parametrize(
    ("service", "operation", "params"),
    [
        ("ssm", "DescribeInstanceInformation", {}),
        ("ssm", "ListCommands", {}),
        ("ssm", "ListCommandInvocations", {"CommandId": "00000001-0000-4000-8000-000000000000"}),
        ("ssm", "DescribeInstancePatches", {"InstanceId": "i-0abc"}),
        ("ssm", "DescribeInstancePatchStates", {"InstanceIds": ["i-0abc"]}),
        ("ec2", "DescribeReplaceRootVolumeTasks", {}),
    ],
)
def test_the_fleet_fake_pages_within_the_models_max_results(
    service: str, operation: str, params: dict[str, Any]
) -> None:
    """botocore checks MaxResults' minimum, not its maximum: the fake refuses above the model's
    maximum, as the service does, and accepts the maximum itself."""
    services = FleetServices(ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), REGION)
    services.manage("i-0abc", "linux")
    client = Clients(services)(service, None, REGION)
    if operation == "ListCommandInvocations":
        client.send_command(
            InstanceIds=["i-0abc"], DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]}
        )
    top = client.meta.service_model.operation_model(operation).input_shape.members["MaxResults"].metadata["max"]
    method = getattr(client, xform_name(operation))
    method(**params, MaxResults=top)
    with pytest.raises(ClientError) as caught:
        method(**params, MaxResults=top + 1)
    assert caught.value.response["Error"]["Code"] in ("ValidationException", "InvalidParameterValue")


def test_every_recorded_answer_validates_against_its_operation() -> None:
    """tests/events/aws/<service>_<operation>[_<case>].json: each names a real operation and
    validates against its output shape."""
    files = sorted(EVENTS.glob("*.json"))
    assert files
    for path in files:
        service, _, rest = path.stem.partition("_")
        client = boto3.client(service, region_name=REGION)
        names = {xform_name(op): op for op in client.meta.service_model.operation_names}
        matches = [names[n] for n in names if rest == n or rest.startswith(n + "_")]
        assert matches, f"{path.name}: no {service} operation is named by the file"
        operation = max(matches, key=len)
        body = recorded(client, operation, path.stem)
        validate_parameters(body, client.meta.service_model.operation_model(operation).output_shape)


# ---------------------------------------------------------------- SSM documents' parameters


def send(parameters: dict[str, list[str]], document: str = "AWS-RunPatchBaseline") -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    with Stubber(ssm) as stub:
        stub.add_response("send_command", {"Command": {"CommandId": "00000001-0000-4000-8000-000000000000"}})
        ssm.send_command(InstanceIds=["i-0abc"], DocumentName=document, Parameters=parameters)


@pytest.mark.parametrize(
    ("parameters", "document"),
    [
        (SCAN_PARAMETERS, "AWS-RunPatchBaseline"),
        ({"Operation": ["Install"], "RebootOption": ["RebootIfNeeded"]}, "AWS-RunPatchBaseline"),
        (
            {
                "Operation": ["Install"],
                "RebootOption": ["NoReboot"],
                "InstallOverrideList": ["s3://b/runs/r/c/linux.yaml"],
            },
            "AWS-RunPatchBaseline",
        ),
        (
            {
                "Operation": ["Install"],
                "RebootOption": ["RebootIfNeeded"],
                "BaselineOverride": ["s3://b/r/windows-baseline.json"],
            },
            "AWS-RunPatchBaseline",
        ),
        ({"commands": ["curl -fsS http://localhost/health"], "executionTimeout": ["300"]}, "AWS-RunShellScript"),
        ({"commands": ["exit 0"], "executionTimeout": [str(SCRIPT_TIMEOUT_MAX)]}, "AWS-RunPowerShellScript"),
    ],
)
def test_the_parameters_patchpilot_sends_are_published(parameters: dict[str, list[str]], document: str) -> None:
    assert unpublished(document, parameters) == []
    send(parameters, document)


@pytest.mark.parametrize(
    ("parameters", "document", "wrong"),
    [
        ({"Operation": ["Patch"]}, "AWS-RunPatchBaseline", "Operation='Patch' is not one of"),
        ({"Operation": ["Install"], "RebootOption": ["Always"]}, "AWS-RunPatchBaseline", "RebootOption='Always'"),
        ({"Operation": ["Install"], "Snapshot": ["x"]}, "AWS-RunPatchBaseline", "parameter 'Snapshot' is not one of"),
        ({"RebootOption": ["NoReboot"]}, "AWS-RunPatchBaseline", "parameter 'Operation' is required"),
        (
            {"Operation": ["Install"], "SnapshotId": ["run-1"]},
            "AWS-RunPatchBaseline",
            "SnapshotId='run-1' does not match",
        ),
        (
            {"Operation": ["Install"], "InstallOverrideList": ["s3://b/l.yaml"], "BaselineOverride": ["s3://b/o.json"]},
            "AWS-RunPatchBaseline",
            "InstallOverrideList and BaselineOverride cannot be used together",
        ),
        (
            {"Operation": ["Install"], "InstallOverrideList": ["http://b/l.yaml"]},
            "AWS-RunPatchBaseline",
            "does not match",
        ),
        ({"commands": ["true"], "executionTimeout": ["172801"]}, "AWS-RunShellScript", "executionTimeout='172801'"),
        ({"commands": []}, "AWS-RunShellScript", "commands needs at least 1 value"),
        ({"commands": ["true"]}, "AWS-RunScript", "document 'AWS-RunScript' is not recorded"),
    ],
)
def test_a_send_command_with_unpublished_parameters_fails(
    parameters: dict[str, list[str]], document: str, wrong: str
) -> None:
    assert any(wrong in found for found in unpublished(document, parameters))
    assert wrong in refused(lambda: send(parameters, document))


def test_every_recorded_document_names_its_source() -> None:
    documents = published_documents()
    assert set(documents) == {"AWS-RunPatchBaseline", "AWS-RunShellScript", "AWS-RunPowerShellScript"}
    for name, document in documents.items():
        assert document["source"], f"{name} has no source"
    raw = json.loads((Path(__file__).parent / "fixtures" / "aws-published" / "error-codes.json").read_text())
    assert all(entry["source"] for entry in [raw["common"], *raw["services"].values()])


def test_a_health_timeout_beyond_48_hours_is_sent_as_the_documents_maximum() -> None:
    """moto: EC2 (the instance); fleet fake: SSM. A policy may give health checks days; the
    script's executionTimeout may not pass AWS-RunShellScript's 172800 seconds."""
    clock = ManualClock(datetime(2026, 1, 13, 2, 0, tzinfo=UTC))
    services = FleetServices(clock, REGION)
    clients = Clients(services)
    (raw,) = boto3.client("ec2", region_name=REGION).run_instances(
        ImageId=moto_image(REGION, "linux"), MinCount=1, MaxCount=1, Placement={"AvailabilityZone": f"{REGION}a"}
    )["Instances"]
    instance = Instance(id=raw["InstanceId"], cloud="aws", region=REGION, os="linux", zone=f"{REGION}a")
    services.manage(instance.id, "linux")
    checks = HealthChecks(script=HealthScript(linux="systemctl is-active shop"), timeout=timedelta(days=3))
    command = CheckHealth(id="c-health", run_id="r-1", wave=1, targets=[instance], checks=checks)

    assert isinstance(Ec2SsmFleet(clients, clock, default_region=REGION).check_health(command), InProgress)

    (sent,) = clients.params("SendCommand")
    assert sent["Parameters"]["executionTimeout"] == ["172800"]  # 48 hours, not the policy's 3 days


@pytest.mark.parametrize(
    ("windows", "approved", "rejected"),
    [
        (True, ["KB5050009", "KB5048654"], ["KB890830"]),
        (False, ["openssl-libs", "kernel-5.10.237-230.949.amzn2"], []),
    ],
)
def test_the_baseline_override_document_holds_baselines_of_the_published_shape(
    windows: bool, approved: list[str], rejected: list[str]
) -> None:
    """The JSON PatchPilot writes for AWS-RunPatchBaseline's BaselineOverride is a list of patch
    baselines, each the API's BaselineOverride structure (Systems Manager User Guide, 'Using the
    BaselineOverride parameter'); each is validated against that shape in botocore's SSM model."""
    shape = boto3.client("ssm", region_name=REGION).meta.service_model.shape_for("BaselineOverride")
    documents = override_baselines(windows, approved, rejected)
    assert isinstance(documents, list) and documents
    for document in documents:
        validate_parameters(document, shape)


def test_no_test_double_stands_in_for_a_boto3_client_by_duck_typing() -> None:
    """A class in tests/ with a method named like an AWS operation PatchPilot's services offer
    (put_item, send_command, …) would answer an adapter unchecked: doubles answer behind a real
    boto3 client (moto, Stubber, or a hook the checks above cover) instead."""
    services = ("ssm", "ec2", "dynamodb", "sqs", "s3", "rds", "health", "sts", "cloudwatch", "secretsmanager")
    operations = {
        xform_name(name)
        for service in services
        for name in boto3.client(service, region_name=REGION).meta.service_model.operation_names
    }
    found = []
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                named = [f.name for f in node.body if isinstance(f, ast.FunctionDef) and f.name in operations]
                if named:
                    found.append(f"{path.name}: {node.name} {named}")
    assert not found, found
