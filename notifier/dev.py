"""`notifier dev`: the whole engine on one machine with nothing set up.

Embedded PostgreSQL and Redis when no URL is configured (data kept under NOTIFIER_DATA_DIR, so a
restart keeps it), migrations, web and all workers in one process, and mail captured to `.eml`
files listed in the console's mailbox unless NOTIFIER_SMTP_HOST is set. While it runs,
`.notifier/env` tells the other commands where its servers are (notifier.devenv). Ctrl-C stops
all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import asyncpg
from aiohttp import web

from notifier import devenv, queues
from notifier.access_log import LOG_FORMAT
from notifier.app import RedactingAccessLogger, create_app
from notifier.db import Q, create_pool, migrate_dsn
from notifier.embedded import EmbeddedPostgres, EmbeddedRedis
from notifier.mail.capture import mailbox_dir, start_capture_server
from notifier.settings import Settings, load_settings

log = logging.getLogger("notifier.dev")


async def _ensure_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval(Q.database_exists, name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def dev_settings() -> Settings:
    """Settings for development: NOTIFIER_* from the environment, env=development unless set."""
    env_set = "NOTIFIER_ENV" in os.environ
    settings = load_settings() if env_set else load_settings(env="development")
    return settings


async def run_dev(*, port: int | None = None, selftest: bool = True) -> int:
    """Run until Ctrl-C; returns the exit code."""
    from workers import run_workers

    settings = dev_settings()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs initdb's whole output
    settings.require_secret()
    capture = "smtp_host" not in settings.model_fields_set or settings.capture_mail
    settings.model_copy(update={"capture_mail": capture}).check_capture()  # before starting anything
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    stoppers = []
    lines: list[str] = []
    # What this process chose, for the other commands (`.notifier/env`); never the user's own.
    chosen: dict[str, object] = {"env": settings.env, "data_dir": data}
    try:
        if not settings.database_url:
            pg = await asyncio.to_thread(EmbeddedPostgres.start, data / "postgres")
            stoppers.append(pg.stop)
            await _ensure_database(pg.url(), "notifier")
            settings.database_url = chosen["database_url"] = pg.url("notifier")
            lines.append(f"PostgreSQL  embedded, data in {data / 'postgres'}  ({settings.database_url})")
        else:
            lines.append("PostgreSQL  NOTIFIER_DATABASE_URL")
        if not settings.redis_url:
            rd = await asyncio.to_thread(EmbeddedRedis.start, data / "redis")
            stoppers.append(rd.stop)
            settings.redis_url = chosen["redis_url"] = rd.url()
            lines.append(f"Redis       embedded, data in {data / 'redis'}  ({settings.redis_url})")
        else:
            lines.append("Redis       NOTIFIER_REDIS_URL")
        if capture:
            controller = start_capture_server(mailbox_dir(data))
            stoppers.append(controller.stop)
            settings.smtp_host, settings.smtp_port, settings.smtp_tls = "127.0.0.1", controller.port, "none"
            settings.smtp_username = settings.smtp_password = None
            settings.capture_mail = True
            chosen.update(
                smtp_host="127.0.0.1", smtp_port=controller.port, smtp_tls="none", capture_mail=True
            )
            lines.append(f"Mail        captured to {mailbox_dir(data)} (SMTP on 127.0.0.1:{controller.port})")
        else:
            lines.append(f"Mail        sent through {settings.smtp_host}:{settings.smtp_port}")

        applied = await migrate_dsn(settings.database_url)
        key_file = await _dev_api_key(settings.database_url, data)
        await _dev_admin(settings.database_url)
        if "console_key_sign_in" not in settings.model_fields_set:
            settings.console_key_sign_in = settings.env != "production"
        port = port or (settings.port if "port" in settings.model_fields_set else 8000)
        settings.port = port
        if "public_url" not in settings.model_fields_set:
            settings.public_url = chosen["public_url"] = f"http://localhost:{port}"

        app = create_app(settings)
        runner = web.AppRunner(app, access_log_class=RedactingAccessLogger)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, port)
        await site.start()
        stoppers.append(lambda: devenv.remove(data))
        env_file = devenv.write(data, chosen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        worker_task = asyncio.create_task(run_workers(settings, list(queues.ALL), handle_signals=False))
        print(
            "\nnotifier dev is running\n"
            f"  Web         {settings.public_url}  (/healthz, /readyz, /metrics)\n"
            + (
                f"  Mailbox     {settings.public_url}/dev/mailbox  (admins only: sign in to the console)\n"
                if settings.capture_mail
                else ""
            )
            + "".join(f"  {line}\n" for line in lines)
            + f"  Migrations  {len(applied)} applied now\n"
            f'  API key     in {key_file} (admin scope; try: curl -H "Authorization: Bearer $(cat {key_file})" '
            f"{settings.public_url}/v1/accounts/nobody)\n"
            f"  Console     {settings.public_url}/console/ : sign in as {DEV_ADMIN} (admin); the sign-in\n"
            + (
                f"              link is captured: open the newest file in {mailbox_dir(data)}\n"
                if settings.capture_mail
                else ""
            )
            + (
                "              or paste the key above (development only)\n"
                if settings.console_key_sign_in
                else ""
            )
            + f"  Data        {data}\n"
            f"  Commands    `notifier api-key …`, `notifier digests run`, … run from this folder in another\n"
            f"              terminal use these servers (from {env_file}); nothing to export\n"
            "  Press Ctrl-C to stop.\n",
            flush=True,
        )
        if selftest:
            await _enqueue_selftest(settings)
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, worker_task], return_when=asyncio.FIRST_COMPLETED)
        print("\nstopping…", flush=True)
        waiter.cancel()
        worker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        return 0
    finally:
        for stopper in reversed(stoppers):
            await asyncio.to_thread(stopper)
        print("stopped.", flush=True)


async def _dev_api_key(database_url: str, data: Path) -> Path:
    """An admin API key for trying the API, kept in the data folder (mode 0600) and reused while
    it is valid. Development only: a production key is never written to disk."""
    from notifier.api import auth

    path = data / "dev_api_key"
    conn = await asyncpg.connect(database_url)
    try:
        if path.exists():
            known = await conn.fetchval(Q.active_api_key, auth.hash_key(path.read_text().strip()))
            if known:
                return path
        _, key = await auth.create_key(conn, "notifier dev", ["admin"])
    finally:
        await conn.close()
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


DEV_ADMIN = "dev-admin@example.com"


async def _dev_admin(database_url: str) -> None:
    """The development admin of the console (DEV_ADMIN), added once."""
    from notifier import audit, staff

    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            if await staff.by_email(conn, DEV_ADMIN) is None:
                await staff.add(
                    conn, DEV_ADMIN, "Development admin", "admin", audit.Actor("system", "notifier dev")
                )
    finally:
        await pool.close()


async def _enqueue_selftest(settings: Settings) -> None:
    from notifier.resources import open_redis

    redis = await open_redis(settings)
    try:
        await redis.enqueue_job(queues.SELFTEST_JOB, "dev@example.com", _queue_name=queues.SERVICE)
    finally:
        await redis.aclose()
