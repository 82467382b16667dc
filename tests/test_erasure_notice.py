"""Erasure leaves no personal byte in any table, whatever happens to the "account erased" notice
(issue 17.3), and no idempotency record names the member afterwards (issue 17.13)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq import ArqRedis

from notifier import queues, suppression
from notifier.mail import outbox
from notifier.mail.delivery import Delivery
from notifier.mail.smtp import SMTPSender
from notifier.settings import Settings
from tests.api_helpers import bearer
from tests.conftest import MailSink
from tests.test_accounts import _tables_mentioning

EXTERNAL_ID = "ext-rufus-41"
ADDRESS = "Rufus.Refused@example.net"
NAME = "Rufus Refusedname"
REFUSALS = {
    "unknown": f"550 5.1.1 <{ADDRESS}>: Recipient address rejected: User unknown in local recipient table",
    "policy": f"550 5.7.26 <{ADDRESS}> This mail is unauthenticated; Gmail users are protected",
    "full": f"552 5.2.2 <{ADDRESS}>: mailbox full ({NAME})",
}


async def deliver(settings: Settings, pool: asyncpg.Pool) -> None:
    sender = SMTPSender(settings)
    try:
        await Delivery(settings, pool, sender).run(queues.SERVICE)
    finally:
        await sender.close()


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
@pytest.mark.parametrize("notice_first", [True, False], ids=["refused-then-erased", "erased-then-refused"])
async def test_erasure_whose_notice_is_refused_leaves_nothing_personal(
    client: Any,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    smtp: MailSink,
    settings: Settings,
    refusal: str,
    notice_first: bool,
) -> None:
    headers = await bearer(pool, "accounts", "messages", "service")
    # A batch posted before the member was registered: its stored answer names the external id.
    early = {"messages": [{"account": EXTERNAL_ID, "category": "news", "subject": "Hi", "body": "x"}]}
    resp = await client.post(
        "/v1/messages", json=early, headers={**headers, "Idempotency-Key": "batch-early"}
    )
    assert resp.status == 207 and EXTERNAL_ID in await resp.text()
    person = {"external_id": EXTERNAL_ID, "email": ADDRESS, "name": NAME}
    assert (await client.post("/v1/accounts", json=person, headers=headers)).status == 201
    # The notice, with an Idempotency-Key made from the external id (as producers do).
    notice = {"account": EXTERNAL_ID, "template": "account_erased"}
    resp = await client.post(
        "/v1/service-messages", json=notice, headers={**headers, "Idempotency-Key": f"erased-{EXTERNAL_ID}"}
    )
    assert resp.status == 202, await resp.text()
    smtp.rcpt_replies[ADDRESS] = REFUSALS[refusal]

    if notice_first:
        await deliver(settings, pool)
    assert (await client.delete(f"/v1/accounts/{EXTERNAL_ID}", headers=headers)).status == 200
    if not notice_first:
        await deliver(settings, pool)

    assert not smtp.received
    needles = [EXTERNAL_ID, ADDRESS, NAME, "Rufus", "Refusedname"]
    if refusal == "full":
        # A full mailbox is retried: the notice is still waiting, so it must still know where to go.
        row = await pool.fetchrow("SELECT status, to_address, last_error FROM emails")
        assert row["status"] == "queued" and row["to_address"] == ADDRESS
        assert ADDRESS not in row["last_error"] and NAME not in row["last_error"]
        assert "552 5.2.2" in row["last_error"]
        await pool.execute("UPDATE emails SET next_attempt_at = now()")
        smtp.rcpt_replies[ADDRESS] = REFUSALS["unknown"]
        await deliver(settings, pool)
    assert await _tables_mentioning(pool, needles) == []
    row = await pool.fetchrow("SELECT id, status, to_address, context, subject, idempotency_key FROM emails")
    assert row is not None and row["status"] == "failed" and row["to_address"] == "[erased]"
    assert row["context"] == {} and row["subject"] is None and row["idempotency_key"] is None
    # A hard bounce is still honoured, as a hash only.
    bounced = await suppression.check(pool, ADDRESS, ["all"])
    assert bounced == (None if refusal == "policy" else "hard_bounce")
    # The batch still replays (no second effect), without the id.
    resp = await client.post(
        "/v1/messages", json=early, headers={**headers, "Idempotency-Key": "batch-early"}
    )
    assert resp.headers.get("Idempotent-Replayed") == "true"
    assert EXTERNAL_ID not in await resp.text()
    # The scrubbed notice cannot be re-driven to "[erased]".
    assert await outbox.retry_failed(pool, redis, ids=[row["id"]]) == []


async def test_migration_redacts_addresses_stored_before(pool: asyncpg.Pool) -> None:
    text = f'550 5.1.1 <{ADDRESS}>: User unknown; "quoted" back\\slash'
    await pool.execute(
        "INSERT INTO suppressions (address_hash, list, reason, detail) VALUES ($1, 'all', 'hard_bounce', $2)",
        suppression.address_hash(ADDRESS),
        text,
    )
    email_id = await pool.fetchval(
        "INSERT INTO emails (kind, queue, to_address, template, context, status, last_error)"
        " VALUES ('service', 'q', $1, 'service/account_erased', $2, 'failed', $3) RETURNING id",
        ADDRESS,
        {"account": {"name": NAME, "external_id": EXTERNAL_ID}},
        text,
    )
    await pool.execute(
        "INSERT INTO events (kind, email_id, detail) VALUES ('bounced', $1, $2)", email_id, {"error": text}
    )
    sql = (Path(__file__).parent.parent / "migrations" / "0009_redact_addresses.sql").read_text()
    await pool.execute(sql)
    assert await _tables_mentioning(pool, [ADDRESS, NAME, EXTERNAL_ID]) == []
    detail = await pool.fetchval("SELECT detail FROM events")
    assert detail == {"error": '550 5.1.1 <[address]>: User unknown; "quoted" back\\slash'}
    assert await pool.fetchval("SELECT detail FROM suppressions") == detail["error"]
