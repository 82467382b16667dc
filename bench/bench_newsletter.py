"""Newsletters: one newsletter to N members (100,000 at scale 1) delivered to Postfix's smtp-sink.

Timed from the send (the same two steps as `POST /v1/newsletters/{id}/send`: schedule for now and
enqueue `newsletter_start`) to the moment no recipient row is queued or sending, with one bulk
worker process (`notifier worker --queues bulk`, as the Procfile runs it). That includes the
fan-out (one INSERT … SELECT), rendering (shared parts once, personal parts per recipient),
building, sending and recording. Also the worker process's peak RSS (VmHWM).

Baselines, same run: a plain aiosmtplib loop sending the same pre-built bytes over 8 connections
with no database, and Postfix's C client `smtp-source -s 16` with the same message, each half of N
before the newsletters and half after (the machine is shared; the mean of the two rates is
compared). A second newsletter with pipelining off shows what RFC 2920 pipelining gains.

The database's floor, same run (`bench.newsletter_floor`): PostgreSQL's CPU per e-mail for the
engine's own statements from asyncpg alone (fan-out, claims, look-ups, records in the groups the
send wrote), and for one bare INSERT … SELECT of the rows into a copy of `emails` without and with
its indexes.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from arq import ArqRedis
from arq import create_pool as create_redis_pool
from arq.connections import RedisSettings

from bench import newsletter_floor
from bench.bench_delivery import (
    bench_settings,
    fresh_database,
    wait_for_worker,
    worker_process,
)
from bench.common import (
    BenchEnv,
    DatabaseCpu,
    Figure,
    Sink,
    counting_smtp_sink,
    plain_loop_rate,
    process_cpu,
    smtp_source_rate,
)
from notifier import newsletter, queues
from notifier.db import Q, create_pool
from notifier.mail import compose
from notifier.mail.delivery import Delivery
from notifier.mail.outbox import BATCH_SIZE
from notifier.mail.render import OutgoingEmail
from notifier.mail.smtp import SMTPSender
from notifier.settings import Settings
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


async def insert_newsletter(pool: asyncpg.Pool) -> int:
    """A draft to the default list (everyone); its id."""
    row = await pool.fetchrow(
        Q.insert_newsletter, "News for {{ first_name }}", "This month", BODY, "markdown", "bench", False
    )
    assert row is not None
    return int(row["id"])


def _cpu(pid: int) -> float:
    """A worker's CPU seconds so far; it is alive while the bench measures it."""
    seconds = process_cpu(pid)
    assert seconds is not None, f"worker {pid} is gone"
    return seconds


def children_cpu_seconds() -> float:
    """CPU time (user + system) of this process's children that ended and were waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


# Whether a newsletter is done: its audience frozen and no row waiting, queued or sending. One
# look on the index of (newsletter, status), which skips what earlier looks found dead: the
# newsletter's figures (`poll_figures`, how this bench polled until now) count every row and
# event of the newsletter, ten times a second, and PostgreSQL's CPU figure of the send included
# them (the polling note has what one look of each costs). Without `kind = 'newsletter'`, which
# would let the planner take the (newsletter, account) index and read every row.
DONE = """SELECT (SELECT status IN ('sending', 'sent') FROM newsletters WHERE id = $1)
                 AND NOT EXISTS (SELECT 1 FROM emails
                                 WHERE newsletter_id = $1 AND status IN ('waiting', 'queued', 'sending'))"""


async def poll(conn: asyncpg.Connection | asyncpg.Pool, newsletter_id: int) -> bool:
    """One look of `wait_until_done`'s: whether the audience is frozen and no row is left to send."""
    return bool(await conn.fetchval(DONE, newsletter_id))


async def poll_figures(conn: asyncpg.Connection | asyncpg.Pool, newsletter_id: int) -> bool:
    """The same answer from the newsletter's figures, as this bench polled before."""
    row = await conn.fetchrow(Q.get_newsletter, newsletter_id)
    if row is not None and row["status"] in ("sending", "sent"):
        return (await newsletter.figures(conn, newsletter_id))["pending"] == 0
    return False


async def wait_until_done(pool: asyncpg.Pool, newsletter_id: int, start: float, limit: float) -> float:
    """Seconds from `start` until the audience is frozen and no row is queued or sending."""
    while time.perf_counter() - start < limit:
        if await poll(pool, newsletter_id):
            return time.perf_counter() - start
        await asyncio.sleep(POLL_SECONDS)
    raise TimeoutError(f"newsletter {newsletter_id} not delivered after {limit} s")


POLL_SECONDS = 0.1  # wait_until_done looks this often
PLAIN_CONNECTIONS = 8  # the plain aiosmtplib loop the issue compares against
SOURCE_SESSIONS = 16  # `smtp-source -s 16`


async def send_newsletter(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, sink: Sink, newsletter_id: int, workers: int = 1
) -> tuple[float, float, int, list[float], float]:
    """Send one newsletter with `workers` bulk worker processes: (seconds from the send to the last
    recipient recorded, the largest worker's peak RSS in MB, messages the sink accepted, the CPU
    seconds each worker spent from the send to the last recipient recorded, and the CPU seconds
    of the database's PostgreSQL backends meanwhile, the bench's own polling included)."""
    accepted_before = sink.delivered()
    dsn = settings.database_url
    assert dsn is not None
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(worker_process(settings, "bulk")) for _ in range(workers)]
        for _ in procs:
            await wait_for_worker(redis, queues.BULK)
        cpu_before = [_cpu(p.pid) for p in procs]
        database = DatabaseCpu(dsn.rsplit("/", 1)[1].split("?")[0])
        async with database.sampling():
            start = time.perf_counter()
            await newsletter.schedule(pool, newsletter_id, datetime.now(UTC), "bench")
            await redis.enqueue_job("newsletter_start", newsletter_id, _queue_name=queues.BULK)
            elapsed = await wait_until_done(pool, newsletter_id, start, limit=1800)
            cpu = [_cpu(p.pid) - before for p, before in zip(procs, cpu_before, strict=True)]
        rss = max(peak_rss_mb(p.pid) for p in procs)
    await asyncio.sleep(0.5)  # the sink's counter is written as it goes; let it settle
    return elapsed, rss, sink.delivered() - accepted_before, cpu, database.seconds


async def exactly_once(pool: asyncpg.Pool, newsletter_id: int, n: int) -> str | None:
    """None when each of the `n` recipients is recorded sent once (one row, one `sent` event);
    otherwise what is wrong."""
    figures = await newsletter.figures(pool, newsletter_id)
    events = await pool.fetchval(
        "SELECT count(*) FROM events WHERE newsletter_id = $1 AND kind = 'sent'", newsletter_id
    )
    if figures["sent"] != n or events != n:
        return f"{figures['sent']} rows and {events} events sent of {n}"
    return None


async def run(env: BenchEnv) -> list[Figure]:
    n = max(500, int(100_000 * env.scale))
    with counting_smtp_sink() as sink:
        async with fresh_database(env.database_url) as dsn:
            settings = bench_settings(dsn, env.redis_url, sink.port, defaults=True)
            redis = await create_redis_pool(RedisSettings.from_dsn(env.redis_url))
            await redis.flushdb()
            pool = await create_pool(dsn, min_size=1, max_size=4)
            try:
                await add_members(pool, n)
                ids = [await insert_newsletter(pool), await insert_newsletter(pool)]

                # The exact bytes the worker sends to member 1, for the baselines.
                delivery = Delivery(settings, pool, SMTPSender(settings), renderers=jobs.renderers(settings))
                email = OutgoingEmail(
                    1, "newsletter", 1, "reader1@example.com", "newsletter", "News", {"name": "Reader 1"},
                    newsletter_id=ids[0],
                )  # fmt: skip
                await delivery.renderers.for_kind("newsletter").prepare(pool, [email])
                _, envelope = delivery.build_message(email, compose.format_date(datetime.now(UTC)), None)
                message = envelope.message
                # The machine is shared: each baseline runs half before and half after the
                # newsletters, and the mean of the two rates is the figure compared against.
                # CPU per e-mail does not depend on what else the shared machine runs: the worker's
                # (from /proc) against the plain loop's (this process) and smtp-source's.
                plain_cpu, source_cpu = time.process_time(), children_cpu_seconds()
                plain = [await plain_loop_rate(sink.port, message, n // 2, PLAIN_CONNECTIONS)]
                plain_cpu = time.process_time() - plain_cpu
                source = [smtp_source_rate(sink.port, message, n // 2, SOURCE_SESSIONS)]
                source_cpu = children_cpu_seconds() - source_cpu
                elapsed, rss, accepted, cpu, database = await send_newsletter(
                    pool, redis, settings, sink, ids[0]
                )
                wrong = await exactly_once(pool, ids[0], n)
                old = settings.model_copy(update={"smtp_pipelining": False})
                old_elapsed, _, old_accepted, _, _ = await send_newsletter(pool, redis, old, sink, ids[1])
                wrong = wrong or await exactly_once(pool, ids[1], n)
                started = time.process_time()
                plain.append(await plain_loop_rate(sink.port, message, n // 2, PLAIN_CONNECTIONS))
                plain_cpu += time.process_time() - started
                started = children_cpu_seconds()
                source.append(smtp_source_rate(sink.port, message, n // 2, SOURCE_SESSIONS))
                source_cpu += children_cpu_seconds() - started
                groups = await newsletter_floor.observed_groups(pool, ids[0])
            finally:
                await pool.close()
                await redis.flushdb()
                await redis.aclose()
    if wrong or accepted != n or old_accepted != n:
        env.notes.append(
            f"newsletter: NOT exactly once: {wrong}; the sink accepted {accepted} and {old_accepted}"
        )
    # The database's floor, same run: the engine's statements alone, and a bare INSERT of the rows.
    floor = await newsletter_floor.measure(
        env.database_url, n, groups, add_members, insert_newsletter, {"poll": poll, "figures": poll_figures}
    )
    statements = sum(len(g) for g in groups)
    env.notes.append(
        f"newsletter floor: PostgreSQL CPU per e-mail, engine statements from asyncpg alone: fan-out "
        f"{floor.per_email(floor.fan_out):.1f} µs, claims {floor.per_email(floor.claims):.1f}, per-batch "
        f"look-ups {floor.per_email(floor.lookups):.1f}, records {floor.per_email(floor.records):.1f} "
        f"({floor.statements:,} record_results statements in the send's groups: it wrote {statements:,}, "
        f"{n / max(statements, 1):.1f} results each); recorded one statement per batch of "
        f"{BATCH_SIZE} instead: records {floor.per_email(floor.per_batch['records']):.1f} µs, claims "
        f"{floor.per_email(floor.per_batch['claims']):.1f} (second newsletter, {n:,} rows already sent), "
        f"fan-out {floor.per_email(floor.per_batch['fan_out']):.1f}; the same with nested loops off for "
        f"the records (third newsletter): records {floor.per_email(floor.per_batch_hashed['records']):.1f} µs; bare INSERT … SELECT of {n:,} "
        f"emails rows {floor.per_email(floor.bare['emails']):.1f} µs, with the indexes "
        f"{floor.per_email(floor.bare['emails_indexed']):.1f}, of {n:,} events rows with theirs "
        f"{floor.per_email(floor.bare['events_indexed']):.1f}"
    )
    polls = elapsed / (POLL_SECONDS + floor.polls["poll"][1])
    env.notes.append(
        "newsletter polling: one look of the bench's, all sent: "
        + ", ".join(
            f"{k} {cpu * 1e3:.2f} ms of CPU in {wall * 1e3:.2f} ms" for k, (cpu, wall) in floor.polls.items()
        )
        + f"; about {polls:.0f} looks in the send: {floor.per_email(floor.polls['poll'][0] * polls):.1f} µs per "
        f"e-mail (by the figures, which the send's figure included before this note: up to "
        f"{floor.per_email(floor.polls['figures'][0] * elapsed / (POLL_SECONDS + floor.polls['figures'][1])):.1f})"
    )
    rate, plain_rate, source_rate = n / elapsed, sum(plain) / 2, sum(source) / 2
    env.notes.append(
        f"newsletter: {n:,} recipients in {elapsed:.1f} s (pipelining off: {old_elapsed:.1f} s); the sink "
        f"accepted {accepted:,} and {old_accepted:,}; plain loop {plain[0]:,.0f} / {plain[1]:,.0f} msg/s "
        f"before / after, smtp-source {source[0]:,.0f} / {source[1]:,.0f}; message {len(message):,} bytes"
    )
    pool_size = settings.smtp_pool_size
    what = f"{n:,}-member newsletter, send → last recorded, 1 bulk worker, defaults ({pool_size} connections)"
    return [
        Figure(NAME, what, rate, "msg/s", plain_rate, f"aiosmtplib sendmail loop, {PLAIN_CONNECTIONS} connections", "≥ 1.2"),
        Figure(NAME, what, rate, "msg/s", source_rate, f"smtp-source -s {SOURCE_SESSIONS}, same size", "≥ 0.8"),
        Figure(NAME, "the same, NOTIFIER_SMTP_PIPELINING=false", n / old_elapsed, "msg/s", rate, "pipelining (above)"),
        Figure(NAME, "bulk worker peak RSS (VmHWM)", rss, "MB", goal="< 250 MB"),
        Figure(NAME, "bulk worker CPU per e-mail (user + system, send → last recorded; lower is better)", sum(cpu) / n * 1e6, "µs", plain_cpu / (n // 2 * 2) * 1e6, f"plain loop's CPU per e-mail, {PLAIN_CONNECTIONS} connections"),
        Figure(NAME, "PostgreSQL CPU per e-mail (the database's backends, send → last recorded, fan-out included)", database / n * 1e6, "µs"),
        Figure(NAME, "PostgreSQL CPU per e-mail: the engine's outbox statements alone (fan-out, claims, per-batch look-ups, records in the send's groups; asyncpg, no worker)", floor.per_email(floor.engine), "µs", database / n * 1e6, "the send above"),
        Figure(NAME, "PostgreSQL CPU per e-mail: a bare INSERT of the rows (one INSERT … SELECT, a copy of emails without indexes)", floor.per_email(floor.bare["emails"]), "µs", database / n * 1e6, "the send above"),
        Figure(NAME, "PostgreSQL CPU per e-mail: the same bare INSERT into a copy with emails' indexes", floor.per_email(floor.bare["emails_indexed"]), "µs", database / n * 1e6, "the send above"),
        Figure(NAME, "smtp-source CPU per e-mail (user + system)", source_cpu / (n // 2 * 2) * 1e6, "µs"),
    ]  # fmt: skip
