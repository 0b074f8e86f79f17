"""The events (past tense) a run takes in: each one pydantic model, with a stable id; a command's
result has the id `<command id>:done`. engine/messages.py re-exports them all.
"""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from patchpilot.engine.message_base import MessageBase
from patchpilot.engine.topics import Topic
from patchpilot.inventory import Instance
from patchpilot.policy.fields import new_list


class Outcome(BaseModel):
    """What happened to one instance in one step."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # as MessageBase

    id: str
    ok: bool
    detail: str = ""
    items: list[str] = Field(default_factory=new_list)  # snapshot ids, installed patches, ...
    at: datetime | None = None


class Result(MessageBase):
    command_id: str
    results: list[Outcome]

    def by_id(self) -> dict[str, Outcome]:
        return {o.id: o for o in self.results}


class InstancesLeased(Result):
    type: Literal["InstancesLeased"] = "InstancesLeased"


class AgentsProbed(Result):
    type: Literal["AgentsProbed"] = "AgentsProbed"


class SnapshotsTaken(Result):
    type: Literal["SnapshotsTaken"] = "SnapshotsTaken"


class PatchesInstalled(Result):
    type: Literal["PatchesInstalled"] = "PatchesInstalled"


class HealthChecked(Result):
    type: Literal["HealthChecked"] = "HealthChecked"


class RolledBack(Result):
    type: Literal["RolledBack"] = "RolledBack"


class PoolsLeft(Result):
    type: Literal["PoolsLeft"] = "PoolsLeft"


class PoolsRejoined(Result):
    type: Literal["PoolsRejoined"] = "PoolsRejoined"


class HostHookRan(Result):
    type: Literal["HostHookRan"] = "HostHookRan"


class WaveHookCalled(Result):
    type: Literal["WaveHookCalled"] = "WaveHookCalled"


class PoolsSwept(Result):
    """The result of a finished run's `RejoinPools(at_run_end=True)`: applied in any state."""

    type: Literal["PoolsSwept"] = "PoolsSwept"


class MachinesStarted(Result):
    type: Literal["MachinesStarted"] = "MachinesStarted"


class MachinesReturned(Result):
    type: Literal["MachinesReturned"] = "MachinesReturned"


class MachinesSwept(Result):
    """The result of a finished run's `ReturnMachines(at_run_end=True)`: applied in any state."""

    type: Literal["MachinesSwept"] = "MachinesSwept"


class CloudScheduledRunCancelled(Result):
    """One outcome, whose id is the cloud-scheduled run's: ok when it is cancelled (wire `type`
    MaintenanceCancelled, as before)."""

    type: Literal["MaintenanceCancelled"] = "MaintenanceCancelled"


class TimerFired(MessageBase):
    type: Literal["TimerFired"] = "TimerFired"
    command_id: str


class ApprovalGranted(MessageBase):
    type: Literal["ApprovalGranted"] = "ApprovalGranted"
    by: str = "cli"  # who, as the run's log says it: "Slack U123 (alice) from 203.0.113.9"
    source: str = ""  # the address the approval came from (approval endpoints)


class ApprovalRejected(MessageBase):
    """The ring the run waits to enter is refused: the run ends there, nothing more is touched."""

    type: Literal["ApprovalRejected"] = "ApprovalRejected"
    by: str = "cli"
    reason: str = ""
    source: str = ""  # the address the rejection came from (approval endpoints)


class NoticeUndelivered(MessageBase):
    """A notice the notifier could not deliver to one channel, after its retries: recorded in the
    run (status, report) in any state, finished runs included; it changes nothing else. The id is
    `<notice id>:undelivered:<channel>`, so a notice failing twice is recorded once."""

    type: Literal["NoticeUndelivered"] = "NoticeUndelivered"
    notice_id: str
    topic: Topic
    channel: str
    reason: str  # never the webhook URL
    at: datetime


class FollowUpRequested(MessageBase):
    """Instances an advisory concerns that run `run_id` does not cover (they came later): recorded
    in the run in any state, finished runs included, once per id (`<run id>:followup:<hash of the
    sorted instance ids>`). Follow-up run `follow_up_id` patches them once the run has ended,
    with what its first ring promoted; never when the run halted or promoted nothing."""

    type: Literal["FollowUpRequested"] = "FollowUpRequested"
    follow_up_id: str
    instances: list[Instance]
    reason: str = ""  # what asked for it (the advisory), for the log
    at: datetime


class FollowUpFinished(MessageBase):
    """Follow-up run `follow_up_id` of run `run_id` has ended (from its outbox, id
    `<follow-up id>:finished`): the run starts its next follow-up, or none after a halt. With
    `not_started`, it never started (why: a freeze), and the run starts no further follow-up."""

    type: Literal["FollowUpFinished"] = "FollowUpFinished"
    follow_up_id: str
    halted: bool
    at: datetime
    not_started: str = ""


Event = Annotated[
    InstancesLeased
    | AgentsProbed
    | SnapshotsTaken
    | PatchesInstalled
    | HealthChecked
    | RolledBack
    | PoolsLeft
    | PoolsRejoined
    | HostHookRan
    | WaveHookCalled
    | PoolsSwept
    | CloudScheduledRunCancelled
    | TimerFired
    | ApprovalGranted
    | ApprovalRejected
    | NoticeUndelivered
    | FollowUpRequested
    | FollowUpFinished
    | MachinesStarted
    | MachinesReturned
    | MachinesSwept,
    Field(discriminator="type"),
]
