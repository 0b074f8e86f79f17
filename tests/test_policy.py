"""Policy files: accepted shapes, and every bad value named with its dotted path and line."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from patchpilot.errors import InputError, Problem
from patchpilot.policy import Policy, load_policy, parse_policy
from patchpilot.policy.fields import Quota

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Line numbers in the tests below count from this text: `name` is line 1, `rings` line 7.
BASE = """\
name: p
schedule:
  monthly: "Second Tuesday"
  at: "02:00"
  timezone: UTC
  duration: 4h
rings:
  - name: staging
    select: {tags: {Environment: staging}}
"""


def problems_of(text: str, source: str = "file.yaml") -> tuple[Problem, ...]:
    with pytest.raises(InputError) as caught:
        parse_policy(text, source)
    assert caught.value.source == source
    return caught.value.problems


def only_problem(text: str) -> Problem:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def with_schedule(schedule: str) -> str:
    """BASE with its schedule block replaced (schedule lines are indented by two spaces)."""
    rest = BASE.split("rings:", 1)[1]
    return "name: p\nschedule:\n" + schedule + "rings:" + rest


# --- accepted policies -------------------------------------------------------------------------


def test_example_policy_is_accepted_with_its_values() -> None:
    policy = load_policy(str(Path(__file__).resolve().parent / "fixtures" / "policy.yaml"))
    assert isinstance(policy, Policy)
    assert policy.name == "monthly-fleet"
    assert [r.name for r in policy.rings] == ["staging", "production"]
    assert policy.rings[0].soak == timedelta(hours=2)
    assert policy.schedule is not None
    assert policy.schedule.monthly is not None
    assert policy.schedule.monthly.offset_days == 3
    assert policy.schedule.at == time(2, 0)
    assert policy.schedule.timezone == "Asia/Tokyo"
    assert policy.schedule.duration == timedelta(hours=4)
    assert policy.rollout.disruption_budget == Quota(25, percent=True)
    assert policy.rollout.max_failures == Quota(1, percent=False)
    assert policy.region_pairs == [("ap-northeast-1", "ap-northeast-3")]
    assert policy.exclude.tags == {"PatchPolicy": ["frozen"]}


def test_minimal_policy_gets_documented_defaults() -> None:
    policy = parse_policy("name: p\nrings:\n  - name: all\n    select: {clouds: [aws]}\n")
    assert policy.schedule is None
    assert policy.rollout.mode == "zone_by_zone"
    assert policy.rollout.disruption_budget == Quota(10, percent=True)
    assert policy.rollout.canary == 1
    assert policy.rollout.max_failures == Quota(0, percent=False)
    assert policy.patches.classifications == ["Critical", "Security"]
    assert policy.reboot == "if_required"


# --- YAML 1.1 surprises --------------------------------------------------------------------------


def test_the_sections_made_without_validation_are_what_validating_nothing_makes() -> None:
    """The policy's section defaults are `model_construct`ed (no validator built at import): the
    same section, fields set and all, as validating an empty one; no section has a validator that
    constructing would skip."""
    from pydantic import BaseModel

    from patchpilot.engine.fleet_commands import CheckHealth

    defaults = [f.default for f in [*Policy.model_fields.values(), *CheckHealth.model_fields.values()]]
    sections = [d for d in defaults if isinstance(d, BaseModel)]
    assert {type(s).__name__ for s in sections} >= {"Rollout", "Exclusions", "PatchSelection", "HealthChecks", "Hooks"}
    for section in sections:
        made = type(section).model_validate({})
        assert section == made and section.model_fields_set == made.model_fields_set == set()
        assert section.model_dump() == made.model_dump()
        decorators = type(section).__pydantic_decorators__
        assert not decorators.model_validators and not decorators.field_validators


def test_unquoted_time_is_read_as_text_not_sexagesimal_number() -> None:
    policy = parse_policy(BASE.replace('at: "02:00"', "at: 10:30"))
    assert policy.schedule is not None
    assert policy.schedule.at == time(10, 30)


def test_tag_value_no_stays_the_string_no() -> None:
    policy = parse_policy(BASE.replace("Environment: staging", "Enabled: no"))
    assert policy.rings[0].select.tags == {"Enabled": ["no"]}


def test_yes_on_off_tag_values_stay_strings() -> None:
    policy = parse_policy(BASE.replace("Environment: staging", "Flag: [yes, on, off]"))
    assert policy.rings[0].select.tags == {"Flag": ["yes", "on", "off"]}


def test_number_tag_values_become_strings() -> None:
    policy = parse_policy(BASE.replace("Environment: staging", "Tier: 3, Ver: [1, 2.5]"))
    assert policy.rings[0].select.tags == {"Tier": ["3"], "Ver": ["1", "2.5"]}


def test_windows_time_zone_name_is_accepted() -> None:
    policy = parse_policy(BASE.replace("timezone: UTC", "timezone: Tokyo Standard Time"))
    assert policy.schedule is not None
    assert policy.schedule.zone.key == "Asia/Tokyo"


# --- field errors: dotted path, line and column ----------------------------------------------------


def test_budget_ten_renders_with_file_line_column_path_and_value() -> None:
    text = BASE + "rollout:\n  disruption_budget: ten\n"
    with pytest.raises(InputError) as caught:
        parse_policy(text, "file.yaml")
    assert caught.value.render() == (
        'file.yaml:11:3: rollout.disruption_budget: expected a whole number or a percentage, got "ten"'
    )
    assert caught.value.problems == (
        Problem(
            ("rollout", "disruption_budget"),
            'expected a whole number or a percentage, got "ten"',
            11,
            3,
        ),
    )


@pytest.mark.parametrize("value", ["0", "0%", "101%", "-5"])
def test_budget_out_of_range_is_rejected(value: str) -> None:
    problem = only_problem(BASE + f'rollout:\n  disruption_budget: "{value}"\n')
    assert problem.path == ("rollout", "disruption_budget")
    assert problem.line == 11
    assert f'got "{value}"' in problem.message or f"got {value}" in problem.message


def test_max_failures_zero_is_allowed_but_budget_zero_is_not() -> None:
    policy = parse_policy(BASE + 'rollout:\n  max_failures: "0%"\n')
    assert policy.rollout.max_failures == Quota(0, percent=True)
    problem = only_problem(BASE + "rollout:\n  disruption_budget: 0\n")
    assert problem.message == "expected a whole number or a percentage of at least 1, got 0"


def test_unknown_field_suggests_the_close_name() -> None:
    problem = only_problem(BASE + "rollout:\n  disruption_budgt: 3\n")
    assert problem.path == ("rollout", "disruption_budgt")
    assert problem.message == "unknown field (did you mean disruption_budget?)"
    assert (problem.line, problem.column) == (11, 3)


def test_unknown_top_level_field_suggests_the_close_name() -> None:
    problem = only_problem(BASE + "rollot: {}\n")
    assert problem.render("file.yaml") == "file.yaml:10:1: rollot: unknown field (did you mean rollout?)"


def test_unknown_field_far_from_any_name_lists_the_allowed_ones() -> None:
    problem = only_problem(BASE.replace("    select:", "    colour: red\n    select:"))
    assert problem.path == ("rings", 0, "colour")
    assert problem.message.startswith("unknown field (allowed: name, select, soak, approval")
    assert problem.line == 9


def test_bad_monthly_rule_is_named() -> None:
    problem = only_problem(BASE.replace("Second Tuesday", "Fifth Tuesday"))
    assert problem.path == ("schedule", "monthly")
    assert (problem.line, problem.column) == (3, 3)
    assert problem.message.endswith('got "Fifth Tuesday"')
    assert "<First|Second|Third|Fourth|Last> <Weekday> [Offset±N]" in problem.message


def test_monthly_offset_beyond_six_days_is_rejected() -> None:
    problem = only_problem(BASE.replace("Second Tuesday", "Second Tuesday Offset+7"))
    assert problem.path == ("schedule", "monthly")
    assert "offset from -6 to 6" in problem.message


@pytest.mark.parametrize(
    "cron",
    [
        "0 2 ? * TUE#2 *",  # not wrapped in cron(...)
        "cron(0 2 ? * TUE#2)",  # five fields
        "cron(0 2 * * TUE#2 *)",  # neither day field is ?
        "cron(0 2 ? * FUNDAY *)",  # not a weekday
        "cron(0 25 ? * TUE *)",  # no hour 25
    ],
)
def test_bad_cron_is_named(cron: str) -> None:
    text = with_schedule(f'  cron: "{cron}"\n  duration: 4h\n')
    problem = only_problem(text)
    assert problem.path == ("schedule", "cron")
    assert (problem.line, problem.column) == (3, 3)
    assert problem.message.endswith(f'got "{cron}"')


def test_bad_timezone_is_named() -> None:
    problem = only_problem(BASE.replace("timezone: UTC", "timezone: Mars/Olympus"))
    assert problem.path == ("schedule", "timezone")
    assert problem.line == 5
    assert problem.message == (
        'expected an IANA time zone ("Asia/Tokyo") or a Windows one ("Tokyo Standard Time"), got "Mars/Olympus"'
    )


@pytest.mark.parametrize("duration", ["4 hours", "h", "-1h", "4x"])
def test_bad_duration_is_named(duration: str) -> None:
    problem = only_problem(BASE.replace("duration: 4h", f'duration: "{duration}"'))
    assert problem.path == ("schedule", "duration")
    assert problem.line == 6
    assert problem.message == f'expected a duration such as "4h", "90m" or "1h30m", got "{duration}"'


def test_zero_duration_window_is_rejected() -> None:
    problem = only_problem(BASE.replace("duration: 4h", "duration: 0"))
    assert problem.path == ("schedule", "duration")
    assert problem.message == "expected a window longer than 0"


@pytest.mark.parametrize("duration, expected", [("90m", 90), ("1h30m", 90), ("2d", 2880), ("45m", 45)])
def test_duration_shapes_are_parsed(duration: str, expected: int) -> None:
    policy = parse_policy(BASE.replace("duration: 4h", f"duration: {duration}"))
    assert policy.schedule is not None
    assert policy.schedule.duration == timedelta(minutes=expected)


@pytest.mark.parametrize("at", ["25:00", "2pm", "02:60"])
def test_bad_at_is_named(at: str) -> None:
    problem = only_problem(BASE.replace('at: "02:00"', f'at: "{at}"'))
    assert problem.path == ("schedule", "at")
    assert (problem.line, problem.column) == (4, 3)
    assert problem.message == f'expected a 24-hour time such as "02:00", got "{at}"'


# --- structure and cross-field rules -----------------------------------------------------------------


def test_duplicate_top_level_key_is_named_at_its_second_line() -> None:
    problem = only_problem(BASE + "name: q\n")
    assert problem.path == ("name",)
    assert problem.message == "duplicate key"
    assert (problem.line, problem.column) == (10, 1)


def test_duplicate_nested_key_is_named_with_its_path() -> None:
    problem = only_problem(BASE.replace("    select:", "    name: other\n    select:"))
    assert problem.render("file.yaml") == "file.yaml:9:5: rings[0].name: duplicate key"


def test_duplicate_ring_names_are_rejected() -> None:
    text = BASE + "  - name: staging\n    select: {clouds: [aws]}\n"
    problem = only_problem(text)
    assert problem.path == ("rings", 1, "name")
    assert problem.message == 'duplicate ring name "staging"'
    assert problem.line == 10


def test_empty_select_is_rejected() -> None:
    problem = only_problem(BASE + "  - name: prod\n    select: {}\n")
    assert problem.path == ("rings", 1, "select")
    assert problem.message == "expected at least one of tags, ids, clouds, regions, os"
    assert problem.line == 11


def test_approval_required_with_azure_update_manager_is_rejected_not_ignored() -> None:
    """Update Manager starts at its own time: a ring's approval could not hold it back."""
    text = BASE + "    approval: required\nazure:\n  maintenance: {resource_group: rg, location: westeurope}\n"
    problem = only_problem(text)
    assert problem.path == ("rings", 0, "approval")
    assert problem.message.startswith("cannot take effect with azure.maintenance: Update Manager starts")
    assert problem.line == 10
    parse_policy(text.replace("approval: required", "approval: auto"))  # the same policy, no gate: fine
    parse_policy(BASE + "    approval: required\n")  # PatchPilot runs the rings: the gate holds


def test_no_rings_is_rejected() -> None:
    problem = only_problem("name: p\nrings: []\n")
    assert problem.path == ("rings",)
    assert problem.line == 2


def test_region_paired_with_itself_is_rejected_ignoring_case() -> None:
    problem = only_problem(BASE + "region_pairs: [[eastus, EastUS]]\n")
    assert problem.path == ("region_pairs", 0)
    assert problem.message == 'a region cannot pair with itself ("eastus")'
    assert problem.line == 10


ARABIC_INDIC_DIGITS = "".join(chr(0x0660 + d) for d in (1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2))  # Unicode digits


@pytest.mark.parametrize(
    ("aws", "path"),
    [
        (f"accounts: [{{id: '{ARABIC_INDIC_DIGITS}'}}]", ("aws", "accounts", 0, "id")),
        (
            f"accounts: [{{id: '111122223333', role: 'arn:aws:iam::{ARABIC_INDIC_DIGITS}:role/R'}}]",
            ("aws", "accounts", 0, "role"),
        ),
        ("organization: {ou: [ou-ab12-cdef3456], role_name: Patch\u00e9Member}", ("aws", "organization", "role_name")),
    ],
)
def test_account_ids_and_role_names_are_ascii_as_aws_writes_them(aws: str, path: tuple[object, ...]) -> None:
    """pydantic-core reads `\\d` and `\\w` as any Unicode digit or letter: the patterns name ASCII."""
    problem = only_problem(BASE + f"aws: {{regions: [eu-west-1], {aws}}}\n")
    assert problem.path == path
    assert "should match pattern" in problem.message


def test_an_approver_arn_names_an_ascii_account_id() -> None:
    arn = f"arn:aws:iam::{ARABIC_INDIC_DIGITS}:role/R"
    approver = only_problem(BASE.replace("select:", f"approvers: ['{arn}']\n    select:"))
    assert approver.path == ("rings", 0, "approvers", 0)


def test_the_ascii_account_id_and_role_name_patterns_accept_what_aws_writes() -> None:
    policy = parse_policy(
        BASE + "aws: {regions: [eu-west-1], accounts: [{id: '111122223333', "
        "role: 'arn:aws-us-gov:iam::111122223333:role/P_1+=,.@-'}], "
        "organization: {ou: [r-ab12], role_name: 'Patch_Pilot+=,.@-1'}}\n"
    )
    assert policy.aws is not None and policy.aws.organization is not None
    assert policy.aws.accounts[0].id == "111122223333"
    assert policy.aws.organization.role_name == "Patch_Pilot+=,.@-1"


def test_patch_both_included_and_excluded_is_rejected() -> None:
    problem = only_problem(BASE + "patches:\n  include: [KB1, KB2]\n  exclude: [KB2]\n")
    assert problem.path == ("patches", "include")
    assert problem.message == "also listed in patches.exclude: KB2"


def test_monthly_together_with_cron_is_rejected() -> None:
    text = with_schedule(
        '  monthly: "Second Tuesday"\n  cron: "cron(0 2 ? * TUE#2 *)"\n  at: "02:00"\n  duration: 4h\n'
    )
    problems = problems_of(text)
    # `at` is then both required (monthly) and not used (cron): that is reported too.
    assert Problem(("schedule",), "give exactly one of monthly or cron", 2, 1) in problems


def test_schedule_with_neither_monthly_nor_cron_is_rejected() -> None:
    problem = only_problem(with_schedule("  duration: 4h\n"))
    assert problem.message == "give exactly one of monthly or cron"


def test_at_missing_with_monthly_is_rejected() -> None:
    problem = only_problem(BASE.replace('  at: "02:00"\n', ""))
    assert problem.path == ("schedule", "at")
    assert problem.message == 'required with monthly (a time such as "02:00")'
    assert problem.line == 2  # the schedule block: `at` itself is absent


def test_at_given_with_cron_is_rejected() -> None:
    text = with_schedule('  cron: "cron(0 2 ? * TUE#2 *)"\n  at: "02:00"\n  duration: 4h\n')
    problem = only_problem(text)
    assert problem.path == ("schedule", "at")
    assert problem.message == "not used with cron: the cron expression sets the time"
    assert problem.line == 4


def test_offset_days_with_monthly_is_rejected() -> None:
    problem = only_problem(BASE.replace("  duration: 4h\n", "  duration: 4h\n  offset_days: 2\n"))
    assert problem.path == ("schedule", "offset_days")
    assert problem.message == "use Offset±N inside monthly instead"


def test_offset_days_with_cron_beyond_six_is_rejected() -> None:
    text = with_schedule('  cron: "cron(0 2 ? * TUE#2 *)"\n  offset_days: 7\n  duration: 4h\n')
    problem = only_problem(text)
    assert problem.path == ("schedule", "offset_days")
    assert problem.line == 4


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = BASE.replace("timezone: UTC", "timezone: Nowhere/Else").replace("duration: 4h", "duration: x")
    text += "rollout:\n  disruption_budget: ten\n  mode: sideways\n"
    problems = problems_of(text)
    assert {p.path for p in problems} == {
        ("schedule", "timezone"),
        ("schedule", "duration"),
        ("rollout", "disruption_budget"),
        ("rollout", "mode"),
    }
    assert all(p.line is not None for p in problems)


def test_literal_error_lists_the_choices() -> None:
    problem = only_problem(BASE + "reboot: sometimes\n")
    assert problem.path == ("reboot",)
    assert problem.message == "expected 'if_required', 'always' or 'never', got \"sometimes\""


@pytest.mark.parametrize(
    ("written", "meant"),
    [("Asia/Tokio", "Asia/Tokyo"), ("asia/tokyo", "Asia/Tokyo"), ("Tokyo Standart Time", "Tokyo Standard Time")],
)
def test_a_mistyped_time_zone_suggests_the_nearest_one(written: str, meant: str) -> None:
    problem = only_problem(BASE.replace("timezone: UTC", f"timezone: {written}"))
    assert problem.path == ("schedule", "timezone")
    assert problem.message.endswith(f'got "{written}" (did you mean "{meant}"?)')


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("Second Tusday", "Second Tuesday"),
        ("Secnd Tuesday Offset+4", "Second Tuesday Offset+4"),
        ("Thrid Satruday", "Third Saturday"),
    ],
)
def test_a_mistyped_weekday_or_ordinal_suggests_the_corrected_rule(written: str, meant: str) -> None:
    problem = only_problem(BASE.replace("Second Tuesday", written))
    assert problem.path == ("schedule", "monthly")
    assert problem.message.endswith(f'got "{written}" (did you mean "{meant}"?)')


def test_a_mistyped_enum_value_suggests_the_nearest_choice() -> None:
    text = BASE.replace("{tags: {Environment: staging}}", "{os: [linx], clouds: [AWS]}")
    text += "patches: {classifications: [Critcal, security]}\nreboot: allways\n"
    hints = {p.path: p.message.rsplit(" (did you mean ", 1)[-1] for p in problems_of(text)}
    assert hints == {
        ("rings", 0, "select", "os", 0): '"linux"?)',
        ("rings", 0, "select", "clouds", 0): '"aws"?)',
        ("patches", "classifications", 0): '"Critical"?)',
        ("patches", "classifications", 1): '"Security"?)',
        ("reboot",): '"always"?)',
    }


def test_a_value_close_to_no_choice_gets_no_suggestion() -> None:
    assert "did you mean" not in only_problem(BASE + "reboot: sometimes\n").message
    assert "did you mean" not in only_problem(BASE.replace("Second Tuesday", "Fifth Tuesday")).message


def test_problems_are_listed_in_file_order() -> None:
    text = "rollout: {mode: sideways}\n" + BASE.replace("timezone: UTC", "timezone: Nowhere/Else")
    text = text.replace("{tags: {Environment: staging}}", "{os: [linx], clouds: [gcp]}")
    problems = problems_of(text)
    assert [p.path for p in problems] == [
        ("rollout", "mode"),
        ("schedule", "timezone"),
        ("rings", 0, "select", "os", 0),
        ("rings", 0, "select", "clouds", 0),
    ]
    positions = [(p.line or 0, p.column or 0) for p in problems]
    assert positions == sorted(positions) and [line for line, _ in positions] == [1, 6, 10, 10]


SINGLE_VALUES = """\
name: p
schedule: {monthly: "Second Tuesday", at: "02:00", duration: 4h}
rings:
  - name: staging
    select: {os: linux, clouds: aws, ids: 12345, regions: ap-northeast-1}
    approvers: U0123ABCD
exclude: {ids: i-0frozen}
patches: {classifications: Security, include: openssl, exclude: kernel}
health: {alarms: api-5xx, http: "http://{name}:8080/healthz"}
aws: {regions: ap-northeast-1, baselines: {operating_systems: UBUNTU, severities: Critical}}
azure: {subscriptions: sub-1, resource_groups: rg-web, locations: japaneast}
notifications:
  channels: [{name: ops, kind: slack, webhook: ops-webhook}]
  routes: [{topics: run_halted, channels: ops}]
emergency: {rings: staging}
"""


def test_a_single_value_is_a_list_of_one_wherever_a_list_is_expected() -> None:
    policy = parse_policy(SINGLE_VALUES)
    select = policy.rings[0].select
    assert (select.os, select.clouds, select.ids, select.regions) == (["linux"], ["aws"], ["12345"], ["ap-northeast-1"])
    assert policy.rings[0].approvers == ["U0123ABCD"] and policy.exclude.ids == ["i-0frozen"]
    assert (policy.patches.classifications, policy.patches.include, policy.patches.exclude) == (
        ["Security"],
        ["openssl"],
        ["kernel"],
    )
    assert (policy.health.alarms, policy.health.http) == (["api-5xx"], ["http://{name}:8080/healthz"])
    assert policy.aws is not None and policy.aws.regions == ["ap-northeast-1"] and policy.aws.baselines is not None
    assert (policy.aws.baselines.operating_systems, policy.aws.baselines.severities) == (["UBUNTU"], ["Critical"])
    assert policy.azure is not None
    assert (policy.azure.subscriptions, policy.azure.resource_groups, policy.azure.locations) == (
        ["sub-1"],
        ["rg-web"],
        ["japaneast"],
    )
    assert policy.notifications is not None
    route = policy.notifications.routes[0]
    assert (route.topics, route.channels) == (["run_halted"], ["ops"])
    assert policy.emergency is not None and policy.emergency.rings == ["staging"]


def test_a_single_bad_value_is_named_as_the_lists_first_item_with_a_suggestion() -> None:
    problem = only_problem(BASE.replace("{tags: {Environment: staging}}", "{os: linx}"))
    assert problem.path == ("rings", 0, "select", "os", 0)
    assert problem.line == 9
    assert problem.message == "expected 'linux' or 'windows', got \"linx\" (did you mean \"linux\"?)"


def test_a_bad_value_in_a_union_field_is_named_by_its_field_path_once() -> None:
    text = SINGLE_VALUES.replace("topics: run_halted", "topics: run_halt")
    problem = only_problem(text)
    assert problem.path == ("notifications", "routes", 0, "topics", 0)  # no "literal['*']" nor "function-before[...]"
    assert problem.message.endswith('got "run_halt" (did you mean "run_halted"?)')


def test_the_schema_takes_a_single_value_where_a_list_is_expected() -> None:
    os_field = Policy.model_json_schema()["$defs"]["Selector"]["properties"]["os"]
    single, listed = os_field["anyOf"]
    assert single == {"enum": ["linux", "windows"], "type": "string"}
    assert listed["type"] == "array" and listed["items"] == single


# --- whole-file errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file_is_rejected(text: str) -> None:
    problem = only_problem(text)
    assert problem.render("file.yaml") == "file.yaml: (top level): the file is empty"


def test_yaml_syntax_error_reports_its_line() -> None:
    text = "name: p\ndescription: fine\n  indented: wrongly\nrings: []\n"
    problem = only_problem(text)
    assert problem.path == ()
    assert problem.message.startswith("not valid YAML: ")
    assert problem.line == 3


def test_top_level_list_is_rejected() -> None:
    problem = only_problem("- name: p\n- rings: []\n")
    assert problem.message == "expected a mapping of policy fields at the top level"


def test_top_level_scalar_is_rejected() -> None:
    problem = only_problem("just words\n")
    assert problem.message == "expected a mapping of policy fields at the top level"


def test_missing_policy_file_says_file_not_found(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(InputError) as caught:
        load_policy(path)
    assert caught.value.render() == f"{path}: (top level): file not found"


def test_load_policy_names_the_file_in_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + "rollout:\n  disruption_budget: ten\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_policy(str(path))
    assert caught.value.render().startswith(f"{path}:11:3: rollout.disruption_budget: ")


# --- quotas ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "quota, total, expected",
    [
        (Quota(10, percent=True), 31, 4),  # 3.1 rounds up
        (Quota(10, percent=True), 30, 3),  # exact: no rounding up past it
        (Quota(25, percent=True), 3, 1),
        (Quota(100, percent=True), 7, 7),
        (Quota(33.3, percent=True), 1000, 333),
        (Quota(5, percent=False), 31, 5),
    ],
)
def test_quota_ceil_of_rounds_percentages_up(quota: Quota, total: int, expected: int) -> None:
    assert quota.ceil_of(total) == expected


def test_max_failures_count_is_exceeded_not_equalled() -> None:
    one = Quota(1, percent=False)
    assert not one.exceeded_by(0, 10)
    assert not one.exceeded_by(1, 10)
    assert one.exceeded_by(2, 10)


def test_max_failures_percentage_is_exceeded_not_equalled() -> None:
    ten_percent = Quota(10, percent=True)
    assert not ten_percent.exceeded_by(2, 20)  # exactly 10%
    assert ten_percent.exceeded_by(3, 20)
    assert ten_percent.exceeded_by(1, 9)  # 11.1% > 10%
    assert not ten_percent.exceeded_by(1, 10)


def test_zero_max_failures_is_exceeded_by_the_first_failure() -> None:
    assert not Quota(0, percent=False).exceeded_by(0, 5)
    assert Quota(0, percent=False).exceeded_by(1, 5)


def test_percent_budget_from_yaml_keeps_fractions_and_prints_as_written() -> None:
    policy = parse_policy(BASE + 'rollout:\n  disruption_budget: "12.5%"\n  max_failures: 2\n')
    assert policy.rollout.disruption_budget == Quota(12.5, percent=True)
    assert str(policy.rollout.disruption_budget) == "12.5%"
    assert str(policy.rollout.max_failures) == "2"


# --- rollout.cutoff --------------------------------------------------------------------------------


def test_rollout_cutoff_is_a_duration_and_unset_by_default() -> None:
    assert parse_policy(BASE).rollout.cutoff is None
    assert parse_policy(BASE + "rollout: {cutoff: 1h30m}\n").rollout.cutoff == timedelta(minutes=90)


def test_a_cutoff_that_is_not_a_duration_is_refused() -> None:
    problem = only_problem(BASE + "rollout: {cutoff: soon}\n")
    assert problem.path == ("rollout", "cutoff")
    assert problem.line == 10


# --- traffic pools (rollout.pool_budget, rollout.single_member_pools) ------------------------------


def test_pool_budget_is_unset_by_default_and_single_member_pools_warn() -> None:
    rollout = parse_policy(BASE).rollout
    assert rollout.pool_budget is None
    assert rollout.single_member_pools == "warn"


@pytest.mark.parametrize(("written", "parsed"), [('"25%"', Quota(25, percent=True)), ("2", Quota(2, percent=False))])
def test_pool_budget_takes_a_percentage_or_a_count(written: str, parsed: Quota) -> None:
    policy = parse_policy(BASE + f"rollout:\n  pool_budget: {written}\n  single_member_pools: refuse\n")
    assert policy.rollout.pool_budget == parsed
    assert policy.rollout.single_member_pools == "refuse"


@pytest.mark.parametrize("value", ["0", "0%", "-1", "101%", "a quarter"])
def test_a_pool_budget_of_nothing_or_nonsense_is_refused_with_the_field_named(value: str) -> None:
    problem = only_problem(BASE + f'rollout:\n  pool_budget: "{value}"\n')
    assert problem.path == ("rollout", "pool_budget")
    assert problem.line == 11
    assert f'got "{value}"' in problem.message or f"got {value}" in problem.message


def test_a_pool_budget_of_zero_says_what_it_expects() -> None:
    problem = only_problem(BASE + "rollout:\n  pool_budget: 0\n")
    assert problem.render("file.yaml") == (
        "file.yaml:11:3: rollout.pool_budget: expected a whole number or a percentage of at least 1, got 0"
    )


def test_a_mistyped_single_member_pools_value_suggests_the_nearest() -> None:
    problem = only_problem(BASE + "rollout:\n  single_member_pools: refuze\n")
    assert problem.path == ("rollout", "single_member_pools")
    assert problem.message == "expected 'warn' or 'refuse', got \"refuze\" (did you mean \"refuse\"?)"


@pytest.mark.parametrize(
    ("budget", "members", "count"), [("25%", 8, 2), ("25%", 6, 1), ("25%", 3, 1), ("40%", 15, 6), (3, 2, 3)]
)
def test_a_pool_budget_rounds_down_but_never_below_one(budget: str | int, members: int, count: int) -> None:
    policy = Policy.model_validate(
        {"name": "p", "rings": [{"name": "r", "select": {"os": "linux"}}], "rollout": {"pool_budget": budget}}
    )
    assert policy.rollout.pool_budget is not None
    assert policy.rollout.pool_budget.floor_of(members) == count


def test_the_example_policy_with_pools_sets_a_pool_budget() -> None:
    policy = load_policy(str(EXAMPLES / "policy-pools.yaml"))
    assert policy.rollout.pool_budget == Quota(40, percent=True)


# --- traffic, hooks (docs/traffic.md) -----------------------------------------------------------


def test_traffic_and_hooks_are_read_with_their_defaults_and_a_ring_replaces_hook_by_hook() -> None:
    policy = parse_policy(
        BASE
        + """traffic: {drain: true, pool_health: true}
hooks:
  before_install: {linux: "systemctl stop app"}
  before_wave: {url: "https://change.example.com/wave", secret: wave-key}
scaling_groups: standby
"""
    )
    assert policy.traffic.drain and policy.traffic.drain_timeout is None
    assert policy.traffic.pool_health_timeout == timedelta(minutes=5)
    assert policy.hooks.before_install is not None and policy.hooks.before_install.timeout == timedelta(minutes=10)
    assert policy.scaling_groups == "standby" and policy.reads_pools
    ringed = parse_policy(
        BASE.replace(
            "    select: {tags: {Environment: staging}}",
            '    select: {tags: {Environment: staging}}\n    hooks: {before_install: {windows: "Stop-Service app"}}',
        )
    )
    hooks = ringed.hooks_for("staging")
    assert hooks.before_install is not None and hooks.before_install.script_for("windows") == "Stop-Service app"
    assert hooks.before_install.script_for("linux") is None


def test_pool_health_without_drain_is_refused_naming_the_field() -> None:
    problem = only_problem(BASE + "traffic: {pool_health: true}\n")
    assert problem.path == ("traffic", "pool_health")
    assert "needs traffic.drain: true" in problem.message


def test_a_host_hook_without_a_script_and_a_wave_hook_over_http_are_refused() -> None:
    problem = only_problem(BASE + "hooks: {after_install: {timeout: 5m}}\n")
    assert problem.path == ("hooks", "after_install")
    assert "expected a linux or a windows script" in problem.message
    problem = only_problem(BASE + "hooks: {before_wave: {url: 'http://change.example.com/wave', secret: k}}\n")
    assert problem.path[:3] == ("hooks", "before_wave", "url")
