"""The outbox end to end against real PostgreSQL, Redis and an in-process SMTP server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from arq import ArqRedis

from notifier import queues, suppression, tokens
from notifier.db import Q
from notifier.mail import compose, outbox
from notifier.mail.delivery import Delivery
from notifier.mail.render import TemplateRenderer
from notifier.mail.smtp import SMTPSender
from notifier.settings import Settings
from tests.conftest import MailSink
from tests.factory import Factory
from tests.test_partitions import plan_nodes
from workers import jobs


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


def delivery_for(settings: Settings, pool: asyncpg.Pool, redis: ArqRedis | None = None) -> Delivery:
    return Delivery(settings, pool, SMTPSender(settings), redis=redis, renderers=jobs.renderers(settings))


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def test_digest_headers_links_and_parts(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink, factory: Factory
) -> None:
    settings.unsubscribe_mailto = "unsubscribe@example.org"
    account = await factory.account(name="Zoë", email="zoe@example.com")
    async with pool.acquire() as conn:
        email_id = await outbox.add(
            conn,
            kind="digest",
            account_id=account["id"],
            to_address=account["email"],
            template="service/welcome",
            subject="Your digest: 3 new messages",
            context={"account": {"name": "Zoë"}},
        )
    assert email_id is not None
    delivery = delivery_for(settings, pool)
    # The digest feature registers its own renderer; this test is about delivery's part.
    delivery.renderers.use("digest", TemplateRenderer(delivery.renderers.templates))
    counts = await delivery.run(queues.DIGEST)
    assert counts.sent == 1, (await status_of(pool, email_id))["last_error"]
    received = smtp.received[0]
    assert (received.sender, received.recipients) == ("service@example.org", ["zoe@example.com"])
    message = received.message
    assert message["Subject"] == "Your digest: 3 new messages"
    assert message["List-Id"] == "<digest.notifier.localhost>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = (part.strip(" <>") for part in message["List-Unsubscribe"].split(","))
    assert https.startswith("https://notifier.test/u/")
    assert https.endswith(f"?e={email_id}")  # names the e-mail, so the unsubscribe is attributed to it
    token = https.rsplit("/", 1)[1].split("?", 1)[0]
    assert mailto == f"mailto:unsubscribe@example.org?subject=unsubscribe-{token}"
    parsed = tokens.verify(settings.secret, token, "unsubscribe")
    assert parsed == tokens.Token("unsubscribe", "digest", account["id"])
    html = message.get_body(("html",))
    assert html is not None
    body = html.get_content()
    assert f'href="{https}"' in body  # unsubscribe_url reached the template
    assert "/preferences/" in body
    assert 'style="' in body and "<style" not in body  # CSS inlined
    text = message.get_body(("plain",))
    assert text is not None and "Welcome, Zoë" in text.get_content()


async def test_451_then_250_delivers_after_the_retry_delay(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    email_id = await add_service(pool)
    smtp.replies.append("451 4.3.0 try again later")
    delivery = delivery_for(settings, pool)
    now = datetime.now(UTC)
    counts = await delivery.run(queues.SERVICE, now=now)
    assert counts.deferred == 1 and not smtp.received
    row = await status_of(pool, email_id)
    assert row["status"] == "queued" and row["attempts"] == 1
    assert row["next_attempt_at"] == now + timedelta(seconds=outbox.RETRY_DELAYS[0])
    assert "451" in row["last_error"]

    # Not due yet: nothing happens a second before the retry time.
    assert (await delivery.run(queues.SERVICE, now=row["next_attempt_at"] - timedelta(seconds=1))).sent == 0
    counts = await delivery.run(queues.SERVICE, now=row["next_attempt_at"])
    assert counts.sent == 1 and len(smtp.received) == 1
    row = await status_of(pool, email_id)
    assert (row["status"], row["attempts"]) == ("sent", 2)
    assert await events_of(pool, email_id) == ["deferred", "sent"]


async def test_temporary_failures_give_up_after_the_last_delay(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    email_id = await add_service(pool)
    delivery = delivery_for(settings, pool)
    now = datetime.now(UTC)
    for _ in range(len(outbox.RETRY_DELAYS) + 1):
        smtp.replies.append("421 4.7.0 busy")
        await delivery.run(queues.SERVICE, now=now)
        now = (await status_of(pool, email_id))["next_attempt_at"]
    row = await status_of(pool, email_id)
    assert row["status"] == "failed" and row["failed_at"] is not None
    assert row["attempts"] == len(outbox.RETRY_DELAYS) + 1
    assert "gave up" in row["last_error"]
    assert (await events_of(pool, email_id)).count("deferred") == len(outbox.RETRY_DELAYS)


async def test_550_unknown_user_fails_at_once_and_suppresses(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    smtp.rcpt_replies["gone@example.com"] = (
        "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown"
    )
    email_id = await add_service(pool, to_address="Gone@Example.com ".strip())
    # The address in the outbox is as given; suppression matches it case-insensitively.
    await pool.execute("UPDATE emails SET to_address = 'gone@example.com' WHERE id = $1", email_id)
    counts = await delivery_for(settings, pool).run(queues.SERVICE)
    assert counts.bounced == 1
    row = await status_of(pool, email_id)
    assert row["status"] == "failed" and "550" in row["last_error"]
    assert await events_of(pool, email_id) == ["bounced"]
    assert await suppression.check(pool, "GONE@example.com", ["all"]) == "hard_bounce"

    # The next e-mail to that address is skipped at send time, with the reason recorded.
    second = await add_service(pool, to_address="gone@example.com")
    counts = await delivery_for(settings, pool).run(queues.SERVICE)
    assert counts.suppressed == 1
    row = await status_of(pool, second)
    assert row["status"] == "suppressed" and "hard_bounce" in row["last_error"]
    detail = await pool.fetchval("SELECT detail FROM events WHERE email_id = $1", second)
    assert detail == {"reason": "hard_bounce", "list": "all"}


async def test_other_5xx_fails_without_suppressing(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    smtp.replies.append("554 5.7.1 message rejected as spam")
    email_id = await add_service(pool)
    await delivery_for(settings, pool).run(queues.SERVICE)
    assert (await status_of(pool, email_id))["status"] == "failed"
    assert await events_of(pool, email_id) == ["failed"]
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_unsubscribe_suppresses_digests_but_not_service_mail(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink, factory: Factory
) -> None:
    account = await factory.account()
    await suppression.add(pool, account["email"], "unsubscribed", "digest")
    await suppression.add(pool, account["email"], "unsubscribed", "all")
    digest = await add_service(pool, account, kind="digest")
    service = await add_service(pool, account)
    await delivery_for(settings, pool).run(queues.DIGEST)
    await delivery_for(settings, pool).run(queues.SERVICE)
    assert (await status_of(pool, digest))["status"] == "suppressed"
    assert (await status_of(pool, service))["status"] == "sent"
    assert [r.recipients for r in smtp.received] == [[account["email"]]]


async def test_refused_connection_schedules_a_retry(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, smtp: MailSink
) -> None:
    from notifier.embedded import free_port

    email_id = await add_service(pool)
    refused = settings.model_copy(update={"smtp_port": free_port()})
    now = datetime.now(UTC)
    counts = await delivery_for(refused, pool, redis).run(queues.SERVICE, now=now)
    assert counts.deferred == 1
    row = await status_of(pool, email_id)
    assert row["status"] == "queued" and "cannot connect" in row["last_error"]
    assert row["next_attempt_at"] == now + timedelta(seconds=outbox.RETRY_DELAYS[0])
    # A doorbell is set for the retry time (so it does not wait for the sweep).
    jobs = [j.decode() for j in await redis.zrange(queues.SERVICE, 0, -1)]
    assert any(j.startswith(f"deliver:{queues.SERVICE}:") for j in jobs)
    # With the server back, the retry goes out.
    assert (await delivery_for(settings, pool).run(queues.SERVICE, now=row["next_attempt_at"])).sent == 1


async def test_lost_job_is_rung_again_by_the_sweep_and_sent_once(
    pool: asyncpg.Pool, redis: ArqRedis, smtp: MailSink, run_worker: Any
) -> None:
    email_id = await add_service(pool)
    await outbox.ring(redis, queues.SERVICE)
    await redis.flushdb()  # Redis lost the job
    assert await run_worker(queues.SERVICE) == 0
    assert not smtp.received

    assert await outbox.sweep(pool, redis) == {queues.SERVICE: 1}
    assert await outbox.sweep(pool, redis) == {}  # a bell is already waiting: no second one
    await run_worker(queues.SERVICE)
    assert len(smtp.received) == 1
    assert await outbox.sweep(pool, redis) == {}
    await run_worker(queues.SERVICE)
    assert len(smtp.received) == 1
    assert (await status_of(pool, email_id))["status"] == "sent"


async def test_abandoned_claim_becomes_due_when_its_lease_ends(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    email_id = await add_service(pool)
    now = datetime.now(UTC)
    lease = now + timedelta(seconds=60)
    # A worker claims the row and dies before sending.
    claimed = await pool.fetch(Q.claim_emails, queues.SERVICE, now, 10, lease)
    assert [r["id"] for r in claimed] == [email_id]
    delivery = delivery_for(settings, pool)
    assert (await delivery.run(queues.SERVICE, now=now + timedelta(seconds=30))).sent == 0
    assert (await delivery.run(queues.SERVICE, now=lease)).sent == 1
    # The dead worker's late result cannot overwrite the new one.
    await pool.execute(
        Q.record_results,
        [email_id],
        ["failed"],
        [None],
        ["late"],
        [None],
        ["failed"],
        [None],
        now,
        lease,
        "x",
    )
    row = await status_of(pool, email_id)
    assert row["status"] == "sent" and row["attempts"] == 2
    assert await events_of(pool, email_id) == ["sent"]
    assert len(smtp.received) == 1


async def test_concurrent_jobs_send_each_email_once(
    pool: asyncpg.Pool, redis: ArqRedis, smtp: MailSink, run_worker: Any
) -> None:
    async with pool.acquire() as conn:
        ids = await outbox.add_many(
            conn,
            [
                outbox.NewEmail(kind="service", to_address=f"m{i}@example.com", template="service/selftest")
                for i in range(350)
            ],
        )
    assert len(ids) == 350
    await outbox.ring(redis, queues.SERVICE, count=len(ids))  # four jobs racing for the rows
    await outbox.ring(redis, queues.SERVICE, count=len(ids))
    await run_worker(queues.SERVICE)
    recipients = [r.recipients[0] for r in smtp.received]
    assert len(recipients) == 350 and len(set(recipients)) == 350
    assert await pool.fetchval("SELECT count(*) FROM events WHERE kind = 'sent'") == 350


async def test_add_many_skips_existing_newsletter_recipients(pool: asyncpg.Pool, factory: Factory) -> None:
    account = await factory.account()
    newsletter_id = await pool.fetchval(
        "INSERT INTO newsletters (subject, body) VALUES ('Hi', 'Body') RETURNING id"
    )
    row = outbox.NewEmail(
        kind="newsletter",
        to_address=account["email"],
        account_id=account["id"],
        template=None,
        newsletter_id=newsletter_id,
    )
    async with pool.acquire() as conn:
        assert len(await outbox.add_many(conn, [row])) == 1
        assert await outbox.add_many(conn, [row]) == []
    assert await pool.fetchval("SELECT queue FROM emails") == queues.BULK


async def test_header_injection_through_the_outbox_is_impossible(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(compose.HeaderError):
            await outbox.add(
                conn,
                kind="service",
                to_address="a@example.com\r\nBcc: victim@example.net",
                template="service/selftest",
            )
    email_id = await add_service(pool, subject="Hi\r\nBcc: victim@example.net\r\n\r\nforged body")
    await add_service(pool, context={"account": {"name": "Eve\r\nBcc: victim@example.net"}})
    await delivery_for(settings, pool).run(queues.SERVICE)
    assert len(smtp.received) == 2
    for received in smtp.received:
        assert received.recipients == ["someone@example.com"]
        assert received.message["Bcc"] is None
    assert (await status_of(pool, email_id))["status"] == "sent"
    subjects = {r.message["Subject"] for r in smtp.received}
    assert subjects == {"Hi Bcc: victim@example.net forged body", "Welcome, Eve Bcc: victim@example.net"}


async def test_a_template_error_fails_the_email_not_the_batch(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    broken = await add_service(
        pool, template="service/email_address_changed", context={"account": {"name": "Ada"}}
    )
    fine = await add_service(pool)
    await delivery_for(settings, pool).run(queues.SERVICE)
    row = await status_of(pool, broken)
    assert row["status"] == "failed" and "old_email" in row["last_error"]
    assert (await status_of(pool, fine))["status"] == "sent"


async def test_retry_failed_by_id_and_since(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, smtp: MailSink, run_worker: Any, factory: Factory
) -> None:
    # E-mails of accounts: a failed one without an account (an erasure notice) keeps no address
    # to retry (tests/test_erasure_notice.py).
    first = await add_service(pool, await factory.account())
    second = await add_service(pool, await factory.account())
    smtp.replies.extend(["554 5.0.0 no", "554 5.0.0 no"])
    await delivery_for(settings, pool).run(queues.SERVICE)
    assert {(await status_of(pool, i))["status"] for i in (first, second)} == {"failed"}

    assert await outbox.retry_failed(pool, redis, ids=[first, 999]) == [first]
    await run_worker(queues.SERVICE)
    assert (await status_of(pool, first))["status"] == "sent"
    assert (await status_of(pool, second))["status"] == "failed"

    failed_at = (await status_of(pool, second))["failed_at"]
    assert await outbox.retry_failed(pool, redis, since=failed_at + timedelta(seconds=1)) == []
    assert await outbox.retry_failed(pool, redis, since=failed_at) == [second]
    await run_worker(queues.SERVICE)
    assert (await status_of(pool, second))["status"] == "sent"
    assert len(smtp.received) == 2


def test_cli_outbox_retry(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from notifier import cli

    monkeypatch.setenv("NOTIFIER_DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("NOTIFIER_REDIS_URL", settings.redis_url or "")
    assert cli.main(["outbox", "retry"]) == 2
    assert "give the ids" in capsys.readouterr().err
    assert cli.main(["outbox", "retry", "--since", "2000-01-01T00:00"]) == 0
    assert "re-queued" in capsys.readouterr().out


async def test_dkim_signed_digest_verifies_after_delivery(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink, factory: Factory
) -> None:
    import dkim
    from pydantic import SecretStr

    from tests.test_mail import rsa_key

    pem, record = rsa_key()
    settings.dkim_domain, settings.dkim_selector = "example.org", "mail"
    settings.dkim_private_key = SecretStr(pem.decode())
    account = await factory.account(name="Zoë")
    await add_service(pool, account, kind="digest", subject="Grüße aus dem Verein")
    delivery = delivery_for(settings, pool)
    delivery.renderers.use("digest", TemplateRenderer(delivery.renderers.templates))
    assert (await delivery.run(queues.DIGEST)).sent == 1

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record if name == b"mail._domainkey.example.org." else b""

    data = smtp.received[0].data
    assert dkim.verify(data, dnsfunc=dnsfunc)
    signature = str(smtp.received[0].message["DKIM-Signature"]).replace(" ", "").replace("\n", "")
    # Each header signed once more than it occurs (over-signing), absent ones once.
    signed = (
        "h=from:from:to:to:cc:reply-to:subject:subject:date:date:message-id:message-id:"
        "list-unsubscribe:list-unsubscribe:list-unsubscribe-post:list-unsubscribe-post"
    )
    assert signed in signature.lower()


async def test_a_dead_server_does_not_burn_through_the_backlog(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis
) -> None:
    from notifier.embedded import free_port

    async with pool.acquire() as conn:
        await outbox.add_many(
            conn,
            [
                outbox.NewEmail(kind="service", to_address=f"m{i}@example.com", template="service/selftest")
                for i in range(250)
            ],
        )
    refused = settings.model_copy(update={"smtp_port": free_port()})
    delivery = Delivery(refused, pool, SMTPSender(refused), redis=redis, batch_size=100)
    counts = await delivery.run(queues.SERVICE)
    assert counts.deferred == 100  # one batch tried, then the job stops
    statuses = dict(await pool.fetch("SELECT status, count(*) FROM emails GROUP BY status"))
    assert statuses == {"queued": 250}
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE attempts = 0") == 150


async def test_a_broken_renderer_fails_its_email_only(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        async def prepare(self, pool: asyncpg.Pool, emails: Any) -> None:
            return None

        def render(self, email: Any, context: Any) -> Any:
            raise KeyError("oops")

    broken = await add_service(pool, kind="test")
    fine = await add_service(pool)
    delivery = delivery_for(settings, pool)
    delivery.renderers.use("test", Broken())
    await delivery.run(queues.SERVICE)
    assert (await status_of(pool, broken))["status"] == "failed"
    assert (await status_of(pool, fine))["status"] == "sent"


async def test_a_row_claimed_too_often_without_a_result_fails(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    email_id = await add_service(pool)
    await pool.execute("UPDATE emails SET attempts = $2 WHERE id = $1", email_id, outbox.MAX_ATTEMPTS)
    await delivery_for(settings, pool).run(queues.SERVICE)
    row = await status_of(pool, email_id)
    assert row["status"] == "failed" and "abandoned" in row["last_error"]
    assert not smtp.received


async def test_a_long_run_hands_over_to_a_fresh_job(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, smtp: MailSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pool.acquire() as conn:
        await outbox.add_many(
            conn,
            [
                outbox.NewEmail(kind="service", to_address=f"m{i}@example.com", template="service/selftest")
                for i in range(15)
            ],
        )
    monkeypatch.setattr(outbox, "RUN_SECONDS", 0.0)
    delivery = Delivery(settings, pool, SMTPSender(settings), redis=redis, batch_size=10)
    assert (await delivery.run(queues.SERVICE)).sent == 10  # one batch, then hand over
    assert await outbox._has_bell(redis, queues.SERVICE)
    assert (await delivery.run(queues.SERVICE)).sent == 5


async def test_sender_reconnects_when_the_server_dropped_a_pooled_connection(settings: Settings) -> None:
    """A server that drops a connection after one message, unnoticed until the next command (as
    an idle timeout racing a send does): the send is retried once on a fresh connection."""
    import asyncio

    from notifier.mail.smtp import Envelope

    received: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await converse(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()

    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        transactions = 0
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250 test\r\n")
            elif verb == b"MAIL":
                transactions += 1
                if transactions == 2:  # the second message on this connection: hang up
                    return
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                received.append(await reader.readuntil(b"\r\n.\r\n"))
                writer.write(b"250 queued\r\n")
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = SMTPSender(settings.model_copy(update={"smtp_port": port, "smtp_pool_size": 1}))
    envelope = Envelope("service@example.org", ("a@example.com",), b"Subject: x\r\n\r\nbody\r\n")
    try:
        for _ in range(3):
            assert await sender.send(envelope) == "queued"
        assert len(received) == 3
    finally:
        await sender.close()
        server.close()
        await server.wait_closed()


async def test_a_ring_that_cannot_reach_redis_does_not_raise(pool: asyncpg.Pool, redis: ArqRedis) -> None:
    from notifier.embedded import free_port

    email_id = await add_service(pool)
    unreachable = ArqRedis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        assert await outbox.ring(unreachable, queues.SERVICE) is False
    finally:
        await unreachable.aclose()
    # The committed row is still due, and the sweep rings for it.
    assert await outbox.sweep(pool, redis) == {queues.SERVICE: 1}
    assert (await status_of(pool, email_id))["status"] == "queued"


async def test_claiming_and_recording_a_batch_read_emails_by_primary_key_not_the_whole_table(
    pool: asyncpg.Pool,
) -> None:
    # Joined to the claimed ids, the planner hashed all of `emails` (every e-mail ever sent) for
    # each batch while a seq scan looked cheap (8 of 16-28 ms a claim at 10,000 rows): the
    # claim and the record of a batch must find their rows by key whatever the table holds.
    async with pool.acquire() as conn:
        await outbox.add_many(
            conn,
            [
                outbox.NewEmail(kind="service", to_address=f"r{i}@example.com", template="service/welcome")
                for i in range(10_000)
            ],
        )
        await conn.execute("ANALYZE emails")
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=60)
        claim = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + Q.claim_emails, queues.SERVICE, now, 300, lease
        )
        ids = [r["id"] for r in await conn.fetch(Q.claim_emails, queues.SERVICE, now, 300, lease)]
        n = len(ids)
        record = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + Q.record_results,
            ids, ["sent"] * n, [None] * n, [None] * n, [None] * n, ["sent"] * n, [None] * n, now, lease, "x",
        )  # fmt: skip
    for explained in (claim, record):
        scans = {(n["Node Type"], n.get("Relation Name")) for n in plan_nodes(explained)}
        assert ("Seq Scan", "emails") not in scans, explained


async def test_recording_a_group_does_not_read_the_index_of_every_due_row(pool: asyncpg.Pool) -> None:
    # With statistics from before a newsletter's fan-out (here: of an empty table), the planner
    # took the partial index of due rows for small and ANDed all of it (every row still to send)
    # with the group's keys, for each group of results: 1.8 of 2.5 ms a statement at 100,000 rows
    # due. Fails on the SQL before `coalesce(e.status, '')`.
    async with pool.acquire() as conn:
        new = [
            outbox.NewEmail(kind="service", to_address=f"r{i}@example.com", template="service/welcome")
            for i in range(20_000)
        ]
        await conn.execute("ANALYZE emails")
        await outbox.add_many(conn, new)
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=60)
        ids = [r["id"] for r in await conn.fetch(Q.claim_emails, queues.SERVICE, now, 300, lease)][:24]
        n = len(ids)
        record = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + Q.record_results,
            ids, ["sent"] * n, [None] * n, [None] * n, [None] * n, ["sent"] * n, [None] * n, now, lease, "x",
        )  # fmt: skip
    indexes = {n.get("Index Name") for n in plan_nodes(record)}
    assert "emails_pkey" in indexes, record
    assert "emails_due_idx" not in indexes, record
