"""Digests: N accounts with 20 unread messages each, all due; one scheduler pass, a digest worker
delivering to Postfix's smtp-sink. Time from the pass's start to the last digest accepted.

Baseline, measured in the same run: the plain Python loop, aiosmtplib's `sendmail` sending the same
number of pre-built messages (a rendered digest's bytes) over 8 connections, with no database.

Also the pass alone (building every digest and its outbox row, no sending) at 1,000, 10,000 and
50,000 accounts: digests/s at each size, beside the 1,000-account rate (linear growth = ratio 1).

`python -m bench digest [--scale 0.1]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from arq import create_pool as create_redis_pool
from arq.connections import RedisSettings
from pydantic import SecretStr

from bench.common import BenchEnv, DatabaseCpu, Figure, plain_loop_rate, smtp_sink
from notifier import queues
from notifier.db import create_pool, scratch_database
from notifier.digest import run_pass
from notifier.mail import compose
from notifier.settings import Settings
from workers import jobs

MESSAGES_PER_ACCOUNT = 20
DUE = datetime(2026, 6, 2, 8, 0, tzinfo=UTC)
NAME = "digest"


def fresh_database(admin_url: str) -> contextlib.AbstractAsyncContextManager[str]:
    """A migrated database of its own, dropped afterwards."""
    return scratch_database(admin_url, "notifier_bench_digest")


async def seed(pool: asyncpg.Pool, accounts: int) -> None:
    """`accounts` daily members due at DUE, each with 20 unread messages in 4 categories."""
    await pool.execute("TRUNCATE accounts, messages, digests, emails, events RESTART IDENTITY CASCADE")
    await pool.execute(
        """
        INSERT INTO accounts (external_id, email, name, digest_frequency, digest_window_start, next_digest_at)
        SELECT 'member-' || g, 'member' || g || '@example.com', 'Member ' || g, 'daily', $1, $2
        FROM generate_series(1, $3) g
        """,
        DUE - timedelta(days=1),
        DUE,
        accounts,
    )
    await pool.execute(
        """
        INSERT INTO messages (account_id, category, subject, body, url, created_at)
        SELECT a.id, (ARRAY['news', 'events', 'comments', 'groups'])[1 + i % 4],
               'Something happened, number ' || i,
               'A few sentences about what happened, long enough to need a snippet in the digest. ' ||
               'More detail follows here for the member who wants to read it in the inbox.',
               'https://example.org/items/' || a.id || '/' || i,
               $1::timestamptz + i * interval '1 minute'
        FROM accounts a, generate_series(1, $2) i
        """,
        DUE - timedelta(hours=20),
        MESSAGES_PER_ACCOUNT,
    )
    # Statistics as autovacuum keeps them in production (the queue included: its plans differ).
    await pool.execute("ANALYZE accounts; ANALYZE messages; ANALYZE pending_messages")


def bench_settings(dsn: str, redis_url: str, smtp_port: int) -> Settings:
    return Settings(
        env="test",
        database_url=dsn,
        redis_url=redis_url,
        secret_key=SecretStr("bench-secret-key"),
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        public_url="https://notifier.example",
        service_from="Example <service@example.org>",
        postal_address="1 Example Street",
        db_pool_min=2,
        db_pool_max=8,
    )


async def sample_message(pool: asyncpg.Pool, settings: Settings) -> bytes:
    """The bytes of one real digest e-mail (rendered the way delivery does) for the baseline."""
    from notifier.mail.delivery import Delivery
    from notifier.mail.render import OutgoingEmail
    from notifier.mail.smtp import SMTPSender

    row = await pool.fetchrow("SELECT * FROM emails WHERE kind = 'digest' ORDER BY id LIMIT 1")
    assert row is not None
    delivery = Delivery(settings, pool, SMTPSender(settings), renderers=jobs.renderers(settings))
    email = OutgoingEmail.from_row(row)
    _, envelope = delivery.build_message(email, compose.format_date(DUE), None)
    return envelope.message


async def wait_until_sent(pool: asyncpg.Pool, accounts: int) -> None:
    """Poll the outbox (the source of truth; the worker signals nothing else) until no digest is
    queued or being sent, then check that every one was accepted by the SMTP server; raise if one
    failed. Each look is one probe of the partial index of due rows: counting the sent rows twenty
    times a second, as this did until 2026-12-02, cost PostgreSQL CPU that the figures counted."""
    left = "SELECT EXISTS (SELECT 1 FROM emails WHERE status IN ('queued', 'sending'))"
    while True:
        if not await pool.fetchval(left):
            break
        await asyncio.sleep(0.05)
    sent = await pool.fetchval("SELECT count(*) FROM emails WHERE status = 'sent'")
    if sent < accounts:
        why = await pool.fetchval("SELECT last_error FROM emails WHERE status = 'failed' LIMIT 1")
        raise RuntimeError(f"{accounts - sent} digests were not sent: {why}")


@dataclass(frozen=True)
class EndToEnd:
    """One end-to-end run: seconds from the pass's start to the last digest accepted, seconds of
    the pass alone, and the CPU seconds over the whole run of this process (the pass and the
    digest worker, as in one worker process) and of the database's PostgreSQL backends."""

    total: float
    pass_seconds: float
    process_cpu: float
    database_cpu: float


async def end_to_end(settings: Settings, pool: asyncpg.Pool, accounts: int) -> EndToEnd:
    """The pass and, alongside, one worker process's digest queue, as in production."""
    from workers import build_worker, close_context, open_context

    redis = await create_redis_pool(RedisSettings.from_dsn(settings.redis_url or ""))
    await redis.delete(queues.DIGEST)
    ctx = await open_context(settings)
    worker = build_worker(settings, queues.DIGEST, ctx, redis, crons=False)
    task = asyncio.create_task(worker.main())
    database = DatabaseCpu(await pool.fetchval("SELECT current_database()"))
    try:
        async with database.sampling():
            cpu = time.process_time()
            start = time.perf_counter()
            result = await run_pass(pool, redis, settings, DUE)
            pass_seconds = time.perf_counter() - start
            assert result.emails == accounts, result
            await wait_until_sent(pool, accounts)
            total = time.perf_counter() - start
            cpu = time.process_time() - cpu
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await close_context(ctx)
        await redis.aclose()
    return EndToEnd(total, pass_seconds, cpu, database.seconds)


async def pass_only(settings: Settings, pool: asyncpg.Pool, accounts: int) -> float:
    """Seconds for one pass over `accounts` due accounts (no delivery running)."""
    await seed(pool, accounts)
    start = time.perf_counter()
    result = await run_pass(pool, None, settings, DUE)
    seconds = time.perf_counter() - start
    assert result.digests == accounts and result.messages == accounts * MESSAGES_PER_ACCOUNT, result
    return seconds


async def delivery_only(settings: Settings, pool: asyncpg.Pool, accounts: int) -> float:
    """Seconds for the digest worker to deliver the same digests again, already built (the outbox
    rows put back in the queue): delivery's share of the end-to-end time."""
    await pool.execute(
        "UPDATE emails SET status = 'queued', attempts = 0, next_attempt_at = now(), locked_until = NULL, "
        "sent_at = NULL, message_id = NULL WHERE kind = 'digest'"
    )
    await pool.execute("TRUNCATE events")
    from workers import build_worker, close_context, open_context

    redis = await create_redis_pool(RedisSettings.from_dsn(settings.redis_url or ""))
    await redis.delete(queues.DIGEST)
    ctx = await open_context(settings)
    worker = build_worker(settings, queues.DIGEST, ctx, redis, crons=False)
    task = asyncio.create_task(worker.main())
    try:
        start = time.perf_counter()
        from notifier.mail import outbox

        await outbox.ring(redis, queues.DIGEST, accounts)
        await wait_until_sent(pool, accounts)
        return time.perf_counter() - start
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await close_context(ctx)
        await redis.aclose()


PLAIN_CONNECTIONS = 8  # the plain loop the issue compares against


async def render_send_ceiling(settings: Settings, pool: asyncpg.Pool, accounts: int) -> tuple[float, float]:
    """What delivery's own Python could reach if the database cost nothing: the digests built in
    the last run, rendered and built from their stored contexts by delivery's `build_message` and
    sent by notifier's SMTP sender over the same connections (lanes as delivery runs them), with
    no claim, no record and no pass. Rate (messages/s) and this process's CPU per message. The
    renderer's per-batch lookups (languages, labels, messages read since) run before the clock."""
    from notifier.mail.delivery import Delivery
    from notifier.mail.render import OutgoingEmail
    from notifier.mail.smtp import SMTPSender

    rows = await pool.fetch("SELECT * FROM emails WHERE kind = 'digest' ORDER BY id LIMIT $1", accounts)
    sender = SMTPSender(settings)
    delivery = Delivery(settings, pool, sender, renderers=jobs.renderers(settings))
    emails = [OutgoingEmail.from_row(r) for r in rows]
    await delivery.renderers.brand.refresh(pool)
    renderer = delivery.renderers.for_kind("digest")
    date = compose.format_date(DUE)
    try:
        # Warm: templates compiled, catalogues loaded, connections open (as in a running worker).
        await renderer.prepare(pool, emails[:50])
        for email in emails[:50]:
            await sender.send(delivery.build_message(email, date, None)[1])
        await renderer.prepare(pool, emails)
        left = iter(emails)

        async def lane() -> None:
            for email in left:
                await sender.send(delivery.build_message(email, date, None)[1])

        cpu = time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(settings.smtp_pool_size)))
        seconds = time.perf_counter() - start
        return len(emails) / seconds, (time.process_time() - cpu) / len(emails)
    finally:
        await sender.close()


async def plain_loop(port: int, message: bytes, n: int) -> tuple[float, float]:
    """The plain loop's rate (messages/s) and this process's CPU seconds per message meanwhile."""
    cpu = time.process_time()
    rate = await plain_loop_rate(port, message, n, PLAIN_CONNECTIONS)
    return rate, (time.process_time() - cpu) / n


def cpu_figures(name: str, what: str, runs: list[EndToEnd], accounts: int, loop_cpu: float) -> list[Figure]:
    """CPU per digest over the end-to-end runs (the least of them, as for the rates): this
    process's (pass and digest worker) beside the plain loop's per message, and PostgreSQL's.
    CPU is disturbed far less than rates by a shared machine's load."""
    return [
        Figure(
            name,
            f"{what}: CPU per digest, this process (pass and digest worker, Python), µs",
            min(r.process_cpu for r in runs) / accounts * 1e6,
            "µs",
            loop_cpu * 1e6,
            "the plain loop's per message",
        ),
        Figure(
            name,
            f"{what}: CPU per digest, the database's PostgreSQL backends, µs",
            min(r.database_cpu for r in runs) / accounts * 1e6,
            "µs",
        ),
    ]


def ceiling_figures(
    name: str, what: str, ceilings: list[tuple[float, float]], base: float, base_name: str, loop_cpu: float
) -> list[Figure]:
    """`render_send_ceiling`'s best rate beside the plain loop's, and its CPU per message beside
    the loop's: how far delivery's own rendering and sending let digests go with a free database."""
    return [
        Figure(
            name,
            f"{what}: ceiling, delivery's rendering and sending alone (no database), msg/s",
            max(rate for rate, _ in ceilings),
            "msg/s",
            base,
            base_name,
        ),
        Figure(
            name,
            f"{what}: the ceiling's CPU per message, µs",
            min(cpu for _, cpu in ceilings) * 1e6,
            "µs",
            loop_cpu * 1e6,
            "the plain loop's per message",
        ),
    ]


async def pass_rates(
    name: str, what: str, sizes: list[int], measure: Callable[[int], Awaitable[float]]
) -> list[Figure]:
    """Digests/s of a pass at each size (`measure(size)` gives its seconds), each beside the first
    size's rate: linear growth is a ratio of 1."""
    figures: list[Figure] = []
    rates: list[float] = []
    for size in sizes:
        seconds = await measure(size)
        rates.append(size / seconds)
        figures.append(
            Figure(
                name,
                f"{what}, {size:,} accounts: digests/s ({seconds:.2f} s)",
                rates[-1],
                "digests/s",
                rates[0],
                f"{sizes[0]:,} accounts",
                "ratio ~1 (linear)",
            )
        )
    return figures


ROUNDS = 2  # the headline figures are the best of this many rounds (the machine is shared)


async def run(env: BenchEnv) -> list[Figure]:
    figures: list[Figure] = []
    n = max(100, int(10_000 * env.scale))
    async with fresh_database(env.database_url) as dsn:
        pool = await create_pool(dsn, min_size=2, max_size=8)
        try:
            with smtp_sink() as port:
                settings = bench_settings(dsn, env.redis_url, port)
                # A sample digest for the baseline's bytes (and warm connections and statements).
                await seed(pool, 10)
                await run_pass(pool, None, settings, DUE)
                message = await sample_message(pool, settings)
                bases: list[float] = []
                loop_cpus: list[float] = []
                runs: list[EndToEnd] = []
                deliveries: list[float] = []
                ceilings: list[tuple[float, float]] = []
                for _ in range(ROUNDS):
                    # Baseline and measured runs interleaved: the machine is shared and noisy.
                    rate, loop_cpu = await plain_loop(port, message, n)
                    bases.append(rate)
                    loop_cpus.append(loop_cpu)
                    await seed(pool, n)
                    runs.append(await end_to_end(settings, pool, n))
                    deliveries.append(await delivery_only(settings, pool, n))
                    ceilings.append(await render_send_ceiling(settings, pool, n))
                rate, loop_cpu = await plain_loop(port, message, n)
                bases.append(rate)
                loop_cpus.append(loop_cpu)
                totals = [r.total for r in runs]
                passes = [r.pass_seconds for r in runs]
                base = max(bases)
                base_name = (
                    f"aiosmtplib sendmail loop, pre-built bytes, {PLAIN_CONNECTIONS} connections, no DB"
                )
                env.notes.append(
                    "digest: baselines "
                    + ", ".join(f"{b:,.0f}" for b in bases)
                    + " msg/s; end to end "
                    + ", ".join(f"{t:.1f}" for t in totals)
                    + " s"
                )
                figures.append(
                    Figure(
                        NAME,
                        f"{n:,} accounts x 20 messages: pass start to last digest accepted, digests/s",
                        n / min(totals),
                        "msg/s",
                        base,
                        base_name,
                        ">= 0.8",
                    )
                )
                figures.append(
                    Figure(NAME, f"{n:,} accounts: time to last digest accepted", min(totals), "s")
                )
                figures.append(
                    Figure(
                        NAME,
                        f"{n:,} accounts: the pass alone while delivery runs (digests + outbox rows)",
                        min(passes),
                        "s",
                    )
                )
                figures.append(
                    Figure(
                        NAME,
                        f"{n:,} built digests delivered again (delivery's share), msg/s",
                        n / min(deliveries),
                        "msg/s",
                        base,
                        base_name,
                    )
                )
                figures += cpu_figures(NAME, f"{n:,} accounts end to end", runs, n, min(loop_cpus))
                figures += ceiling_figures(NAME, f"{n:,} digests", ceilings, base, base_name, min(loop_cpus))
                env.notes.append(f"digest: sample e-mail {len(message):,} bytes")

            sizes = [max(100, int(s * env.scale)) for s in (1_000, 10_000, 50_000)]
            figures += await pass_rates(
                NAME, "pass alone", sizes, lambda size: pass_only(settings, pool, size)
            )
        finally:
            await pool.close()
    return figures
