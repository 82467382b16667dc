"""What every benchmark shares: the figures table, Postfix's smtp-sink, and fresh services.

Convention: a module `bench/bench_<topic>.py` defines `async def run(env: BenchEnv) -> list[Figure]`.
Each figure is measured beside a baseline taken in the same run, because this machine is shared
and noisy: compare ratios, not absolute numbers. `python -m bench` runs them all and prints a table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notifier.embedded import free_port


@dataclass
class Figure:
    benchmark: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    goal: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


@dataclass
class BenchEnv:
    database_url: str  # an admin URL; benchmarks create their own databases
    redis_url: str
    workdir: Path
    scale: float = 1.0  # multiply sizes (0.1 for a quick run)
    notes: list[str] = field(default_factory=list)


def table(figures: list[Figure]) -> str:
    """The figures as a Markdown table."""
    lines = [
        "| benchmark | metric | value | baseline (same run) | ratio | goal |",
        "|---|---|---:|---:|---:|---|",
    ]
    for f in figures:
        base = f"{f.baseline:,.1f} {f.unit} ({f.baseline_name})" if f.baseline is not None else "-"
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        lines.append(
            f"| {f.benchmark} | {f.metric} | {f.value:,.1f} {f.unit} | {base} | {ratio} | {f.goal} |"
        )
    return "\n".join(lines)


def smtp_sink_path() -> str:
    path = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(path):
        raise SystemExit(
            "Postfix's smtp-sink is missing: apt-get update && "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y postfix"
        )
    return path


@contextlib.contextmanager
def smtp_sink(backlog: int = 256) -> Iterator[int]:
    """Run Postfix's smtp-sink on a free loopback port; yields the port. It accepts everything."""
    port = free_port()
    proc = subprocess.Popen(
        [smtp_sink_path(), "-c", "-u", "root", f"127.0.0.1:{port}", str(backlog)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


def web_env(
    database_url: str, redis_url: str, secret_key: str, workdir: Path, pool_size: int
) -> dict[str, str]:
    """The environment of a benchmarked `notifier web`: logging at WARNING (the access log off;
    drop NOTIFIER_LOG_LEVEL for the defaults), the per-key rate limit off (it would cap the
    measurement) and what production's start-up checks ask for (notifier.startup_checks)."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "NOTIFIER_DATABASE_URL": database_url,
        "NOTIFIER_REDIS_URL": redis_url,
        "NOTIFIER_SECRET_KEY": secret_key,
        "NOTIFIER_LOG_LEVEL": "WARNING",
        "NOTIFIER_DB_POOL_MAX": str(pool_size),
        "NOTIFIER_API_RATE_LIMIT": "0",
        "NOTIFIER_DATA_DIR": str(workdir),
        "NOTIFIER_PUBLIC_URL": "https://notifier.example.org",
        "NOTIFIER_SERVICE_FROM": "Example <service@example.org>",
        "NOTIFIER_NEWSLETTER_FROM": "Example News <news@example.org>",
    }


def note_wrk_errors(env: BenchEnv, label: str, results: dict[str, list[dict[str, Any]]]) -> None:
    """A note for every wrk run (bench_intake's result dicts) that saw non-2xx answers or socket errors."""
    for who, runs in results.items():
        for r in runs:
            if r["status_errors"] or r["socket_errors"]:
                env.notes.append(
                    f"{label} {who}: {r['status_errors']} non-2xx, {r['socket_errors']} socket errors"
                )


async def create_database(admin_url: str, prefix: str) -> tuple[str, str]:
    """A new empty database `<prefix>_<random>` on the server of `admin_url`: its name and DSN."""
    import secrets

    import asyncpg

    from notifier.db import with_database

    name = f"{prefix}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, with_database(admin_url, name)
