"""The web console for marketing, support and operators, mounted at `/console` (see docs/console.md).

This module holds ROUTES, the one table of every console route and who may open it, the home
page, static files and the development mailbox. Sign-in and sessions are in `console.sign_in`
(with `console.sessions` and `console.oidc`), the pages in `console.newsletters`,
`newsletter_templates`, `members`, `imports`, `deliverability`, `complaints`, `webhooks`, `brand`
and `users`; `console.ui` holds the middleware that refuses a request whose route's declared
access the session lacks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from notifier.console import (
    brand,
    complaints,
    deliverability,
    imports,
    members,
    oidc,
    sign_in,
    users,
    webhooks,
)
from notifier.console import lists as console_lists
from notifier.console import newsletter_templates as _templates
from notifier.console import newsletters as console_newsletters
from notifier.console.sessions import Access
from notifier.console.ui import (
    ROUTE_ACCESS,
    STATIC_DIR,
    console_middleware,
    pool_of,
    render,
    session_of,
    settings_of,
)
from notifier.db import Q
from notifier.mail import capture

_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


async def home(request: web.Request) -> web.Response:
    """GET /console: an overview by role: delivery figures for operators, the newest newsletters
    for marketing, the member search for support (admins see it all)."""
    pool = pool_of(request)
    context: dict[str, Any] = {}
    if session_of(request).allows("marketing"):
        context["newsletters"] = await pool.fetch(Q.console_newsletters, 5)
    if session_of(request).allows("operator"):
        context["rate"] = await pool.fetchrow(Q.console_send_rate)
        context["failures"] = await pool.fetchrow(Q.console_failure_rate)
        context["failed_total"] = await pool.fetchval(Q.console_failed_count)
    return render(request, "home.html", **context)


async def static(request: web.Request) -> web.StreamResponse:
    """GET /console/static/{name}: the console's CSS and JavaScript."""
    name = request.match_info["name"]
    path = STATIC_DIR / name
    kind = _STATIC_TYPES.get(Path(name).suffix)
    if "/" in name or name.startswith(".") or kind is None or not path.is_file():
        raise web.HTTPNotFound(text="no such file")
    return web.Response(
        body=path.read_bytes(),
        content_type=kind,
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=300"},
    )


# --- development mailbox -----------------------------------------------------------------------


async def mailbox(request: web.Request) -> web.Response:
    """GET /console/mailbox: e-mails captured by `notifier dev`, newest first."""
    settings = settings_of(request)
    items = capture.captured(capture.mailbox_dir(settings.data_dir)) if settings.capture_mail else []
    return render(request, "mailbox.html", items=items)


def _captured_source(request: web.Request) -> bytes:
    settings = settings_of(request)
    raw = capture.read_captured(capture.mailbox_dir(settings.data_dir), request.match_info["name"])
    if not settings.capture_mail or raw is None:
        raise web.HTTPNotFound(text="There is no such captured e-mail.")
    return raw


async def mailbox_message(request: web.Request) -> web.Response:
    """GET /console/mailbox/{name}: one captured e-mail with its headers, HTML and text parts."""
    msg = capture.parse_captured(_captured_source(request))
    html_part = msg.get_body(preferencelist=("html",))
    text_part = msg.get_body(preferencelist=("plain",))
    return render(
        request,
        "mailbox_message.html",
        name=request.match_info["name"],
        subject=str(msg.get("Subject", "")),
        headers=[(k, str(v)) for k, v in msg.items()],
        html=html_part.get_content() if html_part is not None else None,
        text=text_part.get_content() if text_part is not None else None,
    )


async def mailbox_source(request: web.Request) -> web.Response:
    """GET /console/mailbox/{name}/source: the captured e-mail as it was sent, as plain text."""
    return web.Response(body=_captured_source(request), content_type="text/plain", charset="utf-8")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """A console route and who may open it: `public`, `signed-in` (any role), or a role (admin
    may open every route)."""

    method: str
    path: str
    handler: Handler
    access: Access


_news = console_newsletters
# Every console route, and the one place its access is declared. The middleware refuses a route
# that is not here, and tests/test_console_roles.py walks the router against its own policy.
ROUTES: tuple[Route, ...] = (
    Route("GET", "/", home, "signed-in"),
    Route("GET", "/static/{name}", static, "public"),
    # sign-in and sessions
    Route("GET", "/sign-in", sign_in.sign_in_page, "public"),
    Route("POST", "/sign-in", sign_in.sign_in_with_key, "public"),
    Route("POST", "/sign-in/link", sign_in.ask_for_link, "public"),
    Route("GET", "/sign-in/link", sign_in.link_page, "public"),
    Route("POST", "/sign-in/link/use", sign_in.use_link, "public"),
    Route("GET", "/sign-in/oidc", oidc.start, "public"),
    Route("GET", "/sign-in/oidc/callback", oidc.callback, "public"),
    Route("POST", "/sign-out", sign_in.sign_out, "signed-in"),
    Route("GET", "/sessions", sign_in.my_sessions, "signed-in"),
    Route("POST", "/sessions/sign-out-everywhere", sign_in.sign_out_everywhere, "signed-in"),
    # marketing: newsletters
    Route("GET", "/newsletters", _news.index, "marketing"),
    Route("GET", "/newsletters/new", _news.new, "marketing"),
    Route("POST", "/newsletters/new", _news.create, "marketing"),
    Route("POST", "/newsletters/preview", _news.live_preview, "marketing"),
    Route("POST", "/newsletters/count", _news.live_count, "marketing"),
    Route("GET", "/newsletters/{id}", _news.show, "marketing"),
    Route("POST", "/newsletters/{id}", _news.save, "marketing"),
    Route("POST", "/newsletters/{id}/test", _news.test_send, "marketing"),
    Route("POST", "/newsletters/{id}/audience", _news.save_audience, "marketing"),
    Route("POST", "/newsletters/{id}/send", _news.send, "marketing"),
    Route("POST", "/newsletters/{id}/approve", _news.approve, "marketing"),
    Route("POST", "/newsletters/{id}/unschedule", _news.unschedule, "marketing"),
    Route("POST", "/newsletters/{id}/cancel", _news.cancel, "marketing"),
    # marketing: newsletter templates
    Route("GET", "/templates", _templates.index, "marketing"),
    Route("GET", "/templates/new", _templates.new, "marketing"),
    Route("POST", "/templates/new", _templates.create, "marketing"),
    Route("GET", "/templates/{id}", _templates.edit, "marketing"),
    Route("POST", "/templates/{id}", _templates.save, "marketing"),
    Route("POST", "/templates/{id}/draft", _templates.start_draft, "marketing"),
    Route("POST", "/templates/{id}/delete", _templates.delete, "marketing"),
    # marketing: lists
    Route("GET", "/lists", console_lists.index, "marketing"),
    Route("POST", "/lists", console_lists.create, "marketing"),
    Route("POST", "/lists/{key}/archive", console_lists.archive, "marketing"),
    # support: members
    Route("GET", "/members", members.find, "support"),
    Route("GET", "/members/{external_id}", members.profile, "support"),
    Route("GET", "/members/{external_id}/export", members.export, "support"),
    Route("GET", "/members/{external_id}/erase", members.erase_confirm, "support"),
    Route("POST", "/members/{external_id}/erase", members.erase, "support"),
    # operator: deliverability
    Route("GET", "/deliverability", deliverability.overview, "operator"),
    Route("GET", "/suppressions", deliverability.suppressions, "operator"),
    Route("POST", "/suppressions", deliverability.add, "operator"),
    Route("POST", "/suppressions/remove", deliverability.remove, "operator"),
    Route("GET", "/failed", deliverability.failed, "operator"),
    Route("POST", "/failed/redrive", deliverability.redrive, "operator"),
    Route("GET", "/complaints", complaints.complaints, "operator"),
    Route("GET", "/webhooks", webhooks.endpoints, "operator"),
    # admin: users, the brand, member imports, and captured mail (it holds working member links)
    Route("GET", "/users", users.index, "admin"),
    Route("POST", "/users", users.invite, "admin"),
    Route("POST", "/users/{id}", users.change, "admin"),
    Route("GET", "/brand", brand.brand_form, "admin"),
    Route("POST", "/brand", brand.brand_save, "admin"),
    Route("GET", "/import", imports.import_form, "admin"),
    Route("POST", "/import", imports.import_upload, "admin"),
    Route("GET", "/mailbox", mailbox, "admin"),
    Route("GET", "/mailbox/{name}", mailbox_message, "admin"),
    Route("GET", "/mailbox/{name}/source", mailbox_source, "admin"),
)


def setup(app: web.Application) -> None:
    """Mount the console at /console on `app`, every route from ROUTES."""
    console = web.Application(middlewares=[console_middleware])
    access: dict[web.AbstractRoute, Access] = {}
    for route in ROUTES:
        access[console.router.add_route(route.method, route.path, route.handler)] = route.access
    console[ROUTE_ACCESS] = access
    console[oidc.PROVIDERS] = {}
    app.router.add_get("/console", _to_home)
    app.add_subapp("/console", console)


async def _to_home(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/console/")
