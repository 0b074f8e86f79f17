"""The commands (imperative) a run issues: each one pydantic model, with a stable id; its result
event has the id `<command id>:done` (engine/events.py), so a command executed twice yields one
event. engine/messages.py re-exports them all.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from patchpilot.engine.message_base import MessageBase
from patchpilot.engine.topics import Severity, Topic
from patchpilot.inventory import Instance
from patchpilot.policy.fields import Duration, new_list
from patchpilot.policy.model import HealthChecks, HostHook, WaveHook


class _Command(MessageBase):
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
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # as MessageBase

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
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # as MessageBase

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
