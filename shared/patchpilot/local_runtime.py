"""The local runtime, the embedded default: the same engine and message flow as on the clouds,
on SQLite and a simulated fleet with a virtual clock, in one state directory.

A command that writes (`run`, `approve`, `reject`) checks the directories it will write up
front, then holds the state directory's lock (`state_lock`) while it opens and drives the
runtime; a command that only reads (`status`, `report`) opens the database read-only
(`open_runs`) and creates nothing.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import secrets
import shlex
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from patchpilot.adapters.local.clock import VIRTUAL_START_ENV as VIRTUAL_START_ENV  # re-exported
from patchpilot.adapters.local.clock import VirtualClock
from patchpilot.adapters.local.clock import virtual_start as virtual_start  # re-exported
from patchpilot.adapters.local.notifier import FileNotifier
from patchpilot.adapters.local.reports import DirectoryDocuments
from patchpilot.adapters.local.simulated_fleet import SimulatedFleet
from patchpilot.adapters.local.sqlite_claims import SqliteClaims
from patchpilot.adapters.local.sqlite_leases import SqliteLeases
from patchpilot.adapters.local.sqlite_queue import SqliteQueue
from patchpilot.adapters.local.sqlite_store import SqliteRunStore
from patchpilot.adapters.local.state_lock import StateDirLockedError, state_lock
from patchpilot.adapters.metrics import LogMetrics
from patchpilot.adapters.wave_hooks import HttpsWaveHooks
from patchpilot.engine.messages import Notify
from patchpilot.engine.retry import retry_targets, retry_window
from patchpilot.engine.run import Run
from patchpilot.errors import InputError, Problem
from patchpilot.inventory import Instance
from patchpilot.notify import EnvironmentSecrets, EveryNotifier, RoutedNotifier
from patchpilot.policy import Policy, Window
from patchpilot.ports import DeadLetter, UnknownRunError
from patchpilot.reports.overview import Steps, local_href, needs_you, refresh_overview
from patchpilot.reports.render import report_stem
from patchpilot.service import Service, apply_event

log = logging.getLogger("patchpilot.local")

DB_NAME = "state.db"
RECEIVE_BATCH = 10
LOCK_WAIT_SECONDS = 5.0  # how long a second writer waits for the state directory's lock
MAX_FROZEN_WINDOWS = 60  # how many frozen windows `open_window` skips before it gives up


class StateDirError(InputError):
    """A state or report directory that cannot be used: `path` and what is wrong with it (bad
    input, as a bad policy file is: the CLI prints it on one line and exits 2)."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(str(path), [Problem((), problem)])


class NoRunsError(StateDirError):
    """A state directory without a database: no run was ever started there."""


def writable_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be a directory this process writes, or None. Looks only (creates
    nothing): the path, or its nearest existing parent, must be a writable directory."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return "is not a directory" if existing == path else f"cannot be created: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
    db = path / DB_NAME
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        return f"{DB_NAME} is read-only"
    return None


def prepare_writable_dir(path: Path) -> None:
    """Create `path` if missing and prove it writable by creating (and removing) a file in it,
    which also catches what `os.access` cannot see (a read-only file system, for root).
    Raises `StateDirError` naming the problem."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StateDirError(path, f"cannot be created ({error.strerror or error})") from None
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".patchpilot-probe-"):
            pass
    except OSError as error:
        raise StateDirError(path, f"is not writable ({error.strerror or error})") from None


def check_writable_dirs(*directories: Path) -> None:
    """Check every directory (looking only), then create each and prove it writable: all
    problems are found before anything is created. Raises `StateDirError`."""
    for directory in directories:
        if problem := writable_dir_problem(directory):
            raise StateDirError(directory, problem)
    for directory in directories:
        prepare_writable_dir(directory)


def open_runs(state_dir: Path) -> SqliteRunStore:
    """The runs of `state_dir` for reading: the database opened read-only (`mode=ro`), so that
    looking creates no file. Raises `StateDirError` when there are no runs there."""
    db = state_dir / DB_NAME
    if not db.is_file():
        raise NoRunsError(state_dir, f"no runs in {state_dir} (no {DB_NAME}): give the --state-dir of the run")
    try:
        return SqliteRunStore(db, read_only=True)
    except sqlite3.Error as error:
        raise StateDirError(db, f"cannot be read ({error})") from None


@dataclass(frozen=True)
class LocalView:
    """What a command that only looks at the simulated fleet (`compliance`) needs of it."""

    fleet: SimulatedFleet
    clock: VirtualClock
    store: SqliteRunStore


def open_view(state_dir: Path) -> LocalView:
    """The state of `state_dir`, opened read-only; where there is none yet, an empty one in
    memory (nothing patched, the clock at the real now, as a new state directory would start):
    looking creates no file. Raises `StateDirError` for a database that cannot be read."""
    db = state_dir / DB_NAME
    if not db.is_file():
        clock = VirtualClock(":memory:", virtual_start())
        return LocalView(SimulatedFleet(":memory:", clock), clock, SqliteRunStore(":memory:"))
    try:
        clock = VirtualClock(db, read_only=True)
        return LocalView(SimulatedFleet(db, clock, read_only=True), clock, SqliteRunStore(db, read_only=True))
    except sqlite3.Error as error:
        raise StateDirError(db, f"cannot be read ({error})") from None


@contextmanager
def writing(state_dir: Path, *report_dirs: Path | None, wait: float | None = None) -> Iterator[None]:
    """For a command that writes: check the state directory and the report directories (all
    before any effect), create them, then hold the state directory's lock for the block.
    Raises `StateDirError` for a directory that cannot be written or a lock held elsewhere."""
    check_writable_dirs(state_dir, *(d for d in report_dirs if d is not None))
    command = shlex.join(["patchpilot", *sys.argv[1:]])
    try:
        with state_lock(state_dir, command, LOCK_WAIT_SECONDS if wait is None else wait):
            yield
    except StateDirLockedError as error:
        raise StateDirError(state_dir, f"{error}; wait for it to finish, or use another --state-dir") from None


@contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    """Run state is many small acyclic objects; with the default thresholds the cyclic
    collector rescans them so often that a 10,000-instance run grows faster than linearly
    (bench/bench_run.py). Collect young objects less often while driving."""
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


@dataclass
class LocalRuntime:
    state_dir: Path
    service: Service
    store: SqliteRunStore
    queue: SqliteQueue
    fleet: SimulatedFleet
    clock: VirtualClock
    notices: FileNotifier  # the notifications file
    chat: RoutedNotifier  # Slack and Teams, as a policy routes them
    reproducible: bool = False  # run ids without a random part (PATCHPILOT_VIRTUAL_START is set)

    @classmethod
    def open(
        cls, state_dir: Path, start: datetime | None = None, on_notice: Callable[[Notify], None] | None = None
    ) -> LocalRuntime:
        reproducible = (example_start := virtual_start()) is not None
        state_dir.mkdir(parents=True, exist_ok=True)
        db = state_dir / DB_NAME
        clock = VirtualClock(db, start if start is not None else example_start)
        store = SqliteRunStore(db)
        queue = SqliteQueue(db, clock)
        fleet = SimulatedFleet(db, clock)
        # The file always; Slack and Teams when the run's policy routes notices (URLs from the environment),
        # each sent once per channel across processes (claims), undelivered ones recorded in the run.
        claims = SqliteClaims(db, clock)
        chat = RoutedNotifier(
            EnvironmentSecrets(os.environ),
            store.load,
            None,
            claims=lambda: claims,
            clock=clock,
            record=lambda event: apply_event(store, queue, event, clock.now),  # never queued
        )
        notices = FileNotifier(state_dir / "notifications.jsonl", on_notice)
        notifier = EveryNotifier(notices, chat)
        service = Service(
            store=store,
            queue=queue,
            fleet=fleet,
            notifier=notifier,
            clock=clock,
            metrics=LogMetrics(),
            leases=SqliteLeases(db),
            wave_hooks=HttpsWaveHooks(EnvironmentSecrets(os.environ), clock),  # real HTTPS, retried on virtual time
            traffic=fleet,  # the simulated load balancer: drain and re-add take virtual time
            claims=claims,  # wake-ups sharing an id poll once
        )
        return cls(state_dir, service, store, queue, fleet, clock, notices, chat, reproducible)

    def start(
        self,
        policy: Policy,
        instances: Iterable[Instance],
        run_id: str | None = None,
        at: datetime | None = None,
        *,
        window_end: datetime | None = None,
        frozen_by: str | None = None,
    ) -> Run:
        """Start a run at `at`, or at the policy's next window that no freeze stops (`open_window`;
        now, without a schedule): the virtual clock moves there, so the run shows how the fleet
        fits the window. A freeze that starts inside that window ends it there (`window_end`: where
        the caller found one ends it); `frozen_by` names the freeze an emergency run starts in."""
        if at is None and policy.schedule is not None:
            window = self.open_window(policy)
            at = window.start
            if (cut := policy.freezes().first_starting(window.start, window.end)) is not None:
                window_end = cut.start
        if at is not None:
            self.clock.advance_to(at)
        now = self.clock.now()
        if run_id is None:
            base = f"{policy.name}-{now:%Y%m%d-%H%M%S}"
            run_id = f"{base}-{self._run_id_suffix(base)}"
        return self.service.start(run_id, policy, instances, window_end=window_end, frozen_by=frozen_by)

    def open_window(self, policy: Policy) -> Window:
        """The policy's next window that starts outside every freeze. Each window before it that
        starts inside one is skipped as the timer skips it: the virtual clock moves to it and a
        `run_skipped` notice naming the freeze is recorded. InputError when the next
        MAX_FROZEN_WINDOWS windows are all frozen."""
        from patchpilot.compliance.render import frozen_notice
        from patchpilot.triggers import scheduled_run_id

        assert policy.schedule is not None, "only a policy with a schedule has windows"
        freezes, after = policy.freezes(), self.clock.now()
        for window in policy.schedule.windows(after, MAX_FROZEN_WINDOWS if freezes else 1):
            frozen = freezes.at(window.start) if freezes else None
            if frozen is None:
                return window
            self.clock.advance_to(window.start)
            notice = frozen_notice(
                scheduled_run_id(policy, window), policy.name, window.start, frozen, policy.schedule.zone
            )
            self.notices.notify(notice)  # no run holds this notice: routed by the policy itself
            self.chat.send(notice, policy.notifications)
        raise InputError.single(
            policy.name,
            f"the next {MAX_FROZEN_WINDOWS} windows all start inside a freeze: no run to start",
            ("freeze",),
        )

    def _run_id_suffix(self, base: str) -> str:
        """Four hex digits that keep apart runs started in the same second: random, or, when the
        runtime is reproducible, derived from `base` and how many runs the directory holds."""
        if not self.reproducible:
            return secrets.token_hex(2)
        return hashlib.sha256(f"{base}#{len(self.store.run_ids())}".encode()).hexdigest()[:4]

    def retry(self, run_id: str, only: Sequence[str] = (), current: Sequence[Instance] | None = None) -> Run:
        """Start a retry of finished run `run_id` (`Service.retry`): now when the policy's window
        is open (it ends with the window; refused inside a freeze), else the virtual clock moves to
        the next window no freeze stops, as `start` does (now for an emergency policy or one
        without a schedule); `current` is the
        inventory after the fix. Raises `UnknownRunError` or `NotRetryableError`."""
        retried = self.store.load(run_id)
        by_id = {i.id: i for i in current} if current is not None else None
        from patchpilot.planning.estimate import wave_estimate

        instances, _ = retry_targets(retried, only, by_id)  # refused before the clock moves
        policy, now = retried.policy, self.clock.now()
        needed = wave_estimate(instances, policy.reboot)  # a window with less left: the next one
        if window := retry_window(policy, now, needed):
            if window.start > now and policy.schedule is not None:  # a later window: the first no freeze stops
                freezes = self.service.freezes_of(policy)
                later = policy.schedule.windows(window.start, MAX_FROZEN_WINDOWS if freezes else 1)
                window = next((w for w in later if not freezes or freezes.at(w.start) is None), window)
            self.clock.advance_to(window.start)  # inside the open window: now
        return self.service.retry(run_id, only, by_id)

    def skip_if_nothing_pending(self, policy: Policy, instances: Sequence[Instance]) -> str | None:
        """A non-periodic policy's check before its window (`kind: non_periodic`): the virtual
        clock moves to the next window and the simulated fleet is assessed; when nothing is
        pending, a `run_skipped` notice is recorded and its text returned (no run starts). None
        when the run should go ahead."""
        from patchpilot.compliance.render import skipped_notice
        from patchpilot.compliance.report import build_view, nothing_pending, pending_summary
        from patchpilot.triggers import scheduled_run_id

        assert policy.schedule is not None, "a non_periodic policy has a schedule (checked on load)"
        window = self.open_window(policy)  # a window inside a freeze is skipped for the freeze first
        self.clock.advance_to(window.start)
        view = build_view(policy, instances, self.fleet.patch_states(instances), self.clock.now())
        if not nothing_pending(view):
            return None
        notice = skipped_notice(scheduled_run_id(policy, window), policy.name, pending_summary(view))
        self.notices.notify(notice)  # no run holds this notice: routed by the policy itself
        self.chat.send(notice, policy.notifications)
        return notice.text

    def load(self, run_id: str) -> Run:
        return self.store.load(run_id)

    def exists(self, run_id: str) -> bool:
        try:
            self.store.load(run_id)
        except UnknownRunError:
            return False
        return True

    def drive(self, run_id: str, on_change: Callable[[Run], None] | None = None) -> Run:
        """Deliver messages until none is left, moving the virtual clock to each next due
        message. Returns when the run has finished, waits for approval, or has stalled."""
        with _fewer_gc_passes():
            return self._drive(run_id, on_change)

    def _drive(self, run_id: str, on_change: Callable[[Run], None] | None) -> Run:
        self.service.recover()
        while True:
            deliveries = self.queue.receive(RECEIVE_BATCH)
            if not deliveries:
                due = self.queue.next_due()
                if due is None:
                    return self.store.load(run_id)
                self.clock.advance_to(due)
                continue
            for delivery in deliveries:
                try:
                    self.service.handle(delivery)
                except Exception:  # the message is redelivered after its visibility timeout
                    log.exception("handling %s failed; it will be delivered again", delivery.message.id)
            if on_change is not None:
                on_change(self.store.load(run_id))

    def approve(self, run_id: str, by: str = "cli") -> str:
        return self.service.approve(run_id, by)

    def reject(self, run_id: str, by: str = "cli", reason: str = "") -> str:
        return self.service.reject(run_id, by, reason)

    def dead_letters(self) -> list[DeadLetter]:
        return self.queue.dead_letters()


def refresh_local_overview(
    state_dir: Path, steps: Steps, now: datetime, store: SqliteRunStore | None = None, driven_by: str | None = None
) -> Path:
    """Write STATE_DIR/reports/index.html (`refresh_overview`) from the runs of `state_dir`
    (`store`, else its database opened read-only; none when it has none) and the summaries kept
    there; its path. A run still `running` that no process drives (`driven_by`: the holder of
    the state directory's lock, None when nobody else holds it) was interrupted: it needs a
    person too. Links are relative below STATE_DIR/reports, `file://` URLs elsewhere (a run's
    own `--report-dir`, a compliance report written with `--out`)."""
    reports = state_dir / "reports"
    if store is None and (state_dir / DB_NAME).is_file():
        with open_runs(state_dir) as opened:
            return refresh_local_overview(state_dir, steps, now, opened, driven_by)
    runs = store

    def run_report(run: Run) -> str | None:
        directory = (runs.report_dir(run.run_id) if runs is not None else None) or reports
        html = directory / f"{report_stem(run.run_id)}.html"
        return local_href(str(html), reports) if html.is_file() else None

    def needs(run: Run) -> bool:
        return needs_you(run) or (run.status == "running" and driven_by is None)

    def href(path: str) -> str:
        return local_href(path, reports)

    location = refresh_overview(DirectoryDocuments(reports), runs, now, steps, run_report, href, needs)
    return Path(location)
