"""Quiet hours (local, crossing midnight, DST-correct, weekends) and the change of time zone
that used to send a second daily digest the same local day (issue 14)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import pytest
from arq import ArqRedis

from notifier import schedule
from notifier.audit import MEMBER
from notifier.digest import messages_arrived, run_pass
from notifier.preferences import InvalidPreferences, apply_preferences
from notifier.schedule import Quiet, next_due_quiet, reschedule
from notifier.settings import Settings
from tests.factory import Factory

NIGHT = Quiet(time(22), time(7))
BERLIN = schedule.zone("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_quiet_window_crossing_midnight_and_weekends() -> None:
    # Berlin, summer (UTC+2): 22:00 local is 20:00 UTC.
    assert not NIGHT.holds(utc(2026, 6, 3, 19, 59), BERLIN)
    assert NIGHT.holds(utc(2026, 6, 3, 20, 0), BERLIN)
    assert NIGHT.holds(utc(2026, 6, 3, 23, 30), BERLIN)  # 01:30 local, after midnight
    assert not NIGHT.holds(utc(2026, 6, 4, 5, 0), BERLIN)  # 07:00 local: the end is not inside
    assert NIGHT.end_after(utc(2026, 6, 3, 21, 0), BERLIN) == utc(2026, 6, 4, 5, 0)
    assert NIGHT.end_after(utc(2026, 6, 4, 1, 0), BERLIN) == utc(2026, 6, 4, 5, 0)
    weekends = Quiet(time(22), time(7), weekends=True)
    # Friday 23:00 local: quiet through the weekend, ends Monday 07:00.
    assert weekends.end_after(utc(2026, 6, 5, 21, 0), BERLIN) == utc(2026, 6, 8, 5, 0)
    assert Quiet(time(9), time(17)).holds(utc(2026, 6, 3, 10, 0), BERLIN)  # a daytime window


def test_quiet_hours_across_dst_changes() -> None:
    # Spring forward in Berlin (29 March 2026): quiet 01:00-02:30; 02:30 does not exist that night,
    # the end is the first valid instant after the gap, 03:00 CEST = 01:00 UTC.
    early = Quiet(time(1), time(2, 30))
    assert early.end_after(utc(2026, 3, 29, 0, 15), BERLIN) == utc(2026, 3, 29, 1, 0)
    # Fall back (25 October 2026): 22:00-07:00 is ten hours that night; it ends at 07:00 CET.
    assert NIGHT.end_after(utc(2026, 10, 24, 21, 0), BERLIN) == utc(2026, 10, 25, 6, 0)
    # New York: spring forward on 8 March 2026, quiet ends at 07:00 EDT = 11:00 UTC.
    ny = schedule.zone("America/New_York")
    assert NIGHT.end_after(utc(2026, 3, 8, 5, 0), ny) == utc(2026, 3, 8, 11, 0)


def test_schedule_moves_out_of_quiet_hours() -> None:
    # Daily at 23:00 Berlin moves to 07:00; hourly times inside fold into the first one after.
    assert next_due_quiet("daily", 23, 1, "Europe/Berlin", utc(2026, 6, 3, 6), NIGHT) == utc(2026, 6, 4, 5)
    assert next_due_quiet("hourly", 0, 1, "Europe/Berlin", utc(2026, 6, 3, 19, 30), NIGHT) == utc(
        2026, 6, 4, 5
    )
    half = Quiet(time(22), time(7, 30))
    assert next_due_quiet("hourly", 0, 1, "Europe/Berlin", utc(2026, 6, 3, 19, 30), half) == utc(
        2026, 6, 4, 6
    )
    # Outside: unchanged.
    assert next_due_quiet("daily", 8, 1, "Europe/Berlin", utc(2026, 6, 3, 7), NIGHT) == utc(2026, 6, 4, 6)
    # Weekly on Sunday 06:00 Lord Howe (UTC+10:30 in winter) inside 22:00-07:00: 07:00.
    due = next_due_quiet("weekly", 6, 7, "Australia/Lord_Howe", utc(2026, 6, 1), NIGHT)
    assert due is not None and due.astimezone(schedule.zone("Australia/Lord_Howe")).hour == 7


def test_a_change_never_makes_a_second_digest_of_the_same_period() -> None:
    # The 08:00 Kathmandu digest went at 02:15 UTC; at 02:20 the member moves to Kolkata, where
    # 08:00 is 02:30 UTC today: the next daily digest is tomorrow's.
    sent = utc(2026, 6, 3, 2, 15)
    now = sent + timedelta(minutes=5)
    assert reschedule("daily", 8, 1, "Asia/Kolkata", sent, now) == utc(2026, 6, 3, 2, 30)  # the old bug
    assert reschedule("daily", 8, 1, "Asia/Kolkata", sent, now, last_sent=sent) == utc(2026, 6, 4, 2, 30)
    # With no digest that day (nothing to say at 08:00 Kathmandu), today's Kolkata one stands.
    yesterday = sent - timedelta(days=1)
    assert reschedule("daily", 8, 1, "Asia/Kolkata", sent, now, last_sent=yesterday) == utc(2026, 6, 3, 2, 30)


async def test_kathmandu_to_kolkata_after_the_digest_sends_no_second_one(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    start = utc(2026, 6, 2, 2, 15)  # 08:00 Kathmandu
    acc = await factory.account(
        digest_frequency="daily",
        timezone="Asia/Kathmandu",
        digest_window_start=start,
        next_digest_at=start + timedelta(days=1),
    )
    await factory.message(acc, created_at=start + timedelta(hours=3))
    first = await run_pass(pool, redis, settings, start + timedelta(days=1))
    assert first.emails == 1
    await factory.message(acc, created_at=start + timedelta(days=1, minutes=1))
    async with pool.acquire() as conn:
        await apply_preferences(
            conn,
            acc["id"],
            {"timezone": "Asia/Kolkata"},
            MEMBER,
            "api",
            now=start + timedelta(days=1, minutes=5),
        )
    t = start + timedelta(days=1, minutes=5)
    while t < utc(2026, 6, 4, 3):
        await run_pass(pool, redis, settings, t)
        t += timedelta(minutes=15)
    ends = [r["window_end"] for r in await pool.fetch("SELECT window_end FROM digests ORDER BY id")]
    assert ends == [utc(2026, 6, 3, 2, 15), utc(2026, 6, 4, 2, 30)]


async def test_quiet_hours_hold_immediate_and_move_daily(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    monday = utc(2026, 6, 1, 12)  # 14:00 Berlin
    acc = await factory.account(
        digest_frequency="daily",
        digest_hour=23,
        timezone="Europe/Berlin",
        digest_window_start=monday,
        next_digest_at=utc(2026, 6, 1, 21),
    )
    await pool.execute("INSERT INTO categories (key, default_frequency) VALUES ('alerts', 'immediate')")
    async with pool.acquire() as conn:
        with pytest.raises(InvalidPreferences) as refused:
            await apply_preferences(
                conn, acc["id"], {"quiet_hours": {"start": "22:00", "end": "22:00"}}, MEMBER, "api"
            )
        assert [e["field"] for e in refused.value.errors or []] == ["quiet_hours.end"]
        prefs = await apply_preferences(
            conn, acc["id"], {"quiet_hours": {"start": "22:00", "end": "07:00"}}, MEMBER, "api", now=monday
        )
    assert prefs["next_digest_at"] == utc(2026, 6, 2, 5)  # 23:00 is quiet: 07:00 Berlin
    # An alert at 23:30 Berlin is held until 07:00, and goes with the moved daily digest.
    alert = await factory.message(acc, category="alerts", created_at=utc(2026, 6, 1, 21, 30))
    news = await factory.message(acc, category="news", created_at=utc(2026, 6, 1, 13))
    async with pool.acquire() as conn:
        await messages_arrived(conn, [acc["id"]], settings, at=utc(2026, 6, 1, 21, 30))
    assert await pool.fetchval("SELECT next_digest_at FROM accounts WHERE id = $1", acc["id"]) == utc(
        2026, 6, 2, 5
    )
    t = utc(2026, 6, 1, 21, 30)
    while t < utc(2026, 6, 2, 5):
        assert (await run_pass(pool, redis, settings, t)).emails == 0
        t += timedelta(minutes=30)
    done = await run_pass(pool, redis, settings, utc(2026, 6, 2, 5))
    assert (done.emails, done.messages) == (1, 2)
    digest_ids = {
        await pool.fetchval("SELECT digest_id FROM message_digests WHERE message_id = $1", m["id"])
        for m in (alert, news)
    }
    assert len(digest_ids) == 1


async def test_immediate_outside_quiet_hours_is_not_held(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    acc: Any = await factory.account(
        digest_frequency="immediate",
        timezone="Europe/Berlin",
        next_digest_at=None,
        quiet_hours={"start": "22:00", "end": "07:00", "weekends": False},
    )
    await factory.message(acc, created_at=utc(2026, 6, 1, 10))
    async with pool.acquire() as conn:
        await messages_arrived(conn, [acc["id"]], settings, at=utc(2026, 6, 1, 10))
    due = await pool.fetchval("SELECT next_digest_at FROM accounts WHERE id = $1", acc["id"])
    assert due == utc(2026, 6, 1, 10) + timedelta(seconds=settings.immediate_coalesce_seconds)
