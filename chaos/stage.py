"""The chaos suite's stage: worker processes to kill and restart, a scratch database, an embedded
Redis, the counting sink, the workload (members, a newsletter, digests) and the tally that compares
the outbox with what the sink received."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from arq import ArqRedis
from arq import create_pool as create_redis_pool
from arq.connections import RedisSettings
from pydantic import SecretStr

from chaos.sink import CountingSink
from notifier import digest, newsletter, queues
from notifier.db import Q, create_pool, scratch_database
from notifier.embedded import EmbeddedRedis
from notifier.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROCFILE_LAYOUT = ("service,digest", "bulk")  # the worker processes, as the Procfile runs them
# A duplicate whose first copy the sink accepted this close to a SIGKILL is the copy SMTP cannot
# avoid: the server took the message, the worker died before it could record the answer.
KILL_WINDOW_SECONDS = 0.1


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


@dataclass
class Outcome:
    scenario: str
    messages: int = 0  # e-mails that should arrive
    delivered: int = 0  # distinct recipients that got at least one
    lost: int = 0
    duplicated: int = 0  # extra copies beyond the first
    kills: int = 0
    restarts: int = 0
    server_errors: int = 0  # 5xx answers seen by clients
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def unavoidable(self) -> int:
        """Duplicates SMTP cannot prevent (RFC 1047): the first copy was accepted by the server
        within KILL_WINDOW_SECONDS of a SIGKILL of the worker, which died before it could record
        the answer. Every other duplicate is a defect."""
        if not self.kills:
            return 0
        return self.duplicated - int(self.notes.get("duplicates_far_from_a_disruption", self.duplicated))

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == self.unavoidable
            and not self.notes.get("duplicates_with_new_message_id")
            and not self.notes.get("failed_checks")
        )


# --- environment ------------------------------------------------------------------------------


def fresh_database(admin_url: str) -> contextlib.AbstractAsyncContextManager[str]:
    """A migrated database of its own, dropped afterwards."""
    return scratch_database(admin_url, "notifier_chaos")


def chaos_settings(dsn: str, redis_url: str, smtp_port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": dsn,
        "redis_url": redis_url,
        "secret_key": SecretStr("chaos-secret-key-not-for-production"),
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "smtp_timeout": 5.0,
        "public_url": "https://notifier.test",
        "service_from": "Example Org <service@example.org>",
        "newsletter_from": "Example News <news@example.org>",
        "postal_address": "1 Example Street",
        "db_pool_min": 1,
        "db_pool_max": 4,
    }
    values.update(overrides)
    return Settings(**values)


class Workers:
    """Worker processes (`python -m chaos.worker`), killed and restarted on demand; a process that
    exits by itself (e.g. Redis went away) is restarted by `supervise`, as a process manager would."""

    def __init__(self, settings: Settings, layout: tuple[str, ...] = PROCFILE_LAYOUT) -> None:
        self.settings = settings
        self.layout = layout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kills = 0  # SIGKILLs
        self.stops = 0  # SIGTERMs (a deploy): a stopping worker must leave nothing to send twice
        # Monotonic times of what the scenario did to the system (each SIGKILL, a Redis flush or
        # restart): a duplicate is placed against the nearest.
        self.disrupted_at: list[float] = []
        self.restarts = 0
        self.extra_env: dict[str, str] = {}
        self.log = tempfile.NamedTemporaryFile(prefix="chaos-worker-", suffix=".log", delete=False)  # noqa: SIM115

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.settings.to_env(),
            "NOTIFIER_LOG_LEVEL": os.environ.get("CHAOS_WORKER_LOG_LEVEL", "WARNING"),
            "PYTHONPATH": str(ROOT),
            **self.extra_env,
        }

    def start(self, queues_: str) -> None:
        self.procs[queues_] = subprocess.Popen(  # noqa: S603  (our own interpreter and module)
            [sys.executable, "-m", "chaos.worker", queues_],
            env=self.env(),
            cwd=ROOT,
            stdout=self.log,
            stderr=self.log,
        )

    def start_all(self) -> None:
        for queues_ in self.layout:
            self.start(queues_)

    async def stop_one(self, sig: signal.Signals = signal.SIGKILL) -> str:
        """Send `sig` to a random worker process, wait until it is gone (without blocking the
        loop: the sink in it must go on answering a stopping worker), and start it again."""
        queues_ = random.choice(self.layout)
        proc = self.procs[queues_]
        if proc.poll() is None:
            proc.send_signal(sig)
            if sig == signal.SIGKILL:
                self.disrupted_at.append(time.monotonic())
                self.kills += 1
            else:
                self.stops += 1
            await asyncio.to_thread(proc.wait)
        self.start(queues_)
        return queues_

    def supervise(self) -> None:
        for queues_, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.restarts += 1
                self.start(queues_)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Stage:
    """One scenario's services: database, Redis, sink, settings, pool, workers."""

    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis
    embedded_redis: EmbeddedRedis
    sink: CountingSink
    workers: Workers


@contextlib.asynccontextmanager
async def stage(admin_url: str, **overrides: Any) -> AsyncIterator[Stage]:
    tmp = Path(tempfile.mkdtemp(prefix="notifier-chaos-"))
    sink = CountingSink()
    await sink.start()
    embedded = EmbeddedRedis.start(tmp / "redis", persistent=False)
    try:
        async with fresh_database(admin_url) as dsn:
            settings = chaos_settings(dsn, embedded.url(), sink.port, **overrides)
            pool = await create_pool(dsn, min_size=1, max_size=4)
            redis = await create_redis_pool(RedisSettings.from_dsn(embedded.url()))
            workers = Workers(settings)
            try:
                yield Stage(settings, pool, redis, embedded, sink, workers)
            finally:
                workers.stop()
                await redis.aclose()
                await pool.close()
    finally:
        embedded.stop()
        await sink.stop()


# --- workload ---------------------------------------------------------------------------------

NEWSLETTER_BODY = (
    "# News for {{ first_name }}\n\nDear {{ name }}, this month's [report](https://example.org/r)."
)


async def add_members(pool: asyncpg.Pool, n: int, prefix: str = "reader") -> None:
    """n members opted in to the newsletter, digests off."""
    await pool.execute(
        """INSERT INTO accounts (external_id, email, name, newsletter, digest_frequency, next_digest_at)
           SELECT $2 || '-' || i, $2 || i || '@example.com', 'Reader ' || i, true, 'off', NULL
           FROM generate_series(1, $1) AS i""",
        n,
        prefix,
    )


async def add_digest_members(pool: asyncpg.Pool, n: int) -> None:
    """n members with a daily digest due now and three unread messages each; no newsletter."""
    await pool.execute(
        """INSERT INTO accounts (external_id, email, name, newsletter, digest_frequency,
                                 digest_window_start, next_digest_at)
           SELECT 'digest-' || i, 'digester' || i || '@example.com', 'Digester ' || i, false, 'daily',
                  now() - interval '1 day', now() - interval '1 minute'
           FROM generate_series(1, $1) AS i""",
        n,
    )
    await pool.execute(
        """INSERT INTO messages (account_id, category, subject, body, created_at)
           SELECT a.id, 'news', 'Message ' || m, 'Body of message ' || m, now() - interval '1 hour'
           FROM accounts a, generate_series(1, 3) AS m WHERE a.external_id LIKE 'digest-%'""",
    )


async def send_newsletter(s: Stage) -> int:
    """Draft, schedule for now and ring `newsletter_start` on the bulk queue (as the API does)."""
    row = await s.pool.fetchrow(
        Q.insert_newsletter, "News for {{ first_name }}", "", NEWSLETTER_BODY, "markdown", "chaos", False
    )
    assert row is not None
    await newsletter.schedule(s.pool, row["id"], datetime.now(UTC), "chaos")
    await s.redis.enqueue_job("newsletter_start", row["id"], _queue_name=queues.BULK)
    return int(row["id"])


async def build_digests(s: Stage) -> int:
    result = await digest.run_pass(s.pool, s.redis, s.settings, datetime.now(UTC) + timedelta(seconds=1))
    return int(result.emails)


async def pending(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM emails WHERE status IN ('queued', 'sending')"))


async def wait_drained(
    s: Stage, expected: int, limit: float, during: Callable[[], Any] | None = None
) -> None:
    """Until `expected` outbox rows exist and none is queued or sending; `during` runs each tick."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if during is not None:
            result = during()
            if asyncio.iscoroutine(result):
                await result
        s.workers.supervise()
        rows = await s.pool.fetchval("SELECT count(*) FROM emails")
        if rows >= expected and await pending(s.pool) == 0:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"not drained after {limit} s: {await pending(s.pool)} pending")


async def tally(s: Stage, outcome: Outcome, *, refused: frozenset[str] = frozenset()) -> None:
    """Compare the outbox with the sink: every row that should arrive arrived exactly once."""
    rows = await s.pool.fetch("SELECT to_address, status FROM emails")
    # An address may rightly get several e-mails (immediate digests): compare counts per address.
    expected: dict[str, int] = {}
    for r in rows:
        if r["to_address"] not in refused:
            expected[r["to_address"]] = expected.get(r["to_address"], 0) + 1
    received = s.sink.received
    outcome.messages = sum(expected.values())
    outcome.delivered = sum(min(n, received[a]) for a, n in expected.items())
    outcome.lost = sum(max(0, n - received[a]) for a, n in expected.items())
    outcome.duplicated = sum(max(0, c - expected.get(a, 0)) for a, c in received.items())
    # Copies that carry another Message-ID than the first: a receiver cannot tell them apart.
    outcome.notes["duplicates_with_new_message_id"] = sum(
        max(0, len(ids) - expected.get(a, 0)) for a, ids in s.sink.message_ids.items()
    )
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    outcome.notes["statuses"] = statuses
    outcome.notes["at_sink_not_in_outbox"] = len(set(s.sink.received) - {r["to_address"] for r in rows})
    outcome.kills = s.workers.kills
    outcome.restarts = s.workers.restarts
    outcome.notes["data_cut_short"] = s.sink.cut_short
    if s.workers.disrupted_at:
        # How far each duplicate's first copy was accepted from the nearest kill: a copy the
        # server accepted in the moment before its worker died (or just after: a final "." already
        # in the socket) cannot have been recorded (RFC 1047); anything further away is a defect.
        gaps: list[tuple[float, int]] = []  # (seconds from the nearest kill, extra copies)
        for address, times in s.sink.accepted_at.items():
            extra = len(times) - expected.get(address, 0)
            if extra > 0:
                first = min(times)
                gaps.append((min(abs(first - k) for k in s.workers.disrupted_at), extra))
        outcome.notes["duplicate_ms_from_a_disruption"] = sorted(round(g * 1000, 1) for g, _ in gaps)
        outcome.notes["duplicates_far_from_a_disruption"] = sum(n for g, n in gaps if g > KILL_WINDOW_SECONDS)


async def wait_sent(s: Stage, at_least: int, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while s.sink.total < at_least and time.monotonic() < deadline:
        s.workers.supervise()
        await asyncio.sleep(0.05)


# --- scenarios --------------------------------------------------------------------------------
