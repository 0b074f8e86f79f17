"""Maintenance windows: known dates for both notations, month-crossing offsets, DST, `after`."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from patchpilot.errors import InputError
from patchpilot.policy import Schedule, Window, parse_policy

# Microsoft's Patch Tuesdays of 2026 (second Tuesday of each month).
PATCH_TUESDAYS_2026 = [
    date(2026, 1, 13),
    date(2026, 2, 10),
    date(2026, 3, 10),
    date(2026, 4, 14),
    date(2026, 5, 12),
    date(2026, 6, 9),
    date(2026, 7, 14),
    date(2026, 8, 11),
    date(2026, 9, 8),
    date(2026, 10, 13),
    date(2026, 11, 10),
    date(2026, 12, 8),
]
START_2026 = datetime(2026, 1, 1, tzinfo=UTC)


def schedule(lines: str) -> Schedule:
    """A valid policy's schedule from the given schedule lines (two-space indented)."""
    policy = parse_policy("name: p\nschedule:\n" + lines + "rings:\n  - name: r\n    select: {ids: [x]}\n")
    assert policy.schedule is not None
    return policy.schedule


def monthly(rule: str, at: str = "02:00", timezone: str = "UTC", duration: str = "4h") -> Schedule:
    return schedule(f'  monthly: "{rule}"\n  at: "{at}"\n  timezone: {timezone}\n  duration: {duration}\n')


def cron(expression: str, offset_days: int = 0, timezone: str = "UTC", duration: str = "4h") -> Schedule:
    return schedule(
        f'  cron: "{expression}"\n  offset_days: {offset_days}\n  timezone: {timezone}\n  duration: {duration}\n'
    )


def days(windows: list[Window]) -> list[date]:
    return [w.start.date() for w in windows]


# --- known dates across a year -------------------------------------------------------------------


def test_monthly_second_tuesday_is_patch_tuesday_through_2026() -> None:
    windows = monthly("Second Tuesday").windows(START_2026, 12)
    assert days(windows) == PATCH_TUESDAYS_2026
    assert all(w.start.hour == 2 and w.start.minute == 0 for w in windows)
    assert all(w.end - w.start == timedelta(hours=4) for w in windows)


def test_cron_tue_hash_2_is_patch_tuesday_through_2026() -> None:
    windows = cron("cron(0 2 ? * TUE#2 *)").windows(START_2026, 12)
    assert days(windows) == PATCH_TUESDAYS_2026
    assert all(w.start.hour == 2 for w in windows)


def test_cron_aws_day_number_3_means_tuesday() -> None:
    # AWS numbers days 1=SUN..7=SAT, so 3#2 is the second Tuesday (unix cron would read Wednesday).
    windows = cron("cron(0 2 ? * 3#2 *)").windows(START_2026, 12)
    assert days(windows) == PATCH_TUESDAYS_2026


def test_monthly_offset_three_is_the_friday_after_patch_tuesday_through_2026() -> None:
    windows = monthly("Second Tuesday Offset+3").windows(START_2026, 12)
    expected = [d + timedelta(days=3) for d in PATCH_TUESDAYS_2026]
    assert days(windows) == expected
    assert all(w.start.strftime("%A") == "Friday" for w in windows)


def test_second_tuesday_offset_three_in_december_2026_is_friday_the_11th() -> None:
    after = datetime(2026, 12, 1, tzinfo=UTC)
    (window,) = monthly("Second Tuesday Offset+3").windows(after, 1)
    assert window.start == datetime(2026, 12, 11, 2, 0, tzinfo=UTC)
    assert window.start.weekday() == 4  # Friday


def test_cron_with_offset_days_three_gives_the_same_days_as_monthly_offset_three() -> None:
    by_cron = cron("cron(0 2 ? * TUE#2 *)", offset_days=3).windows(START_2026, 12)
    by_monthly = monthly("Second Tuesday Offset+3").windows(START_2026, 12)
    assert [w.start for w in by_cron] == [w.start for w in by_monthly]
    assert days(by_cron)[-1] == date(2026, 12, 11)


def test_cron_6l_is_the_last_friday_of_each_month() -> None:
    windows = cron("cron(30 22 ? * 6L *)").windows(START_2026, 12)
    assert days(windows) == [
        date(2026, 1, 30),
        date(2026, 2, 27),
        date(2026, 3, 27),
        date(2026, 4, 24),
        date(2026, 5, 29),
        date(2026, 6, 26),
        date(2026, 7, 31),
        date(2026, 8, 28),
        date(2026, 9, 25),
        date(2026, 10, 30),
        date(2026, 11, 27),
        date(2026, 12, 25),
    ]
    assert all((w.start.hour, w.start.minute) == (22, 30) for w in windows)


def test_cron_l_day_of_month_is_the_last_day_of_each_month() -> None:
    windows = cron("cron(0 3 L * ? *)").windows(START_2026, 4)
    assert days(windows) == [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30)]


def test_cron_fixed_day_of_month_and_named_month() -> None:
    windows = cron("cron(0 4 15 MAR,SEP ? *)").windows(START_2026, 3)
    assert days(windows) == [date(2026, 3, 15), date(2026, 9, 15), date(2027, 3, 15)]


def test_cron_weekday_range_in_aws_numbers_is_monday_to_friday() -> None:
    windows = cron("cron(0 1 ? * 2-6 *)").windows(datetime(2026, 6, 6, tzinfo=UTC), 5)  # a Saturday
    assert [w.start.strftime("%a") for w in windows] == ["Mon", "Tue", "Wed", "Thu", "Fri"]


def test_monthly_last_weekday_handles_five_week_months() -> None:
    windows = monthly("Last Friday").windows(START_2026, 3)
    assert days(windows) == [date(2026, 1, 30), date(2026, 2, 27), date(2026, 3, 27)]


@pytest.mark.parametrize("rule", ["second tuesday", "SECOND TUE", "1 month Second Tuesday"])
def test_monthly_rule_spellings_are_equivalent(rule: str) -> None:
    assert days(monthly(rule).windows(START_2026, 3)) == PATCH_TUESDAYS_2026[:3]


# --- offsets that cross a month end -----------------------------------------------------------------


def test_last_sunday_offset_six_crosses_into_next_month() -> None:
    # Last Sundays: 2026-03-29, 2026-05-31; six days later is in April and June.
    windows = monthly("Last Sunday Offset+6").windows(datetime(2026, 3, 1, tzinfo=UTC), 3)
    assert days(windows) == [date(2026, 4, 4), date(2026, 5, 2), date(2026, 6, 6)]


def test_first_monday_offset_minus_three_falls_in_previous_month() -> None:
    # First Mondays: 2026-02-02, 2026-03-02, 2026-04-06.
    windows = monthly("First Monday Offset-3").windows(datetime(2026, 1, 20, tzinfo=UTC), 3)
    assert days(windows) == [date(2026, 1, 30), date(2026, 2, 27), date(2026, 4, 3)]


def test_negative_offset_window_just_after_is_not_skipped() -> None:
    # The window for March's First Monday (2026-03-02) falls on 2026-02-27: asking from
    # 2026-02-20 must find it even though its anchor is in the next month.
    (window,) = monthly("First Monday Offset-3").windows(datetime(2026, 2, 20, tzinfo=UTC), 1)
    assert window.start.date() == date(2026, 2, 27)


def test_last_sunday_offset_six_crosses_into_next_year() -> None:
    # Last Sundays: 2026-11-29 and 2026-12-27; six days later is 2026-12-05 and 2027-01-02.
    windows = monthly("Last Sunday Offset+6").windows(datetime(2026, 12, 1, tzinfo=UTC), 2)
    assert days(windows) == [date(2026, 12, 5), date(2027, 1, 2)]


def test_cron_last_day_plus_one_is_the_first_of_the_next_month() -> None:
    windows = cron("cron(0 2 L * ? *)", offset_days=1).windows(datetime(2026, 12, 2, tzinfo=UTC), 2)
    assert days(windows) == [date(2027, 1, 1), date(2027, 2, 1)]


def test_cron_negative_offset_crosses_back_a_month() -> None:
    windows = cron("cron(0 2 1 * ? *)", offset_days=-2).windows(datetime(2026, 1, 1, tzinfo=UTC), 3)
    assert days(windows) == [date(2026, 1, 30), date(2026, 2, 27), date(2026, 3, 30)]


# --- time zones and daylight saving -----------------------------------------------------------------


def test_windows_are_aware_and_in_the_policy_time_zone() -> None:
    (window,) = monthly("Second Tuesday", timezone="Asia/Tokyo").windows(START_2026, 1)
    assert window.start.tzinfo == ZoneInfo("Asia/Tokyo")
    assert window.end.tzinfo == ZoneInfo("Asia/Tokyo")
    assert window.start.isoformat() == "2026-01-13T02:00:00+09:00"
    assert window.start.astimezone(UTC) == datetime(2026, 1, 12, 17, 0, tzinfo=UTC)


def test_windows_time_zone_name_gives_the_same_windows_as_iana() -> None:
    windows = monthly("Second Tuesday", timezone="Tokyo Standard Time").windows(START_2026, 3)
    iana = monthly("Second Tuesday", timezone="Asia/Tokyo").windows(START_2026, 3)
    assert [w.start for w in windows] == [w.start for w in iana]
    assert windows[0].start.utcoffset() == timedelta(hours=9)


def test_window_in_skipped_spring_forward_hour_moves_forward_by_the_jump() -> None:
    # 2027-03-14 is the second Sunday of March: 02:00 EST jumps to 03:00 EDT.
    (window,) = monthly("Second Sunday", at="02:30", timezone="America/New_York").windows(
        datetime(2027, 3, 1, tzinfo=UTC), 1
    )
    assert window.start.date() == date(2027, 3, 14)
    assert (window.start.hour, window.start.minute) == (3, 30)
    assert window.start.utcoffset() == timedelta(hours=-4)
    assert window.start.astimezone(UTC) == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)


def test_cron_window_in_skipped_hour_also_moves_forward() -> None:
    (window,) = cron("cron(30 2 ? * 1#2 *)", timezone="America/New_York").windows(datetime(2027, 3, 1, tzinfo=UTC), 1)
    assert window.start.isoformat() == "2027-03-14T03:30:00-04:00"


def test_window_in_repeated_fall_back_hour_takes_its_first_pass() -> None:
    # 2026-11-01 is the first Sunday of November: 01:30 happens twice in New York.
    (window,) = monthly("First Sunday", at="01:30", timezone="America/New_York").windows(
        datetime(2026, 10, 20, tzinfo=UTC), 1
    )
    assert window.start.isoformat() == "2026-11-01T01:30:00-04:00"


def test_berlin_windows_before_and_after_october_change_have_the_right_offsets() -> None:
    windows = monthly("Third Sunday", timezone="Europe/Berlin").windows(datetime(2026, 9, 1, tzinfo=UTC), 3)
    # 2026-09-20 and 2026-10-18 are summer time (+02:00); 2026-11-15 is winter time (+01:00).
    assert [w.start.isoformat() for w in windows] == [
        "2026-09-20T02:00:00+02:00",
        "2026-10-18T02:00:00+02:00",
        "2026-11-15T02:00:00+01:00",
    ]


def test_window_across_october_change_ends_after_its_duration_in_elapsed_time() -> None:
    # 2026-10-25 (last Sunday of October) 01:00 CEST; clocks go back at 03:00 CEST.
    (window,) = monthly("Last Sunday", at="01:00", timezone="Europe/Berlin", duration="4h").windows(
        datetime(2026, 10, 1, tzinfo=UTC), 1
    )
    assert window.start.isoformat() == "2026-10-25T01:00:00+02:00"
    assert window.end.isoformat() == "2026-10-25T04:00:00+01:00"
    assert window.end.astimezone(UTC) - window.start.astimezone(UTC) == timedelta(hours=4)


def test_window_across_spring_forward_ends_after_its_duration_in_elapsed_time() -> None:
    # 2026-03-08 01:00 EST; at 02:00 clocks jump to 03:00 EDT. Four hours later is 06:00 EDT.
    (window,) = monthly("Second Sunday", at="01:00", timezone="America/New_York").windows(
        datetime(2026, 3, 1, tzinfo=UTC), 1
    )
    assert window.start.isoformat() == "2026-03-08T01:00:00-05:00"
    assert window.end.isoformat() == "2026-03-08T06:00:00-04:00"
    assert window.end.timestamp() - window.start.timestamp() == 4 * 3600


# --- `after` -------------------------------------------------------------------------------------------


def test_window_starting_exactly_at_after_is_included() -> None:
    sched = monthly("Second Tuesday")
    after = datetime(2026, 2, 10, 2, 0, tzinfo=UTC)
    assert sched.windows(after, 1)[0].start == after


def test_window_started_just_before_after_is_skipped() -> None:
    sched = monthly("Second Tuesday")
    after = datetime(2026, 2, 10, 2, 0, 1, tzinfo=UTC)  # one second into the February window
    assert sched.windows(after, 1)[0].start.date() == date(2026, 3, 10)


def test_after_in_another_zone_is_compared_as_an_instant() -> None:
    sched = monthly("Second Tuesday", timezone="Asia/Tokyo")
    # 2026-01-13 02:00 JST is 2026-01-12 17:00 UTC.
    just_before = datetime(2026, 1, 12, 16, 59, tzinfo=UTC)
    just_after = datetime(2026, 1, 12, 17, 1, tzinfo=UTC)
    assert sched.windows(just_before, 1)[0].start.date() == date(2026, 1, 13)
    assert sched.windows(just_after, 1)[0].start.date() == date(2026, 2, 10)


def test_count_limits_the_number_of_windows_and_they_are_increasing() -> None:
    windows = cron("cron(0 2 ? * TUE#2 *)").windows(START_2026, 30)
    assert len(windows) == 30
    starts = [w.start for w in windows]
    assert starts == sorted(starts)
    assert len(set(starts)) == 30
    assert days(windows)[24] == date(2028, 1, 11)


def test_window_contains_its_start_but_not_its_end() -> None:
    (window,) = monthly("Second Tuesday").windows(START_2026, 1)
    assert window.contains(window.start)
    assert window.contains(window.end - timedelta(seconds=1))
    assert not window.contains(window.end)
    assert not window.contains(window.start - timedelta(seconds=1))


# --- the gap to the next window --------------------------------------------------------------------


def test_the_shortest_gap_between_windows_counts_the_dst_change() -> None:
    # Daily at 02:00 Berlin time: the night the clocks go forward, only 23 hours pass.
    daily = schedule('  cron: "cron(0 2 * * ? *)"\n  timezone: Europe/Berlin\n  duration: 4h\n')
    assert daily.shortest_gap(START_2026) == timedelta(hours=23)


def test_a_monthly_schedule_has_weeks_between_its_windows() -> None:
    gap = monthly("Second Tuesday Offset+3").shortest_gap(START_2026)
    assert gap is not None and gap >= timedelta(days=28)


def test_a_cron_whose_years_have_passed_has_no_gap() -> None:
    past = schedule('  cron: "cron(0 2 * * ? 2020)"\n  duration: 4h\n')
    assert past.shortest_gap(START_2026) is None


def test_a_daily_window_of_23_and_a_half_hours_overlaps_across_the_dst_change() -> None:
    lines = '  cron: "cron(0 2 * * ? *)"\n  timezone: Europe/Berlin\n  duration: 23h30m\n'
    policy = "name: p\nschedule:\n" + lines + "rings:\n  - name: r\n    select: {ids: [x]}\n"
    with pytest.raises(InputError) as caught:
        parse_policy(policy)
    [problem] = caught.value.problems
    assert problem.path == ("schedule", "duration")
    assert "(23h30m) is longer than the time from one window's start to the next (23h," in problem.message
