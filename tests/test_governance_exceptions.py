"""Change governance, exceptions and SLAs (docs/governance.md): exceptions that expire (in the
policy, the plan, the engine's installs, the simulated fleet, the heads-up, the digest and the
compliance view) and patch SLAs (deadlines, overdue and due soon, the reports, the notice and
`patchpilot compliance`'s exit status)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from clocks import ManualClock
from engine_driver import answer_all_ok, drive_to_end
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from patchpilot.adapters.local.simulated_fleet import SimulatedFleet
from patchpilot.cli import main
from patchpilot.compliance.model import MissingPatch, PatchState
from patchpilot.compliance.render import (
    CSV_COLUMNS,
    compliance_notice,
    overdue_chart,
    render_csv,
    render_html,
    render_markdown,
)
from patchpilot.compliance.report import build_view, deadline_of, nothing_pending, unexcepted_overdue
from patchpilot.engine.decide import start_run
from patchpilot.engine.messages import InstallPatches, InstallTarget
from patchpilot.errors import InputError
from patchpilot.inventory import Instance, Simulation
from patchpilot.maintenance.model import WatchResult
from patchpilot.maintenance.watch import digest_notice, watch_view
from patchpilot.notify.messages import card_for
from patchpilot.planning import plan
from patchpilot.policy import Policy, parse_policy
from patchpilot.policy.exceptions import excepted_patches, machine_exception
from patchpilot.policy.model import a_year_after
from patchpilot.ports import InProgress
from patchpilot.triggers import heads_up

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
POLICY = """\
name: gov
schedule: {monthly: "Second Tuesday", at: "02:00", timezone: UTC, duration: 8h}
rings:
  - {name: staging, select: {tags: {Environment: staging}}}
  - {name: production, select: {tags: {Environment: production}}}
exclude: {tags: {PatchPolicy: frozen}}
exceptions:
  - select: {ids: [i-legacy]}
    reason: the vendor certifies only the 2019 build
    owner: erp-team
    expires: 2027-03-31
  - select: {tags: {App: api}}
    patches: [openssl]
    reason: openssl 3.0.13 breaks the HSM client
    owner: api-team
    expires: 2026-12-20
compliance:
  sla: {Critical: 7d, Important: 30d, Security: 14d}
  due_soon: 3d
"""


def policy(text: str = POLICY, now: datetime = NOW) -> Policy:
    return parse_policy(text, now=now)


def machine(name: str, env: str | None = "production", **tags: str) -> Instance:
    labels = {"Environment": env, **tags} if env else dict(tags)
    return Instance(id=f"i-{name}", name=name, cloud="aws", region="ap-northeast-1", os="linux", tags=labels)


FLEET = [
    machine("stg-1", "staging", App="api"),
    machine("api-1", App="api"),
    machine("api-2", App="api"),
    machine("legacy", App="erp"),
    machine("ledger", PatchPolicy="frozen"),
]


def gap(
    patch_id: str, severity: str = "Important", classification: str = "Security", days: int | None = 10
) -> MissingPatch:
    released = None if days is None else NOW - timedelta(days=days)
    return MissingPatch(patch_id, classification=classification, severity=severity, released_at=released)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the policy


def test_an_exception_more_than_a_year_ahead_is_an_error_naming_it_by_index() -> None:
    text = POLICY.replace("expires: 2027-03-31", "expires: 2027-12-07")
    with pytest.raises(InputError) as caught:
        policy(text)
    (problem,) = caught.value.problems
    assert problem.path == ("exceptions", 0, "expires")
    assert "exception 0 (the vendor certifies only the 2019 build) expires 2027-12-07" in problem.message
    assert "2027-12-06 at the latest" in problem.message and problem.line == 11
    assert policy(POLICY.replace("expires: 2027-03-31", "expires: 2027-12-06")).exceptions[0].expires == date(
        2027, 12, 6
    )


def test_an_exception_needs_an_expiry_an_owner_a_reason_and_a_selector() -> None:
    with pytest.raises(InputError) as caught:
        policy(POLICY.replace("    expires: 2027-03-31\n", "").replace("    owner: erp-team\n", ""))
    assert {p.path for p in caught.value.problems} == {("exceptions", 0, "expires"), ("exceptions", 0, "owner")}
    with pytest.raises(InputError) as caught:
        policy(POLICY.replace("select: {ids: [i-legacy]}", "select: {}"))
    assert [p.path for p in caught.value.problems] == [("exceptions", 0, "select")]


def test_an_sla_key_must_be_a_severity_or_a_classification() -> None:
    with pytest.raises(InputError) as caught:
        policy(POLICY.replace("Important: 30d", "Importnt: 30d"))
    (problem,) = caught.value.problems
    assert problem.path == ("compliance", "sla", "Importnt") and 'did you mean "Important"' in problem.message


@given(
    today=st.dates(min_value=date(2001, 1, 1), max_value=date(2090, 12, 31)),
    ahead=st.integers(min_value=-800, max_value=800),
    at=st.times(),
)
def test_an_exception_is_valid_exactly_up_to_a_year_after_the_callers_today(today: date, ahead: int, at: time) -> None:
    expires = today + timedelta(days=ahead)
    text = POLICY.replace("expires: 2027-03-31", f"expires: {expires.isoformat()}").replace(
        "expires: 2026-12-20", f"expires: {today.isoformat()}"
    )
    now = datetime.combine(today, at, tzinfo=UTC)
    latest = a_year_after(today)
    assert latest.month == today.month and (latest - today).days in (365, 366)
    if expires <= latest:
        assert policy(text, now).exceptions[0].expires == expires
    else:
        with pytest.raises(InputError):
            policy(text, now)


# ---------------------------------------------------------------- in force, then expired


TOKYO = POLICY.replace("timezone: UTC", "timezone: Asia/Tokyo")


@given(
    expires=st.dates(min_value=date(2026, 1, 1), max_value=date(2028, 12, 31)),
    moment=st.datetimes(min_value=datetime(2025, 12, 1), max_value=datetime(2029, 1, 31), timezones=st.just(UTC)),
)
def test_a_machine_exception_is_in_force_through_its_last_day_in_the_policys_time_zone(
    expires: date, moment: datetime
) -> None:
    text = TOKYO.replace("expires: 2027-03-31", f"expires: {expires.isoformat()}")
    pol = parse_policy(text, now=datetime.combine(expires, time(), tzinfo=UTC))
    legacy = FLEET[3]
    local_day = moment.astimezone(ZoneInfo("Asia/Tokyo")).date()
    found = machine_exception(pol, legacy, moment)
    assert (found is not None) == (local_day <= expires)
    excluded = {e.instance.id: e for e in plan(pol, FLEET, moment).excluded}
    if found is not None:
        assert (
            excluded["i-legacy"].reason
            == f"excepted: the vendor certifies only the 2019 build (erp-team, until {expires})"
        )
    else:  # expired: it matches nothing, the machine is planned again
        assert "i-legacy" not in excluded


def test_the_plan_lists_the_excepted_machine_with_reason_owner_and_date() -> None:
    result = plan(policy(), FLEET, NOW)
    reasons = {e.instance.name: e.reason for e in result.excluded}
    assert reasons["legacy"] == "excepted: the vendor certifies only the 2019 build (erp-team, until 2027-03-31)"
    assert "legacy" not in {i.name for w in result.waves for i in w.instances}
    assert plan(policy(), FLEET).excluded == tuple(e for e in result.excluded if e.exception is None)  # no now: none


def test_the_plan_command_shows_the_excepted_machine(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    inventory = tmp_path / "fleet.json"
    inventory.write_text(
        json.dumps({"instances": [TypeAdapter(Instance).dump_python(i, mode="json", exclude_none=True) for i in FLEET]})
    )
    result = CliRunner().invoke(
        main,
        ["plan", "--policy", str(path), "--inventory", str(inventory), "--json"],
        env={"PATCHPILOT_VIRTUAL_START": NOW.isoformat()},
    )
    assert result.exit_code == 0, result.output
    excluded = {e["id"]: e["reason"] for e in json.loads(result.stdout)["excluded"]}
    assert excluded["i-legacy"].startswith("excepted: the vendor certifies only the 2019 build (erp-team, until")


# ---------------------------------------------------------------- installs leave the excepted patches out


def test_old_install_targets_load_with_nothing_excluded() -> None:
    target = InstallTarget.model_validate(
        {"instance": TypeAdapter(Instance).dump_python(FLEET[1], mode="json"), "only": None}
    )
    assert target.exclude == []


def test_the_engine_puts_a_machines_patch_exceptions_on_its_install_target_until_they_expire() -> None:
    pol = policy()
    assert excepted_patches(pol, FLEET[1], NOW) == ["openssl"]
    assert excepted_patches(pol, FLEET[3], NOW) == []  # not an api machine (and excepted as a whole)
    assert excepted_patches(pol, FLEET[1], datetime(2026, 12, 21, tzinfo=UTC)) == []  # expired

    installs: list[InstallPatches] = []

    def fleet(command: object) -> list:  # type: ignore[type-arg]
        if isinstance(command, InstallPatches):
            installs.append(command)
        return answer_all_ok(command)  # type: ignore[arg-type]

    run = drive_to_end(start_run("run-1", pol, plan(pol, FLEET, NOW), NOW), fleet)
    assert run.status == "succeeded"
    excluded = {t.instance.name: t.exclude for c in installs for t in c.targets}
    assert excluded == {"stg-1": ["openssl"], "api-1": ["openssl"], "api-2": ["openssl"]}


def test_the_simulated_fleet_installs_everything_but_a_targets_exclusions(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    vm = Instance(
        id="i-1", cloud="aws", region="r", os="linux", simulation=Simulation(missing=["openssl-3.0.13-1.el9"])
    )
    with SimulatedFleet(tmp_path / "fleet.db", clock) as fleet:
        for run_id, exclude in (("run-1", ["openssl"]), ("run-2", [])):
            command = InstallPatches(
                id=f"{run_id}:install",
                run_id=run_id,
                targets=[InstallTarget(instance=vm, exclude=exclude)],
                classifications=["Critical", "Security"],
            )
            while isinstance(progress := fleet.install_patches(command), InProgress):
                clock.set(progress.retry_at)
            (outcome,) = progress
            installed = outcome.items
            if exclude:
                assert installed and not any(p.startswith("openssl") for p in installed)
                (state,) = fleet.patch_states([vm])
                assert [p.id for p in state.missing] == ["openssl-3.0.13-1.el9"]
            else:
                assert "openssl-3.0.13-1.el9" in installed


# ---------------------------------------------------------------- notices: the heads-up and the digest

NOTIFY = """\
notifications:
  channels: [{name: ops, kind: slack, webhook: patchpilot/slack-ops, mention: "<!here>"}]
  routes: [{channels: [ops]}]
"""
WINDOW = datetime(2027, 1, 12, 2, 0, tzinfo=UTC)  # the second Tuesday of January 2027


def test_the_heads_up_names_the_exceptions_that_ended_since_the_last_window() -> None:
    pol = policy(POLICY + NOTIFY)
    notice = heads_up(pol, WINDOW - timedelta(hours=24), timedelta(hours=24))
    assert notice is not None
    assert "Exceptions that ended since the last window" in notice.text
    assert (
        "patches openssl of tag App=api: openssl 3.0.13 breaks the HSM client (api-team, until 2026-12-20)"
        in notice.text
    )
    assert "erp-team" not in notice.text  # still in force
    december = heads_up(pol, datetime(2026, 12, 8, 2, 0, tzinfo=UTC) - timedelta(hours=24), timedelta(hours=24))
    assert december is not None and "Exceptions" not in december.text  # nothing ended before that window


def test_the_weekly_digest_lists_the_exceptions_ending_within_14_days() -> None:
    pol = policy()
    view = watch_view(WatchResult(()), pol, FLEET, NOW)
    assert [e.owner for e in view.expiring] == ["api-team"]  # 2026-12-20; the erp one ends in March
    notice = digest_notice(view, NOW)
    assert "Exceptions ending within 14 days (1)" in notice.text
    assert "- exception: patches openssl of tag App=api" in notice.text
    assert view.document()["exceptions_expiring"] == [
        {
            "reason": "openssl 3.0.13 breaks the HSM client",
            "owner": "api-team",
            "expires": "2026-12-20",
            "patches": ["openssl"],
        }
    ]
    assert watch_view(WatchResult(()), pol, FLEET, datetime(2026, 12, 21, tzinfo=UTC)).expiring == ()


# ---------------------------------------------------------------- the compliance view: exceptions


STATES = [
    PatchState("i-stg-1", assessed_at=NOW, missing=(gap("openssl-3.0.13-1"),)),
    PatchState(
        "i-api-1", assessed_at=NOW, missing=(gap("openssl-3.0.13-1", "Critical", days=20), gap("curl-7", days=5))
    ),
    PatchState("i-api-2", assessed_at=NOW, missing=(gap("openssl-3.0.13-1", "Critical", days=20),)),
    PatchState("i-legacy", assessed_at=NOW, missing=(gap("kernel-5", "Critical", days=40),)),
    PatchState("i-ledger", assessed_at=NOW, missing=(gap("sudo-1", "Critical", days=3),)),
]


def test_an_excepted_machine_is_counted_apart_with_its_owner_and_expiry() -> None:
    view = build_view(policy(), FLEET, STATES, NOW)
    legacy = next(i for i in view.instances if i.name == "legacy")
    assert legacy.status == "excepted" and legacy.ring == "production"
    assert legacy.document()["exception"] == {
        "reason": "the vendor certifies only the 2019 build",
        "owner": "erp-team",
        "expires": "2027-03-31",
        "patches": [],
    }
    assert [g.state for g in legacy.missing] == ["excepted"] and not legacy.overdue  # 40 days, yet excepted
    assert (
        view.totals.machines["excepted"] == 1 and view.totals.machines["compliant"] == 2
    )  # stg-1, api-2: only openssl
    assert nothing_pending(view) is False  # api-1 lacks curl


def test_an_excepted_patch_has_the_excepted_state_and_does_not_make_the_machine_non_compliant() -> None:
    view = build_view(policy(), FLEET, STATES, NOW)
    api2 = next(i for i in view.instances if i.name == "api-2")
    assert api2.status == "compliant" and api2.gaps == ()
    (document,) = api2.document()["missing"]
    assert document["state"] == "excepted" and document["exception"]["owner"] == "api-team"
    assert document["deadline"] is None  # excepted: no deadline to meet
    assert view.totals.excepted_patches == 4  # stg-1, api-1, api-2 openssl; legacy's kernel


def test_an_expired_exception_counts_as_what_the_machine_really_is() -> None:
    later = datetime(2027, 4, 1, tzinfo=UTC)  # both exceptions have ended
    states = [PatchState(s.instance_id, assessed_at=later, missing=s.missing) for s in STATES]
    view = build_view(policy(), FLEET, states, later)
    statuses = {i.name: i.status for i in view.instances}
    assert statuses == {
        "stg-1": "non_compliant",
        "api-1": "non_compliant",
        "api-2": "non_compliant",
        "legacy": "non_compliant",
        "ledger": "exposed",
    }
    assert view.totals.machines["excepted"] == 0 and view.totals.excepted_patches == 0


# ---------------------------------------------------------------- SLAs


@pytest.mark.parametrize(
    ("severity", "classification", "released_days_ago", "sla", "state"),
    [
        ("Critical", "Security", 8, "7d", "overdue"),  # the severity's SLA wins over the classification's
        ("Critical", "Security", 5, "7d", "due_soon"),  # 2 days left, due_soon 3d
        ("Critical", "Security", 3, "7d", "on_time"),
        ("Unspecified", "SecurityUpdates", 15, "14d", "overdue"),  # the classification (cloud's name) as fallback
        ("Moderate", "Security", 12, "14d", "due_soon"),  # no Moderate SLA: Security's
        ("Low", "Bugfix", 100, None, None),  # neither: no deadline
    ],
)
def test_a_deadline_is_the_release_date_plus_the_sla_of_the_severity_else_the_classification(
    severity: str, classification: str, released_days_ago: int, sla: str | None, state: str | None
) -> None:
    settings = policy().compliance
    deadline = deadline_of(settings, gap("p", severity, classification, released_days_ago), NOW)
    if sla is None:
        assert deadline is None
        return
    assert deadline is not None and deadline.state == state
    days = int(sla.rstrip("d"))
    assert deadline.sla == timedelta(days=days)
    assert deadline.at == NOW - timedelta(days=released_days_ago) + timedelta(days=days)


def test_a_patch_without_a_release_date_has_no_deadline_and_says_so() -> None:
    deadline = deadline_of(policy().compliance, gap("KB1", "Critical", days=None), NOW)
    assert deadline is not None and deadline.state == "no_release_date" and deadline.at is None
    view = build_view(
        policy(),
        [FLEET[1]],
        [PatchState("i-api-1", assessed_at=NOW, missing=(gap("KB1", "Critical", days=None),))],
        NOW,
    )
    assert view.totals.no_deadline == 1 and view.totals.overdue == 0
    assert "no release date: no deadline" in render_markdown(view)


@given(released=st.integers(min_value=0, max_value=60), due_soon=st.integers(min_value=0, max_value=10))
def test_overdue_and_due_soon_follow_the_deadline_and_the_due_soon_setting(released: int, due_soon: int) -> None:
    pol = policy(POLICY.replace("due_soon: 3d", f"due_soon: {due_soon}d"))
    deadline = deadline_of(pol.compliance, gap("p", "Critical", days=released), NOW)
    assert deadline is not None
    left = 7 - released  # days until the deadline
    expected = "overdue" if left < 0 else "due_soon" if left <= due_soon else "on_time"
    assert deadline.state == expected


def test_totals_per_ring_and_policy_count_overdue_and_due_soon_and_exposed_machines_too() -> None:
    view = build_view(policy(), FLEET, STATES, NOW)
    production = next(r for r in view.rings if r.name == "production")
    # api-1: openssl excepted, curl (Important, 30d, 5 days old): on time; ledger (exposed): sudo Critical 3 days
    assert (production.totals.overdue, production.totals.due_soon) == (0, 0)
    states = [*STATES[:4], PatchState("i-ledger", assessed_at=NOW, missing=(gap("sudo-1", "Critical", days=9),))]
    view = build_view(policy(), FLEET, states, NOW)
    production = next(r for r in view.rings if r.name == "production")
    assert production.totals.overdue == 1 and view.policies[0].totals.overdue == 1
    assert [(i.name, g.patch.id) for i, g in unexcepted_overdue(view)] == [("ledger", "sudo-1")]
    assert view.document()["policies"][0]["sla"] == {"Critical": "7d", "Important": "30d", "Security": "14d"}


def overdue_view():  # type: ignore[no-untyped-def]
    states = [*STATES[:3], PatchState("i-legacy", assessed_at=NOW), PatchState("i-api-x", assessed_at=NOW)]
    states[1] = PatchState(
        "i-api-1", assessed_at=NOW, missing=(gap("kernel-6", "Critical", days=9), gap("curl-7", days=28))
    )
    return build_view(policy(), FLEET, states, NOW)


def test_the_reports_show_deadlines_overdue_and_excepted_in_every_format() -> None:
    view = overdue_view()
    api1 = next(i for i in view.instances if i.name == "api-1")
    assert api1.reason == "2 missing patches, 1 overdue"
    markdown = render_markdown(view)
    warning = "> **Warning: 1 patch OVERDUE: past its SLA deadline, no exception covers it.**"
    assert f"{warning} api-1: kernel-6 (due 2026-12-04)." in markdown
    assert "kernel-6 (Critical, Security, 9 d, overdue (due 2026-12-04))" in markdown
    assert "curl-7 (Important, Security, 28 d, due soon (due 2026-12-08))" in markdown
    assert (
        "## Excepted machines" in markdown
        and "| legacy | production | the vendor certifies only the 2019 build | erp-team | 2027-03-31 |" in markdown
    )
    html = render_html(view)
    assert 'id="overdue"' in html and "Patches against their SLA per ring" in html and "<script" not in html
    assert '<h2 id="excepted">Excepted machines (1)</h2>' in html
    chart = overdue_chart(view)
    production = next(b for b in chart.bars if b.label == "production")
    assert [(s.label, s.count) for s in production.segments] == [("overdue", 1), ("due soon", 1)]
    rows = list(csv.DictReader(io.StringIO(render_csv(view))))
    assert list(rows[0]) == list(CSV_COLUMNS)
    kernel = next(r for r in rows if r["patch_id"] == "kernel-6")
    assert (kernel["sla"], kernel["deadline_state"], kernel["deadline"][:10]) == ("7d", "overdue", "2026-12-04")
    excepted = next(r for r in rows if r["instance_id"] == "i-api-2")
    assert (excepted["state"], excepted["exception_owner"], excepted["exception_expires"]) == (
        "excepted",
        "api-team",
        "2026-12-20",
    )
    legacy = next(r for r in rows if r["instance_id"] == "i-legacy")
    assert (legacy["status"], legacy["exception_owner"], legacy["patch_id"]) == ("excepted", "erp-team", "")
    document = json.loads(json.dumps(view.document()))
    assert document["totals"]["overdue"] == 1 and document["totals"]["due_soon"] == 1


def test_the_compliance_notice_mentions_on_call_when_something_is_overdue() -> None:
    notice = compliance_notice(overdue_view(), "reports/x.html")
    assert notice.severity == "error"
    assert "1 patch OVERDUE (past the SLA) on 1 machine: on-call, act" in notice.text
    assert "1 missing patch due soon" in notice.text
    assert card_for(notice).alert  # the channel's on-call mention goes first
    calm = compliance_notice(build_view(policy(), FLEET, STATES, NOW), "reports/x.html")
    assert calm.severity != "error" and not card_for(calm).alert


# ---------------------------------------------------------------- patchpilot compliance exits 1 on an overdue patch


def test_compliance_exits_1_on_an_overdue_patch_unless_an_exception_covers_it(tmp_path: Path) -> None:
    frozen = {
        "id": "i-ledger",
        "cloud": "aws",
        "region": "r",
        "os": "linux",
        "tags": {"Environment": "production", "PatchPolicy": "frozen"},
        "simulation": {"missing": ["sudo-1.9.5p2-10.el9"]},  # Critical, released 5 days before the read
    }
    inventory = tmp_path / "fleet.json"
    inventory.write_text(json.dumps({"instances": [frozen]}))
    path = tmp_path / "policy.yaml"
    env = {"PATCHPILOT_VIRTUAL_START": NOW.isoformat(), "COLUMNS": "200"}

    def compliance(sla: str, extra: str = "") -> tuple[int, dict[str, Any]]:
        path.write_text(
            POLICY.replace("Critical: 7d", f"Critical: {sla}").replace("exceptions:\n", "exceptions:\n" + extra)
        )
        args = ["compliance", "--policy", str(path), "--inventory", str(inventory), "--state-dir", str(tmp_path / "s")]
        result = CliRunner().invoke(main, [*args, "--json"], env=env)
        return result.exit_code, json.loads(result.stdout)

    code, document = compliance("30d")  # the exposed machine is within its SLA: exposed alone exits 0
    assert code == 0 and document["totals"]["overdue"] == 0
    code, document = compliance("2d")  # past it: overdue, and excluding the machine does not except it
    assert code == 1 and document["totals"]["overdue"] == 1
    excepted = "  - {select: {ids: [i-ledger]}, patches: [sudo], reason: retired in January, owner: ops, "
    excepted += "expires: 2027-01-31}\n"
    code, document = compliance("2d", excepted)
    assert code == 0 and document["totals"]["overdue"] == 0
    (patch,) = document["instances"][0]["missing"]
    assert patch["state"] == "excepted" and patch["exception"]["reason"] == "retired in January"


def test_a_machine_in_no_ring_has_no_deadline_to_miss() -> None:
    bastion = machine("bastion", None)
    view = build_view(
        policy(), [bastion], [PatchState("i-bastion", assessed_at=NOW, missing=(gap("k", "Critical", days=30),))], NOW
    )
    (row,) = view.instances
    assert row.status == "unmanaged" and row.missing[0].deadline is None and not unexcepted_overdue(view)


def test_the_status_legend_with_excepted_still_fits_the_chart() -> None:
    from patchpilot.compliance.render import LEGEND_CHAR, LEGEND_SPACING, status_chart

    chart = status_chart(build_view(policy(), FLEET, STATES, NOW))
    assert "excepted" in [label for label, _ in chart.legend]
    width = sum(LEGEND_SPACING + len(label) * LEGEND_CHAR for label, _ in chart.legend)
    assert chart.legend_x >= 0 and chart.legend_x + width <= chart.width
