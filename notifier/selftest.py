"""A self-test e-mail: proves that a worker can render and hand a message to the mail server."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

from notifier.settings import Settings
from notifier.smtp import Envelope, Sender


async def send_selftest(settings: Settings, sender: Sender, to: str) -> str:
    """Send one plain e-mail to `to` from SERVICE_FROM; returns the server's reply."""
    from_addr = parseaddr(settings.service_from)[1]
    msg = EmailMessage()
    msg["From"] = settings.service_from
    msg["To"] = to
    msg["Subject"] = "notifier is running"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=from_addr.rpartition("@")[2] or "localhost")
    msg.set_content(
        "This message was sent by a notifier worker to show that delivery works.\n\n"
        f"Web: {settings.public_url}\n"
    )
    return await sender.send(Envelope(from_addr, (to,), msg.as_bytes()))
