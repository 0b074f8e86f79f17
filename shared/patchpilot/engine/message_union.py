"""`Message`: every message of a run, the union that `MESSAGE` reads (engine/message_adapter.py loads
this module with the first read) and engine/messages.py re-exports."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from patchpilot.engine.commands import (
    CallWaveHook,
    CancelCloudScheduledRun,
    CheckHealth,
    InstallPatches,
    LeaseInstances,
    LeavePools,
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
from patchpilot.engine.events import (
    AgentsProbed,
    ApprovalGranted,
    ApprovalRejected,
    CloudScheduledRunCancelled,
    FollowUpFinished,
    FollowUpRequested,
    HealthChecked,
    HostHookRan,
    InstancesLeased,
    MachinesReturned,
    MachinesStarted,
    MachinesSwept,
    NoticeUndelivered,
    PatchesInstalled,
    PoolsLeft,
    PoolsRejoined,
    PoolsSwept,
    RolledBack,
    SnapshotsTaken,
    TimerFired,
    WaveHookCalled,
)
from patchpilot.engine.wakeup_messages import LookNow

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
