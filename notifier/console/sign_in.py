"""Console sign-in: people by a magic link (and OpenID Connect, `console.oidc`); an API key only
in development (NOTIFIER_CONSOLE_KEY_SIGN_IN). Sign-out, the user's sessions, sign-out everywhere.

Every way in ends in `finish_sign_in`, which opens the session and sets its cookie. Failed sign-ins
(a bad key, a spent or foreign link, a refused OpenID Connect answer) count against the client
address; after NOTIFIER_CONSOLE_SIGN_IN_ATTEMPTS within a quarter of an hour, 429.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from redis import exceptions as redis_exceptions

from notifier import queues, ratelimit, staff
from notifier.api.headers import text_cookie
from notifier.console import sessions as console_auth
from notifier.console.ui import (
    SESSION,
    form_of,
    pool_of,
    redirect,
    redis_of,
    render,
    session_of,
    settings_of,
)
from notifier.mail import outbox
from notifier.ratelimit import Window
from notifier.staff import Role

log = logging.getLogger("notifier.console")

# The nonce that binds a magic link to the browser that asked for it. SameSite=Lax: the link is
# opened from a mail client, a cross-site navigation that a Strict cookie would not follow.
LINK_COOKIE = "notifier_console_link"
LINK_WINDOW_SECONDS = 15 * 60


def cookie_options(request: web.Request, max_age: int | None, samesite: str = "Strict") -> dict[str, Any]:
    """The console's cookie flags: HttpOnly, Path=/console, Secure over https."""
    secure = settings_of(request).public_url.startswith("https://")
    options: dict[str, Any] = {"path": "/console", "httponly": True, "samesite": samesite, "secure": secure}
    if max_age is not None:
        options["max_age"] = max_age
    return options


def safe_next(value: str | None) -> str:
    """Only a console path may be the target after sign-in (no open redirect)."""
    if value and value.startswith("/console") and not value.startswith("//") and "\\" not in value:
        return value
    return "/console/"


async def sign_in_form(
    request: web.Request, *, error: str | None = None, status: int = 200, next_page: str | None = None
) -> web.Response:
    """The sign-in page: e-mail for a link, the OpenID Connect button, the key form in development."""
    settings = settings_of(request)
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "sign_in.html",
        status=status,
        error=error,
        signin_token=token,
        next=safe_next(next_page or request.query.get("next")),
        fresh="fresh" in request.query,
        oidc=settings.oidc_enabled,
        key_sign_in=settings.console_key_sign_in,
    )
    response.set_cookie(console_auth.SIGN_IN_COOKIE, token, **cookie_options(request, 600))
    return response


async def sign_in_page(request: web.Request) -> web.Response:
    """GET /console/sign-in: the sign-in page (or straight on when already signed in, unless a
    fresh sign-in is asked for)."""
    target = safe_next(request.query.get("next"))
    if request.get(SESSION) is not None and "fresh" not in request.query:
        raise web.HTTPSeeOther(target)
    if request.headers.get("Sec-Fetch-Site") == "cross-site" and "retry" not in request.query:
        # A link from another site: the SameSite=Strict cookie was withheld. One same-site hop
        # brings it along, so a signed-in operator lands on the page without signing in again.
        return render(
            request, "continue.html", target="/console/sign-in?" + urlencode({"next": target, "retry": "1"})
        )
    return await sign_in_form(request)


async def throttle(request: web.Request, failed: bool = False) -> int:
    """Seconds this client must wait before signing in again (0: go ahead); with `failed`, count a
    failed attempt first. Redis being away opens the door rather than lock operators out."""
    window = console_auth.sign_in_throttle(settings_of(request).console_sign_in_attempts)
    client = ratelimit.client_key(request.remote)
    try:
        if failed:
            await window.add(redis_of(request), client)
        return await window.used_up(redis_of(request), client)
    except (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError) as exc:
        log.warning("console sign-in throttle skipped: Redis unavailable (%s)", type(exc).__name__)
        return 0


async def too_many_sign_ins(request: web.Request, wait: int) -> web.Response:
    minutes = max(1, round(wait / 60))
    response = await sign_in_form(
        request, error=f"Too many failed sign-ins from here: try again in {minutes} minute(s).", status=429
    )
    response.headers["Retry-After"] = str(wait)
    return response


async def _checked_form(request: web.Request) -> dict[str, str] | web.Response:
    """The posted sign-in form when its double-submit token is right, else the form again (403)."""
    form = dict(await form_of(request))
    expected = text_cookie(request, console_auth.SIGN_IN_COOKIE) or ""
    if not console_auth.same_token(expected, form.get("signin_token")):
        return await sign_in_form(
            request, error="The sign-in form expired. Try again.", status=403, next_page=form.get("next")
        )
    return form


def finish_sign_in(request: web.Request, session_id: str, next_page: str | None) -> web.HTTPSeeOther:
    """The answer that sets the new session's cookie and goes on to `next_page`; the session this
    browser had before (a fresh sign-in) is replaced, not kept beside it."""
    response = web.HTTPSeeOther(safe_next(next_page))
    hours = settings_of(request).console_session_hours
    response.set_cookie(console_auth.SESSION_COOKIE, session_id, **cookie_options(request, hours * 3600))
    response.del_cookie(console_auth.SIGN_IN_COOKIE, path="/console")
    return response


async def _end_previous(request: web.Request) -> None:
    previous = request.get(SESSION)
    if previous is not None:
        await console_auth.sign_out(pool_of(request), previous)


async def sign_in_with_key(request: web.Request) -> web.Response:
    """POST /console/sign-in: development only (NOTIFIER_CONSOLE_KEY_SIGN_IN), exchange a pasted
    key for a session."""
    wait = await throttle(request)
    if wait:
        return await too_many_sign_ins(request, wait)
    form = await _checked_form(request)
    if isinstance(form, web.Response):
        return form
    try:
        session_id = await console_auth.sign_in_with_key(
            pool_of(request), settings_of(request), form.get("key", ""), request.headers.get("User-Agent", "")
        )
    except console_auth.SignInRefused as exc:
        await throttle(request, failed=True)
        return await sign_in_form(request, error=str(exc), status=401, next_page=form.get("next"))
    await _end_previous(request)
    raise finish_sign_in(request, session_id, form.get("next"))


def link_windows(request: web.Request) -> tuple[Window, Window]:
    """Magic links asked for per address and per client within a quarter of an hour."""
    settings = settings_of(request)
    return (
        Window("console-link-address", settings.console_link_per_address, LINK_WINDOW_SECONDS),
        Window("console-link-client", settings.console_link_per_client, LINK_WINDOW_SECONDS),
    )


async def ask_for_link(request: web.Request) -> web.Response:
    """POST /console/sign-in/link: e-mail a sign-in link to an invited or active user. The answer
    is the same whether or not the address may sign in; too many asks for one address or from one
    client within a quarter of an hour answer 429 (for any address, so that says nothing either)."""
    form = await _checked_form(request)
    if isinstance(form, web.Response):
        return form
    email = staff.normalise(form.get("email", ""))
    if "@" not in email or len(email) > 254:
        return await sign_in_form(
            request, error="Enter your e-mail address.", status=422, next_page=form.get("next")
        )
    per_address, per_client = link_windows(request)
    redis = redis_of(request)
    wait = await per_address.take(redis, ratelimit.client_key(email))
    if not wait:
        wait = await per_client.take(redis, ratelimit.client_key(request.remote))
    if wait:
        response = await sign_in_form(
            request,
            error=f"Too many sign-in links asked for: try again in {max(1, round(wait / 60))} minute(s).",
            status=429,
            next_page=form.get("next"),
        )
        response.headers["Retry-After"] = str(wait)
        return response
    nonce = text_cookie(request, LINK_COOKIE) or secrets.token_urlsafe(24)
    async with pool_of(request).acquire() as conn, conn.transaction():
        sent = await staff.send_link(
            conn, settings_of(request).public_url, email, nonce, safe_next(form.get("next"))
        )
    if sent:
        await outbox.ring(redis, queues.SERVICE)
    response = render(request, "link_sent.html", next=safe_next(form.get("next")))
    response.set_cookie(LINK_COOKIE, nonce, **cookie_options(request, LINK_WINDOW_SECONDS, samesite="Lax"))
    return response


async def link_page(request: web.Request) -> web.Response:
    """GET /console/sign-in/link?token=: a button that spends the link (a GET changes nothing, so
    a mail scanner that follows links does not use it up)."""
    token = request.query.get("token", "")
    return render(request, "link_use.html", token=token)


async def use_link(request: web.Request) -> web.Response:
    """POST /console/sign-in/link/use: spend the link in the browser that asked for it and sign
    in; a spent, expired or foreign link is refused (401, counted as a failed sign-in)."""
    wait = await throttle(request)
    if wait:
        return await too_many_sign_ins(request, wait)
    form = await form_of(request)
    pool = pool_of(request)
    user = await staff.use_link(pool, form.get("token", ""), text_cookie(request, LINK_COOKIE) or "")
    if user is None:
        await throttle(request, failed=True)
        return await sign_in_form(
            request,
            error="This sign-in link is not valid: it was used already, is older than 15 minutes, or was "
            "asked for in another browser. Ask for a new one here.",
            status=401,
        )
    response = await open_user_session(request, user, "link", safe_next(user["next_path"]))
    response.del_cookie(LINK_COOKIE, path="/console")
    raise response


async def open_user_session(
    request: web.Request, user: Any, method: console_auth.Method, next_page: str | None
) -> web.HTTPSeeOther:
    """Sign `user` (a console_users row) in: the session, the user's sign-in time, the cookie."""
    pool = pool_of(request)
    role: Role = user["role"]
    session_id = await console_auth.open_session(
        pool,
        settings_of(request),
        role=role,
        method=method,
        user_id=user["id"],
        user_agent=request.headers.get("User-Agent", ""),
    )
    await staff.signed_in(pool, user["id"])
    await _end_previous(request)
    return finish_sign_in(request, session_id, next_page)


async def sign_out(request: web.Request) -> web.Response:
    """POST /console/sign-out: end the session here and in the database."""
    await console_auth.sign_out(pool_of(request), session_of(request))
    response = redirect("/console/sign-in", "signed-out")
    response.del_cookie(console_auth.SESSION_COOKIE, path="/console")
    raise response


async def my_sessions(request: web.Request) -> web.Response:
    """GET /console/sessions: the signed-in person's sessions, this one marked."""
    session = session_of(request)
    rows = await console_auth.of_user(pool_of(request), session)
    return render(request, "sessions.html", sessions=rows, current=session.id_hash)


async def sign_out_everywhere(request: web.Request) -> web.Response:
    """POST /console/sessions/sign-out-everywhere: end every session of this person."""
    await console_auth.sign_out_everywhere(pool_of(request), session_of(request))
    response = redirect("/console/sign-in", "signed-out-everywhere")
    response.del_cookie(console_auth.SESSION_COOKIE, path="/console")
    raise response
