"""International addresses (issue 17.6): IDN domains go out in ASCII (`xn--`), UTF-8 local parts
with SMTPUTF8 (RFC 6531) when the server offers it, and otherwise fail clearly without marking
anything as delivered. Two in-process aiosmtpd servers: one offering SMTPUTF8, one not."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from arq import ArqRedis

from notifier import queues, suppression
from notifier.digest import run_pass
from notifier.embedded import free_port
from notifier.mail import compose, outbox
from notifier.mail.delivery import Delivery
from notifier.mail.smtp import SMTPSender
from notifier.settings import Settings
from tests.api_helpers import bearer
from tests.conftest import MailSink, _SinkHandler
from tests.factory import Factory
from tests.test_digest import DAY, T0, daily

IDN = "user@bücher.example"
IDN_ASCII = "user@xn--bcher-kva.example"
UTF8_LOCAL = "jürgen@example.org"


@pytest.fixture(scope="module", params=[True, False], ids=["smtputf8", "ascii-only"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, MailSink, bool]]:
    sink = MailSink()
    controller = Controller(
        _SinkHandler(sink), hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=request.param
    )
    controller.start()
    yield controller.port, sink, request.param
    controller.stop()


@pytest.fixture
def on_server(settings: Settings, server: tuple[int, MailSink, bool]) -> tuple[Settings, MailSink, bool]:
    port, sink, utf8 = server
    sink.clear()
    return settings.model_copy(update={"smtp_port": port}), sink, utf8


async def deliver(settings: Settings, pool: asyncpg.Pool, queue: str = queues.SERVICE) -> None:
    sender = SMTPSender(settings)
    try:
        await Delivery(settings, pool, sender).run(queue)
    finally:
        await sender.close()


def test_international_addresses_are_checked_and_sent_in_ascii_form() -> None:
    assert compose.wire_address(IDN) == IDN_ASCII
    assert compose.wire_address(IDN_ASCII) == IDN_ASCII
    assert compose.wire_address(UTF8_LOCAL) == UTF8_LOCAL and compose.needs_smtputf8(UTF8_LOCAL)
    assert not compose.needs_smtputf8(IDN)
    assert compose.mailbox("Jo", IDN) == f"Jo <{IDN_ASCII}>"
    for bad in ("jü rgen@example.org", "jürgen@-bad-.example", "jürgen\n@example.org", "a@b@c.example"):
        with pytest.raises(compose.HeaderError):
            compose.check_address(bad)


async def test_service_mail_to_international_addresses(
    client: Any, pool: asyncpg.Pool, on_server: tuple[Settings, MailSink, bool]
) -> None:
    settings, sink, utf8 = on_server
    headers = await bearer(pool, "accounts", "service")
    for n, address in enumerate((IDN, IDN_ASCII, UTF8_LOCAL)):
        person = {"external_id": f"intl-{n}", "email": address, "name": "Jürgen"}
        assert (await client.post("/v1/accounts", json=person, headers=headers)).status == 201
        body = {"account": f"intl-{n}", "template": "welcome"}
        resp = await client.post("/v1/service-messages", json=body, headers=headers)
        assert resp.status == 202, await resp.text()
    await deliver(settings, pool)

    rows = {r["to_address"]: r for r in await pool.fetch("SELECT * FROM emails")}
    got = {tuple(r.recipients): r for r in sink.received}
    # Both forms of the IDN address went out in ASCII, on either server.
    assert rows[IDN]["status"] == "sent" and rows["user@bücher.example"]["status"] == "sent"
    assert [k for k in got if k == (IDN_ASCII,)] == [(IDN_ASCII,)]
    assert str(got[(IDN_ASCII,)].message["To"]) == IDN_ASCII
    utf8_row = rows[UTF8_LOCAL]
    if utf8:
        assert utf8_row["status"] == "sent"
        assert got[(UTF8_LOCAL,)].message["To"] == UTF8_LOCAL
    else:
        assert utf8_row["status"] == "failed"
        assert "SMTPUTF8" in utf8_row["last_error"] and "not sent" in utf8_row["last_error"]
        assert (UTF8_LOCAL,) not in got
        assert await suppression.check(pool, UTF8_LOCAL, ["all"]) is None  # the address is fine
        # Another server (or this one upgraded) may take it: a re-drive is possible.
        assert await pool.fetchval("SELECT count(*) FROM events WHERE kind = 'failed'") == 1


async def test_a_digest_that_cannot_be_sent_leaves_its_messages_pending(
    pool: asyncpg.Pool, redis: ArqRedis, factory: Factory, on_server: tuple[Settings, MailSink, bool]
) -> None:
    settings, sink, utf8 = on_server
    members = [await daily(factory, email=address) for address in (IDN, UTF8_LOCAL)]
    for member in members:
        await factory.message(member, subject="Hello", created_at=T0 + timedelta(hours=1))
    result = await run_pass(pool, None, settings, T0 + DAY + timedelta(minutes=5))
    assert (result.emails, result.skipped) == (2, [])
    await deliver(settings, pool, queues.DIGEST)

    status = {r["to_address"]: r["status"] for r in await pool.fetch("SELECT * FROM emails")}
    pending = {
        r["email"]: r["n"]
        for r in await pool.fetch(
            "SELECT a.email, count(m.id) FILTER (WHERE m.id NOT IN (SELECT message_id FROM message_digests)) AS n"
            " FROM accounts a JOIN messages m ON m.account_id = a.id GROUP BY a.email"
        )
    }
    assert status[IDN] == "sent" and pending[IDN] == 0
    assert [r.recipients for r in sink.received if r.recipients == [IDN_ASCII]] == [[IDN_ASCII]]
    if utf8:
        assert status[UTF8_LOCAL] == "sent" and pending[UTF8_LOCAL] == 0
    else:
        # Not sent: recorded with its reason, and the message is not marked as digested.
        assert status[UTF8_LOCAL] == "failed" and pending[UTF8_LOCAL] == 1
        # The next digest takes it up again.
        await run_pass(pool, None, settings, T0 + 2 * DAY + timedelta(minutes=5))
        assert await pool.fetchval("SELECT count(*) FROM emails WHERE to_address = $1", UTF8_LOCAL) == 2


async def test_a_newsletter_row_to_an_international_address_is_accepted(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        ids = await outbox.add_many(
            conn,
            [
                outbox.NewEmail(kind="newsletter", to_address=a, template="newsletter")
                for a in (IDN, IDN_ASCII, UTF8_LOCAL)
            ],
        )
    assert len(ids) == 3
