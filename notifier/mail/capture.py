"""Development mail capture: an in-process SMTP server that keeps each message as an `.eml` file,
reading them back, and `/dev/mailbox`.

Captured mail holds live unsubscribe and preference tokens, so nobody reads it without signing in:
`/dev/mailbox` sends a browser to the console's mailbox (admin sign-in) and answers a client with
an admin API key (`Authorization: Bearer`) in JSON. Capture exists only outside production
(`Settings.check_capture`)."""

from __future__ import annotations

import email
import email.policy
import time
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from notifier.embedded import free_port

# How many captured e-mails a listing shows, newest first.
LIST_LIMIT = 200


def mailbox_dir(data_dir: Path) -> Path:
    return data_dir / "mail"


class CaptureHandler:
    """aiosmtpd handler that writes every accepted message to `directory/<time>-<n>.eml`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count = 0

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self._count += 1
        name = f"{time.time_ns()}-{self._count:06d}.eml"
        content = envelope.original_content or b""
        (self.directory / name).write_bytes(content)
        return "250 OK captured"


def start_capture_server(directory: Path, host: str = "127.0.0.1", port: int | None = None) -> Controller:
    """Start the capture SMTP server in a thread (on a free port unless given); `controller.port`
    tells where it listens."""
    controller = Controller(CaptureHandler(directory), hostname=host, port=port or free_port())
    controller.start()
    return controller


def parse_captured(raw: bytes) -> EmailMessage:
    """A captured e-mail as a message (headers, HTML and text parts)."""
    message: EmailMessage = email.message_from_bytes(raw, policy=email.policy.default)
    return message


def is_captured_name(name: str) -> bool:
    """Whether `name` is a plain `*.eml` file name (nothing that leaves the folder; safe in a URL)."""
    return name.endswith(".eml") and not name.startswith(".") and all(c.isalnum() or c in "-._" for c in name)


def captured(directory: Path, limit: int = LIST_LIMIT) -> list[dict[str, str]]:
    """The newest captured e-mails: file name, subject, to, from and date of each."""
    files = sorted(directory.glob("*.eml"), reverse=True)[:limit] if directory.exists() else []
    items = []
    for path in files:
        msg = parse_captured(path.read_bytes())
        items.append(
            {
                "file": path.name,
                "subject": str(msg.get("Subject", "")),
                "to": str(msg.get("To", "")),
                "from": str(msg.get("From", "")),
                "date": str(msg.get("Date", "")),
            }
        )
    return items


def read_captured(directory: Path, name: str) -> bytes | None:
    """The raw source of captured e-mail `name`, or None when there is no such file (a name that
    is not a plain `*.eml` file name in `directory` never reads anything)."""
    if not is_captured_name(name):
        return None
    path = directory / name
    return path.read_bytes() if path.is_file() else None
