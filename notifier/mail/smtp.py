"""Delivery behind a small interface: an SMTP sender over a pool of reused aiosmtplib connections.

Callers hand over finished message bytes and get back the server's reply or one of two errors:
`TemporaryFailure` (retry later) or `PermanentFailure` (stop; `unknown_mailbox` says whether
to suppress the address). What a refusal means is `smtp_reply.classify`'s to say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Protocol, TypeGuard

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from notifier.mail import compose, smtp_reply
from notifier.mail.smtp_pipelining import PipeliningSMTP
from notifier.mail.smtp_reply import Category
from notifier.settings import Settings

log = logging.getLogger("notifier.smtp")


class DeliveryError(Exception):
    def __init__(self, message: str, code: int | None = None, category: Category | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.category: Category = category or (
            "permanent" if isinstance(self, PermanentFailure) else "temporary"
        )


class TemporaryFailure(DeliveryError):
    """Connection trouble, timeouts and 4xx replies: try again later."""


class PermanentFailure(DeliveryError):
    """5xx replies: do not try again."""

    @property
    def unknown_mailbox(self) -> bool:
        """The address does not exist (5.1.1, 5.1.6, 5.1.10, or such wording without a code):
        the only permanent failure that suppresses it."""
        return self.category == "bad_mailbox"

    @property
    def policy(self) -> bool:
        """The receiving server refused the sender (5.7.x: authentication, DMARC, reputation),
        not the address."""
        return self.category == "policy"


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipients: tuple[str, ...]
    message: bytes


class Sender(Protocol):
    """What the outbox needs of a mail transport."""

    async def send(self, envelope: Envelope) -> str:
        """Deliver one message; returns the server's reply. Raises Temporary/PermanentFailure."""
        ...

    async def close(self) -> None: ...


class SMTPSender:
    """A small pool of SMTP connections, opened lazily, reused, replaced when they fail."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(settings.smtp_pool_size)
        self._closed = False

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        tls_context = ssl.create_default_context() if s.smtp_tls != "none" else None
        return (PipeliningSMTP if s.smtp_pipelining else aiosmtplib.SMTP)(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            use_tls=s.smtp_tls == "tls",
            start_tls=s.smtp_tls == "starttls",
            tls_context=tls_context,
            timeout=s.smtp_timeout,
        )

    async def _connection(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connected client and whether it was reused from the pool."""
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
                return client, True
        client = self._client()
        await client.connect()
        return client, False

    async def send(self, envelope: Envelope) -> str:
        async with self._slots:
            # A pooled connection the server closed while idle fails on first use: reconnect
            # once, then report the failure as temporary.
            for attempt in (1, 2):
                try:
                    client, reused = await self._connection()
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    raise TemporaryFailure(
                        f"cannot connect to {self.settings.smtp_host}:{self.settings.smtp_port}: "
                        f"{exc or type(exc).__name__}"
                    ) from None
                try:
                    reply = await _transaction(client, envelope)
                except PermanentFailure:
                    # Refused here (an address this server cannot take): the connection is fine.
                    await self._reset_or_drop(client)
                    raise
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    await self._reset_or_drop(client)
                    refused = exc.recipients[0]
                    raise _classify(refused.code, refused.message) from None
                except aiosmtplib.SMTPServerDisconnected as exc:
                    await _quietly_close(client)
                    if reused and attempt == 1:
                        continue
                    raise TemporaryFailure(f"connection lost: {exc or type(exc).__name__}") from None
                except aiosmtplib.SMTPResponseException as exc:
                    # The transaction failed but the connection may be fine; RSET before reuse.
                    await self._reset_or_drop(client)
                    raise _classify(exc.code, exc.message) from None
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    await _quietly_close(client)
                    raise TemporaryFailure(f"connection lost: {exc or type(exc).__name__}") from None
                self._release(client)
                return reply
            raise AssertionError("unreachable")

    def _release(self, client: aiosmtplib.SMTP) -> None:
        if self._closed or not client.is_connected:
            client.close()
        else:
            self._idle.put_nowait(client)

    async def _reset_or_drop(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.rset()
            self._release(client)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await _quietly_close(client)

    async def close(self) -> None:
        self._closed = True
        while not self._idle.empty():
            client = self._idle.get_nowait()
            try:
                await asyncio.wait_for(client.quit(), 2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()


def _address(address: str) -> bytes:
    # The outbox only holds addresses `compose.check_address` accepted; refuse anything that could
    # still break the command line rather than trusting every caller. An IDN domain goes in its
    # ASCII form (`xn--`); a UTF-8 local part only after `_transaction` saw SMTPUTF8 offered.
    if address.isascii():
        if any(c in address for c in "\r\n<> "):
            raise PermanentFailure(f"refusing to send to a malformed address {address!r}")
        return b"<" + address.encode("ascii") + b">"
    try:
        return b"<" + compose.wire_address(address).encode("utf-8") + b">"
    except compose.HeaderError:
        raise PermanentFailure(f"refusing to send to a malformed address {address!r}") from None


class SMTPUTF8Unsupported(PermanentFailure):
    """The address needs SMTPUTF8 (a UTF-8 local part) and the server does not offer it."""


def _mail_options(client: aiosmtplib.SMTP, envelope: Envelope) -> bytes:
    """` SMTPUTF8` when an address has a UTF-8 local part (RFC 6531) and the server offers it;
    raises SMTPUTF8Unsupported when it does not (nothing was sent: say so, never retry)."""
    if envelope.sender.isascii() and all(r.isascii() for r in envelope.recipients):
        return b""
    if not any(compose.needs_smtputf8(a) for a in (envelope.sender, *envelope.recipients)):
        return b""  # only IDN domains, which go in ASCII
    if not client.supports_extension("smtputf8"):
        raise SMTPUTF8Unsupported(
            "not sent: the address has a non-ASCII local part, which needs SMTPUTF8 (RFC 6531), "
            "and the SMTP server does not offer it"
        )
    return b" SMTPUTF8"


def _pipelines(client: aiosmtplib.SMTP) -> TypeGuard[PipeliningSMTP]:
    """The client can pipeline and the server offers it (known once EHLO was answered)."""
    return isinstance(client, PipeliningSMTP) and client.supports_extension("pipelining")


async def _transaction(client: aiosmtplib.SMTP, envelope: Envelope) -> str:
    """MAIL, RCPT..., DATA on an open connection; the DATA reply. Like aiosmtplib's `sendmail`
    without its per-message address parsing (a third of its CPU), since the addresses were
    validated when the e-mail was queued. Pipelined (`_pipelined`) where the client can and the
    server offers PIPELINING; one command at a time otherwise."""
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()
    if _pipelines(client):
        return await _pipelined(client, envelope)
    options = _mail_options(client, envelope)
    response = await client.execute_command(b"MAIL", b"FROM:" + _address(envelope.sender) + options)
    if response.code != 250:
        raise aiosmtplib.SMTPResponseException(response.code, response.message)
    for recipient in envelope.recipients:
        response = await client.execute_command(b"RCPT", b"TO:" + _address(recipient))
        if response.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)]
            )
    return await _data(client, envelope.message)


def _group(client: aiosmtplib.SMTP, envelope: Envelope) -> tuple[bytes, int]:
    """MAIL, every RCPT and DATA of `envelope` as one pipelined group, and how many replies it gets.
    Raises PermanentFailure (a malformed address, SMTPUTF8 needed) before anything is written."""
    options = _mail_options(client, envelope)
    group = b"MAIL FROM:" + _address(envelope.sender) + options + b"\r\n"
    group += b"".join(b"RCPT TO:" + _address(r) + b"\r\n" for r in envelope.recipients) + b"DATA\r\n"
    return group, len(envelope.recipients) + 2


async def _check_group(client: PipeliningSMTP, envelope: Envelope, replies: list[SMTPResponse]) -> None:
    """Read a group's replies (all of them were read, so the connection is in step) the way
    `_transaction` reads them one command at a time, and raise the same: a refused MAIL fails the
    envelope (SMTPResponseException), a refused RCPT (SMTPRecipientsRefused) fails that recipient,
    and the content is never sent to the others; a refused DATA is SMTPDataError. The caller sends
    RSET before reusing the connection. A 354 that came although nothing may be sent is answered
    with a lone "." when no recipient was accepted (RFC 2920 3.1: the server then has nobody to
    deliver to); when some were, the connection is closed, which makes the server drop the
    transaction. Returns when the content may follow."""
    mail, *rcpts, data = replies
    refused = [
        aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
        for reply, recipient in zip(rcpts, envelope.recipients, strict=True)
        if reply.code not in (250, 251)
    ]
    if data.code == 354 and (mail.code != 250 or refused):
        if mail.code == 250 and len(refused) < len(rcpts):
            client.close()
        else:
            await client.pipeline(b".\r\n", 1)
    if mail.code != 250:
        raise aiosmtplib.SMTPResponseException(mail.code, mail.message)
    if refused:
        raise aiosmtplib.SMTPRecipientsRefused(refused)
    if data.code != 354:
        raise aiosmtplib.SMTPDataError(data.code, data.message)


async def _pipelined(client: PipeliningSMTP, envelope: Envelope) -> str:
    """The transaction in two round trips (RFC 2920): MAIL, every RCPT and DATA in one write and
    their replies read in order (`_check_group`), then the content and its reply."""
    group, count = _group(client, envelope)
    payload = data_bytes(envelope.message)
    await _check_group(client, envelope, await client.pipeline(group, count))
    (reply,) = await client.pipeline(payload, 1)
    if reply.code != 250:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return reply.message


_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")


def data_bytes(message: bytes) -> bytes:
    """What goes on the wire after DATA: CRLF line ends (lone CR and LF converted), lines that
    begin with "." doubled (RFC 5321 4.5.2), then the terminating ".". The same bytes aiosmtplib's
    `data` writes, but its two regular expressions cost about 0.25 ms on a 22 KB digest, as much
    as rendering and building it; our messages come with CRLF ends already (`compose.build`), which
    a few byte counts confirm, and dot-stuffing is then one `replace`."""
    lf = message.count(b"\n")
    if lf != message.count(b"\r") or lf != message.count(b"\r\n"):
        message = _LINE_ENDS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def _data(client: aiosmtplib.SMTP, message: bytes) -> str:
    """DATA, the message, the server's answer (the reply text). Like `client.data`, whose
    per-message regular expressions `data_bytes` replaces; the connection is this transaction's
    alone (the pool hands it to one sender at a time), so no other command can interleave."""
    payload = data_bytes(message)
    response = await client.execute_command(b"DATA")
    if response.code != 354:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost")
    protocol.write(payload)
    # No await between the write and read_response: the answer cannot arrive unawaited.
    response = await protocol.read_response(timeout=client.timeout)
    if response.code != 250:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response.message


def _classify(code: int, message: str) -> DeliveryError:
    """By `smtp_reply.classify`: a bad mailbox, a policy refusal and other 5xx are permanent; 4xx,
    a full mailbox (5.2.x, retried later) and anything unexpected (aiosmtplib uses -1 for a
    garbled reply) are temporary. The text keeps no e-mail address (`smtp_reply.redact`)."""
    text = smtp_reply.redact(f"{code} {message}")
    category = smtp_reply.classify(code, message)
    if category in ("bad_mailbox", "policy", "permanent"):
        return PermanentFailure(text, code, category)
    return TemporaryFailure(text, code, category)


async def _quietly_close(client: aiosmtplib.SMTP) -> None:
    # Closing a broken socket may raise anything; it is gone either way.
    with contextlib.suppress(Exception):
        client.close()
