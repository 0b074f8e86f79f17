"""Freeze calendars (policy/freeze.py): the policy's `freeze:` periods and iCalendar events, as
instants in the policy's time zone, across DST changes and year ends."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchpilot.errors import InputError
from patchpilot.policy import load_policy, parse_policy
from patchpilot.policy.freeze import Freeze, Freezes, parse_calendar
from patchpilot.policy.model import FreezePeriod

NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")
ZONES = [NEW_YORK, SYDNEY, ZoneInfo("Europe/London"), ZoneInfo("Asia/Tokyo"), ZoneInfo("UTC")]


def period(name: str, start: object, end: object, yearly: bool = False) -> FreezePeriod:
    return FreezePeriod.model_validate({"name": name, "from": start, "to": end, "yearly": yearly})


def local(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)  # type: ignore[misc]


# --- periods ----------------------------------------------------------------------------------------


def test_a_date_to_includes_its_whole_day_in_the_policy_time_zone() -> None:
    freezes = Freezes(NEW_YORK, (period("close", date(2026, 3, 8), date(2026, 3, 8)),))
    (found,) = freezes.between(datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert found.start == local(NEW_YORK, 2026, 3, 8)
    assert found.end == local(NEW_YORK, 2026, 3, 9)
    assert found.end.astimezone(UTC) - found.start.astimezone(UTC) == timedelta(hours=23)  # spring forward
    assert freezes.at(local(NEW_YORK, 2026, 3, 8, 23, 59)) == found
    assert freezes.at(local(NEW_YORK, 2026, 3, 9)) is None


def test_a_yearly_freeze_crosses_the_year_end_every_year() -> None:
    freezes = Freezes(SYDNEY, (period("year-end", "2026-12-20", "2027-01-03", yearly=True),))
    for year in (2026, 2027, 2030):
        hit = freezes.at(local(SYDNEY, year + 1, 1, 3, 23, 0))
        assert hit is not None and hit.name == "year-end"
        assert hit.start == local(SYDNEY, year, 12, 20)
        assert hit.end == local(SYDNEY, year + 1, 1, 4)
        assert freezes.at(local(SYDNEY, year, 12, 19, 23, 59)) is None
    assert freezes.at(local(SYDNEY, 2025, 12, 25)) is None  # from the year given on


def test_date_times_are_local_wall_clock_times_and_a_skipped_one_moves_forward() -> None:
    # 02:30 does not exist on 2026-03-08 in New York: the freeze starts at 03:30 EDT, as a window would.
    freezes = Freezes(NEW_YORK, (period("night", "2026-03-08T02:30", "2026-03-08T06:00"),))
    (found,) = freezes.between(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    assert found.start == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    assert found.end == datetime(2026, 3, 8, 10, 0, tzinfo=UTC)


def test_the_first_freeze_starting_inside_a_range_is_the_earliest() -> None:
    freezes = Freezes(
        UTC_ZONE,
        (period("b", "2026-12-10T10:00", "2026-12-10T12:00"), period("a", "2026-12-10T08:00", "2026-12-10T09:00")),
    )
    window = (datetime(2026, 12, 10, 6, tzinfo=UTC), datetime(2026, 12, 10, 16, tzinfo=UTC))
    first = freezes.first_starting(*window)
    assert first is not None and first.name == "a"
    assert freezes.first_starting(datetime(2026, 12, 10, 8, 30, tzinfo=UTC), window[1]) == Freeze(
        "b", datetime(2026, 12, 10, 10, tzinfo=UTC), datetime(2026, 12, 10, 12, tzinfo=UTC)
    )
    assert freezes.first_starting(datetime(2026, 12, 10, 12, tzinfo=UTC), window[1]) is None


UTC_ZONE = ZoneInfo("UTC")


@pytest.mark.parametrize(
    ("start", "end", "yearly", "message"),
    [
        ("2026-12-20", "2026-12-19", False, "expected `to` after `from`"),
        ("2026-01-01", "2027-01-01", True, "a yearly freeze must last less than a year"),
        ("2026-12-20T00:00+09:00", "2026-12-21T00:00", False, "give both from and to with an offset, or neither"),
    ],
)
def test_a_period_with_bad_bounds_is_refused_with_its_place(start: str, end: str, yearly: bool, message: str) -> None:
    text = POLICY + f'freeze:\n  - {{name: bad, from: "{start}", to: "{end}", yearly: {str(yearly).lower()}}}\n'
    with pytest.raises(InputError) as raised:
        parse_policy(text)
    (problem,) = raised.value.problems
    assert problem.path == ("freeze", 0)
    assert message in problem.message


def test_a_bound_that_is_not_a_date_is_refused() -> None:
    with pytest.raises(InputError) as raised:
        parse_policy(POLICY + "freeze:\n  - {name: bad, from: next friday, to: 2026-12-21}\n")
    assert "expected a date such as" in str(raised.value)


# --- property tests ---------------------------------------------------------------------------------

days = st.dates(min_value=date(2024, 1, 1), max_value=date(2032, 12, 31))
hours = st.integers(min_value=0, max_value=23)


@settings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    first=days,
    length=st.integers(min_value=0, max_value=40),
    yearly=st.booleans(),
    probe_day=days,
    probe_hour=hours,
    probe_minute=st.integers(min_value=0, max_value=59),
)
def test_a_date_period_freezes_exactly_its_local_days(
    zone: ZoneInfo, first: date, length: int, yearly: bool, probe_day: date, probe_hour: int, probe_minute: int
) -> None:
    """Whatever the DST changes and year ends, an instant is frozen exactly when its local date is
    one of the period's days (shifted by whole years when yearly, from the year given on)."""
    last = first + timedelta(days=length)
    freezes = Freezes(zone, (period("p", first, last, yearly=yearly),))
    instant = datetime.combine(probe_day, time(probe_hour, probe_minute), zone).astimezone(UTC).astimezone(zone)
    day = instant.date()
    if yearly:
        from dateutil.relativedelta import relativedelta

        shifts = [relativedelta(years=k) for k in range(day.year - first.year - 1, day.year - first.year + 1) if k >= 0]
        expected = any(first + s <= day <= last + s for s in shifts)
    else:
        expected = first <= day <= last
    assert (freezes.at(instant) is not None) == expected


@settings(max_examples=100, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    starts=st.lists(st.tuples(days, hours, st.integers(min_value=1, max_value=72)), min_size=1, max_size=4),
    window_day=days,
    window_hour=hours,
    window_hours=st.integers(min_value=1, max_value=30),
)
def test_a_window_is_frozen_cut_short_or_free_and_never_overlaps_a_freeze_before_its_end(
    zone: ZoneInfo, starts: list[tuple[date, int, int]], window_day: date, window_hour: int, window_hours: int
) -> None:
    """`at` and `first_starting` split a window as the timer does: frozen at its start, or cut at
    the first freeze starting inside it; what is left overlaps no freeze."""
    periods = tuple(
        period(f"f{i}", datetime.combine(d, time(h)), datetime.combine(d, time(h)) + timedelta(hours=n))
        for i, (d, h, n) in enumerate(starts)
    )
    freezes = Freezes(zone, periods)
    start = datetime.combine(window_day, time(window_hour), zone).astimezone(UTC)
    end = start + timedelta(hours=window_hours)
    if (frozen := freezes.at(start)) is not None:
        assert frozen.start <= start < frozen.end
        return
    cut = freezes.first_starting(start, end)
    effective_end = cut.start if cut else end
    assert start < effective_end <= end
    assert not [f for f in freezes.between(start, effective_end) if f.start < effective_end and f.end > start]


# --- iCalendar ---------------------------------------------------------------------------------------

CALENDAR = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//PatchPilot tests//EN
BEGIN:VTIMEZONE
TZID:America/New_York
BEGIN:STANDARD
DTSTART:19701101T020000
RRULE:FREQ=YEARLY;BYMONTH=11;BYDAY=1SU
TZOFFSETFROM:-0400
TZOFFSETTO:-0500
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:19700308T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=2SU
TZOFFSETFROM:-0500
TZOFFSETTO:-0400
END:DAYLIGHT
END:VTIMEZONE
BEGIN:VEVENT
UID:close@example.com
SUMMARY:Month-end close
DTSTART;TZID=America/New_York:20260130T180000
DTEND;TZID=America/New_York:20260131T060000
RRULE:FREQ=MONTHLY;BYMONTHDAY=-2
EXDATE;TZID=America/New_York:20260330T180000
END:VEVENT
BEGIN:VEVENT
UID:bf@example.com
SUMMARY:Black Friday
DTSTART;VALUE=DATE:20261127
DTEND;VALUE=DATE:20261130
END:VEVENT
BEGIN:VEVENT
UID:audit@example.com
SUMMARY:Audit day
DTSTART;VALUE=DATE:20260615
END:VEVENT
END:VCALENDAR
"""


def calendar_freezes(zone: ZoneInfo = NEW_YORK) -> Freezes:
    return Freezes(zone, (), parse_calendar(CALENDAR, "freezes.ics"), "freezes.ics")


def test_a_monthly_rrule_with_an_exdate_freezes_each_month_but_the_excluded_one() -> None:
    found = [
        f
        for f in calendar_freezes().between(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC))
        if f.name == "Month-end close"
    ]
    starts = [f.start.astimezone(NEW_YORK).date() for f in found]
    assert starts == [date(2026, 1, 30), date(2026, 2, 27), date(2026, 4, 29), date(2026, 5, 30), date(2026, 6, 29)]
    # 18:00 local on both sides of the DST change: the event's own time zone holds
    assert [f.start.astimezone(NEW_YORK).time() for f in found] == [time(18)] * 5
    assert {f.source for f in found} == {"freezes.ics"}


def test_all_day_events_cover_whole_local_days_with_dtend_excluded() -> None:
    freezes = calendar_freezes(SYDNEY)  # all-day events are days of the policy's time zone
    friday = freezes.at(local(SYDNEY, 2026, 11, 29, 23, 59))
    assert friday is not None and friday.name == "Black Friday"
    assert friday.start == local(SYDNEY, 2026, 11, 27)
    assert freezes.at(local(SYDNEY, 2026, 11, 30)) is None
    audit = freezes.at(local(SYDNEY, 2026, 6, 15, 12))  # no DTEND: one day
    assert audit is not None and audit.end == local(SYDNEY, 2026, 6, 16)


def test_a_calendar_that_is_not_icalendar_is_refused_naming_the_file() -> None:
    with pytest.raises(InputError) as raised:
        parse_calendar("hello", "policies/freezes.ics")
    assert str(raised.value).startswith("policies/freezes.ics: (top level): not an iCalendar file")


POLICY = """name: p
schedule: {monthly: "Second Tuesday", at: "02:00", timezone: America/New_York, duration: 4h}
rings:
  - {name: all, select: {tags: {Env: prod}}}
"""


def test_load_policy_reads_the_calendar_beside_the_policy(tmp_path: Path) -> None:
    (tmp_path / "freezes.ics").write_text(CALENDAR)
    (tmp_path / "policy.yaml").write_text(POLICY + "freeze_calendar: freezes.ics\n")
    freezes = load_policy(str(tmp_path / "policy.yaml")).freezes()
    hit = freezes.at(local(NEW_YORK, 2026, 11, 28, 12))
    assert hit is not None and hit.name == "Black Friday" and hit.source == "freezes.ics"


def test_a_missing_calendar_is_an_input_error_naming_its_path(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY + "freeze_calendar: freezes.ics\n")
    with pytest.raises(InputError) as raised:
        load_policy(str(tmp_path / "policy.yaml"))
    assert str(raised.value) == f"{tmp_path / 'freezes.ics'}: (top level): file not found"


def test_a_calendar_name_with_a_path_is_refused() -> None:
    with pytest.raises(InputError) as raised:
        parse_policy(POLICY + "freeze_calendar: ../secrets/freezes.ics\n")
    assert "freeze_calendar" in str(raised.value)


def test_a_calendar_file_must_be_an_ics_file_the_deployed_stacks_may_read() -> None:
    """On AWS the functions may read (and only the deployer may write) `*.ics` beside the policy:
    a calendar under another name could not be read when deployed, so no scheduled run would start."""
    with pytest.raises(InputError) as raised:
        parse_policy(POLICY + "freeze_calendar: freezes.ical\n")
    assert 'ending in .ics (e.g. freezes.ics), got "freezes.ical"' in str(raised.value)
    assert parse_policy(POLICY + "freeze_calendar: Year End 2026.ics\n").freeze_calendar == "Year End 2026.ics"


def test_a_freeze_with_azure_update_manager_schedules_is_refused() -> None:
    text = POLICY + (
        "freeze:\n  - {name: x, from: 2026-12-20, to: 2026-12-21}\n"
        "azure: {maintenance: {resource_group: rg, location: japaneast}}\n"
    )
    with pytest.raises(InputError) as raised:
        parse_policy(text)
    (problem,) = raised.value.problems
    assert problem.path == ("freeze",) and problem.message.startswith("cannot take effect with azure.maintenance")
