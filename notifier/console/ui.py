"""What every console page shares: the template environment, the middleware that checks the
session, the role each route declares (the ROUTES table of `console.app`) and CSRF, rendering,
redirects and error pages.

The console is an aiohttp sub-application mounted at `/console`; resources of the main app are
read through `request.config_dict` (POOL, REDIS, SETTINGS).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import jinja2
from aiohttp import web
from aiohttp.web_request import FileField
from arq import ArqRedis
from multidict import MultiDictProxy
from redis import exceptions as redis_exceptions

from notifier import templating
from notifier.api.headers import text_cookie
from notifier.api.problems import Handler, Problem, status_title
from notifier.console import sessions
from notifier.console.sessions import Access, ConsoleSession
from notifier.resources import POOL, REDIS, SETTINGS
from notifier.settings import Settings

log = logging.getLogger("notifier.console")

STATIC_DIR = templating.STATIC_DIR / "console"

SESSION = web.RequestKey("console_session", ConsoleSession)
# The access each route of the console declares, filled from `console.app.ROUTES` at set-up.
ROUTE_ACCESS = web.AppKey("console_route_access", dict[web.AbstractRoute, Access])

# Pages may be framed by nothing; scripts and styles only from the app; images in newsletters may
# come from anywhere over http(s). The preview iframe is sandboxed without scripts.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: https: http:; frame-src 'self'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'; object-src 'none'"
)

# Short notices shown after a redirect (`?notice=code`), so no free text is reflected from a URL.
NOTICES = {
    "signed-out": "You are signed out.",
    "saved": "Saved.",
    "created": "Draft created.",
    "template-deleted": "Template deleted; drafts started from it are unchanged.",
    "test-sent": "Test e-mail queued.",
    "scheduled": "Newsletter scheduled.",
    "sending": "Sending has started.",
    "cancelled": "Newsletter cancelled.",
    "unscheduled": "Schedule removed; the newsletter is a draft again.",
    "erased": "The member was erased. Only a hash of the address remains on the suppression list.",
    "suppressed": "Address added to the suppression list.",
    "already-suppressed": "That address was already on that list.",
    "unsuppressed": "Suppression removed.",
    "not-suppressed": "That entry was already gone.",
    "redriven": "Failed e-mails queued again.",
    "link-sent": "If that address may use the console, a sign-in link is on its way. It works for "
    "15 minutes, once, in this browser.",
    "invited": "Invitation sent.",
    "user-changed": "User changed; their sessions have ended.",
    "signed-out-everywhere": "All your sessions have ended.",
    "approved": "Newsletter approved.",
    "nothing-redriven": "Nothing to re-drive: those e-mails are no longer failed.",
    "list-created": "List created.",
    "list-archived": "List archived.",
    "audience-saved": "Audience saved.",
}

# Over `templates/` itself: the console's templates name theirs as `console/...`.
_ENV = templating.environment(
    "",
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)


def _when(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime(fmt) + " UTC"


def _number(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}"


_ENV.filters["when"] = _when
_ENV.filters["number"] = _number
_ENV.filters["hexhash"] = lambda value: bytes(value).hex()


def session_of(request: web.Request) -> ConsoleSession:
    return request[SESSION]


def pool_of(request: web.Request) -> asyncpg.Pool:
    return request.config_dict[POOL]


def redis_of(request: web.Request) -> ArqRedis:
    return request.config_dict[REDIS]


def settings_of(request: web.Request) -> Settings:
    return request.config_dict[SETTINGS]


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    """Render `templates/console/<template>` inside the console layout."""
    session = request.get(SESSION)
    settings = settings_of(request)
    notice = NOTICES.get(request.query.get("notice", ""))
    text = _ENV.get_template(f"console/{template}").render(
        session=session,
        csrf=session.csrf_token if session else "",
        capture_mail=settings.capture_mail,
        path=request.path,
        notice=notice,
        **context,
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def redirect(location: str, notice: str | None = None, **query: str) -> web.HTTPSeeOther:
    """A 303 to a console page after a POST, optionally with a notice code."""
    params = dict(query)
    if notice:
        params["notice"] = notice
    return web.HTTPSeeOther(location + ("?" + urlencode(params) if params else ""))


def error_page(request: web.Request, status: int, detail: str) -> web.Response:
    title = status_title(status) if status in HTTPStatus._value2member_map_ else "Error"
    return render(request, "error.html", status=status, title=title, detail=detail, status_code=status)


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def posted(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | FileField]:
    """The posted form; 400 when it cannot be read (no multipart boundary, bytes that are not
    text, a NUL character) so that bad input never reaches the database."""
    if request.content_type not in FORM_TYPES:
        raise web.HTTPBadRequest(text="Send the form as a web form.")
    try:
        data = await request.post()
    except (ValueError, UnicodeDecodeError, AssertionError):
        raise web.HTTPBadRequest(text="The form could not be read.") from None
    if any(isinstance(v, str) and "\x00" in v for v in data.values()):
        raise web.HTTPBadRequest(text="The form contains a NUL character.")
    return data


async def form_of(request: web.Request) -> Mapping[str, str]:
    """The submitted form's text fields (files are ignored); 400 when unreadable."""
    data = await posted(request)
    return {k: v for k, v in data.items() if isinstance(v, str)}


def number(raw: str | None) -> int | None:
    """An id from a URL or form: ASCII digits that fit in a bigint, else None."""
    if raw and raw.isascii() and raw.isdigit() and len(raw) < 19:
        return int(raw)
    return None


# A backing service that is away: the page says so (503) instead of a 500.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def _secure_headers(response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers.setdefault("Cache-Control", "no-store")


def route_access(request: web.Request) -> Access | None:
    """The access the matched route declares; None for a route missing from the table (refused)."""
    return request.app[ROUTE_ACCESS].get(request.match_info.route)


async def _check_access(request: web.Request) -> None:
    """Refuse the request unless its route's declared access allows it: sign in first (303 to the
    sign-in page), the CSRF token of the session on every POST (403), then the role (403)."""
    if request.match_info.http_exception is not None:
        return  # 404 / 405: nothing to protect
    access = route_access(request)
    if access is None:
        raise web.HTTPForbidden(
            text="This page declares no role (console.app.ROUTES), so nobody may open it."
        )
    session = await sessions.load(
        pool_of(request), settings_of(request), text_cookie(request, sessions.SESSION_COOKIE)
    )
    if session is not None:
        request[SESSION] = session
    if access == "public":
        return
    if session is None:
        target = request.path_qs if request.method == "GET" else "/console/"
        raise web.HTTPSeeOther("/console/sign-in?" + urlencode({"next": target}))
    if request.method == "POST":
        form = await form_of(request)
        if not sessions.same_token(session.csrf_token, form.get("csrf")):
            raise web.HTTPForbidden(
                text="The form's security token is missing or out of date. "
                "Go back, reload the page and submit it again."
            )
    if not session.allows(access):
        raise web.HTTPForbidden(text=f"Your role ({session.role}) does not give access to this page.")


def require_fresh(request: web.Request, back_to: str) -> None:
    """For dangerous actions: refuse (403 page with a link to sign in again and come back to
    `back_to`) unless the session signed in within NOTIFIER_CONSOLE_FRESH_MINUTES."""
    settings = settings_of(request)
    if session_of(request).fresh(settings):
        return
    raise FreshSignInNeeded(back_to, settings.console_fresh_minutes)


class FreshSignInNeeded(Exception):
    def __init__(self, back_to: str, minutes: int) -> None:
        super().__init__(back_to)
        self.back_to = back_to
        self.minutes = minutes


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session, role and CSRF checks for every route by its declared access; errors as HTML pages."""
    try:
        if "\x00" in request.path or "\x00" in request.query_string or "%00" in request.raw_path:
            raise web.HTTPBadRequest(text="The address contains a NUL character.")
        await _check_access(request)
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        response = error_page(request, exc.status, detail)
    except FreshSignInNeeded as exc:
        response = render(
            request,
            "fresh.html",
            status=403,
            minutes=exc.minutes,
            target="/console/sign-in?" + urlencode({"next": exc.back_to, "fresh": "1"}),
        )
    except Problem as exc:
        response = error_page(request, exc.status, exc.detail)
    except UNAVAILABLE as exc:
        log.warning(
            "console: service unavailable on %s %s: %s", request.method, request.path, type(exc).__name__
        )
        response = error_page(request, 503, "The database or Redis is not answering. Try again in a moment.")
        response.headers["Retry-After"] = "5"
    except Exception:
        log.exception("console error on %s %s", request.method, request.path)
        response = error_page(request, 500, "Something went wrong on our side; it has been logged.")
    _secure_headers(response)
    return response


def member_url(external_id: str) -> str:
    return "/console/members/" + quote(external_id, safe="")


_ENV.globals["member_url"] = member_url
