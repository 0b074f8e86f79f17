"""The overview page (`index.html`, docs/operations.md "The overview page"): the run history with
the runs that need a person first, each with its next step; the current compliance totals per
policy; and the maintenance the clouds have scheduled before each policy's next window. Each
links to its report. One self-contained page (inline CSS, no scripts, no external URL) that reads
on a phone.

It lives where the reports go (STATE_DIR/reports locally, `reports/` in S3, the reports
container in Blob Storage) and is written again after every run report, compliance report and
maintenance read (`refresh_overview`). The compliance totals and the maintenance reads outlast a
regeneration as one small JSON document per policy under `summaries/` (`compliance-<policy>.json`,
`maintenance-<policy>.json`): one per policy, so two writers never race on one file.

`build_overview` and `render_overview` are pure; `refresh_overview` reads the stores and writes
the page.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, ValidationError

from patchpilot.engine.run import Run, count_states
from patchpilot.ports import DocumentStore, RunStore, UnknownRunError
from patchpilot.reports.render import environment, report_stem
from patchpilot.wording import plural

if TYPE_CHECKING:
    from patchpilot.compliance.report import ComplianceView
    from patchpilot.maintenance.watch import WatchView

INDEX = "index.html"
SUMMARIES = "summaries/"
RUNS_SHOWN = 50  # the newest runs listed, besides every run read that needs a person
RUNS_READ = 100  # the newest runs read at each regeneration: its cost stays bounded
# Runs that a person must look at (besides any that left a machine broken or a notice undelivered).
NEEDS_YOU_STATUSES = frozenset(
    {"halted", "succeeded_with_failures", "incomplete", "waiting_approval", "nothing_patched"}
)
BAD_COMPLIANCE = ("non_compliant", "needs_attention", "exposed", "unknown")

Steps = Callable[[Run], Sequence[tuple[str, str]]]  # what needs a person in a run: (what, command or "")
Needs = Callable[[Run], bool]  # whether a run needs a person (`needs_you`, or more where the caller knows more)


def history_entry(run: Run, report: str | None) -> dict[str, Any]:
    """One run as `patchpilot runs --json` shows it: `{"run_id", "policy", "status", "state",
    "reason", "window": {"start", "end"}, "summary", "report"}` (`report`: the HTML report's path
    locally, null when there is none or on the clouds)."""
    return {
        "run_id": run.run_id,
        "policy": run.policy.name,
        "status": run.status,
        "state": run.state,
        "reason": run.reason,
        "window": {"start": run.created_at.isoformat(), "end": run.window_end.isoformat() if run.window_end else None},
        "summary": run.summary(),
        "report": report,
    }


def needs_you(run: Run) -> bool:
    """The run needs a person: it halted, ended incomplete or with machines left broken, waits for
    an approval, patched nothing, or a notice of it was not delivered."""
    return run.status in NEEDS_YOU_STATUSES or bool(run.undelivered) or bool(run.broken())


# ---------------------------------------------------------------- the summaries kept between regenerations


class _Summary(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ComplianceSummary(_Summary):
    """`summaries/compliance-<policy>.json`: one policy's totals in its latest compliance report."""

    kind: Literal["compliance"] = "compliance"
    policy: str
    generated_at: datetime
    instances: int
    machines: dict[str, int]
    missing: int
    report: str | None = None  # the HTML report: a name beside the page, or a local path

    @property
    def compliant(self) -> int:
        return self.machines.get("compliant", 0)

    @property
    def bad(self) -> int:
        return sum(self.machines.get(s, 0) for s in BAD_COMPLIANCE)


class DueItem(_Summary):
    """One item of a maintenance read (`patchpilot maintenance --json`'s `items`)."""

    resource_id: str
    resource_name: str = ""
    kind: str
    description: str = ""
    due_at: datetime | None = None
    downtime: bool = False
    warning: str = ""
    before_window: bool = False
    in_progress: bool = False


class WindowSpan(_Summary):
    start: datetime
    end: datetime


class Unread(_Summary):
    what: str
    reason: str


class MaintenanceSummary(_Summary):
    """`summaries/maintenance-<policy>.json`: the policy's latest maintenance read, as
    `patchpilot maintenance --json` prints it (docs/maintenance-watch.md)."""

    policy: str
    now: datetime
    next_window: WindowSpan | None = None
    complete: bool = True
    unavailable: list[Unread] = []
    items: list[DueItem] = []

    @property
    def due(self) -> list[DueItem]:
        """What falls before the next window."""
        return [i for i in self.items if i.before_window]


def summary_name(kind: Literal["compliance", "maintenance"], policy: str) -> str:
    return f"{SUMMARIES}{kind}-{report_stem(policy)}.json"


def compliance_summaries(view: ComplianceView, report: str | None) -> list[tuple[str, str]]:
    """(name, JSON) of each policy's summary of a compliance report (`report`: where its HTML is)."""
    found = []
    for policy in view.policies:
        totals = policy.totals
        summary = ComplianceSummary(
            policy=policy.name,
            generated_at=view.generated_at,
            instances=totals.instances,
            machines={str(status): count for status, count in totals.machines.items()},
            missing=totals.missing,
            report=report,
        )
        found.append((summary_name("compliance", policy.name), summary.model_dump_json(indent=2)))
    return found


def maintenance_summary(view: WatchView) -> tuple[str, str]:
    """(name, JSON) of a maintenance read: the view as `patchpilot maintenance --json` prints it."""
    return summary_name("maintenance", view.policy), json.dumps(view.document(), indent=2)


# ---------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class RunRow:
    run_id: str
    policy: str
    status: str
    reason: str
    started: str
    window_end: str
    counts: str
    report: str | None  # the link to its HTML report; None while it has none
    needs_you: bool
    steps: tuple[tuple[str, str], ...]  # (what, command or ""), most urgent first; only when it needs you


@dataclass(frozen=True, slots=True)
class ComplianceRow:
    summary: ComplianceSummary
    report: str | None  # the link


@dataclass(frozen=True, slots=True)
class MaintenanceRow:
    summary: MaintenanceSummary
    report: str  # the link to the read itself (JSON)


@dataclass(frozen=True, slots=True)
class Overview:
    generated_at: datetime
    runs: tuple[RunRow, ...]  # those needing a person first, then the newest; each group newest first
    runs_total: int  # runs in the store
    runs_read: int  # the newest runs read
    compliance: tuple[ComplianceRow, ...]  # by policy
    maintenance: tuple[MaintenanceRow, ...]  # by policy
    unreadable: tuple[str, ...] = ()  # summaries that could not be read: "<name>: <why>"

    @property
    def needing_you(self) -> int:
        return sum(1 for row in self.runs if row.needs_you)

    @property
    def runs_left_out(self) -> int:
        return self.runs_total - len(self.runs)


def _when(at: datetime | None) -> str:
    """`2026-12-08 02:00 UTC`, or with the time's own offset (`2026-12-08 11:00+09:00`)."""
    if at is None:
        return ""
    text = at.isoformat(sep=" ", timespec="minutes")
    return text.removesuffix("+00:00") + " UTC" if text.endswith("+00:00") else text


def run_row(run: Run, report: str | None, steps: Steps, needs: Needs = needs_you) -> RunRow:
    attention = needs(run)
    return RunRow(
        run_id=run.run_id,
        policy=run.policy.name,
        status=run.status,
        reason=run.reason,
        started=_when(run.created_at),
        window_end=_when(run.window_end),
        counts=count_states(run.records()),
        report=report,
        needs_you=attention,
        steps=tuple(steps(run)) if attention else (),
    )


def build_overview(
    now: datetime,
    runs: Sequence[tuple[Run, str | None]],
    steps: Steps,
    compliance: Sequence[ComplianceRow] = (),
    maintenance: Sequence[MaintenanceRow] = (),
    runs_total: int | None = None,
    unreadable: Sequence[str] = (),
    needs: Needs = needs_you,
) -> Overview:
    """The page's model. `runs`: the newest runs read, newest first, each with the link to its
    report; `steps` says what a run that needs a person (`needs`) needs. Listed: every run read
    that needs a person, first, then the `RUNS_SHOWN` newest of the others."""
    rows = [run_row(run, report, steps, needs) for run, report in runs]
    shown = [row for index, row in enumerate(rows) if row.needs_you or index < RUNS_SHOWN]
    shown.sort(key=lambda row: not row.needs_you)  # stable: newest first within each group
    return Overview(
        generated_at=now,
        runs=tuple(shown),
        runs_total=len(runs) if runs_total is None else runs_total,
        runs_read=len(runs),
        compliance=tuple(sorted(compliance, key=lambda r: r.summary.policy)),
        maintenance=tuple(sorted(maintenance, key=lambda r: r.summary.policy)),
        unreadable=tuple(unreadable),
    )


def render_overview(overview: Overview) -> str:
    """The page: inline CSS only, no script, no external URL."""
    template = environment("html").get_template("index.html.j2")
    return template.render(o=overview, shown_limit=RUNS_SHOWN, when=_when)


# ---------------------------------------------------------------- links


def local_href(path: str, base: Path) -> str:
    """A link from a page in `base` to the local file `path`: relative when it is below `base`,
    else a `file://` URL."""
    target = Path(os.path.abspath(path))
    try:
        return quote(target.relative_to(os.path.abspath(base)).as_posix())
    except ValueError:
        return target.as_uri()


def same_place(location: str) -> str:
    """A link to a document beside the page (a name in the same store)."""
    return quote(location)


def stored_report(run: Run) -> str | None:
    """The link to a run's report in a cloud's store (`<run id>.html` beside the page): written
    when the run finished."""
    return same_place(f"{report_stem(run.run_id)}.html") if run.finished else None


def report_steps(run: Run) -> list[tuple[str, str]]:
    """What needs a person in `run` as its report says it (`reports.model.attention`), for a page
    that does not know a state directory (the clouds')."""
    from patchpilot.reports.model import attention

    return [(f"{a.what} {a.step}.", a.command) for a in attention(run)]


# ---------------------------------------------------------------- regeneration


S = TypeVar("S", bound=_Summary)


def _summaries(documents: DocumentStore, kind: str, model: type[S], unreadable: list[str]) -> list[tuple[str, S]]:
    found = []
    for name in documents.names(f"{SUMMARIES}{kind}-"):
        if not name.endswith(".json"):
            continue
        text = documents.read(name)
        if text is None:  # removed since the listing
            continue
        try:
            found.append((name, model.model_validate_json(text)))
        except ValidationError as error:
            unreadable.append(f"{name}: {plural(error.error_count(), 'problem')} ({error.errors()[0]['msg']})")
    return found


def refresh_overview(
    documents: DocumentStore,
    runs: RunStore | None,
    now: datetime,
    steps: Steps,
    run_report: Callable[[Run], str | None],
    href: Callable[[str], str] = same_place,
    needs: Needs = needs_you,
) -> str:
    """Write `index.html` into `documents` from the `RUNS_READ` newest runs of `runs` and the
    summaries kept there; its location. `run_report` gives the link to a run's report (None
    without one); `href` turns a compliance summary's report location into a link."""
    run_ids = runs.run_ids() if runs is not None else []
    loaded: list[tuple[Run, str | None]] = []
    for run_id in list(reversed(run_ids))[:RUNS_READ]:
        assert runs is not None
        try:
            run = runs.load(run_id)
        except UnknownRunError:  # listed but gone (an eventually consistent listing)
            continue
        loaded.append((run, run_report(run)))
    unreadable: list[str] = []
    compliance = [
        ComplianceRow(s, href(s.report) if s.report else None)
        for _, s in _summaries(documents, "compliance", ComplianceSummary, unreadable)
    ]
    maintenance = [
        MaintenanceRow(s, same_place(name))
        for name, s in _summaries(documents, "maintenance", MaintenanceSummary, unreadable)
    ]
    overview = build_overview(now, loaded, steps, compliance, maintenance, len(run_ids), unreadable, needs)
    return documents.write(INDEX, render_overview(overview), "text/html")
