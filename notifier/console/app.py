"""The web console for marketing and operators, mounted at `/console` (see docs/console.md).

This module mounts the sub-application and holds sign-in, sign-out, the home page, static files
and the development mailbox; the pages live in `console_newsletters`, `console_members` and
`console_deliverability`, the shared machinery in `console_ui`, sessions in `console_auth`.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from redis import exceptions as redis_exceptions

from notifier import ratelimit
from notifier.api.headers import text_cookie
from notifier.console import sessions as console_auth
from notifier.console.ui import (
    STATIC_DIR,
    console_middleware,
    form_of,
    page,
    pool_of,
    redirect,
    redis_of,
    render,
    session_of,
    settings_of,
)
from notifier.db import Q
from notifier.mail import capture

log = logging.getLogger("notifier.console")

_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def _cookie_options(request: web.Request, max_age: int | None) -> dict[str, Any]:
    secure = settings_of(request).public_url.startswith("https://")
    options: dict[str, Any] = {"path": "/console", "httponly": True, "samesite": "Strict", "secure": secure}
    if max_age is not None:
        options["max_age"] = max_age
    return options


def _safe_next(value: str | None) -> str:
    """Only a console path may be the target after sign-in (no open redirect)."""
    if value and value.startswith("/console") and not value.startswith("//") and "\\" not in value:
        return value
    return "/console/"


async def _sign_in_form(request: web.Request, *, error: str | None = None, status: int = 200) -> web.Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "sign_in.html",
        status=status,
        error=error,
        signin_token=token,
        next=_safe_next(request.query.get("next")),
    )
    response.set_cookie(console_auth.SIGN_IN_COOKIE, token, **_cookie_options(request, 600))
    return response


async def sign_in_page(request: web.Request) -> web.Response:
    """GET /console/sign-in: the key form (or straight home when already signed in)."""
    session = await console_auth.load(pool_of(request), text_cookie(request, console_auth.SESSION_COOKIE))
    target = _safe_next(request.query.get("next"))
    if session is not None:
        raise web.HTTPSeeOther(target)
    if request.headers.get("Sec-Fetch-Site") == "cross-site" and "retry" not in request.query:
        # A link from another site: the SameSite=Strict cookie was withheld. One same-site hop
        # brings it along, so a signed-in operator lands on the page without signing in again.
        return render(
            request, "continue.html", target="/console/sign-in?" + urlencode({"next": target, "retry": "1"})
        )
    return await _sign_in_form(request)


async def _throttle(request: web.Request, failed: bool = False) -> int:
    """Seconds this client must wait before signing in again (0: go ahead); with `failed`, count a
    failed attempt first. Redis being away opens the door rather than lock operators out."""
    throttle = console_auth.sign_in_throttle(settings_of(request).console_sign_in_attempts)
    client = ratelimit.client_key(request.remote)
    try:
        if failed:
            await throttle.add(redis_of(request), client)
        return await throttle.used_up(redis_of(request), client)
    except (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError) as exc:
        log.warning("console sign-in throttle skipped: Redis unavailable (%s)", type(exc).__name__)
        return 0


async def sign_in(request: web.Request) -> web.Response:
    """POST /console/sign-in: exchange a pasted key for a session cookie. After
    NOTIFIER_CONSOLE_SIGN_IN_ATTEMPTS failures from one client within a quarter of an hour, 429
    until the quarter is over."""
    wait = await _throttle(request)
    if wait:
        return await _too_many_sign_ins(request, wait)
    form = await form_of(request)
    expected = text_cookie(request, console_auth.SIGN_IN_COOKIE) or ""
    if not console_auth.same_token(expected, form.get("signin_token")):
        return await _sign_in_form(
            request, error="The sign-in form expired. Paste the key again.", status=403
        )
    try:
        session_id, _ = await console_auth.sign_in(pool_of(request), form.get("key", ""))
    except console_auth.SignInRefused as exc:
        await _throttle(request, failed=True)
        return await _sign_in_form(request, error=str(exc), status=401)
    response = web.HTTPSeeOther(_safe_next(form.get("next")))
    response.set_cookie(
        console_auth.SESSION_COOKIE, session_id, **_cookie_options(request, console_auth.SESSION_SECONDS)
    )
    response.del_cookie(console_auth.SIGN_IN_COOKIE, path="/console")
    raise response


async def _too_many_sign_ins(request: web.Request, wait: int) -> web.Response:
    minutes = max(1, round(wait / 60))
    response = await _sign_in_form(
        request, error=f"Too many failed sign-ins from here: try again in {minutes} minute(s).", status=429
    )
    response.headers["Retry-After"] = str(wait)
    return response


@page("newsletters")
async def sign_out(request: web.Request) -> web.Response:
    """POST /console/sign-out: end the session here and in the database."""
    await console_auth.sign_out(pool_of(request), session_of(request))
    response = redirect("/console/sign-in", "signed-out")
    response.del_cookie(console_auth.SESSION_COOKIE, path="/console")
    raise response


@page("newsletters")
async def home(request: web.Request) -> web.Response:
    """GET /console: an overview; operators see delivery figures, marketing its newsletters."""
    pool = pool_of(request)
    newsletters = await pool.fetch(Q.console_newsletters, 5)
    context: dict[str, Any] = {"newsletters": newsletters}
    if session_of(request).allows("admin"):
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


@page("admin")
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


@page("admin")
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


@page("admin")
async def mailbox_source(request: web.Request) -> web.Response:
    """GET /console/mailbox/{name}/source: the captured e-mail as it was sent, as plain text."""
    return web.Response(body=_captured_source(request), content_type="text/plain", charset="utf-8")


def setup(app: web.Application) -> None:
    """Mount the console at /console on `app`."""
    from notifier.console import (
        brand,
        complaints,
        deliverability,
        imports,
        members,
        newsletter_templates,
        webhooks,
    )
    from notifier.console import lists as console_lists
    from notifier.console import newsletters as console_newsletters

    console = web.Application(middlewares=[console_middleware])
    console.router.add_get("/", home)
    console.router.add_get("/sign-in", sign_in_page)
    console.router.add_post("/sign-in", sign_in)
    console.router.add_post("/sign-out", sign_out)
    console.router.add_get("/static/{name}", static)
    console.router.add_get("/mailbox", mailbox)
    console.router.add_get("/mailbox/{name}", mailbox_message)
    console.router.add_get("/mailbox/{name}/source", mailbox_source)
    console_newsletters.setup_routes(console)
    newsletter_templates.setup_routes(console)
    console_lists.setup_routes(console)
    members.setup_routes(console)
    imports.setup_routes(console)
    brand.setup_routes(console)
    deliverability.setup_routes(console)
    complaints.setup_routes(console)
    webhooks.setup_routes(console)
    app.router.add_get("/console", _to_home)
    app.add_subapp("/console", console)


async def _to_home(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/console/")
