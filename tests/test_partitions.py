"""The inbox partitioned by month (migration 0019, docs/scaling.md): existing data moved, partitions
made ahead, lookups by id pruned to the month that holds the id, the retention purge dropping whole
months, and the hot queries' plans index scans on a table large enough for the planner to care.

Each test has its own database: they create, seal and drop partitions, which the shared test
database's per-test TRUNCATE must not meet."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from notifier import inbox
from notifier.db import MIGRATIONS_DIR, Q, create_pool, migrate, scratch_database
from tests.conftest import Services
from tests.factory import Factory

PARTITIONING = 19  # the migration under test


def month_start(t: datetime, months: int = 0) -> datetime:
    """The first instant (UTC) of the month `months` after the month of `t`."""
    index = t.year * 12 + t.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


@pytest.fixture
async def own_pool(services: Services) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a freshly migrated database of this test's own."""
    async with scratch_database(services.admin_url, "notifier_partitions") as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=4)
        yield pool
        await pool.close()


async def partitions(pool: asyncpg.Pool) -> dict[str, int]:
    """Each partition of `messages` with its row count."""
    names = await pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'messages'::regclass ORDER BY 1"
    )
    return {r["relname"]: await pool.fetchval(f'SELECT count(*) FROM "{r["relname"]}"') for r in names}


def part(t: datetime) -> str:
    return f"messages_{t:%Y_%m}"


async def test_migration_moves_existing_messages_and_keeps_their_ids(
    services: Services, tmp_path: Path
) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if int(path.name[:4]) < PARTITIONING:
            shutil.copy(path, before)
    now = datetime.now(UTC)
    ages = [400, 95, 60, 40, 31, 3, 0]  # days: several months, one far back
    async with scratch_database(services.admin_url, "notifier_partition_move", migrated=False) as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await migrate(conn, before)
            factory = Factory(pool)
            ann, bob = await factory.account(external_id="ann"), await factory.account(external_id="bob")
            digest_id = await pool.fetchval(
                "INSERT INTO digests (account_id, frequency, window_start, window_end)"
                " VALUES ($1, 'daily', now() - interval '1 day', now()) RETURNING id",
                ann["id"],
            )
            for days in ages:
                await factory.message(ann, created_at=now - timedelta(days=days), data={"days": days})
                await factory.message(bob, created_at=now - timedelta(days=days), read_at=now, digest_id=None)
            await factory.message(ann, created_at=now + timedelta(days=200), digest_id=digest_id)  # far ahead
            await pool.execute("DELETE FROM messages WHERE id = 3")  # a gap in the ids stays a gap
            old_rows = [dict(r) for r in await pool.fetch("SELECT * FROM messages ORDER BY id")]
            last_id = await pool.fetchval("SELECT last_value FROM messages_id_seq")
        finally:
            await pool.close()

        conn = await asyncpg.connect(dsn)
        try:
            assert PARTITIONING in await migrate(conn)
        finally:
            await conn.close()

        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            assert await pool.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'messages'") == "p"
            # Migration 0021 moved `digest_id` onto the digests and the pending messages to their queue.
            moved = [{k: v for k, v in r.items() if k != "digest_id"} for r in old_rows]
            assert [dict(r) for r in await pool.fetch("SELECT * FROM messages ORDER BY id")] == moved
            assert [
                tuple(r) for r in await pool.fetch("SELECT message_id, digest_id FROM message_digests")
            ] == [(r["id"], r["digest_id"]) for r in old_rows if r["digest_id"] is not None]
            assert [
                r["message_id"]
                for r in await pool.fetch("SELECT message_id FROM pending_messages ORDER BY 1")
            ] == [r["id"] for r in old_rows if r["digest_id"] is None and r["read_at"] is None]
            placed = await partitions(pool)
            for days in ages:
                assert placed[part(now - timedelta(days=days))] >= 1
            assert placed["messages_default"] == 1  # the one 200 days ahead
            assert part(month_start(now, 3)) in placed  # three months ahead exist
            # The months that ended are sealed with their id range.
            sealed = {r["partition"] for r in await pool.fetch("SELECT partition FROM message_id_ranges")}
            assert part(now - timedelta(days=60)) in sealed and part(month_start(now)) not in sealed

            # The id sequence goes on where it was, under the name the batch intake uses.
            fresh = await pool.fetchrow(Q.insert_message, "ann", "news", "new", "body", None, None)
            assert fresh["id"] == last_id + 1
            assert (
                await pool.fetchval("SELECT pg_get_serial_sequence('messages', 'id')")
                == "public.messages_id_seq"
            )

            # The queries work on the moved rows: the inbox page, a lookup and a change by id, counts.
            anns = [r for r in old_rows if r["account_id"] == ann["id"]]
            page = await pool.fetch(Q.inbox_page, ann["external_id"], None, False, None, "include", 100)
            assert [r["id"] for r in page] == [fresh["id"]] + [r["id"] for r in reversed(anns)]
            oldest = min(anns, key=lambda r: r["created_at"])
            found = await pool.fetchrow(Q.member_message, ann["id"], oldest["id"])
            assert found is not None and found["subject"] == oldest["subject"]
            assert await pool.fetchrow(Q.member_message, bob["id"], oldest["id"]) is None
            assert (await pool.fetchrow(Q.member_mark_read, ann["id"], oldest["id"]))["read_at"] is not None
            counts = await pool.fetch(Q.member_counts, ann["id"])
            assert sum(r["unread"] for r in counts) == len(anns) + 1 - 1  # + the fresh one, - the read one

            # Indexes and foreign keys came along (the created_at index as migration 0023 left it).
            indexes = {
                r["indexdef"].split(" USING ")[1]
                for r in await pool.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = $1", part(now))
            }
            assert {
                "btree (account_id, id DESC)",
                "btree (created_at, id)",
                "btree (id, created_at)",
            } <= indexes
            await pool.execute("DELETE FROM digests WHERE id = $1", digest_id)
            assert await pool.fetchval("SELECT count(*) FROM message_digests") == 0
            await pool.execute("DELETE FROM accounts WHERE id = $1", bob["id"])  # ON DELETE CASCADE
            assert await pool.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", bob["id"]) == 0
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await Factory(pool).message(bob)
        finally:
            await pool.close()


async def test_partitions_are_made_ahead_and_strays_move_into_them(own_pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    placed = await partitions(own_pool)
    assert {part(month_start(now, k)) for k in range(4)} <= set(placed)  # the migration's
    assert part(month_start(now, 5)) not in placed
    ann = await Factory(own_pool).account(external_id="ann")
    stray = await Factory(own_pool).message(ann, created_at=month_start(now, 5) + timedelta(days=2))
    assert (await partitions(own_pool))["messages_default"] == 1

    made = await inbox.maintain_partitions(own_pool, months_ahead=5)
    assert made == [part(month_start(now, 4)), part(month_start(now, 5))]
    placed = await partitions(own_pool)
    assert placed["messages_default"] == 0 and placed[part(month_start(now, 5))] == 1
    found = await own_pool.fetchrow(Q.member_message, ann["id"], stray["id"])
    assert found is not None and found["created_at"] == stray["created_at"]
    assert await inbox.maintain_partitions(own_pool, months_ahead=5) == []  # idempotent


async def test_a_sealed_month_holds_its_ids_and_lookups_by_id_skip_the_others(own_pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    await own_pool.fetch("SELECT messages_create_partitions($1, now(), 3)", month_start(now, -3))
    factory = Factory(own_pool)
    ann = await factory.account(external_id="ann")
    two_ago = [
        await factory.message(ann, created_at=month_start(now, -2) + timedelta(days=d)) for d in (1, 9)
    ]
    one_ago = [
        await factory.message(ann, created_at=month_start(now, -1) + timedelta(days=d)) for d in (1, 9)
    ]
    this = await factory.message(ann)

    # As the daily job does a day after each month's end (here: every month that ended by now).
    sealed = [r["name"] for r in await own_pool.fetch("SELECT messages_seal_partitions(now()) AS name")]
    assert sealed == [part(month_start(now, k)) for k in (-3, -2, -1)]
    ranges = {
        r["partition"]: (r["min_id"], r["max_id"])
        for r in await own_pool.fetch("SELECT * FROM message_id_ranges")
    }
    assert ranges[part(month_start(now, -2))] == (two_ago[0]["id"], two_ago[1]["id"])

    async def scanned(message_id: int) -> set[str]:
        async with own_pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")  # pruned at execution
            await conn.execute(f"PREPARE lookup (bigint, bigint) AS {Q.member_message}")
            plan = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE lookup({ann['id']}, {message_id})"
            )
            await conn.execute("DEALLOCATE lookup")
        return {n["Relation Name"] for n in plan_nodes(plan) if "Relation Name" in n}

    touched = await scanned(two_ago[1]["id"])
    assert part(month_start(now, -2)) in touched
    assert not touched & {part(month_start(now, -1)), part(month_start(now, -3))}  # sealed, other ids
    assert part(month_start(now, -2)) not in await scanned(this["id"])
    for message in (*two_ago, *one_ago, this):
        assert (await own_pool.fetchrow(Q.member_message, ann["id"], message["id"]))["id"] == message["id"]
        assert (await own_pool.fetchrow(Q.member_archive, ann["id"], message["id"]))[
            "archived_at"
        ] is not None

    # A row that would break a sealed month's id range is refused, never stored out of reach.
    with pytest.raises(asyncpg.CheckViolationError):
        await factory.message(ann, created_at=month_start(now, -2) + timedelta(days=3))


async def test_retention_purge_drops_whole_months(own_pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    await own_pool.fetch("SELECT messages_create_partitions($1, now(), 3)", month_start(now, -14))
    ann = await Factory(own_pool).account(external_id="ann")
    await own_pool.execute(
        "INSERT INTO messages (account_id, category, subject, body, created_at)"
        " SELECT $1, 'news', 's', 'b', $2::timestamptz + g * interval '1 hour' FROM generate_series(0, 24 * 430) g",
        ann["id"],
        month_start(now, -14),
    )
    await inbox.maintain_partitions(own_pool)  # sealed, as they would be by then
    limit = now - timedelta(days=365)
    doomed_months = [part(month_start(now, k)) for k in range(-14, 0) if month_start(now, k + 1) <= limit]
    boundary_rows = await own_pool.fetchval(
        "SELECT count(*) FROM messages WHERE created_at >= $1 AND created_at < $2", month_start(limit), limit
    )

    purged = await inbox.purge_messages_before(own_pool, limit)
    assert purged.partitions == doomed_months and len(doomed_months) >= 2
    assert purged.rows == boundary_rows  # only the straddling month is deleted row by row
    assert not set(doomed_months) & set(await partitions(own_pool))
    assert await own_pool.fetchval("SELECT min(created_at) FROM messages") >= limit
    assert not set(doomed_months) & {
        r["partition"] for r in await own_pool.fetch("SELECT partition FROM message_id_ranges")
    }
    assert await inbox.purge_messages_before(own_pool, limit) == inbox.Purged([], 0)


async def test_a_month_is_dropped_with_the_inbox_unlocked_and_a_stopped_purge_is_finished(
    own_pool: asyncpg.Pool,
) -> None:
    now = datetime.now(UTC)
    await own_pool.fetch("SELECT messages_create_partitions($1, now(), 3)", month_start(now, -4))
    factory = Factory(own_pool)
    ann = await factory.account(external_id="ann")
    for k in (-4, -3):
        await factory.message(ann, created_at=month_start(now, k) + timedelta(days=2))
    kept = await factory.message(ann, created_at=now)
    four, three = part(month_start(now, -4)), part(month_start(now, -3))
    # A purge that stopped after detaching: both months are out of the inbox, their tables still there.
    detached = await own_pool.fetch(Q.detach_message_partitions, month_start(now, -2))
    assert [r["name"] for r in detached] == [four, three]
    assert await own_pool.fetchval("SELECT count(*) FROM messages") == 1

    async with own_pool.acquire() as dropping, dropping.transaction():
        assert await dropping.fetchval(Q.drop_detached_message_partition, four)
        # While the drop's transaction is open, intake and the inbox are not waiting for it.
        async with own_pool.acquire() as other, other.transaction():
            await other.execute("SET LOCAL lock_timeout = '200ms'")
            await other.execute(
                "INSERT INTO messages (account_id, category, subject, body) VALUES ($1, 'news', 's', 'b')",
                ann["id"],
            )
            assert await other.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", ann["id"]) == 2

    # The next purge drops what the stopped one left; an attached month is never dropped by name.
    assert await inbox.purge_messages_before(own_pool, month_start(now, -2)) == inbox.Purged([three], 0)
    assert not {four, three} & set(
        await own_pool.fetchval(
            "SELECT array_agg(relname::text) FROM pg_class WHERE relname LIKE 'messages_%'"
        )
    )
    assert not await own_pool.fetchval(Q.drop_detached_message_partition, part(now))
    queued = await own_pool.fetchval("SELECT array_agg(message_id ORDER BY message_id) FROM pending_messages")
    assert queued[0] == kept["id"] and len(queued) == 2  # the dropped months' messages left the queue


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, CTEs and subplans included."""
    found: list[dict[str, Any]] = []
    stack = [p["Plan"] for p in (json.loads(plan) if isinstance(plan, str) else plan)]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.get("Plans", []))
    return found


HOT_ROWS = 200_000  # enough that a sequential scan of a month costs the planner far more than an index probe


async def test_hot_queries_are_index_scans_on_a_large_table(own_pool: asyncpg.Pool) -> None:
    """Intake, the inbox page, counts, lookups by id, the digest pass and the newsletter freeze: no
    sequential scan of a partition that holds rows, in the custom and in the generic plan (the one
    asyncpg's prepared statements settle on), on 200,000 messages over four months."""
    now = datetime.now(UTC)
    pool = own_pool
    await pool.fetch("SELECT messages_create_partitions($1, now(), 3)", month_start(now, -3))
    await pool.execute(
        "INSERT INTO accounts (external_id, email, name, newsletter)"
        " SELECT 'member-' || g, 'm' || g || '@example.com', 'M', true FROM generate_series(1, 1000) g"
    )
    first = month_start(now, -3)
    await pool.execute(
        "INSERT INTO messages (account_id, category, subject, body, created_at, read_at, archived_at)"
        " SELECT a.id, (ARRAY['news', 'billing', 'security'])[1 + g % 3], 's', 'b',"
        "        $1::timestamptz + (g * ($2::timestamptz - $1::timestamptz) / $3),"
        "        CASE WHEN g % 2 = 0 THEN now() END, CASE WHEN g % 7 = 0 THEN now() END"
        " FROM generate_series(1, $3) g JOIN accounts a ON a.id = 1 + g % 1000",
        first,
        now,
        HOT_ROWS,
    )
    await inbox.maintain_partitions(pool)
    # A third on "immediate" with no due time: the idle members `repair_immediate` looks at.
    await pool.execute(
        "UPDATE accounts SET digest_frequency = 'immediate', next_digest_at = NULL WHERE id % 3 = 0"
    )
    # Digests 1..1000, one per account, listing its messages (as delivery's lookups find them).
    await pool.execute(
        "INSERT INTO digests (account_id, frequency, window_start, window_end, message_count, message_ids)"
        " SELECT account_id, 'daily', now() - interval '1 day', now(), count(*), array_agg(id)"
        " FROM messages GROUP BY account_id ORDER BY account_id"
    )
    await pool.execute("ANALYZE")
    account = await pool.fetchval("SELECT id FROM accounts WHERE external_id = 'member-500'")
    some = await pool.fetchrow(
        "SELECT id, created_at FROM messages WHERE account_id = $1 AND created_at < $2 ORDER BY id DESC LIMIT 1",
        account,
        month_start(now, -1),
    )
    newsletter = await pool.fetchval("INSERT INTO newsletters (subject, body) VALUES ('N', 'T') RETURNING id")
    batch = json.dumps(
        [{"account": f"member-{i}", "category": "news", "subject": "s", "body": "b"} for i in range(1, 1001)]
    )
    n = 10
    ids = list(range(account, account + n))
    queries: dict[str, tuple[Any, ...]] = {
        "insert_message": ("member-500", "news", "s", "b", None, None),
        "insert_messages_batch": (batch,),
        "inbox_page": ("member-500", None, False, None, "exclude", 50),
        "member_counts": (account,),
        "unread_counts": (account,),
        "member_news": (account, some["id"], 50),
        "member_last_message_id": (account,),
        "member_message": (account, some["id"]),
        "member_mark_read": (account, some["id"]),
        "get_inbox_message": ("member-500", some["id"]),
        "has_pending_messages": (account,),
        "preview_messages": (account, now),
        "build_digests": (
            ids,
            [first] * n,
            [now] * n,
            ["daily"] * n,
            ["UTC"] * n,
            ["M"] * n,
            ["m@example.com"] * n,
            [True] * n,
            "notifier:digest",
            "digest",
            5,
            ["https://x.example/"] * n,
            [""] * n,  # $13..$17: which categories are due: all of them here
            [True] * n,
            [False] * n,
            ["daily"] * n,
            [],
        ),
        "waiting_since": (ids, [""] * n, [True] * n, []),
        "digest_messages_gone": (list(range(1, n + 1)),),
        "repair_immediate": (timedelta(seconds=120),),
        "due_at": (now,),
        "release_digest_messages": (list(range(1, n + 1)),),
        "purge_messages_before": (month_start(now, -3) + timedelta(days=3), 5000),
        "fan_out_newsletter": ([], newsletter, "notifier:bulk", [], [], None),  # reads no message
    }
    queries["inbox_page_next"] = ("member-500", some["id"], True, "news", "exclude", 50)
    holding = {name for name, rows in (await partitions(pool)).items() if rows} | {"pending_messages"}
    async with pool.acquire() as conn:
        for mode in ("auto", "force_generic_plan"):
            for name, args in queries.items():
                sql = Q[name.removesuffix("_next")]
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                    params = [t.oid for t in (await conn.prepare(sql)).get_parameters()]
                    types = await conn.fetchval(
                        "SELECT array_agg(t::regtype::text) FROM unnest($1::oid[]) t", params
                    )
                    literals = [
                        f"{await conn.fetchval(f'SELECT quote_nullable(($1::{t})::text)', arg)}::{t}"
                        for t, arg in zip(types, args, strict=True)
                    ]
                    await conn.execute(f"PREPARE hot ({', '.join(types)}) AS {sql}")
                    for _ in range(6):  # past the five custom plans, "auto" settles on its generic plan
                        plan = await conn.fetchval(
                            f"EXPLAIN (FORMAT JSON) EXECUTE hot ({', '.join(literals)})"
                        )
                    await conn.execute("DEALLOCATE hot")
                nodes = plan_nodes(plan)
                scans = {(n["Node Type"], n.get("Relation Name")) for n in nodes if "Relation Name" in n}
                seq = {rel for kind, rel in scans if kind == "Seq Scan" and rel in holding}
                assert not seq, f"{name} ({mode}): sequential scan of {seq}"
                if name == "fan_out_newsletter":
                    assert not any(rel in holding for _, rel in scans)
                elif not name.startswith("insert"):
                    # Found by an index: an index scan, or a bitmap heap scan fed by one.
                    assert any(
                        rel in holding and ("Index" in kind or kind == "Bitmap Heap Scan")
                        for kind, rel in scans
                    ), f"{name}: {scans}"


async def test_the_service_worker_makes_partitions_ahead_every_night(own_pool: asyncpg.Pool) -> None:
    from notifier.queues import SERVICE
    from workers import CRON_JOBS, jobs

    nightly = {job.name: job for job in CRON_JOBS[SERVICE]}["inbox-partitions"]
    assert nightly.run_at_startup and nightly.coroutine is jobs.inbox_partitions
    await own_pool.execute("DROP TABLE " + part(month_start(datetime.now(UTC), 3)))
    assert await jobs.inbox_partitions({"pool": own_pool}) == [part(month_start(datetime.now(UTC), 3))]
    assert await jobs.inbox_partitions({"pool": own_pool}) == []
