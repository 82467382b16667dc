"""The database's floor for a newsletter (issue 16): what PostgreSQL spends per e-mail on the
engine's own statements with no worker, no SMTP and no Python work between them, and on one bare
INSERT … SELECT of the same rows. `bench_newsletter` runs it in the same run as the real send.

In a scratch database of its own (the same migrations, the same members), one connection per
kind of statement, each backend's CPU read from `/proc` before and after:

- **fan-out**: `newsletter.start`'s statements (start_newsletter, the default list, the one
  INSERT … SELECT of `fan_out_newsletter`, set_newsletter_recipients) in one transaction;
- **claims**: `claim_emails` of 300 rows, as a deliver job claims, until nothing is due;
- **look-ups**: what a batch asks before it renders (lookup_suppressions, account_languages,
  newsletter_variants, newsletter_versions);
- **records**: `record_results` (the rows' new status and their `events` rows), in the groups
  the real send wrote, batch by batch (its `sent` events: one transaction each, xmin; one lease
  per batch, the end of `dedupe_key`); then, on a second newsletter, one record per batch.

Claims and records alternate batch by batch, as a deliver job does, so each claim sees the table
a real one sees. The bare INSERT writes the same number of rows, shaped as the fan-out writes
them, into a copy of `emails` without its indexes and with them (`LIKE … INCLUDING ALL`: the
indexes and checks, not the foreign keys), and the same number of `events` rows likewise.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.common import process_cpu
from notifier import audience, queues, suppression
from notifier.db import Q, create_pool, scratch_database
from notifier.mail import compose, outbox
from notifier.newsletter_local_time import DueInstants

POLLS = 50  # polls of the bench's timed (all sent) to find what one costs
REPLY = {"reply": "250 2.0.0 Ok: queued as 4dLkS83xJ9z2vM"}  # smtp-sink's answer, as delivery keeps it


async def observed_groups(pool: asyncpg.Pool, newsletter_id: int) -> list[list[int]]:
    """The sizes of the `record_results` statements that recorded a sent newsletter, batch by
    batch in the order they were written: the `sent` events one statement wrote share its
    transaction (xmin), those of one batch its lease (the last part of `dedupe_key`)."""
    rows = await pool.fetch(
        """SELECT split_part(dedupe_key, ':', 3) AS lease, count(*) AS size
           FROM events WHERE newsletter_id = $1 AND kind = 'sent'
           GROUP BY 1, xmin::text ORDER BY min(id)""",
        newsletter_id,
    )
    batches: dict[str, list[int]] = {}
    for row in rows:
        batches.setdefault(row["lease"], []).append(row["size"])
    return list(batches.values())


@dataclass
class Backend:
    """One connection and the CPU its backend spent on what it was given."""

    conn: asyncpg.Connection
    pid: int
    seconds: float = 0.0

    @contextlib.contextmanager
    def measuring(self) -> Iterator[asyncpg.Connection]:
        """The connection; what its backend spends meanwhile is added to `seconds`."""
        before = process_cpu(self.pid)
        try:
            yield self.conn
        finally:
            after = process_cpu(self.pid)
            assert before is not None and after is not None, "the backend is gone"
            self.seconds += after - before


@dataclass
class Floor:
    """CPU seconds PostgreSQL spent, per kind of statement, for `n` e-mails."""

    n: int
    fan_out: float = 0.0
    claims: float = 0.0
    lookups: float = 0.0
    records: float = 0.0
    statements: int = 0  # record_results statements, as the real send wrote them
    # The second newsletter, one record per batch of 300: CPU seconds by kind of statement.
    per_batch: dict[str, float] = field(default_factory=dict)
    # The third, the same with nested loops off on the records' connection (what a plan that does
    # not compare every result with every row would cost; see the reading in docs/benchmarks.md).
    per_batch_hashed: dict[str, float] = field(default_factory=dict)
    bare: dict[str, float] = field(default_factory=dict)  # one INSERT … SELECT of n rows
    # For each way of polling given, one look's CPU seconds and wall-clock seconds once all is sent.
    polls: dict[str, tuple[float, float]] = field(default_factory=dict)

    def per_email(self, seconds: float) -> float:
        return seconds / self.n * 1e6

    @property
    def engine(self) -> float:
        return self.fan_out + self.claims + self.lookups + self.records


async def _send(
    backends: dict[str, Backend], newsletter_id: int, groups: Sequence[Sequence[int]] | None
) -> tuple[int, dict[str, float]]:
    """Fan out, then claim and record batch after batch until nothing is due, each record in the
    sizes of `groups` (batch by batch, cycling; None: the whole batch at once). Returns the number
    of record statements and the CPU seconds of each kind of statement."""
    cpu_before = {k: b.seconds for k, b in backends.items()}

    with backends["fan_out"].measuring() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(Q.start_newsletter, newsletter_id)
            assert row is not None
            list_ids, rule = await audience.targeting(conn, row)
            await audience.freeze(conn, newsletter_id, list_ids, rule, DueInstants.of(None))
            await conn.fetchval(Q.set_newsletter_recipients, newsletter_id)
    statements, batch = 0, 0
    while True:
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=outbox.LEASE_SECONDS)
        with backends["claims"].measuring() as conn:
            rows = await conn.fetch(Q.claim_emails, queues.BULK, now, outbox.BATCH_SIZE, lease)
        if not rows:
            break
        hashes = [suppression.address_hash(r["to_address"]) for r in rows]
        accounts = sorted(r["account_id"] for r in rows)
        with backends["lookups"].measuring() as conn:
            await conn.fetch(Q.lookup_suppressions, hashes)
            await conn.fetch(Q.account_languages, accounts)
            await conn.fetch(Q.newsletter_variants, [newsletter_id])
            await conn.fetch(Q.newsletter_versions, [newsletter_id])
        sizes = list(groups[batch % len(groups)]) if groups else [len(rows)]
        batch += 1
        start = 0
        while start < len(rows):
            size = sizes.pop(0) if sizes else len(rows) - start
            group = rows[start : start + size]
            start += size
            ids = [r["id"] for r in group]
            mids = [compose.message_id(i, "example.org", b"bench") for i in ids]
            args = (
                ids,
                ["sent"] * len(ids),
                mids,
                [None] * len(ids),
                [None] * len(ids),
                ["sent"] * len(ids),
                [REPLY] * len(ids),
                now,
                lease,
                str(int(lease.timestamp() * 1_000_000)),
            )
            with backends["records"].measuring() as conn:
                await conn.execute(Q.record_results, *args)
            statements += 1
    return statements, {k: b.seconds - cpu_before[k] for k, b in backends.items()}


async def _bare_insert(
    backend: Backend, table: str, like: str, indexes: bool, insert: str, *args: object
) -> float:
    """CPU seconds of one INSERT … SELECT (`insert`, after `INSERT INTO table`) into a new copy of
    table `like`, without its indexes or with them."""
    including = "INCLUDING ALL" if indexes else "INCLUDING DEFAULTS"
    await backend.conn.execute(f"CREATE TABLE {table} (LIKE {like} {including})")
    before = backend.seconds
    with backend.measuring() as conn:
        await conn.execute(f"INSERT INTO {table} {insert}", *args)
    return backend.seconds - before


async def measure(
    admin_url: str,
    n: int,
    groups: Sequence[Sequence[int]],
    add_members: Callable[[asyncpg.Pool, int], Awaitable[None]],
    insert_newsletter: Callable[[asyncpg.Pool], Awaitable[int]],
    polls: Mapping[str, Callable[[asyncpg.Connection, int], Awaitable[object]]],
) -> Floor:
    """The floor for `n` members (added by `add_members`) in a scratch database: the engine's
    statements for one newsletter recorded in `groups` (`observed_groups`), another recorded one
    statement per batch, and the bare INSERTs; and what one `poll` of the bench's costs once the
    first is sent, for each of `polls`."""
    floor = Floor(n)
    async with scratch_database(admin_url, "notifier_bench_floor") as dsn:
        pools = {
            k: await create_pool(dsn, min_size=1, max_size=1)
            for k in ("fan_out", "claims", "lookups", "records")
        }
        held: list[tuple[asyncpg.Pool, asyncpg.Connection]] = []
        try:
            first = next(iter(pools.values()))
            await add_members(first, n)
            ids = [await insert_newsletter(first) for _ in range(3)]
            await first.execute("VACUUM ANALYZE")
            backends = {}
            for kind, pool in pools.items():
                conn = await pool.acquire()
                held.append((pool, conn))
                backends[kind] = Backend(conn, conn.get_server_pid())
            floor.statements, cpu = await _send(backends, ids[0], groups)
            floor.fan_out, floor.claims, floor.lookups, floor.records = (
                cpu["fan_out"], cpu["claims"], cpu["lookups"], cpu["records"]
            )  # fmt: skip
            look = backends["lookups"]
            for name, poll in polls.items():
                before, started = look.seconds, time.perf_counter()
                for _ in range(POLLS):
                    with look.measuring() as conn:
                        await poll(conn, ids[0])
                cpu_per_look = (look.seconds - before) / POLLS
                floor.polls[name] = (cpu_per_look, (time.perf_counter() - started) / POLLS)
            _, floor.per_batch = await _send(backends, ids[1], None)
            hashed = await create_pool(dsn, min_size=1, max_size=1)
            pools["hashed"] = hashed
            conn = await hashed.acquire()
            held.append((hashed, conn))
            await conn.execute("SET enable_nestloop = off")
            backends["records"] = Backend(conn, conn.get_server_pid())
            _, floor.per_batch_hashed = await _send(backends, ids[2], None)

            emails = (
                "SELECT 'newsletter', 'bulk', a.id, a.email, 'newsletter', 'News', "
                "jsonb_build_object('name', a.name, 'list', 'newsletter', 'list_id', 1), "
                f"{ids[0]}, 'queued', NULL::timestamptz, now() "
                "FROM accounts a WHERE a.id <= $1 ORDER BY a.id"
            )
            columns = (
                "(kind, queue, account_id, to_address, template, subject, context, newsletter_id, "
                "status, due_at, next_attempt_at) "
            )
            events = (
                "(kind, account_id, email_id, newsletter_id, detail, dedupe_key, created_at) "
                "SELECT 'sent', a.id, a.id, "
                f"{ids[0]}, $2::jsonb, 'sent:' || a.id || ':{secrets.randbits(40)}', now() "
                "FROM accounts a WHERE a.id <= $1"
            )
            b = backends["fan_out"]
            bare = floor.bare
            bare["emails"] = await _bare_insert(b, "bare_emails", "emails", False, columns + emails, n)
            bare["emails_indexed"] = await _bare_insert(
                b, "bare_emails_ix", "emails", True, columns + emails, n
            )
            bare["events_indexed"] = await _bare_insert(b, "bare_events_ix", "events", True, events, n, REPLY)
        finally:
            for pool, conn in held:
                await pool.release(conn)
            for pool in pools.values():
                await pool.close()
    return floor
