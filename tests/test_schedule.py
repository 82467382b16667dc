"""The digest clock: hourly, daily and weekly due times across time zones and DST changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.schedule import is_valid_timezone, local_instant, next_due, reschedule


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def series(frequency: str, hour: int, weekday: int, tz: str, start: datetime, n: int) -> list[datetime]:
    """The next n due times, each computed from the previous one, as the scheduler advances."""
    out: list[datetime] = []
    at = start
    for _ in range(n):
        due = next_due(frequency, hour, weekday, tz, at)
        assert due is not None
        out.append(due)
        at = due
    return out


def local(times: list[datetime], tz: str) -> list[str]:
    return [t.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z") for t in times]


def test_daily_in_utc_and_strictly_after() -> None:
    assert next_due("daily", 8, 1, "UTC", utc(2026, 6, 1, 7, 59)) == utc(2026, 6, 1, 8)
    # Exactly at the due time: the next one (a window never ends where it starts).
    assert next_due("daily", 8, 1, "UTC", utc(2026, 6, 1, 8)) == utc(2026, 6, 2, 8)
    assert next_due("daily", 0, 1, "UTC", utc(2026, 12, 31, 23)) == utc(2027, 1, 1, 0)


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("Europe/Berlin", utc(2026, 6, 1, 6)),  # CEST, UTC+2
        ("America/New_York", utc(2026, 6, 1, 12)),  # EDT, UTC-4
        ("Asia/Kolkata", utc(2026, 6, 1, 2, 30)),  # UTC+5:30
        ("Asia/Kathmandu", utc(2026, 6, 1, 2, 15)),  # UTC+5:45
        ("Pacific/Auckland", utc(2026, 6, 1, 20)),  # NZST, UTC+12: 08:00 on 2 June local
    ],
)
def test_daily_at_local_hour_across_zones(tz: str, expected: datetime) -> None:
    due = next_due("daily", 8, 1, tz, utc(2026, 6, 1, 0, 0))
    assert due == expected
    assert due.astimezone(ZoneInfo(tz)).hour == 8


def test_hourly_follows_local_hours_including_half_hour_zones() -> None:
    assert next_due("hourly", 8, 1, "UTC", utc(2026, 6, 1, 10, 0)) == utc(2026, 6, 1, 11)
    assert next_due("hourly", 8, 1, "UTC", utc(2026, 6, 1, 10, 59, 59)) == utc(2026, 6, 1, 11)
    # India is UTC+5:30: local hours start at UTC :30.
    assert next_due("hourly", 0, 1, "Asia/Kolkata", utc(2026, 6, 1, 10, 0)) == utc(2026, 6, 1, 10, 30)
    assert series("hourly", 0, 1, "Asia/Kathmandu", utc(2026, 6, 1, 10, 0), 3) == [
        utc(2026, 6, 1, 10, 15),
        utc(2026, 6, 1, 11, 15),
        utc(2026, 6, 1, 12, 15),
    ]


def test_hourly_across_dst_changes_is_every_real_hour() -> None:
    # Berlin springs forward 2026-03-29 02:00 -> 03:00 and falls back 2026-10-25 03:00 -> 02:00.
    spring = series("hourly", 0, 1, "Europe/Berlin", utc(2026, 3, 28, 23, 30), 4)
    assert spring == [utc(2026, 3, 29, h) for h in range(0, 4)]
    assert local(spring, "Europe/Berlin") == [
        "2026-03-29 01:00 CET",
        "2026-03-29 03:00 CEST",  # 02:00 does not exist that night
        "2026-03-29 04:00 CEST",
        "2026-03-29 05:00 CEST",
    ]
    autumn = series("hourly", 0, 1, "Europe/Berlin", utc(2026, 10, 24, 23, 30), 3)
    assert local(autumn, "Europe/Berlin") == [
        "2026-10-25 02:00 CEST",
        "2026-10-25 02:00 CET",  # the repeated hour is a real hour: it gets its own digest
        "2026-10-25 03:00 CET",
    ]


def test_daily_in_the_spring_forward_gap_goes_once_at_the_end_of_the_gap() -> None:
    # 02:00 and 02:30 do not exist in Berlin on 2026-03-29; the digest goes at 03:00 CEST, once.
    days = series("daily", 2, 1, "Europe/Berlin", utc(2026, 3, 27, 12), 4)
    assert local(days, "Europe/Berlin") == [
        "2026-03-28 02:00 CET",
        "2026-03-29 03:00 CEST",
        "2026-03-30 02:00 CEST",
        "2026-03-31 02:00 CEST",
    ]
    assert local_instant(date(2026, 3, 29), time(2, 30), ZoneInfo("Europe/Berlin")) == utc(2026, 3, 29, 1)


def test_daily_in_the_fall_back_repeat_goes_once() -> None:
    # 02:00-02:59 happens twice in Berlin on 2026-10-25: the digest goes at the first 02:00 only.
    days = series("daily", 2, 1, "Europe/Berlin", utc(2026, 10, 23, 12), 4)
    assert local(days, "Europe/Berlin") == [
        "2026-10-24 02:00 CEST",
        "2026-10-25 02:00 CEST",
        "2026-10-26 02:00 CET",
        "2026-10-27 02:00 CET",
    ]
    # Asking again from just after the first 02:00 does not find the second 02:00 that day.
    assert next_due("daily", 2, 1, "Europe/Berlin", days[1] + timedelta(minutes=1)) == days[2]
    assert len({d.date() for d in days}) == 4


def test_daily_keeps_local_hour_across_us_dst() -> None:
    days = series("daily", 7, 1, "America/New_York", utc(2026, 3, 6, 20), 4)
    assert local(days, "America/New_York") == [
        "2026-03-07 07:00 EST",
        "2026-03-08 07:00 EDT",  # US spring-forward day; 07:00 exists
        "2026-03-09 07:00 EDT",
        "2026-03-10 07:00 EDT",
    ]
    assert [d.hour for d in days] == [12, 11, 11, 11]


def test_weekly_on_weekday_and_hour() -> None:
    # 2026-06-01 is a Monday.
    assert next_due("weekly", 8, 1, "UTC", utc(2026, 6, 1, 7)) == utc(2026, 6, 1, 8)
    assert next_due("weekly", 8, 1, "UTC", utc(2026, 6, 1, 8)) == utc(2026, 6, 8, 8)
    assert next_due("weekly", 18, 5, "Europe/Berlin", utc(2026, 6, 1, 8)) == utc(2026, 6, 5, 16)
    assert next_due("weekly", 9, 7, "Asia/Tokyo", utc(2026, 6, 1, 8)) == utc(2026, 6, 7, 0)
    # Monday 00:00 UTC is still Sunday 17:00 in Los Angeles: its Sunday 23:00 is 06:00 UTC.
    due = next_due("weekly", 23, 7, "America/Los_Angeles", utc(2026, 6, 1, 0))
    assert due == utc(2026, 6, 1, 6)
    weeks = series("weekly", 10, 3, "Europe/London", utc(2026, 3, 20), 3)
    assert local(weeks, "Europe/London") == [
        "2026-03-25 10:00 GMT",
        "2026-04-01 10:00 BST",  # the UK changed clocks on 29 March
        "2026-04-08 10:00 BST",
    ]


def test_off_and_immediate_have_no_clock() -> None:
    assert next_due("off", 8, 1, "UTC", utc(2026, 6, 1)) is None
    assert next_due("immediate", 8, 1, "UTC", utc(2026, 6, 1)) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("monthly", 8, 1, "UTC"), "frequency"),
        (("daily", 24, 1, "UTC"), "hour"),
        (("weekly", 8, 0, "UTC"), "weekday"),
        (("daily", 8, 1, "Mars/Olympus"), "time zone"),
    ],
)
def test_bad_input_raises(args: tuple[str, int, int, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        next_due(*args, utc(2026, 6, 1))


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_due("daily", 8, 1, "UTC", datetime(2026, 6, 1))


def test_timezone_names() -> None:
    assert is_valid_timezone("Europe/Berlin")
    assert is_valid_timezone("UTC")
    assert not is_valid_timezone("Europe/Nowhere")
    assert not is_valid_timezone("")
    assert not is_valid_timezone("../etc/passwd")


def test_reschedule_uses_window_start_then_now() -> None:
    start = utc(2026, 6, 1, 8)
    # Daily -> weekly late Monday: next Monday, not tonight.
    assert reschedule("weekly", 8, 1, "UTC", start, utc(2026, 6, 1, 21)) == utc(2026, 6, 8, 8)
    # Weekly -> daily on Wednesday: Tuesday's time has passed, so Thursday 08:00, not a burst.
    assert reschedule("daily", 8, 1, "UTC", start, utc(2026, 6, 3, 12)) == utc(2026, 6, 4, 8)
    assert reschedule("off", 8, 1, "UTC", start, utc(2026, 6, 3, 12)) is None


# --- properties over many zones and instants ------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Sao_Paulo",
    "America/St_Johns",  # UTC-3:30 / -2:30
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",  # a 30-minute DST change
    "Pacific/Chatham",  # UTC+12:45 / +13:45
    "Pacific/Apia",  # skipped a whole day in 2011
]
instants = st.datetimes(
    min_value=datetime(2010, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), hour=st.integers(0, 23), after=instants)
def test_daily_is_the_next_local_hour_once_a_day(zone: str, hour: int, after: datetime) -> None:
    tz = ZoneInfo(zone)
    first = next_due("daily", hour, 1, zone, after)
    assert first is not None and first > after
    second = next_due("daily", hour, 1, zone, first)
    assert second is not None
    # One digest per local day, on consecutive days (Apia's missing day aside).
    days = (second.astimezone(tz).date() - first.astimezone(tz).date()).days
    assert days == 1 or (zone == "Pacific/Apia" and days == 2)
    for due in (first, second):
        local = due.astimezone(tz)
        if (local.hour, local.minute) != (hour, 0):
            # Only when that local time does not exist that day: then the end of the gap.
            naive = datetime.combine(local.date(), time(hour))
            assert naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive
            assert (due - timedelta(seconds=1)).astimezone(tz).utcoffset() != local.utcoffset()
    # Minimal: asking from any earlier instant of the window gives the same answer.
    middle = after + (first - after) / 2
    assert next_due("daily", hour, 1, zone, middle) == first


@settings(max_examples=200, deadline=None)
@given(zone=st.sampled_from(ZONES), hour=st.integers(0, 23), weekday=st.integers(1, 7), after=instants)
def test_weekly_is_on_the_weekday_once_a_week(zone: str, hour: int, weekday: int, after: datetime) -> None:
    tz = ZoneInfo(zone)
    first = next_due("weekly", hour, weekday, zone, after)
    assert first is not None and after < first
    second = next_due("weekly", hour, weekday, zone, first)
    assert second is not None
    assert first.astimezone(tz).isoweekday() == weekday or zone == "Pacific/Apia"
    assert (second.astimezone(tz).date() - first.astimezone(tz).date()).days in (7, 8)
    assert first - after <= timedelta(days=7, hours=2)


@settings(max_examples=200, deadline=None)
@given(zone=st.sampled_from(ZONES), after=instants)
def test_hourly_is_at_every_local_hour_start(zone: str, after: datetime) -> None:
    tz = ZoneInfo(zone)
    due = next_due("hourly", 0, 1, zone, after)
    assert due is not None and timedelta(0) < due - after <= timedelta(hours=1, minutes=30)
    assert due.astimezone(tz).minute == 0 and due.second == 0
    nxt = next_due("hourly", 0, 1, zone, due)
    assert nxt is not None and timedelta(minutes=30) <= nxt - due <= timedelta(hours=1, minutes=30)


def test_the_frequencies_are_defined_once() -> None:
    """The schema's CHECK and the preference centre's labels follow schedule.FREQUENCIES."""
    import re
    from pathlib import Path

    from notifier.pages import preference_centre
    from notifier.schedule import FREQUENCIES

    schema = (Path(__file__).resolve().parents[1] / "migrations" / "0001_initial.sql").read_text()
    check = re.search(r"digest_frequency IN \(([^)]*)\)", schema)
    assert check is not None
    assert sorted(re.findall(r"'(\w+)'", check.group(1))) == sorted(FREQUENCIES)
    assert sorted(key for key, _, _ in preference_centre.FREQUENCIES) == sorted(FREQUENCIES)
