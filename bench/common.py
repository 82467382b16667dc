"""What every benchmark shares: the figures table, Postfix's smtp-sink, and fresh services.

Convention: a module `bench/bench_<topic>.py` defines `async def run(env: BenchEnv) -> list[Figure]`.
Each figure is measured beside a baseline taken in the same run, because this machine is shared
and noisy: compare ratios, not absolute numbers. `python -m bench` runs them all and prints a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib

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
    """Run Postfix's smtp-sink on a free loopback port; yields the port. It accepts everything
    (and offers PIPELINING)."""
    with counting_smtp_sink(backlog) as sink:
        yield sink.port


@dataclass
class Sink:
    port: int
    counters: Path

    def delivered(self) -> int:
        """Messages the sink accepted so far (its `-c` counter, written when "." is received)."""
        found = re.findall(rb"mesg=(\d+)", self.counters.read_bytes()[-200:])
        return int(found[-1]) if found else 0


@contextlib.contextmanager
def counting_smtp_sink(backlog: int = 256) -> Iterator[Sink]:
    """Postfix's smtp-sink on a free loopback port, counting what it accepted: for exactly-once
    checks at the receiving end."""
    port = free_port()
    counters = Path(tempfile.mkstemp(prefix="smtp-sink-", suffix=".txt")[1])
    out = counters.open("wb")
    proc = subprocess.Popen(
        [smtp_sink_path(), "-c", "-u", "root", f"127.0.0.1:{port}", str(backlog)],
        stdout=out,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    try:
        yield Sink(port, counters)
    finally:
        proc.terminate()
        proc.wait(5)
        out.close()
        counters.unlink()


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) process `pid` has used so far (Linux /proc); None when it is
    gone or not on this machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class DatabaseCpu:
    """CPU seconds spent by the PostgreSQL backends serving one database (those on this machine,
    found by the database's name in their process titles) while `DatabaseCpu.sampling` runs.
    Backends come and go with the pools, so they are looked at every `interval` seconds and each
    counts what it used since it was first seen (or since it started, when it started meanwhile).
    The looking runs in a child process: scanning /proc twenty times a second in the benchmarked
    process took ~5 % of its event loop (py-spy), time the engine measured beside it lost."""

    database: str
    interval: float = 0.05
    seconds: float = 0.0
    _first: dict[int, float] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)

    def _backends(self) -> dict[int, float]:
        title = b"postgres: "
        name = f" {self.database} ".encode()
        found: dict[int, float] = {}
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes()
            except OSError:
                continue
            if text.startswith(title) and name in text:
                cpu = process_cpu(int(cmdline.parent.name))
                if cpu is not None:
                    found[int(cmdline.parent.name)] = cpu
        return found

    def _look(self, *, started: bool) -> None:
        for pid, cpu in self._backends().items():
            self._first.setdefault(pid, cpu if started else 0.0)
            self._last[pid] = cpu

    def _total(self) -> float:
        return sum(self._last[pid] - self._first[pid] for pid in self._last)

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[DatabaseCpu]:
        # Forked (not spawned): the child runs only `_sample_database`, and spawning would import
        # the bench's main module again.
        context = multiprocessing.get_context("fork")
        stop = context.Event()
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(
            target=_sample_database, args=(self.database, self.interval, stop, sending), daemon=True
        )
        child.start()
        await asyncio.to_thread(receiving.recv)  # its first look is taken: the clock starts
        try:
            yield self
        finally:
            stop.set()
            self.seconds = await asyncio.to_thread(receiving.recv)
            child.join(5)


def _sample_database(database: str, interval: float, stop: Any, out: Any) -> None:
    """In `DatabaseCpu.sampling`'s child: look until `stop` is set, then send the total."""
    cpu = DatabaseCpu(database, interval)
    cpu._look(started=True)
    out.send(None)
    while not stop.wait(interval):
        cpu._look(started=False)
    cpu._look(started=False)
    out.send(cpu._total())


def smtp_source_rate(port: int, message: bytes, n: int, sessions: int = 16) -> float:
    """Postfix's `smtp-source` (C, no pipelining) sending `n` messages of `message`'s size over
    `sessions` connections kept open (`-d`); messages per second. The transport's limit here."""
    path = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    with tempfile.NamedTemporaryFile("wb", suffix=".eml") as fh:
        fh.write(message.replace(b"\r\n", b"\n"))  # it appends CRLF to each line
        fh.flush()
        start = time.perf_counter()
        subprocess.run(
            [path, "-d", "-s", str(sessions), "-m", str(n), "-F", fh.name, "-f", "news@example.org",
             "-t", "reader@example.com", f"127.0.0.1:{port}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        return n / (time.perf_counter() - start)


async def plain_loop_rate(port: int, message: bytes, n: int, connections: int = 8) -> float:
    """The plain Python client: aiosmtplib's `sendmail` over `connections` connections, each taking
    the next of `n` pre-built messages; no database. Messages per second."""
    left = iter(range(n))

    async def one() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await client.connect()
        for i in left:
            await client.sendmail("news@example.org", [f"reader{i}@example.com"], message)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return n / (time.perf_counter() - start)


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
