"""The commands (imperative) a run issues: each one pydantic model, with a stable id; its result
event has the id `<command id>:done` (engine/events.py), so a command executed twice yields one
event. The fleet's commands are in engine/fleet_commands.py (a run holds the one it awaits),
re-exported here with the union of them all (`Command`); engine/messages.py re-exports every name.
"""

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field

from patchpilot.engine.fleet_commands import (
    AwaitedFleetCommand,
    CheckHealth,
    FleetCommand,
    InstallPatches,
    InstallTarget,
    ProbeAgents,
    Reboot,
    RestoreTarget,
    ReturnMachines,
    RollBack,
    RunHostHook,
    StartMachines,
    TakeSnapshots,
)
from patchpilot.engine.message_base import CommandBase
from patchpilot.engine.topics import Severity, Topic
from patchpilot.inventory import Instance
from patchpilot.policy.fields import Duration
from patchpilot.policy.model import WaveHook


class LeaseInstances(CommandBase):
    """Take each target's lease for this run (one machine, one run at a time), lapsing at
    `until`. While another run holds one of them and `wait_until` is ahead, the wave waits (the
    command is polled, holding nothing); then the held ones are reported "held by run X"."""

    type: Literal["LeaseInstances"] = "LeaseInstances"
    targets: list[str]  # instance ids
    until: datetime
    wait_until: datetime | None = None


class ReleaseInstances(CommandBase):
    """Give up this run's leases on the targets: they have left the run."""

    type: Literal["ReleaseInstances"] = "ReleaseInstances"
    targets: list[str]


class LeavePools(CommandBase):
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


class RejoinPools(CommandBase):
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


class CallWaveHook(CommandBase):
    """POST a signed JSON body naming the run, the wave and its machines to the policy's wave hook
    and wait for a 2xx answer by `issued_at` + the hook's timeout; one outcome, id `phase`."""

    type: Literal["CallWaveHook"] = "CallWaveHook"
    phase: Literal["before_wave", "after_wave"]
    hook: WaveHook
    ring: str
    machines: list[str]  # instance ids
    issued_at: datetime


class Wait(CommandBase):
    """Deliver a TimerFired at `until`: soaks between rings, and reminders of a gate still waiting
    for approval (`purpose` says which)."""

    type: Literal["Wait"] = "Wait"
    until: datetime
    purpose: str


class CancelCloudScheduledRun(CommandBase):
    """Cancel a cloud-scheduled run (Azure Update Manager's) before its cut-off: its snapshots
    failed. The wire keeps the names of before (`type` CancelMaintenance, `maintenance_run`: the
    cloud-scheduled run's id), so queued commands still parse."""

    type: Literal["CancelMaintenance"] = "CancelMaintenance"
    maintenance_run: str
    reason: str


class Notify(CommandBase):
    """Tell people: the console locally, Slack and Teams once routed."""

    type: Literal["Notify"] = "Notify"
    topic: Topic
    text: str
    severity: Severity = "info"


class StartFollowUp(CommandBase):
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

TrafficCommand = LeavePools | RejoinPools

# Its own names and the fleet's commands, re-exported (engine/messages.py imports them all from here).
__all__ = [
    "AwaitedFleetCommand",
    "CallWaveHook",
    "CancelCloudScheduledRun",
    "CheckHealth",
    "Command",
    "FleetCommand",
    "InstallPatches",
    "InstallTarget",
    "LeaseInstances",
    "LeavePools",
    "Notify",
    "ProbeAgents",
    "Reboot",
    "RejoinPools",
    "ReleaseInstances",
    "RestoreTarget",
    "ReturnMachines",
    "RollBack",
    "RunHostHook",
    "StartFollowUp",
    "StartMachines",
    "TakeSnapshots",
    "TrafficCommand",
    "Wait",
]
