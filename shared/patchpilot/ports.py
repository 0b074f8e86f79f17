"""The ports: what the imperative shell needs from the world, by role.

Adapters implement them per runtime: SQLite and a simulated fleet locally; DynamoDB, SQS and
EC2/SSM on AWS; Table Storage, Storage Queues and Compute on Azure.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeAlias

if TYPE_CHECKING:  # names used in annotations only: a module that imports the ports loads no models for them
    from patchpilot.compliance.model import AssessmentStarted, PatchState
    from patchpilot.engine.messages import (
        CallWaveHook,
        CancelCloudScheduledRun,
        CheckHealth,
        InstallPatches,
        LeavePools,
        Message,
        Notify,
        Outcome,
        ProbeAgents,
        RejoinPools,
        ReturnMachines,
        RollBack,
        RunHostHook,
        StartMachines,
        TakeSnapshots,
    )
    from patchpilot.engine.run import Run
    from patchpilot.inventory import Cloud, Instance
    from patchpilot.maintenance.model import WatchResult
    from patchpilot.policy import Policy
    from patchpilot.policy.model import Notifications


class ConflictError(Exception):
    """The run changed since it was loaded: reload and decide again."""


class UnknownRunError(KeyError):
    """No run with that id."""


class RunStore(Protocol):
    """Runs and their outbox, written together with optimistic concurrency."""

    def create(self, run: Run, outbox: Sequence[Message]) -> None:
        """Store a new run (version 1); ConflictError if the id exists."""

    def load(self, run_id: str) -> Run: ...

    def save(self, run: Run, outbox: Sequence[Message], previous: Run) -> None:
        """Replace `previous` by `run` (whose version is previous.version + 1) and add `outbox`,
        in one write that fails with ConflictError if the stored version is not previous's."""

    def outbox(self, run_id: str) -> list[Message]:
        """Messages saved with the run and not yet marked sent, in order."""

    def mark_sent(self, run_id: str, message_ids: Sequence[str]) -> None: ...

    def run_ids(self) -> list[str]:
        """Every run, oldest first (eventually consistent on DynamoDB: a run created a moment
        ago may be missing)."""


class ActiveRuns(Protocol):
    """The runs under way, listed cheaply (DynamoDB's sparse ``active`` index): what the waker
    reads (patchpilot/app/waker.py)."""

    def active_run_ids(self) -> list[str]:
        """The runs that have not finished, oldest first (may lag a save behind)."""

    def load(self, run_id: str) -> Run: ...


class Delivery(NamedTuple):
    """A received message; `receipt` acknowledges or postpones this very delivery."""

    message: Message
    receipt: str
    attempts: int


class DeadLetter(NamedTuple):
    message_id: str
    body: str
    reason: str


class Queue(Protocol):
    """At-least-once delivery with delays, visibility timeouts and a dead-letter store."""

    def publish(self, messages: Sequence[Message], at: datetime | None = None) -> None:
        """Send messages, delivered no earlier than `at` (default: now). Delivery is at least
        once: a message may arrive twice (the local queue drops a publish whose id is still
        queued; SQS does not), and every consumer is idempotent."""

    def receive(self, limit: int = 10) -> list[Delivery]:
        """Up to `limit` due messages, hidden from other receivers until acked or timed out.
        A message received too often, or one that cannot be read, goes to the dead letters."""

    def ack(self, delivery: Delivery) -> None: ...

    def retry_at(self, delivery: Delivery, at: datetime) -> None:
        """Make this delivery visible again at `at` (a poll, not a failure)."""

    def dead_letters(self) -> list[DeadLetter]: ...

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move this delivery to the dead letters with `reason` (a message refused as forged):
        it is never delivered again, and people can read it."""


class InProgress(NamedTuple):
    """The operation is under way: deliver the same command again at `retry_at`. `finished` are
    the outcomes of the targets already done: a command whose deadline passes keeps them and fails
    only the others (one machine still draining never fails the wave's other machines)."""

    retry_at: datetime
    note: str = ""
    finished: tuple[Outcome, ...] = ()
    # When the operation began on the fleet (its first execution): a command's timeout counts from
    # then, so a redelivery delay before it started does not eat it; None: from the command's issue.
    started: datetime | None = None


Progress: TypeAlias = "list[Outcome] | InProgress"


class DiscoveryResult(NamedTuple):
    """Every instance a cloud adapter found (`instances`), and among them those whose agent
    cannot be reached, each with the reason (`unreachable`): they are reported, never dropped."""

    instances: list[Instance]
    unreachable: Sequence[tuple[Instance, str]] = ()


class DiscoveryReadRefusedError(Exception):
    """Discovery could not make a read it needs (the cloud refused it, or left out what was asked):
    said in one line naming where, what failed and the permission that is `missing`, never taken
    for "none" (a plan built on it could take down what it was meant to protect)."""

    def __init__(self, where: str, missing: str, detail: str, message: str | None = None) -> None:
        self.where = where
        self.missing = missing
        self.detail = detail
        super().__init__(message or f"discovery could not read in {where}: {detail} (needs {missing})")


class PoolsUnreadableError(DiscoveryReadRefusedError):
    """Discovery could not read the traffic pools (ELBv2 target groups, NICs' backend pools) it
    reads because the policy sets `rollout.pool_budget` or `traffic.drain`: said, naming what is `missing`,
    never taken for "no pools" (a plan without them could take a whole pool out of service)."""

    def __init__(self, where: str, missing: str, detail: str) -> None:
        super().__init__(
            where,
            missing,
            detail,
            f"traffic pools not readable in {where}: {detail}; discovery reads them because the policy "
            f"sets traffic.drain or rollout.pool_budget (needs {missing})",
        )


class ScalingGroupsUnreadableError(DiscoveryReadRefusedError):
    """Discovery could not read which instances belong to a scaling group (AWS
    DescribeAutoScalingInstances, always read): never taken for "no group", since a group would
    replace a member rebooting for its install."""

    def __init__(self, where: str, missing: str, detail: str) -> None:
        super().__init__(
            where,
            missing,
            detail,
            f"scaling groups not readable in {where}: {detail}; discovery reads them so that no member of "
            f"an Auto Scaling group is patched in place (needs {missing})",
        )


class FleetProvider(Protocol):
    """The machines. Every method is idempotent per command id: a command executed again
    reports on the operation it started the first time instead of starting another."""

    def probe_agents(self, command: ProbeAgents) -> Progress: ...

    def take_snapshots(self, command: TakeSnapshots) -> Progress: ...

    def install_patches(self, command: InstallPatches) -> Progress: ...

    def check_health(self, command: CheckHealth) -> Progress: ...

    def roll_back(self, command: RollBack) -> Progress: ...

    def start_machines(self, command: StartMachines) -> Progress:
        """Start each target found stopped or deallocated (AWS StartInstances, Azure start): an
        outcome per target once it runs; one already running is not started again."""
        ...

    def return_machines(self, command: ReturnMachines) -> Progress:
        """Put each target back in the power state it was found in (`Instance.power`: AWS
        StopInstances; Azure deallocate, or power off for `stopped`): an outcome per target once it
        is; one already in that state is not touched, so a redelivery or a sweep changes nothing."""
        ...

    def run_hook(self, command: RunHostHook) -> Progress:
        """Run the hook's script on each target (SSM AWS-RunShellScript / AWS-RunPowerShellScript,
        Azure Run Command), once per command id: an outcome per target, ok on exit 0, the
        output's tail as its detail; not finished by the hook's timeout is a failure."""
        ...


class TrafficPools(Protocol):
    """Load-balancer pools and scaling groups around the install (docs/traffic.md): Elbv2Traffic
    (ELBv2 target groups, Auto Scaling Standby), AzureBackendPools (NIC IP configurations' Load
    Balancer and Application Gateway backend pools), the simulated fleet. Both methods read
    before they write: a target already out (or back in) is not touched again, so a redelivery or
    a crash between two calls changes nothing twice."""

    def leave_pools(self, command: LeavePools) -> Progress: ...

    def rejoin_pools(self, command: RejoinPools) -> Progress: ...


class WaveHooks(Protocol):
    """The policy's wave hooks (HTTPS, signed with the named secret): one outcome, ok on a 2xx
    answer, the answer (status and the body's first line) as its detail otherwise."""

    def call(self, command: CallWaveHook) -> Progress: ...


class Discovers(Protocol):
    """The machines a policy covers, as the cloud lists them (Ec2SsmFleet, AzureFleet, SimulatedFleet)."""

    def discover(self, policy: Policy) -> DiscoveryResult: ...


class PatchAssessor(Protocol):
    """Patch compliance: scans started on demand, their results read in bulk (docs/compliance.md)."""

    def start_assessment(self, instances: Sequence[Instance], token: str) -> AssessmentStarted:
        """Start a fresh scan of these machines (`AWS-RunPatchBaseline` with `Operation=Scan`,
        Azure `assessPatches`); it installs nothing. Idempotent per `token` (the compliance
        slot): starting again with the same token starts nothing new."""

    def patch_states(self, instances: Sequence[Instance]) -> list[PatchState]:
        """The latest assessment of each machine, one PatchState per instance in the order
        given, read in bulk; `error` set where there is none."""


class MaintenanceSource(Protocol):
    """Maintenance the cloud has scheduled on the fleet and its databases (docs/maintenance-watch.md)."""

    def upcoming_maintenance(self, policy: Policy, instances: Sequence[Instance], now: datetime) -> WatchResult:
        """Scheduled or pending maintenance that has not ended by `now`, for these instances and
        the other resources the policy's accounts and subscriptions hold (RDS databases)."""


class CloudFleet(Discovers, PatchAssessor, MaintenanceSource, Protocol):
    """A cloud's fleet as the timer and the commands that read the clouds use it: it discovers,
    assesses and reports the cloud's maintenance (Ec2SsmFleet, AzureFleet); `cloud` names it."""

    @property
    def cloud(self) -> Cloud: ...


class MaintenanceCanceller(Protocol):
    """Cancels scheduled Azure Update Manager runs (the Azure runtime only)."""

    def cancel_maintenance(self, command: CancelCloudScheduledRun) -> Outcome:
        """Cancel the run (idempotent: cancelling a cancelled run is ok); an Outcome with the
        run's id, not ok with the reason when it cannot be cancelled (the cut-off passed)."""


class Claims(Protocol):
    """Keys claimed once: a request seen before (a replayed Slack interaction) is refused, a
    notice already sent to a channel is not sent again (notify/routing.py)."""

    def claim(self, key: str, until: datetime) -> bool:
        """True the first time `key` is claimed; False while an earlier claim holds (it lapses
        at its `until`). Atomic across processes."""

    def renew(self, key: str, until: datetime) -> None:
        """Make the claim on `key` lapse at `until`, whether or not one holds: its holder extends
        it (a lease become a record) or gives it up (`until` now)."""


class Leases(Protocol):
    """One machine, one run at a time: a lease per instance in the run store, taken by a run
    before the machine's first effect and released when the machine leaves the run. A lease
    lapses at its `until`, so a run that died does not hold its machines for ever. Instance ids
    compare without case (ARM ids do): one machine, however it is spelt, is one lease."""

    def acquire(self, instance_ids: Sequence[str], holder: str, until: datetime, now: datetime) -> dict[str, str]:
        """Take the lease on each instance for run `holder` until `until`; the instances another
        run holds (a lease not lapsed at `now`) are returned as {instance id: holder run id} and
        are not taken. Taking a lease `holder` already holds extends it; a lapsed lease is taken
        over. Each instance is one atomic conditional write (DynamoDB condition, Table Storage
        ETag, SQLite row under the write lock), so two runs never both hold one machine."""

    def release(self, instance_ids: Sequence[str], holder: str) -> None:
        """Give up the leases `holder` holds on these instances; a lease another run holds (or
        none) is left as it is. Idempotent."""


class Secrets(Protocol):
    """Named secret values (webhook URLs, signing keys): Secrets Manager, Key Vault."""

    def get(self, name: str) -> str:
        """The value; SecretUnavailableError when it cannot be read. Values are never logged."""


class SecretUnavailableError(LookupError):
    """The secret could not be read (missing, disabled, no permission, throttled, unreachable)
    or is not text."""


class Notifier(Protocol):
    def notify(self, command: Notify) -> None:
        """Deliver a notification; failures are recorded by the notifier, never raised."""


class Announcer(Protocol):
    """Notices the timer and the advisories send on their own (no run's notifier routes them):
    to the channels `notifications` routes them to, each once per channel across processes
    (RoutedNotifier, over the claims)."""

    def send(
        self,
        command: Notify,
        notifications: Notifications | None,
        run: Run | None = None,
        *,
        recorded: bool = False,
        keep_until: datetime | None = None,
    ) -> None:
        """Deliver the notice; a delivered one is remembered until `keep_until` (at least a
        while), so that a retried timer tick in another container does not send it again."""

    def announce(self, policy: Policy, now: datetime) -> None:
        """The "run scheduled" heads-up, when one is due at `now`."""


class Metrics(Protocol):
    """Counters for the operators' dashboards and alarms (CloudWatch EMF, Application Insights)."""

    def count(self, name: str, value: int = 1) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class DocumentStore(Protocol):
    """Where reports are written and the overview's summaries read back (S3Reports, BlobReports,
    DirectoryDocuments). A name is a path below the store's root (`a/b.json`); each document is
    written whole and replaced, so a reader sees the old one or the new one, never half."""

    def write(self, name: str, text: str, content_type: str) -> str:
        """Write one document whole; its location (a path, `s3://…`, a blob URL)."""
        ...

    def read(self, name: str) -> str | None:
        """The text of one document; None when there is none."""
        ...

    def names(self, prefix: str) -> list[str]:
        """The names that start with `prefix`, sorted."""
        ...
