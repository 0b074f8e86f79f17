"""The AWS fleet: EC2 for inventory, snapshots, status checks and root-volume replacement; Systems
Manager (SSM) for agents, patching and health scripts; CloudWatch alarms and HTTP for the
policy's own health checks.

Every method is idempotent per command id and keeps no state of its own: each execution
re-derives the operation's progress from the clouds, finding what an earlier execution started
by a mark it left there, before starting anything:

- snapshots carry the tags PatchPilotCommand/PatchPilotInstance (one DescribeSnapshots per
  account and region lists all snapshots of the command);
- SSM commands carry the command id in their Comment (SendCommand has no client token and
  ListCommands cannot filter on the Comment, so ListCommands is filtered by document and
  InvokedAfter, and the comments are matched here);
- root-volume replacement tasks are created with a ClientToken derived from the command and
  instance ids and tagged with the command id (found again by DescribeReplaceRootVolumeTasks);
- volumes restored from data volume snapshots are created with a ClientToken derived from the
  command id, instance id and device, and tagged PatchPilotCommand/PatchPilotInstance/
  PatchPilotDevice; the originals they replace are kept and tagged PatchPilotReplacedBy; whether
  to stop, detach, attach or start is read from the instance's state and device mappings;
- a health check's start time is a tag on the instance, written once;
- override files (InstallOverrideList for a pinned later ring, BaselineOverride for an install
  of only the named patches: an emergency run's first ring) have S3 keys derived from the run
  and command ids, so a redelivery rewrites the same object before the same SendCommand.

Calls are batched per (account, region): at most 50 ids per SSM call, 100-200 per EC2 call.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from botocore.exceptions import ClientError

from patchpilot.adapters.health import HttpGet, UnsafeUrlValueError, fill, fill_url, urllib_get
from patchpilot.engine.messages import (
    CheckHealth,
    InstallPatches,
    InstallTarget,
    Outcome,
    ProbeAgents,
    RestoreTarget,
    RollBack,
    TakeSnapshots,
)
from patchpilot.inventory import Instance, OsFamily
from patchpilot.policy.model import HealthChecks, Policy
from patchpilot.ports import Clock, DiscoveryResult, InProgress, Progress

from .sessions import AwsSessions, ClientFactory

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import (
        FilterTypeDef,
        InstanceStatusTypeDef,
        InstanceTypeDef,
        ReplaceRootVolumeTaskTypeDef,
        SnapshotTypeDef,
        VolumeTypeDef,
    )
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_ssm.type_defs import (
        CommandInvocationTypeDef,
        CommandTypeDef,
        InstanceInformationTypeDef,
    )

    from patchpilot.compliance.model import AssessmentStarted, PatchState
    from patchpilot.maintenance.model import WatchResult

T = TypeVar("T")
Placement = tuple[str | None, str]  # (account, region)

TAG_RUN = "PatchPilotRun"
TAG_WAVE = "PatchPilotWave"
TAG_COMMAND = "PatchPilotCommand"
TAG_INSTANCE = "PatchPilotInstance"
TAG_HEALTH = "PatchPilotHealthCheck"  # "<command token>@<ISO time the check started>"
TAG_DEVICE = "PatchPilotDevice"  # on a restored data volume: the device it replaces
TAG_REPLACED_BY = "PatchPilotReplacedBy"  # on an original data volume: the volume that replaced it

PATCH_DOCUMENT = "AWS-RunPatchBaseline"
SCRIPT_DOCUMENTS: dict[OsFamily, str] = {"linux": "AWS-RunShellScript", "windows": "AWS-RunPowerShellScript"}
COMMENT_PREFIX = "patchpilot"
COMMENT_MAX = 100  # SendCommand Comment limit

SSM_IDS_PER_CALL = 50  # SendCommand InstanceIds, DescribeInstanceInformation page
STATUS_IDS_PER_CALL = 100  # DescribeInstanceStatus InstanceIds
FILTER_VALUES_PER_CALL = 200  # EC2 filter values
ALARMS_PER_CALL = 100  # DescribeAlarms AlarmNames
TAGS_RESOURCES_PER_CALL = 1000  # CreateTags Resources

SNAPSHOT_POLL = timedelta(minutes=3)
INSTALL_POLL = timedelta(minutes=5)
HEALTH_POLL = timedelta(minutes=2)
ROLLBACK_POLL = timedelta(minutes=2)
COMMAND_LOOKBACK = timedelta(days=7)  # how far back ListCommands looks for a command's SSM commands

RUNNING_COMMAND = frozenset({"Pending", "InProgress", "Cancelling"})
RUNNING_INVOCATION = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})
RUNNING_TASK = frozenset({"pending", "in-progress", "failing"})
INSTALLED_STATES = ["Installed", "InstalledOther", "InstalledPendingReboot"]


def fleet_for_policy(policy: Policy, clock: Clock, **kwargs: Any) -> Ec2SsmFleet:
    """The fleet of a policy: its accounts' roles assumed, its first region the default."""
    settings = policy.aws
    roles = {account.id: account.role for account in settings.accounts} if settings else {}
    if settings and settings.regions:
        kwargs.setdefault("default_region", settings.regions[0])
    return Ec2SsmFleet(AwsSessions(roles), clock, **kwargs)


class Ec2SsmFleet:
    """A `FleetProvider` over EC2 and Systems Manager, plus discovery of the fleet, its patch
    compliance (`PatchAssessor`) and the maintenance AWS has scheduled (`MaintenanceSource`)."""

    cloud: Final = "aws"

    def __init__(
        self,
        client: ClientFactory,
        clock: Clock,
        *,
        override_bucket: str | None = None,
        override_bucket_region: str | None = None,
        default_region: str = "us-east-1",
        http_get: HttpGet = urllib_get,
        http_timeout: float = 5.0,
        command_lookback: timedelta = COMMAND_LOOKBACK,
    ) -> None:
        """`client` builds boto3 clients per (service, account, region) (see `AwsSessions`);
        `override_bucket` receives the InstallOverrideList files of pinned (later-ring) installs
        and the BaselineOverride files of named-only (emergency) installs, and must be readable
        by the instances' profiles in every account."""
        self._client = client
        self.clock = clock
        self.override_bucket = override_bucket
        self.override_bucket_region = override_bucket_region or default_region
        self.default_region = default_region
        self.http_get = http_get
        self.http_timeout = http_timeout
        self.command_lookback = command_lookback

    # ------------------------------------------------------------ typed clients

    def _ec2(self, placement: Placement) -> EC2Client:
        client: EC2Client = self._client("ec2", placement[0], placement[1])
        return client

    def _ssm(self, placement: Placement) -> SSMClient:
        client: SSMClient = self._client("ssm", placement[0], placement[1])
        return client

    def _cloudwatch(self, placement: Placement) -> CloudWatchClient:
        client: CloudWatchClient = self._client("cloudwatch", placement[0], placement[1])
        return client

    def _s3(self) -> S3Client:
        client: S3Client = self._client("s3", None, self.override_bucket_region)
        return client

    # ------------------------------------------------------------ compliance and maintenance watch

    def start_assessment(self, instances: Sequence[Instance], token: str) -> AssessmentStarted:
        """`AWS-RunPatchBaseline` Scans, idempotent per token (adapters/aws/compliance.py)."""
        from .compliance import start_assessment

        return start_assessment(self, instances, token)

    def patch_states(self, instances: Sequence[Instance]) -> list[PatchState]:
        """Patch states read in bulk (adapters/aws/compliance.py)."""
        from .compliance import patch_states

        return patch_states(self, instances)

    def upcoming_maintenance(self, policy: Policy, instances: Sequence[Instance], now: datetime) -> WatchResult:
        """EC2 scheduled events, RDS pending maintenance, Health changes (adapters/aws/maintenance.py)."""
        from .maintenance import upcoming_maintenance

        return upcoming_maintenance(self, policy, instances, now)

    # ------------------------------------------------------------ discovery

    def discover(self, policy: Policy) -> DiscoveryResult:
        """The policy's AWS instances (running or stopped) in its accounts and regions, each
        marked unreachable when its SSM agent is offline or it is not a managed instance."""
        settings = policy.aws
        regions = list(settings.regions) if settings and settings.regions else [self.default_region]
        accounts: list[str | None] = [a.id for a in settings.accounts] if settings and settings.accounts else [None]
        found: list[Instance] = []
        unreachable: list[tuple[Instance, str]] = []
        for account in accounts:
            for region in regions:
                queries = _discovery_queries(policy, region)
                if not queries:
                    continue
                placement = (account, region)
                instances = self._describe_for_discovery(placement, queries)
                agents = self._agents(placement, [i.id for i, _ in instances])
                for instance, state in instances:
                    found.append(instance)
                    reason = _agent_problem(agents.get(instance.id))
                    if reason is not None:
                        if state != "running":
                            reason = f"instance {state}; {reason}"
                        unreachable.append((instance, reason))
        return DiscoveryResult(found, unreachable)

    def _describe_for_discovery(
        self, placement: Placement, queries: list[list[FilterTypeDef]]
    ) -> list[tuple[Instance, str]]:
        ec2 = self._ec2(placement)
        seen: dict[str, tuple[Instance, str]] = {}
        for filters in queries:
            pages = ec2.get_paginator("describe_instances").paginate(
                Filters=filters, PaginationConfig={"PageSize": 1000}
            )
            for page in pages:
                for reservation in page.get("Reservations", []):
                    owner = reservation.get("OwnerId") or placement[0]
                    for raw in reservation.get("Instances", []):
                        instance_id = raw.get("InstanceId", "")
                        if instance_id and instance_id not in seen:
                            seen[instance_id] = (_to_instance(raw, placement[1], owner), _state(raw))
        return [seen[key] for key in sorted(seen)]

    # ------------------------------------------------------------ probe

    def probe_agents(self, command: ProbeAgents) -> Progress:
        now = self.clock.now()
        targets = _unique(command.targets, lambda i: i.id)
        agents: dict[str, InstanceInformationTypeDef] = {}
        for placement, instances in _by_placement(targets, lambda i: i).items():
            agents.update(self._agents(placement, [i.id for i in instances]))
        outcomes = []
        for instance in targets:
            info = agents.get(instance.id)
            problem = _agent_problem(info)
            if problem is None:
                version = (info or {}).get("AgentVersion")
                detail = f"SSM agent online (agent {version})" if version else "SSM agent online"
                outcomes.append(Outcome(id=instance.id, ok=True, detail=detail, at=now))
            else:
                outcomes.append(Outcome(id=instance.id, ok=False, detail=problem, at=now))
        return outcomes

    def _agents(self, placement: Placement, instance_ids: Sequence[str]) -> dict[str, InstanceInformationTypeDef]:
        """SSM's record of each managed instance among `instance_ids` (absent: not managed)."""
        ssm = self._ssm(placement)
        wanted = set(instance_ids)
        result: dict[str, InstanceInformationTypeDef] = {}
        for chunk in _chunks(sorted(wanted), SSM_IDS_PER_CALL):
            try:
                pages = ssm.get_paginator("describe_instance_information").paginate(
                    Filters=[{"Key": "InstanceIds", "Values": chunk}], PaginationConfig={"PageSize": 50}
                )
                infos = [info for page in pages for info in page.get("InstanceInformationList", [])]
            except ClientError as exc:
                if _code(exc) != "InvalidInstanceId":
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

    # ------------------------------------------------------------ snapshots

    def take_snapshots(self, command: TakeSnapshots) -> Progress:
        now = self.clock.now()
        targets = _unique(command.targets, lambda i: i.id)
        snapshots: dict[str, list[SnapshotTypeDef]] = {}
        errors: dict[str, str] = {}
        created: set[str] = set()
        for placement, instances in _by_placement(targets, lambda i: i).items():
            ec2 = self._ec2(placement)
            existing = self._command_snapshots(ec2, command.id)
            for instance in instances:
                if existing.get(instance.id):
                    snapshots[instance.id] = existing[instance.id]
                    continue
                try:
                    answer = ec2.create_snapshots(
                        Description=f"PatchPilot {command.id} {instance.id}"[:255],
                        InstanceSpecification={"InstanceId": instance.id, "ExcludeBootVolume": False},
                        TagSpecifications=[
                            {
                                "ResourceType": "snapshot",
                                "Tags": [
                                    {"Key": TAG_RUN, "Value": command.run_id},
                                    {"Key": TAG_WAVE, "Value": "" if command.wave is None else str(command.wave)},
                                    {"Key": TAG_COMMAND, "Value": command.id},
                                    {"Key": TAG_INSTANCE, "Value": instance.id},
                                ],
                            }
                        ],
                        CopyTagsFromSource="volume",
                    )
                except ClientError as exc:
                    errors[instance.id] = f"CreateSnapshots failed: {_describe_error(exc)}"
                    continue
                if not answer.get("Snapshots"):
                    errors[instance.id] = "CreateSnapshots made no snapshot: the instance has no EBS volume"
                    continue
                created.add(instance.id)
        pending = [
            i.id
            for i in targets
            if i.id in created
            or (
                i.id not in errors and not _snapshot_error(snapshots.get(i.id, [])) and not _all_completed(snapshots, i)
            )
        ]
        if pending:
            done = len(targets) - len(pending)
            return InProgress(now + SNAPSHOT_POLL, note=f"snapshots: {done}/{len(targets)} instances done")
        order = self._volume_order([i for i in targets if _all_completed(snapshots, i)])
        outcomes = []
        for instance in targets:
            own = snapshots.get(instance.id, [])
            failure = errors.get(instance.id) or _snapshot_error(own)
            if failure:
                outcomes.append(Outcome(id=instance.id, ok=False, detail=failure, at=now))
                continue
            rank = order.get(instance.id, {})
            own = sorted(own, key=lambda s: (rank.get(s.get("VolumeId", ""), (2, "")), s.get("SnapshotId", "")))
            ids = [s["SnapshotId"] for s in own]
            root_found = any(rank.get(s.get("VolumeId", ""), (2, ""))[0] == 0 for s in own)
            volumes = "1 volume" if len(ids) == 1 else f"{len(ids)} volumes"
            detail = f"snapshotted {volumes}" + ("" if root_found else " (root volume not identified)")
            outcomes.append(Outcome(id=instance.id, ok=True, detail=detail, items=ids, at=now))
        return outcomes

    def _command_snapshots(self, ec2: EC2Client, command_id: str) -> dict[str, list[SnapshotTypeDef]]:
        """This command's snapshots in one account and region, by instance id."""
        pages = ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"],
            Filters=[{"Name": f"tag:{TAG_COMMAND}", "Values": [command_id]}],
            PaginationConfig={"PageSize": 1000},
        )
        found: dict[str, list[SnapshotTypeDef]] = {}
        for page in pages:
            for snapshot in page.get("Snapshots", []):
                tags = _tags(snapshot.get("Tags"))
                if tags.get(TAG_COMMAND) == command_id and TAG_INSTANCE in tags:
                    found.setdefault(tags[TAG_INSTANCE], []).append(snapshot)
        return found

    def _volume_order(self, instances: Sequence[Instance]) -> dict[str, dict[str, tuple[int, str]]]:
        """Per instance, each attached volume's sort key: the root volume first, then by device."""
        order: dict[str, dict[str, tuple[int, str]]] = {}
        for placement, group in _by_placement(instances, lambda i: i).items():
            for raw in self._describe_instances(self._ec2(placement), [i.id for i in group]).values():
                root = raw.get("RootDeviceName")
                ranks: dict[str, tuple[int, str]] = {}
                for mapping in raw.get("BlockDeviceMappings", []):
                    volume = mapping.get("Ebs", {}).get("VolumeId")
                    device = mapping.get("DeviceName", "")
                    if volume:
                        ranks[volume] = (0 if device == root else 1, device)
                order[raw.get("InstanceId", "")] = ranks
        return order

    def _describe_instances(self, ec2: EC2Client, instance_ids: Sequence[str]) -> dict[str, InstanceTypeDef]:
        """The instances that still exist, by id (an instance-id filter: unknown ids are no error)."""
        result: dict[str, InstanceTypeDef] = {}
        for chunk in _chunks(sorted(set(instance_ids)), FILTER_VALUES_PER_CALL):
            pages = ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-id", "Values": chunk}], PaginationConfig={"PageSize": 1000}
            )
            for page in pages:
                for reservation in page.get("Reservations", []):
                    for raw in reservation.get("Instances", []):
                        result[raw.get("InstanceId", "")] = raw
        return result

    # ------------------------------------------------------------ install

    def install_patches(self, command: InstallPatches) -> Progress:
        now = self.clock.now()
        targets = _unique(command.targets, lambda t: t.instance.id)
        outcomes: dict[str, Outcome] = {}
        waiting: list[str] = []
        token = _token(command.id)
        sendable: list[InstallTarget] = []
        for target in targets:
            if target.only is not None and not target.only:
                outcomes[target.instance.id] = Outcome(
                    id=target.instance.id, ok=True, detail="nothing to install: the promoted patch set is empty", at=now
                )
            elif target.only is not None and not self.override_bucket:
                detail = "a pinned patch set needs an override bucket for InstallOverrideList; not installed"
                outcomes[target.instance.id] = Outcome(id=target.instance.id, ok=False, detail=detail, at=now)
            elif target.only is None and named_only(command):
                refused = _named_problem(command, target.instance.os, bool(self.override_bucket))
                if refused is None:
                    sendable.append(target)
                else:
                    ok, detail = refused
                    outcomes[target.instance.id] = Outcome(id=target.instance.id, ok=ok, detail=detail, at=now)
            else:
                sendable.append(target)
        parts = _install_parts(sendable)
        overrides = _override_keys(command, sendable)
        for placement, group in _group(parts, lambda p: p.placement).items():
            ssm = self._ssm(placement)
            found = self._find_commands(ssm, PATCH_DOCUMENT, token, now)
            sent = False
            for part in group:
                if part.label in found:
                    continue
                try:
                    found[part.label] = self._send_install(ssm, command, part, token, overrides)
                    sent = True
                    continue
                except ClientError as exc:
                    if _code(exc) != "InvalidInstanceId":
                        for instance_id in part.instance_ids:
                            detail = f"SendCommand {PATCH_DOCUMENT} failed: {_describe_error(exc)}"
                            outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail=detail, at=now)
                        continue
                # SSM refuses the whole call when one instance is not ready: send to the rest.
                agents = self._agents(placement, part.instance_ids)
                ready = tuple(i for i in part.instance_ids if _agent_problem(agents.get(i)) is None)
                for instance_id in part.instance_ids:
                    problem = _agent_problem(agents.get(instance_id))
                    if problem is not None:
                        detail = f"not sent: {problem} when the install was sent"
                        outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail=detail, at=now)
                if not ready or len(ready) == len(part.instance_ids):
                    for instance_id in ready:
                        detail = f"SendCommand {PATCH_DOCUMENT} failed: InvalidInstanceId"
                        outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail=detail, at=now)
                    continue
                try:
                    subset = replace(part, instance_ids=ready)
                    found[part.label] = self._send_install(ssm, command, subset, token, overrides)
                    sent = True
                except ClientError as exc:
                    for instance_id in ready:
                        detail = f"SendCommand {PATCH_DOCUMENT} failed: {_describe_error(exc)}"
                        outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail=detail, at=now)
            if sent:
                waiting.extend(i for p in group for i in p.instance_ids if i not in outcomes)
                continue
            results = self._command_results(ssm, [found[p.label] for p in group if p.label in found], details=False)
            if results is None:
                waiting.extend(i for p in group for i in p.instance_ids if i not in outcomes)
                continue
            for part in group:
                ssm_command = found.get(part.label)
                if ssm_command is None:
                    continue  # sending failed: reported above
                for instance_id in part.instance_ids:
                    outcome = self._install_outcome(ssm, ssm_command, results.get(instance_id), instance_id, command)
                    if outcome is None:
                        waiting.append(instance_id)
                    else:
                        outcomes[instance_id] = outcome.model_copy(update={"at": now})
        if waiting:
            done = len(targets) - len(set(waiting))
            return InProgress(now + INSTALL_POLL, note=f"install: {done}/{len(targets)} instances done")
        return [outcomes[t.instance.id] for t in targets]

    def _send_install(
        self, ssm: SSMClient, command: InstallPatches, part: _Part, token: str, overrides: dict[_GroupKey, str]
    ) -> CommandTypeDef:
        parameters = {
            "Operation": ["Install"],
            "RebootOption": ["NoReboot" if command.reboot == "never" else "RebootIfNeeded"],
        }
        if part.pinned is not None:
            assert self.override_bucket is not None, "checked before the parts were planned"
            key = overrides[part.key]
            import yaml  # only pinned installs need it

            body = yaml.safe_dump({"patches": [{"id": patch} for patch in part.pinned]}, sort_keys=False)
            self._s3().put_object(
                Bucket=self.override_bucket, Key=key, Body=body.encode(), ContentType="application/x-yaml"
            )
            parameters["InstallOverrideList"] = [f"s3://{self.override_bucket}/{key}"]
        elif named_only(command):
            assert self.override_bucket is not None, "checked before the parts were planned"
            key = overrides[part.key]
            document = _baseline_override(command, part.key[2])
            assert not isinstance(document, str), "checked before the parts were planned"
            body = json.dumps(document, indent=2)
            self._s3().put_object(
                Bucket=self.override_bucket, Key=key, Body=body.encode(), ContentType="application/json"
            )
            parameters["BaselineOverride"] = [f"s3://{self.override_bucket}/{key}"]
        extra: dict[str, Any] = {}
        if command.max_duration is not None:
            # Not started by then (agent busy, instance asleep): do not start at all.
            extra["TimeoutSeconds"] = max(30, min(int(command.max_duration.total_seconds()), 2_592_000))
        answer = ssm.send_command(
            InstanceIds=list(part.instance_ids),
            DocumentName=PATCH_DOCUMENT,
            Parameters=parameters,
            Comment=_comment(token, part.label, command.id),
            MaxConcurrency="50",
            MaxErrors="100%",  # one instance failing must not cancel the others: the engine judges
            **extra,
        )
        return answer["Command"]

    def _install_outcome(
        self,
        ssm: SSMClient,
        ssm_command: CommandTypeDef,
        invocation: CommandInvocationTypeDef | None,
        instance_id: str,
        command: InstallPatches,
    ) -> Outcome | None:
        if instance_id not in ssm_command.get("InstanceIds", [instance_id]):
            detail = (
                "not sent: SSM did not accept the instance (agent offline or not managed) when the install was sent"
            )
            return Outcome(id=instance_id, ok=False, detail=detail)
        if invocation is None:
            return Outcome(id=instance_id, ok=False, detail=f"no {PATCH_DOCUMENT} invocation reported by SSM")
        status = invocation.get("Status", "")
        if status in RUNNING_INVOCATION:
            return None
        if status != "Success":
            return Outcome(id=instance_id, ok=False, detail=_invocation_failure(PATCH_DOCUMENT, invocation))
        since = ssm_command.get("RequestedDateTime") or invocation.get("RequestedDateTime")
        patches = self._installed_patches(ssm, instance_id, since)
        count = "1 patch" if len(patches) == 1 else f"{len(patches)} patches"
        tail = "no reboot (reboot: never)" if command.reboot == "never" else "rebooted if needed"
        return Outcome(id=instance_id, ok=True, detail=f"{count} installed, {tail}", items=patches)

    def _installed_patches(self, ssm: SSMClient, instance_id: str, since: datetime | None) -> list[str]:
        """The patches installed by this command: one paginated DescribeInstancePatches."""
        pages = ssm.get_paginator("describe_instance_patches").paginate(
            InstanceId=instance_id,
            Filters=[{"Key": "State", "Values": INSTALLED_STATES}],
            PaginationConfig={"PageSize": 100},
        )
        found: list[str] = []
        for page in pages:
            for patch in page.get("Patches", []):
                installed = patch.get("InstalledTime")
                if since is not None and installed is not None and not _installed_since(installed, since):
                    continue
                name = patch.get("KBId") or patch.get("Title")
                if name and name not in found:
                    found.append(name)
        return found

    # ------------------------------------------------------------ SSM commands, found again

    def _find_commands(self, ssm: SSMClient, document: str, token: str, now: datetime) -> dict[str, CommandTypeDef]:
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

    def _command_results(
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

    # ------------------------------------------------------------ health

    def check_health(self, command: CheckHealth) -> Progress:
        now = self.clock.now()
        targets = _unique(command.targets, lambda i: i.id)
        checks = command.checks
        token = _token(command.id)
        verdicts: dict[str, _Verdict] = {}
        for placement, instances in _by_placement(targets, lambda i: i).items():
            verdicts.update(self._health_in(placement, instances, checks, token, command.id, now))
        waiting = [v for v in verdicts.values() if v.state == "wait"]
        if waiting:
            due = [v.deadline for v in waiting if v.deadline is not None and v.deadline > now]
            retry = min([now + HEALTH_POLL, *due])
            done = len(targets) - len(waiting)
            reasons = sorted({v.detail for v in waiting})
            return InProgress(retry, note=f"health: {done}/{len(targets)} done; waiting: {'; '.join(reasons)[:300]}")
        return [
            Outcome(id=i.id, ok=verdicts[i.id].state == "pass", detail=verdicts[i.id].detail, at=now) for i in targets
        ]

    def _health_in(
        self,
        placement: Placement,
        instances: Sequence[Instance],
        checks: HealthChecks,
        token: str,
        command_id: str,
        now: datetime,
    ) -> dict[str, _Verdict]:
        ec2 = self._ec2(placement)
        ids = [i.id for i in instances]
        described = self._describe_instances(ec2, ids)
        starts = self._health_starts(ec2, described, token, now)
        statuses = self._instance_status(ec2, [i for i in ids if i in described])
        agents = self._agents(placement, [i for i in ids if i in described])
        verdicts: dict[str, _Verdict] = {}
        for instance in instances:
            raw = described.get(instance.id)
            if raw is None:
                verdicts[instance.id] = _Verdict("fail", "instance not found (terminated?)")
                continue
            deadline = starts[instance.id] + checks.timeout
            verdicts[instance.id] = _base_health(raw, statuses.get(instance.id), agents.get(instance.id)).timed(
                now, deadline, checks.timeout
            )
        passing = [i for i in instances if verdicts[i.id].state == "pass"]
        if checks.alarms and passing:
            self._check_alarms(placement, passing, checks, verdicts, now, starts)
        if checks.http:
            for instance in [i for i in instances if verdicts[i.id].state == "pass"]:
                verdicts[instance.id] = self._check_http(
                    instance, described[instance.id], checks, verdicts[instance.id]
                )
                verdicts[instance.id] = verdicts[instance.id].timed(
                    now, starts[instance.id] + checks.timeout, checks.timeout
                )
        if checks.script is not None:
            self._check_script(placement, instances, checks, verdicts, token, command_id, now)
        return verdicts

    def _health_starts(
        self, ec2: EC2Client, described: dict[str, InstanceTypeDef], token: str, now: datetime
    ) -> dict[str, datetime]:
        """When this health check started on each instance: a tag written on first sight."""
        starts: dict[str, datetime] = {}
        fresh: list[str] = []
        for instance_id, raw in described.items():
            mark = _tags(raw.get("Tags")).get(TAG_HEALTH, "")
            stamp = mark.split("@", 1)[1] if mark.startswith(f"{token}@") else ""
            try:
                starts[instance_id] = datetime.fromisoformat(stamp)
            except ValueError:
                fresh.append(instance_id)
                starts[instance_id] = now
        for chunk in _chunks(sorted(fresh), TAGS_RESOURCES_PER_CALL):
            ec2.create_tags(Resources=chunk, Tags=[{"Key": TAG_HEALTH, "Value": f"{token}@{now.isoformat()}"}])
        return starts

    def _instance_status(self, ec2: EC2Client, instance_ids: Sequence[str]) -> dict[str, InstanceStatusTypeDef]:
        result: dict[str, InstanceStatusTypeDef] = {}
        for chunk in _chunks(sorted(set(instance_ids)), STATUS_IDS_PER_CALL):
            remaining = list(chunk)
            for _ in range(2):  # once more without the ids EC2 says no longer exist
                try:
                    pages = ec2.get_paginator("describe_instance_status").paginate(
                        InstanceIds=remaining, IncludeAllInstances=True
                    )
                    for page in pages:
                        for status in page.get("InstanceStatuses", []):
                            result[status.get("InstanceId", "")] = status
                    break
                except ClientError as exc:
                    gone = (
                        set(re.findall(r"i-[0-9a-f]+", str(exc)))
                        if _code(exc) == "InvalidInstanceID.NotFound"
                        else set()
                    )
                    if not gone:
                        raise
                    remaining = [i for i in remaining if i not in gone]
                    if not remaining:
                        break
        return result

    def _check_alarms(
        self,
        placement: Placement,
        passing: Sequence[Instance],
        checks: HealthChecks,
        verdicts: dict[str, _Verdict],
        now: datetime,
        starts: dict[str, datetime],
    ) -> None:
        """Every alarm must be OK; names may hold {id} and {name} for per-instance alarms."""
        wanted = {i.id: [fill(a, i, "") for a in checks.alarms] for i in passing}
        names = sorted({name for names in wanted.values() for name in names})
        cloudwatch = self._cloudwatch(placement)
        states: dict[str, str] = {}
        for chunk in _chunks(names, ALARMS_PER_CALL):
            pages = cloudwatch.get_paginator("describe_alarms").paginate(
                AlarmNames=chunk, AlarmTypes=["MetricAlarm", "CompositeAlarm"]
            )
            for page in pages:
                for alarm in [*page.get("MetricAlarms", []), *page.get("CompositeAlarms", [])]:
                    states[alarm.get("AlarmName", "")] = alarm.get("StateValue", "")
        for instance in passing:
            problems = []
            for name in wanted[instance.id]:
                state = states.get(name)
                if state is None:
                    verdicts[instance.id] = _Verdict("fail", f"alarm {name} not found")
                    break
                if state != "OK":
                    problems.append(f"alarm {name} is {state}")
            else:
                verdict = verdicts[instance.id]
                if problems:
                    deadline = starts[instance.id] + checks.timeout
                    verdict = _Verdict("wait", "; ".join(problems)).timed(now, deadline, checks.timeout)
                else:
                    count = len(wanted[instance.id])
                    verdict = verdict.plus(f"{count} alarm{'s' if count != 1 else ''} OK")
                verdicts[instance.id] = verdict

    def _check_http(
        self, instance: Instance, raw: InstanceTypeDef, checks: HealthChecks, verdict: _Verdict
    ) -> _Verdict:
        answers = []
        for template in checks.http:
            try:
                url = fill_url(template, instance, raw.get("PrivateIpAddress", ""))
            except UnsafeUrlValueError as exc:  # waiting will not make the value usable
                return _Verdict("fail", str(exc))
            try:
                status = self.http_get(url, self.http_timeout)
            except Exception as exc:  # any failure to get an answer is a failed check
                return _Verdict("wait", f"GET {url}: {type(exc).__name__}: {exc}"[:300])
            if not 200 <= status < 300:
                return _Verdict("wait", f"GET {url}: HTTP {status}")
            answers.append(str(status))
        return verdict.plus(f"HTTP {', '.join(answers)}")

    def _check_script(
        self,
        placement: Placement,
        instances: Sequence[Instance],
        checks: HealthChecks,
        verdicts: dict[str, _Verdict],
        token: str,
        command_id: str,
        now: datetime,
    ) -> None:
        """Run the policy's script once per (account, region, OS) group, when every instance
        of the group has passed or failed the checks above; exit 0 is healthy."""
        assert checks.script is not None
        ssm = self._ssm(placement)
        for os in ("linux", "windows"):
            script = checks.script.linux if os == "linux" else checks.script.windows
            group = [i for i in instances if i.os == os]
            if script is None or not group:
                continue
            if any(verdicts[i.id].state == "wait" for i in group):
                continue  # the script runs once the whole group is ready
            ready = [i.id for i in group if verdicts[i.id].state == "pass"]
            if not ready:
                continue
            document = SCRIPT_DOCUMENTS[os]
            found = self._find_commands(ssm, document, token, now)
            covered = {i for c in found.values() for i in c.get("InstanceIds", [])}
            missing = sorted(i for i in ready if i not in covered)
            if missing:
                timeout = max(30, int(checks.timeout.total_seconds()))
                for index, chunk in enumerate(_chunks(missing, SSM_IDS_PER_CALL), start=len(found)):
                    label = f"h{os[0]}{index}"
                    try:
                        ssm.send_command(
                            InstanceIds=chunk,
                            DocumentName=document,
                            Parameters={"commands": [script], "executionTimeout": [str(timeout)]},
                            Comment=_comment(token, label, command_id),
                            MaxConcurrency="50",
                            MaxErrors="100%",
                        )
                    except ClientError as exc:
                        for instance_id in chunk:
                            verdicts[instance_id] = _Verdict("fail", f"health script not sent: {_describe_error(exc)}")
                        continue
                    for instance_id in chunk:
                        verdicts[instance_id] = _Verdict("wait", "health script sent", None)
                continue
            results = self._command_results(ssm, list(found.values()), details=True)
            for instance_id in ready:
                if results is None:
                    verdicts[instance_id] = _Verdict("wait", "health script running", None)
                    continue
                invocation = results.get(instance_id)
                if invocation is None:
                    verdicts[instance_id] = _Verdict("fail", "no health script invocation reported by SSM")
                elif invocation.get("Status") in RUNNING_INVOCATION:
                    verdicts[instance_id] = _Verdict("wait", "health script running", None)
                elif invocation.get("Status") == "Success":
                    verdicts[instance_id] = verdicts[instance_id].plus("script exit 0")
                else:
                    verdicts[instance_id] = _Verdict("fail", f"health script: {_script_failure(invocation)}")

    # ------------------------------------------------------------ rollback

    def roll_back(self, command: RollBack) -> Progress:
        now = self.clock.now()
        targets = _unique(command.targets, lambda t: t.instance.id)
        outcomes: dict[str, Outcome] = {}
        waiting = 0
        for placement, group in _by_placement(targets, lambda t: t.instance).items():
            ec2 = self._ec2(placement)
            tasks = self._command_tasks(ec2, [t.instance.id for t in group], command.id)
            restoring = {t.instance.id for t in group if command.restore_data_volumes and len(t.snapshot_ids) > 1}
            volumes = (
                self._data_volumes(ec2, command.id, [t for t in group if t.instance.id in restoring])
                if restoring
                else None
            )
            for target in group:
                instance_id = target.instance.id
                if not target.snapshot_ids:
                    outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail="no snapshot to restore from")
                    continue
                task = tasks.get(instance_id)
                if task is None:
                    try:
                        task = self._replace_root(ec2, command, target)
                    except ClientError as exc:
                        detail = (
                            f"CreateReplaceRootVolumeTask from {target.snapshot_ids[0]} failed: {_describe_error(exc)}"
                        )
                        outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail=detail)
                        continue
                outcome = _rollback_outcome(task, target)
                if volumes is not None and instance_id in restoring and (outcome is None or outcome.ok):
                    outcome = self._restore_data(ec2, command, target, volumes, root=outcome)
                if outcome is None:
                    waiting += 1
                else:
                    outcomes[instance_id] = outcome
        if waiting:
            done = len(targets) - waiting
            return InProgress(now + ROLLBACK_POLL, note=f"rollback: {done}/{len(targets)} instances restored")
        return [outcomes[t.instance.id].model_copy(update={"at": now}) for t in targets]

    def _data_volumes(self, ec2: EC2Client, command_id: str, targets: Sequence[RestoreTarget]) -> _DataVolumes:
        """What a data-volume restore needs to know, read afresh from EC2: the instances, their
        data volume snapshots, the volumes those were taken of, and the volumes this command
        restored (found by their PatchPilotCommand tag)."""
        instances = self._describe_instances(ec2, [t.instance.id for t in targets])
        snapshot_ids = sorted({s for t in targets for s in t.snapshot_ids[1:]})
        snapshots: dict[str, SnapshotTypeDef] = {}
        for chunk in _chunks(snapshot_ids, FILTER_VALUES_PER_CALL):
            pages = ec2.get_paginator("describe_snapshots").paginate(
                OwnerIds=["self"],
                Filters=[{"Name": "snapshot-id", "Values": chunk}],
                PaginationConfig={"PageSize": 1000},
            )
            snapshots.update((s["SnapshotId"], s) for page in pages for s in page.get("Snapshots", []))
        originals = self._volumes(ec2, "volume-id", sorted({s.get("VolumeId", "") for s in snapshots.values()} - {""}))
        restored = self._volumes(ec2, f"tag:{TAG_COMMAND}", [command_id])
        return _DataVolumes(instances, snapshots, originals, list(restored.values()))

    def _volumes(self, ec2: EC2Client, name: str, values: Sequence[str]) -> dict[str, VolumeTypeDef]:
        """The volumes whose filter `name` has one of `values`, by id."""
        found: dict[str, VolumeTypeDef] = {}
        for chunk in _chunks(values, FILTER_VALUES_PER_CALL):
            pages = ec2.get_paginator("describe_volumes").paginate(
                Filters=[{"Name": name, "Values": chunk}], PaginationConfig={"PageSize": 500}
            )
            found.update((v["VolumeId"], v) for page in pages for v in page.get("Volumes", []))
        return found

    def _restore_data(
        self,
        ec2: EC2Client,
        command: RollBack,
        target: RestoreTarget,
        volumes: _DataVolumes,
        root: Outcome | None,
    ) -> Outcome | None:
        """One more step of restoring an instance's data volumes (None: not done yet). The
        volumes are created while the root volume is replaced; once it has been and they are
        available, the instance is stopped, each original volume detached (kept, tagged
        PatchPilotReplacedBy), the restored one attached at its device, and the instance
        started again. Every step is chosen from what EC2 shows now."""
        instance_id = target.instance.id
        raw = volumes.instances.get(instance_id)

        def failed(detail: str) -> Outcome:
            prefix = f"{root.detail}; " if root is not None else ""
            return Outcome(
                id=instance_id, ok=False, detail=f"{prefix}data volumes: {detail}", items=target.snapshot_ids[:1]
            )

        if raw is None:
            return failed("instance not found (terminated?)")
        plan: list[_DataVolume] = []
        mapped = _device_map(raw)
        for snapshot_id in target.snapshot_ids[1:]:
            snapshot = volumes.snapshots.get(snapshot_id)
            if snapshot is None:
                return failed(f"snapshot {snapshot_id} not found")
            original = snapshot.get("VolumeId", "")
            restored = volumes.restored_from(instance_id, snapshot_id)
            if restored is not None:
                device = _tags(restored.get("Tags")).get(TAG_DEVICE, "")
                if not device:
                    return failed(f"restored volume {restored.get('VolumeId', '?')} has no {TAG_DEVICE} tag")
            else:
                device = next((d for d, (v, _) in mapped.items() if v == original), "")
                if not device:
                    return failed(f"volume {original} of snapshot {snapshot_id} is no longer attached; not restored")
                if device == raw.get("RootDeviceName"):
                    return failed(f"snapshot {snapshot_id} is of the root volume {original}, not of a data volume")
                try:
                    restored = self._create_volume(ec2, command, raw, snapshot, device, volumes.originals.get(original))
                except ClientError as exc:
                    return failed(f"{device}: CreateVolume from {snapshot_id} failed: {_describe_error(exc)}")
            plan.append(_DataVolume(device, snapshot_id, original, restored))
        for item in plan:
            state = item.restored.get("State", "")
            if state in ("error", "deleting", "deleted"):
                return failed(f"{item.device}: restored volume {item.volume_id} from {item.snapshot_id} is {state}")
        if root is None or any(i.restored.get("State") not in ("available", "in-use") for i in plan):
            return None  # the root volume is being replaced, or the data volumes created
        state = _state(raw)
        if all(mapped.get(i.device) == (i.volume_id, "attached") for i in plan):
            for item in plan:
                problem = self._mark_replaced(ec2, volumes, item)
                if problem:
                    return failed(problem)
            if state == "running":
                swapped = ", ".join(f"{i.device} {i.volume_id} from {i.snapshot_id}" for i in plan)
                kept = ", ".join(i.original for i in plan)
                detail = (
                    f"{root.detail}; data volumes restored: {swapped}; original data volumes kept "
                    f"(detached, tagged {TAG_REPLACED_BY}): {kept}"
                )
                return Outcome(id=instance_id, ok=True, detail=detail, items=list(target.snapshot_ids))
            if state == "stopped":
                try:
                    ec2.start_instances(InstanceIds=[instance_id])
                except ClientError as exc:
                    return failed(f"StartInstances failed after the volumes were swapped: {_describe_error(exc)}")
                return None
            if state in ("pending", "stopping"):
                return None
            return failed(f"instance is {state}")
        if state == "running":
            try:
                ec2.stop_instances(InstanceIds=[instance_id])
            except ClientError as exc:
                return failed(f"StopInstances failed: {_describe_error(exc)}")
            return None
        if state in ("pending", "stopping"):
            return None
        if state != "stopped":
            return failed(f"instance is {state}")
        for item in plan:
            current = mapped.get(item.device)
            if current is None:
                try:
                    ec2.attach_volume(VolumeId=item.volume_id, InstanceId=instance_id, Device=item.device)
                except ClientError as exc:
                    return failed(
                        f"{item.device}: AttachVolume of {item.volume_id} failed: {_describe_error(exc)}; "
                        f"the instance is left stopped, the original volume {item.original} kept (detached)"
                    )
            elif current[0] == item.original and current[1] == "attached":
                problem = self._mark_replaced(ec2, volumes, item)
                if problem:
                    return failed(problem)
                try:
                    ec2.detach_volume(VolumeId=item.original, InstanceId=instance_id, Device=item.device)
                except ClientError as exc:
                    return failed(
                        f"{item.device}: DetachVolume of {item.original} failed: {_describe_error(exc)}; "
                        "the instance is left stopped"
                    )
            elif current[0] not in (item.original, item.volume_id):
                return failed(
                    f"{item.device}: volume {current[0]} is attached, neither the original {item.original} "
                    f"nor the restored {item.volume_id}; the instance is left stopped"
                )
        return None

    def _create_volume(
        self,
        ec2: EC2Client,
        command: RollBack,
        raw: InstanceTypeDef,
        snapshot: SnapshotTypeDef,
        device: str,
        original: VolumeTypeDef | None,
    ) -> VolumeTypeDef:
        """A volume from `snapshot` in the instance's zone, like the original; idempotent by
        its ClientToken, and found again by its tags."""
        instance_id = raw.get("InstanceId", "")
        extra: dict[str, Any] = {}
        kind = (original or {}).get("VolumeType")
        if kind:
            extra["VolumeType"] = kind
            if kind in ("io1", "io2", "gp3") and (original or {}).get("Iops"):
                extra["Iops"] = (original or {})["Iops"]
            if kind == "gp3" and (original or {}).get("Throughput"):
                extra["Throughput"] = (original or {})["Throughput"]
        if snapshot.get("Encrypted"):
            extra["Encrypted"] = True
            if snapshot.get("KmsKeyId"):
                extra["KmsKeyId"] = snapshot["KmsKeyId"]
        answer = ec2.create_volume(
            SnapshotId=snapshot["SnapshotId"],
            AvailabilityZone=raw.get("Placement", {}).get("AvailabilityZone", ""),
            ClientToken=client_token(command.id, instance_id, device),
            TagSpecifications=[
                {
                    "ResourceType": "volume",
                    "Tags": [
                        {"Key": TAG_RUN, "Value": command.run_id},
                        {"Key": TAG_COMMAND, "Value": command.id},
                        {"Key": TAG_INSTANCE, "Value": instance_id},
                        {"Key": TAG_DEVICE, "Value": device},
                    ],
                }
            ],
            **extra,
        )
        volume: VolumeTypeDef = {k: v for k, v in answer.items() if k != "ResponseMetadata"}  # type: ignore[assignment]
        return volume

    def _mark_replaced(self, ec2: EC2Client, volumes: _DataVolumes, item: _DataVolume) -> str:
        """Tag the original volume PatchPilotReplacedBy=<restored volume> unless it is already;
        a problem, or ''."""
        original = volumes.originals.get(item.original)
        if original is None or _tags(original.get("Tags")).get(TAG_REPLACED_BY) == item.volume_id:
            return ""
        try:
            ec2.create_tags(Resources=[item.original], Tags=[{"Key": TAG_REPLACED_BY, "Value": item.volume_id}])
        except ClientError as exc:
            return f"{item.device}: CreateTags {TAG_REPLACED_BY} on {item.original} failed: {_describe_error(exc)}"
        return ""

    def _command_tasks(
        self, ec2: EC2Client, instance_ids: Sequence[str], command_id: str
    ) -> dict[str, ReplaceRootVolumeTaskTypeDef]:
        """The replace-root-volume tasks this command created, by instance id."""
        found: dict[str, ReplaceRootVolumeTaskTypeDef] = {}
        for chunk in _chunks(sorted(set(instance_ids)), FILTER_VALUES_PER_CALL):
            pages = ec2.get_paginator("describe_replace_root_volume_tasks").paginate(
                Filters=[{"Name": "instance-id", "Values": chunk}], PaginationConfig={"PageSize": 50}
            )
            for page in pages:
                for task in page.get("ReplaceRootVolumeTasks", []):
                    if _tags(task.get("Tags")).get(TAG_COMMAND) == command_id:
                        found[task.get("InstanceId", "")] = task
        return found

    def _replace_root(self, ec2: EC2Client, command: RollBack, target: RestoreTarget) -> ReplaceRootVolumeTaskTypeDef:
        instance_id = target.instance.id
        answer = ec2.create_replace_root_volume_task(
            InstanceId=instance_id,
            SnapshotId=target.snapshot_ids[0],
            ClientToken=client_token(command.id, instance_id),
            DeleteReplacedRootVolume=False,  # kept for forensics; the operator deletes it
            TagSpecifications=[
                {
                    "ResourceType": "replace-root-volume-task",
                    "Tags": [
                        {"Key": TAG_RUN, "Value": command.run_id},
                        {"Key": TAG_COMMAND, "Value": command.id},
                        {"Key": TAG_INSTANCE, "Value": instance_id},
                    ],
                }
            ],
        )
        return answer["ReplaceRootVolumeTask"]


# ---------------------------------------------------------------- helpers: identities


def _token(command_id: str) -> str:
    """A short, stable stand-in for a command id where space is scarce (SSM comments, tags)."""
    return hashlib.sha256(command_id.encode()).hexdigest()[:16]


def client_token(command_id: str, instance_id: str, part: str = "") -> str:
    """The EC2 idempotency token of one instance's operation in one command (64 hex chars),
    per `part` of the instance (a device name) when given."""
    key = f"{command_id}\x1f{instance_id}" + (f"\x1f{part}" if part else "")
    return hashlib.sha256(key.encode()).hexdigest()[:64]


def _comment(token: str, label: str, command_id: str) -> str:
    """`patchpilot <token> <part> <command id>`, cut at SSM's 100 characters: the token and part
    identify the SSM command; the command id is there for people."""
    return f"{COMMENT_PREFIX} {token} {label} {command_id}"[:COMMENT_MAX]


def _requested(ssm_command: CommandTypeDef) -> datetime:
    return ssm_command.get("RequestedDateTime") or datetime.max.replace(tzinfo=UTC)


# ---------------------------------------------------------------- helpers: grouping


def _chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _unique(items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """The first item per key, in order."""
    seen: dict[str, T] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return list(seen.values())


K = TypeVar("K")


def _group(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    result: dict[K, list[T]] = {}
    for item in items:
        result.setdefault(key(item), []).append(item)
    return result


def _by_placement(items: Iterable[T], instance: Callable[[T], Instance]) -> dict[Placement, list[T]]:
    """Items per (account, region), in a stable order of placements and of items within."""
    groups = _group(items, lambda item: (instance(item).account, instance(item).region))
    return {key: groups[key] for key in sorted(groups, key=lambda p: (p[0] or "", p[1]))}


_GroupKey = tuple[str | None, str, OsFamily, tuple[str, ...] | None]


@dataclass(frozen=True)
class _Part:
    """One SendCommand of an install: ≤50 instances of one (account, region, OS, pinned set)."""

    key: _GroupKey
    label: str
    instance_ids: tuple[str, ...]

    @property
    def placement(self) -> Placement:
        return (self.key[0], self.key[1])

    @property
    def pinned(self) -> tuple[str, ...] | None:
        return self.key[3]


def _install_parts(targets: Sequence[InstallTarget]) -> list[_Part]:
    """Deterministic parts: the same command always yields the same labels and members."""
    groups: dict[_GroupKey, list[str]] = {}
    for target in targets:
        instance = target.instance
        pinned = tuple(dict.fromkeys(target.only)) if target.only is not None else None
        groups.setdefault((instance.account, instance.region, instance.os, pinned), []).append(instance.id)
    parts = []
    for key in sorted(groups, key=lambda k: (k[0] or "", k[1], k[2], k[3] is not None, k[3] or ())):
        digest = hashlib.sha256(repr((key[2], key[3])).encode()).hexdigest()[:8]
        for index, chunk in enumerate(_chunks(sorted(groups[key]), SSM_IDS_PER_CALL)):
            parts.append(_Part(key, f"{key[2][0]}{digest}.{index}", tuple(chunk)))
    return parts


_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9._=-]+")


def named_only(command: InstallPatches) -> bool:
    """Does the command install only the patches it names (an emergency run's first ring: the
    advisory's fixes, no classification)? The instances' baselines would approve more, so such a
    command carries a BaselineOverride of exactly those patches."""
    return not command.classifications and bool(command.include) and command.maintenance_run is None


def _baseline_override(command: InstallPatches, os: OsFamily) -> list[dict[str, object]] | str:
    from .baselines import override_baselines  # only emergency installs need it

    return override_baselines(os == "windows", command.include, command.exclude)


def _named_problem(command: InstallPatches, os: OsFamily, has_bucket: bool) -> tuple[bool, str] | None:
    """Why an instance of `os` gets no BaselineOverride install, as (ok, detail), or None."""
    document = _baseline_override(command, os)
    if isinstance(document, str):
        return False, f"{document}; not installed"
    if not document:
        kind = "Windows update" if os == "windows" else "Linux package"
        return True, f"nothing to install: none of the named patches ({', '.join(command.include)}) is a {kind}"
    if not has_bucket:
        return False, "installing only the named patches needs an override bucket for BaselineOverride; not installed"
    return None


def _override_keys(command: InstallPatches, targets: Sequence[InstallTarget]) -> dict[_GroupKey, str]:
    """S3 keys of the override files: runs/<run>/<command>/<os>.yaml for InstallOverrideList,
    with a digest of the set added when one OS has several pinned sets in the command, and
    runs/<run>/<command>/<os>-baseline.json for the BaselineOverride of a named-only install
    (the same key for the same command, so a redelivery rewrites the same object)."""
    prefix = f"runs/{_UNSAFE_KEY.sub('_', command.run_id)}/{_UNSAFE_KEY.sub('_', command.id)}"
    sets: dict[OsFamily, set[tuple[str, ...]]] = {}
    keys: dict[_GroupKey, str] = {}
    for part in _install_parts(targets):
        if part.pinned is not None:
            sets.setdefault(part.key[2], set()).add(part.pinned)
    for part in _install_parts(targets):
        if part.pinned is None:
            if named_only(command):
                keys[part.key] = f"{prefix}/{part.key[2]}-baseline.json"
            continue
        os = part.key[2]
        if len(sets[os]) == 1:
            keys[part.key] = f"{prefix}/{os}.yaml"
        else:
            digest = hashlib.sha256("\n".join(part.pinned).encode()).hexdigest()[:8]
            keys[part.key] = f"{prefix}/{os}-{digest}.yaml"
    return keys


# ---------------------------------------------------------------- helpers: reading AWS answers


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe_error(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")


def _tags(tags: Iterable[Any] | None) -> dict[str, str]:
    return {str(t.get("Key", "")): str(t.get("Value", "")) for t in tags or []}


def _state(raw: InstanceTypeDef) -> str:
    return str(raw.get("State", {}).get("Name", "unknown"))


def _to_instance(raw: InstanceTypeDef, region: str, account: str | None) -> Instance:
    tags = _tags(raw.get("Tags"))
    platform = (raw.get("Platform") or "").lower()
    details = (raw.get("PlatformDetails") or "").lower()
    os: OsFamily = "windows" if platform == "windows" or details.startswith("windows") else "linux"
    return Instance(
        id=raw.get("InstanceId", ""),
        cloud="aws",
        region=region,
        os=os,
        name=tags.get("Name", ""),
        zone=raw.get("Placement", {}).get("AvailabilityZone") or None,
        tags=tags,
        account=account,
    )


def _discovery_queries(policy: Policy, region: str) -> list[list[FilterTypeDef]]:
    """DescribeInstances filter sets whose union covers every ring's selector in this region
    (EC2 filters AND, so rings are separate queries); one unfiltered query when a ring selects
    by something EC2 cannot filter on (OS only, say)."""
    state: FilterTypeDef = {"Name": "instance-state-name", "Values": ["running", "stopped"]}
    queries: list[list[FilterTypeDef]] = []
    for ring in policy.rings:
        select = ring.select
        if select.clouds and "aws" not in select.clouds:
            continue
        if select.regions and region not in select.regions:
            continue
        filters: list[FilterTypeDef] = [state]
        for key, values in sorted(select.tags.items()):
            filters.append({"Name": f"tag:{key}", "Values": ["*"] if "*" in values else list(values)})
        if select.ids:
            filters.append({"Name": "instance-id", "Values": list(select.ids)})
        if len(filters) == 1:
            return [[state]]
        if filters not in queries:
            queries.append(filters)
    return queries


def _agent_problem(info: InstanceInformationTypeDef | None) -> str | None:
    if info is None:
        return "not a managed instance (no SSM agent registered)"
    ping = info.get("PingStatus", "")
    if ping == "Online":
        return None
    return f"SSM agent {ping or 'status unknown'}"


def _snapshot_error(snapshots: Sequence[SnapshotTypeDef]) -> str:
    for snapshot in snapshots:
        if snapshot.get("State") == "error":
            message = snapshot.get("StateMessage") or "no reason given"
            return f"snapshot {snapshot.get('SnapshotId', '?')} failed: {message}"
    return ""


def _all_completed(snapshots: dict[str, list[SnapshotTypeDef]], instance: Instance) -> bool:
    own = snapshots.get(instance.id, [])
    return bool(own) and all(s.get("State") == "completed" for s in own)


def _installed_since(installed: datetime, since: datetime) -> bool:
    """Installed by a command requested at `since`. Windows often reports only the date."""
    if installed.tzinfo is None:
        installed = installed.replace(tzinfo=UTC)
    if (installed.hour, installed.minute, installed.second, installed.microsecond) == (0, 0, 0, 0):
        return installed.date() >= since.astimezone(installed.tzinfo).date()
    return installed >= since


def _invocation_failure(document: str, invocation: CommandInvocationTypeDef) -> str:
    status = invocation.get("Status", "unknown")
    details = invocation.get("StatusDetails", "")
    return f"{document} {status}" + (f" ({details})" if details and details != status else "")


def _script_failure(invocation: CommandInvocationTypeDef) -> str:
    status = invocation.get("Status", "unknown")
    plugins = invocation.get("CommandPlugins", [])
    code = plugins[0].get("ResponseCode") if plugins else None
    output = (plugins[0].get("Output") or "").strip() if plugins else ""
    text = f"exit code {code}" if code is not None and code != -1 else _invocation_failure("", invocation).strip()
    if status not in ("Failed", "Success"):
        text = f"{status} ({invocation.get('StatusDetails', '')})".replace(" ()", "")
    if output:
        text += f": {output[-200:]}"
    return text


# ---------------------------------------------------------------- helpers: health verdicts


@dataclass(frozen=True)
class _Verdict:
    """One instance's health so far: pass (with what passed), wait (why), or fail (why)."""

    state: Literal["pass", "wait", "fail"]
    detail: str
    deadline: datetime | None = None

    def plus(self, passed: str) -> _Verdict:
        return _Verdict(self.state, f"{self.detail}, {passed}" if self.detail else passed, self.deadline)

    def timed(self, now: datetime, deadline: datetime, timeout: timedelta) -> _Verdict:
        """A wait past the deadline is a failure."""
        if self.state != "wait":
            return self
        if now >= deadline:
            return _Verdict("fail", f"{self.detail} (still after {_duration(timeout)})")
        return _Verdict("wait", self.detail, deadline)


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 60:
        return f"{seconds} s"
    return f"{seconds // 60} min"


def _base_health(
    raw: InstanceTypeDef, status: InstanceStatusTypeDef | None, agent: InstanceInformationTypeDef | None
) -> _Verdict:
    """The cloud's own checks: the instance runs, both status checks are ok, the agent is back."""
    state = _state(raw)
    if state in ("stopped", "stopping", "shutting-down", "terminated"):
        return _Verdict("fail", f"instance is {state}")
    if state != "running":
        return _Verdict("wait", f"instance is {state}")
    instance_status = (status or {}).get("InstanceStatus", {}).get("Status", "initializing")
    system_status = (status or {}).get("SystemStatus", {}).get("Status", "initializing")
    if instance_status != "ok" or system_status != "ok":
        return _Verdict("wait", f"status checks: instance {instance_status}, system {system_status}")
    problem = _agent_problem(agent)
    if problem is not None:
        return _Verdict("wait", f"{problem} after the reboot")
    return _Verdict("pass", "status checks 2/2 passed, SSM agent online")


def _rollback_outcome(task: ReplaceRootVolumeTaskTypeDef, target: RestoreTarget) -> Outcome | None:
    """The root volume's part of a rollback (None: the replacement is still running)."""
    instance_id = target.instance.id
    source = task.get("SnapshotId") or target.snapshot_ids[0]
    state = task.get("TaskState", "")
    task_id = task.get("ReplaceRootVolumeTaskId", "?")
    if state in RUNNING_TASK:
        return None
    if state == "failed-detached":
        detail = (
            f"root volume replacement {task_id} from {source} failed-detached: the instance has no root volume "
            "attached; attach the original volume by hand"
        )
        return Outcome(id=instance_id, ok=False, detail=detail)
    if state != "succeeded":
        return Outcome(id=instance_id, ok=False, detail=f"root volume replacement {task_id} from {source} {state}")
    return Outcome(id=instance_id, ok=True, detail=f"root volume restored from {source} ({task_id})", items=[source])


@dataclass(frozen=True)
class _DataVolumes:
    """One placement's view of the data volumes a rollback restores."""

    instances: dict[str, InstanceTypeDef]
    snapshots: dict[str, SnapshotTypeDef]
    originals: dict[str, VolumeTypeDef]  # the volumes the snapshots were taken of, by id
    restored: list[VolumeTypeDef]  # the volumes this command created

    def restored_from(self, instance_id: str, snapshot_id: str) -> VolumeTypeDef | None:
        """The command's volume for this instance from this snapshot: an attached one first,
        then the lowest id (should two exist)."""
        found = [
            v
            for v in self.restored
            if v.get("SnapshotId") == snapshot_id and _tags(v.get("Tags")).get(TAG_INSTANCE) == instance_id
        ]
        found.sort(key=lambda v: (v.get("State") != "in-use", v.get("VolumeId", "")))
        return found[0] if found else None


@dataclass(frozen=True)
class _DataVolume:
    device: str
    snapshot_id: str
    original: str  # the volume the snapshot was taken of
    restored: VolumeTypeDef

    @property
    def volume_id(self) -> str:
        return self.restored.get("VolumeId", "")


def _device_map(raw: InstanceTypeDef) -> dict[str, tuple[str, str]]:
    """device -> (EBS volume id, attachment status) of the instance."""
    return {
        m.get("DeviceName", ""): (m.get("Ebs", {}).get("VolumeId", ""), m.get("Ebs", {}).get("Status", ""))
        for m in raw.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("VolumeId")
    }
