"""Single-message intake as a user runs it, and a burst to one member (issue 16's Performance list).

`python -m bench intake_defaults [--scale S]`: wrk at 64 connections posts
`POST /v1/accounts/{id}/messages` to
1. `notifier web` with the defaults (NOTIFIER_LOG_LEVEL unset: INFO, the access log on, written to
   a file as a service manager would take it);
2. the same with NOTIFIER_LOG_LEVEL=WARNING (no access log; what bench_intake measures);
3. the bare baseline of bench_intake (aiohttp + one asyncpg INSERT, no log, asyncpg's default
   pool, which sends its reset query on every release: two round trips to PostgreSQL a request);
4. the same bare handler on a pool released like notifier's (no reset query: one statement a
   request, as notifier's intake): a second, stricter baseline, also for the CPU per request;
and then to the defaults server with every request for one member (a burst to one account)
against random members (spread out). Goals: defaults >= 0.85 of the bare baseline with p99 under
50 ms; burst >= 0.7 of spread with p99 under 100 ms. Rounds alternate; best of two.

BENCH_INTAKE_BEFORE_TREE=DIR adds `notifier web` with the defaults run from another checkout's
source (`git archive` of an older commit, say) as one more server in the same rounds, so that a
change is measured against the code before it under the same load (`python -P`: the bench's own
directory does not shadow that source).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from typing import Any

from bench.bench_intake import (
    ACCOUNTS,
    CONNECTIONS,
    DONE_LUA,
    MESSAGE,
    POOL_SIZE,
    SINGLE_LUA,
    _drop_database,
    _measure,
    _prepare_database,
    _server,
    _wrk,
)
from bench.common import BenchEnv, Figure, note_wrk_errors, web_env
from notifier.embedded import free_port

BEFORE_TREE = os.environ.get("BENCH_INTAKE_BEFORE_TREE", "")

BURST_LUA = """
local body = [[%(body)s]]
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.path = "/v1/accounts/acct-1/messages"
wrk.body = body
"""


async def run(env: BenchEnv) -> list[Figure]:
    name, dsn, key = await _prepare_database(env.database_url)
    work = env.workdir / "intake_defaults"
    work.mkdir(parents=True, exist_ok=True)
    seconds = 16 * env.scale
    try:
        spread = work / "spread.lua"
        spread.write_text(
            SINGLE_LUA % {"body": json.dumps(MESSAGE), "key": key, "accounts": ACCOUNTS} + DONE_LUA
        )
        burst = work / "burst.lua"
        burst.write_text(BURST_LUA % {"body": json.dumps(MESSAGE), "key": key} + DONE_LUA)
        base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        defaults = web_env(dsn, env.redis_url, secrets.token_urlsafe(32), work, POOL_SIZE)
        defaults.pop("NOTIFIER_LOG_LEVEL", None)
        web = [sys.executable, "-c", "from notifier.cli import main; main()", "web"]
        ports = {
            "defaults": free_port(),
            "no-log": free_port(),
            "bare": free_port(),
            "bare-same-pool": free_port(),
        }
        commands = {
            "defaults": ([*web, "--port", str(ports["defaults"])], defaults),
            "no-log": ([*web, "--port", str(ports["no-log"])], {**defaults, "NOTIFIER_LOG_LEVEL": "WARNING"}),
            "bare": (
                [sys.executable, "-m", "bench.bench_intake", "baseline", str(ports["bare"]), dsn],
                base_env,
            ),
            "bare-same-pool": (
                [sys.executable, "-m", "bench.bench_intake", "baseline", str(ports["bare-same-pool"]), dsn,
                 "--no-reset"],
                base_env,
            ),
        }  # fmt: skip
        if BEFORE_TREE:
            ports["before"] = free_port()
            commands["before"] = (
                [sys.executable, "-P", *web[1:], "--port", str(ports["before"])],
                {**defaults, "PYTHONPATH": BEFORE_TREE},
            )
        results: dict[str, list[dict[str, Any]]] = {}
        with contextlib.ExitStack() as stack:
            pids = {
                who: stack.enter_context(_server(argv, ports[who], server_env, work / f"{who}.log"))
                for who, (argv, server_env) in commands.items()
            }
            for port in ports.values():
                _wrk(port, spread, CONNECTIONS, 2)
            for _ in range(2):
                for who, port in ports.items():
                    results.setdefault(who, []).append(
                        _measure(pids[who], port, spread, CONNECTIONS, seconds / 4)
                    )
                results.setdefault("burst", []).append(
                    _measure(pids["defaults"], ports["defaults"], burst, CONNECTIONS, seconds / 4)
                )
            log_lines = sum(1 for _ in (work / "defaults.log").open("rb"))
    finally:
        await _drop_database(env.database_url, name)

    note_wrk_errors(env, "intake_defaults", results)
    env.notes.append(f"intake_defaults: the defaults server wrote {log_lines:,} log lines")
    best = {who: max(rs, key=lambda r: r["rps"]) for who, rs in results.items()}
    cpu = {who: sum(r["cpu_us"] for r in rs) / len(rs) for who, rs in results.items()}
    bare = "bare aiohttp + 1 INSERT"
    same_pool = "bare aiohttp + 1 INSERT, notifier's pool settings"
    before = []
    if BEFORE_TREE:
        older = f"the same, code of {BEFORE_TREE}"
        before = [
            Figure("intake defaults", "req/s @64, access log on", best["defaults"]["rps"], "req/s",
                   best["before"]["rps"], older),
            Figure("intake defaults", "server CPU per request, access log on", cpu["defaults"], "µs",
                   cpu["before"], older),
        ]  # fmt: skip
    return [
        *before,
        Figure("intake defaults", "req/s @64, access log on", best["defaults"]["rps"], "req/s",
               best["bare"]["rps"], bare, ">= 0.85"),
        Figure("intake defaults", "req/s @64, access log off", best["no-log"]["rps"], "req/s",
               best["bare"]["rps"], bare),
        Figure("intake defaults", "req/s @64, access log on", best["defaults"]["rps"], "req/s",
               best["no-log"]["rps"], "access log off"),
        Figure("intake defaults", "req/s @64, access log on", best["defaults"]["rps"], "req/s",
               best["bare-same-pool"]["rps"], same_pool),
        Figure("intake defaults", "server CPU per request, access log on", cpu["defaults"], "µs",
               cpu["no-log"], "access log off"),
        Figure("intake defaults", "server CPU per request, access log on", cpu["defaults"], "µs",
               cpu["bare"], bare),
        Figure("intake defaults", "server CPU per request, access log on", cpu["defaults"], "µs",
               cpu["bare-same-pool"], same_pool),
        Figure("intake defaults", "p99 @64, access log on", best["defaults"]["p99_us"] / 1000, "ms",
               best["bare"]["p99_us"] / 1000, bare, "< 50 ms"),
        Figure("intake burst", "req/s @64, all to one member", best["burst"]["rps"], "req/s",
               best["defaults"]["rps"], "spread over 1,000 members", ">= 0.7"),
        Figure("intake burst", "p99 @64, all to one member", best["burst"]["p99_us"] / 1000, "ms",
               best["defaults"]["p99_us"] / 1000, "spread over 1,000 members", "< 100 ms"),
    ]  # fmt: skip
