"""`python -m chaos [SCENARIO...] [--members N] [--kills K]`: run the chaos scenarios and print
one line of figures per scenario (runs, kills, messages, lost, duplicated, 5xx seen).

Scenarios: kill (workers SIGKILLed while a newsletter and digests send), term (the same with
SIGTERM, as a deploy stops them), redis (Redis flushed,
then restarted empty, mid-send), tempfail (421 then 451 for a while), reject (550 for some
recipients), hang (a server that never answers), postgres (PostgreSQL restarted during intake),
fuzz (schemathesis, `--fuzz-examples` per operation), soak (mixed load at 70% of measured intake
capacity for `--soak-seconds`). Default: all but fuzz and soak.

Each scenario gets a fresh database on NOTIFIER_DATABASE_URL's server (or an embedded pgserver
for `postgres`), its own embedded Redis, and the counting sink of chaos/sink.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
from notifier.db import Q, create_pool, migrate, scratch_database
from notifier.embedded import EmbeddedRedis, free_port
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
        s = self.settings
        return {
            **os.environ,
            "NOTIFIER_ENV": "test",
            "NOTIFIER_DATABASE_URL": s.database_url or "",
            "NOTIFIER_REDIS_URL": s.redis_url or "",
            "NOTIFIER_SECRET_KEY": s.secret.decode(),
            "NOTIFIER_SMTP_HOST": s.smtp_host,
            "NOTIFIER_SMTP_PORT": str(s.smtp_port),
            "NOTIFIER_SMTP_TIMEOUT": str(s.smtp_timeout),
            "NOTIFIER_PUBLIC_URL": s.public_url,
            "NOTIFIER_SERVICE_FROM": s.service_from,
            "NOTIFIER_NEWSLETTER_FROM": s.newsletter_from,
            "NOTIFIER_POSTAL_ADDRESS": s.postal_address,
            "NOTIFIER_DB_POOL_MAX": "4",
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
        Q.insert_newsletter, "News for {{ first_name }}", "", NEWSLETTER_BODY, "markdown", "chaos"
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


async def scenario_kill(
    admin_url: str, members: int, kills: int, sig: signal.Signals = signal.SIGKILL
) -> Outcome:
    """Workers SIGKILLed (`term`: SIGTERMed, as a deploy does) at random moments while a newsletter
    and a batch of digests send."""
    outcome = Outcome("kill" if sig == signal.SIGKILL else "term")
    started = time.monotonic()
    async with stage(admin_url) as s:
        await add_members(s.pool, members)
        await add_digest_members(s.pool, members // 10)
        s.workers.start_all()
        await send_newsletter(s)
        digests = await build_digests(s)
        expected = members + digests
        done = 0
        while done < kills and s.sink.total < expected:
            await asyncio.sleep(random.uniform(0.3, 3.0))
            which = await s.workers.stop_one(sig)
            done += 1
            say(f"{done}/{kills}: worker {which} got {sig.name} and was restarted; {s.sink.total} received")
        await wait_drained(s, expected, limit=600)
        await tally(s, outcome)
        outcome.notes["digests"] = digests
        outcome.notes["sigterms"] = s.workers.stops
    outcome.seconds = time.monotonic() - started
    return outcome


async def scenario_redis(admin_url: str, members: int) -> Outcome:
    """Redis FLUSHALL at a third of the send, Redis restarted empty at two thirds."""
    outcome = Outcome("redis")
    started = time.monotonic()
    async with stage(admin_url) as s:
        await add_members(s.pool, members)
        await add_digest_members(s.pool, members // 10)
        s.workers.start_all()
        await send_newsletter(s)
        digests = await build_digests(s)
        expected = members + digests
        await wait_sent(s, expected // 3)
        await s.redis.flushall()
        s.workers.disrupted_at.append(time.monotonic())
        say(f"redis: FLUSHALL at {s.sink.total} received")
        await wait_sent(s, 2 * expected // 3)
        port, directory = s.embedded_redis.port, s.embedded_redis.directory
        s.workers.disrupted_at.append(time.monotonic())
        s.embedded_redis.stop()
        await asyncio.sleep(2)
        s.embedded_redis = EmbeddedRedis.start(directory, persistent=False, port=port)
        say(f"redis: restarted empty at {s.sink.total} received")
        await wait_drained(s, expected, limit=600)
        await tally(s, outcome)
        outcome.notes["digests"] = digests
    outcome.seconds = time.monotonic() - started
    return outcome


async def scenario_tempfail(admin_url: str, members: int) -> Outcome:
    """Connections refused with 421 for 10 s, then every DATA answered 451 for 10 s more, then
    the server recovers: all delivered after retries."""
    outcome = Outcome("tempfail")
    started = time.monotonic()
    async with stage(admin_url) as s:
        await add_members(s.pool, members)
        s.sink.busy_until = time.monotonic() + 10
        s.sink.tempfail_until = time.monotonic() + 20
        s.workers.start_all()
        await send_newsletter(s)
        await wait_drained(s, members, limit=600)
        await tally(s, outcome)
        outcome.notes["answered_421"] = s.sink.busy
        outcome.notes["answered_451"] = s.sink.tempfailed
        outcome.notes["deferred_events"] = await s.pool.fetchval(
            "SELECT count(*) FROM events WHERE kind = 'deferred'"
        )
    outcome.seconds = time.monotonic() - started
    return outcome


async def scenario_reject(admin_url: str, members: int) -> Outcome:
    """550 5.1.1 for every 20th recipient: those failed and suppressed, the rest delivered once."""
    outcome = Outcome("reject")
    started = time.monotonic()
    async with stage(admin_url) as s:
        await add_members(s.pool, members)
        refused = frozenset(f"reader{i}@example.com" for i in range(20, members + 1, 20))
        s.sink.reject = refused
        s.workers.start_all()
        newsletter_id = await send_newsletter(s)
        await wait_drained(s, members, limit=600)
        await tally(s, outcome, refused=refused)
        figures = await newsletter.figures(s.pool, newsletter_id)
        suppressed = await s.pool.fetchval("SELECT count(*) FROM suppressions")
        failed = await s.pool.fetchval("SELECT count(*) FROM emails WHERE status = 'failed'")
        got_refused = sum(s.sink.received[a] for a in refused)
        outcome.notes.update(
            refused=len(refused), figures=figures, suppressions=suppressed, failed_rows=failed
        )
        checks = {
            "failed rows == refused": failed == len(refused),
            "suppressions == refused": suppressed == len(refused),
            "figures.sent == members - refused": figures["sent"] == members - len(refused),
            "figures.bounced == refused": figures["bounced"] == len(refused),
            "refused got nothing": got_refused == 0,
        }
        outcome.notes["failed_checks"] = [k for k, v in checks.items() if not v]
    outcome.seconds = time.monotonic() - started
    return outcome


async def scenario_hang(admin_url: str, members: int) -> Outcome:
    """A server that accepts connections and never answers for 20 s (SMTP timeout 3 s)."""
    outcome = Outcome("hang")
    started = time.monotonic()
    async with stage(admin_url, smtp_timeout=3.0) as s:
        await add_members(s.pool, members)
        s.sink.hang = True
        s.workers.start_all()
        await send_newsletter(s)
        await asyncio.sleep(20)
        s.sink.hang = False
        s.sink.drop_connections()
        recovered = time.monotonic()
        say(f"hang: server answers again ({s.sink.hung} connections were left hanging)")
        await wait_drained(s, members, limit=600)
        await tally(s, outcome)
        outcome.notes["hung_connections"] = s.sink.hung
        outcome.notes["drained_seconds_after_recovery"] = round(time.monotonic() - recovered, 1)
        outcome.notes["workers_never_exited"] = s.workers.restarts == 0
        if s.workers.restarts:
            outcome.notes["failed_checks"] = ["a worker exited"]
    outcome.seconds = time.monotonic() - started
    return outcome


async def scenario_postgres(clients: int, seconds: float, down: float) -> Outcome:
    """Intake under load (`clients` concurrent producers posting inbox messages to a `notifier web`
    process) while an embedded PostgreSQL is stopped for `down` seconds and started again:
    answers are 2xx or 503 with Retry-After, never another 5xx, and every message that got a 2xx
    is in the database afterwards."""
    import aiohttp

    from notifier import auth
    from notifier.embedded import EmbeddedPostgres

    outcome = Outcome("postgres")
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="notifier-chaos-pg-"))
    pg = EmbeddedPostgres.start(tmp / "postgres", persistent=True)
    embedded_redis = EmbeddedRedis.start(tmp / "redis", persistent=False)
    port = free_port()
    web: subprocess.Popen[bytes] | None = None
    try:
        conn = await asyncpg.connect(pg.url())
        try:
            await migrate(conn)
            await conn.execute(
                """INSERT INTO accounts (external_id, email, name)
                   SELECT 'p-' || i, 'p' || i || '@example.com', 'P ' || i FROM generate_series(1, 50) i"""
            )
            _, key = await auth.create_key(conn, "chaos", ["messages"])
        finally:
            await conn.close()
        env = {
            **os.environ,
            "NOTIFIER_ENV": "test",
            "NOTIFIER_DATABASE_URL": pg.url(),
            "NOTIFIER_REDIS_URL": embedded_redis.url(),
            "NOTIFIER_SECRET_KEY": "chaos-secret-key-not-for-production",
            "NOTIFIER_PORT": str(port),
            "NOTIFIER_HOST": "127.0.0.1",
            "NOTIFIER_API_RATE_LIMIT": "0",
            "NOTIFIER_LOG_LEVEL": os.environ.get("CHAOS_WORKER_LOG_LEVEL", "WARNING"),
            "PYTHONPATH": str(ROOT),
        }
        log = tempfile.NamedTemporaryFile(prefix="chaos-web-", suffix=".log", delete=False)  # noqa: SIM115
        web = subprocess.Popen(  # noqa: ASYNC220  (started once, before the load)
            [sys.executable, "-m", "notifier.cli", "web"], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        base = f"http://127.0.0.1:{port}"
        statuses: dict[str, int] = {}
        accepted: list[str] = []
        no_retry_after = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            headers = {"Authorization": f"Bearer {key}"}
            stop_at = time.monotonic() + seconds
            counter = 0

            async def producer(n: int) -> None:
                nonlocal counter, no_retry_after
                while time.monotonic() < stop_at:
                    counter += 1
                    subject = f"chaos {n}-{counter}"
                    body = {"category": "news", "subject": subject, "body": "x"}
                    try:
                        async with http.post(
                            f"{base}/v1/accounts/p-{n % 50 + 1}/messages", json=body, headers=headers
                        ) as resp:
                            await resp.read()
                            key_ = str(resp.status)
                            if resp.status == 503 and "Retry-After" not in resp.headers:
                                no_retry_after += 1
                            if 200 <= resp.status < 300:
                                accepted.append(subject)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        key_ = type(exc).__name__
                    statuses[key_] = statuses.get(key_, 0) + 1
                    if key_ == "503":
                        await asyncio.sleep(0.2)

            tasks = [asyncio.create_task(producer(n)) for n in range(clients)]
            await asyncio.sleep(seconds / 3)
            say(f"postgres: stopping the server ({len(accepted)} accepted so far)")
            pg.stop()
            await asyncio.sleep(down)
            pg = EmbeddedPostgres.start(tmp / "postgres", persistent=True)
            say(f"postgres: started again ({len(accepted)} accepted so far)")
            await asyncio.gather(*tasks)
        conn = await asyncpg.connect(pg.url())
        try:
            stored = set(
                await conn.fetchval("SELECT array_agg(subject) FROM messages WHERE subject LIKE 'chaos %'")
                or []
            )
        finally:
            await conn.close()
        outcome.messages = len(accepted)
        outcome.delivered = sum(1 for subject in accepted if subject in stored)
        outcome.lost = outcome.messages - outcome.delivered
        outcome.server_errors = sum(v for k, v in statuses.items() if k.startswith("5"))
        outcome.notes.update(
            answers=statuses,
            stored=len(stored),
            stored_without_2xx=len(stored - set(accepted)),
            down_seconds=down,
            clients=clients,
        )
        bad = [k for k in statuses if k.startswith("5") and k != "503"]
        failed = [f"answered {k}" for k in bad]
        if no_retry_after:
            failed.append(f"{no_retry_after} answers 503 without Retry-After")
        if "503" not in statuses:
            failed.append("no 503 seen: the restart did not bite")
        outcome.notes["failed_checks"] = failed
    finally:
        if web is not None:
            web.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                web.wait(10)
        pg.stop()
        embedded_redis.stop()
    outcome.seconds = time.monotonic() - started
    return outcome


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def scenario_soak(admin_url: str, seconds: float, members: int) -> Outcome:
    """Mixed load for `seconds`: intake at 70% of the rate measured first (20 producers, members
    on immediate digests, so the digest pass runs all along), and a newsletter to `members`.
    Memory of web and workers sampled every 10 s must stay flat; no error answers; the queues
    drain afterwards."""
    import aiohttp

    from notifier import auth

    outcome = Outcome("soak")
    started = time.monotonic()
    async with stage(admin_url) as s:
        await add_members(s.pool, members)
        await s.pool.execute(
            """INSERT INTO accounts (external_id, email, name, digest_frequency, next_digest_at)
               SELECT 'soak-' || i, 'soak' || i || '@example.com', 'Soak ' || i, 'immediate', NULL
               FROM generate_series(1, 500) AS i"""
        )
        _, key = await auth.create_key(s.pool, "soak", ["messages"])
        # Immediate digests coalesce 10 s instead of 120 s, so the digest pass has work every minute.
        s.workers.extra_env["NOTIFIER_IMMEDIATE_COALESCE_SECONDS"] = "10"
        port = free_port()
        env = {**s.workers.env(), "NOTIFIER_PORT": str(port), "NOTIFIER_HOST": "127.0.0.1"}
        env["NOTIFIER_API_RATE_LIMIT"] = "0"
        web = subprocess.Popen(  # noqa: ASYNC220  (started once, before the load)
            [sys.executable, "-m", "notifier.cli", "web"],
            env=env,
            cwd=ROOT,
            stdout=s.workers.log,
            stderr=s.workers.log,
        )
        s.workers.start_all()
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        statuses: dict[str, int] = {}
        counter = 0
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                for _ in range(200):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{base}/healthz") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.1)

                async def post_one() -> None:
                    nonlocal counter
                    counter += 1
                    body = {"category": "news", "subject": f"soak {counter}", "body": "x"}
                    try:
                        path = f"{base}/v1/accounts/soak-{counter % 500 + 1}/messages"
                        async with http.post(path, json=body, headers=headers) as resp:
                            await resp.read()
                            key_ = str(resp.status)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        key_ = type(exc).__name__
                    statuses[key_] = statuses.get(key_, 0) + 1

                async def flat_out(until: float) -> None:
                    while time.monotonic() < until:
                        await post_one()

                until = time.monotonic() + 10
                await asyncio.gather(*(flat_out(until) for _ in range(20)))
                capacity = sum(statuses.values()) / 10
                rate = 0.7 * capacity
                say(
                    f"soak: intake capacity {capacity:.0f} requests/s; running at {rate:.0f}/s for {seconds:.0f} s"
                )
                statuses.clear()
                await send_newsletter(s)
                samples: list[tuple[float, float]] = []
                soak_end = time.monotonic() + seconds
                next_sample = time.monotonic()
                interval = 20 / rate  # 20 producers, each paced

                async def paced() -> None:
                    while time.monotonic() < soak_end:
                        t = time.monotonic()
                        await post_one()
                        await asyncio.sleep(max(0.0, interval - (time.monotonic() - t)))

                producers = [asyncio.create_task(paced()) for _ in range(20)]
                while time.monotonic() < soak_end:
                    if time.monotonic() >= next_sample:
                        web_mb = rss_mb(web.pid)
                        worker_mb = sum(rss_mb(p.pid) for p in s.workers.procs.values() if p.poll() is None)
                        samples.append((web_mb, worker_mb))
                        next_sample += 10
                    s.workers.supervise()
                    await asyncio.sleep(0.5)
                await asyncio.gather(*producers)
            drain_start = time.monotonic()
            # Drained: no digest due but unbuilt (the pass runs each minute), no e-mail pending.
            while await s.pool.fetchval("SELECT count(*) FROM accounts WHERE next_digest_at <= now()"):
                if time.monotonic() - drain_start > 300:
                    raise TimeoutError("digests still due 300 s after the soak")
                await asyncio.sleep(1)
            expected = await s.pool.fetchval("SELECT count(*) FROM emails")
            await wait_drained(s, expected, limit=300)
            outcome.notes["drain_seconds"] = round(time.monotonic() - drain_start, 1)
            await tally(s, outcome)
            outcome.notes["digest_emails"] = await s.pool.fetchval(
                "SELECT count(*) FROM emails WHERE kind = 'digest'"
            )
            outcome.notes["intake_stored"] = await s.pool.fetchval("SELECT count(*) FROM messages")
        finally:
            web.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                web.wait(10)
        third = max(1, len(samples) // 3)
        first = [sum(x) for x in samples[:third]]
        last = [sum(x) for x in samples[-third:]]
        growth = (sum(last) / len(last)) / (sum(first) / len(first)) if first and last else 0.0
        outcome.server_errors = sum(v for k, v in statuses.items() if k.startswith("5"))
        outcome.notes.update(
            capacity_per_s=round(capacity),
            rate_per_s=round(rate),
            answers=statuses,
            rss_mb_first_last=[[round(x, 1) for x in samples[0]], [round(x, 1) for x in samples[-1]]]
            if samples
            else [],
            rss_growth_last_third_vs_first=round(growth, 3),
        )
        failed = [k for k in statuses if k != "201"]
        if growth > 1.2:
            failed.append(f"memory grew {growth:.2f}x")
        outcome.notes["failed_checks"] = failed
    outcome.seconds = time.monotonic() - started
    return outcome


def scenario_fuzz(examples: int) -> Outcome:
    """tests/test_schemathesis.py with `examples` generated requests per operation (the normal
    suite runs 10), against its own embedded Redis."""
    outcome = Outcome("fuzz")
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "NOTIFIER_REDIS_URL"}
    env["NOTIFIER_FUZZ_EXAMPLES"] = str(examples)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_schemathesis.py"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    outcome.notes["examples_per_operation"] = examples
    outcome.notes["pytest"] = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    outcome.notes["cases"] = next(
        (line for line in result.stdout.splitlines() if line.startswith("schemathesis:")), "not reported"
    )
    if result.returncode != 0:
        outcome.notes["failed_checks"] = [result.stdout[-3000:]]
    outcome.seconds = time.monotonic() - started
    return outcome


SCENARIOS = ("kill", "term", "redis", "tempfail", "reject", "hang", "postgres")


def report(outcomes: list[Outcome]) -> None:
    print()
    print("| scenario | runs | kills | restarts | messages | delivered | lost | duplicated | 5xx | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        print(
            f"| {o.scenario} | 1 | {o.kills} | {o.restarts} | {o.messages} | {o.delivered} | {o.lost} "
            f"| {o.duplicated}{f' ({o.unavoidable} at a kill)' if o.kills else ''} | {o.server_errors} "
            f"| {o.seconds:.0f} |"
        )
    for o in outcomes:
        print(f"{o.scenario}: {'OK' if o.ok else 'FAILED'} {json.dumps(o.notes, default=str)}")


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=", ".join(SCENARIOS))
    parser.add_argument("--members", type=int, default=20_000, help="newsletter recipients (kill, redis)")
    parser.add_argument("--small", type=int, default=3_000, help="recipients for the SMTP scenarios")
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--fuzz-examples", type=int, default=100, help="schemathesis cases per operation")
    parser.add_argument("--soak-seconds", type=float, default=600, help="duration of `soak` (default 10 min)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    admin_url = os.environ.get("NOTIFIER_DATABASE_URL")
    if not admin_url:
        parser.error("set NOTIFIER_DATABASE_URL to a PostgreSQL server where databases may be created")
    say(f"chaos: scenarios {', '.join(args.scenarios)}; seed {seed}")
    outcomes = []
    for name in args.scenarios:
        say(f"--- {name}")
        if name == "kill":
            outcome = await scenario_kill(admin_url, args.members, args.kills)
        elif name == "term":
            outcome = await scenario_kill(admin_url, args.members, args.kills, signal.SIGTERM)
        elif name == "redis":
            outcome = await scenario_redis(admin_url, args.members)
        elif name == "tempfail":
            outcome = await scenario_tempfail(admin_url, args.small)
        elif name == "reject":
            outcome = await scenario_reject(admin_url, args.small)
        elif name == "hang":
            outcome = await scenario_hang(admin_url, args.small)
        elif name == "fuzz":
            outcome = scenario_fuzz(args.fuzz_examples)
        elif name == "soak":
            outcome = await scenario_soak(admin_url, args.soak_seconds, args.small)
        elif name == "postgres":
            outcome = await scenario_postgres(clients=20, seconds=30, down=5)
        else:
            parser.error(f"unknown scenario {name}")
        say(f"{name}: lost {outcome.lost}, duplicated {outcome.duplicated}, {outcome.seconds:.0f} s")
        outcomes.append(outcome)
    report(outcomes)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
