"""Host hooks (the policy's `before_install` / `after_install` scripts) through SSM Run Command:
`AWS-RunShellScript` on Linux, `AWS-RunPowerShellScript` on Windows, with `executionTimeout` from
the hook's timeout. One SendCommand per document per (account, region) for the whole command (50
instance ids a call), idempotent per command id as the install and the health script are: the
command id's token is in the Comment, and ListCommands finds what an earlier execution sent
before anything is sent again. Results are read in bulk once the SSM commands have finished
(ListCommandInvocations with Details, one per SSM command, never per instance); an outcome's detail
is the tail of the plugin's output (SSM's Output holds standard output, then standard error).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from patchpilot.batching import chunks, unique
from patchpilot.engine.messages import Outcome, RunHostHook
from patchpilot.inventory import Instance, OsFamily
from patchpilot.ports import InProgress, Progress

from ..access import (
    RUNNING_INVOCATION,
    SCRIPT_DOCUMENTS,
    SSM_IDS_PER_CALL,
    AwsAccess,
    Placement,
    by_placement,
    describe_error,
    error_code,
    invocation_failure,
    short_token,
    ssm_comment,
)
from .health import SCRIPT_TIMEOUT_MAX

if TYPE_CHECKING:
    from mypy_boto3_ssm.type_defs import CommandInvocationTypeDef

HOOK_POLL = timedelta(seconds=30)
TAIL = 500  # characters of the output kept in an outcome's detail
DENIED = frozenset({"AccessDenied", "AccessDeniedException"})


def run_hook(access: AwsAccess, command: RunHostHook) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda i: i.id)
    token = short_token(command.id)
    answers: dict[str, Outcome | None] = {}  # None: still running
    for placement, instances in by_placement(targets, lambda i: i).items():
        for os in ("linux", "windows"):
            group = [i for i in instances if i.os == os]
            if group:
                answers.update(_hook_in(access, placement, group, os, command, token, now))
    running = [i for i in targets if answers[i.id] is None]
    if running:
        note = f"{command.phase} hook: {len(targets) - len(running)}/{len(targets)} done"
        return InProgress(now + HOOK_POLL, note, tuple(a for a in answers.values() if a is not None))
    return [answer for i in targets if (answer := answers[i.id]) is not None]


def _hook_in(
    access: AwsAccess,
    placement: Placement,
    instances: Sequence[Instance],
    os: OsFamily,
    command: RunHostHook,
    token: str,
    now: datetime,
) -> dict[str, Outcome | None]:
    script = command.hook.script_for(os)
    if script is None:
        return {i.id: Outcome(id=i.id, ok=True, detail=f"no {os} script in the hook", at=now) for i in instances}
    ssm = access.ssm(placement)
    document = SCRIPT_DOCUMENTS[os]
    found = access.find_commands(ssm, document, token, now)
    covered = {i for c in found.values() for i in c.get("InstanceIds", [])}
    missing = sorted(i.id for i in instances if i.id not in covered)
    answers: dict[str, Outcome | None] = {}
    if missing:
        timeout = min(SCRIPT_TIMEOUT_MAX, max(30, int(command.hook.timeout.total_seconds())))
        for index, chunk in enumerate(chunks(missing, SSM_IDS_PER_CALL), start=len(found)):
            try:
                ssm.send_command(
                    InstanceIds=chunk,
                    DocumentName=document,
                    Parameters={"commands": [script], "executionTimeout": [str(timeout)]},
                    Comment=ssm_comment(token, f"k{os[0]}{index}", command.id),
                    MaxConcurrency="50",
                    MaxErrors="100%",
                )
            except ClientError as exc:
                why = f"{command.phase} hook not sent: SendCommand failed ({describe_error(exc)})"
                if error_code(exc) in DENIED:
                    why += f": needs ssm:SendCommand on {document} and the instance"
                answers.update({i: Outcome(id=i, ok=False, detail=why, at=now) for i in chunk})
                continue
            answers.update(dict.fromkeys(chunk))
        return answers
    results = access.command_results(ssm, list(found.values()), details=True)
    for instance in instances:
        invocation = results.get(instance.id) if results is not None else None
        if results is None or (invocation is not None and invocation.get("Status") in RUNNING_INVOCATION):
            answers[instance.id] = None
        elif invocation is None:
            detail = f"{command.phase} hook: SSM reported no invocation"
            answers[instance.id] = Outcome(id=instance.id, ok=False, detail=detail, at=now)
        else:
            ok = invocation.get("Status") == "Success"
            answers[instance.id] = Outcome(id=instance.id, ok=ok, detail=_said(document, invocation, ok), at=now)
    return answers


def _said(document: str, invocation: CommandInvocationTypeDef, ok: bool) -> str:
    """The output's tail; for a failure, the exit code (or SSM's status) first."""
    plugins = invocation.get("CommandPlugins", [])
    output = "".join(p.get("Output", "") for p in plugins).strip()
    tail = output[-TAIL:]
    if ok:
        return tail or "exit 0"
    code = plugins[0].get("ResponseCode") if plugins else None
    status = invocation.get("Status", "")
    head = (
        f"exit code {code}"
        if status == "Failed" and code not in (None, -1)
        else invocation_failure(document, invocation)
    )
    return f"{head}: {tail}" if tail else head
