"""What the end-to-end AWS tests and the API-call benchmark share: a stateful stand-in for the
services moto lacks on the fleet's path, the client factory handed to the runtime (counting
every API call), and Lambda's SQS event source mapping over moto's queue.

moto plays EC2 (instances, tags, snapshots, status checks), S3, SQS, DynamoDB, Secrets
Manager, STS and CloudWatch. It does not implement DescribeInstanceInformation,
ListCommandInvocations, DescribeInstancePatches or the replace-root-volume tasks, and its
SendCommand with InstanceIds targets every instance of the region. A botocore Stubber answers a
script of calls written in advance, which a whole run is not; so `FleetServices` plays Systems
Manager and EC2's replace-root-volume tasks as services with state, on the test's clock:

- SSM commands run for a while (`INSTALL_TIME`, `SCRIPT_TIME`) and then succeed or fail per
  instance; ListCommands and ListCommandInvocations report them as SSM does, paginated;
- AWS-RunPatchBaseline installs what has been released for the instance's OS, or exactly its
  InstallOverrideList, or what its BaselineOverride's baseline for the host OS approves (Amazon
  Linux 2023 or Windows; both read from moto's S3), and DescribeInstancePatches then reports it;
  with Operation=Scan it installs nothing, and DescribeInstancePatchStates reports the counts of
  the last operation that has ended (Scan or Install), as SSM keeps only the last one;
- the health script fails on an instance that a patch broke (`manage(breaks_when_patched=True)`)
  until a replace-root-volume task for it has succeeded, which also takes its patches away;
- a replace-root-volume task must name a snapshot of the instance's root volume (checked in
  moto's EC2), is idempotent per ClientToken and goes pending -> in-progress -> succeeded;
- an agent may have lost its connection (`manage(online=False)`): SSM reports it and refuses
  commands for it (InvalidInstanceId).

It answers behind real boto3 clients, through botocore event hooks: `before-parameter-build`
keeps the API parameters and `before-call` returns the answer, which short-circuits the HTTP
request (moto never sees the call). botocore has validated the request against the service
model by then (a bad call fails as it would on AWS, with ParamValidationError), and every
answer is validated against the operation's output shape, as a Stubber does (and again, with its
error codes, by tests/aws_fidelity.py, as every hook's answer is). An operation the fake does not
play fails the test rather than reach moto; `FleetServices.operations()` lists the ones it plays.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import boto3
import yaml
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters
from clocks import ManualClock
from moto_support import next_due

from patchpilot.adapters.aws.sessions import client_config
from patchpilot.inventory import OsFamily
from patchpilot.ports import Clock

T = TypeVar("T")

PATCH_DOCUMENT = "AWS-RunPatchBaseline"
SCRIPT_PLUGINS = {"AWS-RunShellScript": "aws:runShellScript", "AWS-RunPowerShellScript": "aws:runPowerShellScript"}
INSTALL_TIME = timedelta(minutes=25)  # an AWS-RunPatchBaseline Install, reboot included
SCRIPT_TIME = timedelta(minutes=1)  # a health script
SCAN_TIME = timedelta(minutes=4)  # an AWS-RunPatchBaseline Scan
TASK_PENDING = timedelta(minutes=1)  # a replace-root-volume task: pending, then in progress
TASK_TIME = timedelta(minutes=6)  # ... until it has succeeded
NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # DescribeInstancePatches' InstalledTime of a missing patch
HEALTH_FAILURE = "curl: (22) The requested URL returned error: 500"
HOST_OS: dict[OsFamily, str] = {"linux": "AMAZON_LINUX_2023", "windows": "WINDOWS"}  # the fake machines' systems

_PARAMS = "fake_aws.params"  # where `before-parameter-build` leaves the API parameters for `before-call`


class ServiceError(Exception):
    """An error answer of the fake service (botocore raises it as a ClientError)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Patch:
    id: str  # the KBId: a KB number, or a package name on Linux
    os: OsFamily
    released: datetime
    title: str = ""
    classification: str = "Security"
    severity: str = "Important"


@dataclass
class Machine:
    """What SSM knows of one managed instance."""

    instance_id: str
    os: OsFamily
    breaks_when_patched: bool = False
    ping: str = "Online"  # or ConnectionLost: the agent stopped answering
    installed: list[tuple[str, datetime]] = field(default_factory=list)  # (patch id, when), in order
    broken_at: datetime | None = None
    operations: list[tuple[str, datetime, datetime]] = field(default_factory=list)  # (Scan|Install, start, end)


@dataclass(frozen=True)
class Invocation:
    """How a command ends on one instance."""

    status: str  # Success or Failed
    code: int
    output: str


@dataclass
class SsmCommand:
    command_id: str
    document: str
    comment: str
    instance_ids: list[str]
    parameters: dict[str, list[str]]
    requested: datetime
    done: datetime
    results: dict[str, Invocation]
    max_concurrency: str
    max_errors: str
    timeout_seconds: int

    def status(self, now: datetime) -> str:
        if now < self.done:
            return "InProgress"
        return "Success" if all(r.status == "Success" for r in self.results.values()) else "Failed"

    def view(self, now: datetime) -> dict[str, Any]:
        status = self.status(now)
        finished = status != "InProgress"
        errors = sum(1 for r in self.results.values() if r.status != "Success") if finished else 0
        return {
            "CommandId": self.command_id,
            "DocumentName": self.document,
            "DocumentVersion": "$DEFAULT",
            "Comment": self.comment,
            "ExpiresAfter": self.requested + timedelta(seconds=self.timeout_seconds),
            "Parameters": self.parameters,
            "InstanceIds": list(self.instance_ids),
            "Targets": [],
            "RequestedDateTime": self.requested,
            "Status": status,
            "StatusDetails": status,
            "MaxConcurrency": self.max_concurrency,
            "MaxErrors": self.max_errors,
            "TargetCount": len(self.instance_ids),
            "CompletedCount": len(self.instance_ids) if finished else 0,
            "ErrorCount": errors,
            "DeliveryTimedOutCount": 0,
            "TimeoutSeconds": self.timeout_seconds,
        }

    def invocation(self, instance_id: str, now: datetime, details: bool) -> dict[str, Any]:
        finished = now >= self.done
        result = self.results[instance_id]
        status = result.status if finished else "InProgress"
        view: dict[str, Any] = {
            "CommandId": self.command_id,
            "InstanceId": instance_id,
            "Comment": self.comment,
            "DocumentName": self.document,
            "DocumentVersion": "$DEFAULT",
            "RequestedDateTime": self.requested,
            "Status": status,
            "StatusDetails": status,
        }
        if details:
            plugin = SCRIPT_PLUGINS.get(self.document, "PatchLinux")
            view["CommandPlugins"] = [
                {
                    "Name": plugin,
                    "Status": status,
                    "StatusDetails": status,
                    "ResponseCode": result.code if finished else -1,
                    "ResponseStartDateTime": self.requested,
                    **({"ResponseFinishDateTime": self.done, "Output": result.output} if finished else {}),
                }
            ]
        return view


@dataclass
class RootVolumeTask:
    task_id: str
    instance_id: str
    snapshot_id: str
    token: str | None
    delete_replaced: bool
    tags: list[dict[str, str]]
    created: datetime

    @property
    def completed(self) -> datetime:
        return self.created + TASK_TIME

    def state(self, now: datetime) -> str:
        if now < self.created + TASK_PENDING:
            return "pending"
        return "in-progress" if now < self.completed else "succeeded"

    def view(self, now: datetime) -> dict[str, Any]:
        state = self.state(now)
        view: dict[str, Any] = {
            "ReplaceRootVolumeTaskId": self.task_id,
            "InstanceId": self.instance_id,
            "TaskState": state,
            "StartTime": _ec2_time(self.created),
            "Tags": [dict(t) for t in self.tags],
            "SnapshotId": self.snapshot_id,
            "DeleteReplacedRootVolume": self.delete_replaced,
        }
        if state == "succeeded":
            view["CompleteTime"] = _ec2_time(self.completed)
        return view


class FleetServices:
    """Systems Manager and EC2's replace-root-volume tasks of one region, on `clock`."""

    def __init__(self, clock: Clock, region: str) -> None:
        self.clock = clock
        self.region = region
        self.machines: dict[str, Machine] = {}
        self.patches: list[Patch] = []
        self.commands: list[SsmCommand] = []
        self.tasks: list[RootVolumeTask] = []
        self.override_reads: list[tuple[str, list[str]]] = []  # (InstallOverrideList URL, patch ids)
        self.baseline_reads: list[tuple[str, dict[str, list[str]]]] = []  # (BaselineOverride URL, approvals by OS)
        self._ids = itertools.count(1)
        # moto clients for the fake's own reads: not the runtime's, so not counted.
        self._ec2 = boto3.client("ec2", region_name=region)
        self._s3 = boto3.client("s3", region_name=region)

    # ------------------------------------------------------------ the world

    def manage(self, instance_id: str, os: OsFamily, *, breaks_when_patched: bool = False, online: bool = True) -> None:
        """Register the instance's SSM agent (online, or lost: SSM then refuses commands for it)."""
        self.machines[instance_id] = Machine(
            instance_id, os, breaks_when_patched, "Online" if online else "ConnectionLost"
        )

    def release(self, *patches: Patch) -> None:
        self.patches.extend(patches)

    def installed(self, instance_id: str, at: datetime | None = None) -> list[str]:
        """The patches installed on the instance (and not undone by a root-volume replacement)."""
        at = at or self.clock.now()
        return [p for p, when in self._installed(self.machines[instance_id], at)]

    def broken(self, instance_id: str, at: datetime | None = None) -> bool:
        machine = self.machines[instance_id]
        at = at or self.clock.now()
        if machine.broken_at is None or machine.broken_at > at:
            return False
        return not any(machine.broken_at <= restored <= at for restored in self._restores(instance_id, at))

    def _restores(self, instance_id: str, at: datetime) -> list[datetime]:
        return [t.completed for t in self.tasks if t.instance_id == instance_id and t.completed <= at]

    def _installed(self, machine: Machine, at: datetime) -> list[tuple[str, datetime]]:
        restores = self._restores(machine.instance_id, at)
        return [
            (patch, when)
            for patch, when in machine.installed
            if when <= at and not any(when <= restored <= at for restored in restores)
        ]

    # ------------------------------------------------------------ hooks

    def serve_ssm(self, client: Any) -> None:
        """Answer every SSM call of `client`."""
        client.meta.events.register("before-parameter-build.ssm.*", _keep_params)
        client.meta.events.register("before-call.ssm.*", self._answer_ssm)

    def serve_root_volume_tasks(self, client: Any) -> None:
        """Answer the replace-root-volume calls of an EC2 `client` (moto answers the rest)."""
        for operation in self.operations()["ec2"]:
            client.meta.events.register(f"before-parameter-build.ec2.{operation}", _keep_params)
            client.meta.events.register(f"before-call.ec2.{operation}", self._answer_ec2)

    def operations(self) -> dict[str, dict[str, Callable[[dict[str, Any]], dict[str, Any]]]]:
        """The operations the fake plays, by service and API name (tests/test_aws_fidelity.py
        checks each against botocore's service model)."""
        return {
            "ssm": {
                "DescribeInstanceInformation": self._describe_instance_information,
                "SendCommand": self._send_command,
                "ListCommands": self._list_commands,
                "ListCommandInvocations": self._list_command_invocations,
                "DescribeInstancePatches": self._describe_instance_patches,
                "DescribeInstancePatchStates": self._describe_instance_patch_states,
                "DescribeAvailablePatches": self._describe_available_patches,
            },
            "ec2": {
                "CreateReplaceRootVolumeTask": self._create_replace_root_volume_task,
                "DescribeReplaceRootVolumeTasks": self._describe_replace_root_volume_tasks,
            },
        }

    def _answer_ssm(self, model: Any, context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return _answer(model, context, self.operations()["ssm"])

    def _answer_ec2(self, model: Any, context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return _answer(model, context, self.operations()["ec2"])

    # ------------------------------------------------------------ SSM

    def _describe_instance_information(self, params: dict[str, Any]) -> dict[str, Any]:
        if "InstanceInformationFilterList" in params:
            raise AssertionError("the fake plays the Filters of DescribeInstanceInformation only")
        wanted: set[str] | None = None
        for f in params.get("Filters", []):
            if f["Key"] != "InstanceIds":
                raise AssertionError(f"filter {f['Key']} is not played by the fake")
            wanted = set(f["Values"]) if wanted is None else wanted & set(f["Values"])
        ids = sorted(i for i in self.machines if wanted is None or i in wanted)
        page, more = _page(ids, params, 5, 50, "ValidationException")
        now = self.clock.now()
        return {"InstanceInformationList": [self._agent(self.machines[i], now) for i in page], **more}

    def _agent(self, machine: Machine, now: datetime) -> dict[str, Any]:
        windows = machine.os == "windows"
        return {
            "InstanceId": machine.instance_id,
            "PingStatus": machine.ping,
            "LastPingDateTime": now,
            "AgentVersion": "3.3.1142.0",
            "IsLatestVersion": True,
            "PlatformType": "Windows" if windows else "Linux",
            "PlatformName": "Microsoft Windows Server 2022 Datacenter" if windows else "Amazon Linux",
            "PlatformVersion": "10.0.20348" if windows else "2023",
            "ResourceType": "EC2Instance",
        }

    def _send_command(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = list(params.get("InstanceIds") or [])
        if not ids:
            raise AssertionError("the fake plays SendCommand with InstanceIds only (not Targets)")
        if len(ids) > 50:
            raise ServiceError("ValidationException", "InstanceIds has more than 50 members")
        refused = [i for i in ids if i not in self.machines or self.machines[i].ping != "Online"]
        if refused:
            raise ServiceError("InvalidInstanceId", f"Instances {refused} not in a valid state for account")
        now = self.clock.now()
        document = params["DocumentName"]
        parameters = {k: list(v) for k, v in params.get("Parameters", {}).items()}
        if document == PATCH_DOCUMENT:
            done = now + (SCAN_TIME if parameters.get("Operation") == ["Scan"] else INSTALL_TIME)
            results = self._run_patch_baseline(ids, parameters, done)
        elif document in SCRIPT_PLUGINS:
            done = now + SCRIPT_TIME
            results = {
                i: Invocation("Failed", 1, HEALTH_FAILURE) if self.broken(i, now) else Invocation("Success", 0, "ok")
                for i in ids
            }
        else:
            raise ServiceError("InvalidDocument", f"document {document} is not played by the fake")
        command = SsmCommand(
            command_id=f"{next(self._ids):08x}-0000-4000-8000-000000000000",
            document=document,
            comment=params.get("Comment", ""),
            instance_ids=ids,
            parameters=parameters,
            requested=now,
            done=done,
            results=results,
            max_concurrency=params.get("MaxConcurrency", "50"),
            max_errors=params.get("MaxErrors", "0"),
            timeout_seconds=params.get("TimeoutSeconds", 3600),
        )
        self.commands.append(command)
        view = command.view(now)
        return {"Command": {**view, "Status": "Pending", "StatusDetails": "Pending"}}

    def _run_patch_baseline(
        self, ids: Sequence[str], parameters: dict[str, list[str]], done: datetime
    ) -> dict[str, Invocation]:
        now = self.clock.now()
        if parameters.get("Operation") == ["Scan"]:
            for instance_id in ids:
                self.machines[instance_id].operations.append(("Scan", now, done))
            return {i: Invocation("Success", 0, "scan: nothing installed") for i in ids}
        if parameters.get("Operation") != ["Install"]:
            raise AssertionError(f"the fake plays Operation=Install and Scan only, not {parameters.get('Operation')}")
        overrides = parameters.get("InstallOverrideList")
        baselines = parameters.get("BaselineOverride")
        if overrides and baselines:  # AWS-RunPatchBaseline fails when given both
            raise ServiceError("InvalidParameters", "BaselineOverride and InstallOverrideList cannot be used together")
        pinned = self._override_list(overrides[0]) if overrides else None
        approved = self._baseline_override(baselines[0]) if baselines else None
        results = {}
        for instance_id in ids:
            machine = self.machines[instance_id]
            have = {p for p, _ in self._installed(machine, now)}
            released = [p for p in self.patches if p.os == machine.os and p.released <= now]
            if pinned is not None:  # exactly the listed patches that apply to this OS
                chosen = [p.id for p in released if p.id in pinned and p.id not in have]
            elif approved is not None:  # the host OS's baseline of the override: its ApprovedPatches only
                listed = approved.get(HOST_OS[machine.os], [])
                chosen = [p.id for p in released if p.id in listed and p.id not in have]
            else:
                chosen = [p.id for p in released if p.id not in have]
            machine.installed.extend((p, done) for p in chosen)
            machine.operations.append(("Install", now, done))
            if machine.breaks_when_patched and chosen:
                machine.broken_at = done
            results[instance_id] = Invocation("Success", 0, f"{len(chosen)} patches installed")
        return results

    def _baseline_override(self, url: str) -> dict[str, list[str]]:
        """ApprovedPatches per OperatingSystem of a BaselineOverride document (approval rules
        must be empty: the fake plays explicit approvals only)."""
        bucket, _, key = url.removeprefix("s3://").partition("/")
        try:
            document = json.loads(self._s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError as error:
            raise ServiceError("InvalidParameters", f"BaselineOverride {url}: {error}") from None
        approved: dict[str, list[str]] = {}
        for baseline in document:
            if baseline.get("ApprovalRules", {}).get("PatchRules"):
                raise AssertionError("the fake plays BaselineOverride documents without approval rules only")
            approved[baseline["OperatingSystem"]] = list(baseline.get("ApprovedPatches", []))
        self.baseline_reads.append((url, approved))
        return approved

    def _override_list(self, url: str) -> list[str]:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        try:
            body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            raise ServiceError("InvalidParameters", f"InstallOverrideList {url}: {error}") from None
        ids = [str(p["id"]) for p in (yaml.safe_load(body) or {}).get("patches", [])]
        self.override_reads.append((url, ids))
        return ids

    def _list_commands(self, params: dict[str, Any]) -> dict[str, Any]:
        filters: dict[str, str] = {}
        for f in params.get("Filters", []):
            if f["key"] not in ("DocumentName", "InvokedAfter"):
                raise AssertionError(f"ListCommands filter {f['key']} is not played by the fake")
            filters[f["key"]] = f["value"]
        after = datetime.fromisoformat(filters["InvokedAfter"]) if "InvokedAfter" in filters else None
        matching = [
            c
            for c in reversed(self.commands)  # the newest first, as SSM lists them
            if (params.get("CommandId") in (None, c.command_id))
            and (params.get("InstanceId") in (None, *c.instance_ids))
            and filters.get("DocumentName", c.document) == c.document
            and (after is None or c.requested >= after)
        ]
        page, more = _page(matching, params, 1, 50, "ValidationException")
        now = self.clock.now()
        return {"Commands": [c.view(now) for c in page], **more}

    def _list_command_invocations(self, params: dict[str, Any]) -> dict[str, Any]:
        command = next((c for c in self.commands if c.command_id == params.get("CommandId")), None)
        if command is None:
            raise AssertionError("the fake plays ListCommandInvocations of one CommandId only")
        ids = [i for i in command.instance_ids if params.get("InstanceId") in (None, i)]
        page, more = _page(ids, params, 1, 50, "ValidationException")
        now = self.clock.now()
        details = bool(params.get("Details", False))
        return {"CommandInvocations": [command.invocation(i, now, details) for i in page], **more}

    def _describe_instance_patches(self, params: dict[str, Any]) -> dict[str, Any]:
        machine = self.machines.get(params["InstanceId"])
        if machine is None:
            raise ServiceError("InvalidInstanceId", f"{params['InstanceId']} is not a managed instance")
        states: set[str] | None = None
        for f in params.get("Filters", []):
            if f["Key"] != "State":
                raise AssertionError(f"DescribeInstancePatches filter {f['Key']} is not played by the fake")
            states = set(f["Values"])
        now = self.clock.now()
        installed = dict(self._installed(machine, now))
        catalog = {p.id: p for p in self.patches if p.os == machine.os and p.released <= now}
        rows = [(catalog[p], "Installed", when) for p, when in installed.items()]
        rows += [(p, "Missing", NEVER) for p in catalog.values() if p.id not in installed]
        rows = [r for r in rows if states is None or r[1] in states]
        page, more = _page(rows, params, 10, 100, "ValidationException")
        patches = [
            {
                "Title": patch.title or patch.id,
                "KBId": patch.id,
                "Classification": patch.classification,
                "Severity": patch.severity,
                "State": state,
                "InstalledTime": when,
            }
            for patch, state, when in page
        ]
        return {"Patches": patches, **more}

    def _describe_instance_patch_states(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = list(params.get("InstanceIds") or [])
        if len(ids) > 50:
            raise ServiceError("ValidationException", "InstanceIds has more than 50 members")
        now = self.clock.now()
        states = [s for s in (self._patch_state(i, now) for i in ids if i in self.machines) if s is not None]
        page, more = _page(states, params, 10, 100, "ValidationException")
        return {"InstancePatchStates": page, **more}

    def _describe_available_patches(self, params: dict[str, Any]) -> dict[str, Any]:
        """The patch catalogue over the released patches: Windows ones by PATCH_ID (the KB), Linux
        ones whose id and title read as Amazon Linux 2's (`<name>.<arch>`, `…:<version>-<release>`)
        by PRODUCT, NAME, ARCH, VERSION and RELEASE; a filter's Values ORed, the filters ANDed; one page."""
        rows = []
        for patch in self.patches:
            if patch.os == "windows":
                fields = {"PATCH_ID": patch.id}
                row: dict[str, Any] = {"KbNumber": patch.id, "ReleaseDate": patch.released}
            elif "." in patch.id and ":" in patch.title:
                name, arch = patch.id.rsplit(".", 1)
                version, release = patch.title.split(":")[-1].rsplit("-", 1)
                fields = {"PRODUCT": "AmazonLinux2", "NAME": name, "ARCH": arch, "VERSION": version, "RELEASE": release}
                row = {
                    "Name": name,
                    "Arch": arch,
                    "Version": version,
                    "Release": release,
                    "ReleaseDate": patch.released,
                }
            else:
                continue
            if all(fields.get(f["Key"]) in f["Values"] for f in params.get("Filters", [])):
                rows.append(row)
        return {"Patches": rows}

    def _patch_state(self, instance_id: str, now: datetime) -> dict[str, Any] | None:
        """The counts SSM keeps after the last operation that has ended; None before any."""
        machine = self.machines[instance_id]
        ended = [op for op in machine.operations if op[2] <= now]
        if not ended:
            return None
        operation, started, finished = ended[-1]
        installed = {p for p, _ in self._installed(machine, finished)}
        released = [p for p in self.patches if p.os == machine.os and p.released <= finished]
        return {
            "InstanceId": instance_id,
            "PatchGroup": "default",  # required by the model
            "BaselineId": "pb-0c10e65780EXAMPLE",
            "InstalledCount": len(installed),
            "MissingCount": sum(1 for p in released if p.id not in installed),
            "FailedCount": 0,
            "InstalledPendingRebootCount": 0,
            "NotApplicableCount": 0,
            "OperationStartTime": started,
            "OperationEndTime": finished,
            "Operation": operation,
            "RebootOption": "NoReboot" if operation == "Scan" else "RebootIfNeeded",
        }

    # ------------------------------------------------------------ EC2 replace-root-volume tasks

    def _create_replace_root_volume_task(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("ImageId") or params.get("VolumeId") or not params.get("SnapshotId"):
            raise AssertionError("the fake plays a replacement from a snapshot only")
        instance_id, snapshot_id = params["InstanceId"], params["SnapshotId"]
        token = params.get("ClientToken")
        now = self.clock.now()
        earlier = next((t for t in self.tasks if token and t.token == token), None)
        if earlier is not None:
            if (earlier.instance_id, earlier.snapshot_id) != (instance_id, snapshot_id):
                raise ServiceError("IdempotentParameterMismatch", f"client token {token} was used with other values")
            return {"ReplaceRootVolumeTask": earlier.view(now)}
        root = self._root_volume(instance_id)
        try:
            snapshots = self._ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        except ClientError as error:
            raise ServiceError(_code(error), str(error)) from None
        if snapshots[0].get("VolumeId") != root:
            raise ServiceError(
                "InvalidParameterValue", f"snapshot {snapshot_id} is not a snapshot of the root volume of {instance_id}"
            )
        if any(t.instance_id == instance_id and t.state(now) != "succeeded" for t in self.tasks):
            raise ServiceError("IncorrectState", f"instance {instance_id} has a replace root volume task in progress")
        tags = [
            {"Key": tag["Key"], "Value": tag.get("Value", "")}
            for spec in params.get("TagSpecifications", [])
            if spec.get("ResourceType") == "replace-root-volume-task"
            for tag in spec.get("Tags", [])
        ]
        task = RootVolumeTask(
            task_id=f"replacevol-{next(self._ids):017x}",
            instance_id=instance_id,
            snapshot_id=snapshot_id,
            token=token,
            delete_replaced=bool(params.get("DeleteReplacedRootVolume", False)),
            tags=tags,
            created=now,
        )
        self.tasks.append(task)
        return {"ReplaceRootVolumeTask": task.view(now)}

    def _root_volume(self, instance_id: str) -> str:
        try:
            reservations = self._ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as error:
            raise ServiceError(_code(error), str(error)) from None
        raw = reservations[0]["Instances"][0]
        root = raw.get("RootDeviceName")
        for mapping in raw.get("BlockDeviceMappings", []):
            if mapping.get("DeviceName") == root:
                return str(mapping["Ebs"]["VolumeId"])
        raise ServiceError("IncorrectState", f"instance {instance_id} has no root volume attached")

    def _describe_replace_root_volume_tasks(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = set(params.get("ReplaceRootVolumeTaskIds") or [])
        instances: set[str] | None = None
        for f in params.get("Filters", []):
            if f["Name"] != "instance-id":
                raise AssertionError(f"filter {f['Name']} is not played by the fake")
            instances = set(f["Values"])
        tasks = [
            t for t in self.tasks if (not ids or t.task_id in ids) and (instances is None or t.instance_id in instances)
        ]
        page, more = _page(tasks, params, 1, 50, "InvalidParameterValue")
        now = self.clock.now()
        return {"ReplaceRootVolumeTasks": [t.view(now) for t in page], **more}


@functools.cache
def moto_image(region: str, os: OsFamily) -> str:
    """A stock AMI of moto's for the OS (the same in every mock: looked up once)."""
    images = boto3.client("ec2", region_name=region).describe_images(Owners=["amazon"])["Images"]
    return str(next(i["ImageId"] for i in images if (i.get("Platform") == "windows") == (os == "windows")))


# ---------------------------------------------------------------- answering through botocore


def serve(client: Any, handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """Answer these operations (by API name) of `client` with the handlers' bodies, validated
    against the output shapes; the client's other operations go on to moto."""
    service = client.meta.service_model.service_id.hyphenize()

    def answer(model: Any, context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        return _answer(model, context, handlers) if model.name in handlers else None

    for operation in handlers:
        client.meta.events.register(f"before-parameter-build.{service}.{operation}", _keep_params)
        client.meta.events.register(f"before-call.{service}.{operation}", answer)


def _keep_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    context[_PARAMS] = dict(params)


def _answer(
    model: Any, context: dict[str, Any], handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]
) -> tuple[AWSResponse, dict[str, Any]]:
    handler = handlers.get(model.name)
    if handler is None:
        raise AssertionError(f"{model.name} is not played by the fake (and moto does not implement it)")
    try:
        body = handler(context.pop(_PARAMS))
    except ServiceError as error:
        parsed = {
            "Error": {"Code": error.code, "Message": error.message},
            "ResponseMetadata": {"HTTPStatusCode": error.status},
        }
        return AWSResponse(None, error.status, {}, None), parsed
    validate_parameters(body, model.output_shape)  # the answer is one the SDK could get from AWS
    return AWSResponse(None, 200, {}, None), {**body, "ResponseMetadata": {"HTTPStatusCode": 200}}


def _page(
    items: Sequence[T], params: dict[str, Any], low: int, high: int, error: str
) -> tuple[list[T], dict[str, str]]:
    size = params.get("MaxResults", high)
    if not low <= size <= high:
        raise ServiceError(error, f"MaxResults must be between {low} and {high}")
    start = int(params.get("NextToken") or 0)
    more = {"NextToken": str(start + size)} if start + size < len(items) else {}
    return list(items[start : start + size]), more


def _ec2_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Error"))


# ---------------------------------------------------------------- the clients of the runtime


class Clients:
    """The runtime's `ClientFactory`: one boto3 client per (service, account, region), with
    PatchPilot's botocore configuration, on moto; SSM and EC2's replace-root-volume tasks are
    answered by `services`. Every API call is recorded (caller, service, operation, parameters)
    by a `before-call` hook registered first, so it also sees the calls the fake answers; the
    caller is whatever `caller` says at the time (the end-to-end tests name the function)."""

    def __init__(self, services: FleetServices) -> None:
        self.services = services
        self.clients: dict[tuple[str, str | None, str], Any] = {}
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []
        self.caller = ""
        self._failures: dict[str, list[str]] = {}  # operation -> error codes of its next calls

    def __call__(self, service: str, account: str | None, region: str) -> Any:
        key = (service, account, region)
        client = self.clients.get(key)
        if client is None:
            client = boto3.client(service, region_name=region, config=client_config())  # type: ignore[call-overload]
            client.meta.events.register_first("before-parameter-build.*.*", self._given)
            client.meta.events.register_first("before-call.*.*", self._record)
            client.meta.events.register("before-call.*.*", self._fail)
            if service == "ssm":
                self.services.serve_ssm(client)
            elif service == "ec2":
                self.services.serve_root_volume_tasks(client)
            self.clients[key] = client
        return client

    def _given(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["fake_aws.recorded"] = dict(params)

    def _record(self, event_name: str, context: dict[str, Any], **_: Any) -> None:
        service, operation = event_name.split(".", 2)[1:]
        self.calls.append((self.caller, service, operation, context.get("fake_aws.recorded", {})))

    def fail_next(self, operation: str, code: str, times: int = 1) -> None:
        """The next `times` calls of `operation` (on any client) get the error `code` (HTTP
        400: botocore does not retry it) without reaching moto or the fake."""
        self._failures.setdefault(operation, []).extend([code] * times)

    def _fail(self, model: Any, **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        planned = self._failures.get(model.name)
        if not planned:
            return None
        code = planned.pop(0)
        error = {
            "Error": {"Code": code, "Message": "injected by the test"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return AWSResponse(None, 400, {}, None), error

    def count(self, operation: str) -> int:
        return sum(1 for _, _, op, _ in self.calls if op == operation)

    def params(self, operation: str) -> list[dict[str, Any]]:
        return [params for _, _, op, params in self.calls if op == operation]

    def counts(self) -> Counter[tuple[str, str]]:
        return Counter((service, op) for _, service, op, _ in self.calls)


# ---------------------------------------------------------------- Lambda's SQS event source


@dataclass
class FakeLambdaContext:
    """What powertools reads of a Lambda context (as its own tests fake it)."""

    function_name: str
    region: str
    account: str = "123456789012"
    memory_limit_in_mb: int = 1024
    aws_request_id: str = "00000000-0000-4000-8000-000000000000"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function_name}"


class EventSourceMapping:
    """Lambda's SQS event source mapping (BatchSize 10, ReportBatchItemFailures) over moto's
    queue: receives a batch with the queue's visibility timeout, hands it to the function as an
    SQS event, deletes the records the function did not report in `batchItemFailures` and leaves
    the failed ones (all of them when the function raised) to come back after the visibility
    timeout; the redrive policy then moves a message received too often to the dead-letter
    queue, as on AWS. With nothing visible, the clock jumps to the next due message."""

    def __init__(self, queue_url: str, region: str, clock: ManualClock, batch_size: int = 10) -> None:
        self.url = queue_url
        self.region = region
        self.clock = clock
        self.batch_size = batch_size
        self.sqs = boto3.client("sqs", region_name=region)  # Lambda's own poller: not the function's calls
        self.arn = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.name = queue_url.rsplit("/", 1)[1]
        self.invocations = 0
        self.records = 0
        self.failed_records = 0

    def event(self, messages: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """The SQS event Lambda builds from received messages."""
        return {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": dict(m.get("Attributes", {})),
                    "messageAttributes": {
                        name: {
                            "stringValue": value.get("StringValue"),
                            "stringListValues": [],
                            "binaryListValues": [],
                            "dataType": value["DataType"],
                        }
                        for name, value in m.get("MessageAttributes", {}).items()
                    },
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.arn,
                    "awsRegion": self.region,
                }
                for m in messages
            ]
        }

    def poll(self, function: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
        """One batch, if any message is visible: False when none is."""
        messages = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return False
        self.invocations += 1
        self.records += len(messages)
        try:
            response = function(self.event(messages))
            failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
        except Exception:  # the whole invocation failed: every record comes back
            failed = {m["MessageId"] for m in messages}
        self.failed_records += len(failed)
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            entries = [
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done[start : start + 10])
            ]
            self.sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
        return True

    def drain(
        self,
        function: Callable[[dict[str, Any]], dict[str, Any]],
        max_invocations: int = 20_000,
        idle: Callable[[], bool] = lambda: False,
    ) -> None:
        """Invoke the function until the queue is empty, moving the clock to each next due
        message (delays, hops, visibility timeouts); with nothing visible and `idle()` true (a
        run waits for a person), it returns instead of moving the clock on."""
        for _ in range(max_invocations):
            if self.poll(function):
                continue
            due = next_due(self.name, self.region)
            if due is None or idle():
                return
            self.clock.set(max(due, self.clock.now() + timedelta(milliseconds=1)))
        raise AssertionError(f"the queue did not drain in {max_invocations} invocations")
