"""Intake throughput: `notifier web` against bare aiohttp + asyncpg baselines, all driven by wrk.

1. Single messages: wrk posts `POST /v1/accounts/{id}/messages` at 64 connections. The baseline
   is a separate process with a bare aiohttp handler that parses the JSON and does one asyncpg
   INSERT of the same row (no auth, no validation, no account lookup), on asyncpg's default
   pool. A second baseline is the same handler on a pool configured like notifier's (no reset
   query on release), to show what the application itself costs. Goal: >= 0.85 of the
   baseline's requests/s, p99 < 50 ms.
2. Batches: wrk posts 1,000-message `POST /v1/messages` requests at 8 connections; the baseline
   handler inserts the same 1,000 rows with one unnest INSERT (no validation, no lookup). The
   same INSERT run straight from asyncpg by 8 tasks (no HTTP) shows the database's ceiling.
   Goal: >= 100,000 messages/s. The CPU time of every `postgres` process on this machine per
   request shows what the database itself needs of the machine for those rows.

Rounds alternate between the servers to spread the noise of a shared machine evenly; the best
of two rounds of each is reported. All servers run as one process each against the same fresh
database with the same pool size; notifier's per-key rate limit is switched off
(NOTIFIER_API_RATE_LIMIT=0) so that it does not cap the measurement.
Every server runs on the same event loop (uvloop, as `notifier web` by default) with the same
number of processes (1 unless BENCH_INTAKE_PROCESSES says otherwise; several share the port with
SO_REUSEPORT, and their CPU time is summed); BENCH_INTAKE_LOOP=asyncio compares the standard loop.
Run a baseline server alone:
`python -m bench.bench_intake baseline PORT DSN [--no-reset] [--loop L] [--processes N]`.
"""

from __future__ import annotations

import asyncio
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

import asyncpg

from bench.common import BenchEnv, Figure, create_database
from notifier.embedded import free_port

CONNECTIONS = 64
BATCH = 1000
BATCH_CONNECTIONS = 8
ACCOUNTS = 1000
POOL_SIZE = 10
# Every server (notifier and the baselines) runs on this event loop with this many processes;
# the defaults are `notifier web`'s. BENCH_INTAKE_LOOP=asyncio / BENCH_INTAKE_PROCESSES=2 compare.
LOOP = os.environ.get("BENCH_INTAKE_LOOP", "uvloop")
PROCESSES = int(os.environ.get("BENCH_INTAKE_PROCESSES", "1"))

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


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Like notifier.db: release without asyncpg's reset query."""


def baseline_app(dsn: str, *, reset: bool = True) -> Any:
    """A bare aiohttp app: one asyncpg INSERT per message, one unnest INSERT per batch.

    `reset=False` releases connections the way notifier's pool does (no reset query).
    """
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
        app[pool_key] = await asyncpg.create_pool(
            dsn, min_size=2, max_size=POOL_SIZE, reset=None if reset else _no_reset
        )
        yield
        await app[pool_key].close()

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.cleanup_ctx.append(resources)
    app.router.add_post("/v1/accounts/{external_id}/messages", single)
    app.router.add_post("/v1/messages", batch)
    app.router.add_get("/healthz", healthz)
    return app


# --- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _server(argv: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[int]:
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
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU time so far of a process and its live children, and of every PostgreSQL
    process on this machine (Linux /proc)."""
    ticks = pg_ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            name, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue  # gone meanwhile
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            ticks += int(fields[11]) + int(fields[12])
        elif name == "postgres":
            pg_ticks += int(fields[11]) + int(fields[12])
    hz = os.sysconf("SC_CLK_TCK")
    return ticks / hz, pg_ticks / hz


def _measure(pid: int, port: int, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    """A wrk run, with the server's CPU time per request (steadier than req/s on a busy machine)
    and PostgreSQL's."""
    before, pg_before = _cpu_seconds(pid)
    result = _wrk(port, script, connections, seconds)
    after, pg_after = _cpu_seconds(pid)
    result["cpu_us"] = (after - before) / max(1, result["requests"]) * 1e6
    result["pg_cpu_us"] = (pg_after - pg_before) / max(1, result["requests"]) * 1e6
    return result


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
    from notifier.api import auth
    from notifier.db import migrate

    name, dsn = await create_database(admin_url, "notifier_bench_intake")
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
            # What production's start-up checks ask for (notifier.startup_checks).
            "NOTIFIER_PUBLIC_URL": "https://notifier.example.org",
            "NOTIFIER_SERVICE_FROM": "Example <service@example.org>",
            "NOTIFIER_NEWSLETTER_FROM": "Example News <news@example.org>",
        }
        ports = {"baseline": free_port(), "baseline-same-pool": free_port(), "notifier": free_port()}
        mode = ["--loop", LOOP, "--processes", str(PROCESSES)]
        commands = {
            "baseline": [
                sys.executable, "-m", "bench.bench_intake", "baseline", str(ports["baseline"]), dsn, *mode,
            ],
            "baseline-same-pool": [
                sys.executable, "-m", "bench.bench_intake", "baseline", str(ports["baseline-same-pool"]), dsn,
                "--no-reset", *mode,
            ],
            "notifier": [
                sys.executable, "-c", "from notifier.cli import main; main()", "web",
                "--port", str(ports["notifier"]), *mode,
            ],
        }  # fmt: skip
        single: dict[str, list[dict[str, Any]]] = {who: [] for who in ports}
        batch: dict[str, list[dict[str, Any]]] = {who: [] for who in ports}
        pids: dict[str, int] = {}
        with contextlib.ExitStack() as stack:
            for who, argv in commands.items():
                server_env = notifier_env if who == "notifier" else base_env
                pids[who] = stack.enter_context(_server(argv, ports[who], server_env, work / f"{who}.log"))
            # Warm all (connections, prepared statements, the key cache) before measuring.
            for port in ports.values():
                _wrk(port, single_lua, CONNECTIONS, 2)
            rounds = 2
            for _ in range(rounds):
                for who, port in ports.items():
                    single[who].append(_measure(pids[who], port, single_lua, CONNECTIONS, seconds / rounds))
            for _ in range(rounds):
                for who, port in ports.items():
                    batch[who].append(
                        _measure(pids[who], port, batch_lua, BATCH_CONNECTIONS, batch_seconds / rounds)
                    )
        ceiling = await _database_ceiling(dsn, batch_seconds / rounds)
        stored = await _count(dsn)
    finally:
        await _drop_database(env.database_url, name)

    for who in ports:
        for result in single[who] + batch[who]:
            if result["status_errors"] or result["socket_errors"]:
                env.notes.append(
                    f"intake {who}: {result['status_errors']} non-2xx, {result['socket_errors']} socket errors"
                )
    best = {who: max(rs, key=lambda r: r["rps"]) for who, rs in single.items()}
    best_batch = {who: max(rs, key=lambda r: r["rps"]) for who, rs in batch.items()}
    env.notes.append(f"intake: {stored:,} messages stored in total")
    env.notes.append(f"intake: every server on the {LOOP} event loop, {PROCESSES} process(es) each")
    bare = "bare aiohttp + 1 INSERT"
    same = "bare aiohttp + 1 INSERT, notifier's pool settings"
    bare_batch = "bare aiohttp + 1 unnest INSERT"
    n, b = best["notifier"], best_batch["notifier"]
    return [
        Figure("intake single", "requests/s @64", n["rps"], "req/s", best["baseline"]["rps"], bare,
               ">= 0.85 x baseline"),
        Figure("intake single", "requests/s @64", n["rps"], "req/s", best["baseline-same-pool"]["rps"], same),
        Figure("intake single", "server CPU per request", _mean_cpu(single["notifier"]), "µs",
               _mean_cpu(single["baseline-same-pool"]), same),
        Figure("intake single", "p50 latency", n["p50_us"] / 1000, "ms", best["baseline"]["p50_us"] / 1000, bare),
        Figure("intake single", "p99 latency", n["p99_us"] / 1000, "ms", best["baseline"]["p99_us"] / 1000, bare,
               "< 50 ms"),
        Figure("intake single", "p99 latency", n["p99_us"] / 1000, "ms",
               best["baseline-same-pool"]["p99_us"] / 1000, same),
        Figure("intake batch", f"messages/s (1,000 per request @{BATCH_CONNECTIONS})", b["rps"] * BATCH, "msg/s",
               best_batch["baseline"]["rps"] * BATCH, bare_batch, ">= 100,000 msg/s"),
        Figure("intake batch", f"messages/s (1,000 per request @{BATCH_CONNECTIONS})", b["rps"] * BATCH, "msg/s",
               ceiling, f"the INSERT alone: asyncpg, no HTTP, {BATCH_CONNECTIONS} tasks"),
        Figure("intake batch", "server CPU per 1,000-message request", _mean_cpu(batch["notifier"]) / 1000, "ms",
               _mean_cpu(batch["baseline-same-pool"]) / 1000, "bare aiohttp + 1 unnest INSERT, notifier's pool"),
        Figure("intake batch", "PostgreSQL CPU per 1,000-message request", _mean_cpu(batch["notifier"], "pg_cpu_us")
               / 1000, "ms", _mean_cpu(batch["baseline-same-pool"], "pg_cpu_us") / 1000,
               "bare aiohttp + 1 unnest INSERT, notifier's pool"),
        Figure("intake batch", "p99 latency per request", b["p99_us"] / 1000, "ms",
               best_batch["baseline"]["p99_us"] / 1000, bare_batch),
    ]  # fmt: skip


def _mean_cpu(results: list[dict[str, Any]], key: str = "cpu_us") -> float:
    return float(sum(r[key] for r in results)) / len(results)


async def _database_ceiling(dsn: str, seconds: float) -> float:
    """Messages/s of the baseline's unnest INSERT of 1,000 rows from BATCH_CONNECTIONS tasks, without HTTP."""
    pool = await asyncpg.create_pool(dsn, min_size=BATCH_CONNECTIONS, max_size=BATCH_CONNECTIONS)
    ids = [1 + i % ACCOUNTS for i in range(BATCH)]
    columns = [[MESSAGE[name]] * BATCH for name in ("category", "subject", "body", "url")]
    done = 0
    deadline = time.monotonic() + seconds

    async def insert_until_deadline() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await pool.execute(
                "INSERT INTO messages (account_id, category, subject, body, url)"
                " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])",
                ids,
                *columns,
            )
            done += BATCH

    start = time.monotonic()
    try:
        await asyncio.gather(*(insert_until_deadline() for _ in range(BATCH_CONNECTIONS)))
    finally:
        await pool.close()
    return done / (time.monotonic() - start)


def _serve_baseline(argv: list[str]) -> int:
    """`baseline PORT DSN [--no-reset] [--loop uvloop|asyncio] [--processes N]`: the way
    `notifier web` runs (same loop, same SO_REUSEPORT processes)."""
    import argparse

    from aiohttp import web

    from notifier.cli import new_event_loop, serve_forked

    parser = argparse.ArgumentParser(prog="python -m bench.bench_intake baseline")
    parser.add_argument("port", type=int)
    parser.add_argument("dsn")
    parser.add_argument("--no-reset", action="store_true")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default=LOOP)
    parser.add_argument("--processes", type=int, default=PROCESSES)
    args = parser.parse_args(argv)

    def serve(reuse_port: bool | None = None) -> None:
        web.run_app(
            baseline_app(args.dsn, reset=not args.no_reset),
            host="127.0.0.1",
            port=args.port,
            access_log=None,
            print=None,
            reuse_port=reuse_port,
            loop=new_event_loop(args.loop),
        )

    if args.processes == 1:
        serve()
        return 0
    return serve_forked(args.processes, lambda: serve(reuse_port=True))


if __name__ == "__main__":
    if sys.argv[1:2] == ["baseline"]:
        raise SystemExit(_serve_baseline(sys.argv[2:]))
    raise SystemExit(
        "usage: python -m bench.bench_intake baseline PORT DSN [--no-reset] [--loop L] [--processes N]"
    )
