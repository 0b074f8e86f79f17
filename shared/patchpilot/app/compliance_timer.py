"""The compliance timer (`policy.compliance`, docs/compliance.md): when `scan` fired within the
timer period, a fresh assessment of the policy's machines; `report_after` later, the report
(Markdown, HTML, CSV beside the run reports) and its `compliance_report` notice. Each slot is
claimed once (`compliance-scan:<policy>:<slot>`, `compliance-report:<policy>:<slot>`), so timers
that fire twice scan and report once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from patchpilot.app.discovery import managed
from patchpilot.app.overview import Overview
from patchpilot.inventory import Instance
from patchpilot.policy import Policy
from patchpilot.ports import Announcer, Claims, DocumentStore, PatchAssessor, RunStore

CLAIM_HOLD = timedelta(days=2)  # a compliance slot's claim outlasts every retry of its tick


def slot_key(kind: str, policy: Policy, slot: datetime) -> str:
    """`<kind>:<policy>:<slot, UTC>`: the same from every timer that sees the slot."""
    return f"{kind}:{policy.name}:{slot.astimezone(UTC):%Y%m%d-%H%M}"


class ComplianceTimer:
    """Over the ports a runtime gives, each built on first use: the claims, the fleet's assessor,
    the run table (the last runs in the report), the report store (None: no report written), the
    announcer of the notice; `discovered(policy, now)` is the (cached) discovery; `log` the
    runtime's log."""

    def __init__(
        self,
        *,
        claims: Callable[[], Claims],
        assessor: Callable[[], PatchAssessor],
        store: Callable[[], RunStore],
        documents: Callable[[], DocumentStore | None],
        announcer: Callable[[], Announcer],
        discovered: Callable[[Policy, datetime], list[Instance]],
        overview: Overview,
        log: Any,
    ) -> None:
        self.claims = claims
        self.assessor = assessor
        self.store = store
        self.documents = documents
        self.announcer = announcer
        self.discovered = discovered
        self.overview = overview
        self.log = log

    def tick(self, policy: Policy, now: datetime) -> list[str]:
        """What it did, for the log; it never raises (the scheduled run must still start)."""
        settings = policy.compliance
        if settings is None:
            return []
        from patchpilot.triggers import fired_within

        zone = policy.zone_for(settings.timezone)
        done: list[str] = []
        try:
            scan = fired_within(settings.scan, zone, now)
            if scan is not None and self.claims().claim(slot_key("compliance-scan", policy, scan), now + CLAIM_HOLD):
                done.append(self.scan(policy, scan, now))
            report = fired_within(settings.scan, zone, now - settings.report_after)
            if report is not None and self.claims().claim(
                slot_key("compliance-report", policy, report), now + CLAIM_HOLD
            ):
                done.append(self.report(policy, report, now))
        except Exception as error:  # a cloud API down: logged, the next slot tries again
            self.log.warning("compliance timer of policy %s failed: %s", policy.name, error)
            done.append(f"compliance timer failed: {error}")
        for line in done:
            self.log.info(line)
        return done

    def scan(self, policy: Policy, slot: datetime, now: datetime) -> str:
        instances = managed(policy, self.discovered(policy, now))
        token = f"compliance-{policy.name}-{slot.astimezone(UTC):%Y%m%d-%H%M}"  # letters, digits, . _ -
        started = self.assessor().start_assessment(instances, token)
        refused = f"; not started on {len(started.refused)}" if started.refused else ""
        return f"compliance scan of policy {policy.name} started on {started.started} machines{refused}"

    def report(self, policy: Policy, slot: datetime, now: datetime) -> str:
        from patchpilot.compliance.render import compliance_notice, documents, report_name
        from patchpilot.compliance.report import LastRun, LeftFailed, build_view, last_patched, left_failed, recent_runs
        from patchpilot.reports.overview import compliance_summaries

        instances = self.discovered(policy, now)
        states = self.assessor().patch_states(instances)
        last_runs: dict[str, LastRun] | None = None
        broken: dict[str, LeftFailed] | None = None
        try:
            runs = recent_runs(self.store(), policy.name)
            last_runs, broken = last_patched(runs, policy.name), left_failed(runs, policy.name)
        except Exception as error:  # the run store down: the report goes out without the last runs
            self.log.warning("compliance report of policy %s without last runs: %s", policy.name, error)
        view = build_view(policy, instances, states, now, last_runs, broken)
        store, location = self.documents(), ""
        if store is not None:
            name = report_name(view)
            for suffix, text, kind in documents(view):
                written = store.write(f"{name}.{suffix}", text, kind)
                location = written if suffix == "html" else location
            self.overview.keep(lambda: compliance_summaries(view, f"{name}.html"))
        notice = compliance_notice(view, location, notice_id=f"{slot_key('compliance-report', policy, slot)}:notify")
        self.announcer().send(notice, policy.notifications)
        return notice.text.splitlines()[0] + (f" Report: {location}" if location else " (no report store)")
