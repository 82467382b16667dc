"""More than one machine, with real servers: PostgreSQL through PgBouncer in transaction mode, and
Redis through Sentinel with a failover in the middle of a send (docs/scaling.md).

Each test starts its own PgBouncer or Redis + replica + Sentinel on free loopback ports and stops
them; they skip when the Debian packages (`pgbouncer`, `redis-sentinel`) are not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from notifier import queues
from notifier.app import create_app
from notifier.db import MIGRATIONS_DIR, migrate, migration_files, scratch_database
from notifier.digest import run_pass
from notifier.embedded import free_port
from notifier.mail import outbox
from notifier.resources import open_pool, open_redis
from notifier.settings import Settings
from tests.api_helpers import bearer, new_account
from tests.conftest import MailSink, Services

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"


def _wait_port(port: int, seconds: float = 10) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


# --- PgBouncer ------------------------------------------------------------------------------------


@pytest.fixture
def pgbouncer(services: Services) -> Iterator[int]:
    """A PgBouncer in transaction mode in front of the test server; yields its port."""
    if not os.path.exists(PGBOUNCER):
        pytest.skip("needs PgBouncer: apt-get install pgbouncer")
    # PgBouncer refuses to run as root: as root it runs as `postgres`, which must read its files.
    tmp_path = Path(tempfile.mkdtemp(prefix="notifier-pgbouncer-"))
    url = urlsplit(services.admin_url)
    if not url.hostname:
        # The embedded server listens on a Unix socket in a folder only this user may enter;
        # PgBouncer runs as another user (it refuses root) and cannot reach it.
        pytest.skip("PgBouncer needs a PostgreSQL reachable over TCP (set NOTIFIER_DATABASE_URL)")
    host = url.hostname
    port = free_port()
    tmp_path.chmod(0o755)
    (tmp_path / "users.txt").write_text('"postgres" ""\n')
    (tmp_path / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={host} port={url.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp_path / "users.txt"}
pool_mode = transaction
default_pool_size = 3
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
"""
    )
    as_user = []
    if os.geteuid() == 0:
        as_user = ["-u", "postgres"]
        for path in (tmp_path, tmp_path / "users.txt", tmp_path / "pgbouncer.ini"):
            shutil.chown(path, "postgres")
    proc = subprocess.Popen([PGBOUNCER, *as_user, str(tmp_path / "pgbouncer.ini")])
    try:
        _wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp_path, ignore_errors=True)


def _through(dsn: str, port: int) -> str:
    name = urlsplit(dsn).path.lstrip("/").split("?")[0]
    return f"postgresql://postgres@127.0.0.1:{port}/{name}"


async def test_migrations_run_through_pgbouncer_from_several_processes(
    services: Services, pgbouncer: int
) -> None:
    """Migrations hold no session state (transaction-level locks), so four migrators at once
    through transaction pooling apply each version exactly once."""
    async with scratch_database(services.admin_url, "notifier_bouncer_migrate", migrated=False) as dsn:
        conns = [await asyncpg.connect(_through(dsn, pgbouncer), statement_cache_size=0) for _ in range(4)]
        try:
            results = await asyncio.gather(*(migrate(c) for c in conns))
        finally:
            for c in conns:
                await c.close()
        assert sorted(v for r in results for v in r) == [v for v, _, _ in migration_files(MIGRATIONS_DIR)]


async def test_the_engine_runs_through_pgbouncer_in_transaction_mode(
    settings: Settings, pool: asyncpg.Pool, redis: Any, pgbouncer: int, smtp: MailSink, run_worker: Any
) -> None:
    """Registration, intake from many concurrent requests, a digest pass and delivery, all with
    the pool behind PgBouncer (three server connections for dozens of clients)."""
    bounced = settings.model_copy(
        update={
            "database_url": _through(settings.database_url or "", pgbouncer),
            "db_transaction_pooling": True,
        }
    )
    headers = await bearer(pool)
    async with TestClient(TestServer(create_app(bounced))) as client:
        answers = await asyncio.gather(
            *(
                client.post("/v1/accounts", json=new_account(i, timezone="UTC"), headers=headers)
                for i in range(20)
            )
        )
        assert [a.status for a in answers] == [201] * 20
        await pool.execute("UPDATE accounts SET digest_frequency = 'hourly'")
        posts = [
            client.post(
                f"/v1/accounts/m-{i % 20}/messages",
                json={"category": "blog", "subject": f"post {i}", "body": "hello"},
                headers=headers,
            )
            for i in range(100)
        ]
        answers = await asyncio.gather(*posts)
        assert [a.status for a in answers] == [201] * 100
    bounced_pool = await open_pool(bounced)
    try:
        later = (await pool.fetchval("SELECT max(next_digest_at) FROM accounts")) or None
        assert later is not None
        result = await run_pass(bounced_pool, redis, bounced, now=later)
        assert result.emails == 20
    finally:
        await bounced_pool.close()
    await run_worker(queues.DIGEST)
    assert sorted(r.recipients[0] for r in smtp.received) == sorted(
        f"member{i}@example.com" for i in range(20)
    )
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM messages WHERE id NOT IN (SELECT message_id FROM message_digests)"
        )
        == 0
    )


# --- Redis Sentinel -------------------------------------------------------------------------------


class RedisSet:
    """A Redis master, one replica and one Sentinel watching them, on free ports."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.master_port, self.replica_port, self.sentinel_port = free_port(), free_port(), free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        common = ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--dir", str(self.tmp)]
        self.procs["master"] = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.master_port), *common], stdout=subprocess.DEVNULL
        )
        self.procs["replica"] = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.replica_port),
                *common,
                "--replicaof",
                "127.0.0.1",
                str(self.master_port),
            ],
            stdout=subprocess.DEVNULL,
        )
        conf = self.tmp / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.tmp}\n"
            f"sentinel monitor notifier 127.0.0.1 {self.master_port} 1\n"
            "sentinel down-after-milliseconds notifier 1000\n"
            "sentinel failover-timeout notifier 5000\n"
        )
        self.procs["sentinel"] = subprocess.Popen([REDIS_SENTINEL, str(conf)], stdout=subprocess.DEVNULL)
        for port in (self.master_port, self.replica_port, self.sentinel_port):
            _wait_port(port)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/notifier/0"

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


@pytest.fixture
def redis_set(tmp_path: Path) -> Iterator[RedisSet]:
    if not (os.path.exists(REDIS_SENTINEL) and os.path.exists(REDIS_SERVER)):
        pytest.skip("needs Redis Sentinel: apt-get install redis-sentinel")
    rs = RedisSet(tmp_path)
    try:
        rs.start()
        yield rs
    finally:
        rs.stop()


async def _sentinel_knows_the_replica(rs: RedisSet, seconds: float = 30) -> None:
    """Sentinel discovers replicas from the master's INFO, every 10 s: a master killed before
    that has no replica to promote."""
    sentinel = Redis(host="127.0.0.1", port=rs.sentinel_port, decode_responses=True)
    deadline = time.monotonic() + seconds
    try:
        while True:
            replicas = await sentinel.sentinel_slaves("notifier")  # type: ignore[no-untyped-call]
            if any(
                int(r.get("port", 0)) == rs.replica_port
                and not r.get("is_disconnected")
                and r.get("master-link-status") == "ok"
                for r in replicas
            ):
                return
            assert time.monotonic() < deadline, "Sentinel never saw the replica"
            await asyncio.sleep(0.2)
    finally:
        await sentinel.aclose()


async def _master_port(rs: RedisSet) -> int:
    sentinel = Redis(host="127.0.0.1", port=rs.sentinel_port)
    try:
        _, port = await sentinel.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "notifier"
        )
        return int(port)
    finally:
        await sentinel.aclose()


# arq's create_pool drops, without closing, each connection that failed its ping while no master
# was elected; the garbage collector then warns about them.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_sentinel_failover_during_a_send_loses_nothing(
    settings: Settings, pool: asyncpg.Pool, redis_set: RedisSet, smtp: MailSink
) -> None:
    """The worker talks to Redis through Sentinel. The master dies while 300 e-mails are being
    delivered; Sentinel promotes the replica, the worker reconnects, the sweep re-rings what the
    lost master held, and every e-mail arrives exactly once."""
    from workers import run_workers

    sentinel_settings = settings.model_copy(update={"redis_url": redis_set.url})
    async with pool.acquire() as conn:
        for i in range(300):
            await outbox.add(
                conn, kind="service", to_address=f"r{i}@example.com", template="service/selftest"
            )
    redis = await open_redis(sentinel_settings)
    await outbox.ring(redis, queues.SERVICE, 300)
    restarts = 0

    async def supervised() -> None:
        """What a Procfile platform or systemd does: a worker that exits is started again."""
        nonlocal restarts
        while True:
            with contextlib.suppress(Exception):
                await run_workers(sentinel_settings, ["service"], handle_signals=False)
            restarts += 1
            await asyncio.sleep(0.5)

    worker = asyncio.create_task(supervised())
    try:
        deadline = time.monotonic() + 20
        while len(smtp.received) < 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await _sentinel_knows_the_replica(redis_set)
        redis_set.kill("master")
        deadline = time.monotonic() + 30
        while await _master_port(redis_set) != redis_set.replica_port:
            assert time.monotonic() < deadline, "Sentinel did not promote the replica"
            await asyncio.sleep(0.2)
        # What the sweep cron does every 30 s: re-ring queues whose due rows have no job.
        deadline = time.monotonic() + 60
        while (
            await pool.fetchval("SELECT count(*) FROM emails WHERE status <> 'sent'")
            and time.monotonic() < deadline
        ):
            # The connection may still be re-established after the failover: try again.
            with contextlib.suppress(Exception):
                await outbox.sweep(pool, redis)
            await asyncio.sleep(0.5)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await redis.aclose()
        # Collect arq's dropped connections now, under this test's warning filter, not in a later
        # test: their transports close on the next loop turns, then the sockets can be collected.
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0.05)
        gc.collect()
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE status = 'sent'") == 300
    delivered = [r.recipients[0] for r in smtp.received]
    assert sorted(set(delivered)) == sorted(f"r{i}@example.com" for i in range(300))
    assert len(delivered) == 300, "an e-mail was delivered twice"
    assert restarts >= 0  # reported below: how often the worker had to be started again
    print(f"worker restarts during the failover: {restarts}")
