"""Delivery: the outbox end to end against Postfix's smtp-sink, beside aiosmtplib alone.

1. Message building: `notifier.mail.compose.build` against Python's `email` package, same content.
2. Throughput: N e-mails (20,000 at scale 1) queued in the outbox and delivered by one bulk worker
   process (`notifier worker --queues bulk`, as the Procfile runs it), timed from the doorbell to
   the last row recorded `sent`, twice. Baselines, same run, before and after: aiosmtplib's
   `sendmail` sending the same pre-built bytes over the same number of connections with no database,
   and the worker's own SMTP transaction alone. Means are compared.
3. Service latency: `POST /v1/service-messages` to the row recorded `sent` (polled every 5 ms, so an
   over-estimate of POST -> SMTP 250), with a service worker process — first with nothing else
   running (the baseline), then while the bulk worker sends a newsletter-sized backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from arq import create_pool as create_redis_pool
from arq.connections import RedisSettings
from pydantic import SecretStr

from bench.common import BenchEnv, Figure, smtp_sink
from notifier import queues
from notifier.api import auth
from notifier.app import create_app
from notifier.db import create_pool, scratch_database
from notifier.mail import compose, outbox
from notifier.mail.delivery import Delivery, context_for
from notifier.mail.render import OutgoingEmail
from notifier.mail.smtp import Envelope, SMTPSender, _transaction
from notifier.settings import Settings
from workers import jobs

CONNECTIONS = 4
NAME = "delivery"


def fresh_database(admin_url: str) -> contextlib.AbstractAsyncContextManager[str]:
    """A migrated database of its own, dropped afterwards."""
    return scratch_database(admin_url, "notifier_bench_delivery")


def bench_settings(dsn: str, redis_url: str, smtp_port: int, *, defaults: bool = False) -> Settings:
    """Settings for a bench worker; with `defaults`, the SMTP pool and pipelining a user gets."""
    settings = Settings(
        env="test",
        database_url=dsn,
        redis_url=redis_url,
        secret_key=SecretStr("bench-secret-key-not-for-production"),
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        public_url="https://notifier.bench",
        service_from="Example Org <service@example.org>",
        newsletter_from="Example News <news@example.org>",
        postal_address="1 Example Street, Exampletown",
        db_pool_min=1,
        db_pool_max=6,
        log_level="WARNING",
    )
    return settings if defaults else settings.model_copy(update={"smtp_pool_size": CONNECTIONS})


@contextlib.contextmanager
def worker_process(settings: Settings, queue_names: str) -> Iterator[subprocess.Popen[bytes]]:
    """`notifier worker --queues ...` in its own process, configured like the bench settings."""
    env = {**os.environ, **settings.to_env(), "NOTIFIER_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "notifier.cli", "worker", "--queues", queue_names],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sample_email(i: int) -> OutgoingEmail:
    return OutgoingEmail(
        id=i,
        kind="newsletter",
        account_id=i,
        to_address=f"reader{i}@example.com",
        template="service/welcome",
        subject="Our November newsletter — what changed",
        context={"account": {"name": f"Reader {i}"}},
    )


# --- 1. building ---------------------------------------------------------------------------------


def bench_build(settings: Settings) -> list[Figure]:
    renderers = jobs.renderers(settings)
    context, headers = context_for(settings, sample_email(1))
    rendered = renderers.for_kind("newsletter").render(sample_email(1), context)
    date = compose.format_date(datetime.now(UTC))
    n = 3000

    start = time.perf_counter()
    for i in range(n):
        compose.build(
            from_=compose.mailbox("Example News", "news@example.org"),
            to=compose.mailbox(None, f"reader{i}@example.com"),
            subject=rendered.subject,
            date=date,
            message_id=compose.message_id(i, "example.org", b"bench"),
            text=rendered.text,
            html=rendered.html,
            headers=headers,
        )
    ours = (time.perf_counter() - start) / n * 1e6

    start = time.perf_counter()
    for i in range(n):
        msg = EmailMessage()
        msg["From"] = "Example News <news@example.org>"
        msg["To"] = f"reader{i}@example.com"
        msg["Subject"] = rendered.subject
        msg["Date"] = date
        msg["Message-ID"] = compose.message_id(i, "example.org", b"bench")
        for name, value in headers:
            msg[name] = value
        msg.set_content(rendered.text)
        msg.add_alternative(rendered.html, subtype="html")
        msg.as_bytes()
    theirs = (time.perf_counter() - start) / n * 1e6

    start = time.perf_counter()
    for i in range(n):
        email = sample_email(i)
        renderers.for_kind("newsletter").render(email, context_for(settings, email)[0])
    render_us = (time.perf_counter() - start) / n * 1e6
    return [
        Figure(
            NAME, "build one message (notifier.mail.compose)", ours, "µs", theirs, "email package", "≤ 0.2"
        ),
        Figure(
            NAME,
            "render (Jinja + css-inline) and build one e-mail",
            render_us + ours,
            "µs",
            theirs,
            "email package build alone",
        ),
    ]


# --- 2. throughput -------------------------------------------------------------------------------


async def baseline_send(port: int, message: bytes, n: int, *, raw: bool = False) -> float:
    """aiosmtplib alone: n messages over CONNECTIONS connections; messages per second. With `raw`,
    the worker's own SMTP transaction (`notifier.mail.smtp._transaction`) instead of `sendmail`."""
    per_connection = [n // CONNECTIONS + (1 if i < n % CONNECTIONS else 0) for i in range(CONNECTIONS)]

    async def one(count: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await client.connect()
        for i in range(count):
            if raw:
                await _transaction(client, Envelope("news@example.org", (f"reader{i}@example.com",), message))
            else:
                await client.sendmail("news@example.org", [f"reader{i}@example.com"], message)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in per_connection))
    return n / (time.perf_counter() - start)


async def queue_bulk(pool: asyncpg.Pool, n: int, newsletter_id: int) -> list[int]:
    rows = [
        outbox.NewEmail(
            kind="newsletter",
            to_address=f"reader{i}@example.com",
            account_id=None,
            template="service/welcome",
            subject="Our November newsletter — what changed",
            context={"account": {"name": f"Reader {i}"}},
            newsletter_id=None,
        )
        for i in range(n)
    ]
    ids: list[int] = []
    async with pool.acquire() as conn:
        for start in range(0, n, 5000):
            ids += await outbox.add_many(conn, rows[start : start + 5000])
    return ids


async def wait_until_sent(pool: asyncpg.Pool, ids: list[int], start: float, limit: float) -> float:
    """Seconds from `start` (perf_counter) until every id is sent (polling every 100 ms)."""
    first, last = min(ids), max(ids)
    while time.perf_counter() - start < limit:
        left = await pool.fetchval(
            "SELECT count(*) FROM emails WHERE id BETWEEN $1 AND $2 AND status <> 'sent'", first, last
        )
        if left == 0:
            return time.perf_counter() - start
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{left} of {len(ids)} e-mails not sent after {limit} s")


async def wait_for_worker(redis: Any, queue: str) -> None:
    """Until the worker process takes jobs from `queue` (a deliver job it runs and finishes)."""
    job = await redis.enqueue_job(queues.DELIVER_JOB, _queue_name=queue)
    if job is None:
        return
    for _ in range(300):
        if await redis.exists(f"arq:result:{job.job_id}"):
            return
        await asyncio.sleep(0.05)


# --- 3. service latency --------------------------------------------------------------------------


async def service_latencies(
    client: TestClient[Any, Any], pool: asyncpg.Pool, headers: dict[str, str], n: int, gap: float
) -> list[float]:
    latencies: list[float] = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        resp = await client.post(
            "/v1/service-messages", json={"account": f"m-{i % 10}", "template": "welcome"}, headers=headers
        )
        assert resp.status == 202, await resp.text()
        email_id = (await resp.json())["id"]
        while await pool.fetchval("SELECT status FROM emails WHERE id = $1", email_id) != "sent":
            await asyncio.sleep(0.005)
            if time.perf_counter() - start > 60:
                raise TimeoutError("a service message was not sent within 60 s")
        latencies.append(time.perf_counter() - start)

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(gap)
    await asyncio.gather(*tasks)
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(env: BenchEnv) -> list[Figure]:
    n = max(200, int(20_000 * env.scale))
    figures: list[Figure] = []
    with smtp_sink() as port:
        async with fresh_database(env.database_url) as dsn:
            settings = bench_settings(dsn, env.redis_url, port)
            figures += bench_build(settings)
            redis = await create_redis_pool(RedisSettings.from_dsn(env.redis_url))
            await redis.flushdb()
            pool = await create_pool(dsn, min_size=1, max_size=6)
            try:
                # The exact bytes the worker would send, for the baseline.
                delivery = Delivery(settings, pool, SMTPSender(settings), renderers=jobs.renderers(settings))
                email = sample_email(1)
                _, envelope = delivery.build_message(email, compose.format_date(datetime.now(UTC)), None)
                # The machine is shared: interleave the runs (baselines, outbox twice, baselines
                # again) and compare the means, so a burst of load hits both sides.
                base_runs = [await baseline_send(port, envelope.message, n)]
                raw_runs = [await baseline_send(port, envelope.message, n, raw=True)]
                outbox_runs = []
                with worker_process(settings, "bulk"):
                    # Ready first: the readiness probe is itself a deliver job, so queue rows after it.
                    await wait_for_worker(redis, queues.BULK)
                    for _ in range(2):
                        ids = await queue_bulk(pool, n, 0)
                        start = time.perf_counter()
                        await outbox.ring(redis, queues.BULK, count=len(ids))
                        elapsed = await wait_until_sent(pool, ids, start, limit=600)
                        outbox_runs.append(n / elapsed)
                raw_runs.append(await baseline_send(port, envelope.message, n, raw=True))
                base_runs.append(await baseline_send(port, envelope.message, n))
                print(
                    "delivery runs (msg/s): sendmail baseline "
                    + ", ".join(f"{r:,.0f}" for r in base_runs)
                    + "; raw baseline "
                    + ", ".join(f"{r:,.0f}" for r in raw_runs)
                    + "; outbox "
                    + ", ".join(f"{r:,.0f}" for r in outbox_runs),
                    flush=True,
                )
                base_rate, raw_rate, rate = (statistics.mean(r) for r in (base_runs, raw_runs, outbox_runs))
                figures.append(
                    Figure(
                        NAME,
                        f"{n:,} outbox e-mails to smtp-sink, 1 bulk worker, {CONNECTIONS} connections (mean of 2)",
                        rate,
                        "msg/s",
                        base_rate,
                        "aiosmtplib alone, same bytes",
                        "ratio ≥ 0.6",
                    )
                )

                figures.append(
                    Figure(
                        NAME,
                        "the same outbox run, against the worker's SMTP transaction alone",
                        rate,
                        "msg/s",
                        raw_rate,
                        "MAIL/RCPT/DATA alone, same bytes",
                        "(pipeline overhead)",
                    )
                )

                # Service latency: idle, then during a bulk send (separate worker processes).
                for i in range(10):
                    await pool.execute(
                        "INSERT INTO accounts (external_id, email, name) VALUES ($1, $2, $3)",
                        f"m-{i}",
                        f"member{i}@example.com",
                        f"Member {i}",
                    )
                _, key = await auth.create_key(pool, "bench", ["service"])
                headers = {"Authorization": f"Bearer {key}"}
                samples = max(20, int(100 * env.scale))
                async with TestClient(TestServer(create_app(settings))) as client:
                    with worker_process(settings, "service,digest"), worker_process(settings, "bulk"):
                        await wait_for_worker(redis, queues.SERVICE)
                        await wait_for_worker(redis, queues.BULK)
                        idle = await service_latencies(client, pool, headers, samples, 0.05)
                        backlog = await queue_bulk(pool, n, 0)
                        await outbox.ring(redis, queues.BULK, count=len(backlog))
                        await asyncio.sleep(1.0)  # the bulk worker is busy by now
                        busy = await service_latencies(client, pool, headers, samples, 0.1)
                        still_queued = await pool.fetchval(
                            "SELECT count(*) FROM emails WHERE queue = $1 AND status <> 'sent'", queues.BULK
                        )
                print(
                    f"delivery: {still_queued:,} bulk e-mails were still unsent when the last service"
                    " sample finished (the backlog was really there)",
                    flush=True,
                )
                figures.append(
                    Figure(
                        NAME,
                        "service message POST → sent, p50, during bulk send",
                        statistics.median(busy) * 1000,
                        "ms",
                        statistics.median(idle) * 1000,
                        "idle",
                    )
                )
                figures.append(
                    Figure(
                        NAME,
                        "service message POST → sent, p99, during bulk send",
                        percentile(busy, 99) * 1000,
                        "ms",
                        percentile(idle, 99) * 1000,
                        "idle",
                        "< 2,000 ms",
                    )
                )
            finally:
                await pool.close()
                await redis.flushdb()
                await redis.aclose()
    return figures
