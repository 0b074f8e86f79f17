"""Commands (imperative) and events (past tense) that flow between the steps of a run.

Each is one pydantic model so fields can grow; every message has a stable id. A command's
result event has the id `<command id>:done`, so a command executed twice yields one event.

They live in engine/commands.py, engine/events.py and engine/wakeup_messages.py, so that a
process loads the ones it builds (a Lambda cold start: bench/bench_cold_start.py); this module
gathers them all (`Message`) and re-exports every name, as `MESSAGE`, which reads and writes them
(engine/message_adapter.py).
"""

from __future__ import annotations

from patchpilot.engine.commands import (
    AwaitedFleetCommand,
    CallWaveHook,
    CancelCloudScheduledRun,
    CheckHealth,
    Command,
    FleetCommand,
    InstallPatches,
    InstallTarget,
    LeaseInstances,
    LeavePools,
    Notify,
    ProbeAgents,
    Reboot,
    RejoinPools,
    ReleaseInstances,
    RestoreTarget,
    ReturnMachines,
    RollBack,
    RunHostHook,
    StartFollowUp,
    StartMachines,
    TakeSnapshots,
    TrafficCommand,
    Wait,
)
from patchpilot.engine.events import (
    AgentsProbed,
    ApprovalGranted,
    ApprovalRejected,
    CloudScheduledRunCancelled,
    Event,
    FollowUpFinished,
    FollowUpRequested,
    HealthChecked,
    HostHookRan,
    InstancesLeased,
    MachinesReturned,
    MachinesStarted,
    MachinesSwept,
    NoticeUndelivered,
    Outcome,
    PatchesInstalled,
    PoolsLeft,
    PoolsRejoined,
    PoolsSwept,
    Result,
    RolledBack,
    SnapshotsTaken,
    TimerFired,
    WaveHookCalled,
)
from patchpilot.engine.message_adapter import MESSAGE, MessageAdapter
from patchpilot.engine.message_union import Message
from patchpilot.engine.topics import Severity, Topic
from patchpilot.engine.wakeup_messages import LookNow

# Every name importable from here as before the messages moved to their modules.
__all__ = [
    "MESSAGE",
    "AgentsProbed",
    "ApprovalGranted",
    "ApprovalRejected",
    "AwaitedFleetCommand",
    "CallWaveHook",
    "CancelCloudScheduledRun",
    "CheckHealth",
    "CloudScheduledRunCancelled",
    "Command",
    "Event",
    "FleetCommand",
    "FollowUpFinished",
    "FollowUpRequested",
    "HealthChecked",
    "HostHookRan",
    "InstallPatches",
    "InstallTarget",
    "InstancesLeased",
    "LeaseInstances",
    "LeavePools",
    "LookNow",
    "MachinesReturned",
    "MachinesStarted",
    "MachinesSwept",
    "Message",
    "MessageAdapter",
    "NoticeUndelivered",
    "Notify",
    "Outcome",
    "PatchesInstalled",
    "PoolsLeft",
    "PoolsRejoined",
    "PoolsSwept",
    "ProbeAgents",
    "Reboot",
    "RejoinPools",
    "ReleaseInstances",
    "RestoreTarget",
    "Result",
    "ReturnMachines",
    "RollBack",
    "RolledBack",
    "RunHostHook",
    "Severity",
    "SnapshotsTaken",
    "StartFollowUp",
    "StartMachines",
    "TakeSnapshots",
    "TimerFired",
    "Topic",
    "TrafficCommand",
    "Wait",
    "WaveHookCalled",
]
