"""The foundation: settings, migrations, health, problem errors, worker and CLI behaviour."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from notifier.app import redact_path
from notifier.db import MIGRATIONS_DIR, Q, migrate, migration_files, parse_queries, scratch_database
from notifier.mail.smtp import Envelope, PermanentFailure, SMTPSender, TemporaryFailure
from notifier.settings import ConfigError, Settings, load_settings
from tests.conftest import MailSink, Services

# --- settings ---------------------------------------------------------------------------------


def test_settings_read_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_SMTP_PORT", "2525")
    monkeypatch.setenv("NOTIFIER_PUBLIC_URL", "https://mail.example.org/")
    settings = Settings()
    assert settings.smtp_port == 2525
    assert settings.public_url == "https://mail.example.org"


def test_settings_to_env_gives_a_child_process_the_same_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    given = Settings(
        env="test",
        secret_key=SecretStr("s3cret-for-the-child"),
        smtp_port=2525,
        smtp_timeout=2.5,
        capture_mail=True,
        service_from="Example Org <service@example.org>",
        data_dir=tmp_path,
        unsubscribe_mailto=None,
    )
    env = given.to_env()
    assert env["NOTIFIER_SECRET_KEY"] == "s3cret-for-the-child"
    assert "NOTIFIER_UNSUBSCRIBE_MAILTO" not in env  # None: left to the child's default
    assert "NOTIFIER_SMTP_HOST" not in env  # not given: the child's default too
    for name in [n for n in os.environ if n.startswith("NOTIFIER_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings(_env_file=None)
    assert child.model_dump() == given.model_dump()


def test_port_falls_back_to_platform_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFIER_PORT", raising=False)
    monkeypatch.setenv("PORT", "5123")
    assert Settings().port == 5123
    monkeypatch.setenv("NOTIFIER_PORT", "6000")
    assert Settings().port == 6000


def test_malformed_url_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", "mysql://localhost/x")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "invalid configuration: NOTIFIER_DATABASE_URL: must start with postgresql://, got mysql://"
    )


def test_missing_secret_stops_production(tmp_path: Path) -> None:
    settings = Settings(env="production", secret_key=None, data_dir=tmp_path)
    with pytest.raises(ConfigError, match="NOTIFIER_SECRET_KEY is not set"):
        settings.require_secret()


def test_development_generates_and_keeps_a_secret(tmp_path: Path) -> None:
    first = Settings(env="development", secret_key=None, data_dir=tmp_path)
    first.require_secret()
    second = Settings(env="development", secret_key=None, data_dir=tmp_path)
    second.require_secret()
    assert first.secret == second.secret
    assert len(first.secret) >= 40
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_secrets_do_not_appear_in_repr() -> None:
    settings = Settings(secret_key=SecretStr("hunter2-very-secret"), smtp_password=SecretStr("pw-123"))
    assert "hunter2" not in repr(settings)
    assert "pw-123" not in repr(settings)


# --- migrations and queries -------------------------------------------------------------------


def test_migration_files_are_ordered_and_named() -> None:
    files = migration_files(MIGRATIONS_DIR)
    versions = [v for v, _, _ in files]
    assert versions == sorted(versions)
    assert versions[0] == 1


def test_parse_queries_splits_named_blocks() -> None:
    text = "-- name: one\nSELECT 1;\n\n-- name: two\nSELECT $1::int\n"
    assert parse_queries(text) == {"one": "SELECT 1;", "two": "SELECT $1::int"}
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")


async def test_every_named_query_prepares_against_the_schema(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for name in Q:
            try:
                await conn.prepare(Q[name])
            except asyncpg.PostgresError as exc:  # pragma: no cover - the failure message
                pytest.fail(f"query {name} does not prepare: {exc}")


async def test_concurrent_migrations_do_not_race(services: Services) -> None:
    async with scratch_database(services.admin_url, "notifier_migrate_race", migrated=False) as dsn:
        conns = [await asyncpg.connect(dsn) for _ in range(4)]
        results = await asyncio.gather(*(migrate(c) for c in conns))
        for c in conns:
            await c.close()
        applied = sorted(v for r in results for v in r)
        expected = [v for v, _, _ in migration_files(MIGRATIONS_DIR)]
        assert applied == expected  # each version applied exactly once, by one of the four
        check = await asyncpg.connect(dsn)
        rows = await check.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == expected
        assert await migrate(check) == []  # idempotent
        await check.close()


# --- web ----------------------------------------------------------------------------------------


async def test_healthz_and_readyz(client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


async def test_readyz_reports_an_unreachable_redis(client) -> None:
    from notifier.resources import REDIS

    redis = client.app[REDIS]
    await redis.aclose()
    redis.connection_pool.connection_kwargs["port"] = 1  # nothing listens there
    redis.connection_pool.reset()
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("error")


async def test_unknown_route_is_a_problem_document(client) -> None:
    resp = await client.get("/no/such/thing")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["status"] == 404 and body["title"] == "Not Found"


async def test_wrong_method_is_405_with_allow(client) -> None:
    resp = await client.post("/healthz")
    assert resp.status == 405
    assert resp.content_type == "application/problem+json"
    assert "GET" in resp.headers["Allow"]


async def test_metrics_are_exposed(client) -> None:
    await client.get("/healthz")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert "notifier_http_requests_total" in await resp.text()


def test_access_log_path_hides_tokens_and_queries() -> None:
    assert redact_path("/u/abc.def?x=1") == "/u/[token]"
    assert redact_path("/preferences/secret-token") == "/preferences/[token]"
    assert redact_path("/v1/accounts/a1?api_key=zzz") == "/v1/accounts/a1"


# --- worker and SMTP ----------------------------------------------------------------------------


async def test_heartbeat_job_runs_in_a_worker(settings, pool, redis, run_worker) -> None:
    await redis.enqueue_job("heartbeat", _queue_name="notifier:service")
    assert await run_worker("notifier:service") == 1
    row = await pool.fetchrow("SELECT worker, beats FROM worker_heartbeats")
    assert row is not None and row["beats"] == 1


async def test_selftest_job_delivers_through_smtp(settings, redis, run_worker, smtp: MailSink) -> None:
    await redis.enqueue_job("selftest", "someone@example.com", _queue_name="notifier:service")
    await run_worker("notifier:service")
    assert len(smtp.received) == 1
    got = smtp.received[0]
    assert got.recipients == ["someone@example.com"]
    assert got.message["Subject"] == "notifier is running"
    assert got.message["Message-ID"]


async def test_smtp_sender_classifies_replies(settings, smtp: MailSink) -> None:
    sender = SMTPSender(settings)
    env = Envelope("service@example.org", ("x@example.com",), b"Subject: t\r\n\r\nbody\r\n")
    try:
        smtp.replies.append("451 4.3.0 try again later")
        with pytest.raises(TemporaryFailure):
            await sender.send(env)
        smtp.rcpt_replies["gone@example.com"] = "550 5.1.1 unknown user"
        with pytest.raises(PermanentFailure) as info:
            await sender.send(Envelope("service@example.org", ("gone@example.com",), env.message))
        assert info.value.unknown_mailbox
        assert (await sender.send(env)).startswith("OK")  # the same pooled connection still works
        assert len(smtp.received) == 1
    finally:
        await sender.close()


async def test_refused_connection_is_temporary(settings) -> None:
    settings.smtp_port = 1
    sender = SMTPSender(settings)
    with pytest.raises(TemporaryFailure, match="cannot connect"):
        await sender.send(Envelope("a@example.org", ("b@example.org",), b"x"))
    await sender.close()


# --- the command line ---------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "PORT"}
    return subprocess.run(
        [sys.executable, "-m", "notifier.cli", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["web", "worker", "migrate", "dev"])
def test_every_command_has_help(command: str) -> None:
    result = _cli(command, "--help")
    assert result.returncode == 0
    assert "usage: notifier" in result.stdout


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = _cli(
        "migrate",
        env={
            "NOTIFIER_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x",
            "NOTIFIER_REDIS_URL": "redis://127.0.0.1:1",
        },
    )
    assert result.returncode == 2
    assert result.stderr.startswith("notifier: error: cannot connect to PostgreSQL")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_secret_in_production_is_one_line(services: Services) -> None:
    result = _cli(
        "worker",
        env={"NOTIFIER_DATABASE_URL": services.admin_url, "NOTIFIER_REDIS_URL": services.redis_url},
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip()]
        and "NOTIFIER_SECRET_KEY is not set" in result.stderr
    )


def test_malformed_redis_url_is_one_line() -> None:
    result = _cli("web", env={"NOTIFIER_REDIS_URL": "http://x"})
    assert result.returncode == 2
    assert "NOTIFIER_REDIS_URL" in result.stderr and "Traceback" not in result.stderr


def test_logging_names_are_quiet_about_secrets(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(secret_key=SecretStr("s3cr3t-value"))
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("notifier").info("settings: %s", settings)
    assert "s3cr3t-value" not in caplog.text
