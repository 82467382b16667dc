"""When a member's next digest is due: pure functions over a frequency, a local hour, an ISO
weekday and an IANA time zone. Everything returned is an aware UTC datetime.

Local times that do not exist (the gap of a spring-forward change) resolve to the first valid
instant after the gap, so the digest still goes out that day, once. Local times that happen twice
(the repeated hour of a fall-back change) resolve to their first occurrence, so it goes out once.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, available_timezones

# The one definition of the digest frequencies (the schema's CHECK in migrations/0001 lists the
# same; tests/test_schedule.py checks they agree).
Frequency = Literal["off", "immediate", "hourly", "daily", "weekly"]
FREQUENCIES: tuple[Frequency, ...] = typing.get_args(Frequency)
# Frequencies that run on a clock; "immediate" is driven by arriving messages, "off" by nothing.
SCHEDULED: frozenset[str] = frozenset({"hourly", "daily", "weekly"})

_QUARTER = timedelta(minutes=15)


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The tz database zone `name`; raises ValueError for anything that is not one. Any name of
    the database loads (a zone stored before `timezone_names` was narrowed keeps working); only
    `timezone_names` may be chosen."""
    if name not in _known_zones():
        raise ValueError(f"{name!r} is not an IANA time zone name")
    return ZoneInfo(name)


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


# POSIX TZ-style names kept by the tz database for compatibility (`EST5EDT`, `CST6CDT`): rules
# of a standard and a daylight abbreviation, not a place. Also when under a folder (SystemV/...).
_POSIX_STYLE = re.compile(r"(?:.*/)?[A-Z]{3,}[0-9][A-Z]{3,}")


@lru_cache(maxsize=1)
def timezone_names() -> frozenset[str]:
    """The time zones a member may choose: the places of the tz database (`Area/Location`, such
    as `Europe/Berlin`, `America/Argentina/Buenos_Aires`, `Etc/GMT+5`) and `UTC`. Left out are the
    names that are not a place: `localtime` (whatever the server's clock says), `Factory` (no
    zone at all), POSIX-style rules (`EST5EDT`) and the one-word aliases (`GB`, `Japan`, `EST`)
    that name a place under another spelling; the preference centre offers exactly this list."""
    return frozenset(
        name for name in _known_zones() if name == "UTC" or ("/" in name and not _POSIX_STYLE.fullmatch(name))
    )


def is_valid_timezone(name: str) -> bool:
    """True for the time zones of `timezone_names()` (e.g. `Europe/Berlin`, `UTC`)."""
    return name in timezone_names()


def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `at` on `day` in `tz`.

    In a spring-forward gap: the first valid instant after the gap. In a fall-back repeat: the
    first of the two instants.
    """
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=tz, fold=0)
    utc = first.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) == naive:
        return utc  # exists (and, if repeated, fold=0 is the earlier one)
    # In the gap: fold=1 uses the offset after the change and lands before the transition,
    # fold=0 the offset before it and lands after. Find the transition between them.
    lo = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    hi = utc
    after_offset = hi.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid <= lo:
            break
        if mid.astimezone(tz).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return hi


def _next_hourly(after: datetime, tz: ZoneInfo) -> datetime:
    # The next instant at minute 0 of a local hour. Offsets are whole quarter-hours in the tz
    # database, so stepping through UTC quarter-hours finds it in at most four steps (eight
    # around a change); a repeated local hour on fall-back is two hours, each with its digest.
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    t = epoch + ((after - epoch) // _QUARTER + 1) * _QUARTER
    while t.astimezone(tz).minute != 0:
        t += _QUARTER
    return t


@lru_cache(maxsize=8192)  # pure; a pass asks the same for most accounts due at the same time
def next_due(
    frequency: str,
    hour: int,
    weekday: int,
    timezone: str,
    after: datetime,
) -> datetime | None:
    """The first scheduled digest time strictly after `after` (aware), or None when the frequency
    does not run on a clock ("off", "immediate"). `hour` is the local hour (daily, weekly),
    `weekday` the ISO weekday 1 = Monday … 7 = Sunday (weekly). Raises ValueError on bad input.
    """
    if after.tzinfo is None:
        raise ValueError("`after` must be timezone-aware")
    if frequency not in FREQUENCIES:
        raise ValueError(f"unknown digest frequency {frequency!r}")
    if frequency not in SCHEDULED:
        return None
    tz = zone(timezone)
    after = after.astimezone(UTC)
    if frequency == "hourly":
        return _next_hourly(after, tz)
    if not 0 <= hour <= 23:
        raise ValueError(f"digest hour must be 0-23, got {hour}")
    at = time(hour)
    day = after.astimezone(tz).date()
    if frequency == "daily":
        step = timedelta(days=1)
    else:
        if not 1 <= weekday <= 7:
            raise ValueError(f"digest weekday must be 1-7, got {weekday}")
        day += timedelta(days=(weekday - day.isoweekday()) % 7)
        step = timedelta(days=7)
    # The local day of `after` may already be past the hour; at most one more step is needed,
    # a second only guards a change of offset between the two.
    candidate = local_instant(day, at, tz)
    while candidate <= after:
        day += step
        candidate = local_instant(day, at, tz)
    return candidate


# --- quiet hours ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quiet:
    """A member's quiet hours: local wall-clock `start` to `end` (a window that crosses midnight
    when end < start), and with `weekends` all of Saturday and Sunday as well."""

    start: time
    end: time
    weekends: bool = False

    @classmethod
    def of(cls, document: Mapping[str, Any] | None) -> Quiet | None:
        """The quiet hours of a stored preferences document (`{"start": "22:00", "end": "07:00",
        "weekends": false}`); None when there are none."""
        if not document:
            return None
        return _quiet(document["start"], document["end"], bool(document.get("weekends")))

    def holds(self, at: datetime, tz: ZoneInfo) -> bool:
        """True when the instant `at` falls inside the quiet hours in `tz`."""
        local = at.astimezone(tz)
        if self.weekends and local.isoweekday() >= 6:
            return True
        wall = local.time().replace(tzinfo=None)
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= wall < self.end
        return wall >= self.start or wall < self.end

    def end_after(self, at: datetime, tz: ZoneInfo) -> datetime:
        """The first instant at or after `at` outside the quiet hours (`at` itself when it is
        outside). Local times in a spring-forward gap resolve as `local_instant` does."""
        for _ in range(8):  # a weekend and a window on each side of it at most
            if not self.holds(at, tz):
                return at
            local = at.astimezone(tz)
            day = local.date()
            if self.weekends and local.isoweekday() >= 6:
                nxt = local_instant(day + timedelta(days=8 - local.isoweekday()), time(0), tz)
            elif self.start < self.end or local.time().replace(tzinfo=None) < self.end:
                nxt = local_instant(day, self.end, tz)
            else:
                nxt = local_instant(day + timedelta(days=1), self.end, tz)
            at = nxt if nxt > at else at + timedelta(minutes=1)
        return at


@lru_cache(maxsize=256)
def _quiet(start: str, end: str, weekends: bool) -> Quiet:
    return Quiet(time.fromisoformat(start), time.fromisoformat(end), weekends)


@lru_cache(maxsize=8192)
def next_due_quiet(
    frequency: str, hour: int, weekday: int, timezone: str, after: datetime, quiet: Quiet | None
) -> datetime | None:
    """`next_due` with quiet hours: a daily or weekly time that falls inside them moves to their
    end; an hourly one is folded into the first hourly time after them."""
    due = next_due(frequency, hour, weekday, timezone, after)
    if due is None or quiet is None:
        return due
    tz = zone(timezone)
    for _ in range(8):
        if not quiet.holds(due, tz):
            return due
        due = quiet.end_after(due, tz)
        if frequency == "hourly" and due.astimezone(tz).minute != 0:
            due = _next_hourly(due, tz)
    return due


def same_period(frequency: str, a: datetime, b: datetime, timezone: str) -> bool:
    """True when `a` and `b` fall in the same local period of `frequency` in `timezone`: the same
    hour (hourly), day (daily) or ISO week (weekly)."""
    tz = zone(timezone)
    la, lb = a.astimezone(tz), b.astimezone(tz)
    if frequency == "hourly":
        return (la.date(), la.hour) == (lb.date(), lb.hour)
    if frequency == "daily":
        return la.date() == lb.date()
    if frequency == "weekly":
        return la.isocalendar()[:2] == lb.isocalendar()[:2]
    return False


def reschedule(
    frequency: str,
    hour: int,
    weekday: int,
    timezone: str,
    window_start: datetime,
    now: datetime,
    *,
    quiet: Quiet | None = None,
    last_sent: datetime | None = None,
) -> datetime | None:
    """The end of the open window under (possibly new) preferences: the first scheduled time
    after the window's start, so lowering daily to weekly skips tonight's daily digest; if that
    time has already passed (raising weekly to hourly late in a window), the next one after
    `now` instead, so a change never triggers a burst of catch-up digests. Quiet hours move it as
    `next_due_quiet` says. Never in the local period of the last digest of this frequency
    (`last_sent`): a member moving from Asia/Kathmandu to Asia/Kolkata 15 minutes after the 08:00
    digest gets the next one tomorrow, not at 08:00 Kolkata time today."""
    due = next_due_quiet(frequency, hour, weekday, timezone, window_start, quiet)
    if due is not None and due <= now:
        due = next_due_quiet(frequency, hour, weekday, timezone, now, quiet)
    if due is not None and last_sent is not None and same_period(frequency, due, last_sent, timezone):
        due = next_due_quiet(frequency, hour, weekday, timezone, due, quiet)
    return due
