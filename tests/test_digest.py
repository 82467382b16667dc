"""The digest pass: windows, content, exactly-once under parallel passes, immediate coalescing,
preview and delivery to a real SMTP server. Time is always passed in, never waited for."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from arq import ArqRedis

from notifier import queues, tokens
from notifier.audit import MEMBER
from notifier.db import Q, create_pool
from notifier.digest import messages_arrived, preview, run_pass
from notifier.mail.delivery import Delivery
from notifier.mail.smtp import SMTPSender
from notifier.preferences import apply_preferences
from notifier.settings import Settings
from tests.factory import Factory
from tests.test_partitions import plan_nodes
from workers import jobs

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)  # a Monday, 08:00 UTC
DAY = timedelta(days=1)


async def daily(factory: Factory, start: datetime = T0, **fields: Any) -> asyncpg.Record:
    """A daily (08:00 UTC) member whose window opened at `start`."""
    return await factory.account(
        digest_frequency="daily", digest_window_start=start, next_digest_at=start + DAY, **fields
    )


async def account(pool: asyncpg.Pool, account_id: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)
    assert row is not None
    return row


async def digest_emails(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch("SELECT * FROM emails WHERE kind = 'digest' ORDER BY id")
    return rows


async def test_daily_digest_content_and_window_advance(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    acc = await daily(factory, name="Ann Example")
    for i in range(7):
        await factory.message(
            acc, category="events", subject=f"Event {i}", created_at=T0 + timedelta(hours=i + 1)
        )
    for i in range(2):
        await factory.message(
            acc,
            category="news",
            subject=f"News {i}",
            url=f"https://example.org/n/{i}",
            created_at=T0 + timedelta(hours=10 + i),
        )
    read = await factory.message(acc, subject="Read already", created_at=T0 + timedelta(hours=2), read_at=T0)
    archived = await factory.message(acc, subject="Archived", archived_at=T0 + timedelta(hours=3))
    late = await factory.message(acc, subject="After the window", created_at=T0 + DAY + timedelta(minutes=1))

    assert (await run_pass(pool, redis, settings, T0 + DAY - timedelta(seconds=1))).accounts == 0
    result = await run_pass(pool, redis, settings, T0 + DAY + timedelta(minutes=5))
    assert (result.accounts, result.digests, result.messages, result.emails) == (1, 1, 9, 1)

    digest = await pool.fetchrow("SELECT * FROM digests WHERE account_id = $1", acc["id"])
    assert (digest["window_start"], digest["window_end"], digest["message_count"]) == (T0, T0 + DAY, 9)
    assert digest["frequency"] == "daily"
    in_digest = await pool.fetch(
        "SELECT m.subject FROM messages m JOIN message_digests md ON md.message_id = m.id WHERE md.digest_id = $1",
        digest["id"],
    )
    assert {r["subject"] for r in in_digest} == {*(f"Event {i}" for i in range(7)), "News 0", "News 1"}
    for left in (read, archived, late):
        assert (
            await pool.fetchval("SELECT digest_id FROM message_digests WHERE message_id = $1", left["id"])
            is None
        )

    [email] = await digest_emails(pool)
    assert (email["queue"], email["template"], email["to_address"]) == (queues.DIGEST, "digest", acc["email"])
    assert email["digest_id"] == digest["id"] and email["status"] == "queued"
    ctx = email["context"]
    assert ctx["name"] == "Ann Example" and ctx["total"] == 9 and ctx["frequency"] == "daily"
    assert ctx["inbox_url"] == tokens.inbox_link(settings, acc["id"])
    assert ctx["inbox_url"].startswith("https://notifier.test/inbox/")
    # Categories by their newest message; newest first inside; at most 5 with "and N more".
    assert [c["name"] for c in ctx["categories"]] == ["news", "events"]
    news, events = ctx["categories"]
    assert [m["subject"] for m in news["messages"]] == ["News 1", "News 0"]
    assert news["messages"][0]["url"] == "https://example.org/n/1"
    assert (news["count"], news["more"]) == (2, 0)
    assert [m["subject"] for m in events["messages"]] == [f"Event {i}" for i in (6, 5, 4, 3, 2)]
    assert (events["count"], events["more"]) == (7, 2)
    # Stored in UTC; delivery writes it in the member's zone and language ("Mon 1 Jun, 15:00").
    assert events["messages"][0]["at"] == "2026-06-01T15:00:00Z"

    after = await account(pool, acc["id"])
    assert after["digest_window_start"] == T0 + DAY
    assert after["next_digest_at"] == T0 + 2 * DAY
    # The doorbell rang on the digest queue.
    assert await redis.zcard(queues.DIGEST) >= 1

    # Run again at the same time: nothing is due, nothing doubles.
    again = await run_pass(pool, redis, settings, T0 + DAY + timedelta(minutes=5))
    assert again.accounts == 0
    # The next window picks up the late message.
    nxt = await run_pass(pool, redis, settings, T0 + 2 * DAY)
    assert (nxt.digests, nxt.messages) == (1, 1)
    assert len(await digest_emails(pool)) == 2


async def test_empty_window_sends_nothing_and_advances(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    acc = await daily(factory)
    await factory.message(acc, read_at=T0 + timedelta(hours=1))  # read: nothing to say
    result = await run_pass(pool, redis, settings, T0 + DAY)
    assert (result.accounts, result.digests, result.emails) == (1, 0, 0)
    assert await pool.fetchval("SELECT count(*) FROM digests") == 0
    assert await digest_emails(pool) == []
    assert (await account(pool, acc["id"]))["next_digest_at"] == T0 + 2 * DAY


async def test_off_members_are_never_due(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    acc = await factory.account(digest_frequency="off", next_digest_at=None)
    await factory.message(acc)
    assert (await run_pass(pool, redis, settings, T0 + 30 * DAY)).accounts == 0


async def test_late_pass_sends_one_digest_not_a_backlog(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    acc = await factory.account(
        digest_frequency="hourly", digest_window_start=T0, next_digest_at=T0 + timedelta(hours=1)
    )
    for h in range(5):
        await factory.message(acc, created_at=T0 + timedelta(hours=h, minutes=30))
    # The scheduler was down for five hours: one pass, one digest of the first window's messages,
    # then the next window ends at the next hour after now and takes the rest.
    now = T0 + timedelta(hours=5, minutes=10)
    first = await run_pass(pool, redis, settings, now)
    assert (first.digests, first.messages) == (1, 1)
    assert (await account(pool, acc["id"]))["next_digest_at"] == T0 + timedelta(hours=6)
    assert (await run_pass(pool, redis, settings, now)).accounts == 0
    second = await run_pass(pool, redis, settings, T0 + timedelta(hours=6))
    assert (second.digests, second.messages) == (1, 4)


async def test_frequency_change_mid_window(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    acc = await daily(factory)
    await factory.message(acc, created_at=T0 + timedelta(hours=1))
    async with pool.acquire() as conn:
        await apply_preferences(
            conn,
            acc["id"],
            {"digest_frequency": "weekly"},
            MEMBER,
            "preference-centre",
            now=T0 + timedelta(hours=12),
        )
    # Tonight's daily digest does not go out...
    assert (await run_pass(pool, redis, settings, T0 + DAY + timedelta(hours=1))).accounts == 0
    # ...the weekly one does, a week after the window opened, with the message.
    result = await run_pass(pool, redis, settings, T0 + 7 * DAY)
    assert (result.digests, result.messages, result.emails) == (1, 1, 1)
    digest = await pool.fetchrow("SELECT * FROM digests")
    assert (digest["frequency"], digest["window_start"], digest["window_end"]) == ("weekly", T0, T0 + 7 * DAY)
    assert (await account(pool, acc["id"]))["next_digest_at"] == T0 + 14 * DAY

    # Turning digests off: never due, messages stay in the inbox undigested.
    await factory.message(acc, created_at=T0 + 8 * DAY)
    async with pool.acquire() as conn:
        await apply_preferences(
            conn, acc["id"], {"digest_frequency": "off"}, MEMBER, "one-click", now=T0 + 8 * DAY
        )
    assert (await run_pass(pool, redis, settings, T0 + 60 * DAY)).accounts == 0


async def test_daily_across_dst_in_berlin(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    # Daily at 02:00 Berlin; 2026-03-29 has no 02:00 (02:00 -> 03:00).
    start = datetime(2026, 3, 27, 12, tzinfo=UTC)
    acc = await factory.account(
        digest_frequency="daily",
        digest_hour=2,
        timezone="Europe/Berlin",
        digest_window_start=start,
        next_digest_at=datetime(2026, 3, 28, 1, tzinfo=UTC),
    )
    sent: list[datetime] = []
    clock = start
    while clock < datetime(2026, 3, 31, 12, tzinfo=UTC):
        await factory.message(acc, created_at=clock)
        clock += timedelta(minutes=30)
        # A pass every half hour, like a cron that runs often.
        if (await run_pass(pool, redis, settings, clock)).digests:
            sent.append(clock)
    ends = [r["window_end"] for r in await pool.fetch("SELECT window_end FROM digests ORDER BY id")]
    assert ends == [
        datetime(2026, 3, 28, 1, tzinfo=UTC),  # 02:00 CET
        datetime(2026, 3, 29, 1, tzinfo=UTC),  # 03:00 CEST: the first instant after the gap, once
        datetime(2026, 3, 30, 0, tzinfo=UTC),  # 02:00 CEST
        datetime(2026, 3, 31, 0, tzinfo=UTC),
    ]
    assert len(sent) == 4
    # Every message created before the last window's end is in exactly one digest.
    missing = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE id NOT IN (SELECT message_id FROM message_digests) AND created_at < $1",
        ends[-1],
    )
    assert missing == 0


async def test_read_before_the_pass_is_left_out_and_read_before_sending_too(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory, smtp: Any, run_worker: Any
) -> None:
    acc = await daily(factory)
    keep = await factory.message(acc, category="news", subject="Keep me", created_at=T0 + timedelta(hours=1))
    early = await factory.message(
        acc, category="news", subject="Read early", created_at=T0 + timedelta(hours=2)
    )
    later = await factory.message(
        acc, category="news", subject="Read later", created_at=T0 + timedelta(hours=3)
    )
    for i in range(7):
        await factory.message(
            acc, category="events", subject=f"Event {i}", created_at=T0 + timedelta(hours=4, minutes=i)
        )
    await pool.execute(
        "UPDATE messages SET read_at = $2 WHERE id = $1", early["id"], T0 + timedelta(hours=20)
    )
    await run_pass(pool, redis, settings, T0 + DAY)
    [email] = await digest_emails(pool)
    assert email["context"]["total"] == 9  # the early read one was never in the digest
    assert (
        await pool.fetchval("SELECT digest_id FROM message_digests WHERE message_id = $1", keep["id"])
        is not None
    )

    # Read after the pass but before the e-mail is built: left out at send time, counts adjusted,
    # including a message hidden behind "and N more".
    hidden = await pool.fetchval("SELECT id FROM messages WHERE subject = 'Event 0'")
    await pool.execute(
        "UPDATE messages SET read_at = now() WHERE id = ANY($1::bigint[])", [later["id"], hidden]
    )
    await run_worker(queues.DIGEST)
    [got] = smtp.received
    text = got.message.get_body(("plain",)).get_content()
    assert "Keep me" in text and "Read later" not in text and "Read early" not in text
    assert "== NEWS (1) ==" in text and "== EVENTS (6) ==" in text
    assert "...and 1 more in events" in text
    assert got.message["Subject"] == "7 new messages in your inbox"


async def test_a_digest_held_back_is_dropped_when_all_read_and_shortened_when_some(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory, smtp: Any
) -> None:
    # Issue 14: a digest held by a temporary failure went out hours later, after the member had
    # read everything in it ("2 unread messages").
    ann = await daily(factory)
    bob = await daily(factory)
    for acc in (ann, bob):
        for i in range(2):
            await factory.message(acc, subject=f"{acc['name']} {i}", created_at=T0 + timedelta(hours=1 + i))
    await run_pass(pool, redis, settings, T0 + DAY)
    smtp.replies.extend(["451 4.3.0 try later", "451 4.3.0 try later"])
    delivery = Delivery(settings, pool, SMTPSender(settings), renderers=jobs.renderers(settings))
    now = datetime.now(UTC)
    assert (await delivery.run(queues.DIGEST, now=now)).deferred == 2
    assert smtp.received == []
    await pool.execute("UPDATE messages SET read_at = now() WHERE account_id = $1", ann["id"])
    await pool.execute(
        "UPDATE messages SET read_at = now() WHERE account_id = $1 AND subject LIKE '% 0'", bob["id"]
    )
    counts = await delivery.run(queues.DIGEST, now=now + timedelta(hours=1))
    assert (counts.sent, counts.cancelled) == (1, 1)
    [got] = smtp.received
    assert got.recipients == [bob["email"]]
    text = got.message.get_body(("plain",)).get_content()
    assert f"{bob['name']} 1" in text and f"{bob['name']} 0" not in text
    assert got.message["Subject"] == "1 new message in your inbox: news"
    statuses = await pool.fetch("SELECT account_id, status FROM emails ORDER BY account_id")
    assert [(r["account_id"], r["status"]) for r in statuses] == [
        (ann["id"], "cancelled"),
        (bob["id"], "sent"),
    ]


# --- exactly once under concurrency ---------------------------------------------------------------


async def _seed(pool: asyncpg.Pool, accounts: int, per_account: int) -> None:
    """Many due accounts with unread messages, inserted set-based."""
    await pool.execute(
        """
        INSERT INTO accounts (external_id, email, name, digest_frequency, digest_window_start, next_digest_at)
        SELECT 'bulk-' || g, 'bulk' || g || '@example.com', 'Bulk ' || g, 'daily', $1, $2
        FROM generate_series(1, $3) g
        """,
        T0,
        T0 + DAY,
        accounts,
    )
    await pool.execute(
        """
        INSERT INTO messages (account_id, category, subject, body, created_at)
        SELECT a.id, 'cat' || (i % 3), 'Subject ' || i, 'Body', $1::timestamptz + i * interval '1 minute'
        FROM accounts a, generate_series(1, $2) i
        """,
        T0,
        per_account,
    )


async def _check_exactly_once(pool: asyncpg.Pool, accounts: int, per_account: int) -> None:
    assert await pool.fetchval("SELECT count(*) FROM digests") == accounts
    assert await pool.fetchval("SELECT count(DISTINCT account_id) FROM digests") == accounts
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE kind = 'digest'") == accounts
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM messages WHERE id NOT IN (SELECT message_id FROM message_digests)"
        )
        == 0
    )
    assert await pool.fetchval("SELECT sum(message_count) FROM digests") == accounts * per_account
    # Each e-mail's context lists exactly its digest's messages.
    totals = await pool.fetch(
        "SELECT (e.context->>'total')::int AS total, d.message_count FROM emails e JOIN digests d ON d.id = e.digest_id"
    )
    assert all(r["total"] == r["message_count"] == per_account for r in totals)
    assert await pool.fetchval("SELECT count(*) FROM accounts WHERE next_digest_at <> $1", T0 + 2 * DAY) == 0


async def test_parallel_passes_on_separate_connections_build_each_digest_once(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, database: str
) -> None:
    n, per = 240, 4
    await _seed(pool, n, per)
    pools = [await create_pool(database, min_size=1, max_size=1) for _ in range(4)]
    try:
        results = await asyncio.gather(*(run_pass(p, redis, settings, T0 + DAY, batch_size=7) for p in pools))
    finally:
        for p in pools:
            await p.close()
    assert sum(r.digests for r in results) == n
    assert sum(r.emails for r in results) == n
    assert sum(1 for r in results if r.digests) >= 2  # the work really was shared
    await _check_exactly_once(pool, n, per)


async def test_parallel_passes_in_separate_processes_with_the_cli(
    pool: asyncpg.Pool, settings: Settings, redis: ArqRedis
) -> None:
    n, per = 300, 3
    await _seed(pool, n, per)
    env = {**os.environ, **settings.to_env(), "NOTIFIER_LOG_LEVEL": "WARNING"}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "notifier.cli",
            "digests",
            "run",
            "--at",
            (T0 + DAY).isoformat(),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [await p.communicate() for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        assert out.decode().startswith("due accounts: ")
    printed = sum(int(out.decode().split("digests: ")[1].split()[0]) for out, _ in outputs)
    assert printed == n
    await _check_exactly_once(pool, n, per)


async def test_message_arriving_during_a_pass_is_not_lost(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory, database: str
) -> None:
    # A message created inside the window but committed only after the pass took its snapshot
    # goes into the next digest.
    acc = await daily(factory)
    await factory.message(acc, subject="On time", created_at=T0 + timedelta(hours=1))
    other = await asyncpg.connect(database)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(
            "INSERT INTO messages (account_id, category, subject, body, created_at) VALUES ($1, 'news', 'Slow', 'b', $2)",
            acc["id"],
            T0 + timedelta(hours=23),
        )
        first = await run_pass(pool, redis, settings, T0 + DAY)
        await tx.commit()
    finally:
        await other.close()
    assert first.messages == 1
    second = await run_pass(pool, redis, settings, T0 + 2 * DAY)
    assert second.messages == 1
    subjects = await pool.fetch(
        "SELECT m.subject, md.digest_id FROM messages m LEFT JOIN message_digests md ON md.message_id = m.id ORDER BY m.id"
    )
    assert len({r["digest_id"] for r in subjects}) == 2


async def test_a_batch_compares_no_message_with_every_digest_of_the_batch(pool: asyncpg.Pool) -> None:
    """The build statement's joins grow with the batch, not with its square: in the custom and the
    generic plan, no join filter throws away more pairs than the batch has messages (dequeuing
    once compared each pending message with each digest: messages x accounts pairs)."""
    accounts, per_account = 100, 10
    await _seed(pool, accounts, per_account)
    await pool.execute("ANALYZE")
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM accounts ORDER BY id")]
    n = len(ids)
    args: tuple[Any, ...] = (
        ids, [T0] * n, [T0 + DAY] * n, ["daily"] * n, ["UTC"] * n, ["M"] * n, ["m@example.com"] * n,
        [True] * n, queues.DIGEST, "digest", 5, ["https://x.example/"] * n, [""] * n, [True] * n,
        [False] * n, ["daily"] * n, [],
    )  # fmt: skip
    for mode in ("force_custom_plan", "force_generic_plan"):
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + Q.build_digests, *args)
            finally:
                await tx.rollback()
        nodes = plan_nodes(plan)
        assert sum(node.get("Actual Rows", 0) for node in nodes if node.get("Operation") == "Insert") == 2 * n
        removed = max(node.get("Rows Removed by Join Filter", 0) for node in nodes)
        assert removed <= accounts * per_account, f"{mode}: {removed} pairs filtered"


# --- immediate mode -----------------------------------------------------------------------------


async def test_immediate_coalesces_messages_within_the_window(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    assert settings.immediate_coalesce_seconds == 120
    acc = await factory.account(digest_frequency="immediate", next_digest_at=None, digest_window_start=T0)
    other = await daily(factory)  # not immediate: untouched by the intake hook

    async def arrive(at: datetime, subject: str) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await factory.message(acc, subject=subject, created_at=at)
            await messages_arrived(conn, [acc["id"], other["id"]], settings, at)

    t = T0 + timedelta(hours=3)
    await arrive(t, "first")
    await arrive(t + timedelta(seconds=60), "second")
    assert (await account(pool, acc["id"]))["next_digest_at"] == t + timedelta(seconds=120)
    assert (await account(pool, other["id"]))["next_digest_at"] == other["next_digest_at"]
    assert (await run_pass(pool, redis, settings, t + timedelta(seconds=119))).accounts == 0

    await arrive(t + timedelta(seconds=130), "third")  # after the window's end, before the pass ran
    one = await run_pass(pool, redis, settings, t + timedelta(seconds=135))
    assert (one.digests, one.messages, one.emails) == (1, 2, 1)
    [email] = await digest_emails(pool)
    assert email["context"]["frequency"] == "immediate"
    assert [m["subject"] for m in email["context"]["categories"][0]["messages"]] == ["second", "first"]
    # The third message keeps the account due, one window after it arrived.
    assert (await account(pool, acc["id"]))["next_digest_at"] == t + timedelta(seconds=250)
    two = await run_pass(pool, redis, settings, t + timedelta(seconds=250))
    assert (two.digests, two.messages) == (1, 1)
    assert (await account(pool, acc["id"]))["next_digest_at"] is None
    assert len(await digest_emails(pool)) == 2


async def test_immediate_with_read_message_sends_nothing(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    acc = await factory.account(digest_frequency="immediate", next_digest_at=None)
    async with pool.acquire() as conn:
        msg = await factory.message(acc, created_at=T0)
        await messages_arrived(conn, [acc["id"]], settings, T0)
    await pool.execute(
        "UPDATE messages SET read_at = $2 WHERE id = $1", msg["id"], T0 + timedelta(seconds=10)
    )
    result = await run_pass(pool, redis, settings, T0 + timedelta(minutes=5))
    assert (result.accounts, result.emails) == (1, 0)
    assert (await account(pool, acc["id"]))["next_digest_at"] is None


# --- preview and delivery ----------------------------------------------------------------------


async def test_preview_renders_without_marking(
    pool: asyncpg.Pool, settings: Settings, factory: Factory
) -> None:
    acc = await daily(factory, external_id="pre-1", name="Pia")
    await factory.message(acc, category="news", subject="Hello <world>", created_at=T0 + timedelta(hours=1))
    result = await preview(pool, settings, "pre-1", now=T0 + timedelta(hours=2))
    assert result.rendered is not None
    assert result.rendered.subject == "1 new message in your inbox: news"
    assert "Hello <world>" in result.rendered.text
    assert "Hello &lt;world&gt;" in result.rendered.html
    assert "https://notifier.test/u/" in result.rendered.html
    assert await pool.fetchval("SELECT count(*) FROM digests") == 0
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM messages WHERE id IN (SELECT message_id FROM message_digests)"
        )
        == 0
    )
    empty = await daily(factory, external_id="pre-2")
    assert (await preview(pool, settings, empty["external_id"], now=T0)).rendered is None


async def test_content_built_in_sql_equals_the_python_preview(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    # The pass builds contents in SQL for speed; previews build them in Python. Same result.
    acc = await factory.account(
        external_id="same-1",
        timezone="Asia/Kolkata",
        digest_frequency="daily",
        digest_window_start=T0,
        next_digest_at=T0 + DAY,
    )
    bodies = [
        "short",
        "  leading and   inner\n\nwhitespace\ttabs  ",
        "x" * 159,
        "y" * 160,
        "z" * 161,
        ("word " * 60).strip(),
        "Ünïcödé — “quotes” & <tags> " * 8,
    ]
    for i, body in enumerate(bodies * 2):
        await factory.message(
            acc,
            category=("news", "events", "a-b.c_d")[i % 3],
            subject=f"Subject {i} <&>",
            body=body,
            url=f"https://example.org/{i}" if i % 2 else None,
            created_at=T0 + timedelta(hours=1, minutes=7 * i),
        )
    # Two categories whose newest messages were created at the same instant: the later id first.
    await factory.message(acc, category="tie-a", subject="Tie A", created_at=T0 + timedelta(hours=20))
    await factory.message(acc, category="tie-b", subject="Tie B", created_at=T0 + timedelta(hours=20))
    expected = await preview(pool, settings, "same-1", now=T0 + DAY + timedelta(hours=1))
    assert expected.context is not None
    assert [c["name"] for c in expected.context["categories"]][:2] == ["tie-b", "tie-a"]
    await run_pass(pool, redis, settings, T0 + DAY + timedelta(hours=1))
    [email] = await digest_emails(pool)
    assert expected.context is not None
    assert email["context"] == expected.context


async def test_digest_is_delivered_with_its_content(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory, smtp: Any, run_worker: Any
) -> None:
    acc = await daily(factory, name="Dora", email="dora@example.com")
    for i in range(7):
        await factory.message(
            acc, category="events", subject=f"Event {i}", created_at=T0 + timedelta(hours=1, minutes=i)
        )
    await factory.message(
        acc,
        category="news",
        subject="Big news",
        body="word " * 60,
        url="https://example.org/big",
        created_at=T0 + timedelta(hours=5),
    )
    result = await run_pass(pool, redis, settings, T0 + DAY)
    assert result.emails == 1
    await run_worker(queues.DIGEST)
    assert len(smtp.received) == 1
    got = smtp.received[0]
    assert got.recipients == ["dora@example.com"]
    msg = got.message
    assert msg["Subject"] == "8 new messages in your inbox"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "https://notifier.test/u/" in msg["List-Unsubscribe"]
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Hello Dora," in text
    assert text.index("Big news") < text.index("Event 6") < text.index("Event 2")
    assert "Event 1" not in text and "...and 2 more in events" in text
    assert "https://notifier.test/inbox" in text
    assert "https://notifier.test/preferences/" in text and "https://notifier.test/u/" in text
    assert 'href="https://example.org/big"' in html and "and 2 more in events" in html
    assert 'style="' in html  # CSS inlined for mail clients
    # A long body is cut with an ellipsis that keeps ASCII content ASCII: both parts go as 7bit.
    assert ("word " * 31).strip() + "..." in text and "word&hellip;" in html
    assert [p["Content-Transfer-Encoding"] for p in msg.iter_parts()] == ["7bit", "7bit"]
    assert await pool.fetchval("SELECT status FROM emails WHERE kind = 'digest'") == "sent"
    # Sending again delivers nothing more.
    await run_pass(pool, redis, settings, T0 + DAY)
    await run_worker(queues.DIGEST)
    assert len(smtp.received) == 1


@pytest.mark.parametrize("bad", ["not an address", "x@y\r\nBcc: evil@example.com"])
async def test_unmailable_address_does_not_block_the_batch(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory, bad: str
) -> None:
    broken = await daily(factory, email=bad)
    fine = await daily(factory)
    for a in (broken, fine):
        await factory.message(a, created_at=T0 + timedelta(hours=1))
    result = await run_pass(pool, redis, settings, T0 + DAY)
    assert (result.accounts, result.digests, result.emails, result.skipped) == (2, 1, 1, [broken["id"]])
    assert [e["account_id"] for e in await digest_emails(pool)] == [fine["id"]]
    # No e-mail, so nothing is marked as digested (issue 17.6): the message stays pending.
    pending = "SELECT count(*) FROM messages WHERE account_id = $1 AND id NOT IN (SELECT message_id FROM message_digests)"
    assert await pool.fetchval(pending, broken["id"]) == 1


# --- hooks: registration, intake and corrections drive the schedule ---------------------------------


async def test_api_registration_intake_and_correction_drive_the_schedule(
    client: Any, pool: asyncpg.Pool, redis: ArqRedis, settings: Settings
) -> None:
    from notifier.api import auth

    _, key = await auth.create_key(pool, "hooks", ["accounts", "messages"])
    headers = {"Authorization": f"Bearer {key}"}
    resp = await client.post(
        "/v1/accounts",
        json={"external_id": "hook-1", "email": "hook@example.com", "name": "Hook"},
        headers=headers,
    )
    assert resp.status == 201, await resp.text()
    row = await pool.fetchrow("SELECT * FROM accounts WHERE external_id = 'hook-1'")
    # Registration opened the first window: daily at 08:00 UTC by default.
    due = row["next_digest_at"]
    assert due is not None and (due.hour, due.minute) == (8, 0)
    assert timedelta(0) < due - row["digest_window_start"] <= DAY

    # Correcting the time zone moves the open window's end to 08:00 in the new zone.
    resp = await client.patch("/v1/accounts/hook-1", json={"timezone": "Asia/Tokyo"}, headers=headers)
    assert resp.status == 200, await resp.text()
    moved = (await account(pool, row["id"]))["next_digest_at"]
    assert moved.astimezone(ZoneInfo("Asia/Tokyo")).hour == 8

    # On "immediate", a posted message makes the member due one coalescing window later.
    resp = await client.put(
        "/v1/accounts/hook-1/preferences", json={"digest_frequency": "immediate"}, headers=headers
    )
    assert resp.status == 200 and (await resp.json())["next_digest_at"] is None
    before = datetime.now(UTC)
    resp = await client.post(
        "/v1/accounts/hook-1/messages",
        json={"category": "news", "subject": "Now", "body": "b"},
        headers=headers,
    )
    assert resp.status == 201, await resp.text()
    due = (await account(pool, row["id"]))["next_digest_at"]
    window = timedelta(seconds=settings.immediate_coalesce_seconds)
    assert before + window - timedelta(seconds=5) <= due <= datetime.now(UTC) + window
    result = await run_pass(pool, redis, settings, due)
    assert (result.digests, result.emails) == (1, 1)


async def test_pass_repairs_immediate_members_the_hook_missed(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    acc = await factory.account(digest_frequency="immediate", next_digest_at=None)
    await factory.message(acc, created_at=T0)  # no hook ran (e.g. it failed after commit)
    early = await run_pass(pool, redis, settings, T0 + timedelta(seconds=30))
    assert early.accounts == 0
    assert (await account(pool, acc["id"]))["next_digest_at"] == T0 + timedelta(seconds=120)
    late = await run_pass(pool, redis, settings, T0 + timedelta(seconds=120))
    assert (late.digests, late.emails) == (1, 1)


async def test_messages_locked_by_readers_are_skipped_not_waited_for(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory, database: str
) -> None:
    acc = await daily(factory)
    kept = await factory.message(acc, subject="Kept", created_at=T0 + timedelta(hours=1))
    read = await factory.message(acc, subject="Being read", created_at=T0 + timedelta(hours=2))
    undone = await factory.message(acc, subject="Read, then undone", created_at=T0 + timedelta(hours=3))
    readers = [await asyncpg.connect(database) for _ in range(2)]
    try:
        # Two members' requests hold their messages' row locks while the pass runs: it neither
        # waits for them nor puts those messages in the digest.
        for reader, message in zip(readers, (read, undone), strict=True):
            await reader.execute("BEGIN")
            await reader.execute("UPDATE messages SET read_at = now() WHERE id = $1", message["id"])
        async with asyncio.timeout(10):
            result = await run_pass(pool, redis, settings, T0 + DAY, concurrency=1)
        await readers[0].execute("COMMIT")
        await readers[1].execute("ROLLBACK")
    finally:
        for reader in readers:
            await reader.close()
    assert (result.digests, result.messages, result.emails) == (1, 1, 1)
    digest = await pool.fetchrow("SELECT * FROM digests")
    assert digest["message_count"] == 1
    assert (
        await pool.fetchval("SELECT digest_id FROM message_digests WHERE message_id = $1", kept["id"])
        == digest["id"]
    )
    [email] = await digest_emails(pool)
    assert email["context"]["total"] == 1
    assert [m["subject"] for m in email["context"]["categories"][0]["messages"]] == ["Kept"]
    # The one read stays out; the one whose reading was undone goes in the next digest.
    following = await run_pass(pool, redis, settings, T0 + 2 * DAY)
    assert (following.digests, following.messages) == (1, 1)
    assert (
        await pool.fetchval("SELECT digest_id FROM message_digests WHERE message_id = $1", read["id"]) is None
    )
    assert (
        await pool.fetchval("SELECT digest_id FROM message_digests WHERE message_id = $1", undone["id"])
        is not None
    )


async def test_cli_preview_prints_the_next_digest_and_marks_nothing(
    pool: asyncpg.Pool, settings: Settings, factory: Factory
) -> None:
    acc = await factory.account(external_id="cli-1", digest_frequency="daily", next_digest_at=T0)
    await factory.message(acc, category="news", subject="Preview me", created_at=T0 - timedelta(hours=1))
    env = {**os.environ, **settings.to_env()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.cli", "digests", "preview", "cli-1",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "Subject: 1 new message in your inbox: news" in text
    assert "Preview me" in text and "https://notifier.test/u/" in text
    assert await pool.fetchval("SELECT count(*) FROM digests") == 0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier.cli", "digests", "preview", "nobody",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 2 and "no account with external_id 'nobody'" in err.decode()


async def test_hourly_and_weekly_windows_in_other_zones_through_passes(
    pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, factory: Factory
) -> None:
    from notifier.preferences import start_schedule

    hourly = await factory.account(digest_frequency="hourly", timezone="Asia/Kolkata")
    weekly = await factory.account(
        digest_frequency="weekly", digest_weekday=5, digest_hour=17, timezone="America/New_York"
    )
    async with pool.acquire() as conn:
        await start_schedule(conn, hourly, T0)
        await start_schedule(conn, weekly, T0)
    clock = T0
    while clock < T0 + 14 * DAY:
        for acc in (hourly, weekly):
            await factory.message(acc, created_at=clock)
        clock += timedelta(minutes=20) if clock < T0 + timedelta(hours=3) else timedelta(hours=6)
        await run_pass(pool, redis, settings, clock)

    async def ends(acc: asyncpg.Record) -> list[datetime]:
        rows = await pool.fetch("SELECT window_end FROM digests WHERE account_id = $1 ORDER BY id", acc["id"])
        return [r["window_end"] for r in rows]

    # Kolkata is UTC+5:30: its hours begin at half past the UTC hour.
    assert (await ends(hourly))[:3] == [T0 + timedelta(minutes=30 + 60 * h) for h in range(3)]
    # Friday 17:00 in New York (EDT) is 21:00 UTC.
    assert await ends(weekly) == [datetime(2026, 6, 5, 21, tzinfo=UTC), datetime(2026, 6, 12, 21, tzinfo=UTC)]
    # Every message before the last window's end went into exactly one digest.
    for acc in (hourly, weekly):
        last = (await ends(acc))[-1]
        assert not await pool.fetchval(
            "SELECT count(*) FROM messages WHERE account_id = $1 AND id NOT IN (SELECT message_id FROM message_digests) AND created_at < $2",
            acc["id"],
            last,
        )


def test_contexts_queued_before_the_cut_flag_still_render() -> None:
    # An e-mail queued by an older pass has no "cut" (nor "at") in its messages; it must still render.
    from notifier.digest_email import render_digest
    from notifier.mail.render import Language, Templates

    message = {"id": 1, "subject": "Old", "snippet": "Old snippet…", "url": None, "when": "Mon 1 Jun, 09:00"}
    context = {
        "name": "Ann",
        "frequency": "daily",
        "total": 1,
        "categories": [{"name": "news", "count": 1, "messages": [message], "more": 0}],
        "inbox_url": "https://notifier.test/inbox",
        "window_start": "2026-06-01T08:00:00Z",
        "window_end": "2026-06-02T08:00:00Z",
        "unsubscribe_url": "https://notifier.test/u/x",
        "preferences_url": "https://notifier.test/preferences/x",
        "public_url": "https://notifier.test",
        "postal_address": "",
        "to_address": "ann@example.com",
    }
    rendered = render_digest(Templates(), context, Language())
    assert "Mon 1 Jun, 09:00" in rendered.text
    assert "Old snippet…" in rendered.text and "Old snippet…" in rendered.html
