"""The retention purge of one month of `scale × 10,000,000` inbox messages (issue 16: "the retention
purge of a month of 10,000,000 rows in under a second").

`python -m bench purge --scale S` builds a database with two whole past months of S × 10,000,000
messages each over 100,000 accounts (about 0.45 GB a million messages with indexes), a share of
them still waiting for a digest (`BENCH_PURGE_PENDING`, default 0.1: the unread messages of members
with digests off stay queued until read, so an old month keeps some), then times:

1. `inbox.purge_messages_before` dropping the older month (what the nightly purge runs);
2. the same month's size dropped bare (`DETACH PARTITION` and `DROP TABLE` of the newer month in
   one transaction, no queue to forget): the database's own cost of dropping that much, and how the
   purge did it before migration 0022;
and, during each, the longest an intake INSERT took (one every 5 ms on a connection of its own):
how long the inbox was held up. The months are checkpointed first, as a month that ended a year
ago is on disk, not in dirty buffers.

The build is INSERT … SELECT in chunks of 500,000 (its time is printed). Its disk is freed after.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from bench.bench_intake import _drop_database
from bench.common import BenchEnv, Figure, create_database

MONTH_ROWS = 10_000_000  # at --scale 1
ACCOUNTS = 100_000
CHUNK = 500_000


async def _fill_month(conn: asyncpg.Connection, month: datetime, rows: int, pending: float) -> None:
    """`rows` messages spread over the calendar month starting at `month`; a `pending` share unread."""
    for lo in range(0, rows, CHUNK):
        hi = min(rows, lo + CHUNK)
        await conn.execute(
            "INSERT INTO messages (account_id, category, subject, body, created_at, read_at)"
            " SELECT 1 + (g::bigint * 7919) % $2, (ARRAY['news', 'billing', 'security'])[1 + g % 3],"
            "        'Your certificate expires soon', 'Renew it before the end of the month.',"
            "        $1::timestamptz + (g::float8 / $3) * (($1::timestamptz + interval '1 month') - $1::timestamptz),"
            "        CASE WHEN (g % 1000) >= $6::float8 * 1000 THEN $1::timestamptz + interval '1 month' END"
            " FROM generate_series($4::bigint, $5::bigint - 1) g",
            month,
            ACCOUNTS,
            rows,
            lo,
            hi,
            pending,
        )
        print(f"  purge: {month:%Y-%m} {hi:,} of {rows:,} messages", flush=True)


def _month(first: datetime, k: int) -> datetime:
    """The first day of the month `k` months from the first day `first`."""
    year, month = divmod(first.year * 12 + first.month - 1 + k, 12)
    return first.replace(year=year, month=month + 1)


async def _while_posting(dsn: str, work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """The seconds `work()` took, and the longest an intake INSERT took meanwhile (one every 5 ms
    on a connection of its own, into this month's partition): how long the inbox was held up."""
    probe = await asyncpg.connect(dsn)
    done = asyncio.Event()
    worst = 0.0

    async def intake() -> None:
        nonlocal worst
        while not done.is_set():
            started = time.monotonic()
            await probe.execute(
                "INSERT INTO messages (account_id, category, subject, body) VALUES (1, 'news', 'Probe', 'Probe')"
            )
            worst = max(worst, time.monotonic() - started)
            await asyncio.sleep(0.005)

    posting = asyncio.create_task(intake())
    try:
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await work()
        took = time.monotonic() - started
        await asyncio.sleep(0.05)
    finally:
        done.set()
        await posting
        await probe.close()
    return took, worst


async def run(env: BenchEnv) -> list[Figure]:
    from notifier import inbox
    from notifier.db import migrate

    rows = int(MONTH_ROWS * env.scale)
    pending = float(os.environ.get("BENCH_PURGE_PENDING", "0.1"))
    now = datetime.now(UTC)
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    older, newer = _month(this_month, -2), _month(this_month, -1)

    name, dsn = await create_database(env.database_url, "notifier_bench_purge")
    try:
        conn = await asyncpg.connect(dsn, command_timeout=None)
        started = time.monotonic()
        try:
            await migrate(conn)
            await conn.fetch("SELECT messages_create_partitions($1, now(), 3)", older)
            await conn.execute(
                "INSERT INTO accounts (external_id, email, name)"
                " SELECT 'member-' || n, 'member' || n || '@example.org', 'Member ' || n"
                " FROM generate_series(1, $1) n",
                ACCOUNTS,
            )
            for month in (older, newer):
                await _fill_month(conn, month, rows, pending)
            await conn.execute("VACUUM ANALYZE messages")
            await conn.execute("VACUUM ANALYZE pending_messages")
            await conn.execute("CHECKPOINT")  # a month that ended long ago is on disk, not in dirty buffers
            fill_s = time.monotonic() - started
            parts = {
                r["month"]: r
                for r in await conn.fetch(
                    "SELECT c.relname AS part, date_trunc('month', min(m.created_at)) AS month, count(*) AS n,"
                    "       pg_total_relation_size(c.oid) AS bytes"
                    " FROM messages m JOIN pg_class c ON c.oid = m.tableoid GROUP BY c.relname, c.oid"
                )
            }
            queued = await conn.fetchval("SELECT count(*) FROM pending_messages")
        finally:
            await conn.close()
        old, new = parts[older], parts[newer]
        env.notes.append(
            f"purge: two months of {rows:,} messages ({old['bytes'] / 2**30:.2f} GiB each with indexes),"
            f" {queued:,} queued for a digest, built in {fill_s:.0f} s"
        )

        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, command_timeout=None)
        try:
            purged: list[inbox.Purged] = []

            async def purge() -> None:
                purged.append(await inbox.purge_messages_before(pool, newer))

            async def bare() -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(f'ALTER TABLE messages DETACH PARTITION "{new["part"]}"')
                    await conn.execute(f'DROP TABLE "{new["part"]}"')

            purge_s, purge_wait = await _while_posting(dsn, purge)
            assert purged[0].partitions == [old["part"]] and purged[0].rows == 0, purged
            left = await pool.fetchval("SELECT count(*) FROM pending_messages WHERE created_at < $1", newer)
            assert left == 0, f"{left} queue rows of the dropped month left"
            bare_s, bare_wait = await _while_posting(dsn, bare)
        finally:
            await pool.close()
    finally:
        await _drop_database(env.database_url, name)
    return [
        Figure(
            "retention purge",
            f"a month of {old['n']:,} messages dropped (inbox.purge_messages_before)",
            purge_s * 1000,
            "ms",
            bare_s * 1000,
            f"DETACH + DROP of a month of {new['n']:,} in one transaction, bare",
            "< 1 s",
        ),
        Figure(
            "retention purge",
            "longest intake INSERT meanwhile (one every 5 ms)",
            purge_wait * 1000,
            "ms",
            bare_wait * 1000,
            "the same during the bare DETACH + DROP",
        ),
    ]
