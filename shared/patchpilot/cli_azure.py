"""`patchpilot azure ...`: Azure Update Manager in step with a policy.

`cli.py` registers the group (`main.add_command(azure)`) and imports this module, so the helpers
of `cli.py` are looked up when a command runs, never at import time. The Azure SDKs are imported
only when a command builds its own clients: the CLI works without the `azure` extra installed.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, assert_never

import click
from rich.console import Console
from rich.table import Table

from patchpilot.adapters.azure.update_manager import (
    Blocked,
    Change,
    CreateAssignment,
    CreateConfiguration,
    DeleteAssignment,
    DeleteConfiguration,
    MachineAudit,
    UpdateAssignment,
    UpdateConfiguration,
    apply_each,
    audit,
    change_document,
    desired,
    diff,
    fix_patch_settings,
    patchpilot_schedules,
    policy_problems,
    read_actual,
    read_assignments,
    read_machines,
)
from patchpilot.cli_common import print_json, reports_input_errors
from patchpilot.errors import InputError, Problem
from patchpilot.inputs import parse_yaml, read_text
from patchpilot.policy import Policy, load_policy
from patchpilot.policy.model import AzureSettings

if TYPE_CHECKING:
    from patchpilot.adapters.azure.clients import AzureClients


EXIT_IN_ORDER = 0  # nothing differs / no finding, or everything was applied / fixed
EXIT_DIFFERS = 1  # a dry run found something, or some of it could not be applied
MAX_IDS_SHOWN = 6


@click.group()
def azure() -> None:
    """Azure: Update Manager schedules and patch orchestration modes from the policy."""
    # azure-identity logs every credential it tried as a warning; the command's own error says it once
    logging.getLogger("azure.identity").setLevel(logging.ERROR)


# ---------------------------------------------------------------- audit


@dataclass
class AuditResult:
    machines: list[MachineAudit] = field(default_factory=list)
    fixed: set[str] = field(default_factory=set)  # machine ids
    failed: dict[str, str] = field(default_factory=dict)  # machine id -> error
    error: str | None = None


@azure.command("audit")
@click.option("--policy", "policy_path", required=True, metavar="FILE", help="Policy file (YAML).")
@click.option("--fix", "do_fix", is_flag=True, help="Set Customer Managed Schedules where a finding says so.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
@reports_input_errors
def audit_command(ctx: click.Context, policy_path: str, do_fix: bool, as_json: bool) -> None:
    """Report every VM's patch orchestration mode and what it means for its schedule and for PatchPilot.

    Report only unless --fix: exit 0 when nothing is found (or all of it was fixed), 1 when
    something is (or could not be fixed), 2 for bad input. The table: docs/azure-update-manager.md."""
    policy = load_policy(policy_path)
    settings = _azure(policy, policy_path)
    clients: AzureClients = ctx.obj if ctx.obj is not None else _default_clients()
    result = AuditResult()
    try:
        graph = clients.graph()
        machines = read_machines(graph, settings)
        assignments = read_assignments(graph, settings.subscriptions)
        result.machines = audit(policy, machines, assignments, patchpilot_schedules(policy))
    except Exception as exc:  # azure-core's AzureError: HttpResponseError, ClientAuthenticationError, ...
        if not _is_azure_error(exc):
            raise
        result.error = f"{type(exc).__name__}: {exc}"
    if do_fix:
        for item in result.machines:
            if not item.fixable:
                continue
            try:
                fix_patch_settings(clients, item.machine)
                result.fixed.add(item.machine.id)
            except Exception as exc:  # one VM that cannot change does not stop the others
                if not _is_azure_error(exc):
                    raise
                result.failed[item.machine.id] = f"{type(exc).__name__}: {exc}"
    status = _audit_status(result)
    if as_json:
        print_json(_audit_document(policy, result, do_fix, status))
    else:
        _print_audit(Console(highlight=False), result, do_fix)
    sys.exit(status)


def _audit_status(result: AuditResult) -> int:
    if result.error or result.failed:
        return EXIT_DIFFERS
    left = [f for m in result.machines for f in m.findings if not (f.fixable and m.machine.id in result.fixed)]
    return EXIT_DIFFERS if left else EXIT_IN_ORDER


def _mode(item: MachineAudit) -> str:
    s = item.machine.settings
    if item.machine.arc:
        return f"{s.patch_mode} (Arc)"
    return f"{s.patch_mode}{' + bypass' if s.bypass else ''}{' + hotpatch' if s.hotpatch else ''}"


def _audit_document(policy: Policy, result: AuditResult, fixing: bool, status: int) -> dict[str, Any]:
    return {
        "policy": policy.name,
        "fix": fixing,
        "in_order": status == EXIT_IN_ORDER,
        "error": result.error,
        "modes": dict(sorted(Counter(_mode(m) for m in result.machines).items())),
        "machines": [
            {
                "id": m.machine.id,
                "name": m.machine.name,
                "type": m.machine.type,
                "subscription": m.machine.subscription,
                "resource_group": m.machine.resource_group,
                "location": m.machine.location,
                "os": m.machine.os,
                "patch_mode": m.machine.settings.patch_mode,
                "assessment_mode": m.machine.settings.assessment_mode,
                "bypass_platform_safety_checks_on_user_schedule": m.machine.settings.bypass,
                "hotpatch": m.machine.settings.hotpatch,
                "ring": m.ring,
                "excluded": m.excluded,
                "schedules": list(m.schedules),
                "findings": [
                    {"kind": f.kind, "severity": f.severity, "message": f.message, "fixable": f.fixable}
                    for f in m.findings
                ],
                "fixed": m.machine.id in result.fixed,
                "error": result.failed.get(m.machine.id),
            }
            for m in result.machines
        ],
    }


def _print_audit(console: Console, result: AuditResult, fixing: bool) -> None:
    if result.error:
        console.print(f"[red]{result.error}[/red]")
        return
    modes = Table(title=f"{len(result.machines)} machine{'s' if len(result.machines) != 1 else ''} by patch mode")
    modes.add_column("patch mode")
    modes.add_column("machines", justify="right")
    for mode, count in sorted(Counter(_mode(m) for m in result.machines).items()):
        modes.add_row(mode, str(count))
    console.print(modes)
    flagged = [m for m in result.machines if m.findings]
    if not flagged:
        console.print("No findings: every machine's patch orchestration fits its schedule and the policy.")
        return
    table = Table(title=f"{len(flagged)} machine{'s' if len(flagged) != 1 else ''} with findings")
    for column in ("machine", "patch mode", "ring", "finding", *(("fix",) if fixing else ())):
        table.add_column(column, overflow="fold")
    for m in flagged:
        for f in m.findings:
            row = [
                f"{m.machine.name} ({m.machine.resource_group})",
                _mode(m),
                m.ring or "-",
                f"{f.severity}: {f.message}",
            ]
            if fixing:
                fixed = m.machine.id in result.fixed and f.fixable
                row.append("fixed" if fixed else result.failed.get(m.machine.id, "-" if not f.fixable else "not fixed"))
            table.add_row(*row)
    console.print(table)
    if fixing:
        console.print(f"Fixed {len(result.fixed)} machine{'s' if len(result.fixed) != 1 else ''}.")
    elif any(m.fixable for m in flagged):
        console.print("report only: nothing changed; re-run with --fix to set Customer Managed Schedules")


# ---------------------------------------------------------------- sync


@dataclass
class SyncResult:
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    applied: list[Change] = field(default_factory=list)
    error: str | None = None


@azure.command()
@click.option("--policy", "policy_path", required=True, metavar="FILE", help="Policy file (YAML).")
@click.option("--apply", "do_apply", is_flag=True, help="Make the changes (default: show them only).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
@reports_input_errors
def sync(ctx: click.Context, policy_path: str, do_apply: bool, as_json: bool) -> None:
    """Make the Update Manager maintenance configurations and their assignments match the policy.

    A dry run unless --apply: exit 0 when nothing differs, 1 when something does (or could not
    be applied), 2 for bad input. The mapping: docs/azure-update-manager.md."""
    now = datetime.now(UTC)
    policy = _load(policy_path, now)
    settings = policy.azure
    assert settings is not None and settings.maintenance is not None, "checked by policy_problems"
    clients: AzureClients = ctx.obj if ctx.obj is not None else _default_clients()
    result = SyncResult()
    try:
        machines = read_machines(clients.graph(), settings) if settings.maintenance.assignment == "static" else None
        want = desired(policy, now, machines)
        result.notes = list(want.notes)
        result.changes = diff(want, read_actual(clients, want, settings))
        if do_apply:
            for made in apply_each(clients, result.changes):
                result.applied.append(made)
    except Exception as exc:  # azure-core's AzureError
        if not _is_azure_error(exc):
            raise
        result.error = f"{type(exc).__name__}: {exc}"
    status = _sync_status(result, do_apply)
    if as_json:
        print_json(
            {
                "policy": policy.name,
                "apply": do_apply,
                "in_sync": status == EXIT_IN_ORDER,
                "resource_group": settings.maintenance.resource_group,
                "subscription": settings.subscriptions[0],
                "changes": [change_document(c) for c in result.changes],
                "applied": len(result.applied),
                "notes": result.notes,
                "error": result.error,
            }
        )
    else:
        _print_sync(Console(highlight=False), result, do_apply)
    sys.exit(status)


def _sync_status(result: SyncResult, applied: bool) -> int:
    if result.error:
        return EXIT_DIFFERS
    if applied:
        return EXIT_DIFFERS if any(isinstance(c, Blocked) for c in result.changes) else EXIT_IN_ORDER
    return EXIT_DIFFERS if result.changes else EXIT_IN_ORDER


def _print_sync(console: Console, result: SyncResult, applied: bool) -> None:
    if result.error:
        console.print(f"[red]{result.error}[/red]")
    if result.changes:
        count = len(result.changes)
        table = Table(title=f"{count} change{'s' if count != 1 else ''}")
        for column in ("action", "what", "detail"):
            table.add_column(column, overflow="fold")
        for row in _rows(result.changes):
            table.add_row(*row)
        console.print(table)
    elif not result.error:
        console.print("Update Manager is in sync with the policy.")
    for note in result.notes:
        console.print(f"  note: {note}", markup=False)
    blocked = sum(isinstance(c, Blocked) for c in result.changes)
    if applied:
        made = len(result.applied)
        console.print(f"Applied {made} change{'s' if made != 1 else ''}.")
        if blocked:
            console.print(f"{blocked} blocked change{'s' if blocked != 1 else ''} left for you (see above).")
    elif result.changes:
        count = len(result.changes)
        console.print(f"{count} change{'s' if count != 1 else ''}. dry run: nothing changed; re-run with --apply")


def _rows(changes: Sequence[Change]) -> list[tuple[str, str, str]]:
    """Table rows; static assignments are grouped per configuration and action."""
    rows: list[tuple[str, str, str]] = []
    groups: dict[tuple[str, str, str], list[str]] = {}
    for change in changes:
        match change:
            case CreateConfiguration(spec):
                f = spec.fields
                detail = f"ring {spec.ring}: {f.recur_every} at {f.start_time} {f.time_zone} for {f.duration}, "
                detail += f"first {spec.start_date_time}; reboot {f.reboot_setting}"
                if f.windows_classifications or f.kb_numbers_to_include:
                    detail += f"; Windows: {', '.join(f.windows_classifications + f.kb_numbers_to_include)}"
                if f.linux_classifications or f.package_name_masks_to_include:
                    detail += f"; Linux: {', '.join(f.linux_classifications + f.package_name_masks_to_include)}"
                excluded = f.kb_numbers_to_exclude + f.package_name_masks_to_exclude
                if excluded:
                    detail += f"; never: {', '.join(excluded)}"
                rows.append(("create configuration", spec.name, detail))
            case UpdateConfiguration(spec, _, fields):
                rows += [("update configuration", f"{spec.name} {c.field}", f"{c.old} → {c.new}") for c in fields]
            case DeleteConfiguration(actual, reason):
                rows.append(("delete configuration", actual.name, reason))
            case CreateAssignment(a) if a.kind == "static":
                groups.setdefault(("assign machines", a.name, "to its ring's schedule"), []).append(a.machine_id)
            case CreateAssignment(a):
                assert a.filter is not None
                where = a.scope.subscription if a.scope else a.id
                parts = " ".join(f"{p}: {a.filter.part(p)};" for p in ("osTypes", "locations", "tagSettings"))
                rows.append(("create dynamic scope", f"{a.name} in subscription {where}", parts.rstrip(";")))
            case UpdateAssignment(a, fields):
                rows += [("update assignment", f"{a.id} {c.field}", f"{c.old} → {c.new}") for c in fields]
            case DeleteAssignment(a, reason) if a.kind == "static":
                groups.setdefault(("unassign machines", a.name, reason), []).append(a.machine_id)
            case DeleteAssignment(a, reason):
                rows.append(("delete dynamic scope", a.id, reason))
            case Blocked(subject, reason):
                rows.append(("blocked", subject, reason))
            case _:
                assert_never(change)
    for (action, name, reason), machines in groups.items():
        names = [m.rsplit("/", 1)[-1] for m in machines]
        shown = ", ".join(names[:MAX_IDS_SHOWN]) + (
            f" … +{len(names) - MAX_IDS_SHOWN}" if len(names) > MAX_IDS_SHOWN else ""
        )
        rows.append((action, f"{name}: {len(names)} machine{'s' if len(names) != 1 else ''}", f"{shown} ({reason})"))
    return rows


# ---------------------------------------------------------------- shared


def _azure(policy: Policy, source: str) -> AzureSettings:
    if policy.azure is None:
        raise InputError.single(
            source, "the policy has no azure section (subscriptions, resource_groups, ...)", ("azure",)
        )
    return policy.azure


def _load(policy_path: str, now: datetime) -> Policy:
    """The policy, with the problems only the sync checks placed at their lines too."""
    policy = load_policy(policy_path)
    problems = policy_problems(policy, now)
    if problems:
        document = parse_yaml(read_text(policy_path), policy_path)
        placed = [Problem(p.path, p.message, *(document.locate(p.path) or (None, None))) for p in problems]
        raise InputError(policy_path, placed)
    return policy


def _default_clients() -> AzureClients:
    from patchpilot.bootstrap.clouds import azure_clients

    try:
        return azure_clients()
    except ImportError as exc:
        raise click.ClickException(
            f"{exc}: install PatchPilot with the azure extra (pip install 'patchpilot[azure]')"
        ) from None


def _is_azure_error(exc: Exception) -> bool:
    try:
        from azure.core.exceptions import AzureError
    except ImportError:
        return False
    return isinstance(exc, AzureError)
