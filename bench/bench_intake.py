"""Intake throughput: `notifier web` against a bare aiohttp + asyncpg baseline, both driven by wrk.

1. Single messages: wrk posts `POST /v1/accounts/{id}/messages` at 64 connections. The baseline
   is a separate process with a bare aiohttp handler that parses the JSON and does one asyncpg
   INSERT of the same row (no auth, no validation, no account lookup). Goal: >= 0.85 of the
   baseline's requests/s, p99 < 50 ms. Rounds alternate baseline/notifier to spread the noise
   of a shared machine evenly; the best round of each is reported.
2. Batches: wrk posts 1,000-message `POST /v1/messages` requests at 4 connections; the baseline
   handler inserts the same 1,000 rows with one unnest INSERT (no validation, no lookup).
   Goal: >= 100,000 messages/s.

Both servers run as one process each against the same fresh database, with the same pool size;
the per-key rate limit is switched off (NOTIFIER_API_RATE_LIMIT=0) so that it does not cap the
measurement. Run the baseline server alone: `python -m bench.bench_intake baseline PORT DSN`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.common import BenchEnv, Figure
from notifier.embedded import free_port

CONNECTIONS = 64
BATCH = 1000
BATCH_CONNECTIONS = 4
ACCOUNTS = 1000
POOL_SIZE = 10

MESSAGE = {
    "category": "blog.comments",
    "subject": "Someone replied to your post",
    "body": "A new comment on “Spring meeting”: see you there, and thanks for organising!",
    "url": "https://blog.example.org/posts/42#comment-7",
}

SINGLE_LUA = """
math.randomseed(os.time())
local body = [[%(body)s]]
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
request = function()
  return wrk.format(nil, "/v1/accounts/acct-" .. math.random(1, %(accounts)d) .. "/messages", nil, body)
end
"""

BATCH_LUA = """
local f = io.open("%(path)s", "rb")
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.path = "/v1/messages"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
"""

DONE_LUA = """
done = function(summary, latency, requests)
  io.stderr:write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "status_errors": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


# --- the baseline server ----------------------------------------------------------------------


def baseline_app(dsn: str) -> Any:
    """A bare aiohttp app: one asyncpg INSERT per message, one unnest INSERT per batch."""
    from aiohttp import web

    pool_key = web.AppKey("pool", asyncpg.Pool)

    async def single(request: web.Request) -> web.Response:
        data = await request.json()
        row = await request.app[pool_key].fetchrow(
            "INSERT INTO messages (account_id, category, subject, body, url) VALUES ($1, $2, $3, $4, $5)"
            " RETURNING id, created_at",
            int(request.match_info["external_id"].rpartition("-")[2]),
            data["category"],
            data["subject"],
            data["body"],
            data.get("url"),
        )
        return web.json_response({"id": row["id"], "created_at": row["created_at"].isoformat()}, status=201)

    async def batch(request: web.Request) -> web.Response:
        items = (await request.json())["messages"]
        ids = await request.app[pool_key].fetch(
            "INSERT INTO messages (account_id, category, subject, body, url)"
            " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) RETURNING id",
            [int(m["account"].rpartition("-")[2]) for m in items],
            [m["category"] for m in items],
            [m["subject"] for m in items],
            [m["body"] for m in items],
            [m.get("url") for m in items],
        )
        results = [{"index": i, "status": 201, "id": r["id"]} for i, r in enumerate(ids)]
        return web.json_response({"accepted": len(ids), "rejected": 0, "results": results}, status=201)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def resources(app: web.Application) -> Any:
        app[pool_key] = await asyncpg.create_pool(dsn, min_size=2, max_size=POOL_SIZE)
        yield
        await app[pool_key].close()

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.cleanup_ctx.append(resources)
    app.router.add_post("/v1/accounts/{external_id}/messages", single)
    app.router.add_post("/v1/messages", batch)
    app.router.add_get("/healthz", healthz)
    return app


# --- helpers ----------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextlib.contextmanager
def _server(argv: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            import urllib.request

            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}") from None
                    time.sleep(0.1)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wrk(port: int, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    threads = min(2, connections)
    out = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"RESULT (\{.*\})", out.stderr)
    if not match:
        raise RuntimeError(f"wrk gave no result: {out.stdout} {out.stderr}")
    result: dict[str, Any] = json.loads(match[1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


async def _prepare_database(admin_url: str) -> tuple[str, str, str]:
    """A fresh migrated database with accounts acct-1..N (ids 1..N) and an API key."""
    from notifier import auth
    from notifier.db import migrate

    name = f"notifier_bench_intake_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = _with_database(admin_url, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO accounts (external_id, email, name)"
            " SELECT 'acct-' || n, 'member' || n || '@example.org', 'Member ' || n FROM generate_series(1, $1) n",
            ACCOUNTS,
        )
        _, key = await auth.create_key(conn, "bench", ["messages"])
    finally:
        await conn.close()
    return name, dsn, key


async def _drop_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM messages")
        return n
    finally:
        await conn.close()


async def run(env: BenchEnv) -> list[Figure]:
    name, dsn, key = await _prepare_database(env.database_url)
    work = env.workdir / "intake"
    work.mkdir(parents=True, exist_ok=True)
    seconds = 15 * env.scale
    batch_seconds = 10 * env.scale
    try:
        single_lua = work / "single.lua"
        single_lua.write_text(
            SINGLE_LUA % {"body": json.dumps(MESSAGE), "key": key, "accounts": ACCOUNTS} + DONE_LUA
        )
        batch_body = work / "batch.json"
        items = [{"account": f"acct-{1 + i % ACCOUNTS}", **MESSAGE} for i in range(BATCH)]
        batch_body.write_text(json.dumps({"messages": items}))
        batch_lua = work / "batch.lua"
        batch_lua.write_text(BATCH_LUA % {"path": batch_body, "key": key} + DONE_LUA)

        base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        notifier_env = {
            **base_env,
            "NOTIFIER_DATABASE_URL": dsn,
            "NOTIFIER_REDIS_URL": env.redis_url,
            "NOTIFIER_SECRET_KEY": secrets.token_urlsafe(32),
            "NOTIFIER_LOG_LEVEL": "WARNING",
            "NOTIFIER_DB_POOL_MAX": str(POOL_SIZE),
            "NOTIFIER_API_RATE_LIMIT": "0",
            "NOTIFIER_DATA_DIR": str(work),
        }
        base_port, app_port = free_port(), free_port()
        baseline_cmd = [sys.executable, "-m", "bench.bench_intake", "baseline", str(base_port), dsn]
        notifier_cmd = [
            sys.executable,
            "-c",
            "from notifier.cli import main; main()",
            "web",
            "--port",
            str(app_port),
        ]

        single: dict[str, list[dict[str, Any]]] = {"baseline": [], "notifier": []}
        batch: dict[str, list[dict[str, Any]]] = {"baseline": [], "notifier": []}
        with (
            _server(baseline_cmd, base_port, base_env, work / "baseline.log"),
            _server(notifier_cmd, app_port, notifier_env, work / "notifier.log"),
        ):
            # Warm both (connections, prepared statements, the key cache) before measuring.
            for port in (base_port, app_port):
                _wrk(port, single_lua, CONNECTIONS, 2)
            rounds = 2
            for _ in range(rounds):
                for who, port in (("baseline", base_port), ("notifier", app_port)):
                    single[who].append(_wrk(port, single_lua, CONNECTIONS, seconds / rounds))
            for _ in range(rounds):
                for who, port in (("baseline", base_port), ("notifier", app_port)):
                    batch[who].append(_wrk(port, batch_lua, BATCH_CONNECTIONS, batch_seconds / rounds))
        stored = await _count(dsn)
    finally:
        await _drop_database(env.database_url, name)

    for who in ("baseline", "notifier"):
        for result in single[who] + batch[who]:
            if result["status_errors"] or result["socket_errors"]:
                env.notes.append(
                    f"intake {who}: {result['status_errors']} non-2xx, {result['socket_errors']} socket errors"
                )
    best = {who: max(rs, key=lambda r: r["rps"]) for who, rs in single.items()}
    best_batch = {who: max(rs, key=lambda r: r["rps"]) for who, rs in batch.items()}
    env.notes.append(f"intake: {stored:,} messages stored in total")
    return [
        Figure(
            "intake single",
            "requests/s @64",
            best["notifier"]["rps"],
            "req/s",
            best["baseline"]["rps"],
            "bare aiohttp + 1 INSERT",
            ">= 0.85 x baseline",
        ),
        Figure(
            "intake single",
            "p50 latency",
            best["notifier"]["p50_us"] / 1000,
            "ms",
            best["baseline"]["p50_us"] / 1000,
            "bare aiohttp + 1 INSERT",
        ),
        Figure(
            "intake single",
            "p99 latency",
            best["notifier"]["p99_us"] / 1000,
            "ms",
            best["baseline"]["p99_us"] / 1000,
            "bare aiohttp + 1 INSERT",
            "< 50 ms",
        ),
        Figure(
            "intake batch",
            "messages/s (1,000 per request @4)",
            best_batch["notifier"]["rps"] * BATCH,
            "msg/s",
            best_batch["baseline"]["rps"] * BATCH,
            "bare aiohttp + 1 unnest INSERT",
            ">= 100,000 msg/s",
        ),
        Figure(
            "intake batch",
            "p99 latency per request",
            best_batch["notifier"]["p99_us"] / 1000,
            "ms",
            best_batch["baseline"]["p99_us"] / 1000,
            "bare aiohttp + 1 unnest INSERT",
        ),
    ]


def _serve_baseline(port: int, dsn: str) -> None:
    from aiohttp import web

    web.run_app(baseline_app(dsn), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "baseline":
        _serve_baseline(int(sys.argv[2]), sys.argv[3])
    else:
        raise SystemExit("usage: python -m bench.bench_intake baseline PORT DSN")
