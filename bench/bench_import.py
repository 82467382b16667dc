"""Member import: a CSV file of N members (100,000 at scale 1, 1 % of rows bad) imported with
`member_import.import_csv`, rows per second beside a bare `COPY` of the same file in the same run.

Baseline, same run: `COPY … FROM` the same file (asyncpg `copy_to_table`, CSV, header) into a
table of five text columns, with no checking at all; once before the import and once after (the
machine is shared; the mean is compared). The import is timed in-process on an empty database
(every row created), then again over the same file (every row unchanged).

Time is also taken as CPU seconds (this process's and the PostgreSQL backend's, read from
/proc when the server runs on this machine), which a shared machine's load disturbs far less than
the clock: rows per CPU-second beside the same baselines.

Memory: `notifier members import` run as a process on a file of N/10 rows and on one of N rows,
its peak resident set size (`ru_maxrss`) for each: flat in the file's size means the two are close.
"""

from __future__ import annotations

import asyncio
import csv
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.common import BenchEnv, Figure, process_cpu
from notifier import audit
from notifier.db import scratch_database
from notifier.member_import import import_csv, register
from notifier.schedule import is_valid_timezone

IMPORT_ACTOR = audit.Actor("system", "import")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney")


def write_members(path: Path, n: int, bad_every: int = 100) -> None:
    """N member rows; every `bad_every`th has a bad e-mail address, time zone or external id."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(("external_id", "email", "name", "timezone", "locale"))
        for i in range(n):
            row = [f"member-{i}", f"member.{i}@example.com", f"Member Number {i}", ZONES[i % 5], "en"]
            if i % bad_every == bad_every - 1:
                kind = (i // bad_every) % 3
                if kind == 0:
                    row[1] = f"member.{i}@@example"
                elif kind == 1:
                    row[3] = "Mars/Olympus"
                else:
                    row[0] = f"bad id {i}"
            writer.writerow(row)


@dataclass(frozen=True)
class Cost:
    """What a step took: seconds by the clock, and CPU seconds of this process plus the database
    backend serving `conn` (None when the server is not on this machine)."""

    wall: float
    cpu: float | None


async def measure(conn: asyncpg.Connection, step: Callable[[], Awaitable[object]]) -> Cost:
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    backend, own, start = process_cpu(pid), time.process_time(), time.perf_counter()
    await step()
    wall, own = time.perf_counter() - start, time.process_time() - own
    after = process_cpu(pid)
    return Cost(wall, None if backend is None or after is None else own + after - backend)


async def bare_copy(conn: asyncpg.Connection, path: Path) -> Cost:
    """COPY the file into an unchecked table of text columns (emptied first)."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS bare_copy (external_id text, email text, name text, timezone text, locale text)"
    )
    await conn.execute("TRUNCATE bare_copy")
    return await measure(
        conn, lambda: conn.copy_to_table("bare_copy", source=path, format="csv", header=True)
    )


async def bare_insert(conn: asyncpg.Connection) -> Cost:
    """INSERT … SELECT the copied rows into `accounts` as they are (its indexes and defaults, no
    check, no audit, no digest window), then remove them: what storing members costs before
    anything an import adds."""
    cost = await measure(
        conn,
        lambda: conn.execute(
            "INSERT INTO accounts (external_id, email, name, timezone, locale)"
            " SELECT external_id, email, name, timezone, locale FROM bare_copy"
        ),
    )
    await conn.execute("TRUNCATE accounts CASCADE")
    return cost


async def bare_register(conn: asyncpg.Connection) -> Cost:
    """The import's own registering statement (`member_import.register`: accounts, their audit
    rows and digest windows) over the copied rows put straight into the staging table, then
    remove them: what registering members costs by the API's rules, before the file is read,
    checked and staged."""
    import_id = await conn.fetchval(
        "INSERT INTO imports (actor_type, actor, source) VALUES ('system', 'bench', 'bare') RETURNING id"
    )
    await conn.execute(
        "INSERT INTO import_rows (import_id, row_no, external_id, email, name, timezone, locale)"
        " SELECT $1, row_number() OVER (), external_id, email, name, timezone, locale FROM bare_copy",
        import_id,
    )
    zones = [
        z for (z,) in await conn.fetch("SELECT DISTINCT timezone FROM bare_copy") if is_valid_timezone(z)
    ]
    now = await conn.fetchval("SELECT now()")
    async with conn.transaction():
        cost = await measure(conn, lambda: register(conn, import_id, IMPORT_ACTOR, zones, now))
    await conn.execute("TRUNCATE accounts, audit_log, imports, import_rows CASCADE")
    return cost


async def timed_import(conn: asyncpg.Connection, path: Path) -> Cost:
    async def step() -> None:
        with path.open("rb") as file:
            result = await import_csv(conn, file, source=path.name, actor=IMPORT_ACTOR)
        assert result.failed > 0 and result.created + result.unchanged + result.failed > 0

    return await measure(conn, step)


def cli_peak_rss_mb(dsn: str, path: Path) -> float:
    """Peak RSS of `notifier members import FILE` as its own process (the database emptied first)."""
    env = {**os.environ, "NOTIFIER_DATABASE_URL": dsn, "NOTIFIER_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "notifier.cli", "members", "import", str(path), "--errors", os.devnull],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"notifier members import exited {proc.returncode}")
    return usage.ru_maxrss / 1024


async def run(env: BenchEnv) -> list[Figure]:
    n = max(1000, int(100_000 * env.scale))
    big = env.workdir / "members.csv"
    small = env.workdir / "members-small.csv"
    write_members(big, n)
    write_members(small, n // 10)
    async with scratch_database(env.database_url, "notifier_bench_import") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            before = await bare_copy(conn, big)
            insert = await bare_insert(conn)
            registering = await bare_register(conn)
            first = await timed_import(conn, big)
            again = await timed_import(conn, big)
            after = await bare_copy(conn, big)
            await conn.execute("TRUNCATE accounts, audit_log, imports CASCADE")
        finally:
            await conn.close()
        rss_small = await asyncio.to_thread(cli_peak_rss_mb, dsn, small)
        async with scratch_database(env.database_url, "notifier_bench_import_rss") as dsn2:
            rss_big = await asyncio.to_thread(cli_peak_rss_mb, dsn2, big)
    copy_rate = n / ((before.wall + after.wall) / 2)
    env.notes.append(
        f"import: {n:,} rows, bare COPY {before.wall:.2f}s / {after.wall:.2f}s, bare INSERT … SELECT into "
        f"accounts {insert.wall:.2f}s, the import's registering statement alone {registering.wall:.2f}s, import {first.wall:.2f}s, re-run {again.wall:.2f}s; CPU seconds "
        f"(client + backend): {_cpu(before)} / {_cpu(after)}, {_cpu(insert)}, {_cpu(registering)}, {_cpu(first)}, {_cpu(again)}; "
        f"self RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    all_new, rerun = f"{n:,} rows, 1 % bad, all new", "same file again (all unchanged)"
    figures = [
        Figure("import", all_new, n / first.wall, "rows/s", copy_rate, "bare COPY", "≥ 0.5"),
        Figure(
            "import", all_new, n / first.wall, "rows/s", n / insert.wall, "bare INSERT … SELECT into accounts"
        ),
        Figure(
            "import", all_new, n / first.wall, "rows/s", n / registering.wall, "registering statement alone"
        ),
        Figure("import", rerun, n / again.wall, "rows/s", copy_rate, "bare COPY", "≥ 0.5"),
    ]
    if (
        before.cpu and after.cpu and insert.cpu and registering.cpu and first.cpu and again.cpu
    ):  # the server is local
        copy_cpu = 2 * n / (before.cpu + after.cpu)
        per_cpu = "rows/CPU-s"
        figures += [
            Figure("import", f"{all_new}, CPU", n / first.cpu, per_cpu, copy_cpu, "bare COPY"),
            Figure(
                "import",
                f"{all_new}, CPU",
                n / first.cpu,
                per_cpu,
                n / insert.cpu,
                "bare INSERT",
            ),
            Figure(
                "import", f"{all_new}, CPU", n / first.cpu, per_cpu, n / registering.cpu, "registering alone"
            ),
            Figure("import", f"{rerun}, CPU", n / again.cpu, per_cpu, copy_cpu, "bare COPY"),
        ]
    figures.append(
        Figure(
            "import", f"CLI peak RSS, {n:,} rows", rss_big, "MB", rss_small, f"{n // 10:,} rows", "≈ 1 (flat)"
        )
    )
    return figures


def _cpu(cost: Cost) -> str:
    return "-" if cost.cpu is None else f"{cost.cpu:.2f}"
