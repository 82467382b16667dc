"""Newsletters: one newsletter to N members (100,000 at scale 1) delivered to Postfix's smtp-sink.

Timed from the send (the same two steps as `POST /v1/newsletters/{id}/send`: schedule for now and
enqueue `newsletter_start`) to the moment no recipient row is queued or sending, with one bulk
worker process (`notifier worker --queues bulk`, as the Procfile runs it). That includes the
fan-out (one INSERT … SELECT), rendering (shared parts once, personal parts per recipient),
building, sending and recording. Also the worker process's peak RSS (VmHWM).

Baseline, same run: aiosmtplib sending the same pre-built bytes over the same number of
connections with no database (`bench.bench_delivery.baseline_send`), half of N before the
newsletter and half after (the machine is shared; the mean of the two rates is compared).
Also the fan-out alone: a second newsletter's audience frozen, timed in-process.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from arq import create_pool as create_redis_pool
from arq.connections import RedisSettings

from bench.bench_delivery import (
    CONNECTIONS,
    baseline_send,
    bench_settings,
    fresh_database,
    wait_for_worker,
    worker_process,
)
from bench.common import BenchEnv, Figure, smtp_sink
from notifier import newsletter, queues
from notifier.db import Q, create_pool
from notifier.mail import compose
from notifier.mail.delivery import Delivery
from notifier.mail.render import OutgoingEmail
from notifier.mail.smtp import SMTPSender
from workers import jobs

NAME = "newsletter"
BODY = """# Our November newsletter, {{ first_name }}

Dear {{ name }},

A lot happened this month. Here is what changed in the **member registry**, on the blogs and in
the organisation. [Read the full report](https://example.org/report/2026-11).

## Events

- The annual meeting moves to *December 12*.
- Two new community blogs opened.
- The registry now answers in under a second.

## From the board

We thank every member who answered the survey: 4,210 answers, more than ever. The results and
what we will do about them are on the website.
"""


async def add_members(pool: asyncpg.Pool, n: int) -> None:
    """n opted-in members in one statement."""
    await pool.execute(
        """INSERT INTO accounts (external_id, email, name, newsletter)
           SELECT 'm-' || i, 'reader' || i || '@example.com', 'Reader ' || i, true
           FROM generate_series(1, $1) AS i""",
        n,
    )


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


async def wait_until_done(pool: asyncpg.Pool, newsletter_id: int, start: float, limit: float) -> float:
    """Seconds from `start` until the audience is frozen and no row is queued or sending."""
    while time.perf_counter() - start < limit:
        row = await pool.fetchrow(Q.get_newsletter, newsletter_id)
        if row is not None and row["status"] in ("sending", "sent"):
            figures = await newsletter.figures(pool, newsletter_id)
            if figures["pending"] == 0:
                return time.perf_counter() - start
        await asyncio.sleep(0.1)
    raise TimeoutError(f"newsletter {newsletter_id} not delivered after {limit} s")


async def run(env: BenchEnv) -> list[Figure]:
    n = max(500, int(100_000 * env.scale))
    with smtp_sink() as port:
        async with fresh_database(env.database_url) as dsn:
            settings = bench_settings(dsn, env.redis_url, port)
            redis = await create_redis_pool(RedisSettings.from_dsn(env.redis_url))
            await redis.flushdb()
            pool = await create_pool(dsn, min_size=1, max_size=4)
            try:
                await add_members(pool, n)
                row = await pool.fetchrow(
                    Q.insert_newsletter,
                    "News for {{ first_name }}",
                    "This month",
                    BODY,
                    "markdown",
                    "bench",
                    False,
                )
                assert row is not None
                newsletter_id = row["id"]

                # The exact bytes the worker sends to member 1, for the baseline.
                delivery = Delivery(settings, pool, SMTPSender(settings), renderers=jobs.renderers(settings))
                email = OutgoingEmail(
                    1, "newsletter", 1, "reader1@example.com", "newsletter", "News", {"name": "Reader 1"},
                    newsletter_id=newsletter_id,
                )  # fmt: skip
                await delivery.renderers.for_kind("newsletter").prepare(pool, [email])
                _, envelope = delivery.build_message(email, compose.format_date(datetime.now(UTC)), None)
                # The machine is shared: the baseline runs half before and half after the
                # newsletter, and the mean of the two rates is the figure compared against.
                before = await baseline_send(port, envelope.message, n // 2)

                with worker_process(settings, "bulk") as proc:
                    await wait_for_worker(redis, queues.BULK)
                    start = time.perf_counter()
                    await newsletter.schedule(pool, newsletter_id, datetime.now(UTC), "bench")
                    await redis.enqueue_job("newsletter_start", newsletter_id, _queue_name=queues.BULK)
                    elapsed = await wait_until_done(pool, newsletter_id, start, limit=1800)
                    rss = peak_rss_mb(proc.pid)
                after = await baseline_send(port, envelope.message, n // 2)
                base_rate = (before + after) / 2
                # The fan-out alone: a second newsletter's audience frozen in one statement.
                second = await pool.fetchrow(
                    Q.insert_newsletter, "Again", "", "Again", "markdown", "bench", False
                )
                assert second is not None
                fan_start = time.perf_counter()
                await newsletter.start(pool, settings, second["id"])
                fan_out = time.perf_counter() - fan_start
                await newsletter.cancel(pool, second["id"], "bench")
                figures = await newsletter.figures(pool, newsletter_id)
                errors = await pool.fetch(
                    "SELECT last_error, count(*) FROM emails WHERE status = 'failed' GROUP BY 1 LIMIT 5"
                )
                if figures["sent"] != n:
                    print(f"newsletter: not all sent: {figures}; errors: {[tuple(e) for e in errors]}")
            finally:
                await pool.close()
                await redis.flushdb()
                await redis.aclose()
    rate = n / elapsed
    print(
        f"newsletter: {n:,} recipients in {elapsed:.1f} s; worker peak RSS {rss:.0f} MB; baseline "
        f"{before:,.0f} msg/s before and {after:,.0f} msg/s after; fan-out {fan_out:.2f} s",
        flush=True,
    )
    return [
        Figure(
            NAME,
            f"{n:,}-member newsletter, send → last 250, 1 bulk worker, {CONNECTIONS} connections",
            rate,
            "msg/s",
            base_rate,
            "aiosmtplib alone, same bytes",
            "ratio ≥ 0.6",
        ),
        Figure(NAME, "bulk worker peak RSS (VmHWM)", rss, "MB", goal="< 250 MB"),
        Figure(NAME, f"fan-out: audience of {n:,} frozen (one INSERT … SELECT)", fan_out, "s"),
    ]
