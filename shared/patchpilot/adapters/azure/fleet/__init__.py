"""The Azure fleet: Resource Graph for inventory and bulk reads, Compute for snapshots, patching,
Run Command and disk swaps, Hybrid Compute for Arc-enabled servers; HTTP for the policy's checks.

Every method is idempotent per command id and keeps no state of its own: each execution
re-derives the operation's progress from Azure, finding what an earlier execution started by a
mark it left there, before starting anything:

- snapshots (incremental, one per managed disk) have names derived from the command id and the
  disk id (`pp-<vm>-<digest>`), so a repeated command finds them in the resource group's listing,
  and carry the tags PatchPilotRun/Wave/Command/Instance/Disk;
- an install is marked before it is started: the tag PatchPilotInstall=<command id>|<UTC start>,
  once per command on its first three VMs (and on each Arc server, which has no instance view to
  look at); progress is read in bulk from Resource Graph (`patchinstallationresources`: the summary
  rows that started after the mark, then the installed patches of the finished runs). A VM with no
  run START_GRACE after the mark may never have been sent (the worker died while sending): its
  instance view (patchStatus) decides whether an installation really never started, and only then
  is installPatches sent (again). A refusal is marked on its machine (`|failed|<reason>`), so a
  later execution reports it without sending again;
- an install that Azure Update Manager makes (InstallPatches.maintenance_run) is never started
  here: its runs are found by their maintenanceRunId (the run's applyUpdates id), and the
  command's first execution is marked once, on its first machine, to time it out;
- snapshots not done by TakeSnapshots.deadline (an Update Manager run's cut-off) fail;
- a health check's start is the tag PatchPilotHealthCheck=<command id>|<UTC start> on the
  command's first machine; its script runs as a managed Run Command named `patchpilot-health`
  tagged with the command id (a Run Command of another command is replaced) and with the VM's own
  view when it started, or with BASE_UNREAD when Resource Graph showed the VM running with no
  Application Health extension and no view was read (PatchPilotHealthBase): once it has finished
  with exit 0 on a VM with no Application Health extension, it stands for that view
  (fleet/health.py);
- a rollback's restored disks have names derived from the command id and the snapshot id; every
  step (create the disks, deallocate, tag the original disks PatchPilotReplacedBy, swap the disks,
  start) is chosen from the VM's current state (fleet/rollback.py);
- a host hook (RunHostHook) runs as a managed Run Command named after its phase
  (`patchpilot-before-install`, `patchpilot-after-install`) tagged with the command id
  (fleet/hooks.py).

Arc-enabled servers have no managed disks: their snapshot step fails, or, when the policy patches
them without rollback (`patch_without_rollback`), passes with the single item ARC_NO_SNAPSHOT
(the engine needs an item to go on); their rollback always fails with the reason.

Long operations are started without waiting (`polling=False`: the request is sent, no poller
thread runs) and the method answers InProgress; the next delivery of the command reads where
they are. Throttling (429 with Retry-After) and transient errors are retried by azure-core.

Requests per call: one Resource Graph query per 400 machines (subscriptions batched by
graph.query); one VM listing per resource group for marks and disks; one instance view GET per
running VM for the agent in each wave's probe (discovery reads one only where its row cannot
tell, or for an availability set's update domain); for health, one per VM with the Application
Health extension on every poll, and for a VM without it only where its script cannot be started
on Resource Graph's word (before the script) or on the failure path; one Run Command read per
machine with a health script. docs/azure-deploy.md ("ARM requests per VM") names each per-VM
request of a run and why no bulk read replaces it.

The package is cut by capability like the AWS one: `discovery` (and the agent probe), `snapshots`,
`install`, `health`, `hooks`, `rollback`; what they share with the assessor (`../compliance.py`) and the
maintenance source (`../maintenance_watch.py`) is `../access.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from patchpilot.adapters.health import HttpGet, HttpProbe, urllib_get
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
from patchpilot.ports import Clock, DiscoveryResult, Progress
from patchpilot.wakeups import one_machine

from ..access import AzureAccess, parse_machine
from ..clients import AzureClients
from . import discovery, health, hooks, install, power, rollback, snapshots
from .install import INSTALL_MARGIN, START_GRACE
from .snapshots import ARC_NO_SNAPSHOT

if TYPE_CHECKING:
    from patchpilot.compliance.model import AssessmentStarted, PatchState
    from patchpilot.maintenance.model import WatchResult

__all__ = ["ARC_NO_SNAPSHOT", "INSTALL_MARGIN", "START_GRACE", "WOKEN_POLLS", "AzureFleet"]

# With wake-ups (infra/azure/main.bicep's `wakeTopic`: Event Grid tells the worker when an ARM write
# or action on a VM or a snapshot of the deployment's subscription ends, docs/architecture.md
# "Wake-ups"), a command on one machine is woken by that machine's events (patchpilot/wakeups.py
# `one_machine`: an event per machine or per snapshot marks the end of a step only when the step has
# one machine). Its snapshots are then polled at this longer interval, as a fallback for a lost
# event; otherwise every 2 minutes. A snapshot's write ends when it is Succeeded (its background
# copy, where one is awaited, sends no event: fleet/snapshots.py keeps the short poll then). The
# other steps keep their own polls, woken or not (docs/azure-deploy.md, "Wake-ups"): an install's
# progress is read from Resource Graph, which may not show the end its event announces yet; a health
# check also waits for the agent and the Application Health extension, which send no event; a
# rollback creates disks, whose writes the topic does not pass; a host hook's 30-second poll is the
# one it has on the many machines no event ends.
WOKEN_POLLS: Final = {
    "snapshot": timedelta(minutes=15),
}


class AzureFleet:
    """A `FleetProvider` over Azure VMs and Arc-enabled servers, plus discovery of the fleet, its
    patch compliance (`PatchAssessor`) and the platform maintenance on it (`MaintenanceSource`)."""

    cloud: Final = "azure"

    def __init__(
        self,
        clients: AzureClients,
        clock: Clock,
        *,
        http_get: HttpGet = urllib_get,
        http_timeout: float = 5.0,
        patch_without_rollback: bool = False,
        woken_subscription: str | None = None,
    ) -> None:
        """`patch_without_rollback`: an Arc server (no managed disk to snapshot) passes the snapshot
        step without a snapshot instead of failing it (policy azure.patch_without_rollback).
        `woken_subscription`: the subscription whose ARM events wake the worker (the deployment's
        system topic); a snapshot step of one of its VMs, which those events wake, is polled at
        `WOKEN_POLLS`."""
        self.access = AzureAccess(clients, clock)
        self.http = HttpProbe(http_get, http_timeout)
        self.patch_without_rollback = patch_without_rollback
        self.woken_subscription = woken_subscription

    @property
    def clock(self) -> Clock:
        return self.access.clock

    # ------------------------------------------------------------ compliance and maintenance watch

    def start_assessment(self, instances: Sequence[Instance], token: str) -> AssessmentStarted:
        """`PatchAssessor`: assessPatches per machine, once per token (compliance.py)."""
        from .. import compliance  # imported on first use: a handler that runs no scan never pays for it

        return compliance.start_assessment(self.access, instances, token)

    def patch_states(self, instances: Sequence[Instance]) -> list[PatchState]:
        """`PatchAssessor`: the latest assessments, from Resource Graph in bulk (compliance.py)."""
        from .. import compliance

        return compliance.patch_states(self.access, instances)

    def upcoming_maintenance(self, policy: Policy, instances: Sequence[Instance], now: datetime) -> WatchResult:
        """`MaintenanceSource`: platform maintenance on the machines (maintenance_watch.py)."""
        from .. import maintenance_watch

        return maintenance_watch.upcoming_maintenance(self.access, policy, instances, now)

    # ------------------------------------------------------------ the fleet provider

    def discover(self, policy: Policy) -> DiscoveryResult:
        return discovery.discover(self.access, policy)

    def probe_agents(self, command: ProbeAgents) -> Progress:
        return discovery.probe_agents(self.access, command)

    def take_snapshots(self, command: TakeSnapshots) -> Progress:
        """Woken only when the command has one machine (`wakeups.one_machine`), a VM heard."""
        woken = WOKEN_POLLS["snapshot"] if one_machine(command) and self.heard(command.targets) else None
        return snapshots.take_snapshots(self.access, command, self.patch_without_rollback, woken)

    def install_patches(self, command: InstallPatches) -> Progress:
        return install.install_patches(self.access, command)

    def check_health(self, command: CheckHealth) -> Progress:
        return health.check_health(self.access, command, self.http)

    def run_hook(self, command: RunHostHook) -> Progress:
        return hooks.run_hook(self.access, command)

    def roll_back(self, command: RollBack) -> Progress:
        return rollback.roll_back(self.access, command)

    def start_machines(self, command: StartMachines) -> Progress:
        """Start the VMs found stopped or deallocated (`power`)."""
        return power.start_machines(self.access, command)

    def return_machines(self, command: ReturnMachines) -> Progress:
        """Deallocate them again, or power off one found `stopped`."""
        return power.return_machines(self.access, command)

    def heard(self, instances: Iterable[Instance]) -> bool:
        """Whether the deployment's wake-ups hear the end of these machines' operations: all are
        VMs (an Arc server's operations are Microsoft.HybridCompute's, which the topic does not
        pass) in the subscription its system topic watches."""
        if not self.woken_subscription:
            return False
        home = self.woken_subscription.lower()
        machines = [parse_machine(i.id) for i in instances]
        return all(m is not None and not m.arc and m.subscription.lower() == home for m in machines)
