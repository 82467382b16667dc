"""The queue of messages waiting for a digest (`pending_messages`, migration 0021): what puts a
message in it and takes it out, beside the pass, reading, delivery failing for good, retention and
erasure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from arq import ArqRedis

from notifier import inbox
from notifier.db import Q
from notifier.digest import run_pass
from notifier.settings import Settings
from tests.factory import Factory
from tests.test_partitions import own_pool  # noqa: F401  (a database of its own: partitions change)

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)


async def queued(pool: asyncpg.Pool, account_id: int) -> list[int]:
    rows = await pool.fetch(
        "SELECT message_id FROM pending_messages WHERE account_id = $1 ORDER BY 1", account_id
    )
    return [r["message_id"] for r in rows]


async def digest_of(pool: asyncpg.Pool, message_id: int) -> int | None:
    found: int | None = await pool.fetchval(
        "SELECT digest_id FROM message_digests WHERE message_id = $1", message_id
    )
    return found


async def member_with(factory: Factory, *subjects: str) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """A daily member due at T0 + DAY with one message per subject, an hour apart."""
    acc = await factory.account(digest_window_start=T0, next_digest_at=T0 + DAY)
    return acc, [
        await factory.message(acc, subject=s, created_at=T0 + timedelta(hours=i))
        for i, s in enumerate(subjects, 1)
    ]


async def test_read_unread_and_the_next_digest(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    acc, (sent, read) = await member_with(factory, "Sent", "Read first")
    born_read = await factory.message(
        acc, subject="Stored read", created_at=T0 + timedelta(hours=3), read_at=T0
    )
    assert await queued(pool, acc["id"]) == [sent["id"], read["id"]]  # a message stored read is not queued

    await pool.execute(Q.member_mark_read, acc["id"], read["id"])
    first = await run_pass(pool, redis, settings, T0 + DAY)
    assert (first.digests, first.messages) == (1, 1)
    digest = await digest_of(pool, sent["id"])
    assert digest is not None and await digest_of(pool, read["id"]) is None
    assert await queued(pool, acc["id"]) == []  # the read one left the queue too

    # Unread again: the one no digest took waits again; the one already sent does not.
    for message in (read, born_read, sent):
        await pool.execute(Q.member_mark_read, acc["id"], message["id"])
        await pool.execute(Q.member_mark_unread, acc["id"], message["id"])
    assert await queued(pool, acc["id"]) == [read["id"], born_read["id"]]
    archived = await pool.fetchrow(Q.member_archive, acc["id"], read["id"])
    assert archived["archived_at"] is not None and await queued(pool, acc["id"]) == [
        read["id"],
        born_read["id"],
    ]
    await pool.execute(Q.member_unarchive, acc["id"], read["id"])

    second = await run_pass(pool, redis, settings, T0 + 2 * DAY)
    assert (second.digests, second.messages) == (1, 2)
    assert await digest_of(pool, read["id"]) == await digest_of(pool, born_read["id"]) != digest
    assert await digest_of(pool, sent["id"]) == digest


async def test_a_digest_that_failed_for_good_hands_its_messages_back(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    acc, (kept, gone) = await member_with(factory, "Kept", "Read since")
    assert (await run_pass(pool, redis, settings, T0 + DAY)).messages == 2
    failed = await digest_of(pool, kept["id"])
    await pool.execute(Q.member_mark_read, acc["id"], gone["id"])

    async with pool.acquire() as conn:
        await conn.execute(Q.release_digest_messages, [failed])
    assert await pool.fetchval("SELECT message_ids FROM digests WHERE id = $1", failed) == []
    assert await queued(pool, acc["id"]) == [kept["id"]]
    retry = await run_pass(pool, redis, settings, T0 + 2 * DAY)
    assert (retry.digests, retry.messages) == (1, 1)
    assert await digest_of(pool, kept["id"]) not in (None, failed)


async def test_retention_erasure_and_truncation_leave_nothing_queued(own_pool: asyncpg.Pool) -> None:  # noqa: F811
    pool, factory = own_pool, Factory(own_pool)
    now = datetime.now(UTC)
    await pool.fetch("SELECT messages_create_partitions($1, now(), 3)", now - timedelta(days=150))
    acc = await factory.account()
    old_month = await factory.message(acc, created_at=now - timedelta(days=120))  # a dropped month
    old_row = await factory.message(acc, created_at=now - timedelta(days=90, hours=12))  # the cut month
    fresh = await factory.message(acc, created_at=now)
    assert await queued(pool, acc["id"]) == [old_month["id"], old_row["id"], fresh["id"]]

    purged = await inbox.purge_messages_before(pool, now - timedelta(days=90))
    assert purged.partitions and purged.rows >= 1
    assert await queued(pool, acc["id"]) == [fresh["id"]]

    await pool.execute("DELETE FROM accounts WHERE id = $1", acc["id"])
    assert await pool.fetchval("SELECT count(*) FROM pending_messages") == 0

    await factory.message(await factory.account())
    await pool.execute("TRUNCATE messages")
    assert await pool.fetchval("SELECT count(*) FROM pending_messages") == 0
