"""The outbox end to end against real PostgreSQL, Redis and an in-process SMTP server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from arq import ArqRedis

from notifier import outbox, queues, suppression
from notifier.outbox import Delivery
from notifier.settings import Settings
from notifier.smtp import SMTPSender
from tests.conftest import MailSink
from tests.factory import Factory


async def add_service(pool: asyncpg.Pool, account: asyncpg.Record | None = None, **fields: Any) -> int:
    values: dict[str, Any] = {
        "kind": "service",
        "to_address": account["email"] if account else "someone@example.com",
        "account_id": account["id"] if account else None,
        "template": "service/welcome",
        "context": {"account": {"name": account["name"] if account else "Someone"}},
    }
    values.update(fields)
    async with pool.acquire() as conn:
        email_id = await outbox.add(conn, **values)
    assert email_id is not None
    return email_id


async def status_of(pool: asyncpg.Pool, email_id: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM emails WHERE id = $1", email_id)
    assert row is not None
    return row


async def events_of(pool: asyncpg.Pool, email_id: int) -> list[str]:
    rows = await pool.fetch("SELECT kind FROM events WHERE email_id = $1 ORDER BY id", email_id)
    return [r["kind"] for r in rows]


async def test_ring_then_worker_sends_once(
    pool: asyncpg.Pool, redis: ArqRedis, smtp: MailSink, factory: Factory, run_worker: Any
) -> None:
    account = await factory.account(name="Ada Lovelace")
    email_id = await add_service(pool, account)
    await outbox.ring(redis, queues.SERVICE)
    await outbox.ring(redis, queues.SERVICE)  # a second bell (a job that runs twice) sends nothing more
    await run_worker(queues.SERVICE)
    assert len(smtp.received) == 1
    message = smtp.received[0].message
    assert message["To"] == account["email"]
    assert message["Subject"] == "Welcome, Ada Lovelace"
    row = await status_of(pool, email_id)
    assert row["status"] == "sent"
    assert row["message_id"] == message["Message-ID"]
    assert await events_of(pool, email_id) == ["sent"]
