"""A member's digest windows: one per frequency some category of theirs runs on (see
`categories.effective_frequency`), pure functions over plain values.

Each scheduled frequency in use (hourly, daily, weekly) has a window `(start, end)`: `end` is
when its categories' messages are e-mailed next. The account's `next_digest_at` (what the pass
claims by) is the earliest end, or the time an "immediate" category's messages are due. A member
with one window, the one of their default frequency, keeps it in the account's columns
(`digest_window_start`, `next_digest_at`) and `digest_clocks` stays empty, as before categories
had frequencies; with more, `digest_clocks` holds them all (`{"daily": {"start": ..., "end": ...}}`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from notifier import schedule

Windows = dict[str, tuple[datetime, datetime]]


def stored(account: Mapping[str, Any]) -> Windows:
    """The windows of an account row (its `digest_clocks`, or the one window of its columns)."""
    clocks = account["digest_clocks"] or {}
    if clocks:
        return {
            f: (datetime.fromisoformat(w["start"]), datetime.fromisoformat(w["end"]))
            for f, w in clocks.items()
        }
    frequency = account["digest_frequency"]
    if frequency in schedule.SCHEDULED and account["next_digest_at"] is not None:
        return {frequency: (account["digest_window_start"], account["next_digest_at"])}
    return {}


def document(
    windows: Windows, default: str, window_start: datetime, next_due: datetime | None
) -> dict[str, Any]:
    """What `digest_clocks` stores for these windows: nothing when the columns say it all."""
    if not windows or windows == {default: (window_start, next_due)}:
        return {}
    return {f: {"start": s.isoformat(), "end": e.isoformat()} for f, (s, e) in sorted(windows.items())}


def earliest(windows: Windows, immediate: datetime | None) -> datetime | None:
    """The account's next due time: the earliest window end, or `immediate` if sooner."""
    ends = [e for _, e in windows.values()]
    if immediate is not None:
        ends.append(immediate)
    return min(ends) if ends else None


def replan(
    before: Windows,
    window_start: datetime,
    in_use: Iterable[str],
    prefs: Mapping[str, Any],
    *,
    clock_changed: bool,
    last_sent: Mapping[str, datetime],
    now: datetime,
) -> tuple[datetime, Windows]:
    """(account window start, windows) after a change of preferences (docs/digests.md, "A change
    applies to the open window", per frequency): a window whose frequency is still in use stays,
    or, when the hour, weekday, time zone or quiet hours changed, ends at the first scheduled time
    after its start (after now if that has passed; never in the local period of the last digest
    of that frequency). A frequency newly in use opens a window at the account's window start
    (at now when no window was open), ending the same way. Frequencies no longer in use close."""
    start = window_start if before else now
    quiet = schedule.Quiet.of(prefs["quiet_hours"])
    windows: Windows = {}
    for f in sorted(set(in_use) & schedule.SCHEDULED):
        if f in before and not clock_changed:
            windows[f] = before[f]
            continue
        s = before[f][0] if f in before else start
        end = schedule.reschedule(
            f,
            prefs["digest_hour"],
            prefs["digest_weekday"],
            prefs["timezone"],
            s,
            now,
            quiet=quiet,
            last_sent=last_sent.get(f),
        )
        assert end is not None
        windows[f] = (s, end)
    return (start if windows else window_start), windows


def opened(in_use: Iterable[str], prefs: Mapping[str, Any], now: datetime) -> Windows:
    """The first windows of a new account, opened at `now`."""
    quiet = schedule.Quiet.of(prefs["quiet_hours"])
    windows: Windows = {}
    for f in sorted(set(in_use) & schedule.SCHEDULED):
        end = schedule.next_due_quiet(
            f, prefs["digest_hour"], prefs["digest_weekday"], prefs["timezone"], now, quiet
        )
        assert end is not None
        windows[f] = (now, end)
    return windows


def due(windows: Windows, at: datetime) -> set[str]:
    """The frequencies whose window has ended by `at`. The pass closes those that end by the
    account's due time (the digest's window end, which is also the messages' cut-off): a window
    ending a minute later is the next digest's, so its messages are never cut off early."""
    return {f for f, (_, e) in windows.items() if e <= at}


def advanced(
    windows: Windows,
    in_use: Iterable[str],
    prefs: Mapping[str, Any],
    account_start: datetime,
    now: datetime,
    closed: Iterable[str] = (),
) -> Windows:
    """The windows after a pass at `now` closed those of `closed`: each one's successor starts at
    its end and ends at the next scheduled time after now (one digest for a late pass, not a
    backlog). A frequency newly in use (a category's default changed) opens a window at the
    account's window start; one no longer in use closes."""
    quiet = schedule.Quiet.of(prefs["quiet_hours"])
    closing = set(closed)
    out: Windows = {}
    for f in sorted(set(in_use) & schedule.SCHEDULED):
        if f in windows and f not in closing:
            out[f] = windows[f]
            continue
        s = windows[f][1] if f in windows else account_start
        end = schedule.next_due_quiet(
            f, prefs["digest_hour"], prefs["digest_weekday"], prefs["timezone"], max(s, now), quiet
        )
        assert end is not None
        out[f] = (s, end)
    return out


def immediate_due(
    first_waiting: datetime | None, coalesce_seconds: float, prefs: Mapping[str, Any]
) -> datetime | None:
    """When waiting "immediate" messages go out: one coalescing window after the first, moved to
    the end of quiet hours when it falls inside them."""
    if first_waiting is None:
        return None
    at = first_waiting + timedelta(seconds=coalesce_seconds)
    quiet = schedule.Quiet.of(prefs["quiet_hours"])
    return quiet.end_after(at, schedule.zone(prefs["timezone"])) if quiet else at
