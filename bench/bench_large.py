"""A large inbox (issue 16's "cost that stays flat as data grows", issue 13's member API figure).

`python -m bench large --scale S` stores S × 50,000,000 messages (default S = 1: the issue's
50 million; `--scale 0.1` is 5 million) spread over twelve months of partitions and 101,000
accounts, beside a small database with the same 1,000 benchmark accounts and only their own
inboxes (50 messages each, 50,000 rows). Then, all driven by wrk against `notifier web` (one
process each, uvloop, pool of 10, the per-key rate limit off, logging at WARNING as in
bench_intake), rounds alternating between the two databases, best of two:

1. intake single (@64) and batch (1,000 per request @8) on the large table against the small one
   (goal: >= 0.9);
2. `GET /member/v1/messages?limit=20` and `GET /member/v1/counts` at 64 connections, random
   benchmark members (each has the same inbox in both databases): p99 large against small, and
   the page beside a bare keyset query served by a bare aiohttp handler on the large database
   (the same SELECT, no auth, no JSON shaping) in the same run (issue 13: p99 < 20 ms);
3. the retention purge of the oldest month (one partition dropped), timed, beside deleting the
   next month's rows row by row in slices of 5,000 as the purge did before partitioning.

The large database is built by INSERT … SELECT in chunks (its time is printed); it needs about
1 GB of disk per million messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.bench_intake import (
    ACCOUNTS,
    BATCH,
    BATCH_CONNECTIONS,
    BATCH_LUA,
    CONNECTIONS,
    DONE_LUA,
    MESSAGE,
    POOL_SIZE,
    SINGLE_LUA,
    _drop_database,
    _server,
    _wrk,
)
from bench.common import BenchEnv, Figure, create_database, note_wrk_errors, web_env
from notifier.embedded import free_port

FULL = 50_000_000  # messages stored at --scale 1
FILLER_ACCOUNTS = 100_000
PER_ACCOUNT = 50  # each benchmark account's inbox, in both databases
MONTHS = 12
CHUNK = 500_000
PAGE = 20

GET_LUA = """
math.randomseed(os.time())
local tokens = {%(tokens)s}
request = function()
  local i = math.random(1, #tokens)
  return wrk.format("GET", "%(path)s", {["Authorization"] = "Bearer " .. tokens[i]})
end
"""

BARE_LUA = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/bare/messages/" .. math.random(1, %(accounts)d))
end
"""

BARE_PAGE = (
    "SELECT id, category, subject, body, url, created_at, read_at, seen_at, archived_at FROM messages"
    f" WHERE account_id = $1 AND archived_at IS NULL ORDER BY id DESC LIMIT {PAGE + 1}"
)


def bare_app(dsn: str) -> Any:
    """A bare aiohttp app: the member page's keyset query, no auth, rows as JSON."""
    from aiohttp import web

    pool_key = web.AppKey("pool", asyncpg.Pool)

    async def page(request: web.Request) -> web.Response:
        rows = await request.app[pool_key].fetch(BARE_PAGE, int(request.match_info["account"]))
        items = [{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows[:PAGE]]
        return web.json_response(
            {"items": items, "next_cursor": None}, dumps=lambda o: json.dumps(o, default=str)
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def resources(app: web.Application) -> Any:
        app[pool_key] = await asyncpg.create_pool(dsn, min_size=2, max_size=POOL_SIZE)
        yield
        await app[pool_key].close()

    app = web.Application()
    app.cleanup_ctx.append(resources)
    app.router.add_get("/bare/messages/{account}", page)
    app.router.add_get("/healthz", healthz)
    return app


async def _database(admin_url: str, label: str, stored: int) -> tuple[str, str, str, float]:
    """A migrated database with the benchmark accounts (acct-1..N, ids 1..N, PER_ACCOUNT messages
    each) and, when `stored` is larger, filler accounts and messages over MONTHS months up to it.
    Returns its name, DSN, an API key and the seconds the fill took."""
    from notifier.api import auth
    from notifier.db import migrate
    from notifier.inbox import maintain_partitions

    name, dsn = await create_database(admin_url, f"notifier_bench_large_{label}")
    conn = await asyncpg.connect(dsn, command_timeout=None)
    started = time.monotonic()
    try:
        await migrate(conn)
        now = datetime.now(UTC)
        first = now - timedelta(days=30 * MONTHS)
        await conn.fetch("SELECT messages_create_partitions($1, now(), 3)", first)
        await conn.execute(
            "INSERT INTO accounts (external_id, email, name)"
            " SELECT 'acct-' || n, 'member' || n || '@example.org', 'Member ' || n FROM generate_series(1, $1) n",
            ACCOUNTS,
        )
        _, key = await auth.create_key(conn, "bench", ["messages"])
        insert = (
            "INSERT INTO messages (account_id, category, subject, body, url, created_at, read_at)"
            " SELECT {account}, (ARRAY['news', 'billing', 'security'])[1 + g % 3], $3, $4, $5,"
            "        $1::timestamptz + (g::float8 / $2) * (now() - $1::timestamptz),"
            "        CASE WHEN g % 3 = 0 THEN now() END"
            " FROM generate_series({lo}, {hi}) g"
        )
        texts = (MESSAGE["subject"], MESSAGE["body"], MESSAGE["url"])
        own = ACCOUNTS * PER_ACCOUNT
        await conn.execute(insert.format(account=f"1 + g % {ACCOUNTS}", lo=1, hi=own), first, own, *texts)
        if stored > own:
            await conn.execute(
                "INSERT INTO accounts (external_id, email, name)"
                " SELECT 'filler-' || n, 'filler' || n || '@example.org', 'Filler' FROM generate_series(1, $1) n",
                FILLER_ACCOUNTS,
            )
            for lo in range(own + 1, stored + 1, CHUNK):
                hi = min(stored, lo + CHUNK - 1)
                account = f"{ACCOUNTS + 1} + (g::bigint * 7919) % {FILLER_ACCOUNTS}"
                await conn.execute(insert.format(account=account, lo=lo, hi=hi), first, stored, *texts)
                print(
                    f"  large: {hi:,} of {stored:,} messages ({time.monotonic() - started:.0f} s)", flush=True
                )
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("ANALYZE accounts")
    except BaseException:
        await conn.close()
        await _drop_database(admin_url, name)
        raise
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await maintain_partitions(pool)  # the months that ended are sealed, as in production
    finally:
        await pool.close()
    return name, dsn, key, time.monotonic() - started


async def _purge(dsn: str) -> dict[str, float]:
    """The retention purge of the oldest month (its partition dropped), and the next month's rows
    deleted in slices as before partitioning, each timed."""
    from notifier import inbox
    from notifier.db import Q

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, command_timeout=None)
    try:
        months = await pool.fetch(
            "SELECT tableoid::regclass::text AS part, min(created_at) AS lo, max(created_at) AS hi, count(*) AS n"
            " FROM messages GROUP BY 1 ORDER BY 2 LIMIT 3"
        )
        oldest, second = months[1], months[2]  # months[0] may be a part month: skip it
        await inbox.purge_messages_before(pool, oldest["lo"])  # the part month before, as a normal night
        started = time.monotonic()
        bound = await pool.fetchval(
            "SELECT (regexp_match(pg_get_expr(relpartbound, oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz"
            " FROM pg_class WHERE relname = $1",
            oldest["part"],
        )
        purged = await inbox.purge_messages_before(pool, bound)
        dropped = time.monotonic() - started
        assert purged.partitions == [oldest["part"]], purged
        started = time.monotonic()
        rows = 0
        while True:  # row by row, in the purge's slices (what the whole purge did before)
            result = await pool.execute(
                Q.purge_messages_before, second["hi"] + timedelta(microseconds=1), 5000
            )
            deleted = int(result.split()[-1])
            rows += deleted
            if deleted < 5000:
                break
        return {
            "drop_s": dropped,
            "drop_rows": oldest["n"],
            "delete_s": time.monotonic() - started,
            "delete_rows": rows,
        }
    finally:
        await pool.close()


async def run(env: BenchEnv) -> list[Figure]:
    stored = int(FULL * env.scale)
    seconds = 10
    work = env.workdir / "large"
    work.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    try:
        small_name, small_dsn, small_key, _ = await _database(env.database_url, "small", 0)
        names.append(small_name)
        large_name, large_dsn, large_key, fill_s = await _database(env.database_url, "large", stored)
        names.append(large_name)
        conn = await asyncpg.connect(large_dsn)
        try:
            total = await conn.fetchval("SELECT count(*) FROM messages")
            size = await conn.fetchval(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) FROM pg_partition_tree('messages')"
            )
            parts = await conn.fetchval("SELECT count(*) FROM pg_partition_tree('messages') WHERE isleaf")
        finally:
            await conn.close()
        env.notes.append(
            f"large: {total:,} messages ({size} with indexes, {parts} partitions) built in {fill_s:.0f} s;"
            f" small: {ACCOUNTS * PER_ACCOUNT:,} messages"
        )
        secret_key = secrets.token_urlsafe(32)
        from notifier.member import tokens

        secret = tokens.inbox_secret(secret_key.encode())
        expires = int(time.time()) + 3 * 3600
        member_tokens = ", ".join(
            f'"{tokens.mint(secret, f"acct-{i}", expires)}"' for i in range(1, ACCOUNTS + 1)
        )

        scripts: dict[str, Path] = {}
        for label, key in (("small", small_key), ("large", large_key)):
            scripts[f"single-{label}"] = work / f"single-{label}.lua"
            scripts[f"single-{label}"].write_text(
                SINGLE_LUA % {"body": json.dumps(MESSAGE), "key": key, "accounts": ACCOUNTS} + DONE_LUA
            )
            body = work / f"batch-{label}.json"
            items = [{"account": f"acct-{1 + i % ACCOUNTS}", **MESSAGE} for i in range(BATCH)]
            body.write_text(json.dumps({"messages": items}))
            scripts[f"batch-{label}"] = work / f"batch-{label}.lua"
            scripts[f"batch-{label}"].write_text(BATCH_LUA % {"path": body, "key": key} + DONE_LUA)
        for what, path in (("page", f"/member/v1/messages?limit={PAGE}"), ("counts", "/member/v1/counts")):
            scripts[what] = work / f"{what}.lua"
            scripts[what].write_text(GET_LUA % {"tokens": member_tokens, "path": path} + DONE_LUA)
        scripts["bare"] = work / "bare.lua"
        scripts["bare"].write_text(BARE_LUA % {"accounts": ACCOUNTS} + DONE_LUA)

        base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        def notifier_env(dsn: str) -> dict[str, str]:
            return web_env(dsn, env.redis_url, secret_key, work, POOL_SIZE)

        ports = {"small": free_port(), "large": free_port(), "bare": free_port()}
        web = [sys.executable, "-c", "from notifier.cli import main; main()", "web"]
        results: dict[str, list[dict[str, Any]]] = {}

        def measure(key: str, port: int, script: str, connections: int) -> None:
            results.setdefault(key, []).append(_wrk(port, scripts[script], connections, seconds / 2))

        with contextlib.ExitStack() as stack:
            for label, dsn in (("small", small_dsn), ("large", large_dsn)):
                stack.enter_context(
                    _server(
                        [*web, "--port", str(ports[label])],
                        ports[label],
                        notifier_env(dsn),
                        work / f"{label}.log",
                    )
                )
            stack.enter_context(
                _server(
                    [sys.executable, "-m", "bench.bench_large", "bare", str(ports["bare"]), large_dsn],
                    ports["bare"],
                    base_env,
                    work / "bare.log",
                )
            )
            for label in ("small", "large"):  # warm: connections, prepared statements, caches
                _wrk(ports[label], scripts["page"], CONNECTIONS, 2)
                _wrk(ports[label], scripts[f"single-{label}"], CONNECTIONS, 2)
            _wrk(ports["bare"], scripts["bare"], CONNECTIONS, 2)
            for _ in range(2):
                for label in ("small", "large"):
                    measure(f"single-{label}", ports[label], f"single-{label}", CONNECTIONS)
                for label in ("small", "large"):
                    measure(f"batch-{label}", ports[label], f"batch-{label}", BATCH_CONNECTIONS)
                for label in ("small", "large"):
                    measure(f"page-{label}", ports[label], "page", CONNECTIONS)
                    measure(f"counts-{label}", ports[label], "counts", CONNECTIONS)
                measure("bare", ports["bare"], "bare", CONNECTIONS)
        purge = await _purge(large_dsn)
    finally:
        for name in names:
            await _drop_database(env.database_url, name)

    note_wrk_errors(env, "large", results)
    best = {key: max(rs, key=lambda r: r["rps"]) for key, rs in results.items()}
    p99 = {key: min(r["p99_us"] for r in rs) / 1000 for key, rs in results.items()}
    n = f"{total / 1e6:.1f}M"
    small = f"{ACCOUNTS * PER_ACCOUNT // 1000}k rows"
    return [
        Figure("large table", f"intake single req/s @64, {n} stored", best["single-large"]["rps"], "req/s",
               best["single-small"]["rps"], f"same, {small}", ">= 0.9"),
        Figure("large table", f"intake batch msg/s @8, {n} stored", best["batch-large"]["rps"] * BATCH, "msg/s",
               best["batch-small"]["rps"] * BATCH, f"same, {small}", ">= 0.9"),
        Figure("large table", f"intake single p99, {n} stored", p99["single-large"], "ms", p99["single-small"],
               f"same, {small}"),
        Figure("large table", f"GET /member/v1/messages p99 @64, {n}", p99["page-large"], "ms", p99["page-small"],
               f"same, {small}", "unchanged"),
        Figure("large table", f"GET /member/v1/messages p99 @64, {n}", p99["page-large"], "ms", p99["bare"],
               f"bare keyset query over HTTP, {n}", "< 20 ms"),
        Figure("large table", f"GET /member/v1/messages req/s @64, {n}", best["page-large"]["rps"], "req/s",
               best["bare"]["rps"], f"bare keyset query over HTTP, {n}"),
        Figure("large table", f"GET /member/v1/counts p99 @64, {n}", p99["counts-large"], "ms", p99["counts-small"],
               f"same, {small}", "unchanged"),
        Figure("large table", f"retention purge: a month dropped ({purge['drop_rows']:,} rows)", purge["drop_s"] * 1000,
               "ms", purge["delete_s"] * 1000, f"deleting a month's {purge['delete_rows']:,} rows in slices", "< 1 s"),
    ]  # fmt: skip


def _serve_bare(argv: list[str]) -> int:
    """`bare PORT DSN`: the bare keyset server, on uvloop as `notifier web`."""
    from aiohttp import web

    from notifier.cli import new_event_loop

    port, dsn = int(argv[0]), argv[1]
    web.run_app(
        bare_app(dsn), host="127.0.0.1", port=port, access_log=None, print=None, loop=new_event_loop("uvloop")
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["bare"]:
        raise SystemExit(_serve_bare(sys.argv[2:]))
    raise SystemExit(
        "usage: python -m bench.bench_large bare PORT DSN (the benchmark: python -m bench large)"
    )
