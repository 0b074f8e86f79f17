"""Commands (imperative) and events (past tense) that flow between the steps of a run.

Each is one pydantic model so fields can grow; every message has a stable id. A command's
result event has the id `<command id>:done`, so a command executed twice yields one event.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import from_json

from patchpilot.engine.topics import Severity as Severity  # re-exported: Notify and its readers use them
from patchpilot.engine.topics import Topic as Topic
from patchpilot.inventory import Instance
from patchpilot.policy.fields import Duration, new_list
from patchpilot.policy.model import HealthChecks, HostHook, WaveHook

if TYPE_CHECKING:
    from pydantic.json_schema import JsonSchemaMode


class _Message(BaseModel):
    # Each message's own validator is built when a message of its type is first built or validated
    # on its own (`defer_build`): a cold start uses a few of them; `MESSAGE` reads and writes them all.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    id: str
    run_id: str


# ---------------------------------------------------------------- commands


class _Command(_Message):
    wave: int | None = None  # 1-based wave index, where the command concerns a wave

    @property
    def result_id(self) -> str:
        return f"{self.id}:done"


class LeaseInstances(_Command):
    """Take each target's lease for this run (one machine, one run at a time), lapsing at
    `until`. While another run holds one of them and `wait_until` is ahead, the wave waits (the
    command is polled, holding nothing); then the held ones are reported "held by run X"."""

    type: Literal["LeaseInstances"] = "LeaseInstances"
    targets: list[str]  # instance ids
    until: datetime
    wait_until: datetime | None = None


class ReleaseInstances(_Command):
    """Give up this run's leases on the targets: they have left the run."""

    type: Literal["ReleaseInstances"] = "ReleaseInstances"
    targets: list[str]


class ProbeAgents(_Command):
    """Ask whether each instance's management agent answers (SSM, Azure VM agent)."""

    type: Literal["ProbeAgents"] = "ProbeAgents"
    targets: list[Instance]


class StartMachines(_Command):
    """Start each target, found stopped or deallocated (`Instance.power`, policy `stopped_machines:
    start`), for its wave: done once each runs (and its agent can be probed). A target already
    running is not started again."""

    type: Literal["StartMachines"] = "StartMachines"
    targets: list[Instance]


class ReturnMachines(_Command):
    """Return each target to the power state it was found in (`Instance.power`: AWS StopInstances;
    Azure deallocate, or power off for `stopped`); done once each is. A target already in that
    state is not touched. `at_run_end`: the sweep of a finished run, which returns what a crash
    or a halt may have left running."""

    type: Literal["ReturnMachines"] = "ReturnMachines"
    targets: list[Instance]
    at_run_end: bool = False


class TakeSnapshots(_Command):
    """Snapshot every disk of every target, tagged with the run, wave and command id."""

    type: Literal["TakeSnapshots"] = "TakeSnapshots"
    targets: list[Instance]
    # Snapshots not complete by then count as failed (a cloud-scheduled run's cancellation cut-off).
    deadline: datetime | None = None
    # Machines that cannot be snapshotted (Arc servers) pass without one: the plan's flag (the
    # policy's azure.patch_without_rollback, which also let the planner plan them).
    patch_without_rollback: bool = False


Reboot = Literal["if_required", "always", "never"]


class InstallTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # as _Message

    instance: Instance
    only: list[str] | None = None  # the promoted, pinned set; None: what the policy selects
    # Ids and masks (as InstallPatches.exclude) this machine's install leaves out on top of the
    # command's, `only` included: the policy's patch exceptions in force (docs/governance.md).
    exclude: list[str] = Field(default_factory=new_list)
    # This machine's reboot, where it differs from the command's: "never" on a hotpatch-enabled
    # machine whose promoted set is live patches only (patchpilot/hotpatch.py).
    reboot: Reboot | None = None

    def reboot_for(self, command_reboot: Reboot) -> Reboot:
        """The reboot this machine's install uses."""
        return self.reboot or command_reboot


class InstallPatches(_Command):
    type: Literal["InstallPatches"] = "InstallPatches"
    targets: list[InstallTarget]
    classifications: list[str]
    include: list[str] = Field(default_factory=new_list)
    exclude: list[str] = Field(default_factory=new_list)
    reboot: Literal["if_required", "always", "never"] = "if_required"
    max_duration: Duration | None = None
    # Set when the cloud installs on its own schedule (the cloud-scheduled run's id; the field
    # keeps its wire name): the fleet starts nothing and reports what that run installed.
    maintenance_run: str | None = None


class CheckHealth(_Command):
    """The cloud's status checks (instance running, agent back after the reboot) plus the
    policy's own checks."""

    type: Literal["CheckHealth"] = "CheckHealth"
    targets: list[Instance]
    after_rollback: bool = False
    checks: HealthChecks = HealthChecks.model_construct()  # unvalidated: see Policy's defaults


class RestoreTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # as _Message

    instance: Instance
    snapshot_ids: list[str]


class RollBack(_Command):
    """Restore each target from the snapshots taken before it was patched."""

    type: Literal["RollBack"] = "RollBack"
    targets: list[RestoreTarget]
    restore_data_volumes: bool = False  # the root volume always; data volumes when the policy asks


class LeavePools(_Command):
    """Take each target out of its traffic pools (ELBv2 target groups, Load Balancer and Application
    Gateway backend pools) and, with `standby`, put the members of an AWS Auto Scaling group into
    Standby (desired capacity decremented); done once every pool reports the target drained (AWS:
    target state `unused`; Azure: out of the backend pool and the probe's interval × threshold
    elapsed). Not drained by `issued_at` + `timeout` (unset: the pool's own default, the target
    group's deregistration delay) is a failure. A target already out is not touched again. An
    outcome's `items` are the registrations removed, in the adapter's own words (RejoinPools gets
    them back); for a target found already out, what the adapter knows it is out of (the
    simulated fleet: nothing; ELBv2: its default registrations; Azure: what its NIC's record
    says), never more than a leave of it removed (tests/test_traffic_contract.py)."""

    type: Literal["LeavePools"] = "LeavePools"
    targets: list[Instance]
    issued_at: datetime
    timeout: Duration | None = None
    standby: bool = False


class RejoinPools(_Command):
    """Put each target back into its traffic pools (and out of Standby, with `standby`); with
    `pool_health`, done once each pool reports it healthy, a failure when one does not by
    `issued_at` + `timeout`. A target already in is not touched again; an outcome's `items` name
    the pools it was actually re-added to. `at_run_end`: the sweep of a finished run, which puts
    back what a crash may have left out."""

    type: Literal["RejoinPools"] = "RejoinPools"
    targets: list[Instance]
    # What each target's LeavePools outcome reported (its `items`, by instance id): the adapter's own
    # record of the registrations it removed (port, IP configuration), so that they are restored as they were.
    registrations: dict[str, list[str]] = Field(default_factory=dict)
    issued_at: datetime
    timeout: Duration = timedelta(minutes=5)
    pool_health: bool = False
    standby: bool = False
    at_run_end: bool = False


class RunHostHook(_Command):
    """Run the policy's host hook (stored with the run) on each target through Run Command / SSM,
    within the hook's timeout: ok on exit 0; the outcome's detail is the output's tail."""

    type: Literal["RunHostHook"] = "RunHostHook"
    targets: list[Instance]
    phase: Literal["before_install", "after_install"]
    hook: HostHook
    issued_at: datetime


class CallWaveHook(_Command):
    """POST a signed JSON body naming the run, the wave and its machines to the policy's wave hook
    and wait for a 2xx answer by `issued_at` + the hook's timeout; one outcome, id `phase`."""

    type: Literal["CallWaveHook"] = "CallWaveHook"
    phase: Literal["before_wave", "after_wave"]
    hook: WaveHook
    ring: str
    machines: list[str]  # instance ids
    issued_at: datetime


class Wait(_Command):
    """Deliver a TimerFired at `until`: soaks between rings, and reminders of a gate still waiting
    for approval (`purpose` says which)."""

    type: Literal["Wait"] = "Wait"
    until: datetime
    purpose: str


class CancelCloudScheduledRun(_Command):
    """Cancel a cloud-scheduled run (Azure Update Manager's) before its cut-off: its snapshots
    failed. The wire keeps the names of before (`type` CancelMaintenance, `maintenance_run`: the
    cloud-scheduled run's id), so queued commands still parse."""

    type: Literal["CancelMaintenance"] = "CancelMaintenance"
    maintenance_run: str
    reason: str


class Notify(_Command):
    """Tell people: the console locally, Slack and Teams once routed."""

    type: Literal["Notify"] = "Notify"
    topic: Topic
    text: str
    severity: Severity = "info"


class StartFollowUp(_Command):
    """Start follow-up run `follow_up_id` of the finished run `run_id` on `instances`, installing
    exactly what that run promoted. The engine emits one at a time: the next once the previous
    follow-up has finished (`FollowUpFinished`). Starting it twice is one start (`Service.start`
    is idempotent per run id)."""

    type: Literal["StartFollowUp"] = "StartFollowUp"
    follow_up_id: str
    instances: list[Instance]


Command = Annotated[
    LeaseInstances
    | ReleaseInstances
    | ProbeAgents
    | TakeSnapshots
    | InstallPatches
    | CheckHealth
    | RollBack
    | LeavePools
    | RejoinPools
    | RunHostHook
    | CallWaveHook
    | Wait
    | Notify
    | CancelCloudScheduledRun
    | StartFollowUp
    | StartMachines
    | ReturnMachines,
    Field(discriminator="type"),
]

# ---------------------------------------------------------------- events


class Outcome(BaseModel):
    """What happened to one instance in one step."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # as _Message

    id: str
    ok: bool
    detail: str = ""
    items: list[str] = Field(default_factory=new_list)  # snapshot ids, installed patches, ...
    at: datetime | None = None


class Result(_Message):
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


class TimerFired(_Message):
    type: Literal["TimerFired"] = "TimerFired"
    command_id: str


class ApprovalGranted(_Message):
    type: Literal["ApprovalGranted"] = "ApprovalGranted"
    by: str = "cli"  # who, as the run's log says it: "Slack U123 (alice) from 203.0.113.9"
    source: str = ""  # the address the approval came from (approval endpoints)


class ApprovalRejected(_Message):
    """The ring the run waits to enter is refused: the run ends there, nothing more is touched."""

    type: Literal["ApprovalRejected"] = "ApprovalRejected"
    by: str = "cli"
    reason: str = ""
    source: str = ""  # the address the rejection came from (approval endpoints)


class NoticeUndelivered(_Message):
    """A notice the notifier could not deliver to one channel, after its retries: recorded in the
    run (status, report) in any state, finished runs included; it changes nothing else. The id is
    `<notice id>:undelivered:<channel>`, so a notice failing twice is recorded once."""

    type: Literal["NoticeUndelivered"] = "NoticeUndelivered"
    notice_id: str
    topic: Topic
    channel: str
    reason: str  # never the webhook URL
    at: datetime


class FollowUpRequested(_Message):
    """Instances an advisory concerns that run `run_id` does not cover (they came later): recorded
    in the run in any state, finished runs included, once per id (`<run id>:followup:<hash of the
    sorted instance ids>`). Follow-up run `follow_up_id` patches them once the run has ended,
    with what its first ring promoted; never when the run halted or promoted nothing."""

    type: Literal["FollowUpRequested"] = "FollowUpRequested"
    follow_up_id: str
    instances: list[Instance]
    reason: str = ""  # what asked for it (the advisory), for the log
    at: datetime


class FollowUpFinished(_Message):
    """Follow-up run `follow_up_id` of run `run_id` has ended (from its outbox, id
    `<follow-up id>:finished`): the run starts its next follow-up, or none after a halt. With
    `not_started`, it never started (why: a freeze), and the run starts no further follow-up."""

    type: Literal["FollowUpFinished"] = "FollowUpFinished"
    follow_up_id: str
    halted: bool
    at: datetime
    not_started: str = ""


# ---------------------------------------------------------------- wake-ups


class LookNow(_Message):
    """A cloud event says that an operation of run `run_id` may have finished (an SSM command, an
    EBS snapshot set, an ARM write): poll `command_id` once, now, rather than at its next poll. Input,
    never authority: the worker polls only the command the stored run awaits, and only when it is
    `command_id` (service.py); a wake-up for a command that is done changes nothing. The id is
    `<command id>:look:<window>`, one per command and wake-up window (patchpilot/wakeups.py)."""

    type: Literal["LookNow"] = "LookNow"
    command_id: str
    reason: str = ""  # what woke it, for the log: "aws.ssm EC2 Command Status-change Notification Success"


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

Message = Annotated[
    LeaseInstances
    | ReleaseInstances
    | ProbeAgents
    | TakeSnapshots
    | InstallPatches
    | CheckHealth
    | RollBack
    | LeavePools
    | RejoinPools
    | RunHostHook
    | CallWaveHook
    | Wait
    | Notify
    | CancelCloudScheduledRun
    | StartFollowUp
    | InstancesLeased
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
    | StartMachines
    | ReturnMachines
    | MachinesStarted
    | MachinesReturned
    | MachinesSwept
    | LookNow,
    Field(discriminator="type"),
]


class MessageAdapter:
    """`TypeAdapter(Message)` as the stores, queues and the engine use it (`validate_json`,
    `dump_json`, `json_schema`), building only the messages a process reads and writes: a cold
    start handles one or two of them, and the union of them all costs it several milliseconds.

    A message is written by its own class (the bytes the union writes: it picks that class's
    serializer by `type`), and read by the class its `type` names. A body that is not a valid
    message is read again by the union, so that its error is the one the union gives."""

    def __init__(self) -> None:
        self._classes: dict[str, type[BaseModel]] = {}

    @functools.cached_property
    def union(self) -> TypeAdapter[Message]:
        return TypeAdapter(Message)

    def _class_of(self, kind: object) -> type[BaseModel] | None:
        if not self._classes:
            members = get_args(get_args(Message)[0])
            self._classes.update((member.model_fields["type"].default, member) for member in members)
        return self._classes.get(kind) if isinstance(kind, str) else None

    def validate_json(self, data: str | bytes | bytearray) -> Message:
        try:
            parsed = from_json(data)
        except ValueError:
            parsed = None
        cls = self._class_of(parsed.get("type")) if isinstance(parsed, dict) else None
        if cls is not None:
            try:
                return cast("Message", cls.model_validate_json(data))
            except ValidationError:
                pass  # said as the union says it
        return self.union.validate_json(data)

    def dump_json(self, message: Message) -> bytes:
        return message.__pydantic_serializer__.to_json(message)

    def json_schema(self, *, mode: JsonSchemaMode = "validation") -> dict[str, Any]:
        return self.union.json_schema(mode=mode)


MESSAGE = MessageAdapter()

FleetCommand = (
    ProbeAgents | TakeSnapshots | InstallPatches | CheckHealth | RollBack | RunHostHook | StartMachines | ReturnMachines
)
# The fleet commands a cloud event can say are done (`LookNow`): the run keeps the one it awaits
# (`Run.awaited_command`), so that a wake-up polls exactly the stored command.
AwaitedFleetCommand = Annotated[
    ProbeAgents
    | TakeSnapshots
    | InstallPatches
    | CheckHealth
    | RollBack
    | RunHostHook
    | StartMachines
    | ReturnMachines,
    Field(discriminator="type"),
]
TrafficCommand = LeavePools | RejoinPools
