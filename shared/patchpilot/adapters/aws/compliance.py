"""Patch compliance on AWS: Systems Manager scans started on demand and patch states read in bulk.

`Ec2SsmFleet.start_assessment` and `Ec2SsmFleet.patch_states` delegate here.

- A scan is `AWS-RunPatchBaseline` with `Operation=Scan` (it installs nothing and never
  reboots), at most 50 InstanceIds per SendCommand, per (account, region). It is idempotent per
  token as the install path is: each SSM command carries `patchpilot <token> <part>` in its
  Comment and ListCommands finds them again, so a second start with the same token only sends
  to instances no command of that token covers yet.
- The states are one DescribeInstancePatchStates per 50 instances. Only an instance whose
  counts say something is missing, failed or waiting for a reboot costs a DescribeInstancePatches
  (filtered on those states): a compliant machine costs no call of its own.

What SSM keeps is the LAST patch operation of each instance only (`Operation`,
`OperationStartTime`, `OperationEndTime`), whether a Scan or an Install; an Install also
reports the compliance it leaves. So `assessed_at` is the end of that operation either way, and
`last_install_at` is known only when the last operation was an Install with no failed patch
(`FailedCount == 0`): after a later Scan, SSM no longer says when the last install was, and the
state says so in a note.

DescribeInstancePatches gives no release date: `released_at` comes from the SSM patch catalogue,
DescribeAvailablePatches, which lists Windows Server, Amazon Linux 1 and Amazon Linux 2 patches
only. After the states of an (account, region) are read, each distinct patch is looked up once,
20 per call (at most 5 filters, ANDed; the Values of one filter taken as ORed, as in patch
baselines: not verified against live AWS):

- Windows: the KB number, filter `PATCH_ID` (the KB, e.g. KB5048654). A KB listed more than once
  is the same update for several products (one date), or a KB Microsoft reuses for each release
  (the malicious software removal tool, the Defender platform) whose newest release is the one a
  scan reports missing: the latest ReleaseDate is taken.
- Amazon Linux 2 (an `amzn2` release, e.g. `kernel.x86_64:0:5.10.237-230.949.amzn2`, `…-24.amzn2.0.16`):
  Linux needs a `PRODUCT` filter, so `PRODUCT` (AmazonLinux2, AmazonLinux2.0) with `NAME`,
  `ARCH`, `VERSION` and `RELEASE`; the answer is matched on all four, since the filters select
  their cross product.
- Anything else (Amazon Linux 2023, RHEL, SUSE, Ubuntu, Debian, Amazon Linux 1 whose products are
  per release, a patch with no version): not in the catalogue or not addressable, `released_at`
  stays None.

A lookup that fails (AccessDenied, throttled past botocore's retries) leaves the patches it
covered undated and says so in a note of each state that has one; it never fails the read.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from patchpilot.batching import chunks, unique
from patchpilot.compliance.model import AssessmentStarted, MissingPatch, PatchGap, PatchSeverity, PatchState
from patchpilot.inventory import Instance

from .access import (
    PATCH_DOCUMENT,
    SSM_IDS_PER_CALL,
    AwsAccess,
    Placement,
    agent_problem,
    by_placement,
    describe_error,
    error_code,
    failure,
    short_token,
    ssm_comment,
    where,
)

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_ssm.type_defs import (
        CommandTypeDef,
        InstancePatchStateTypeDef,
        PatchComplianceDataTypeDef,
        PatchOrchestratorFilterTypeDef,
        PatchTypeDef,
    )


SCAN_PARAMETERS: dict[str, list[str]] = {"Operation": ["Scan"], "RebootOption": ["NoReboot"]}
GAP_STATES: dict[str, PatchGap] = {"Missing": "missing", "Failed": "failed", "InstalledPendingReboot": "pending_reboot"}
PATCH_PAGE = 100  # DescribeInstancePatches MaxResults (10-100)
PATCH_PAGES_PER_INSTANCE = 10  # at most 1,000 patches listed per instance; the rest is counted in a note
NO_STATE = "no patch state: never scanned, or not a managed instance"
CATALOGUE_IDS_PER_CALL = 20  # patches looked up per DescribeAvailablePatches (the Values of one filter)
CATALOGUE_PAGE = 100  # DescribeAvailablePatches MaxResults (1-100)
CATALOGUE_PAGES_PER_CALL = 10  # a KB applies to a handful of products: 1,000 rows is plenty
AMAZON_LINUX_2_PRODUCTS = ["AmazonLinux2", "AmazonLinux2.0"]

# MSRC severities (Windows) and the Linux vendors' (Amazon Linux, RHEL, SUSE: Critical, Important,
# Moderate or Medium, Low; Ubuntu and Debian: critical, high, medium, low, negligible) on one scale.
_SEVERITIES: dict[str, PatchSeverity] = {
    "critical": "Critical",
    "important": "Important",
    "high": "Important",
    "moderate": "Moderate",
    "medium": "Moderate",
    "low": "Low",
    "negligible": "Low",
}


def severity(raw: str | None) -> PatchSeverity:
    """The cloud's or the vendor's severity on PatchPilot's scale; Unspecified when unknown."""
    return _SEVERITIES.get((raw or "").strip().lower(), "Unspecified")


# ---------------------------------------------------------------- scans


def start_assessment(access: AwsAccess, instances: Sequence[Instance], token: str) -> AssessmentStarted:
    """Start a Scan on every instance no SSM command of `token` covers yet, ≤ 50 per SendCommand."""
    now = access.clock.now()
    short = short_token(f"scan\x1f{token}")
    refused: dict[str, str] = {}
    started: set[str] = set()
    operations: list[str] = []
    targets = unique(instances, lambda i: i.id)
    for instance in targets:
        if instance.cloud != "aws":
            refused[instance.id] = f"not an AWS instance ({instance.cloud})"
    ours = [i for i in targets if i.id not in refused]
    for placement, group in by_placement(ours, lambda i: i).items():
        ids = [i.id for i in group]
        try:
            ssm = access.ssm(placement)
            found = access.find_commands(ssm, PATCH_DOCUMENT, short, now)
        except (ClientError, BotoCoreError) as exc:
            for instance_id in ids:
                refused[instance_id] = f"ListCommands failed in {where(placement)}: {failure(exc)}"
            continue
        covered = {i for c in found.values() for i in c.get("InstanceIds", [])}
        wanted = set(ids)
        operations.extend(c["CommandId"] for c in found.values() if wanted & set(c.get("InstanceIds", [])))
        started.update(i for i in ids if i in covered)
        for chunk in chunks(sorted(i for i in ids if i not in covered), SSM_IDS_PER_CALL):
            sent = _send_scan(access, ssm, placement, chunk, short, token, refused)
            if sent is not None:
                operations.append(sent["CommandId"])
                started.update(sent.get("InstanceIds", chunk))
    return AssessmentStarted(
        started=len(started),
        refused=tuple((i.id, refused[i.id]) for i in targets if i.id in refused),
        operations=tuple(dict.fromkeys(operations)),
    )


def _send_scan(
    access: AwsAccess,
    ssm: SSMClient,
    placement: Placement,
    chunk: list[str],
    short: str,
    token: str,
    refused: dict[str, str],
) -> CommandTypeDef | None:
    """One SendCommand; when SSM refuses the call because an instance is not ready
    (InvalidInstanceId), the ready ones are sent again and the others refused with why."""
    try:
        return _send(ssm, chunk, short, token)
    except ClientError as exc:
        if error_code(exc) != "InvalidInstanceId":
            for instance_id in chunk:
                refused[instance_id] = f"SendCommand {PATCH_DOCUMENT} failed: {describe_error(exc)}"
            return None
    try:
        agents = access.agents(placement, chunk)
    except (ClientError, BotoCoreError) as exc:
        for instance_id in chunk:
            refused[instance_id] = f"SendCommand {PATCH_DOCUMENT} failed: InvalidInstanceId ({failure(exc)})"
        return None
    ready = [i for i in chunk if agent_problem(agents.get(i)) is None]
    for instance_id in chunk:
        problem = agent_problem(agents.get(instance_id))
        if problem is not None:
            refused[instance_id] = problem
    if not ready or len(ready) == len(chunk):
        for instance_id in ready:
            refused[instance_id] = f"SendCommand {PATCH_DOCUMENT} failed: InvalidInstanceId"
        return None
    try:
        return _send(ssm, ready, short, token)
    except ClientError as exc:
        for instance_id in ready:
            refused[instance_id] = f"SendCommand {PATCH_DOCUMENT} failed: {describe_error(exc)}"
        return None


def _send(ssm: SSMClient, instance_ids: list[str], short: str, token: str) -> CommandTypeDef:
    # The part label is a digest of the members: a later start with the same token that adds
    # instances makes a new part instead of taking an earlier one's label.
    label = "s" + hashlib.sha256(" ".join(instance_ids).encode()).hexdigest()[:8]
    answer = ssm.send_command(
        InstanceIds=instance_ids,
        DocumentName=PATCH_DOCUMENT,
        Parameters=SCAN_PARAMETERS,
        Comment=ssm_comment(short, label, f"scan {token}"),
        MaxConcurrency="50",
        MaxErrors="100%",  # a scan failing on one machine must not stop the others
    )
    return answer["Command"]


# ---------------------------------------------------------------- states


def patch_states(access: AwsAccess, instances: Sequence[Instance]) -> list[PatchState]:
    """One PatchState per instance, in order."""
    found: dict[str, PatchState] = {}
    targets = unique(instances, lambda i: i.id)
    for instance in targets:
        if instance.cloud != "aws":
            found[instance.id] = PatchState(instance.id, error=f"not an AWS instance ({instance.cloud})")
    ours = [i for i in targets if i.id not in found]
    for placement, group in by_placement(ours, lambda i: i).items():
        try:
            ssm = access.ssm(placement)
        except (ClientError, BotoCoreError) as exc:
            for instance in group:
                found[instance.id] = PatchState(
                    instance.id, error=f"SSM unreachable in {where(placement)}: {failure(exc)}"
                )
            continue
        here: dict[str, PatchState] = {}
        for chunk in chunks([i.id for i in group], SSM_IDS_PER_CALL):
            try:
                summaries = _summaries(ssm, chunk)
            except (ClientError, BotoCoreError) as exc:
                for instance_id in chunk:
                    here[instance_id] = PatchState(
                        instance_id, error=f"DescribeInstancePatchStates failed: {failure(exc)}"
                    )
                continue
            for instance_id in chunk:
                summary = summaries.get(instance_id)
                here[instance_id] = PatchState(instance_id, error=NO_STATE) if summary is None else _state(ssm, summary)
        found.update(_dated(ssm, here))
    return [found[i.id] for i in instances]


def _summaries(ssm: SSMClient, instance_ids: list[str]) -> dict[str, InstancePatchStateTypeDef]:
    pages = ssm.get_paginator("describe_instance_patch_states").paginate(
        InstanceIds=instance_ids, PaginationConfig={"PageSize": SSM_IDS_PER_CALL}
    )
    return {s["InstanceId"]: s for page in pages for s in page.get("InstancePatchStates", [])}


def _state(ssm: SSMClient, summary: InstancePatchStateTypeDef) -> PatchState:
    instance_id = summary["InstanceId"]
    operation = summary.get("Operation")
    ended = summary.get("OperationEndTime")
    failed = summary.get("FailedCount", 0)
    pending_reboot = summary.get("InstalledPendingRebootCount", 0)
    gaps = summary.get("MissingCount", 0) + failed + pending_reboot
    notes: list[str] = []
    if operation == "Install":
        last_install = ended if failed == 0 else None
        if failed:
            notes.append(f"the last install ({_day(ended)}) failed for {failed} patches")
    else:
        last_install = None
        notes.append("last operation a Scan: SSM keeps no time of the last install")
    unapproved = summary.get("AvailableSecurityUpdateCount", 0)
    if unapproved:
        notes.append(f"{unapproved} security updates available that the patch baseline does not approve")
    missing: tuple[MissingPatch, ...] = ()
    if gaps:
        try:
            missing, more = _gaps(ssm, instance_id)
        except (ClientError, BotoCoreError) as exc:
            return PatchState(
                instance_id,
                assessed_at=ended,
                reboot_pending=pending_reboot > 0,
                last_install_at=last_install,
                error=f"{gaps} patches missing, but DescribeInstancePatches failed: {failure(exc)}",
                notes=tuple(notes),
            )
        if more:
            notes.append(f"{gaps} patches missing: only the first {len(missing)} are listed")
        elif gaps > len(missing):
            notes.append(f"{gaps - len(missing)} more missing patches counted by SSM but not listed")
    return PatchState(
        instance_id,
        assessed_at=ended,
        missing=missing,
        reboot_pending=pending_reboot > 0,
        last_install_at=last_install,
        notes=tuple(notes),
    )


def _gaps(ssm: SSMClient, instance_id: str) -> tuple[tuple[MissingPatch, ...], bool]:
    """The instance's missing, failed and pending-reboot patches (at most
    PATCH_PAGES_PER_INSTANCE pages), and whether more were left unread."""
    pages = ssm.get_paginator("describe_instance_patches").paginate(
        InstanceId=instance_id,
        Filters=[{"Key": "State", "Values": list(GAP_STATES)}],
        PaginationConfig={"PageSize": PATCH_PAGE, "MaxItems": PATCH_PAGE * PATCH_PAGES_PER_INSTANCE},
    )
    found: dict[str, MissingPatch] = {}
    more = False
    for page in pages:
        for raw in page.get("Patches", []):
            patch = _missing_patch(raw)
            if patch is not None:
                found.setdefault(patch.id, patch)
        more = bool(page.get("NextToken"))
    return tuple(found.values()), more


def _missing_patch(raw: PatchComplianceDataTypeDef) -> MissingPatch | None:
    gap = GAP_STATES.get(raw.get("State", ""))
    name = raw.get("KBId") or raw.get("Title")
    if gap is None or not name:
        return None
    title = raw.get("Title", "")
    return MissingPatch(
        id=name,
        title=title,
        classification=raw.get("Classification", ""),
        severity=severity(raw.get("Severity")),
        version=_linux_version(name, title),
        gap=gap,
    )


def _linux_version(name: str, title: str) -> str:
    """Linux titles read `<package>.<arch>:<epoch>:<version>-<release>`: the version part."""
    match = re.fullmatch(re.escape(name) + r":(?:\d+:)?(.+)", title)
    return match.group(1) if match else ""


# ---------------------------------------------------------------- release dates

# A patch as the catalogue is asked for it: ("windows", KB) or ("al2", name, arch, version, release).
CatalogueKey = tuple[str, ...]


def _catalogue_key(patch: MissingPatch) -> CatalogueKey | None:
    """How DescribeAvailablePatches can find `patch`, or None where it cannot."""
    if re.fullmatch(r"KB\d+", patch.id):
        return ("windows", patch.id)
    name, dot, arch = patch.id.rpartition(".")
    version, dash, release = patch.version.rpartition("-")
    if dot and dash and name and version and re.fullmatch(r"(?:.+\.)?amzn2(?:\.\d+)*", release):
        return ("al2", name, arch, version, release)
    return None


def _dated(ssm: SSMClient, states: dict[str, PatchState]) -> dict[str, PatchState]:
    """`states` with the release dates of their missing patches, each distinct patch looked up once."""
    wanted = {k for s in states.values() for p in s.missing if (k := _catalogue_key(p)) is not None}
    if not wanted:
        return states
    dates, failed = _release_dates(ssm, wanted)
    dated: dict[str, PatchState] = {}
    for instance_id, state in states.items():
        keys = [_catalogue_key(p) for p in state.missing]
        missing = tuple(
            replace(p, released_at=dates[k]) if k is not None and k in dates else p
            for p, k in zip(state.missing, keys, strict=True)
        )
        problems = [failed[k] for k in keys if k is not None and k in failed]
        notes = state.notes
        for problem, count in Counter(problems).items():
            notes += (f"release date unknown for {count} patches: DescribeAvailablePatches failed: {problem}",)
        dated[instance_id] = replace(state, missing=missing, notes=notes)
    return dated


def _release_dates(
    ssm: SSMClient, wanted: set[CatalogueKey]
) -> tuple[dict[CatalogueKey, datetime], dict[CatalogueKey, str]]:
    """The catalogue's release date of each patch it lists, and why for the ones whose lookup failed."""
    dates: dict[CatalogueKey, datetime] = {}
    failed: dict[CatalogueKey, str] = {}
    for platform in ("windows", "al2"):
        for chunk in chunks(sorted(k for k in wanted if k[0] == platform), CATALOGUE_IDS_PER_CALL):
            try:
                rows = _catalogue(ssm, _catalogue_filters(chunk))
            except (ClientError, BotoCoreError) as exc:
                failed.update((k, failure(exc)) for k in chunk)
                continue
            asked = set(chunk)
            for row in rows:
                key = _row_key(platform, row)
                released = row.get("ReleaseDate")
                if key in asked and released is not None and (key not in dates or released > dates[key]):
                    dates[key] = released
    return dates, failed


def _catalogue_filters(chunk: list[CatalogueKey]) -> list[PatchOrchestratorFilterTypeDef]:
    if chunk[0][0] == "windows":
        return [{"Key": "PATCH_ID", "Values": [k[1] for k in chunk]}]
    filters: list[PatchOrchestratorFilterTypeDef] = [{"Key": "PRODUCT", "Values": AMAZON_LINUX_2_PRODUCTS}]
    for n, key in enumerate(("NAME", "ARCH", "VERSION", "RELEASE"), start=1):
        filters.append({"Key": key, "Values": sorted({k[n] for k in chunk})})
    return filters


def _catalogue(ssm: SSMClient, filters: list[PatchOrchestratorFilterTypeDef]) -> list[PatchTypeDef]:
    pages = ssm.get_paginator("describe_available_patches").paginate(
        Filters=filters,
        PaginationConfig={"PageSize": CATALOGUE_PAGE, "MaxItems": CATALOGUE_PAGE * CATALOGUE_PAGES_PER_CALL},
    )
    return [row for page in pages for row in page.get("Patches", [])]


def _row_key(platform: str, row: PatchTypeDef) -> CatalogueKey:
    if platform == "windows":
        return ("windows", row.get("KbNumber", ""))
    return ("al2", row.get("Name", ""), row.get("Arch", ""), row.get("Version", ""), row.get("Release", ""))


def _day(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d") if moment is not None else "time unknown"
