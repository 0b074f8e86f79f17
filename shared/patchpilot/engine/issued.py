"""What a run issued: the only messages the worker acts on.

A queue message is input, never authority. Every message `decide` puts in a run's outbox is
recorded in that run (`Run.issued`: its id and the digest of its content) in the same conditional
write, and the worker executes a message only when the stored run holds it, with the same
content, and it is still to be done. Results never travel the queue: the worker that ran a command
applies its result itself, and approvals are applied by the endpoint that took them. So a forged
command, a forged result or an approval for a gate that was never opened changes nothing. A
wake-up (`LookNow`) carries no command at all: the worker polls the one the run holds as awaited
(`Run.awaited_command`, kept by `with_awaited`), checked against `Run.issued` (service.py `_look`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Literal

from patchpilot.engine.messages import (
    MESSAGE,
    CallWaveHook,
    CancelCloudScheduledRun,
    CheckHealth,
    FleetCommand,
    FollowUpFinished,
    InstallPatches,
    LeaseInstances,
    LeavePools,
    Message,
    Notify,
    ProbeAgents,
    RejoinPools,
    ReleaseInstances,
    ReturnMachines,
    RollBack,
    RunHostHook,
    StartFollowUp,
    StartMachines,
    TakeSnapshots,
    Wait,
)
from patchpilot.engine.run import Run

# A run waits for the result of one of these at a time (`Run.awaiting`): once it has moved on,
# the command is done, and a redelivery of it is dropped rather than executed again.
AWAITED = (
    LeaseInstances,
    ProbeAgents,
    TakeSnapshots,
    InstallPatches,
    CheckHealth,
    RollBack,
    LeavePools,
    RejoinPools,
    RunHostHook,
    CallWaveHook,
    Wait,
    CancelCloudScheduledRun,
    StartMachines,
    ReturnMachines,
)
# Executed whenever issued: each is idempotent on its own (a notice is claimed per channel, a
# follow-up starts once per run id, a follow-up's end is an event applied once, a release frees
# only the run's own leases).
ONCE_ISSUED = (Notify, StartFollowUp, FollowUpFinished, ReleaseInstances)

Standing = Literal["due", "done"]


class NotIssuedError(Exception):
    """The message is not one the stored run issued (unknown run, unknown id, other content, or
    a kind of message that never travels the queue): refuse it."""


def digest(message: Message) -> str:
    """The content of a message, as the run records it (128 bits of SHA-256 of its JSON)."""
    return hashlib.sha256(MESSAGE.dump_json(message)).hexdigest()[:32]


def with_issued(run: Run, messages: Iterable[Message]) -> Run:
    """`run` recording `messages` as issued by it."""
    issued = {m.id: digest(m) for m in messages}
    if not issued:
        return run
    return run.model_copy(update={"issued": {**run.issued, **issued}})


def with_awaited(run: Run, messages: Sequence[Message]) -> Run:
    """`run` holding the fleet command it awaits (`Run.awaited_command`), when `messages` (what
    the decision issues) hold it; none once it awaits something else. A wake-up polls that command."""
    awaited = next((m for m in messages if m.id == run.awaiting and isinstance(m, FleetCommand)), None)
    if awaited is not None:
        return run.model_copy(update={"awaited_command": awaited})
    held = run.awaited_command
    if held is not None and held.id != run.awaiting:
        return run.model_copy(update={"awaited_command": None})
    return run


def issuer(message: Message) -> str:
    """The run whose outbox a queued message comes from; NotIssuedError for a kind of message
    that never travels the queue (results, timer firings, approvals, notice records)."""
    if isinstance(message, FollowUpFinished):
        return message.follow_up_id  # the follow-up tells the run it followed
    if isinstance(message, AWAITED + ONCE_ISSUED):
        return message.run_id
    raise NotIssuedError(f"{message.type} never travels the queue: the worker does not take it from there")


def standing(run: Run, message: Message) -> Standing:
    """Whether `run` (the message's issuer) issued `message` and it is still "due", or it did
    and the message is "done" (a redelivery to drop); NotIssuedError otherwise."""
    recorded = run.issued.get(message.id)
    if recorded is None:
        raise NotIssuedError(f"run {run.run_id} never issued {message.type} {message.id}")
    if recorded != digest(message):
        raise NotIssuedError(f"{message.type} {message.id} differs from what run {run.run_id} issued")
    if isinstance(message, RejoinPools | ReturnMachines) and message.at_run_end:  # a finished run's sweep
        return "done" if message.result_id in run.processed else "due"
    if isinstance(message, AWAITED) and run.awaiting != message.id:
        return "done"
    return "due"
