"""Local-time sends and click redirects: what they add, against a baseline in the same run.

- Freeze: 100,000 opted-in members (scale 1) spread over 24 time zones. A local-time send's start
  (the fan-out giving every row its due instant, `DueInstants`) is timed beside a plain start of
  the same audience, once before and once after; the mean of the two plain starts is the baseline.
- Release: one `release_due` pass over all the waiting rows (batches of 5,000 under SKIP LOCKED),
  beside one bare `UPDATE` that turns the same rows back to waiting.
- Clicks: `GET /c/{newsletter}/{link}` (one upsert and a 302) against `GET /healthz` (no database)
  on the same in-process server, 10 requests in flight.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer
from arq import create_pool as create_redis_pool
from arq.connections import RedisSettings

from bench.bench_delivery import bench_settings, fresh_database
from bench.bench_newsletter import add_members
from bench.common import BenchEnv, Figure
from notifier import newsletter, newsletter_local_time
from notifier.app import create_app
from notifier.db import Q, create_pool
from notifier.newsletter_local_time import LocalSend
from notifier.settings import Settings

NAME = "local-time"
ZONES = [
    "Pacific/Kiritimati", "Pacific/Auckland", "Australia/Lord_Howe", "Australia/Sydney", "Asia/Tokyo",
    "Asia/Shanghai", "Asia/Kathmandu", "Asia/Kolkata", "Asia/Dubai", "Europe/Moscow", "Europe/Athens",
    "Europe/Berlin", "Europe/London", "UTC", "Atlantic/Azores", "America/Sao_Paulo", "America/Halifax",
    "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Anchorage",
    "Pacific/Honolulu", "Pacific/Pago_Pago",
]  # fmt: skip
BODY = "Hello {{ first_name }}, read [the report](https://example.org/report) or [the shop](https://shop.example.org/)."


async def _draft(pool: asyncpg.Pool, track_clicks: bool = False) -> int:
    row = await pool.fetchrow(
        Q.insert_newsletter, "News {{ first_name }}", "", BODY, "markdown", "bench", track_clicks
    )
    assert row is not None
    return int(row["id"])


async def _timed_start(pool: asyncpg.Pool, settings: Settings, local: LocalSend | None) -> float:
    """Seconds to start a new newsletter to everyone (cancelled afterwards unless `local`)."""
    newsletter_id = await _draft(pool)
    await newsletter.schedule(pool, newsletter_id, datetime.now(UTC), "bench", local)
    start = time.perf_counter()
    await newsletter.start(pool, settings, newsletter_id)
    elapsed = time.perf_counter() - start
    if local is None:
        await pool.execute("DELETE FROM emails WHERE newsletter_id = $1", newsletter_id)
    return elapsed


async def _requests_per_second(base: str, path: str, n: int, in_flight: int = 10) -> float:
    async with aiohttp.ClientSession() as session:
        queue = iter(range(n))

        async def one() -> None:
            for _ in queue:
                async with session.get(base + path, allow_redirects=False) as resp:
                    assert resp.status in (200, 302), resp.status
                    await resp.read()

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(in_flight)))
        return n / (time.perf_counter() - start)


async def run(env: BenchEnv) -> list[Figure]:
    n = max(1000, int(100_000 * env.scale))
    clicks = max(500, int(5_000 * env.scale))
    async with fresh_database(env.database_url) as dsn:
        settings = bench_settings(dsn, env.redis_url, 25)
        redis = await create_redis_pool(RedisSettings.from_dsn(env.redis_url))
        pool = await create_pool(dsn, min_size=1, max_size=4)
        try:
            await add_members(pool, n)
            await pool.execute("UPDATE accounts SET timezone = ($1::text[])[1 + id % $2]", ZONES, len(ZONES))
            send = LocalSend(
                datetime.now(UTC).time().replace(second=0, microsecond=0), datetime.now(UTC).date()
            )
            send = LocalSend(send.at, send.day + timedelta(days=3))
            plain_before = await _timed_start(pool, settings, None)
            local = await _timed_start(pool, settings, send)
            plain_after = await _timed_start(pool, settings, None)
            plain = (plain_before + plain_after) / 2

            everyone = datetime.now(UTC) + timedelta(days=5)
            start = time.perf_counter()
            released = await newsletter_local_time.release_due(pool, redis, everyone)
            release = time.perf_counter() - start
            assert released.total == n, released
            start = time.perf_counter()
            await pool.execute("UPDATE emails SET status = 'waiting' WHERE status = 'queued'")
            bare = time.perf_counter() - start

            counted = await _draft(pool, track_clicks=True)
            await newsletter.start(pool, settings, counted)
            server = TestServer(create_app(settings))
            await server.start_server()
            try:
                base = str(server.make_url(""))
                health_before = await _requests_per_second(base, "/healthz", clicks)
                click_rate = await _requests_per_second(base, f"/c/{counted}/0", clicks)
                health_after = await _requests_per_second(base, "/healthz", clicks)
            finally:
                await server.close()
            counted_clicks = await pool.fetchval("SELECT sum(clicks) FROM link_clicks")
            assert counted_clicks == clicks, counted_clicks
        finally:
            await pool.close()
            await redis.aclose()
    health = (health_before + health_after) / 2
    print(
        f"local-time: start {local:.2f} s vs plain {plain_before:.2f}/{plain_after:.2f} s; release {release:.2f} s "
        f"vs bare UPDATE {bare:.2f} s; clicks {click_rate:,.0f}/s vs healthz {health_before:,.0f}/{health_after:,.0f}/s",
        flush=True,
    )
    return [
        Figure(NAME, f"start of a {n:,}-member send at local time ({len(ZONES)} zones)", local, "s", plain,
               "plain start, same audience"),
        Figure(NAME, f"release pass, {n:,} rows", n / release, "rows/s", n / bare, "one bare UPDATE"),
        Figure(NAME, "GET /c/{newsletter}/{link} (count + 302), 10 in flight", click_rate, "req/s", health,
               "GET /healthz, same server"),
    ]  # fmt: skip
