"""`patchpilot aws ...`: keep AWS Systems Manager in step with a policy.

`cli.py` registers the group (`main.add_command(aws)`) and imports this module, so the helpers
of `cli.py` are looked up when a command runs, never at import time. boto3 is imported only
when a command builds its own clients: the CLI works without the `aws` extra installed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, assert_never

import click
from rich.console import Console
from rich.table import Table

from patchpilot.adapters.aws.baselines import (
    Blocked,
    Change,
    CreateBaseline,
    DeregisterPatchGroup,
    Desired,
    RegisterPatchGroup,
    TagInstances,
    Target,
    UpdateBaseline,
    apply_each,
    change_document,
    desired_baselines,
    desired_tags,
    diff,
    leftovers,
    policy_problems,
    read_actual,
)
from patchpilot.cli_common import print_json, reports_input_errors
from patchpilot.errors import InputError, Problem
from patchpilot.inputs import parse_yaml, read_text
from patchpilot.inventory import load_inventory
from patchpilot.policy import Policy, load_policy

if TYPE_CHECKING:
    from patchpilot.adapters.aws.sessions import ClientFactory


EXIT_IN_SYNC = 0  # nothing differs, or everything was applied
EXIT_DIFFERS = 1  # a dry run found differences, or some could not be applied
MAX_IDS_SHOWN = 6


@click.group()
def aws() -> None:
    """AWS: Patch Manager baselines, patch groups and patch-group tags from the policy."""


@dataclass
class TargetResult:
    target: Target
    changes: list[Change]
    notes: list[str] = field(default_factory=list)
    applied: list[Change] = field(default_factory=list)
    error: str | None = None


@aws.command()
@click.option("--policy", "policy_path", required=True, metavar="FILE", help="Policy file (YAML).")
@click.option(
    "--inventory",
    "inventory_path",
    metavar="FILE",
    help="Inventory file (JSON): the instances to tag with their ring's patch group.",
)
@click.option(
    "--region",
    "regions",
    multiple=True,
    metavar="REGION",
    help="Sync this region (repeatable). Default: aws.regions of the policy, else the default region.",
)
@click.option("--apply", "do_apply", is_flag=True, help="Make the changes (default: show them only).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
@reports_input_errors
def sync(
    ctx: click.Context,
    policy_path: str,
    inventory_path: str | None,
    regions: tuple[str, ...],
    do_apply: bool,
    as_json: bool,
) -> None:
    """Make the Patch Manager baselines, patch groups and instance tags match the policy.

    A dry run unless --apply: exit 0 when nothing differs, 1 when something does (or could not
    be applied), 2 for bad input. Least privilege and the mapping: docs/aws-baselines.md."""
    policy = _load(policy_path)
    specs = desired_baselines(policy)
    instances = load_inventory(inventory_path) if inventory_path else None
    clients: ClientFactory = ctx.obj if ctx.obj is not None else _default_clients(policy)
    targets = _targets(policy, regions, policy_path, clients)
    accounts = len({t.account for t in targets if t.account is not None})

    results = []
    for target in targets:
        tags = desired_tags(policy, instances, target, accounts=accounts) if instances is not None else None
        desired = Desired(policy.name, tuple(specs), tags)
        result = TargetResult(target, [])
        try:
            ssm = clients("ssm", target.account, target.region)
            ec2 = clients("ec2", target.account, target.region) if tags is not None else None
            actual = read_actual(
                ssm,
                policy.name,
                ec2=ec2,
                instance_ids=tags.wanted if tags is not None else (),
                tag_key=tags.key if tags is not None else "",
            )
            result.changes = diff(desired, actual)
            result.notes = [*dict.fromkeys(n for spec in specs for n in spec.notes), *leftovers(desired, actual)]
            if tags is None:
                result.notes.append("no --inventory: instance tags not checked")
            else:
                result.notes.extend(tags.notes)
            if do_apply:
                for made in apply_each(ssm, result.changes, ec2=ec2):
                    result.applied.append(made)
        except Exception as exc:  # botocore's ClientError, NoCredentialsError, EndpointConnectionError...
            if not _is_aws_error(exc):
                raise
            result.error = f"{type(exc).__name__}: {exc}"
        results.append(result)

    status = _status(results, do_apply)
    if as_json:
        print_json(_document(policy, results, do_apply, status))
    else:
        _print(Console(highlight=False), results, do_apply)
    sys.exit(status)


def _load(policy_path: str) -> Policy:
    """The policy, with the problems only the sync checks placed at their lines too."""
    policy = load_policy(policy_path)
    problems = policy_problems(policy)
    if problems:
        document = parse_yaml(read_text(policy_path), policy_path)
        placed = [Problem(p.path, p.message, *(document.locate(p.path) or (None, None))) for p in problems]
        raise InputError(policy_path, placed)
    return policy


def _targets(policy: Policy, regions: Sequence[str], source: str, clients: ClientFactory | None = None) -> list[Target]:
    chosen = list(dict.fromkeys(regions)) or (list(policy.aws.regions) if policy.aws else [])
    if not chosen:
        default = _default_region()
        if default is None:
            raise InputError.single(
                source,
                "no region: give --region, or aws.regions in the policy, or a default region",
                ("aws", "regions"),
            )
        chosen = [default]
    from patchpilot.adapters.aws.accounts import fleet_accounts
    from patchpilot.ports import DiscoveryReadRefusedError

    try:  # aws.accounts, and the members of aws.organization's OUs
        accounts = fleet_accounts(clients or _default_clients(policy), policy.aws, chosen[0])
    except DiscoveryReadRefusedError as exc:
        raise click.ClickException(str(exc)) from None
    return [Target(account, region) for account in accounts for region in chosen]


def _default_region() -> str | None:
    from patchpilot.bootstrap.clouds import configured_aws_region

    return configured_aws_region()


def _default_clients(policy: Policy) -> ClientFactory:
    from patchpilot.bootstrap.clouds import aws_sessions

    try:
        return aws_sessions(policy)
    except ImportError as exc:
        raise click.ClickException(
            f"{exc}: install PatchPilot with the aws extra (pip install 'patchpilot[aws]')"
        ) from None


def _is_aws_error(exc: Exception) -> bool:
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return False
    return isinstance(exc, BotoCoreError | ClientError)


def _status(results: Sequence[TargetResult], applied: bool) -> int:
    if any(r.error for r in results):
        return EXIT_DIFFERS
    if applied:
        return EXIT_DIFFERS if any(isinstance(c, Blocked) for r in results for c in r.changes) else EXIT_IN_SYNC
    return EXIT_DIFFERS if any(r.changes for r in results) else EXIT_IN_SYNC


# ---------------------------------------------------------------- output


def _document(policy: Policy, results: Sequence[TargetResult], applied: bool, status: int) -> dict[str, Any]:
    """`in_sync`: nothing differs (dry run), or everything was applied."""
    return {
        "policy": policy.name,
        "apply": applied,
        "in_sync": status == EXIT_IN_SYNC,
        "targets": [
            {
                "account": r.target.account,
                "region": r.target.region,
                "changes": [change_document(c) for c in r.changes],
                "applied": len(r.applied),
                "notes": r.notes,
                "error": r.error,
            }
            for r in results
        ],
    }


def _print(console: Console, results: Sequence[TargetResult], applied: bool) -> None:
    total = 0
    for r in results:
        if r.error:
            console.print(f"[red]{r.target.label}: {r.error}[/red]")
        if r.changes:
            table = Table(title=f"{r.target.label}: {len(r.changes)} change{'s' if len(r.changes) != 1 else ''}")
            for column in ("action", "what", "detail"):
                table.add_column(column, overflow="fold")
            for change in r.changes:
                for row in _rows(change):
                    table.add_row(*row)
            console.print(table)
        elif not r.error:
            console.print(f"{r.target.label}: in sync")
        for note in r.notes:
            console.print(f"  note: {note}", markup=False)
        total += len(r.changes)
    blocked = sum(isinstance(c, Blocked) for r in results for c in r.changes)
    if applied:
        made = sum(len(r.applied) for r in results)
        console.print(f"Applied {made} change{'s' if made != 1 else ''}.")
        if blocked:
            console.print(f"{blocked} blocked change{'s' if blocked != 1 else ''} left for you (see above).")
    elif total:
        console.print(f"{total} change{'s' if total != 1 else ''}. dry run: nothing changed; re-run with --apply")
    else:
        console.print("Everything is in sync with the policy.")


def _rows(change: Change) -> list[tuple[str, str, str]]:
    match change:
        case CreateBaseline(spec):
            fields = spec.fields
            detail = f"{spec.operating_system}; rules: " + " | ".join(rule.text() for rule in fields.rules)
            if fields.approved_patches:
                detail += f"; approved: {', '.join(fields.approved_patches)}"
            if fields.rejected_patches:
                detail += f"; rejected ({fields.rejected_patches_action}): {', '.join(fields.rejected_patches)}"
            return [("create baseline", spec.name, detail)]
        case UpdateBaseline(spec, _, fields):
            return [("update baseline", f"{spec.name} {f.label}", f"{f.old} → {f.new}") for f in fields]
        case RegisterPatchGroup(group, name, os, _):
            return [("register patch group", group, f"{name} for {os}")]
        case DeregisterPatchGroup(group, name, _, os, reason):
            return [("deregister patch group", group, f"{name} for {os}: {reason}")]
        case TagInstances(key, value, ids, previous):
            shown = ", ".join(ids[:MAX_IDS_SHOWN]) + (
                f" … +{len(ids) - MAX_IDS_SHOWN}" if len(ids) > MAX_IDS_SHOWN else ""
            )
            was = ", ".join(f"{old if old is not None else 'untagged'} ×{n}" for old, n in previous)
            return [("tag instances", f"{key}={value} on {len(ids)}", f"{shown} (was: {was})")]
        case Blocked(subject, reason):
            return [("blocked", subject, reason)]
        case _:
            assert_never(change)
