"""Webhooks out: events to a receiver on loopback, beside a bare signed POST loop.

A receiver process (aiohttp, 204 to every POST) listens on 127.0.0.1.
1. Backlog: N events (10,000 at scale 1, 10 per member) already written; one `webhooks.run`
   in this process fans them out and delivers them all. Events per second, and p99 from each
   event's row to its delivery recorded (dominated by the queue ahead of it).
2. Stream: the same number of events written at about 1,000 per second while a real worker
   process (`notifier worker --queues service`, its webhook cron every 5 seconds) delivers them.
   p50 / p99 from the event's row to its delivery recorded: what a receiver waits.
3. Baseline, same run: the same payloads signed with `standardwebhooks` and POSTed with aiohttp
   at the same concurrency (20), no database. Posts per second and p99 per POST.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime

import aiohttp
import asyncpg

from bench.bench_delivery import bench_settings, worker_process
from bench.common import BenchEnv, Figure
from notifier import webhooks
from notifier.db import create_pool, scratch_database
from notifier.embedded import free_port
from notifier.settings import Settings
from notifier.webhook_client import HTTPPoster

NAME = "webhooks"
CONCURRENCY = 20  # webhooks.run's default
MEMBERS_EVERY = 10  # events per member


def receiver_main(port: int) -> None:
    """The receiver process: 204 to every POST on /hook."""
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def _wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise SystemExit("the webhook receiver did not start")


def _p(values: list[float], q: int) -> float:
    """The q-th percentile."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def _members(pool: asyncpg.Pool, n: int) -> list[int]:
    rows = await pool.fetch(
        "INSERT INTO accounts (external_id, email, name) "
        "SELECT 'b-' || i, 'b' || i || '@example.com', 'Bench ' || i FROM generate_series(1, $1) i RETURNING id",
        n,
    )
    return [r["id"] for r in rows]


async def _write_events(pool: asyncpg.Pool, members: list[int], count: int, start: int) -> None:
    ids = [members[(start + i) % len(members)] for i in range(count)]
    await pool.execute("INSERT INTO events (kind, account_id) SELECT 'sent', unnest($1::bigint[])", ids)


async def _latencies(pool: asyncpg.Pool) -> tuple[list[float], float]:
    rows = await pool.fetch(
        "SELECT extract(epoch FROM delivered_at - occurred_at) AS lag, delivered_at, occurred_at "
        "FROM webhook_deliveries WHERE status = 'delivered'"
    )
    lags = [float(r["lag"]) * 1000 for r in rows]
    span = (max(r["delivered_at"] for r in rows) - min(r["occurred_at"] for r in rows)).total_seconds()
    return lags, span


async def _wait_delivered(pool: asyncpg.Pool, n: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'") >= n:
            return
        await asyncio.sleep(0.2)
    raise SystemExit("webhooks were not all delivered in time")


async def _baseline(url: str, payloads: int) -> tuple[float, float]:
    """Bare loop: sign and POST `payloads` events at CONCURRENCY; (posts/s, p99 ms)."""
    secret = webhooks.new_secret()
    times: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(payloads):
        queue.put_nowait(i)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                payload = {
                    "type": "email.sent",
                    "timestamp": datetime.now(UTC).isoformat(),
                    "data": {"email_id": i},
                }
                t0 = time.perf_counter()
                body, headers = webhooks.signed_request(secret, i, payload, datetime.now(UTC))
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 204
                times.append((time.perf_counter() - t0) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - start
    return payloads / elapsed, _p(times, 99)


def _settings(dsn: str, redis_url: str) -> Settings:
    """The delivery benchmark's settings (no mail is sent here), loopback receivers allowed."""
    return bench_settings(dsn, redis_url, smtp_port=25).model_copy(update={"webhooks_allow_private": True})


async def run(env: BenchEnv) -> list[Figure]:
    n = max(100, int(10_000 * env.scale))
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-c", f"from bench.bench_webhooks import receiver_main; receiver_main({port})"
    )
    try:
        await _wait_listening(port)
        base_rate, base_p99 = await _baseline(url, n)

        # 1. backlog, in this process
        async with scratch_database(env.database_url, "notifier_bench_webhooks") as dsn:
            settings = _settings(dsn, env.redis_url)
            pool = await create_pool(dsn, min_size=1, max_size=6)
            poster = HTTPPoster(settings)
            try:
                await webhooks.create_endpoint(pool, settings, url, ["email.sent"], "bench", "bench")
                members = await _members(pool, n // MEMBERS_EVERY)
                await _write_events(pool, members, n, 0)
                start = time.perf_counter()
                while (
                    await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'")
                    < n
                ):
                    await webhooks.run(pool, settings, poster, budget=600)
                backlog_rate = n / (time.perf_counter() - start)
                backlog_lags, _ = await _latencies(pool)
            finally:
                await poster.close()
                await pool.close()

        # 2. stream, a real worker process
        async with scratch_database(env.database_url, "notifier_bench_webhooks") as dsn:
            settings = _settings(dsn, env.redis_url)
            pool = await create_pool(dsn, min_size=1, max_size=6)
            try:
                await webhooks.create_endpoint(pool, settings, url, ["email.sent"], "bench", "bench")
                members = await _members(pool, n // MEMBERS_EVERY)
                with worker_process(settings, "service"):
                    await asyncio.sleep(2)  # the worker starts
                    batch = 50
                    for start_at in range(0, n, batch):
                        await _write_events(pool, members, min(batch, n - start_at), start_at)
                        await asyncio.sleep(batch / 1000)
                    await _wait_delivered(pool, n, 300)
                stream_lags, stream_span = await _latencies(pool)
            finally:
                await pool.close()
    finally:
        receiver.terminate()
        await receiver.wait()

    baseline = "bare signed POST loop, aiohttp, no database"
    return [
        Figure(f"{NAME} backlog", f"events/s ({n:,} written, then delivered)", backlog_rate, "ev/s",
               base_rate, baseline),
        Figure(f"{NAME} backlog", "p99 event -> delivery", _p(backlog_lags, 99), "ms", base_p99,
               "bare loop: p99 per POST"),
        Figure(f"{NAME} stream", "events/s (written at ~1,000/s)", n / stream_span, "ev/s", base_rate, baseline),
        Figure(f"{NAME} stream", "p50 event -> delivery", _p(stream_lags, 50), "ms", goal="cron every 5 s"),
        Figure(f"{NAME} stream", "p99 event -> delivery", _p(stream_lags, 99), "ms", base_p99,
               "bare loop: p99 per POST"),
    ]  # fmt: skip
