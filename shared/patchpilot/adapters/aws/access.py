"""What the AWS fleet (`fleet/`), the assessor (`compliance.py`) and the maintenance source
(`maintenance_watch.py`) share: `AwsAccess` (typed boto3 clients per account and region, the SSM
agent lookup, the SSM commands of a PatchPilot command found again, instances described in bulk),
the marks PatchPilot leaves in AWS (tags, SSM comments, client tokens) and the readers of AWS answers.

SSM commands carry the command id in their Comment (SendCommand has no client token and
ListCommands cannot filter on the Comment, so ListCommands is filtered by document and
InvokedAfter, and the comments are matched here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from botocore.exceptions import ClientError

from patchpilot.batching import chunks, group
from patchpilot.inventory import Instance, OsFamily
from patchpilot.ports import Clock, PoolsUnreadableError, ScalingGroupsUnreadableError

from .sessions import ClientFactory

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import InstanceTypeDef
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client
    from mypy_boto3_elbv2.type_defs import TargetGroupTypeDef, TargetHealthDescriptionTypeDef
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_ssm.type_defs import (
        CommandInvocationTypeDef,
        CommandTypeDef,
        InstanceInformationTypeDef,
    )

T = TypeVar("T")
Placement = tuple[str | None, str]  # (account, region)

TAG_RUN = "PatchPilotRun"
TAG_WAVE = "PatchPilotWave"
TAG_COMMAND = "PatchPilotCommand"
TAG_INSTANCE = "PatchPilotInstance"
TAG_HEALTH = "PatchPilotHealthCheck"  # "<command token>@<ISO time the check started>"
TAG_DEVICE = "PatchPilotDevice"  # on a restored data volume: the device it replaces
TAG_REPLACED_BY = "PatchPilotReplacedBy"  # on an original data volume: the volume that replaced it
# On an instance, before it leaves a target group on a port, IP or zone its default would not
# restore: "<command token> <pool index>=<target>/<port>/<zone>,..." (adapters/aws/traffic/).
TAG_DRAINED = "PatchPilotDrained"
TAG_VALUE_MAX = 256  # EC2 tag values

PATCH_DOCUMENT = "AWS-RunPatchBaseline"
SCRIPT_DOCUMENTS: dict[OsFamily, str] = {"linux": "AWS-RunShellScript", "windows": "AWS-RunPowerShellScript"}
COMMENT_PREFIX = "patchpilot"
COMMENT_MAX = 100  # SendCommand Comment limit

SSM_IDS_PER_CALL = 50  # SendCommand InstanceIds, DescribeInstanceInformation page
STATUS_IDS_PER_CALL = 100  # DescribeInstanceStatus InstanceIds
FILTER_VALUES_PER_CALL = 200  # EC2 filter values
ALARMS_PER_CALL = 100  # DescribeAlarms AlarmNames
TAGS_RESOURCES_PER_CALL = 1000  # CreateTags Resources
ASG_IDS_PER_CALL = 50  # DescribeAutoScalingInstances InstanceIds (and its MaxRecords)

COMMAND_LOOKBACK = timedelta(days=7)  # how far back ListCommands looks for a command's SSM commands

RUNNING_COMMAND = frozenset({"Pending", "InProgress", "Cancelling"})
RUNNING_INVOCATION = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})


class AwsAccess:
    """The AWS reads every part of the fleet shares. Keeps no state but its settings."""

    def __init__(
        self,
        client: ClientFactory,
        clock: Clock,
        *,
        default_region: str = "us-east-1",
        command_lookback: timedelta = COMMAND_LOOKBACK,
    ) -> None:
        """`client` builds boto3 clients per (service, account, region) (see `AwsSessions`)."""
        self.client_factory = client
        self.clock = clock
        self.default_region = default_region
        self.command_lookback = command_lookback

    # ------------------------------------------------------------ typed clients

    def client(self, service: str, placement: Placement) -> Any:
        """An untyped client of `service` in (account, region), for services without a typed accessor here."""
        return self.client_factory(service, placement[0], placement[1])

    def ec2(self, placement: Placement) -> EC2Client:
        client: EC2Client = self.client("ec2", placement)
        return client

    def ssm(self, placement: Placement) -> SSMClient:
        client: SSMClient = self.client("ssm", placement)
        return client

    def cloudwatch(self, placement: Placement) -> CloudWatchClient:
        client: CloudWatchClient = self.client("cloudwatch", placement)
        return client

    def elbv2(self, placement: Placement) -> ElasticLoadBalancingv2Client:
        client: ElasticLoadBalancingv2Client = self.client("elbv2", placement)
        return client

    def s3(self, region: str) -> S3Client:
        client: S3Client = self.client("s3", (None, region))
        return client

    # ------------------------------------------------------------ shared reads

    def agents(self, placement: Placement, instance_ids: Sequence[str]) -> dict[str, InstanceInformationTypeDef]:
        """SSM's record of each managed instance among `instance_ids` (absent: not managed)."""
        ssm = self.ssm(placement)
        wanted = set(instance_ids)
        result: dict[str, InstanceInformationTypeDef] = {}
        for chunk in chunks(sorted(wanted), SSM_IDS_PER_CALL):
            try:
                pages = ssm.get_paginator("describe_instance_information").paginate(
                    Filters=[{"Key": "InstanceIds", "Values": chunk}], PaginationConfig={"PageSize": 50}
                )
                infos = [info for page in pages for info in page.get("InstanceInformationList", [])]
            except ClientError as exc:
                if error_code(exc) != "InvalidInstanceId":
                    raise
                # Some SSM endpoints reject unknown ids in the filter: list every managed
                # instance of the region instead and keep ours.
                return self._all_agents(ssm, wanted)
            for info in infos:
                if info.get("InstanceId") in wanted:
                    result[info["InstanceId"]] = info
        return result

    def _all_agents(self, ssm: SSMClient, wanted: set[str]) -> dict[str, InstanceInformationTypeDef]:
        pages = ssm.get_paginator("describe_instance_information").paginate(PaginationConfig={"PageSize": 50})
        return {
            info["InstanceId"]: info
            for page in pages
            for info in page.get("InstanceInformationList", [])
            if info.get("InstanceId") in wanted
        }

    def target_groups(
        self, placement: Placement
    ) -> list[tuple[TargetGroupTypeDef, list[TargetHealthDescriptionTypeDef]]]:
        """Every ELBv2 target group of (account, region) that can hold machines (instance and IP
        targets), with its registered targets: DescribeTargetGroups paged once, then one
        DescribeTargetHealth per target group (never a call per instance). A refusal raises
        `PoolsUnreadableError` naming the denied action."""
        elbv2 = self.elbv2(placement)
        action = "DescribeTargetGroups"
        try:
            pages = elbv2.get_paginator("describe_target_groups").paginate(PaginationConfig={"PageSize": 400})
            groups = [g for page in pages for g in page.get("TargetGroups", []) if g.get("TargetType") in POOL_TARGETS]
            result = []
            action = "DescribeTargetHealth"
            for target_group in sorted(groups, key=lambda g: g.get("TargetGroupArn", "")):
                answer = elbv2.describe_target_health(TargetGroupArn=target_group["TargetGroupArn"])
                result.append((target_group, answer.get("TargetHealthDescriptions", [])))
        except ClientError as exc:
            missing = f"elasticloadbalancing:{action}"
            raise PoolsUnreadableError(where(placement), missing, f"{action} failed ({describe_error(exc)})") from exc
        return result

    def scaling_groups(self, placement: Placement, instance_ids: Sequence[str]) -> dict[str, str]:
        """The Auto Scaling group name of each of `instance_ids` that is in one (DescribeAutoScalingInstances
        answers with the name, not the ARN): one call per 50 ids, paged. A refusal raises
        `ScalingGroupsUnreadableError` naming the action, never "no group"."""
        autoscaling = self.client("autoscaling", placement)
        groups: dict[str, str] = {}
        try:
            for chunk in chunks(sorted(set(instance_ids)), ASG_IDS_PER_CALL):
                pages = autoscaling.get_paginator("describe_auto_scaling_instances").paginate(
                    InstanceIds=chunk, PaginationConfig={"PageSize": ASG_IDS_PER_CALL}
                )
                for page in pages:
                    for member in page.get("AutoScalingInstances", []):
                        if member.get("InstanceId") and member.get("AutoScalingGroupName"):
                            groups[str(member["InstanceId"])] = str(member["AutoScalingGroupName"])
        except ClientError as exc:
            action = "DescribeAutoScalingInstances"
            raise ScalingGroupsUnreadableError(
                where(placement), f"autoscaling:{action}", f"{action} failed ({describe_error(exc)})"
            ) from exc
        return groups

    def describe_instances(self, ec2: EC2Client, instance_ids: Sequence[str]) -> dict[str, InstanceTypeDef]:
        """The instances that still exist, by id (an instance-id filter: unknown ids are no error)."""
        result: dict[str, InstanceTypeDef] = {}
        for chunk in chunks(sorted(set(instance_ids)), FILTER_VALUES_PER_CALL):
            pages = ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-id", "Values": chunk}], PaginationConfig={"PageSize": 1000}
            )
            for page in pages:
                for reservation in page.get("Reservations", []):
                    for raw in reservation.get("Instances", []):
                        result[raw.get("InstanceId", "")] = raw
        return result

    def find_commands(self, ssm: SSMClient, document: str, token: str, now: datetime) -> dict[str, CommandTypeDef]:
        """The SSM commands an earlier execution sent for this PatchPilot command, by part
        label: ListCommands for the document since the lookback, matched on the Comment."""
        after = (now - self.command_lookback).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        pages = ssm.get_paginator("list_commands").paginate(
            Filters=[{"key": "DocumentName", "value": document}, {"key": "InvokedAfter", "value": after}],
            PaginationConfig={"PageSize": 50},
        )
        prefix = f"{COMMENT_PREFIX} {token} "
        found: dict[str, CommandTypeDef] = {}
        for page in pages:
            for ssm_command in page.get("Commands", []):
                comment = ssm_command.get("Comment", "")
                if not comment.startswith(prefix):
                    continue
                label = comment[len(prefix) :].split(" ", 1)[0]
                earlier = found.get(label)
                # Two for one part would mean a race; the first one sent is the one to follow.
                if earlier is None or _requested(ssm_command) < _requested(earlier):
                    found[label] = ssm_command
        return found

    def command_results(
        self, ssm: SSMClient, ssm_commands: Sequence[CommandTypeDef], *, details: bool
    ) -> dict[str, CommandInvocationTypeDef] | None:
        """Each instance's invocation of the given commands, or None while any command runs.
        ListCommandInvocations is paginated per command (never per instance) and only read
        once the command has finished."""
        if any(c.get("Status") in RUNNING_COMMAND for c in ssm_commands):
            return None
        result: dict[str, CommandInvocationTypeDef] = {}
        for ssm_command in ssm_commands:
            pages = ssm.get_paginator("list_command_invocations").paginate(
                CommandId=ssm_command["CommandId"], Details=details, PaginationConfig={"PageSize": 50}
            )
            for page in pages:
                for invocation in page.get("CommandInvocations", []):
                    result[invocation.get("InstanceId", "")] = invocation
        return result


POOL_TARGETS = frozenset({"instance", "ip"})  # target types that are machines (not lambda, not alb)


# ---------------------------------------------------------------- marks and answers


def short_token(command_id: str) -> str:
    """A short, stable stand-in for a command id where space is scarce (SSM comments, tags)."""
    return hashlib.sha256(command_id.encode()).hexdigest()[:16]


def client_token(command_id: str, instance_id: str, part: str = "") -> str:
    """The EC2 idempotency token of one instance's operation in one command (64 hex chars),
    per `part` of the instance (a device name) when given."""
    key = f"{command_id}\x1f{instance_id}" + (f"\x1f{part}" if part else "")
    return hashlib.sha256(key.encode()).hexdigest()[:64]


def ssm_comment(token: str, label: str, command_id: str) -> str:
    """`patchpilot <token> <part> <command id>`, cut at SSM's 100 characters: the token and part
    identify the SSM command; the command id is there for people."""
    return f"{COMMENT_PREFIX} {token} {label} {command_id}"[:COMMENT_MAX]


def _requested(ssm_command: CommandTypeDef) -> datetime:
    return ssm_command.get("RequestedDateTime") or datetime.max.replace(tzinfo=UTC)


def by_placement(items: Iterable[T], instance: Callable[[T], Instance]) -> dict[Placement, list[T]]:
    """Items per (account, region), in a stable order of placements and of items within."""
    groups = group(items, lambda item: (instance(item).account, instance(item).region))
    return {key: groups[key] for key in sorted(groups, key=lambda p: (p[0] or "", p[1]))}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def describe_error(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")


class Addresses(NamedTuple):
    """An instance's VPC and private IPs: what an IP target of a target group names (`primary`:
    the address ELBv2 is given for the instance by default)."""

    vpc: str
    ips: frozenset[str]
    primary: str = ""


def addresses_of(raw: InstanceTypeDef) -> Addresses:
    ips = {raw.get("PrivateIpAddress", "")}
    for interface in raw.get("NetworkInterfaces", []):
        ips.update(a.get("PrivateIpAddress", "") for a in interface.get("PrivateIpAddresses", []))
    return Addresses(raw.get("VpcId", ""), frozenset(ips - {""}), raw.get("PrivateIpAddress", ""))


def tags_of(tags: Iterable[Any] | None) -> dict[str, str]:
    return {str(t.get("Key", "")): str(t.get("Value", "")) for t in tags or []}


def instance_state(raw: InstanceTypeDef) -> str:
    return str(raw.get("State", {}).get("Name", "unknown"))


def agent_problem(info: InstanceInformationTypeDef | None) -> str | None:
    if info is None:
        return "not a managed instance (no SSM agent registered)"
    ping = info.get("PingStatus", "")
    if ping == "Online":
        return None
    return f"SSM agent {ping or 'status unknown'}"


def invocation_failure(document: str, invocation: CommandInvocationTypeDef) -> str:
    status = invocation.get("Status", "unknown")
    details = invocation.get("StatusDetails", "")
    return f"{document} {status}" + (f" ({details})" if details and details != status else "")


def where(placement: Placement) -> str:
    """An (account, region) as people read it."""
    return f"{placement[0] or 'the current account'}/{placement[1]}"


def failure(exc: Exception) -> str:
    """What a failed AWS call said."""
    return describe_error(exc) if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"
