"""More than one worker process: 1, 2 and 4 bulk workers on one newsletter, then 1, 2 and 4 digest
workers on one digest pass, each to Postfix's smtp-sink with default settings. For each: the
throughput, and exactly once, counted at both ends: every recipient recorded `sent` once (one row,
one `sent` event) and the sink's own counter grown by exactly the audience.

Newsletter of 100,000 × scale members (each worker count sends its own newsletter to the same
members), digests for 10,000 × scale accounts with 20 messages each (seeded anew for each count).
The machine has 2 cores shared with PostgreSQL, Redis and the sink: more processes than cores
show what contention costs, not a scale-out. `python -m bench workers [--scale 0.2]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from arq import create_pool as create_redis_pool
from arq.connections import RedisSettings

from bench import bench_digest
from bench.bench_delivery import bench_settings, fresh_database, wait_for_worker, worker_process
from bench.bench_newsletter import BODY, add_members, exactly_once, send_newsletter
from bench.common import BenchEnv, Figure, Sink, counting_smtp_sink
from notifier import queues
from notifier.db import Q, create_pool
from notifier.digest import run_pass
from notifier.settings import Settings

NAME = "workers"
COUNTS = (1, 2, 4)


async def digest_pass(
    pool: asyncpg.Pool, settings: Settings, sink: Sink, accounts: int, workers: int
) -> tuple[float, str | None]:
    """Seed `accounts` due accounts, run one pass with `workers` digest worker processes: (seconds
    from the pass's start to the last digest recorded sent, what broke exactly-once or None)."""
    await bench_digest.seed(pool, accounts)
    redis = await create_redis_pool(RedisSettings.from_dsn(settings.redis_url or ""))
    accepted_before = sink.delivered()
    try:
        with contextlib.ExitStack() as stack:
            procs = [stack.enter_context(worker_process(settings, "digest")) for _ in range(workers)]
            for _ in procs:
                await wait_for_worker(redis, queues.DIGEST)
            start = time.perf_counter()
            result = await run_pass(pool, redis, settings, bench_digest.DUE)
            await bench_digest.wait_until_sent(pool, accounts)
            elapsed = time.perf_counter() - start
    finally:
        await redis.aclose()
    await asyncio.sleep(0.5)
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM emails WHERE kind = 'digest' AND status = 'sent') AS sent,
                  (SELECT count(*) FROM events e JOIN emails m ON m.id = e.email_id
                   WHERE m.kind = 'digest' AND e.kind = 'sent') AS events,
                  (SELECT count(*) FROM digests) AS digests,
                  (SELECT count(DISTINCT account_id) FROM digests) AS accounts,
                  (SELECT count(*) FROM messages WHERE id IN (SELECT message_id FROM message_digests)) AS digested"""
    )
    assert row is not None
    accepted = sink.delivered() - accepted_before
    expected = (accounts, accounts, accounts, accounts, accounts * bench_digest.MESSAGES_PER_ACCOUNT)
    seen = (row["sent"], row["events"], row["digests"], row["accounts"], row["digested"])
    wrong = None
    if seen != expected or accepted != accounts or result.emails != accounts:
        wrong = f"sent/events/digests/accounts/digested {seen}, expected {expected}; sink {accepted}"
    return elapsed, wrong


async def run(env: BenchEnv) -> list[Figure]:
    n = max(500, int(100_000 * env.scale))
    accounts = max(100, int(10_000 * env.scale))
    figures: list[Figure] = []
    newsletter_rates: dict[int, float] = {}
    digest_rates: dict[int, float] = {}
    with counting_smtp_sink() as sink:
        async with fresh_database(env.database_url) as dsn:
            settings = bench_settings(dsn, env.redis_url, sink.port, defaults=True)
            redis = await create_redis_pool(RedisSettings.from_dsn(env.redis_url))
            await redis.flushdb()
            pool = await create_pool(dsn, min_size=1, max_size=4)
            try:
                await add_members(pool, n)
                for workers in COUNTS:
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
                    elapsed, _, accepted, cpu, _ = await send_newsletter(
                        pool, redis, settings, sink, row["id"], workers
                    )
                    wrong = await exactly_once(pool, row["id"], n)
                    if wrong or accepted != n:
                        env.notes.append(
                            f"workers: newsletter, {workers} processes, NOT exactly once: {wrong}, sink {accepted}"
                        )
                    else:
                        env.notes.append(
                            f"workers: newsletter, {workers} processes: exactly once ({n:,} rows, events, at the sink)"
                        )
                    # Each process's share of the work: a process that took no deliver job spends ~0.
                    shares = " / ".join(f"{c:.1f}" for c in cpu)
                    env.notes.append(
                        f"workers: newsletter, {workers} processes: CPU seconds per process {shares}"
                    )
                    newsletter_rates[workers] = n / elapsed
                for workers in COUNTS:
                    elapsed, wrong = await digest_pass(pool, settings, sink, accounts, workers)
                    env.notes.append(
                        f"workers: digest pass, {workers} processes: "
                        + (
                            f"NOT exactly once: {wrong}"
                            if wrong
                            else f"exactly once ({accounts:,} digests, rows, events, at the sink)"
                        )
                    )
                    digest_rates[workers] = accounts / elapsed
            finally:
                await pool.close()
                await redis.flushdb()
                await redis.aclose()
    for workers in COUNTS:
        figures.append(
            Figure(
                NAME,
                f"{n:,}-member newsletter, {workers} bulk worker process(es)",
                newsletter_rates[workers],
                "msg/s",
                newsletter_rates[1],
                "1 process",
            )
        )
    for workers in COUNTS:
        figures.append(
            Figure(
                NAME,
                f"digest pass, {accounts:,} accounts × 20, {workers} digest worker process(es)",
                digest_rates[workers],
                "msg/s",
                digest_rates[1],
                "1 process",
            )
        )
    return figures
