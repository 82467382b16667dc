"""Member import: a CSV file of N members (100,000 at scale 1, 1 % of rows bad) imported with
`member_import.import_csv`, rows per second beside a bare `COPY` of the same file in the same run.

Baseline, same run: `COPY … FROM` the same file (asyncpg `copy_to_table`, CSV, header) into a
table of five text columns, with no checking at all; once before the import and once after (the
machine is shared; the mean is compared). The import is timed in-process on an empty database
(every row created), then again over the same file (every row unchanged).

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
from pathlib import Path

import asyncpg

from bench.common import BenchEnv, Figure
from notifier import audit
from notifier.db import scratch_database
from notifier.member_import import import_csv

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


async def bare_copy(conn: asyncpg.Connection, path: Path) -> float:
    """Seconds to COPY the file into an unchecked table of text columns (then emptied)."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS bare_copy (external_id text, email text, name text, timezone text, locale text)"
    )
    await conn.execute("TRUNCATE bare_copy")
    start = time.perf_counter()
    await conn.copy_to_table("bare_copy", source=path, format="csv", header=True)
    return time.perf_counter() - start


async def bare_insert(conn: asyncpg.Connection) -> float:
    """Seconds to INSERT … SELECT the copied rows into `accounts` as they are (its indexes and
    defaults, no check, no audit, no digest window), then remove them: what storing members costs
    before anything an import adds."""
    start = time.perf_counter()
    await conn.execute(
        "INSERT INTO accounts (external_id, email, name, timezone, locale)"
        " SELECT external_id, email, name, timezone, locale FROM bare_copy"
    )
    elapsed = time.perf_counter() - start
    await conn.execute("TRUNCATE accounts CASCADE")
    return elapsed


async def timed_import(conn: asyncpg.Connection, path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb") as file:
        result = await import_csv(conn, file, source=path.name, actor=audit.Actor("system", "import"))
    elapsed = time.perf_counter() - start
    assert result.failed > 0 and result.created + result.unchanged + result.failed > 0
    return elapsed


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
            first = await timed_import(conn, big)
            again = await timed_import(conn, big)
            after = await bare_copy(conn, big)
            await conn.execute("TRUNCATE accounts, audit_log, imports CASCADE")
        finally:
            await conn.close()
        rss_small = await asyncio.to_thread(cli_peak_rss_mb, dsn, small)
        async with scratch_database(env.database_url, "notifier_bench_import_rss") as dsn2:
            rss_big = await asyncio.to_thread(cli_peak_rss_mb, dsn2, big)
    copy_rate = n / ((before + after) / 2)
    env.notes.append(
        f"import: {n:,} rows, bare COPY {before:.2f}s / {after:.2f}s, bare INSERT … SELECT into accounts "
        f"{insert:.2f}s, import {first:.2f}s, re-run {again:.2f}s; "
        f"self RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    return [
        Figure(
            "import", f"{n:,} rows, 1 % bad, all new", n / first, "rows/s", copy_rate, "bare COPY", "≥ 0.5"
        ),
        Figure(
            "import",
            f"{n:,} rows, 1 % bad, all new",
            n / first,
            "rows/s",
            n / insert,
            "bare INSERT … SELECT into accounts",
        ),
        Figure(
            "import", "same file again (all unchanged)", n / again, "rows/s", copy_rate, "bare COPY", "≥ 0.5"
        ),
        Figure(
            "import", f"CLI peak RSS, {n:,} rows", rss_big, "MB", rss_small, f"{n // 10:,} rows", "≈ 1 (flat)"
        ),
    ]
