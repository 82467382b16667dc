"""SMTP PIPELINING (RFC 2920) in the sender: against a scripted responder that writes its replies in
every way a server may (one write each, byte by byte, all of a group joined in one write, random
cuts), refusing any one command of a group, or cutting the connection mid-group; and against
aiosmtpd with and without PIPELINING offered."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope as ServerEnvelope
from aiosmtpd.smtp import Session

from notifier import queues, suppression
from notifier.embedded import free_port
from notifier.mail import outbox
from notifier.mail.delivery import Delivery
from notifier.mail.smtp import Envelope, PermanentFailure, SMTPSender, TemporaryFailure
from notifier.settings import Settings

WriteMode = Literal["each", "bytewise", "joined", "chunks"]
DEFAULT = {
    "MAIL": "250 2.1.0 Ok",
    "RCPT": "250 2.1.5 Ok",
    "DATA": "354 End data with <CR><LF>.<CR><LF>",
    ".": "250 2.0.0 Ok: queued",
    "RSET": "250 2.0.0 Ok",
    "NOOP": "250 2.0.0 Ok",
    "QUIT": "221 2.0.0 Bye",
}


@dataclass
class Responder:
    """A tiny SMTP server whose replies and their timing the test scripts. `replies[verb]` are
    used, in order, before the defaults (`"."` is the end of the content)."""

    pipelining: bool = True
    mode: WriteMode = "each"
    replies: dict[str, list[str]] = field(default_factory=dict)
    cut_after: str | None = None  # close without replying once this verb (or ".") was read
    always_354: bool = False  # answer DATA with 354 even with no recipient (RFC 2920 says: check)
    refuse: dict[str, str] = field(default_factory=dict)  # RCPT address -> its reply
    unasked: str | None = None  # a reply nobody asked for, written after each message's
    reads: list[list[str]] = field(default_factory=list)  # the commands of each read
    commands: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    connections: int = 0
    seed: int = 0

    def reply(self, verb: str) -> str:
        scripted = self.replies.get(verb)
        return scripted.pop(0) if scripted else DEFAULT[verb]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        rng = random.Random(self.seed + self.connections)
        out: list[bytes] = []

        async def flush() -> None:
            replies, data = list(out), b"".join(out)
            out.clear()
            if self.mode == "each":
                for one in replies:
                    writer.write(one)
                    await writer.drain()
                    await asyncio.sleep(0.002)
            elif self.mode == "bytewise":
                for i in range(len(data)):
                    writer.write(data[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            elif self.mode == "chunks":
                while data:
                    size = rng.randint(1, 12)
                    writer.write(data[:size])
                    data = data[size:]
                    await writer.drain()
                    await asyncio.sleep(0.001 * rng.random())
            else:
                writer.write(data)
                await writer.drain()

        ehlo = ["250-responder.test", "250-8BITMIME", "250-SMTPUTF8"]
        if self.pipelining:
            ehlo.append("250-PIPELINING")
        ehlo.append("250 ENHANCEDSTATUSCODES")
        out.append(b"220 responder.test ESMTP\r\n")
        await flush()
        buffer = b""
        mail_ok, accepted, in_data, content = False, 0, False, b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buffer += chunk
                seen: list[str] = []
                while b"\r\n" in buffer:
                    line, buffer = buffer.split(b"\r\n", 1)
                    if in_data:
                        if line != b".":
                            content += (line[1:] if line.startswith(b".") else line) + b"\r\n"
                            continue
                        in_data = False
                        seen.append(".")
                        self.commands.append(".")
                        if accepted:
                            self.messages.append(content)
                        if self.cut_after == ".":
                            return
                        reply = self.reply(".") if accepted else "554 5.5.1 Error: no valid recipients"
                        if self.unasked:
                            reply += "\r\n" + self.unasked
                        out.append(reply.encode() + b"\r\n")
                        mail_ok, accepted = False, 0
                        continue
                    verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode()
                    seen.append(verb)
                    self.commands.append(line.decode())
                    if self.cut_after == verb:
                        return
                    if verb == "EHLO":
                        reply = "\r\n".join(ehlo)
                    elif verb == "MAIL":
                        reply = self.reply("MAIL")
                        mail_ok = reply.startswith("250")
                    elif verb == "RCPT":
                        address = line.decode().partition("<")[2].rstrip(">")
                        reply = self.refuse.get(address) or self.reply("RCPT")
                        if not mail_ok:
                            reply = "503 5.5.1 Error: need MAIL command"
                        accepted += reply.startswith("25")
                    elif verb == "DATA":
                        if (mail_ok and accepted) or self.always_354:
                            reply = self.reply("DATA")
                        else:
                            reply = "554 5.5.1 Error: no valid recipients"
                        in_data, content = reply.startswith("354"), b""
                    elif verb == "RSET":
                        reply, mail_ok, accepted = self.reply("RSET"), False, 0
                    else:
                        reply = self.reply(verb)
                    out.append(reply.encode() + b"\r\n")
                    if verb == "QUIT":
                        await flush()
                        return
                    if not self.pipelining or self.mode != "joined" or verb not in ("MAIL", "RCPT"):
                        await flush()
                await flush()
                if seen:
                    self.reads.append(seen)
        finally:
            writer.close()


@pytest.fixture
async def responder() -> AsyncIterator[tuple[Responder, int]]:
    script = Responder()
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield script, port
        server.close()


def one_connection(settings: Settings, port: int) -> SMTPSender:
    return SMTPSender(settings.model_copy(update={"smtp_port": port, "smtp_pool_size": 1, "smtp_timeout": 2}))


def envelope(i: int, to: str = "member@example.org") -> Envelope:
    body = f"Subject: hello {i}\r\n\r\nline one\r\n.a line that starts with a dot\r\n".encode()
    return Envelope("news@example.org", (to,), body)


def groups(script: Responder) -> list[list[str]]:
    """The reads that carried a MAIL command."""
    return [r for r in script.reads if "MAIL" in r]


@pytest.mark.parametrize("mode", ["each", "bytewise", "joined", "chunks"])
async def test_a_group_is_one_write_and_its_replies_are_read_however_they_arrive(
    settings: Settings, responder: tuple[Responder, int], mode: WriteMode
) -> None:
    script, port = responder
    script.mode = mode
    sender = one_connection(settings, port)
    try:
        for i in range(3):
            assert "queued" in await sender.send(envelope(i))
    finally:
        await sender.close()
    assert script.connections == 1
    assert len(script.messages) == 3
    assert script.messages[0].endswith(b"line one\r\n.a line that starts with a dot\r\n")
    # MAIL, RCPT and DATA in one read: one round trip where there were three.
    assert groups(script) == [["MAIL", "RCPT", "DATA"]] * 3


@pytest.mark.parametrize("seed", range(8))
async def test_multi_line_replies_cut_at_random_places(
    settings: Settings, responder: tuple[Responder, int], seed: int
) -> None:
    script, port = responder
    script.mode, script.seed = "chunks", seed
    script.replies["MAIL"] = ["250-2.1.0 sender\r\n250-2.1.0 looks\r\n250 2.1.0 fine"] * 3
    script.replies["."] = ["250-2.0.0 queued\r\n250 2.0.0 as ABC"] * 3
    sender = one_connection(settings, port)
    try:
        replies = [await sender.send(envelope(i)) for i in range(3)]
    finally:
        await sender.close()
    assert replies == ["2.0.0 queued\n2.0.0 as ABC"] * 3
    assert len(script.messages) == 3


async def test_several_recipients_in_one_group(settings: Settings, responder: tuple[Responder, int]) -> None:
    script, port = responder
    script.mode = "joined"
    sender = one_connection(settings, port)
    try:
        await sender.send(
            Envelope("news@example.org", ("a@example.org", "b@example.org"), b"Subject: x\r\n\r\nx")
        )
    finally:
        await sender.close()
    assert groups(script) == [["MAIL", "RCPT", "RCPT", "DATA"]]
    assert len(script.messages) == 1


async def test_without_pipelining_offered_one_command_at_a_time(
    settings: Settings, responder: tuple[Responder, int]
) -> None:
    script, port = responder
    script.pipelining = False
    sender = one_connection(settings, port)
    try:
        for i in range(2):
            await sender.send(envelope(i))
    finally:
        await sender.close()
    assert len(script.messages) == 2
    assert groups(script) == [["MAIL"]] * 2


# A refusal of each command of a group, temporary and permanent; then the next message on the same
# connection must go through (the replies stayed in step) and nothing refused was delivered.
REFUSALS = [
    ("MAIL", "451 4.3.0 try again later", TemporaryFailure),
    ("MAIL", "553 5.7.1 sender rejected by policy", PermanentFailure),
    ("RCPT", "450 4.2.0 greylisted", TemporaryFailure),
    ("RCPT", "550 5.1.1 no such user", PermanentFailure),
    ("DATA", "451 4.3.0 no DATA now", TemporaryFailure),
    ("DATA", "554 5.3.0 no DATA at all", PermanentFailure),
    (".", "452 4.3.1 insufficient system storage", TemporaryFailure),
    (".", "554 5.6.0 content rejected", PermanentFailure),
]


@pytest.mark.parametrize("mode", ["each", "joined", "bytewise"])
@pytest.mark.parametrize(("verb", "reply", "error"), REFUSALS)
async def test_a_refusal_of_any_command_of_a_group(
    settings: Settings,
    responder: tuple[Responder, int],
    mode: WriteMode,
    verb: str,
    reply: str,
    error: type[Exception],
) -> None:
    script, port = responder
    script.mode = mode
    script.replies[verb] = [reply]
    sender = one_connection(settings, port)
    try:
        with pytest.raises(error) as refused:
            await sender.send(envelope(1))
        assert getattr(refused.value, "code", None) == int(reply[:3])
        assert "queued" in await sender.send(envelope(2))
    finally:
        await sender.close()
    assert script.connections == 1  # the refusal did not cost the connection
    delivered = [m for m in script.messages if b"hello 2" in m]
    assert len(delivered) == 1
    if verb != ".":
        assert not [m for m in script.messages if b"hello 1" in m]
    if verb in ("DATA", "."):
        # The transaction is reset before the connection's next one.
        last_mail = max(i for i, c in enumerate(script.commands) if c.startswith("MAIL"))
        assert script.commands[last_mail - 1] == "RSET"


async def test_data_accepted_although_no_recipient_was(
    settings: Settings, responder: tuple[Responder, int]
) -> None:
    """RFC 2920 3.1: the client must check DATA's reply itself; a 354 after every RCPT was refused
    is answered with a lone "." (an empty transaction the server cannot deliver)."""
    script, port = responder
    script.always_354 = True
    script.replies["RCPT"] = ["550 5.1.1 no such user"]
    sender = one_connection(settings, port)
    try:
        with pytest.raises(PermanentFailure):
            await sender.send(envelope(1))
        await sender.send(envelope(2))
    finally:
        await sender.close()
    assert script.connections == 1
    assert len(script.messages) == 1 and b"hello 2" in script.messages[0]


async def test_one_recipient_refused_among_several(
    settings: Settings, responder: tuple[Responder, int]
) -> None:
    """The content goes to nobody (as without pipelining): the server answered DATA with 354 for the
    accepted one, so the connection is dropped, which ends the transaction undelivered."""
    script, port = responder
    script.replies["RCPT"] = ["250 2.1.5 Ok", "550 5.1.1 no such user"]
    sender = one_connection(settings, port)
    try:
        with pytest.raises(PermanentFailure) as refused:
            await sender.send(Envelope("news@example.org", ("a@example.org", "b@example.org"), b"x"))
        assert refused.value.unknown_mailbox
        await sender.send(envelope(2))
    finally:
        await sender.close()
    assert len(script.messages) == 1 and b"hello 2" in script.messages[0]


@pytest.mark.parametrize("cut_after", ["MAIL", "RCPT", "DATA"])
async def test_a_connection_cut_mid_group_loses_nothing_and_sends_nothing_twice(
    settings: Settings, responder: tuple[Responder, int], cut_after: str
) -> None:
    script, port = responder
    sender = one_connection(settings, port)
    try:
        await sender.send(envelope(1))
        script.cut_after = cut_after
        # A reused connection cut before the content was sent: reconnected once, sent once.
        with pytest.raises(TemporaryFailure):  # ... and cut again on the new connection
            await sender.send(envelope(2))
        assert script.connections == 2
        script.cut_after = None
        await sender.send(envelope(2))  # the outbox's retry
    finally:
        await sender.close()
    assert [b"hello 2" in m for m in script.messages] == [False, True]


async def test_a_garbled_reply_in_a_group(settings: Settings, responder: tuple[Responder, int]) -> None:
    """Nothing after a reply that is not SMTP can be trusted: a temporary failure, and the next
    message goes over a new connection."""
    script, port = responder
    script.mode = "joined"
    script.replies["RCPT"] = ["hello there"]
    sender = one_connection(settings, port)
    try:
        with pytest.raises(TemporaryFailure):
            await sender.send(envelope(1))
        await sender.send(envelope(2))
    finally:
        await sender.close()
    assert script.connections == 2
    assert len(script.messages) == 1 and b"hello 2" in script.messages[0]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_reply_nobody_asked_for_is_not_taken_for_the_next(
    settings: Settings, responder: tuple[Responder, int], pipelining: bool
) -> None:
    script, port = responder
    script.pipelining = pipelining
    script.unasked = "421 4.4.2 not really closing"
    sender = one_connection(settings, port)
    try:
        for i in range(3):
            assert "queued" in await sender.send(envelope(i))
    finally:
        await sender.close()
    assert len(script.messages) == 3 and script.connections == 1


async def test_a_cut_after_the_content_is_the_documented_window(
    settings: Settings, responder: tuple[Responder, int]
) -> None:
    """Cut after the final "." was read but before its 250: the server has the message and the
    sender cannot know; it reports a temporary failure and the outbox sends it again later (the
    one copy SMTP cannot prevent, docs/delivery.md)."""
    script, port = responder
    script.cut_after = "."
    sender = one_connection(settings, port)
    try:
        with pytest.raises(TemporaryFailure):
            await sender.send(envelope(1))
    finally:
        await sender.close()
    assert len(script.messages) == 1


async def test_a_batch_through_a_pipelining_server(
    settings: Settings, pool: asyncpg.Pool, responder: tuple[Responder, int]
) -> None:
    """The outbox end to end: each e-mail's own refusal decides its own row only."""
    script, port = responder
    script.mode = "joined"
    script.refuse = {"p3@example.com": "550 5.1.1 no such user", "p4@example.com": "451 4.2.0 greylisted"}
    async with pool.acquire() as conn:
        await outbox.add_many(
            conn,
            [outbox.NewEmail(kind="service", to_address=f"p{i}@example.com", template="service/selftest") for i in range(6)],
        )  # fmt: skip
    two_lanes = settings.model_copy(update={"smtp_port": port, "smtp_pool_size": 2})
    sender = SMTPSender(two_lanes)
    try:
        counts = await Delivery(two_lanes, pool, sender).run(queues.SERVICE)
    finally:
        await sender.close()
    assert (counts.sent, counts.bounced, counts.deferred) == (4, 1, 1)
    statuses = [r["status"] for r in await pool.fetch("SELECT status FROM emails ORDER BY id")]
    assert statuses == ["sent", "sent", "sent", "failed", "queued", "sent"]
    assert await suppression.check(pool, "p3@example.com", ["all"])
    assert sorted(i for i in range(6) for m in script.messages if f"p{i}@example.com".encode() in m) == [
        0,
        1,
        2,
        5,
    ]
    assert groups(script) and all(g == ["MAIL", "RCPT", "DATA"] for g in groups(script))


# --- a real server: aiosmtpd, with and without PIPELINING -------------------------------------


class _Handler:
    def __init__(self, pipelining: bool) -> None:
        self.pipelining = pipelining
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_EHLO(
        self,
        server: SMTPServer,
        session: Session,
        envelope: ServerEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: ServerEnvelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: ServerEnvelope) -> str:
        self.received.append(
            (str(envelope.mail_from), list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        return "250 OK queued"


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def aiosmtpd_server(request: pytest.FixtureRequest) -> Iterator[tuple[_Handler, int]]:
    handler = _Handler(request.param)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


async def test_against_aiosmtpd(settings: Settings, aiosmtpd_server: tuple[_Handler, int]) -> None:
    handler, port = aiosmtpd_server
    sender = SMTPSender(settings.model_copy(update={"smtp_port": port, "smtp_pool_size": 2}))
    try:
        outcomes = await asyncio.gather(
            *(
                sender.send(envelope(i, "nobody@example.org" if i == 3 else f"m{i}@example.org"))
                for i in range(8)
            ),
            return_exceptions=True,
        )
        assert "OK queued" in await sender.send(envelope(9))
    finally:
        await sender.close()
    refused = outcomes.pop(3)
    assert isinstance(refused, PermanentFailure) and refused.unknown_mailbox
    assert all(o == "OK queued" for o in outcomes)
    assert sorted(to[0] for _, to, _ in handler.received) == sorted(
        [f"m{i}@example.org" for i in range(8) if i != 3] + ["member@example.org"]
    )
    assert all(data.endswith(b"\r\n.a line that starts with a dot\r\n") for _, _, data in handler.received)
