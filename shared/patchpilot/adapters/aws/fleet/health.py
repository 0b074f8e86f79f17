"""Health checks after patching: the cloud's own (running, status checks 2/2, SSM agent back),
then the policy's CloudWatch alarms, HTTP probes and script (once per account, region and OS).
A check's start time is a tag on the instance (PatchPilotHealthCheck), written once."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from patchpilot.adapters.health import HttpProbe, UnsafeUrlValueError, fill, fill_url
from patchpilot.batching import chunks, unique
from patchpilot.engine.messages import CheckHealth, Outcome
from patchpilot.inventory import Instance, OsFamily
from patchpilot.policy.model import HealthChecks
from patchpilot.ports import InProgress, Progress
from patchpilot.verdict import Verdict

from ..access import (
    ALARMS_PER_CALL,
    RUNNING_INVOCATION,
    SCRIPT_DOCUMENTS,
    SSM_IDS_PER_CALL,
    STATUS_IDS_PER_CALL,
    TAG_HEALTH,
    TAGS_RESOURCES_PER_CALL,
    AwsAccess,
    Placement,
    agent_problem,
    by_placement,
    describe_error,
    error_code,
    instance_state,
    invocation_failure,
    short_token,
    ssm_comment,
    tags_of,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import InstanceStatusTypeDef, InstanceTypeDef
    from mypy_boto3_ssm.type_defs import CommandInvocationTypeDef, InstanceInformationTypeDef

HEALTH_POLL = timedelta(minutes=2)
# AWS-RunShellScript and AWS-RunPowerShellScript refuse an executionTimeout above 48 hours
# (the documents' allowedPattern; tests/fixtures/aws-published/ssm-documents.json).
SCRIPT_TIMEOUT_MAX = 172_800


def check_health(access: AwsAccess, command: CheckHealth, http: HttpProbe) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda i: i.id)
    checks = command.checks
    token = short_token(command.id)
    verdicts: dict[str, Verdict] = {}
    for placement, instances in by_placement(targets, lambda i: i).items():
        verdicts.update(_health_in(access, placement, instances, checks, token, command.id, now, http))
    waiting = [v for v in verdicts.values() if v.state == "wait"]
    if waiting:
        due = [v.deadline for v in waiting if v.deadline is not None and v.deadline > now]
        retry = min([now + HEALTH_POLL, *due])
        done = len(targets) - len(waiting)
        reasons = sorted({v.detail for v in waiting})
        return InProgress(retry, note=f"health: {done}/{len(targets)} done; waiting: {'; '.join(reasons)[:300]}")
    return [Outcome(id=i.id, ok=verdicts[i.id].state == "pass", detail=verdicts[i.id].detail, at=now) for i in targets]


def _health_in(
    access: AwsAccess,
    placement: Placement,
    instances: Sequence[Instance],
    checks: HealthChecks,
    token: str,
    command_id: str,
    now: datetime,
    http: HttpProbe,
) -> dict[str, Verdict]:
    ec2 = access.ec2(placement)
    ids = [i.id for i in instances]
    described = access.describe_instances(ec2, ids)
    starts = _health_starts(ec2, described, token, now)
    statuses = _instance_status(ec2, [i for i in ids if i in described])
    agents = access.agents(placement, [i for i in ids if i in described])
    verdicts: dict[str, Verdict] = {}
    for instance in instances:
        raw = described.get(instance.id)
        if raw is None:
            verdicts[instance.id] = Verdict("fail", "instance not found (terminated?)")
            continue
        deadline = starts[instance.id] + checks.timeout
        verdicts[instance.id] = _base_health(raw, statuses.get(instance.id), agents.get(instance.id)).timed(
            now, deadline, checks.timeout
        )
    passing = [i for i in instances if verdicts[i.id].state == "pass"]
    if checks.alarms and passing:
        _check_alarms(access, placement, passing, checks, verdicts, now, starts)
    if checks.http:
        for instance in [i for i in instances if verdicts[i.id].state == "pass"]:
            verdicts[instance.id] = _check_http(instance, described[instance.id], checks, verdicts[instance.id], http)
            verdicts[instance.id] = verdicts[instance.id].timed(
                now, starts[instance.id] + checks.timeout, checks.timeout
            )
    if checks.script is not None:
        _check_script(access, placement, instances, checks, verdicts, token, command_id, now)
    return verdicts


def _health_starts(
    ec2: EC2Client, described: dict[str, InstanceTypeDef], token: str, now: datetime
) -> dict[str, datetime]:
    """When this health check started on each instance: a tag written on first sight."""
    starts: dict[str, datetime] = {}
    fresh: list[str] = []
    for instance_id, raw in described.items():
        mark = tags_of(raw.get("Tags")).get(TAG_HEALTH, "")
        stamp = mark.split("@", 1)[1] if mark.startswith(f"{token}@") else ""
        try:
            starts[instance_id] = datetime.fromisoformat(stamp)
        except ValueError:
            fresh.append(instance_id)
            starts[instance_id] = now
    for chunk in chunks(sorted(fresh), TAGS_RESOURCES_PER_CALL):
        ec2.create_tags(Resources=chunk, Tags=[{"Key": TAG_HEALTH, "Value": f"{token}@{now.isoformat()}"}])
    return starts


def _instance_status(ec2: EC2Client, instance_ids: Sequence[str]) -> dict[str, InstanceStatusTypeDef]:
    result: dict[str, InstanceStatusTypeDef] = {}
    for chunk in chunks(sorted(set(instance_ids)), STATUS_IDS_PER_CALL):
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
                    if error_code(exc) == "InvalidInstanceID.NotFound"
                    else set()
                )
                if not gone:
                    raise
                remaining = [i for i in remaining if i not in gone]
                if not remaining:
                    break
    return result


def _check_alarms(
    access: AwsAccess,
    placement: Placement,
    passing: Sequence[Instance],
    checks: HealthChecks,
    verdicts: dict[str, Verdict],
    now: datetime,
    starts: dict[str, datetime],
) -> None:
    """Every alarm must be OK; names may hold {id} and {name} for per-instance alarms."""
    wanted = {i.id: [fill(a, i, "") for a in checks.alarms] for i in passing}
    names = sorted({name for names in wanted.values() for name in names})
    cloudwatch = access.cloudwatch(placement)
    states: dict[str, str] = {}
    for chunk in chunks(names, ALARMS_PER_CALL):
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
                verdicts[instance.id] = Verdict("fail", f"alarm {name} not found")
                break
            if state != "OK":
                problems.append(f"alarm {name} is {state}")
        else:
            verdict = verdicts[instance.id]
            if problems:
                deadline = starts[instance.id] + checks.timeout
                verdict = Verdict("wait", "; ".join(problems)).timed(now, deadline, checks.timeout)
            else:
                count = len(wanted[instance.id])
                verdict = verdict.plus(f"{count} alarm{'s' if count != 1 else ''} OK")
            verdicts[instance.id] = verdict


def _check_http(
    instance: Instance, raw: InstanceTypeDef, checks: HealthChecks, verdict: Verdict, http: HttpProbe
) -> Verdict:
    answers = []
    for template in checks.http:
        try:
            url = fill_url(template, instance, raw.get("PrivateIpAddress", ""))
        except UnsafeUrlValueError as exc:  # waiting will not make the value usable
            return Verdict("fail", str(exc))
        try:
            status = http.get(url, http.timeout)
        except Exception as exc:  # any failure to get an answer is a failed check
            return Verdict("wait", f"GET {url}: {type(exc).__name__}: {exc}"[:300])
        if not 200 <= status < 300:
            return Verdict("wait", f"GET {url}: HTTP {status}")
        answers.append(str(status))
    return verdict.plus(f"HTTP {', '.join(answers)}")


def _check_script(
    access: AwsAccess,
    placement: Placement,
    instances: Sequence[Instance],
    checks: HealthChecks,
    verdicts: dict[str, Verdict],
    token: str,
    command_id: str,
    now: datetime,
) -> None:
    """Run the policy's script once per (account, region, OS) group, when every instance
    of the group has passed or failed the checks above; exit 0 is healthy."""
    assert checks.script is not None
    ssm = access.ssm(placement)
    oses: tuple[OsFamily, ...] = ("linux", "windows")
    for os in oses:
        script = checks.script_for(os)
        group = [i for i in instances if i.os == os]
        if script is None or not group:
            continue
        if any(verdicts[i.id].state == "wait" for i in group):
            continue  # the script runs once the whole group is ready
        ready = [i.id for i in group if verdicts[i.id].state == "pass"]
        if not ready:
            continue
        document = SCRIPT_DOCUMENTS[os]
        found = access.find_commands(ssm, document, token, now)
        covered = {i for c in found.values() for i in c.get("InstanceIds", [])}
        missing = sorted(i for i in ready if i not in covered)
        if missing:
            timeout = min(SCRIPT_TIMEOUT_MAX, max(30, int(checks.timeout.total_seconds())))
            for index, chunk in enumerate(chunks(missing, SSM_IDS_PER_CALL), start=len(found)):
                label = f"h{os[0]}{index}"
                try:
                    ssm.send_command(
                        InstanceIds=chunk,
                        DocumentName=document,
                        Parameters={"commands": [script], "executionTimeout": [str(timeout)]},
                        Comment=ssm_comment(token, label, command_id),
                        MaxConcurrency="50",
                        MaxErrors="100%",
                    )
                except ClientError as exc:
                    for instance_id in chunk:
                        verdicts[instance_id] = Verdict("fail", f"health script not sent: {describe_error(exc)}")
                    continue
                for instance_id in chunk:
                    verdicts[instance_id] = Verdict("wait", "health script sent", None)
            continue
        results = access.command_results(ssm, list(found.values()), details=True)
        for instance_id in ready:
            if results is None:
                verdicts[instance_id] = Verdict("wait", "health script running", None)
                continue
            invocation = results.get(instance_id)
            if invocation is None:
                verdicts[instance_id] = Verdict("fail", "no health script invocation reported by SSM")
            elif invocation.get("Status") in RUNNING_INVOCATION:
                verdicts[instance_id] = Verdict("wait", "health script running", None)
            elif invocation.get("Status") == "Success":
                verdicts[instance_id] = verdicts[instance_id].plus("script exit 0")
            else:
                verdicts[instance_id] = Verdict("fail", f"health script: {_script_failure(invocation)}")


def _base_health(
    raw: InstanceTypeDef, status: InstanceStatusTypeDef | None, agent: InstanceInformationTypeDef | None
) -> Verdict:
    """The cloud's own checks: the instance runs, both status checks are ok, the agent is back."""
    state = instance_state(raw)
    if state in ("stopped", "stopping", "shutting-down", "terminated"):
        return Verdict("fail", f"instance is {state}")
    if state != "running":
        return Verdict("wait", f"instance is {state}")
    instance_status = (status or {}).get("InstanceStatus", {}).get("Status", "initializing")
    system_status = (status or {}).get("SystemStatus", {}).get("Status", "initializing")
    if instance_status != "ok" or system_status != "ok":
        return Verdict("wait", f"status checks: instance {instance_status}, system {system_status}")
    problem = agent_problem(agent)
    if problem is not None:
        return Verdict("wait", f"{problem} after the reboot")
    return Verdict("pass", "status checks 2/2 passed, SSM agent online")


def _script_failure(invocation: CommandInvocationTypeDef) -> str:
    status = invocation.get("Status", "unknown")
    plugins = invocation.get("CommandPlugins", [])
    code = plugins[0].get("ResponseCode") if plugins else None
    output = (plugins[0].get("Output") or "").strip() if plugins else ""
    text = f"exit code {code}" if code is not None and code != -1 else invocation_failure("", invocation).strip()
    if status not in ("Failed", "Success"):
        text = f"{status} ({invocation.get('StatusDetails', '')})".replace(" ()", "")
    if output:
        text += f": {output[-200:]}"
    return text
