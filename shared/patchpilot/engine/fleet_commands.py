"""The fleet's commands: the steps a cloud performs on machines (probe, start, snapshot, install,
check, roll back, host hooks, return), the ones a run awaits and a cloud event can say are done
(`AwaitedFleetCommand`, which every run holds). engine/commands.py has the others and the union
of them all; engine/messages.py re-exports every name.
"""

from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from patchpilot.engine.message_base import CommandBase
from patchpilot.inventory import Instance
from patchpilot.policy.fields import Duration, Scalar, new_list
from patchpilot.policy.model import HealthChecks, HostHook


class ProbeAgents(CommandBase):
    """Ask whether each instance's management agent answers (SSM, Azure VM agent)."""

    type: Literal["ProbeAgents"] = "ProbeAgents"
    targets: list[Instance]


class StartMachines(CommandBase):
    """Start each target, found stopped or deallocated (`Instance.power`, policy `stopped_machines:
    start`), for its wave: done once each runs (and its agent can be probed). A target already
    running is not started again."""

    type: Literal["StartMachines"] = "StartMachines"
    targets: list[Instance]


class ReturnMachines(CommandBase):
    """Return each target to the power state it was found in (`Instance.power`: AWS StopInstances;
    Azure deallocate, or power off for `stopped`); done once each is. A target already in that
    state is not touched. `at_run_end`: the sweep of a finished run, which returns what a crash
    or a halt may have left running."""

    type: Literal["ReturnMachines"] = "ReturnMachines"
    targets: list[Instance]
    at_run_end: bool = False


class TakeSnapshots(CommandBase):
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


class InstallPatches(CommandBase):
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


class CheckHealth(CommandBase):
    """The cloud's status checks (instance running, agent back after the reboot) plus the
    policy's own checks."""

    type: Literal["CheckHealth"] = "CheckHealth"
    targets: list[Instance]
    after_rollback: bool = False
    checks: HealthChecks = HealthChecks.model_construct()  # as the policy's default (policy/model.py)


class RestoreTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)  # as MessageBase

    instance: Instance
    snapshot_ids: list[str]


class RollBack(CommandBase):
    """Restore each target from the snapshots taken before it was patched."""

    type: Literal["RollBack"] = "RollBack"
    targets: list[RestoreTarget]
    restore_data_volumes: bool = False  # the root volume always; data volumes when the policy asks


class RunHostHook(CommandBase):
    """Run the policy's host hook (stored with the run) on each target through Run Command / SSM,
    within the hook's timeout: ok on exit 0; the outcome's detail is the output's tail."""

    type: Literal["RunHostHook"] = "RunHostHook"
    targets: list[Instance]
    phase: Literal["before_install", "after_install"]
    hook: HostHook
    issued_at: datetime


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
_AWAITED_BY_TYPE: dict[str, type[FleetCommand]] = {c.model_fields["type"].default: c for c in get_args(FleetCommand)}


def _as_awaited(value: object) -> FleetCommand | None:
    if value is None or isinstance(value, FleetCommand):
        return value
    kind = value.get("type") if isinstance(value, dict) else None
    command = _AWAITED_BY_TYPE.get(kind) if isinstance(kind, str) else None
    if command is None:
        kinds = ", ".join(_AWAITED_BY_TYPE)
        raise PydanticCustomError(
            "pp_awaited", "expected a fleet command ({kinds}), got {kind}", {"kinds": kinds, "kind": repr(kind)}
        )
    return command.model_validate(value)


HeldAwaitedCommand = Annotated[
    AwaitedFleetCommand | None,
    # read by the command's own class, written as pydantic infers it (by that class): the validator a
    # worker builds for the command anyway, to take it from the queue, rather than a second copy of
    # every fleet command's built into the run's own
    Scalar(_as_awaited, None, {"anyOf": [{"type": "object", "description": "a fleet command"}, {"type": "null"}]}),
]
