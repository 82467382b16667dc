"""Newsletters sent at each member's local time: "09:00 on 2026-12-10" wherever they live.

The audience is frozen when the send starts, as for any newsletter (`newsletter.start`), and the
same INSERT … SELECT gives each recipient row its due instant (`due_instants`: that wall-clock
time on that date in every IANA time zone, matched to the member's) and parks it as `waiting`,
which the outbox never claims. `release_due` (the bulk queue's `newsletter-tick`, or `notifier newsletters run-due
--at TIME`) turns the rows whose instant has come into ordinary `queued` rows and rings the bulk
queue; delivery then sends each exactly once, as for every outbox row. A release is one
conditional UPDATE under `FOR UPDATE SKIP LOCKED`, so passes running side by side release each
row once.

The instant comes from `schedule.local_instant` (zoneinfo, the digests' rule): a time the clocks
skip that day (02:30 when they jump from 02:00 to 03:00) goes at the first instant after the jump,
03:00; a time that happens twice (clocks going back) goes at the first of the two. A time zone
the tz database does not know (none can be stored through the API) counts as UTC. The instants
are computed in Python for every zone of the database (about 600, a few milliseconds) rather
than per member, so the freeze stays one statement.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

import asyncpg

from notifier import queues, schedule
from notifier.db import Q
from notifier.mail import outbox
from notifier.settings import Settings
from notifier.validation import LATEST

log = logging.getLogger("notifier.newsletter")

# The last place on earth where a day ends (UTC−12, e.g. Baker Island, `Etc/GMT+12`): a send is
# refused once its local time has passed there, i.e. once it has passed everywhere.
LAST_OFFSET = timedelta(hours=-12)
RELEASE_BATCH = 5000
# `run-due --at` further ahead than this releases real e-mails early: it needs --force.
AHEAD_WITHOUT_FORCE = timedelta(minutes=5)


@dataclass(frozen=True)
class LocalSend:
    """Send at `at` (wall-clock) on `day` in each recipient's own time zone."""

    at: time
    day: date

    def problem(self, now: datetime) -> str | None:
        """Why this send cannot be accepted at `now` (a sentence naming the date), or None.
        The date may be today or earlier in some zones: those members get it at once."""
        wall_clock = datetime.combine(self.day, self.at, tzinfo=UTC)
        if wall_clock >= LATEST:  # first: 9999-12-31 plus twelve hours is no datetime
            return f"must be before {LATEST.date().isoformat()}"
        if wall_clock - LAST_OFFSET <= now:
            return "is past in every time zone (the local time has gone by even at UTC−12)"
        return None


def parse_local_time(value: Any) -> time:
    """`HH:MM` (24-hour clock) as a time; ValueError with a sentence for anything else."""
    if (
        not isinstance(value, str)
        or len(value) != 5
        or value[2] != ":"
        or not value.replace(":", "", 1).isdigit()
    ):
        raise ValueError("must be a 24-hour time HH:MM such as 09:00")
    hour, minute = int(value[:2]), int(value[3:])
    if hour > 23 or minute > 59:
        raise ValueError("must be a 24-hour time HH:MM such as 09:00")
    return time(hour, minute)


def parse_day(value: Any) -> date:
    """`YYYY-MM-DD` as a date; ValueError with a sentence for anything else."""
    if not isinstance(value, str) or len(value) != 10 or value[4] != "-" or value[7] != "-":
        raise ValueError("must be a date YYYY-MM-DD such as 2026-12-10")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a date YYYY-MM-DD such as 2026-12-10") from None


def due_instant(send: LocalSend, timezone: str) -> datetime:
    """The UTC instant of the send's wall-clock time on its date in `timezone` (UTC if unknown)."""
    try:
        tz = schedule.zone(timezone)
    except ValueError:
        tz = schedule.zone("UTC")
    return schedule.local_instant(send.day, send.at, tz)


@lru_cache(maxsize=1)
def _zones() -> tuple[str, ...]:
    # Every name `schedule.zone` accepts, i.e. every name an account can hold.
    return tuple(sorted(available_timezones()))


@dataclass(frozen=True)
class DueInstants:
    """The send's instant in every time zone, as `fan_out_newsletter` takes them."""

    zones: list[str]
    instants: list[datetime]
    otherwise: datetime | None  # for a zone not among them (UTC); None: no local-time send

    @classmethod
    def of(cls, send: LocalSend | None) -> DueInstants:
        """The instants of `send`; for None (a plain send), none: every row is queued at once."""
        if send is None:
            return cls([], [], None)
        zones = list(_zones())
        return cls(zones, [due_instant(send, z) for z in zones], due_instant(send, "UTC"))


@dataclass(frozen=True)
class Released:
    """What one release pass did: rows queued per newsletter."""

    by_newsletter: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.by_newsletter.values())


async def release_due(pool: asyncpg.Pool, redis: Any, at: datetime | None = None) -> Released:
    """Queue every waiting recipient row whose due instant is at or before `at` (default now)
    and ring the bulk queue. Idempotent and safe beside other passes: each row is released once."""
    at = at or datetime.now(UTC)
    counts: Counter[int] = Counter()
    while True:
        rows = await pool.fetch(Q.release_due_emails, at, RELEASE_BATCH)
        counts.update(r["newsletter_id"] for r in rows)
        if rows:
            await outbox.ring(redis, queues.BULK, len(rows))
        if len(rows) < RELEASE_BATCH:
            break
    for newsletter_id, n in sorted(counts.items()):
        log.info("newsletter %s: %s recipients reached their local time", newsletter_id, n)
    return Released(dict(counts))


async def waiting(conn: asyncpg.Connection | asyncpg.Pool, newsletter_id: int) -> tuple[int, datetime | None]:
    """(recipients still waiting for their local time, the next due instant or None)."""
    row = await conn.fetchrow(Q.newsletter_next_due, newsletter_id)
    assert row is not None
    return row["waiting"], row["next_due_at"]


async def cli_run_due(
    settings: Settings, at: datetime | None, *, dry_run: bool = False, force: bool = False
) -> int:
    """`notifier newsletters run-due [--at TIME] [--dry-run] [--force]`: one release pass as of
    `at`, then print what it released. Like `digests run`: `--dry-run` counts and writes nothing;
    a time more than AHEAD_WITHOUT_FORCE ahead is refused (2) without `--force`, since the
    released e-mails go out now. Bulk workers deliver what is released."""
    from notifier.resources import opened

    now = datetime.now(UTC)
    when = at or now
    if when - now > AHEAD_WITHOUT_FORCE and not (force or dry_run):
        print(
            f"notifier: error: --at {when.isoformat()} is ahead of now: the members due by then would "
            "get the newsletter now, before their local time; add --force to do it, or --dry-run "
            "to see how many are due",
            file=sys.stderr,
        )
        return 2
    async with opened(settings) as res:
        if dry_run:
            due = await res.pool.fetchval(Q.count_due_emails, when)
            print(f"dry run as of {when.isoformat()}: recipients due: {due}  (nothing written)")
            return 0
        released = await release_due(res.pool, res.redis, when)
    detail = ", ".join(f"newsletter {k}: {v}" for k, v in sorted(released.by_newsletter.items()))
    print(f"released as of {when.isoformat()}: {released.total}" + (f" ({detail})" if detail else ""))
    return 0
