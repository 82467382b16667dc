"""`/dev/mailbox`: the mail captured in development, for a client with an admin API key (JSON
and raw sources); a browser goes to the console's mailbox, which needs an admin sign-in. Only
mounted when NOTIFIER_CAPTURE_MAIL is on (never in production)."""

from __future__ import annotations

from aiohttp import web

from notifier.api.auth import authenticate
from notifier.api.problems import Problem
from notifier.api.responses import json_response
from notifier.mail.capture import captured, is_captured_name, mailbox_dir, read_captured
from notifier.resources import SETTINGS


def _wants_console(request: web.Request) -> bool:
    """A browser (no API key offered) reads captured mail in the console, behind its sign-in."""
    return "Authorization" not in request.headers


async def mailbox(request: web.Request) -> web.StreamResponse:
    """GET /dev/mailbox: to the console's mailbox, or with an admin API key the captured e-mails,
    newest first, as JSON `{"items": [...], "next_cursor": null}` (the list envelope of the API)."""
    if _wants_console(request):
        raise web.HTTPSeeOther("/console/mailbox")
    await authenticate(request, "admin")
    directory = mailbox_dir(request.app[SETTINGS].data_dir)
    return json_response(200, {"items": captured(directory), "next_cursor": None})


async def message(request: web.Request) -> web.StreamResponse:
    """GET /dev/mailbox/{name}: to the console's page of that e-mail, or with an admin API key its
    raw source."""
    name = request.match_info["name"]
    if _wants_console(request):
        raise web.HTTPSeeOther(f"/console/mailbox/{name}" if is_captured_name(name) else "/console/mailbox")
    await authenticate(request, "admin")
    raw = read_captured(mailbox_dir(request.app[SETTINGS].data_dir), name)
    if raw is None:
        raise Problem(404, "no captured e-mail of that name")
    return web.Response(body=raw, content_type="text/plain", charset="utf-8")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/dev/mailbox", mailbox)
    app.router.add_get("/dev/mailbox/{name}", message)
