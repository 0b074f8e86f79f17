"""template.yaml against the attacks of the trust-boundary issue: what each function's role may do
(read from its policies, managed ones resolved, both branches of every `Fn::If` counted), who may
write the policy file and publish advisories, and where failures go.

These read the template only: IAM itself is not evaluated here (no offline evaluator knows EC2's
condition keys); tests/test_aws_end_to_end.py checks that every call the functions make is among
their roles' actions.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.shared import constants as powertools
from botocore import xform_name
from botocore.stub import Stubber
from moto_support import record

from patchpilot.adapters.aws import fleet
from patchpilot.adapters.aws.claims import DynamoDbClaims

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra" / "aws"))
import cfn_template  # noqa: E402  (infra/aws: the template as data, intrinsics kept)

TEMPLATE = cfn_template.load()
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
FUNCTIONS = sorted(name for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function")

# What changes a machine, its disks or its tags (the fleet actions only the worker may hold).
DESTRUCTIVE = [
    "ec2:StopInstances",
    "ec2:StartInstances",
    "ec2:RebootInstances",
    "ec2:TerminateInstances",
    "ec2:ModifyInstanceAttribute",
    "ec2:CreateReplaceRootVolumeTask",
    "ec2:CreateVolume",
    "ec2:AttachVolume",
    "ec2:DetachVolume",
    "ec2:CreateSnapshot",
    "ec2:CreateSnapshots",
    "ec2:CreateTags",
    "ec2:DeleteTags",
    "ssm:SendCommand",
    "ssm:StartAutomationExecution",
]
# The tag keys the AWS fleet adapter writes (shared/patchpilot/adapters/aws/access.py).
PATCHPILOT_TAGS = {
    fleet.TAG_RUN,
    fleet.TAG_WAVE,
    fleet.TAG_COMMAND,
    fleet.TAG_INSTANCE,
    fleet.TAG_HEALTH,
    fleet.TAG_DRAINED,
    fleet.TAG_DEVICE,
    fleet.TAG_REPLACED_BY,
}
DEAD_LETTER_QUEUES = {"StepDeadLetterQueue", "AdvisoryDeadLetterQueue", "TriggerFunctionTimerQueue"}


# ---------------------------------------------------------------- reading the template


def _branches(item: Any) -> Iterator[Any]:
    """An item as deployed under some parameters: both branches of an `Fn::If`, none of NoValue."""
    if isinstance(item, dict) and "Fn::If" in item:
        _, yes, no = item["Fn::If"]
        yield from _branches(yes)
        yield from _branches(no)
    elif not (isinstance(item, dict) and item.get("Ref") == "AWS::NoValue"):
        yield item


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for item in _listed(document["Statement"]) for s in _branches(item)]


def grants(function: str) -> list[dict[str, Any]]:
    """The Allow statements of a function's role (inline and the stack's managed policies)."""
    found = []
    for policy in RESOURCES[function]["Properties"].get("Policies", []):
        if isinstance(policy, dict) and "Ref" in policy:
            policy = RESOURCES[policy["Ref"]]["Properties"]["PolicyDocument"]
        found.extend(s for s in _statements(policy) if s.get("Effect") == "Allow")
    return found


def actions(statement: dict[str, Any]) -> list[str]:
    return [str(a) for a in _listed(statement["Action"])]


def allowing(function: str, action: str) -> list[dict[str, Any]]:
    """The statements of the function's role whose actions (wildcards included) cover `action`."""
    return [s for s in grants(function) if any(fnmatchcase(action.lower(), pattern.lower()) for pattern in actions(s))]


def text(value: Any) -> str:
    """A resource as written: a `Fn::Sub` string, `${Name}` for a Ref, `${A.B}` for a GetAtt."""
    if isinstance(value, str):
        return value
    if "Fn::Sub" in value:
        return str(value["Fn::Sub"])
    if "Ref" in value:
        return "${" + value["Ref"] + "}"
    if "Fn::GetAtt" in value:
        return "${" + ".".join(value["Fn::GetAtt"]) + "}"
    raise AssertionError(f"unexpected resource {value!r}")


def resources(statement: dict[str, Any]) -> list[str]:
    return [text(r) for r in _listed(statement["Resource"])]


def function_events(function: str) -> dict[str, Any]:
    events: dict[str, Any] = RESOURCES[function]["Properties"]["Events"]
    return events


def covers_snapshots(resource: str) -> bool:
    return resource == "*" or fnmatchcase("arn:${AWS::Partition}:ec2:us-east-1::snapshot/snap-0123", resource)


# ---------------------------------------------------------------- 1. the internet-facing approve function


def test_approve_function_holds_no_fleet_action() -> None:
    """A flaw in the approve function (a public Function URL) must not reach the fleet, the
    webhooks, the bucket or other accounts: it reads the run and records the decision in the run
    table, enqueues on the step queue and reads its own signing keys, nothing else."""
    run_table = {
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:ConditionCheckItem",
    }
    statements = grants("ApproveFunction")
    held = {a for s in statements for a in actions(s)}
    assert held <= run_table | {"sqs:SendMessage", "secretsmanager:GetSecretValue"}, held
    for action in [*DESTRUCTIVE, "s3:GetObject", "s3:PutObject", "sts:AssumeRole", "sqs:DeleteMessage"]:
        assert allowing("ApproveFunction", action) == [], action
    for statement in statements:
        if any(a.startswith("dynamodb:") for a in actions(statement)):
            assert resources(statement) == ["${RunTable.Arn}", "${RunTable.Arn}/index/*"]
    (send,) = allowing("ApproveFunction", "sqs:SendMessage")
    assert resources(send) == ["${StepQueue.Arn}"]
    secrets = sorted(r for s in allowing("ApproveFunction", "secretsmanager:GetSecretValue") for r in resources(s))
    assert secrets == [
        "${ApprovalSigningKey}",
        "${SlackSigningSecret}",
        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${ApprovalKeyPreviousSecretName}-??????",
        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${SlackBotTokenSecretName}-??????",
    ]


def test_previous_approval_key_is_optional_and_read_by_the_approve_function_only() -> None:
    """Rotation: links signed with the previous key stay valid for their lifetime. The secret is
    named by a parameter (empty: none), read by the approve function alone."""
    parameter = TEMPLATE["Parameters"]["ApprovalKeyPreviousSecretName"]
    assert parameter["Default"] == ""
    variables = RESOURCES["ApproveFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["PATCHPILOT_APPROVAL_PREVIOUS_SECRET"] == {
        "Fn::If": ["HasPreviousApprovalKey", {"Ref": "ApprovalKeyPreviousSecretName"}, {"Ref": "AWS::NoValue"}]
    }
    for function in FUNCTIONS:
        reads = [r for s in allowing(function, "secretsmanager:GetSecretValue") for r in resources(s)]
        assert any("ApprovalKeyPreviousSecretName" in r for r in reads) == (function == "ApproveFunction"), function


def test_slack_bot_token_is_optional_and_read_by_the_approve_function_only() -> None:
    """The token that reads Slack user groups' members (rings' approvers) is named by a parameter
    (empty: none, and the groups admit nobody), read by the approve function alone, and its name
    cannot be a wildcard that would open other secrets (the webhook URLs) to the internet-facing
    function."""
    parameter = TEMPLATE["Parameters"]["SlackBotTokenSecretName"]
    assert parameter["Default"] == ""
    assert re.fullmatch(parameter["AllowedPattern"], "patchpilot-slack-bot-token")
    for wildcard in ("patchpilot-*", "patchpilot-notifications-?", "*"):
        assert not re.fullmatch(parameter["AllowedPattern"], wildcard), wildcard
    variables = RESOURCES["ApproveFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["PATCHPILOT_SLACK_BOT_TOKEN_SECRET"] == {
        "Fn::If": ["HasSlackBotToken", {"Ref": "SlackBotTokenSecretName"}, {"Ref": "AWS::NoValue"}]
    }
    assert TEMPLATE["Conditions"]["HasSlackBotToken"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "SlackBotTokenSecretName"}, ""]}]
    }
    from patchpilot.bootstrap.aws import AwsEnvironment  # what the function reads it as

    assert AwsEnvironment.model_fields["slack_bot_token_secret"].alias == "PATCHPILOT_SLACK_BOT_TOKEN_SECRET"
    for function in FUNCTIONS:
        reads = [r for s in allowing(function, "secretsmanager:GetSecretValue") for r in resources(s)]
        assert any("SlackBotTokenSecretName" in r for r in reads) == (function == "ApproveFunction"), function


def test_no_function_can_delete_hide_or_bury_steps_of_others() -> None:
    """Steps are only ever sent: Lambda's event source mapping (SAM's poller policy, not these
    policies) receives and deletes the worker's. No function may delete, hide or purge a step,
    and only the worker puts an unreadable one into the dead-letter queue."""
    for function in FUNCTIONS:
        for action in ("sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:PurgeQueue", "sqs:ReceiveMessage"):
            assert allowing(function, action) == [], f"{function} may {action}"
        sent = sorted(r for s in allowing(function, "sqs:SendMessage") for r in resources(s))
        expected = ["${StepQueue.Arn}"] + (["${StepDeadLetterQueue.Arn}"] if function == "WorkerFunction" else [])
        assert sent == sorted(expected), function


# ---------------------------------------------------------------- 2. the timer and the advisories


@pytest.mark.parametrize("function", ["TriggerFunction", "AdvisoryFunction"])
def test_trigger_and_advisory_hold_no_destructive_fleet_action(function: str) -> None:
    """The timer and the advisory intake (fed by events) start runs; only the worker changes
    machines, follows their commands and reads their output. The timer's compliance scan is its
    one SendCommand (next test)."""
    for action in DESTRUCTIVE:
        if function == "TriggerFunction" and action == "ssm:SendCommand":
            continue
        assert allowing(function, action) == [], f"{function} may {action}"
    assert allowing("AdvisoryFunction", "s3:PutObject") == []
    # Nor do they read what commands printed on the machines, or the snapshots and volumes.
    for action in ("ssm:ListCommandInvocations", "ssm:GetCommandInvocation", "ec2:DescribeSnapshots"):
        assert allowing(function, action) == [], f"{function} may {action}"
    fleet_reads = {a for s in grants("AdvisoryFunction") for a in actions(s) if a.startswith(("ec2:", "ssm:"))}
    # discovery, and the Change Calendars of aws.change_calendars (read only)
    assert fleet_reads == {"ec2:DescribeInstances", "ssm:DescribeInstanceInformation", "ssm:GetCalendarState"}
    # The worker keeps what rollback needs.
    for action in ("ec2:CreateSnapshots", "ec2:CreateReplaceRootVolumeTask", "ssm:SendCommand"):
        assert allowing("WorkerFunction", action), action


POOL_READS = {"elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetHealth"}
# The worker drains and re-adds (traffic.drain, docs/traffic.md): the default drain deadline is read
# from the target group's attributes (no resource-level permission), and the two writes are held to
# target groups carrying the managed tag (ELBv2 evaluates aws:ResourceTag on them).
POOL_DRAIN_READS = {"elasticloadbalancing:DescribeTargetGroupAttributes"}
POOL_WRITES = {"elasticloadbalancing:DeregisterTargets", "elasticloadbalancing:RegisterTargets"}
MANAGED_TAG = {"aws:ResourceTag/PatchPilot": {"Ref": "ManagedTagValue"}}


def _calls_of(service: str, prefix: str, made: str) -> set[str]:
    """The operations of `service` named (client methods and paginators) in the shipped modules
    that make its client (`made`: a pattern of that call), as IAM actions under `prefix`."""
    session = boto3.session.Session(region_name="us-east-1")
    names = {xform_name(op): op for op in session.client(service).meta.service_model.operation_names}
    sources = [p.read_text() for p in (ROOT / "shared" / "patchpilot").rglob("*.py")]
    code = "\n".join(text for text in sources if re.search(made, text))
    assert code, f"no module makes a {service} client"
    return {f"{prefix}:{op}" for name, op in names.items() if re.search(rf"\b{name}\b", code)}


def test_discovering_functions_read_target_groups_and_only_the_worker_drains_managed_ones() -> None:
    """Discovery reads traffic pools (docs/aws-deploy.md): two read-only listings on `*` (ELBv2
    has no resource-level permission for them). Only the worker changes a load balancer: it
    deregisters and registers targets of target groups tagged as managed, and reads their
    deregistration delay; the code calls exactly what the roles grant."""
    everything = POOL_READS | POOL_DRAIN_READS | POOL_WRITES
    # The modules that make an ELBv2 client, and those handed one (typed ElasticLoadBalancingv2Client).
    made = r"\.elbv2\(|[\"']elbv2[\"']|ElasticLoadBalancingv2Client\b"
    assert _calls_of("elbv2", "elasticloadbalancing", made) == everything
    for function in FUNCTIONS:
        held = {a for s in grants(function) for a in actions(s) if a.startswith("elasticloadbalancing:")}
        discovering = function in ("TriggerFunction", "AdvisoryFunction")
        expected = everything if function == "WorkerFunction" else POOL_READS if discovering else set()
        assert held == expected, function
        for action in held & (POOL_READS | POOL_DRAIN_READS):
            assert all(resources(s) == ["*"] for s in allowing(function, action)), (function, action)
    for action in POOL_WRITES:
        for statement in allowing("WorkerFunction", action):
            assert resources(statement) == ["arn:${AWS::Partition}:elasticloadbalancing:*:*:targetgroup/*/*"]
            assert statement["Condition"] == {"StringEquals": MANAGED_TAG}, action


SCALING_GROUP_READS = {"autoscaling:DescribeAutoScalingInstances"}
SCALING_GROUP_WRITES = {"autoscaling:EnterStandby", "autoscaling:ExitStandby"}


def test_discovering_functions_read_scaling_group_membership_and_only_the_worker_moves_managed_members() -> None:
    """Discovery always reads which instances are in an Auto Scaling group (docs/aws-deploy.md):
    one read-only action on `*` (it has no resource-level permission). Only the worker changes a
    group: Standby in and out (scaling_groups: standby) for groups tagged as managed; the code
    calls exactly what the roles grant."""
    everything = SCALING_GROUP_READS | SCALING_GROUP_WRITES
    assert _calls_of("autoscaling", "autoscaling", r"[\"']autoscaling[\"']") == everything
    for function in FUNCTIONS:
        held = {a for s in grants(function) for a in actions(s) if a.startswith("autoscaling:")}
        discovering = function in ("TriggerFunction", "AdvisoryFunction")
        expected = everything if function == "WorkerFunction" else SCALING_GROUP_READS if discovering else set()
        assert held == expected, function
        for action in held & SCALING_GROUP_READS:
            assert all(resources(s) == ["*"] for s in allowing(function, action)), (function, action)
    for action in SCALING_GROUP_WRITES:
        for statement in allowing("WorkerFunction", action):
            group = "arn:${AWS::Partition}:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/*"
            assert resources(statement) == [group]
            condition = {"autoscaling:ResourceTag/PatchPilot": {"Ref": "ManagedTagValue"}}
            assert statement["Condition"] == {"StringEquals": condition}, action


def test_trigger_scans_only_with_the_patch_baseline_document_on_managed_instances() -> None:
    """The timer's SendCommand names AWS-RunPatchBaseline (the code sends Operation=Scan; IAM has
    no condition key on a document's parameters) and instances tagged PatchPilot=managed: no shell
    document, no untagged instance, no managed (hybrid) instance."""
    statements = allowing("TriggerFunction", "ssm:SendCommand")
    documents = [r for s in statements for r in resources(s) if ":document/" in r]
    assert documents == [f"arn:${{AWS::Partition}}:ssm:*::document/{fleet.PATCH_DOCUMENT}"]
    for statement in statements:
        targets = [r for r in resources(statement) if ":document/" not in r]
        if not targets:
            continue
        assert targets == ["arn:${AWS::Partition}:ec2:*:*:instance/*"]
        assert statement["Condition"] == {"StringEquals": {"ssm:resourceTag/PatchPilot": {"Ref": "ManagedTagValue"}}}
    reports = [r for s in allowing("TriggerFunction", "s3:PutObject") for r in resources(s)]
    assert reports == ["${ConfigBucket.Arn}/reports/*"]


def test_a_burst_of_findings_is_served_by_one_advisory_container() -> None:
    """A burst of Inspector findings (or a flood of published advisories) must not fan out into
    as many containers, each discovering the fleet: one at a time, the rest queued by Lambda."""
    assert RESOURCES["AdvisoryFunction"]["Properties"]["ReservedConcurrentExecutions"] == 1


# ---------------------------------------------------------------- 3. rollback from PatchPilot's own snapshots


@pytest.mark.parametrize("action", ["ec2:CreateReplaceRootVolumeTask", "ec2:CreateVolume"])
def test_root_volume_replacement_only_from_patchpilot_snapshots(action: str) -> None:
    """A root or data volume restored from someone else's snapshot (public, shared, or one made
    in the account without PatchPilot's tags) would boot a foreign disk on a managed machine: the
    snapshot must be this account's and carry the tags PatchPilot puts on its snapshots."""
    for function in FUNCTIONS:
        for statement in allowing(function, action):
            assert not any(":image/" in r for r in resources(statement)), "restoring from an AMI is not needed"
            if not any(covers_snapshots(r) for r in resources(statement)):
                continue
            assert function == "WorkerFunction"
            condition = statement["Condition"]
            assert condition["StringEquals"] == {"ec2:Owner": {"Ref": "AWS::AccountId"}}
            assert condition["Null"] == {
                f"aws:ResourceTag/{fleet.TAG_COMMAND}": "false",
                f"aws:ResourceTag/{fleet.TAG_INSTANCE}": "false",
            }
    assert any(any(covers_snapshots(r) for r in resources(s)) for s in allowing("WorkerFunction", action))


def test_tags_on_volumes_tasks_and_instances_only_with_patchpilot_keys() -> None:
    """Tags are the boundary (PatchPilot=managed, PatchPilotCommand on snapshots and volumes):
    the worker may write its own keys only, on volumes, replace-root-volume tasks and instances;
    at creation only with the create action named (ec2:CreateAction)."""
    statements = allowing("WorkerFunction", "ec2:CreateTags")
    checked = 0
    for statement in statements:
        kinds = {r.split(":")[-1].split("/")[0] for r in resources(statement)}
        assert "*" not in kinds
        if kinds == {"snapshot"}:  # CreateSnapshots copies the volume's own tags too: any key, at creation only
            assert statement["Condition"] == {"StringEquals": {"ec2:CreateAction": "CreateSnapshots"}}
            continue
        condition = statement["Condition"]
        keys = set(_listed(condition["ForAllValues:StringEquals"]["aws:TagKeys"]))
        assert keys <= PATCHPILOT_TAGS, keys
        assert condition["Null"]["aws:TagKeys"] == "false"  # ForAllValues holds for no key at all
        checked += 1
    assert checked >= 4  # health marks, restored and replaced volumes, replace-root-volume tasks
    at_creation = {
        statement["Condition"]["StringEquals"]["ec2:CreateAction"]: set(
            statement["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]
        )
        for statement in statements
        if "ForAllValues:StringEquals" in statement["Condition"]
        and "ec2:CreateAction" in statement["Condition"].get("StringEquals", {})
    }
    # What fleet.py writes at creation (`_create_volume`, `_replace_root`) is allowed, or rollback fails.
    assert at_creation == {
        "CreateVolume": {fleet.TAG_RUN, fleet.TAG_COMMAND, fleet.TAG_INSTANCE, fleet.TAG_DEVICE},
        "CreateReplaceRootVolumeTask": {fleet.TAG_RUN, fleet.TAG_COMMAND, fleet.TAG_INSTANCE},
    }


# ---------------------------------------------------------------- 4. the config bucket


def _bucket_statements() -> list[dict[str, Any]]:
    return _statements(RESOURCES["ConfigBucketPolicy"]["Properties"]["PolicyDocument"])


def test_only_the_deployer_writes_the_policy() -> None:
    """Whoever writes the policy file decides what is patched, when, and without approval: the
    bucket denies writing or deleting it to every principal but the named deployer role (the
    functions and the account's other admins included); the functions only read it."""
    parameter = TEMPLATE["Parameters"]["PolicyDeployerRoleArn"]
    assert "Default" not in parameter and parameter["AllowedPattern"].startswith("^arn:aws")
    (deny,) = [s for s in _bucket_statements() if "${ConfigBucket.Arn}/${PolicyKey}" in resources(s)]
    # ... and the freeze calendars beside it (a freeze_calendar is a `.ics` file name: policy model)
    assert "${ConfigBucket.Arn}/*.ics" in resources(deny)
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert {"s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"} <= set(actions(deny))
    assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": {"Ref": "PolicyDeployerRoleArn"}}}
    for function in FUNCTIONS:
        for action in ("s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"):
            written = [r for s in allowing(function, action) for r in resources(s)]
            assert all(r.endswith(("/runs/*", "/reports/*")) for r in written), (function, written)
        read = [r for s in allowing(function, "s3:GetObject") for r in resources(s)]
        # beside the policy, only its freeze calendars and the overview page's summaries are read
        beside = {"${ConfigBucket.Arn}/*.ics", "${ConfigBucket.Arn}/reports/summaries/*"}
        assert set(read) <= {"${ConfigBucket.Arn}/${PolicyKey}", *beside}, (
            function,
            read,
        )
    # every function that reads the policy reads its freeze calendar too (a freeze_calendar that
    # cannot be read is a freeze: no scheduled run would start on a deployed stack)
    for function in FUNCTIONS:
        read = {r for s in allowing(function, "s3:GetObject") for r in resources(s)}
        if "${ConfigBucket.Arn}/${PolicyKey}" in read:
            assert "${ConfigBucket.Arn}/*.ics" in read, function


def test_only_the_worker_writes_install_override_files() -> None:
    """InstallOverrideList and BaselineOverride files under runs/ decide what the instances
    install as root: nobody but the worker's role writes them."""
    (deny,) = [s for s in _bucket_statements() if "${ConfigBucket.Arn}/runs/*" in resources(s)]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and "s3:PutObject" in actions(deny)
    assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": ["WorkerFunctionRole", "Arn"]}}}
    writers = [f for f in FUNCTIONS if any("/runs/*" in r for s in allowing(f, "s3:PutObject") for r in resources(s))]
    assert writers == ["WorkerFunction"]


# ---------------------------------------------------------------- 5. advisories: source and bus


def test_advisory_rule_pins_its_source_and_bus() -> None:
    """On the default bus any principal with events:PutEvents could send "PatchPilot Advisory"
    from any source and start an emergency run. PatchPilot advisories come from the stack's own
    bus, source patchpilot.advisory only; on the default bus only `aws.*` sources, which
    PutEvents cannot forge, are taken."""
    events = function_events("AdvisoryFunction")
    advisory = events["PatchPilotAdvisories"]["Properties"]
    assert advisory["EventBusName"] == {"Ref": "AdvisoryBus"}
    assert advisory["Pattern"] == {"source": ["patchpilot.advisory"], "detail-type": ["PatchPilot Advisory"]}
    for name, event in events.items():
        properties = event["Properties"]
        sources = properties["Pattern"]["source"]
        assert sources, f"rule {name} pins no source"
        if "EventBusName" not in properties:
            assert all(source.startswith("aws.") for source in sources), (name, sources)


def test_only_named_principals_publish_advisories() -> None:
    """The bus's resource policy denies PutEvents to every principal not named in
    AdvisoryPublisherArns (also this account's, whose IAM may allow events:PutEvents on *);
    with none named (the default) nobody publishes."""
    assert TEMPLATE["Parameters"]["AdvisoryPublisherArns"]["Default"] == ""
    bus = RESOURCES["AdvisoryBus"]["Properties"]
    assert bus["Name"] == {"Fn::Sub": "patchpilot-advisories-${AWS::StackName}"}
    condition, named, nobody = bus["Policy"]["Fn::If"]
    assert condition == "HasAdvisoryPublishers"
    (allow,) = [s for s in named["Statement"] if s["Effect"] == "Allow"]
    assert allow["Action"] == "events:PutEvents"
    assert allow["Condition"] == {"ArnLike": {"aws:PrincipalArn": {"Ref": "AdvisoryPublisherArns"}}}
    (deny,) = [s for s in named["Statement"] if s["Effect"] == "Deny"]
    assert deny["Principal"] == "*" and deny["Action"] == "events:PutEvents"
    assert deny["Condition"] == {"ArnNotLike": {"aws:PrincipalArn": {"Ref": "AdvisoryPublisherArns"}}}
    (deny_all,) = nobody["Statement"]
    assert deny_all["Effect"] == "Deny" and deny_all["Principal"] == "*" and "Condition" not in deny_all


# ---------------------------------------------------------------- 7. reliability: retries, dead letters, alarms


def test_advisories_that_cannot_be_handled_are_kept_and_alarmed() -> None:
    """An advisory EventBridge cannot deliver, or that fails three invocations, is kept in a
    dead-letter queue (not dropped) after bounded retries; the queue takes messages from these
    rules only."""
    queue = {"Fn::GetAtt": ["AdvisoryDeadLetterQueue", "Arn"]}
    rules = []
    for name, event in function_events("AdvisoryFunction").items():
        assert event["Type"] == "EventBridgeRule"
        properties = event["Properties"]
        retry = properties["RetryPolicy"]
        assert 0 < retry["MaximumRetryAttempts"] <= 185 and 60 <= retry["MaximumEventAgeInSeconds"] <= 86400
        assert properties["DeadLetterConfig"] == {"Arn": queue}
        rules.append({"Fn::GetAtt": [f"AdvisoryFunction{name}", "Arn"]})  # SAM's rule logical id
    assert RESOURCES["AdvisoryFunction"]["Properties"]["DeadLetterQueue"] == {"Type": "SQS", "TargetArn": queue}
    policy = RESOURCES["AdvisoryDeadLetterQueuePolicy"]["Properties"]
    assert policy["Queues"] == [{"Ref": "AdvisoryDeadLetterQueue"}]
    (statement,) = _statements(policy["PolicyDocument"])
    assert statement["Principal"] == {"Service": "events.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    assert sorted(map(str, statement["Condition"]["ArnEquals"]["aws:SourceArn"])) == sorted(map(str, rules))


def test_dead_letter_alarms_have_an_action() -> None:
    """A message, an advisory or a timer tick in a dead-letter queue is work not done: its alarm
    tells the stack's topic whatever the parameters (and AlarmTopicArn too when given). The topic
    is encrypted with a key CloudWatch may use (with alias/aws/sns the alarm could not publish)."""
    alarmed = set()
    for resource in RESOURCES.values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        properties = resource["Properties"]
        (dimension,) = properties["Dimensions"]
        queue = dimension["Value"]["Fn::GetAtt"][0]
        alarmed.add(queue)
        for branch in _branches(properties["AlarmActions"]):
            assert {"Ref": "AlarmTopic"} in branch, queue
    assert alarmed == DEAD_LETTER_QUEUES
    topic = RESOURCES["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    key = RESOURCES["AlarmTopicKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    cloudwatch_service = {"Service": "cloudwatch.amazonaws.com"}
    (cloudwatch,) = [s for s in _statements(key["KeyPolicy"]) if s["Principal"] == cloudwatch_service]
    assert set(actions(cloudwatch)) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    subscription = RESOURCES["OnCallSubscription"]
    assert subscription["Condition"] == "HasOnCallEmail" and TEMPLATE["Parameters"]["OnCallEmail"]["Default"] == ""
    assert subscription["Properties"]["Endpoint"] == {"Ref": "OnCallEmail"}


# ---------------------------------------------------------------- 8. claims and leases expire


class _Clock:
    def now(self) -> datetime:
        return datetime(2026, 12, 1, tzinfo=UTC)


def test_claims_and_leases_expire() -> None:
    """Claims (one per Slack request, notice and slot) and leases would pile up in the run table
    for ever: DynamoDB's TTL deletes them once their `until` (epoch seconds, a Number, as the
    claims adapter writes it) has passed. No other item of the table has an `until` attribute."""
    table = RESOURCES["RunTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "until", "Enabled": True}
    client = boto3.client("dynamodb", region_name="us-east-1")
    written = record(client, "PutItem")
    until = datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC)
    with Stubber(client) as stub:  # botocore checks the request and the answer against the model
        stub.add_response("put_item", {})
        DynamoDbClaims("runs", client, _Clock()).claim("slack:v0=abc", until)
    (request,) = written.of("PutItem")
    item = request["Item"]
    assert item[table["TimeToLiveSpecification"]["AttributeName"]] == {"N": str(int(until.timestamp()))}


# ---------------------------------------------------------------- 9. traces


def test_xray_does_not_capture_responses() -> None:
    """The approve page and its form carry the signed token: X-Ray must record neither a
    handler's response nor its exception (powertools reads these variables)."""
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert variables[powertools.TRACER_CAPTURE_RESPONSE_ENV] == "false"
    assert variables[powertools.TRACER_CAPTURE_ERROR_ENV] == "false"
    for function in FUNCTIONS:
        own = RESOURCES[function]["Properties"].get("Environment", {}).get("Variables", {})
        assert powertools.TRACER_CAPTURE_RESPONSE_ENV not in own and powertools.TRACER_CAPTURE_ERROR_ENV not in own


def test_no_pydantic_plugin_is_looked_for_or_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic would read every installed package's metadata for plugins that hook into validation
    at the first model a cold start builds: the functions use none, and load none."""
    from pydantic.plugin import _loader

    value = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["PYDANTIC_DISABLE_PLUGINS"]
    monkeypatch.setattr(_loader, "_plugins", None)  # as in a fresh process
    monkeypatch.setattr(_loader, "entry_points", lambda **_: pytest.fail("plugins looked for"))
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", value)
    assert tuple(_loader.get_plugins()) == ()


def test_no_condition_key_names_a_parameter_cloudformation_would_leave_unsubstituted() -> None:
    """CloudFormation substitutes parameters into values (`!Sub`), never into map keys: a condition
    key written `aws:ResourceTag/${Param}` would ask IAM for a tag literally named `${Param}` and
    never match, so PatchPilot could change nothing (found in the template before the key was fixed)."""
    text = (ROOT / "template.yaml").read_text()
    assert not re.search(r'"[a-z0-9-]+:[A-Za-z]+Tag/\$\{', text)


def test_change_calendars_are_read_by_the_functions_that_start_runs_only() -> None:
    """`aws.change_calendars` (docs/governance.md): GetCalendarState, read only, on SSM documents,
    by the functions that start runs: the timer, the advisory function and the worker (follow-up
    runs start there and check the freezes as the timer does); never by the approve function."""
    for function in ("TriggerFunction", "AdvisoryFunction", "WorkerFunction"):
        (statement,) = allowing(function, "ssm:GetCalendarState")
        assert resources(statement) == ["arn:${AWS::Partition}:ssm:${AWS::Region}:*:document/*"]
        assert actions(statement) == ["ssm:GetCalendarState"]
    assert not allowing("ApproveFunction", "ssm:GetCalendarState")


BASELINE_READS = {"ssm:GetDefaultPatchBaseline", "ssm:GetPatchBaseline", "ssm:GetPatchBaselineForPatchGroup"}


def test_only_the_worker_reads_patch_baselines_to_hold_patch_exceptions() -> None:
    """A first ring under a patch exception installs with the machine's own effective baseline, the
    excepted patches rejected (docs/governance.md): three reads, the worker's only (the member role
    holds them as the worker does: tests/security/test_member_role.py). GetPatchBaseline and
    GetDefaultPatchBaseline on patch baselines (of any account: AWS's predefined baselines belong to
    AWS-owned accounts), GetPatchBaselineForPatchGroup on `*` (it has no resource-level permission).
    The install code calls exactly these."""
    for function in FUNCTIONS:
        held = {a for s in grants(function) for a in actions(s) if a in BASELINE_READS}
        assert held == (BASELINE_READS if function == "WorkerFunction" else set()), function
    for action in BASELINE_READS:
        (statement,) = allowing("WorkerFunction", action)
        expected = ["*"] if action.endswith("ForPatchGroup") else ["arn:${AWS::Partition}:ssm:*:*:patchbaseline/*"]
        assert resources(statement) == expected and "Condition" not in statement, action
        assert set(actions(statement)) <= BASELINE_READS, action  # read only, nothing else rides along
    code = (ROOT / "shared" / "patchpilot" / "adapters" / "aws" / "fleet" / "held_baselines.py").read_text()
    called = {f"ssm:{op}" for op in ("GetDefaultPatchBaseline", "GetPatchBaseline", "GetPatchBaselineForPatchGroup")}
    assert {a for a in called if re.search(rf"\.{xform_name(a.split(':')[1])}\(", code)} == BASELINE_READS


# ---------------------------------------------------------------- the waker


def test_the_waker_reads_runs_and_sends_wake_ups_only() -> None:
    """The waker is fed by events anyone in the account can cause (a Run Command of their own):
    it reads the run table and sends to the step queue, nothing else. A wake-up carries no
    command, so the worker polls only what the stored run awaits (tests/security/test_forged_messages.py)."""
    statements = grants("WakerFunction")
    held = {a for s in statements for a in actions(s)}
    assert held == {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "sqs:SendMessage"}, held
    for statement in statements:
        if any(a.startswith("dynamodb:") for a in actions(statement)):
            assert resources(statement) == ["${RunTable.Arn}", "${RunTable.Arn}/index/*"]
    for action in [*DESTRUCTIVE, "dynamodb:PutItem", "dynamodb:UpdateItem", "s3:GetObject", "sts:AssumeRole"]:
        assert allowing("WakerFunction", action) == [], action


def test_the_waker_rules_take_the_events_its_reader_reads() -> None:
    from patchpilot.adapters.aws import wake_events

    patterns = {name: e["Properties"]["Pattern"] for name, e in function_events("WakerFunction").items()}
    ssm, ebs = patterns["RunCommandEnds"], patterns["SnapshotSetEnds"]
    assert (ssm["source"], ssm["detail-type"]) == ([wake_events.SSM_SOURCE], [wake_events.SSM_COMMAND_STATUS])
    assert ssm["detail"]["status"] == list(wake_events.TERMINAL_STATUSES)
    assert sorted(ssm["detail"]["document-name"]) == sorted(wake_events.WAKING_DOCUMENTS)
    assert (ebs["source"], ebs["detail-type"]) == ([wake_events.EC2_SOURCE], [wake_events.EBS_SNAPSHOTS])
    assert ebs["detail"] == {"event": ["createSnapshots"], "result": list(wake_events.EBS_RESULTS)}


def test_the_waker_reads_the_forwarded_events_with_the_same_rules_as_its_own() -> None:
    """The wake bus gets the events of the other regions and accounts (infra/aws/wake-forwarder.yaml,
    whose rules are the same again: tests/security/test_wake_forwarder.py)."""
    events = function_events("WakerFunction")
    for own, forwarded in (
        ("RunCommandEnds", "ForwardedRunCommandEnds"),
        ("SnapshotSetEnds", "ForwardedSnapshotSetEnds"),
    ):
        assert "EventBusName" not in events[own]["Properties"]  # the default bus: this account's and region's
        assert events[forwarded]["Properties"]["EventBusName"] == {"Ref": "WakeBus"}
        assert events[forwarded]["Properties"]["Pattern"] == events[own]["Properties"]["Pattern"]
        assert events[forwarded]["Properties"]["RetryPolicy"] == events[own]["Properties"]["RetryPolicy"]
    assert RESOURCES["WakeBus"]["Condition"] == "HasWaker"


def test_other_accounts_put_only_step_ends_on_the_wake_bus_and_only_those_named() -> None:
    """A forwarded event can only wake a run sooner, yet the bus takes nothing else: the named
    organization's or accounts' principals, the two AWS event kinds (an "aws." source cannot be
    put by anyone but AWS), nothing when neither is named."""
    policy = RESOURCES["WakeBus"]["Properties"]["Policy"]
    condition, document, otherwise = policy["Fn::If"]
    assert condition == "HasWakeForwarders" and otherwise == {"Ref": "AWS::NoValue"}
    statements = {}
    for wrapped in document["Statement"]:
        named, statement, absent = wrapped["Fn::If"]
        assert absent == {"Ref": "AWS::NoValue"}
        statements[named] = statement
    assert set(statements) == {"HasWakeOrganization", "HasWakeAccounts"}
    bus = "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/patchpilot-wake-${AWS::StackName}"
    assert RESOURCES["WakeBus"]["Properties"]["Name"] == {"Fn::Sub": "patchpilot-wake-${AWS::StackName}"}
    kinds = {
        "events:source": ["aws.ssm", "aws.ec2"],
        "events:detail-type": [
            "EC2 Command Status-change Notification",
            "EBS Multi-Volume Snapshots Completion Status",
        ],
    }
    for statement in statements.values():
        assert statement["Effect"] == "Allow" and statement["Action"] == "events:PutEvents"
        assert statement["Resource"] == {"Fn::Sub": bus}
        assert statement["Condition"]["ForAllValues:StringEquals"] == kinds
    organization = statements["HasWakeOrganization"]
    assert organization["Principal"] == {"AWS": "*"}
    assert organization["Condition"]["StringEquals"] == {"aws:PrincipalOrgID": {"Ref": "WakeForwardOrganizationId"}}
    accounts = statements["HasWakeAccounts"]
    assert accounts["Principal"] == {"AWS": {"Fn::Split": [",", {"Ref": "WakeForwardAccounts"}]}}
    conditions = TEMPLATE["Conditions"]
    assert {"Condition": "HasWaker"} in conditions["HasWakeOrganization"]["Fn::And"]
    assert {"Condition": "HasWaker"} in conditions["HasWakeAccounts"]["Fn::And"]


def test_the_worker_polls_less_often_only_where_the_stack_has_a_waker() -> None:
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["PATCHPILOT_WAKE_EVENTS"] == {"Ref": "WakeEvents"}
    assert variables["PATCHPILOT_ACCOUNT"] == {"Ref": "AWS::AccountId"}  # whose events the waker hears
    # ... and those forwarded to it: the regions, and the accounts ("*" for the organization's)
    assert variables["PATCHPILOT_WAKE_REGIONS"] == {"Ref": "WakeForwardRegions"}
    assert variables["PATCHPILOT_WAKE_ACCOUNTS"] == {
        "Fn::If": ["HasWakeOrganization", "*", {"Ref": "WakeForwardAccounts"}]
    }
    for name in ("WakeForwardRegions", "WakeForwardOrganizationId", "WakeForwardAccounts"):
        assert TEMPLATE["Parameters"][name]["Default"] == "", name  # forwarding is opted into


def test_the_worker_reads_where_the_waker_hears_from_and_names_a_bad_setting() -> None:
    from patchpilot.adapters.aws.wake_events import WakeScope
    from patchpilot.adapters.serverless import WallClock
    from patchpilot.bootstrap.aws import AwsEnvironment, AwsRuntime
    from patchpilot.errors import InputError

    stack = {
        "PATCHPILOT_TABLE": "runs",
        "PATCHPILOT_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/111122223333/steps",
        "PATCHPILOT_POLICY": "s3://config/policy.yaml",
        "AWS_REGION": "eu-west-1",
        "PATCHPILOT_ACCOUNT": "111122223333",
        "PATCHPILOT_WAKE_EVENTS": "true",
        "PATCHPILOT_WAKE_REGIONS": "",  # as the template passes the parameters' defaults
        "PATCHPILOT_WAKE_ACCOUNTS": "",
    }

    def scope(**changed: str) -> WakeScope | None:
        env = AwsEnvironment.from_environ({**stack, **changed})
        runtime = AwsRuntime(env, lambda *_: None, None, WallClock())
        assert runtime.fleet.wake == env.wake_scope()
        assert runtime.waker.home_account == "111122223333"  # a member's snapshot ends are not its machines'
        return runtime.fleet.wake

    assert scope() == WakeScope("111122223333", "eu-west-1", frozenset(), frozenset())
    assert scope(PATCHPILOT_WAKE_EVENTS="false", PATCHPILOT_WAKE_REGIONS="us-east-1") is None
    assert scope(PATCHPILOT_WAKE_REGIONS="us-east-1,eu-central-1", PATCHPILOT_WAKE_ACCOUNTS="*") == WakeScope(
        "111122223333", "eu-west-1", "*", frozenset({"us-east-1", "eu-central-1"})
    )
    assert scope(PATCHPILOT_WAKE_ACCOUNTS="222233334444,555566667777").accounts == {"222233334444", "555566667777"}
    with pytest.raises(InputError) as bad:
        scope(PATCHPILOT_WAKE_REGIONS="us-east-1,Frankfurt", PATCHPILOT_WAKE_ACCOUNTS="o-abc")
    assert [p.path for p in bad.value.problems] == [("PATCHPILOT_WAKE_REGIONS", 1), ("PATCHPILOT_WAKE_ACCOUNTS", 0)]
    unicode_digits = "".join(chr(0x0660 + d % 10) for d in range(1, 13))  # digits, but not an account id
    with pytest.raises(InputError) as bad:
        scope(PATCHPILOT_WAKE_REGIONS=f"eu-west-{chr(0x0661)}", PATCHPILOT_WAKE_ACCOUNTS=unicode_digits)
    assert [p.path for p in bad.value.problems] == [("PATCHPILOT_WAKE_REGIONS", 0), ("PATCHPILOT_WAKE_ACCOUNTS", 0)]
    assert RESOURCES["WakerFunction"]["Condition"] == "HasWaker"
    assert TEMPLATE["Conditions"]["HasWaker"] == {"Fn::Equals": [{"Ref": "WakeEvents"}, "true"]}
    assert TEMPLATE["Parameters"]["WakeEvents"]["Default"] == "true"
