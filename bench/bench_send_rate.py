"""Service mail during a newsletter send, with and without `NOTIFIER_SEND_RATE`.

For each case, in a database of its own: N members (20,000 at scale 1) and one newsletter to them;
the Procfile's two worker processes (`worker --queues service,digest` and `bulk --queues bulk`)
with the case's send rate, delivering to Postfix's smtp-sink. Once the newsletter is sending,
service messages are posted through the API one every 0.1 s, each timed from `POST
/v1/service-messages` to its row recorded `sent` (polled every 5 ms, so slightly above POST →
SMTP 250). Cases: nothing else sending (the baseline), a newsletter with no rate, and a
newsletter under a rate of 50/s and of 200/s.

Also, per case, every e-mail sent during the sampling window (newsletter and service) divided by
the window: under a rate it must not exceed the rate, and should come close to it (no slot lost).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from arq import create_pool as create_redis_pool
from arq.connections import RedisSettings

from bench.bench_delivery import (
    bench_settings,
    fresh_database,
    percentile,
    service_latencies,
    wait_for_worker,
    worker_process,
)
from bench.bench_newsletter import BODY, add_members
from bench.common import BenchEnv, Figure, smtp_sink
from notifier import newsletter, queues
from notifier.api import auth
from notifier.app import create_app
from notifier.db import Q, create_pool

NAME = "send rate"
RATES = (50.0, 200.0)
GAP = 0.1  # seconds between two service messages
# Under a rate, service mail waits at most `send_rate.HORIZON` (0.25 s) behind newsletter slots;
# before, it waited behind two whole batches (9.2 s median, 12.4 s at most at 50/s).
GOALS = {"p50": "< 1,000 ms", "p99": "", "max": "< 2,000 ms"}


@dataclass
class Case:
    label: str
    latencies: list[float]
    sent_per_second: float  # every e-mail sent during the sampling window, per second
    left: int  # newsletter e-mails still unsent when the last sample finished


async def run_case(env: BenchEnv, port: int, n: int, samples: int, rate: float, *, send: bool) -> Case:
    """One case in a fresh database: service latencies while a newsletter of `n` sends (or, with
    `send` false, with nothing else sending) under send rate `rate` (0: none)."""
    async with fresh_database(env.database_url) as dsn:
        settings = bench_settings(dsn, env.redis_url, port)
        settings.send_rate = rate
        redis = await create_redis_pool(RedisSettings.from_dsn(env.redis_url))
        await redis.flushdb()
        pool = await create_pool(dsn, min_size=1, max_size=4)
        try:
            await add_members(pool, n)  # external ids m-1 … m-n
            await pool.execute(
                "INSERT INTO accounts (external_id, email, name) VALUES ('m-0', 'member0@example.com', 'M')"
            )
            _, key = await auth.create_key(pool, "bench", ["service"])
            headers = {"Authorization": f"Bearer {key}"}
            row = await pool.fetchrow(
                Q.insert_newsletter, "News {{ first_name }}", "", BODY, "markdown", "b", False
            )
            assert row is not None
            async with TestClient(TestServer(create_app(settings))) as client:
                with worker_process(settings, "service,digest"), worker_process(settings, "bulk"):
                    await wait_for_worker(redis, queues.SERVICE)
                    await wait_for_worker(redis, queues.BULK)
                    if send:
                        await newsletter.schedule(pool, row["id"], datetime.now(UTC), "bench")
                        await redis.enqueue_job("newsletter_start", row["id"], _queue_name=queues.BULK)
                        await wait_until_sending(pool, row["id"])
                    sent_before, start = await sent_count(pool), time.perf_counter()
                    latencies = await service_latencies(client, pool, headers, samples, GAP)
                    sent_after, window = await sent_count(pool), time.perf_counter() - start
                    left = await pool.fetchval(
                        "SELECT count(*) FROM emails WHERE newsletter_id = $1 AND status <> 'sent'", row["id"]
                    )
        finally:
            await pool.close()
            await redis.flushdb()
            await redis.aclose()
    label = (
        "nothing else sending"
        if not send
        else f"newsletter, rate {rate:,.0f}/s"
        if rate
        else "newsletter, no rate"
    )
    return Case(label, latencies, (sent_after - sent_before) / window, left if send else 0)


async def wait_until_sending(pool: asyncpg.Pool, newsletter_id: int) -> None:
    """Until the newsletter's first 20 e-mails are sent (both bulk batches claimed and pacing)."""
    for _ in range(1200):
        sent = await pool.fetchval(
            "SELECT count(*) FROM emails WHERE newsletter_id = $1 AND status = 'sent'", newsletter_id
        )
        if sent >= 20:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the newsletter did not start sending within 60 s")


async def sent_count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM emails WHERE status = 'sent'")
    return count


async def run(env: BenchEnv) -> list[Figure]:
    n = max(2000, int(20_000 * env.scale))
    samples = max(20, int(60 * env.scale))
    with smtp_sink() as port:
        idle = await run_case(env, port, n, samples, 0, send=False)
        cases = [await run_case(env, port, n, samples, 0, send=True)]
        for rate in RATES:
            cases.append(await run_case(env, port, n, samples, rate, send=True))
    for case in [idle, *cases]:
        print(
            f"send rate: {case.label}: service p50 {statistics.median(case.latencies) * 1000:,.0f} ms, "
            f"p99 {percentile(case.latencies, 99) * 1000:,.0f} ms, max {max(case.latencies) * 1000:,.0f} ms; "
            f"{case.sent_per_second:,.1f} e-mails/s sent meanwhile; {case.left:,} newsletter e-mails "
            "still unsent after the last sample",
            flush=True,
        )
    figures: list[Figure] = []
    for case in cases:
        for metric, value, base in (
            ("p50", statistics.median(case.latencies), statistics.median(idle.latencies)),
            ("p99", percentile(case.latencies, 99), percentile(idle.latencies, 99)),
            ("max", max(case.latencies), max(idle.latencies)),
        ):
            figures.append(
                Figure(
                    NAME,
                    f"service message POST → sent, {metric}, {n:,}-member {case.label}",
                    value * 1000,
                    "ms",
                    base * 1000,
                    "nothing else sending",
                    GOALS[metric] if case.label.startswith("newsletter, rate") else "",
                )
            )
    figures.append(
        Figure(
            NAME,
            f"e-mails sent per second while sampling, {cases[0].label} (what the machine could do)",
            cases[0].sent_per_second,
            "msg/s",
        )
    )
    for case, rate in zip(cases[1:], RATES, strict=True):
        figures.append(
            Figure(
                NAME,
                f"e-mails sent per second while sampling, {case.label}",
                case.sent_per_second,
                "msg/s",
                rate,
                "the configured rate",
                "≈ 1.0 (never above but for counting at the edges)",
            )
        )
    return figures
