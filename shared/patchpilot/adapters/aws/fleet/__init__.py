"""The AWS fleet: EC2 for inventory, snapshots, status checks and root-volume replacement; Systems
Manager (SSM) for agents, patching and health scripts; CloudWatch alarms and HTTP for the
policy's own health checks.

Every method is idempotent per command id and keeps no state of its own: each execution
re-derives the operation's progress from the clouds, finding what an earlier execution started
by a mark it left there, before starting anything:

- snapshots carry the tags PatchPilotCommand/PatchPilotInstance (one DescribeSnapshots per
  account and region lists all snapshots of the command);
- SSM commands carry the command id in their Comment (SendCommand has no client token and
  ListCommands cannot filter on the Comment, so ListCommands is filtered by document and
  InvokedAfter, and the comments are matched here);
- root-volume replacement tasks are created with a ClientToken derived from the command and
  instance ids and tagged with the command id (found again by DescribeReplaceRootVolumeTasks);
- volumes restored from data volume snapshots are created with a ClientToken derived from the
  command id, instance id and device, and tagged PatchPilotCommand/PatchPilotInstance/
  PatchPilotDevice; the originals they replace are kept and tagged PatchPilotReplacedBy; whether
  to stop, detach, attach or start is read from the instance's state and device mappings;
- a health check's start time is a tag on the instance, written once;
- override files (InstallOverrideList for a pinned later ring, BaselineOverride for an install
  of only the named patches: an emergency run's first ring) have S3 keys derived from the run
  and command ids, so a redelivery rewrites the same object before the same SendCommand.

Calls are batched per (account, region): at most 50 ids per SSM call, 100-200 per EC2 call.

The package is cut by capability: `discovery` (and the agent probe), `snapshots`, `install` (and
its override files), `health`, `hooks` (the policy's host hooks), `rollback`, `power`; what they
share with the assessor (`../compliance.py`) and the maintenance source (`../maintenance_watch.py`)
is `../access.py`. Each capability's module is imported by the step that uses it: the worker's
cold start handles one step, and pays for that step's module only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from patchpilot.adapters.health import HttpGet, urllib_get
from patchpilot.engine.messages import (
    CheckHealth,
    InstallPatches,
    ProbeAgents,
    ReturnMachines,
    RollBack,
    RunHostHook,
    StartMachines,
    TakeSnapshots,
)
from patchpilot.inventory import Instance
from patchpilot.policy.model import Policy
from patchpilot.ports import Clock, DiscoveryResult, InProgress, Progress

from ..access import (
    COMMAND_LOOKBACK,
    PATCH_DOCUMENT,
    TAG_COMMAND,
    TAG_DEVICE,
    TAG_DRAINED,
    TAG_HEALTH,
    TAG_INSTANCE,
    TAG_REPLACED_BY,
    TAG_RUN,
    TAG_WAVE,
    AwsAccess,
    client_token,
)
from ..sessions import ClientFactory

if TYPE_CHECKING:
    from patchpilot.adapters.health import HttpProbe
    from patchpilot.compliance.model import AssessmentStarted, PatchState
    from patchpilot.maintenance.model import WatchResult

    from ..wake_events import WakeScope
    from . import install

# With the waker (template.yaml's WakerFunction: EventBridge tells the worker when an SSM command or
# an EBS snapshot set ends, docs/architecture.md "Wake-ups"), the steps it covers are polled at these
# longer intervals, as a fallback for a lost event; without it, at each module's own (snapshots
# 3 min, install 5 min, host hooks 30 s). Health checks keep their 2 minutes: the status checks and
# the agent's return after a reboot send no event, only the health script's end does.
WOKEN_POLLS: Final = {
    "snapshot": timedelta(minutes=15),
    "install": timedelta(minutes=20),
    "hook": timedelta(minutes=5),
}

__all__ = [
    "PATCH_DOCUMENT",
    "TAG_COMMAND",
    "TAG_DEVICE",
    "TAG_DRAINED",
    "TAG_HEALTH",
    "TAG_INSTANCE",
    "TAG_REPLACED_BY",
    "TAG_RUN",
    "TAG_WAVE",
    "DiscoveryResult",
    "Ec2SsmFleet",
    "client_token",
]


class Ec2SsmFleet:
    """A `FleetProvider` over EC2 and Systems Manager, plus discovery of the fleet, its patch
    compliance (`PatchAssessor`) and the maintenance AWS has scheduled (`MaintenanceSource`)."""

    cloud: Final = "aws"

    def __init__(
        self,
        client: ClientFactory,
        clock: Clock,
        *,
        override_bucket: str | None = None,
        override_bucket_region: str | None = None,
        default_region: str = "us-east-1",
        http_get: HttpGet = urllib_get,
        http_timeout: float = 5.0,
        command_lookback: timedelta = COMMAND_LOOKBACK,
        wake: WakeScope | None = None,
    ) -> None:
        """`client` builds boto3 clients per (service, account, region) (see `AwsSessions`);
        `override_bucket` receives the InstallOverrideList files of pinned (later-ring) installs
        and the BaselineOverride files of named-only (emergency) installs, and must be readable
        by the instances' profiles in every account."""
        self.access = AwsAccess(client, clock, default_region=default_region, command_lookback=command_lookback)
        self._override = (override_bucket, override_bucket_region or default_region) if override_bucket else None
        self._http = (http_get, http_timeout)
        self.wake = wake  # with a waker: the steps of the machines it hears from poll at `WOKEN_POLLS`

    @functools.cached_property
    def override_bucket(self) -> install.OverrideBucket | None:
        from . import install

        return install.OverrideBucket(*self._override) if self._override else None

    @functools.cached_property
    def http(self) -> HttpProbe:
        """The policy's HTTP health checks (`adapters/health.py`)."""
        from patchpilot.adapters.health import HttpProbe

        return HttpProbe(*self._http)

    @property
    def clock(self) -> Clock:
        return self.access.clock

    @property
    def default_region(self) -> str:
        return self.access.default_region

    # ------------------------------------------------------------ compliance and maintenance watch

    def start_assessment(self, instances: Sequence[Instance], token: str) -> AssessmentStarted:
        """`AWS-RunPatchBaseline` Scans, idempotent per token (adapters/aws/compliance.py)."""
        from .. import compliance  # imported on first use: a handler that runs no scan never pays for it

        return compliance.start_assessment(self.access, instances, token)

    def patch_states(self, instances: Sequence[Instance]) -> list[PatchState]:
        """Patch states read in bulk (adapters/aws/compliance.py)."""
        from .. import compliance

        return compliance.patch_states(self.access, instances)

    def upcoming_maintenance(self, policy: Policy, instances: Sequence[Instance], now: datetime) -> WatchResult:
        """EC2 scheduled events, RDS pending maintenance, Health changes (adapters/aws/maintenance_watch.py)."""
        from .. import maintenance_watch

        return maintenance_watch.upcoming_maintenance(self.access, policy, instances, now)

    # ------------------------------------------------------------ the fleet provider

    def discover(self, policy: Policy) -> DiscoveryResult:
        """The policy's AWS instances (running or stopped) in its accounts and regions, each
        marked unreachable when its SSM agent is offline or it is not a managed instance."""
        from . import discovery

        return discovery.discover(self.access, policy)

    def probe_agents(self, command: ProbeAgents) -> Progress:
        from . import discovery

        return discovery.probe_agents(self.access, command)

    def take_snapshots(self, command: TakeSnapshots) -> Progress:
        from . import snapshots

        return self._fallback(snapshots.take_snapshots(self.access, command), "snapshot", command)

    def install_patches(self, command: InstallPatches) -> Progress:
        from . import install

        return self._fallback(install.install_patches(self.access, command, self.override_bucket), "install", command)

    def check_health(self, command: CheckHealth) -> Progress:
        from . import health

        return health.check_health(self.access, command, self.http)

    def run_hook(self, command: RunHostHook) -> Progress:
        """The policy's host hook through SSM Run Command, once per command id (`hooks`)."""
        from . import hooks

        return self._fallback(hooks.run_hook(self.access, command), "hook", command)

    def roll_back(self, command: RollBack) -> Progress:
        from . import rollback

        return rollback.roll_back(self.access, command)

    def start_machines(self, command: StartMachines) -> Progress:
        """StartInstances for the machines found stopped (`power`)."""
        from . import power

        return power.start_machines(self.access, command)

    def return_machines(self, command: ReturnMachines) -> Progress:
        """StopInstances: back to `stopped` as found."""
        from . import power

        return power.return_machines(self.access, command)

    def _fallback(
        self, progress: Progress, step: str, command: TakeSnapshots | InstallPatches | RunHostHook
    ) -> Progress:
        """With the waker, the next poll of a step it covers no sooner than its `WOKEN_POLLS`; only
        when every machine is where the waker hears from (`WakeScope`): the stack's own account and
        region, and those that forward their events to its wake bus."""
        if self.wake is None or not isinstance(progress, InProgress):
            return progress
        from patchpilot.wakeups import targets

        if not all(self.wake.covers(i.account, i.region) for i in targets(command)):
            return progress
        return progress._replace(retry_at=max(progress.retry_at, self.clock.now() + WOKEN_POLLS[step]))
