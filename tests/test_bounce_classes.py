"""What an SMTP refusal means (issue 15): classified by its enhanced status code (RFC 3463), by its
wording only without one, so that a policy refusal or a full mailbox never suppresses an address."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier import queues, suppression
from notifier.mail import outbox, smtp_reply
from notifier.mail.delivery import POLICY_PREFIX, Delivery
from notifier.mail.smtp import SMTPSender
from notifier.settings import Settings
from tests.conftest import MailSink
from tests.factory import Factory
from tests.test_console import sign_in

GMAIL_UNAUTHENTICATED = (
    "550-5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail\n"
    "5.7.26 users, and has been blocked. The sender must authenticate with at least one of SPF or\n"
    "5.7.26 DKIM. For this message, DKIM checks did not pass. 5.7.26 https://support.google.com/mail/"
)
GMAIL_FULL = "552-5.2.2 The recipient's inbox is out of storage space and inactive."
EXCHANGE_FULL = "550 5.2.2 <ada@example.com>: mailbox full"
POSTFIX_UNKNOWN = (
    "550 5.1.1 <ada@example.com>: Recipient address rejected: User unknown in local recipient table"
)

# Real-shaped replies: code | text after the code | category.
REPLY_TABLE = f"""
550 | {GMAIL_UNAUTHENTICATED.removeprefix("550-").replace(chr(10), " ")} | policy
550 | 5.7.1 Service unavailable; client [192.0.2.1] blocked using Spamhaus; user mailbox | policy
554 | 5.7.5 Permanent error evaluating DMARC policy | policy
550 | {EXCHANGE_FULL.removeprefix("550 ")} | mailbox_full
552 | {GMAIL_FULL.removeprefix("552-")} | mailbox_full
550 | {POSTFIX_UNKNOWN.removeprefix("550 ")} | bad_mailbox
550 | 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup | bad_mailbox
556 | 5.1.10 Recipient address has null MX | bad_mailbox
550 | user unknown | bad_mailbox
550 | No such user here | bad_mailbox
550 | Requested action not taken: mailbox unavailable | permanent
553 | sorry, that domain isn't in my list of allowed rcpthosts | permanent
550 | mailbox full | mailbox_full
550 | Message rejected: users of this service do not accept bulk mail (policy) | policy
554 | 5.3.4 Message too big for system | permanent
450 | 4.2.1 The user you are trying to contact is receiving mail too quickly | temporary
451 | 4.7.1 Greylisted, please try again later | temporary
421 | 4.7.0 Try again later, closing connection | temporary
450 | 5.1.1 mismatched class: the basic code decides | temporary
-1 | Malformed SMTP response | temporary
"""
REPLIES = [
    (int(code), text, category)
    for code, text, category in (
        (part.strip() for part in line.split(" | ")) for line in REPLY_TABLE.strip().splitlines()
    )
]


@pytest.mark.parametrize(("code", "text", "expected"), REPLIES)
def test_replies_are_classified_by_their_enhanced_code(code: int, text: str, expected: str) -> None:
    assert smtp_reply.classify(code, text) == expected


def test_redact_removes_every_address() -> None:
    text = "550 5.1.1 <Ada.L+x@Example.com>: unknown; also üser@bücher.example and 'b@c.d'"
    redacted = smtp_reply.redact(text)
    assert "@" not in redacted
    assert redacted.count(smtp_reply.REDACTED) == 3
    assert redacted.startswith("550 5.1.1 <[address]>: unknown")


# (RCPT reply, final status, event, suppressed)
OUTCOMES = [
    (
        GMAIL_UNAUTHENTICATED.replace("\n", "\r\n550-", 1).replace("\n5.7.26", "\r\n550 5.7.26"),
        "failed",
        "failed",
        False,
    ),
    (EXCHANGE_FULL, "queued", "deferred", False),
    (POSTFIX_UNKNOWN, "failed", "bounced", True),
    ("550 user unknown", "failed", "bounced", True),
    ("450 4.2.0 mailbox busy", "queued", "deferred", False),
    ("554 5.7.1 rejected by policy", "failed", "failed", False),
]


async def _send_service(settings: Settings, pool: asyncpg.Pool, address: str) -> asyncpg.Record:
    # A member's e-mail (one without an account, the erasure notice, keeps only reply codes).
    account_id = await Factory(pool).account(email=address)
    async with pool.acquire() as conn:
        email_id = await outbox.add(
            conn,
            kind="service",
            account_id=account_id["id"],
            to_address=address,
            template="service/welcome",
            context={"account": {"name": "Ada"}},
        )
    sender = SMTPSender(settings)
    try:
        await Delivery(settings, pool, sender).run(queues.SERVICE)
    finally:
        await sender.close()
    row = await pool.fetchrow("SELECT * FROM emails WHERE id = $1", email_id)
    assert row is not None
    return row


@pytest.mark.parametrize(("reply", "status", "event", "suppressed"), OUTCOMES)
async def test_a_refusal_suppresses_only_a_bad_mailbox(
    settings: Settings,
    pool: asyncpg.Pool,
    smtp: MailSink,
    reply: str,
    status: str,
    event: str,
    suppressed: bool,
) -> None:
    smtp.rcpt_replies["ada@example.com"] = reply
    row = await _send_service(settings, pool, "ada@example.com")
    assert row["status"] == status
    kinds = [r["kind"] for r in await pool.fetch("SELECT kind FROM events WHERE email_id = $1", row["id"])]
    assert kinds == [event]
    assert (await suppression.check(pool, "ada@example.com", ["all"]) is not None) is suppressed
    # No address in anything stored about the refusal.
    stored = await pool.fetchval(
        "SELECT concat_ws(' ', e.last_error, (SELECT string_agg(detail::text, ' ') FROM events WHERE email_id = e.id),"
        " (SELECT string_agg(detail, ' ') FROM suppressions)) FROM emails e WHERE e.id = $1",
        row["id"],
    )
    assert "ada@example.com" not in stored


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Plain http, so the console test client sends its session cookie back (see test_console)."""
    return settings.model_copy(update={"public_url": "http://127.0.0.1", "console_key_sign_in": True})


async def test_a_policy_refusal_is_raised_in_the_console(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink, client: TestClient[Any, Any]
) -> None:
    smtp.rcpt_replies["ada@gmail.example"] = (
        "550 5.7.26 This mail is unauthenticated. Gmail users are protected."
    )
    row = await _send_service(settings, pool, "ada@gmail.example")
    assert row["last_error"].startswith(POLICY_PREFIX)
    detail = await pool.fetchval("SELECT detail FROM events WHERE email_id = $1", row["id"])
    assert detail["category"] == "policy"
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0

    await sign_in(client, pool, ["admin"])
    page = await (await client.get("/console/deliverability")).text()
    assert (
        "Refused by receiving servers&#39; policy" in page or "Refused by receiving servers' policy" in page
    )
    assert "5.7.26 This mail is unauthenticated" in page
    assert "Nobody was\n  suppressed" in page
