"""Host hooks (RunHostHook): the policy's script on each machine as a managed Run Command, as the
health script runs (fleet/health.py): `patchpilot-before-install` or `patchpilot-after-install`,
tagged with the command id. Azure runs `source.script` as a shell script on Linux and as
PowerShell on Windows; the hook's timeout is the Run Command's `timeoutInSeconds`.

Idempotent per command id: each execution reads the machine's Run Command of that name first; one
tagged with this command is read, never started again; none (or another command's) is started,
replacing the older one. Ok on exit code 0; the detail is the output's tail (500 characters).
Arc-enabled servers run it through Hybrid Compute's machine Run Commands."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError

from patchpilot.batching import unique
from patchpilot.engine.messages import Outcome, RunHostHook
from patchpilot.ports import InProgress, Progress

from ..access import TAG_COMMAND, AzureAccess, at, describe_error, tag_value, tags_of, text
from .run_command import read_run_command, start_run_command

HOOK_POLL = timedelta(seconds=30)
TAIL = 500
RUN_COMMAND_WRITE = {
    False: "Microsoft.Compute/virtualMachines/runCommands/write",
    True: "Microsoft.HybridCompute/machines/runCommands/write",
}


def run_command_name(command: RunHostHook) -> str:
    return f"patchpilot-{command.phase.replace('_', '-')}"


def run_hook(access: AzureAccess, command: RunHostHook) -> Progress:
    now = access.clock.now()
    targets = unique(command.targets, lambda i: i.id)
    outcomes: dict[str, Outcome] = {}
    machines = access.parse(targets, outcomes, now)
    running: list[str] = []
    for instance in targets:
        machine = machines.get(instance.id)
        if machine is None:
            continue
        script = command.hook.script_for(instance.os)
        if script is None:
            detail = f"the {command.phase} hook has no {instance.os} script: nothing run"
            outcomes[instance.id] = Outcome(id=instance.id, ok=True, detail=detail, at=now)
            continue
        try:
            run = read_run_command(access, machine, run_command_name(command))
            if run is None or tags_of(run).get(TAG_COMMAND) != tag_value(command.id):
                start_run_command(
                    access,
                    machine,
                    instance,
                    run_command_name(command),
                    script,
                    command.hook.timeout,
                    command.id,
                    command.run_id,
                )
                running.append(f"{instance.name or machine.name} started")
                continue
        except HttpResponseError as exc:
            detail = f"{command.phase} hook not run: {describe_error(exc)}"
            if exc.status_code in (401, 403):
                detail += f" (needs {RUN_COMMAND_WRITE[machine.arc].removesuffix('/write')}/read and /write)"
            outcomes[instance.id] = Outcome(id=instance.id, ok=False, detail=detail, at=now)
            continue
        verdict = _verdict(command, run)
        if verdict is None:
            running.append(f"{instance.name or machine.name} running")
        else:
            ok, detail = verdict
            outcomes[instance.id] = Outcome(id=instance.id, ok=ok, detail=detail, at=now)
    if running:
        done = len(targets) - len(running)
        return InProgress(
            now + HOOK_POLL, f"{command.phase} hook: {done}/{len(targets)} done", tuple(outcomes.values())
        )
    return [outcomes[i.id] for i in targets]


def _verdict(command: RunHostHook, run: Any) -> tuple[bool, str] | None:
    """(ok, detail) of a finished Run Command; None while it runs."""
    view = at(run, "properties", "instanceView")
    state = text(view, "executionState")
    code = at(view, "exitCode")
    if state.lower() in ("", "pending", "running", "unknown"):
        return None
    output = text(view, "output").strip()
    error = text(view, "error").strip()
    ok = state.lower() == "succeeded" and (code is None or code == 0)
    if ok:
        return True, f"{command.phase} hook exit 0" + (f": {output[-TAIL:]}" if output else "")
    detail = f"{command.phase} hook {state.lower()}" + (f", exit code {code}" if code is not None else "")
    tail = "\n".join(part for part in (output, error) if part)
    return False, detail + (f": {tail[-TAIL:]}" if tail else "")
