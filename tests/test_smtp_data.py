"""The DATA phase of `SMTPSender`: it writes the message itself (`smtp.data_bytes`) instead of
through aiosmtplib's `data`, and must put the same bytes on the wire."""

from __future__ import annotations

import itertools

import aiosmtplib
import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from notifier.mail.smtp import Envelope, SMTPSender, TemporaryFailure, data_bytes
from notifier.settings import Settings
from tests.conftest import MailSink

TRICKY = [
    b"Subject: plain\r\n\r\nbody\r\n",
    b"Subject: dots\r\n\r\n.leading\r\n..two\r\n.\r\nmiddle . dot\r\n.",
    b".starts with a dot\r\n\r\nx",
    b"Subject: bare LF\n\nline one\nline two\n.dot after LF\n",
    b"Subject: bare CR\r\rline\r.dot after CR\r",
    b"Subject: mixed\r\n\r\na\nb\rc\r\n\r\r\n\n.d",
    b"Subject: no final line end\r\n\r\nlast",
    b"",
]


def _aiosmtplib_wire(message: bytes) -> bytes:
    """What aiosmtplib's own `data` writes after DATA."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


@pytest.mark.parametrize("message", TRICKY)
def test_data_bytes_are_what_aiosmtplib_writes(message: bytes) -> None:
    assert data_bytes(message) == _aiosmtplib_wire(message)


def test_data_bytes_agree_on_every_short_combination() -> None:
    pieces = [b"\r", b"\n", b".", b"a", b"\r\n"]
    for n in range(6):
        for combo in itertools.product(pieces, repeat=n):
            message = b"".join(combo)
            assert data_bytes(message) == _aiosmtplib_wire(message), message


async def test_server_receives_what_aiosmtplib_would_send(settings: Settings, smtp: MailSink) -> None:
    """Each tricky message, sent by SMTPSender and by aiosmtplib's sendmail, arrives identical;
    several messages in a row share one pooled connection without losing a reply."""
    sender = SMTPSender(settings)
    reference = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, timeout=5)
    await reference.connect()
    try:
        for message in TRICKY:
            reply = await sender.send(Envelope("service@example.org", ("a@example.com",), message))
            assert reply.startswith("OK")
            await reference.sendmail("service@example.org", ["a@example.com"], message)
    finally:
        await sender.close()
        await reference.quit()
    ours, theirs = smtp.received[0::2], smtp.received[1::2]
    assert len(ours) == len(theirs) == len(TRICKY)
    for mine, reference_copy in zip(ours, theirs, strict=True):
        assert mine.data == reference_copy.data
        assert mine.recipients == ["a@example.com"]


async def test_refused_data_then_the_connection_still_works(settings: Settings, smtp: MailSink) -> None:
    sender = SMTPSender(settings)
    envelope = Envelope("service@example.org", ("a@example.com",), b"Subject: t\r\n\r\n.x\r\n")
    try:
        smtp.replies.append("452 4.3.1 insufficient storage")
        with pytest.raises(TemporaryFailure, match="452"):
            await sender.send(envelope)
        assert (await sender.send(envelope)).startswith("OK")
    finally:
        await sender.close()
    assert [r.data for r in smtp.received] == [b"Subject: t\r\n\r\n.x\r\n"]
