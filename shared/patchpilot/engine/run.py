"""The state of one patch run: plan, progress, and what happened to every instance."""

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal, TypeGuard, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from patchpilot.engine.fleet_commands import HeldAwaitedCommand
from patchpilot.engine.statuses import Status as Status
from patchpilot.engine.statuses import TerminalState as TerminalState
from patchpilot.inventory import Instance
from patchpilot.policy import Policy
from patchpilot.policy.fields import new_list

FinalInstanceState = Literal["patched", "rolled_back", "failed", "skipped", "not_started", "excluded"]
InstanceState = Literal["pending", FinalInstanceState]
FINAL_STATES: frozenset[FinalInstanceState] = frozenset(get_args(FinalInstanceState))
StepName = Literal[
    "lease",
    "start",  # started for its wave: found stopped or deallocated (stopped_machines: start)
    "return",  # returned to the power state it was found in
    "probe",
    "snapshot",
    "drain",  # left its traffic pools (and, with standby, entered Standby) before the install
    "before_install",  # the policy's before_install host hook
    "install",
    "after_install",  # the policy's after_install host hook
    "health",
    "rejoin",  # back into its traffic pools (with pool_health: the pools report it healthy)
    "redrain",  # out of its pools again before a rollback (its pools reported it unhealthy)
    "rollback",
    "recheck",
]

# The stored strings are the wire format: a run saved in any of them must still load.
# `cancelling`: waiting for a cloud-scheduled run to be cancelled (engine/decide.py, "Words" in
# docs/architecture.md).
RunState = Literal[
    "leasing",
    "starting",  # machines found stopped or deallocated are started (stopped_machines: start)
    "returning",  # ... and returned to that state at the wave's end
    "probing",
    "snapshotting",
    "opening_wave",  # the policy's before_wave hook (docs/traffic.md)
    "draining",  # machines leave their traffic pools before the install
    "preparing",  # the before_install host hook
    "installing",
    "verifying",  # the after_install host hook
    "checking",
    "rejoining",  # healthy machines rejoin their pools (with pool_health: the pools' own check)
    "redraining",  # machines their pools found unhealthy leave them again before the rollback
    "rolling_back",
    "rechecking",
    "restoring",  # rolled-back machines, healthy again, rejoin their pools
    "closing_wave",  # the policy's after_wave hook
    "cancelling",
    "soaking",
    "awaiting_approval",
    TerminalState,
]
TERMINAL_STATES: frozenset[TerminalState] = frozenset(get_args(TerminalState))


def is_terminal(state: RunState) -> TypeGuard[TerminalState]:
    return state in TERMINAL_STATES


# Where a run is driven: the local runtime (a state directory) or a cloud deployment. Its notices
# name the commands that work for it (`patchpilot retry --cloud aws RUN`), and only a cloud run
# is reminded of a gate (nothing runs while a local run waits: its process has exited).
Runtime = Literal["local", "aws", "azure"]


class _State(BaseModel):
    # The parts of a run build their own validators when first built on their own (`defer_build`):
    # loading a `Run` never needs them.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class Step(_State):
    """One thing done to one instance, for the report."""

    step: StepName
    at: datetime
    ok: bool
    detail: str = ""


class InstanceRecord(_State):
    # Built at import: a wave's schema and the run's own (`excluded`) take it rather than build it twice.
    model_config = ConfigDict(defer_build=False)

    instance: Instance
    ring: str
    wave: int | None = None
    state: InstanceState = "pending"
    reason: str = ""
    failure: str = ""  # what went wrong (snapshot, install, health), counted against the wave
    snapshot_ids: list[str] = Field(default_factory=new_list)
    installed: list[str] = Field(default_factory=new_list)
    steps: list[Step] = Field(default_factory=new_list)
    # Out of its traffic pools (or in Standby) because of this run: it rejoins once healthy; a
    # machine left broken stays out (docs/traffic.md).
    out_of_pools: bool = False
    # What leaving its pools removed, in the traffic adapter's words (`LeavePools` outcome items):
    # rejoining puts back exactly that.
    pool_registrations: list[str] = Field(default_factory=new_list)
    # Started by this run (found stopped or deallocated, `Instance.power`) and not yet returned to
    # that state: the wave's end returns it, and so does the run's end if a crash or halt came first.
    started: bool = False

    @property
    def id(self) -> str:
        return self.instance.id


class WaveState(_State):
    model_config = ConfigDict(defer_build=False)  # the cloud run stores read and write each wave alone

    index: int  # 1-based
    ring: str
    ring_position: int  # 0 for the first ring of the policy
    canary: bool = False
    records: dict[str, InstanceRecord]
    started_at: datetime | None = None
    finished_at: datetime | None = None
    opened: bool = False  # the wave reached its first disruptive step (before_wave hook, drain, install)
    closed: bool = False  # its after_wave hook was called

    @property
    def failures(self) -> int:
        return sum(1 for r in self.records.values() if r.failure)


class LogEntry(_State):
    at: datetime
    text: str
    level: Literal["info", "warning", "error"] = "info"


class UndeliveredNotice(_State):
    """A notice that did not reach one channel, and why (never the webhook URL)."""

    notice_id: str
    topic: str
    channel: str
    reason: str
    at: datetime


class CloudScheduledRun(_State):
    """The cloud-scheduled run a run accompanies: the cloud (Azure Update Manager) installs on its
    own schedule; PatchPilot snapshots before, checks health after and rolls back what failed."""

    id: str  # the correlation id of the pre/post events (Update Manager: an applyUpdates resource id)
    configuration_id: str  # the schedule it belongs to (Update Manager: a maintenance configuration)
    starts_at: datetime
    ends_at: datetime
    cancel_by: datetime  # the cancellation cut-off: snapshots must be done before it


class FollowUp(_State):
    """Instances an advisory concerned after the run was planned: follow-up run `run_id` patches
    them once this run has ended (`FollowUpRequested`)."""

    run_id: str
    instances: list[Instance]
    requested_at: datetime
    state: Literal["requested", "started", "finished", "not_started"] = "requested"


class Run(_State):
    # Fields renamed in code keep their stored names as aliases: a stored run loads, and is saved
    # with the same keys as before.
    model_config = ConfigDict(frozen=True, extra="forbid", serialize_by_alias=True, defer_build=False)

    run_id: str
    policy: Policy
    created_at: datetime
    window_end: datetime | None = None
    state: RunState = "probing"
    reason: str = ""
    version: int = 0
    cursor: int = 0  # 0-based position of the current wave in `waves`
    awaiting: str | None = None  # id of the command whose result the run waits for
    # That command itself, when it is a fleet command: a wake-up (`LookNow`) polls exactly it
    # (engine/issued.py `with_awaited`); None for a run stored before the field existed.
    awaited_command: HeldAwaitedCommand = None
    waves: tuple[WaveState, ...]
    excluded: tuple[InstanceRecord, ...] = ()
    promoted: dict[str, list[str]] | None = None  # per os: what the first ring installed and passed
    processed: tuple[str, ...] = ()  # ids of the events already applied
    log: tuple[LogEntry, ...] = ()
    # The cloud-scheduled run this run accompanies (stored as `maintenance`, its name before).
    cloud_scheduled: CloudScheduledRun | None = Field(
        default=None, validation_alias=AliasChoices("cloud_scheduled", "maintenance"), serialization_alias="maintenance"
    )
    # Machines that cannot be snapshotted are patched without one (the plan's flag; a run stored
    # before the field existed takes it from its policy, as the engine then did).
    patch_without_rollback: bool = False
    undelivered: tuple[UndeliveredNotice, ...] = ()  # notices the notifier could not deliver
    follow_ups: tuple[FollowUp, ...] = ()  # runs to start once this one has ended
    follow_up_of: str | None = None  # set on a follow-up run: every ring installs `promoted`, pinned
    # Every message the run put in its outbox: id -> digest of its content (engine/issued.py).
    # The worker executes only what is recorded here.
    issued: dict[str, str] = Field(default_factory=dict)
    leased: tuple[str, ...] = ()  # the instances whose lease the run holds (the current wave's)
    runtime: Runtime = "local"  # a run stored before this field was local or named local commands
    # The freeze an emergency run started in (docs/governance.md): its first ring waits for approval.
    frozen_by: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _stored_without_the_flag(cls, data: Any) -> Any:
        """A run stored before `patch_without_rollback` existed takes it from its policy, where the
        engine read it then."""
        if not isinstance(data, dict) or "patch_without_rollback" in data:
            return data
        policy = data.get("policy")
        azure = policy.azure if isinstance(policy, Policy) else (policy or {}).get("azure")
        if isinstance(azure, dict):
            return {**data, "patch_without_rollback": bool(azure.get("patch_without_rollback"))}
        return {**data, "patch_without_rollback": bool(azure and azure.patch_without_rollback)}

    @property
    def status(self) -> Status:
        if is_terminal(self.state):
            return self.state
        return "waiting_approval" if self.state == "awaiting_approval" else "running"

    @property
    def finished(self) -> bool:
        return is_terminal(self.state)

    @property
    def may_follow_up(self) -> bool:
        """Whether follow-up runs may start from this run: it has finished without halting and its
        first ring promoted a tested set (a halt, a rejection, a failed staging ring or a run that
        patched nothing starts none)."""
        return self.finished and self.state not in ("halted", "nothing_patched") and self.promoted is not None

    @property
    def follow_up_running(self) -> bool:
        return any(f.state == "started" for f in self.follow_ups)

    @property
    def current(self) -> WaveState:
        return self.waves[self.cursor]

    def records(self) -> list[InstanceRecord]:
        """Every instance of the run, excluded ones last."""
        return [r for w in self.waves for r in w.records.values()] + list(self.excluded)

    def broken(self) -> list[InstanceRecord]:
        """The machines the run left `failed`: patched or half rolled back, and not healthy. Only
        a person can repair them, from their snapshots."""
        return [r for r in self.records() if r.state == "failed"]

    def summary(self) -> dict[str, int]:
        return state_counts(self.records())

    def document(self) -> dict[str, Any]:
        """What `patchpilot status --json` and the status endpoints show: `{"run_id", "status",
        "reason", "policy", "summary", "instances": {id: {"state", "reason", "ring", "wave",
        "out_of_pools"}}, "broken":
        [{"id", "name", "reason", "snapshot_ids"}], "undelivered": [{"notice", "topic", "channel", "reason"}]}`."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "reason": self.reason,
            "policy": self.policy.name,
            "summary": self.summary(),
            "instances": {
                r.id: {
                    "state": r.state,
                    "reason": r.reason,
                    "ring": r.ring or None,
                    "wave": r.wave,
                    "out_of_pools": r.out_of_pools,  # out of its traffic pools because of this run
                }
                for r in self.records()
            },
            "broken": [
                {"id": r.id, "name": r.instance.short_name, "reason": r.reason, "snapshot_ids": list(r.snapshot_ids)}
                for r in self.broken()
            ],
            "undelivered": [
                {"notice": n.notice_id, "topic": n.topic, "channel": n.channel, "reason": n.reason}
                for n in self.undelivered
            ],
        }


def state_counts(records: Iterable[InstanceRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.state] = counts.get(record.state, 0) + 1
    return counts


def count_states(records: Iterable[InstanceRecord]) -> str:
    """`3 excluded, 62 patched, 1 rolled back`."""
    counts = sorted(state_counts(records).items())
    return ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in counts) or "nothing"
