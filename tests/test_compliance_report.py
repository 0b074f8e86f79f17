"""The compliance view (compliance/report.py) and its reports (compliance/render.py): pure."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from patchpilot.compliance.model import MissingPatch, PatchState
from patchpilot.compliance.render import (
    CSV_COLUMNS,
    compliance_notice,
    render_csv,
    render_html,
    render_markdown,
    skipped_notice,
)
from patchpilot.compliance.report import (
    ComplianceView,
    LastRun,
    build_view,
    in_policy,
    last_patched,
    merge_views,
    nothing_pending,
    pending_summary,
    recent_runs,
)
from patchpilot.engine.run import InstanceRecord, InstanceState, Run, WaveState
from patchpilot.inventory import Instance
from patchpilot.planning import plan
from patchpilot.policy import Policy, parse_policy
from patchpilot.policy.model import PatchSelection
from patchpilot.ports import UnknownRunError

NOW = datetime(2026, 12, 14, 6, 0, tzinfo=UTC)
POLICY = """
name: fleet
schedule: {monthly: "Second Tuesday Offset+4", at: "02:00", timezone: UTC, duration: 4h}
rings:
  - {name: staging, select: {tags: {Environment: staging}}}
  - {name: production, select: {tags: {Environment: production}}}
exclude: {tags: {PatchPolicy: frozen}}
"""


def policy(extra: str = "", name: str = "fleet") -> Policy:
    return parse_policy(POLICY.replace("name: fleet", f"name: {name}") + extra)


def machine(name: str, env: str | None, **tags: str) -> Instance:
    labels = {"Environment": env, **tags} if env else dict(tags)
    return Instance(id=f"i-{name}", name=name, cloud="aws", region="ap-northeast-1", os="linux", tags=labels)


def gap(patch_id: str, severity: str = "Critical", classification: str = "Security", days: int = 10) -> MissingPatch:
    return MissingPatch(
        patch_id,
        classification=classification,
        severity=severity,  # type: ignore[arg-type]
        released_at=NOW - timedelta(days=days, hours=3),
    )


FLEET = [
    machine("stg-1", "staging"),
    machine("prod-1", "production"),
    machine("prod-2", "production"),
    machine("prod-3", "production"),
    machine("ledger", "production", PatchPolicy="frozen"),
    machine("bastion", None),
]
ASSESSED = NOW - timedelta(hours=1)
STATES = [
    PatchState("i-stg-1", assessed_at=ASSESSED),
    PatchState("i-prod-1", assessed_at=ASSESSED, missing=(gap("openssl-3.0.13", days=12), gap("curl-7", "Moderate"))),
    PatchState("i-prod-2", assessed_at=ASSESSED, reboot_pending=True, missing=(gap("tzdata", "Low", "Other"),)),
    PatchState("i-prod-3", error="SSM agent not reporting (ConnectionLost)"),
    PatchState("i-ledger", assessed_at=ASSESSED, missing=(gap("kernel-5.14", days=40),)),
    PatchState("i-bastion", assessed_at=ASSESSED),
]


@pytest.fixture
def view() -> ComplianceView:
    return build_view(policy(), FLEET, STATES, NOW)


def by_name(view: ComplianceView) -> dict[str, str]:
    return {i.name: i.status for i in view.instances}


def test_every_machine_gets_one_status(view: ComplianceView) -> None:
    assert by_name(view) == {
        "stg-1": "compliant",
        "prod-1": "non_compliant",
        "prod-2": "non_compliant",  # a pending reboot; its tzdata patch is not one the policy installs
        "prod-3": "unknown",
        "ledger": "exposed",
        "bastion": "unmanaged",
    }


def test_rings_are_the_planners_and_an_exposed_machine_keeps_the_ring_it_would_be_in(view: ComplianceView) -> None:
    layout = plan(policy(), FLEET)
    planned = {i.id: w.ring for w in layout.waves for i in w.instances}
    rings = {i.id: i.ring for i in view.instances}
    assert {k: v for k, v in rings.items() if k in planned} == planned
    assert rings["i-ledger"] == "production" and rings["i-bastion"] is None
    assert [r.name for r in view.rings] == ["staging", "production", "(no ring)"]


def test_an_exposed_machine_shows_what_it_lacks_and_why_it_is_never_patched(view: ComplianceView) -> None:
    ledger = next(i for i in view.instances if i.name == "ledger")
    assert ledger.reason == "frozen: tag PatchPolicy=frozen: never patched"
    assert [(g.patch.id, g.age_days) for g in ledger.gaps] == [("kernel-5.14", 40)]


def test_an_unknown_machine_says_why_it_has_no_assessment(view: ComplianceView) -> None:
    prod3 = next(i for i in view.instances if i.name == "prod-3")
    assert prod3.reason == "no assessment: SSM agent not reporting (ConnectionLost)"


def test_a_machine_without_a_state_is_unknown_never_compliant() -> None:
    view = build_view(policy(), FLEET[:1], [], NOW)
    assert view.instances[0].status == "unknown"


def test_ages_are_whole_days_since_release_and_unknown_without_a_date() -> None:
    state = PatchState(
        "i-stg-1", assessed_at=NOW, missing=(gap("a", days=3), MissingPatch("b", classification="Security"))
    )
    (only,) = build_view(policy(), FLEET[:1], [state], NOW).instances
    assert {g.patch.id: g.age_days for g in only.missing} == {"a": 3, "b": None}


def test_totals_per_ring_and_per_policy(view: ComplianceView) -> None:
    production = next(r for r in view.rings if r.name == "production")
    t = production.totals
    assert t.machines == {
        "compliant": 0,
        "non_compliant": 2,
        "needs_attention": 0,
        "excepted": 0,
        "exposed": 1,
        "unknown": 1,
        "unmanaged": 0,
    }
    assert t.missing == 3  # openssl, curl, kernel: tzdata is not in the policy
    assert t.by_severity == {"Critical": 2, "Important": 0, "Moderate": 1, "Low": 0, "Unspecified": 0}
    assert t.by_classification == {"Security": 3}
    assert t.oldest_missing_days == 40
    assert t.reboots_pending == 1
    assert view.totals.instances == 6 and view.policies[0].totals == view.totals


def test_classifications_are_matched_across_the_clouds_names() -> None:
    selection = PatchSelection(classifications=["Critical", "Security"], exclude=["curl"])
    assert in_policy(selection, MissingPatch("KB1", classification="SecurityUpdates"))
    assert in_policy(selection, MissingPatch("KB2", classification="critical updates"))
    assert not in_policy(selection, MissingPatch("KB3", classification="Bugfix"))
    assert not in_policy(selection, MissingPatch("curl-7.76.1-29.el9", classification="Security"))
    assert in_policy(PatchSelection(classifications=[], include=["KB3"]), MissingPatch("kb3", classification="Other"))
    assert not in_policy(
        PatchSelection(exclude=["open*"]), MissingPatch("openssl-3.0.13-1.el9", classification="Security")
    )
    # a classification the policy cannot name is never hidden: the cloud's baseline called it missing
    assert in_policy(selection, MissingPatch("libc6", classification="libs"))
    assert in_policy(selection, MissingPatch("libc6"))


def test_a_frozen_policy_shows_every_machine_as_exposed() -> None:
    view = build_view(policy("kind: frozen\n"), FLEET[:3], STATES[:3], NOW)
    assert set(by_name(view).values()) == {"exposed"}
    assert all("kind frozen" in i.reason for i in view.instances)
    assert not plan(policy("kind: frozen\n"), FLEET).waves


def test_merging_views_keeps_each_policy_and_totals_every_row(view: ComplianceView) -> None:
    other = build_view(policy(name="other"), FLEET[:2], STATES[:2], NOW + timedelta(minutes=5))
    merged = merge_views([view, other])
    assert [p.name for p in merged.policies] == ["fleet", "other"]
    assert merged.totals.instances == 8
    assert merged.generated_at == NOW + timedelta(minutes=5)
    assert [r.policy for r in merged.rings].count("other") == 2


def test_merging_a_policy_twice_or_nothing_is_refused(view: ComplianceView) -> None:
    with pytest.raises(ValueError, match="a policy is given twice: fleet"):
        merge_views([view, view])
    with pytest.raises(ValueError, match="no compliance view"):
        merge_views([])


def test_nothing_pending_only_when_every_managed_machine_is_compliant(view: ComplianceView) -> None:
    assert not nothing_pending(view)
    assert (
        pending_summary(view)
        == "2 machines lack 2 patches or a reboot; 1 machine without an assessment (of 4 machines)"
    )
    # every managed machine compliant; the exposed one lacks a patch and does not count
    states = [PatchState(i.id, assessed_at=ASSESSED) for i in FLEET[:4]] + [STATES[4]]
    clean = build_view(policy(), FLEET[:5], states, NOW)
    assert by_name(clean)["ledger"] == "exposed"
    assert nothing_pending(clean)
    assert pending_summary(clean) == "nothing pending on 4 machines"
    empty = build_view(policy(), [FLEET[5]], STATES[5:], NOW)
    assert not nothing_pending(empty) and pending_summary(empty) == "no machine to patch"


def test_the_document_is_json_and_has_the_documented_shape(view: ComplianceView) -> None:
    document = json.loads(json.dumps(view.document()))
    assert set(document) == {"version", "generated_at", "totals", "policies", "instances"}
    assert document["generated_at"] == "2026-12-14T06:00:00+00:00"
    assert set(document["totals"]) == {
        "instances",
        "machines",
        "missing",
        "missing_by_severity",
        "missing_by_classification",
        "oldest_missing_days",
        "reboots_pending",
        "overdue",
        "due_soon",
        "no_deadline",
        "excepted_patches",
    }
    assert document["policies"][0]["kind"] == "scheduled"
    prod1 = next(i for i in document["instances"] if i["name"] == "prod-1")
    assert prod1["missing"][0] == {
        "id": "openssl-3.0.13",
        "title": "",
        "classification": "Security",
        "severity": "Critical",
        "state": "missing",
        "released_at": (NOW - timedelta(days=12, hours=3)).isoformat(),
        "age_days": 12,
        "version": "",
        "in_policy": True,
        "sla": None,
        "deadline": None,
        "deadline_state": None,
        "exception": None,
    }


# ---------------------------------------------------------------- the reports


def test_markdown_lists_rings_machines_and_the_exposed_ones_loudly(view: ComplianceView) -> None:
    text = render_markdown(view)
    assert "**1 of 6 machines compliant**" in text
    assert "> **Warning: 1 machine is EXPOSED: never patched by the policy.** ledger (1 missing)." in text
    assert "| production | 0 | 2 | 0 | 0 | 1 | 1 | 0 | 3 | 2 | 0 | 1 | 0 | 0 | 40 | 1 |" in text
    assert "openssl-3.0.13 (Critical, Security, 12 d)" in text
    assert "tzdata (Low, Other, 10 d, not in policy)" in text


def test_markdown_escapes_what_the_clouds_report() -> None:
    state = PatchState("i-stg-1", assessed_at=NOW, missing=(MissingPatch("evil|*x*", classification="Security"),))
    text = render_markdown(build_view(policy(), FLEET[:1], [state], NOW))
    assert r"evil\|\*x\*" in text


def test_html_is_one_self_contained_page_with_both_charts(view: ComplianceView) -> None:
    page = render_html(view)
    assert page.count("<svg") == 2 and "<script" not in page and "http://" not in page.replace("http://www.w3", "")
    assert 'class="status exposed"' in page and "Machines per ring" in page and "by severity" in page
    state = PatchState("i-stg-1", assessed_at=NOW, missing=(MissingPatch("<b>x</b>", classification="Security"),))
    assert "&lt;b&gt;x&lt;/b&gt;" in render_html(build_view(policy(), FLEET[:1], [state], NOW))


def test_csv_has_a_row_per_missing_patch_and_one_per_machine_lacking_nothing(view: ComplianceView) -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(view))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["name"], r["patch_id"]) for r in rows if r["name"] == "prod-1"] == [
        ("prod-1", "openssl-3.0.13"),
        ("prod-1", "curl-7"),
    ]
    stg = [r for r in rows if r["name"] == "stg-1"]
    assert len(stg) == 1 and stg[0]["status"] == "compliant" and stg[0]["patch_id"] == "" and stg[0]["age_days"] == ""
    assert len(rows) == 1 + 2 + 1 + 1 + 1 + 1  # stg-1, prod-1 ×2, prod-2, prod-3, ledger, bastion


def test_the_notice_has_a_line_per_ring_and_the_reports_location(view: ComplianceView) -> None:
    notice = compliance_notice(view, "s3://bucket/reports/x.html", notice_id="compliance-report:fleet:x:notify")
    lines = notice.text.splitlines()
    assert notice.topic == "compliance_report" and notice.severity == "warning"
    assert lines[0].startswith("1 of 6 machines compliant (fleet, as of 2026-12-14T06:00+00:00).")
    assert "1 EXPOSED (never patched)" in lines[0]
    assert lines[1] == "staging: 1 compliant"
    assert lines[2] == (
        "production: 2 non-compliant, 1 exposed, 1 unknown; 3 missing (2 Critical), oldest 40 days; 1 reboots pending"
    )
    assert lines[-1] == "Report: s3://bucket/reports/x.html"
    assert notice.id == "compliance-report:fleet:x:notify"


def test_the_skip_notice_is_named_after_the_window() -> None:
    notice = skipped_notice("fleet-20261212-0200", "fleet", "nothing pending on 4 machines")
    assert notice.id == "fleet-20261212-0200:notify:run_skipped" and notice.topic == "run_skipped"
    assert "skipped: nothing pending on 4 machines" in notice.text


def test_the_notice_becomes_a_card_with_the_report_as_a_fact_or_a_button(view: ComplianceView) -> None:
    from patchpilot.notify.messages import card_for
    from patchpilot.notify.slack import slack_message
    from patchpilot.notify.teams import teams_message

    stored = card_for(compliance_notice(view, "s3://bucket/reports/x.html"))
    assert (
        stored.title.startswith("Patch compliance: compliance-fleet-")
        and ("Report", "s3://bucket/reports/x.html") in stored.facts
    )
    web = card_for(compliance_notice(view, "https://st.blob.core.windows.net/reports/x.html"))
    assert web.links == (("Open report", "https://st.blob.core.windows.net/reports/x.html"),)
    assert "production: 2 non-compliant" in str(slack_message(web, None)) and "staging: 1 compliant" in str(
        teams_message(web, None)
    )


# ---------------------------------------------------------------- the last PatchPilot run


def a_run(run_id: str, states: dict[str, InstanceState], finished: datetime | None, policy_name: str = "fleet") -> Run:
    """A run of one production wave whose machines ended in `states` (machine name -> state)."""
    by_name = {i.name: i for i in FLEET}
    records = {
        by_name[n].id: InstanceRecord(instance=by_name[n], ring="production", wave=1, state=state)
        for n, state in states.items()
    }
    wave = WaveState(index=1, ring="production", ring_position=1, records=records, finished_at=finished)
    return Run(run_id=run_id, policy=policy(name=policy_name), created_at=NOW - timedelta(days=30), waves=(wave,))


NOV, DEC = NOW - timedelta(days=30), NOW - timedelta(days=2)


def test_last_patched_counts_only_patched_machines_of_finished_waves() -> None:
    runs = [
        a_run("fleet-nov", {"prod-1": "patched", "prod-2": "rolled_back", "prod-3": "failed"}, NOV),
        a_run("fleet-dec", {"stg-1": "patched", "prod-2": "skipped"}, None),  # under way
    ]
    assert last_patched(runs, "fleet") == {"i-prod-1": LastRun("fleet-nov", NOV)}


def test_the_latest_run_wins_whatever_the_order() -> None:
    nov = a_run("fleet-nov", {"prod-1": "patched", "prod-2": "patched"}, NOV)
    dec = a_run("fleet-dec", {"prod-1": "patched", "prod-2": "rolled_back"}, DEC)
    for runs in ([nov, dec], [dec, nov]):
        assert last_patched(runs, "fleet") == {
            "i-prod-1": LastRun("fleet-dec", DEC),
            "i-prod-2": LastRun("fleet-nov", NOV),  # December rolled it back: November's patch stands
        }


def test_runs_of_other_policies_are_ignored() -> None:
    other = a_run("fleet-canary-dec", {"prod-1": "patched"}, DEC, policy_name="fleet-canary")
    assert last_patched([other, a_run("fleet-nov", {"prod-2": "patched"}, NOV)], "fleet") == {
        "i-prod-2": LastRun("fleet-nov", NOV)
    }


class ListedRuns:
    """A run store's read side that counts the runs it loads."""

    def __init__(self, runs: list[Run], gone: tuple[str, ...] = ()) -> None:
        self.runs = {r.run_id: r for r in runs}
        self.ids = [*self.runs, *gone]
        self.loaded: list[str] = []

    def run_ids(self) -> list[str]:
        return list(self.ids)

    def load(self, run_id: str) -> Run:
        self.loaded.append(run_id)
        if run_id not in self.runs:
            raise UnknownRunError(run_id)
        return self.runs[run_id]


def test_recent_runs_reads_only_the_newest_runs_of_the_policy_newest_first() -> None:
    runs = [a_run(f"fleet-{k:02}", {"prod-1": "patched"}, NOV + timedelta(days=k)) for k in range(20)]
    runs.insert(5, a_run("web-01", {"prod-2": "patched"}, DEC, policy_name="web"))
    store = ListedRuns(runs, gone=("fleet-listed-not-written",))
    found = recent_runs(store, "fleet", limit=3)  # type: ignore[arg-type]
    assert [r.run_id for r in found] == ["fleet-19", "fleet-18"]  # the missing one counts against the bound
    assert store.loaded == ["fleet-listed-not-written", "fleet-19", "fleet-18"]


def test_the_reports_show_the_last_run_when_the_runs_were_read() -> None:
    states = [PatchState(i.id, assessed_at=NOW, missing=(gap("openssl"),)) for i in FLEET]
    runs = last_patched([a_run("fleet-20261212-0200", {"prod-1": "patched"}, DEC)], "fleet")
    view = build_view(policy(), FLEET, states, NOW, runs)
    by_id = {i["id"]: i for i in view.document()["instances"]}
    assert by_id["i-prod-1"]["last_run"] == {"run_id": "fleet-20261212-0200", "at": DEC.isoformat()}
    assert by_id["i-prod-2"]["last_run"] is None and view.document()["policies"][0]["runs_read"] is True
    rows = {r["instance_id"]: r for r in csv.DictReader(io.StringIO(render_csv(view)))}
    last = {i: (r["last_run_id"], r["last_run_at"]) for i, r in rows.items()}
    assert last["i-prod-1"] == ("fleet-20261212-0200", DEC.isoformat()) and last["i-prod-2"] == ("", "")
    assert rows["i-prod-1"]["last_install_at"] == ""  # the cloud's own: it did not say
    markdown = render_markdown(view)
    assert "| Last install | Last PatchPilot run |" in markdown
    prod_1 = next(line for line in markdown.splitlines() if line.startswith("| prod-1 |"))
    assert prod_1.endswith(f"| {DEC.isoformat(timespec='minutes')} | fleet-20261212-0200 |")  # the later install
    assert "<th>Last PatchPilot run</th>" in render_html(view) and "fleet-20261212-0200" in render_html(view)


def test_the_later_of_the_clouds_install_and_the_run_is_the_last_install() -> None:
    later = DEC + timedelta(hours=5)
    states = [PatchState("i-prod-1", assessed_at=NOW, last_install_at=later, missing=(gap("openssl"),))]
    view = build_view(policy(), FLEET[1:2], states, NOW, {"i-prod-1": LastRun("fleet-dec", DEC)})
    assert view.instances[0].last_installed == later
    assert later.isoformat(timespec="minutes") in render_markdown(view)


def test_without_the_runs_the_reports_have_no_last_run_column() -> None:
    states = [PatchState(i.id, assessed_at=NOW, missing=(gap("openssl"),)) for i in FLEET]
    view = build_view(policy(), FLEET, states, NOW)
    assert not view.runs_read and view.document()["policies"][0]["runs_read"] is False
    assert "Last PatchPilot run" not in render_markdown(view) and "Last PatchPilot run" not in render_html(view)
    assert CSV_COLUMNS[19:21] == ("last_run_id", "last_run_at")  # the header stays: added at the end
