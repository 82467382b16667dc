"""Development mail capture: an in-process SMTP server that keeps each message as an `.eml` file,
and the `/dev/mailbox` pages that list and show them."""

from __future__ import annotations

import email
import email.policy
import html
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from notifier.embedded import free_port
from notifier.resources import SETTINGS
from notifier.responses import json_response


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


def _summary(path: Path) -> dict[str, Any]:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    return {
        "file": path.name,
        "subject": str(msg.get("Subject", "")),
        "to": str(msg.get("To", "")),
        "from": str(msg.get("From", "")),
        "date": str(msg.get("Date", "")),
    }


async def mailbox(request: web.Request) -> web.StreamResponse:
    """The captured messages, newest first (HTML, or JSON with `Accept: application/json`)."""
    directory = mailbox_dir(request.app[SETTINGS].data_dir)
    files = sorted(directory.glob("*.eml"), reverse=True)[:200] if directory.exists() else []
    items = [_summary(p) for p in files]
    if "application/json" in request.headers.get("Accept", ""):
        return json_response(200, {"items": items, "next_cursor": None})
    rows = "".join(
        f'<tr><td><a href="/dev/mailbox/{html.escape(i["file"])}">{html.escape(i["subject"]) or "(no subject)"}</a></td>'
        f"<td>{html.escape(i['to'])}</td><td>{html.escape(i['date'])}</td></tr>"
        for i in items
    )
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Captured mail</title></head>"
        "<body><h1>Captured mail</h1><p>Messages sent by <code>notifier dev</code> are kept here "
        "instead of being delivered.</p><table><thead><tr><th>Subject</th><th>To</th><th>Date</th>"
        f"</tr></thead><tbody>{rows or '<tr><td colspan=3>No mail yet.</td></tr>'}</tbody></table></body></html>"
    )
    return web.Response(text=page, content_type="text/html")


async def message(request: web.Request) -> web.StreamResponse:
    """One captured message: its HTML part, or the raw source with `?raw=1`."""
    name = request.match_info["name"]
    if "/" in name or not name.endswith(".eml"):
        raise web.HTTPNotFound(text="no such message")
    path = mailbox_dir(request.app[SETTINGS].data_dir) / name
    if not path.is_file():
        raise web.HTTPNotFound(text="no such message")
    raw = path.read_bytes()
    if request.query.get("raw"):
        return web.Response(body=raw, content_type="text/plain", charset="utf-8")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    part = msg.get_body(preferencelist=("html", "plain"))
    content = part.get_content() if part is not None else ""
    if part is not None and part.get_content_type() == "text/plain":
        content = f"<pre>{html.escape(content)}</pre>"
    headers = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in msg.items()
    )
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(str(msg.get('Subject', '')))}</title></head>"
        f'<body><p><a href="/dev/mailbox">All mail</a> · <a href="?raw=1">Source</a></p>'
        f"<table>{headers}</table><hr>"
        f'<iframe sandbox srcdoc="{html.escape(content)}" style="width:100%;height:80vh;border:0"></iframe></body></html>'
    )
    return web.Response(text=page, content_type="text/html")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/dev/mailbox", mailbox)
    app.router.add_get("/dev/mailbox/{name}", message)
