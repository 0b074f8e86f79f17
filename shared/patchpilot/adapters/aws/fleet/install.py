"""Installs: AWS-RunPatchBaseline Install, one SendCommand per ≤50 instances of one (account,
region, OS, pinned set, held patches), and the override files it reads: InstallOverrideList for a
pinned later ring, BaselineOverride for an install of only the named patches (an emergency run's
first ring) and for an unpinned install that holds a machine's patch exceptions (a first ring:
the machine's own effective baseline with those patches rejected, `held_baselines.py`). The files
have S3 keys derived from the run and command ids, so a redelivery rewrites the same object before
the same SendCommand."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from patchpilot.batching import chunks, group, unique
from patchpilot.engine.messages import InstallPatches, InstallTarget, Outcome
from patchpilot.hotpatch import NO_REBOOT_NOTE
from patchpilot.inventory import OsFamily
from patchpilot.policy.exceptions import names_patch
from patchpilot.ports import InProgress, Progress
from patchpilot.wording import plural

from ..access import (
    PATCH_DOCUMENT,
    RUNNING_INVOCATION,
    SSM_IDS_PER_CALL,
    AwsAccess,
    Placement,
    agent_problem,
    describe_error,
    error_code,
    invocation_failure,
    short_token,
    ssm_comment,
)
from .held_baselines import BaselineReader, held_override, held_patches, patch_group, ssm_systems

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_ssm.type_defs import CommandInvocationTypeDef, CommandTypeDef

INSTALL_POLL = timedelta(minutes=5)
INSTALLED_STATES = ["Installed", "InstalledOther", "InstalledPendingReboot"]

# (account, region, OS, pinned set, the targets' own reboot: "never" for hotpatch-only ones, the
# patches an unpinned install holds back (the machine's patch exceptions), the patch group whose
# effective baseline holds them: None for a named-only install, whose override names its patches)
_GroupKey = tuple[str | None, str, OsFamily, tuple[str, ...] | None, str | None, tuple[str, ...], str | None]
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9._=-]+")


@dataclass(frozen=True)
class OverrideBucket:
    """Where override files go: the bucket (readable by the instances' profiles in every
    account) and its region."""

    name: str
    region: str


def install_patches(access: AwsAccess, command: InstallPatches, bucket: OverrideBucket | None) -> Progress:
    """Install on the command's instances, idempotent per command id (the SSM commands are found
    again by their Comment); pinned and named-only installs need `bucket`."""
    now = access.clock.now()
    targets = unique(command.targets, lambda t: t.instance.id)
    outcomes: dict[str, Outcome] = {}
    waiting: list[str] = []
    token = short_token(command.id)
    sendable: list[InstallTarget] = []
    for target in targets:
        left = [p for p in target.only or () if not names_patch(target.exclude, p)]
        held = _held(command, target)
        if target.only is not None and not left:
            why = "the promoted patch set is empty" if not target.only else "the policy excepts every promoted patch"
            outcomes[target.instance.id] = Outcome(
                id=target.instance.id, ok=True, detail=f"nothing to install: {why}", at=now
            )
        elif target.only is not None and bucket is None:
            detail = "a pinned patch set needs an override bucket for InstallOverrideList; not installed"
            outcomes[target.instance.id] = Outcome(id=target.instance.id, ok=False, detail=detail, at=now)
        elif target.only is None and named_only(command):
            refused = _named_problem(command, target.instance.os, bucket is not None, held)
            if refused is None:
                sendable.append(target)
            else:
                ok, detail = refused
                outcomes[target.instance.id] = Outcome(id=target.instance.id, ok=ok, detail=detail, at=now)
        elif held and bucket is None:
            detail = (
                f"holding back the patch exceptions' patches ({', '.join(held)}) on an unpinned install needs an "
                "override bucket for BaselineOverride; not installed"
            )
            outcomes[target.instance.id] = Outcome(id=target.instance.id, ok=False, detail=detail, at=now)
        else:
            sendable.append(target)
    parts = _install_parts(sendable, command)
    overrides = _override_keys(command, sendable)
    for placement, placed in group(parts, lambda p: p.placement).items():
        ssm = access.ssm(placement)
        found = access.find_commands(ssm, PATCH_DOCUMENT, token, now)
        sent = False
        guards = _held_documents(access, ssm, placement, [p for p in placed if p.label not in found and p.holds])
        for part in placed:
            if part.label in found:
                continue
            document = guards.get(part.label)
            if isinstance(document, str):
                for instance_id in part.instance_ids:
                    outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail=document, at=now)
                continue
            try:
                found[part.label] = _send_install(access, ssm, command, part, token, overrides, bucket, document)
                sent = True
                continue
            except ClientError as exc:
                if error_code(exc) != "InvalidInstanceId":
                    for instance_id in part.instance_ids:
                        detail = f"SendCommand {PATCH_DOCUMENT} failed: {describe_error(exc)}"
                        outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail=detail, at=now)
                    continue
            # SSM refuses the whole call when one instance is not ready: send to the rest.
            agents = access.agents(placement, part.instance_ids)
            ready = tuple(i for i in part.instance_ids if agent_problem(agents.get(i)) is None)
            for instance_id in part.instance_ids:
                problem = agent_problem(agents.get(instance_id))
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
                found[part.label] = _send_install(access, ssm, command, subset, token, overrides, bucket, document)
                sent = True
            except ClientError as exc:
                for instance_id in ready:
                    detail = f"SendCommand {PATCH_DOCUMENT} failed: {describe_error(exc)}"
                    outcomes[instance_id] = Outcome(id=instance_id, ok=False, detail=detail, at=now)
        if sent:
            waiting.extend(i for p in placed for i in p.instance_ids if i not in outcomes)
            continue
        results = access.command_results(ssm, [found[p.label] for p in placed if p.label in found], details=False)
        if results is None:
            waiting.extend(i for p in placed for i in p.instance_ids if i not in outcomes)
            continue
        for part in placed:
            ssm_command = found.get(part.label)
            if ssm_command is None:
                continue  # sending failed: reported above
            for instance_id in part.instance_ids:
                outcome = _install_outcome(
                    access, ssm, ssm_command, results.get(instance_id), instance_id, command, part.reboot(command)
                )
                if outcome is None:
                    waiting.append(instance_id)
                else:
                    outcomes[instance_id] = outcome.model_copy(update={"at": now})
    if waiting:
        done = len(targets) - len(set(waiting))
        return InProgress(now + INSTALL_POLL, note=f"install: {done}/{len(targets)} instances done")
    return [outcomes[t.instance.id] for t in targets]


def _send_install(
    access: AwsAccess,
    ssm: SSMClient,
    command: InstallPatches,
    part: _Part,
    token: str,
    overrides: dict[_GroupKey, str],
    bucket: OverrideBucket | None,
    held: list[dict[str, Any]] | None = None,
) -> CommandTypeDef:
    parameters = {
        "Operation": ["Install"],
        "RebootOption": ["NoReboot" if part.reboot(command) == "never" else "RebootIfNeeded"],
    }
    if part.pinned is not None:
        assert bucket is not None, "checked before the parts were planned"
        key = overrides[part.key]
        import yaml  # only pinned installs need it

        body = yaml.safe_dump({"patches": [{"id": patch} for patch in part.pinned]}, sort_keys=False)
        access.s3(bucket.region).put_object(
            Bucket=bucket.name, Key=key, Body=body.encode(), ContentType="application/x-yaml"
        )
        parameters["InstallOverrideList"] = [f"s3://{bucket.name}/{key}"]
    elif named_only(command) or part.holds:
        assert bucket is not None, "checked before the parts were planned"
        key = overrides[part.key]
        document = held if part.holds else _baseline_override(command, part.key[2], part.key[5])
        assert document is not None and not isinstance(document, str), "checked before the parts were planned"
        body = json.dumps(document, indent=2)
        access.s3(bucket.region).put_object(
            Bucket=bucket.name, Key=key, Body=body.encode(), ContentType="application/json"
        )
        parameters["BaselineOverride"] = [f"s3://{bucket.name}/{key}"]
    extra: dict[str, Any] = {}
    if command.max_duration is not None:
        # Not started by then (agent busy, instance asleep): do not start at all.
        extra["TimeoutSeconds"] = max(30, min(int(command.max_duration.total_seconds()), 2_592_000))
    answer = ssm.send_command(
        InstanceIds=list(part.instance_ids),
        DocumentName=PATCH_DOCUMENT,
        Parameters=parameters,
        Comment=ssm_comment(token, part.label, command.id),
        MaxConcurrency="50",
        MaxErrors="100%",  # one instance failing must not cancel the others: the engine judges
        **extra,
    )
    return answer["Command"]


def _install_outcome(
    access: AwsAccess,
    ssm: SSMClient,
    ssm_command: CommandTypeDef,
    invocation: CommandInvocationTypeDef | None,
    instance_id: str,
    command: InstallPatches,
    reboot: str,
) -> Outcome | None:
    if instance_id not in ssm_command.get("InstanceIds", [instance_id]):
        detail = "not sent: SSM did not accept the instance (agent offline or not managed) when the install was sent"
        return Outcome(id=instance_id, ok=False, detail=detail)
    if invocation is None:
        return Outcome(id=instance_id, ok=False, detail=f"no {PATCH_DOCUMENT} invocation reported by SSM")
    status = invocation.get("Status", "")
    if status in RUNNING_INVOCATION:
        return None
    if status != "Success":
        return Outcome(id=instance_id, ok=False, detail=invocation_failure(PATCH_DOCUMENT, invocation))
    since = ssm_command.get("RequestedDateTime") or invocation.get("RequestedDateTime")
    patches = _installed_patches(ssm, instance_id, since)
    count = plural(len(patches), "patch")
    if reboot != "never":
        tail = "rebooted if needed"
    else:
        tail = "no reboot (reboot: never)" if command.reboot == "never" else f"no reboot ({NO_REBOOT_NOTE})"
    return Outcome(id=instance_id, ok=True, detail=f"{count} installed, {tail}", items=patches)


def _installed_patches(ssm: SSMClient, instance_id: str, since: datetime | None) -> list[str]:
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


@dataclass(frozen=True)
class _Part:
    """One SendCommand of an install: ≤50 instances of one (account, region, OS, pinned set, reboot,
    held patches and patch group)."""

    key: _GroupKey
    label: str
    instance_ids: tuple[str, ...]

    @property
    def placement(self) -> Placement:
        return (self.key[0], self.key[1])

    @property
    def pinned(self) -> tuple[str, ...] | None:
        return self.key[3]

    def reboot(self, command: InstallPatches) -> str:
        """The part's reboot: its targets' own (hotpatch only), else the command's."""
        return self.key[4] or command.reboot

    @property
    def holds(self) -> bool:
        """An unpinned install that holds back patch exceptions through the machines' own baselines."""
        return self.pinned is None and bool(self.key[5]) and self.key[6] != _NAMED


_NAMED = "<named>"  # the patch-group slot of a named-only install (no patch group can be spelled so)


def _held(command: InstallPatches, target: InstallTarget) -> tuple[str, ...]:
    """The patch exceptions' patches an unpinned install of `target` must hold back, in its OS's
    terms (a pinned install leaves them out of its list instead): with the policy's
    `patches.exclude`, which the override then rejects too."""
    if target.only is not None or not target.exclude:
        return ()
    family = target.instance.os
    own = held_patches(family, target.exclude)
    return held_patches(family, [*own, *command.exclude]) if own else ()


def _install_parts(targets: Sequence[InstallTarget], command: InstallPatches) -> list[_Part]:
    """Deterministic parts: the same command always yields the same labels and members."""
    groups: dict[_GroupKey, list[str]] = {}
    named = named_only(command)
    for target in targets:
        instance = target.instance
        pinned = tuple(dict.fromkeys(target.only)) if target.only is not None else None
        if pinned is not None and target.exclude:  # the policy's patch exceptions for this machine
            pinned = tuple(p for p in pinned if not names_patch(target.exclude, p))
        held = _held(command, target)
        where = (_NAMED if named else patch_group(instance.tags)) if held else None
        key: _GroupKey = (instance.account, instance.region, instance.os, pinned, target.reboot, held, where)
        groups.setdefault(key, []).append(instance.id)
    parts = []
    for part_key in sorted(
        groups, key=lambda k: (k[0] or "", k[1], k[2], k[3] is not None, k[3] or (), k[4] or "", k[5], k[6] or "")
    ):
        os, pinned, reboot = part_key[2], part_key[3], part_key[4]
        shape: tuple[object, ...] = (os, pinned) if reboot is None else (os, pinned, reboot)  # labels as before
        if part_key[5]:
            shape = (*shape, part_key[5], part_key[6])
        digest = hashlib.sha256(repr(shape).encode()).hexdigest()[:8]
        for index, chunk in enumerate(chunks(sorted(groups[part_key]), SSM_IDS_PER_CALL)):
            parts.append(_Part(part_key, f"{os[0]}{digest}.{index}", tuple(chunk)))
    return parts


def named_only(command: InstallPatches) -> bool:
    """Does the command install only the patches it names (an emergency run's first ring: the
    advisory's fixes, no classification)? The instances' baselines would approve more, so such a
    command carries a BaselineOverride of exactly those patches."""
    return not command.classifications and bool(command.include) and command.maintenance_run is None


def _baseline_override(
    command: InstallPatches, os: OsFamily, held: Sequence[str] = ()
) -> list[dict[str, object]] | str:
    """The named-only override of `os`: the named patches but those `held` back (a machine's patch
    exceptions), which it rejects with the policy's `exclude`."""
    from ..baselines import override_baselines  # only emergency installs need it

    wanted = [p for p in command.include if not names_patch(held, p)]
    return override_baselines(os == "windows", wanted, [*command.exclude, *held])


def _named_problem(
    command: InstallPatches, os: OsFamily, has_bucket: bool, held: Sequence[str] = ()
) -> tuple[bool, str] | None:
    """Why an instance of `os` gets no BaselineOverride install, as (ok, detail), or None."""
    document = _baseline_override(command, os, held)
    if isinstance(document, str):
        return False, f"{document}; not installed"
    if not document and held and _baseline_override(command, os):
        return True, f"nothing to install: the policy excepts every named patch on this machine ({', '.join(held)})"
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
    (the same key for the same command, so a redelivery rewrites the same object), with a digest
    of the held patches and patch group when the override holds back a machine's patch exceptions
    (runs/<run>/<command>/<os>-<digest>-baseline.json)."""
    prefix = f"runs/{_UNSAFE_KEY.sub('_', command.run_id)}/{_UNSAFE_KEY.sub('_', command.id)}"
    sets: dict[OsFamily, set[tuple[str, ...]]] = {}
    keys: dict[_GroupKey, str] = {}
    parts = _install_parts(targets, command)
    for part in parts:
        if part.pinned is not None:
            sets.setdefault(part.key[2], set()).add(part.pinned)
    for part in parts:
        if part.pinned is None:
            if part.key[5]:
                digest = hashlib.sha256(repr((part.key[5], part.key[6])).encode()).hexdigest()[:8]
                keys[part.key] = f"{prefix}/{part.key[2]}-{digest}-baseline.json"
            elif named_only(command):
                keys[part.key] = f"{prefix}/{part.key[2]}-baseline.json"
            continue
        os = part.key[2]
        if len(sets[os]) == 1:
            keys[part.key] = f"{prefix}/{os}.yaml"
        else:
            digest = hashlib.sha256("\n".join(part.pinned).encode()).hexdigest()[:8]
            keys[part.key] = f"{prefix}/{os}-{digest}.yaml"
    return keys


def _held_documents(
    access: AwsAccess, ssm: SSMClient, placement: Placement, parts: Sequence[_Part]
) -> dict[str, list[dict[str, Any]] | str]:
    """The BaselineOverride document of each part that holds back patch exceptions (by label), or
    why it cannot be made: one DescribeInstanceInformation for their machines' systems, then each
    effective baseline read once (`BaselineReader`)."""
    if not parts:
        return {}
    agents = access.agents(placement, [i for p in parts for i in p.instance_ids])
    reader = BaselineReader(ssm)
    documents: dict[str, list[dict[str, Any]] | str] = {}
    for part in parts:
        held = part.key[5]
        systems = sorted({s for i in part.instance_ids for s in ssm_systems(agents.get(i), part.key[2])})
        try:
            document = held_override(reader, part.key[6], systems, held)
        except ClientError as exc:
            operation = exc.operation_name
            document = (
                f"the machine's patch baseline could not be read ({operation} failed: {describe_error(exc)}; "
                f"needs ssm:{operation})"
            )
        if isinstance(document, str):
            document = f"{document}, so its patch exceptions ({', '.join(held)}) cannot be held back; not installed"
        documents[part.label] = document
    return documents


def _installed_since(installed: datetime, since: datetime) -> bool:
    """Installed by a command requested at `since`. Windows often reports only the date."""
    if installed.tzinfo is None:
        installed = installed.replace(tzinfo=UTC)
    if (installed.hour, installed.minute, installed.second, installed.microsecond) == (0, 0, 0, 0):
        return installed.date() >= since.astimezone(installed.tzinfo).date()
    return installed >= since
