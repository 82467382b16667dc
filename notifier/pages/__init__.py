"""What the member-facing pages share: templates in the member's language, strict headers, CSRF
nonces, the Origin check and the e-mail a link came from.

A page speaks the language of the member it is about (their `locale`); a page about no one (an
invalid link) speaks what the browser's `Accept-Language` prefers, else English (notifier.i18n).

The pages are reached through signed links in e-mails and set no cookie. Forms are protected
against cross-site requests by a per-token nonce (an HMAC of the token and the time the form was
shown, checked on POST and valid for NONCE_SECONDS) and, when the browser sends one, an `Origin`
(or `Referer`) that must be this site.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from notifier import i18n, templating, tokens
from notifier.brand import Brand
from notifier.db import Q
from notifier.resources import BRAND, POOL, SETTINGS
from notifier.settings import Settings

NONCE_SECONDS = 4 * 3600

_ENVS = {
    locale: templating.environment(
        "pages", locale=locale, autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    for locale in i18n.LOCALES
}

# No script runs on these pages; styles are inline in the shared layout; forms post only here.
# Images come from this site and the brand's logo origin (checked to be a plain https host).
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'{logo}; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def render(
    request: web.Request,
    template: str,
    *,
    status: int = 200,
    locale: str | None = None,
    **context: Any,
) -> web.Response:
    """An HTML page from `templates/pages/` in the house style, never cached, with a strict
    Content-Security-Policy, in the language `i18n.choose` picks: the member's `locale` when
    given, else the browser's. `title` and `message`, when given, are English messages (marked
    with `i18n.N_`) translated here."""
    settings: Settings = request.app[SETTINGS]
    language = i18n.choose(locale, request.headers.get("Accept-Language"))
    for key in ("title", "message"):
        if isinstance(context.get(key), str):
            context[key] = i18n.gettext(language, context[key])
    cache = request.config_dict.get(BRAND)
    brand = cache.current if cache is not None else Brand.from_settings(settings)
    html = (
        _ENVS[language]
        .get_template(template)
        .render(postal_address=settings.postal_address, brand=brand, **context)
    )
    logo = f" {brand.logo_origin}" if brand.logo_origin else ""
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers={
            "Content-Language": language,
            # Without a member, the browser's languages chose it.
            **({"Vary": "Accept-Language"} if locale is None else {}),
            "Cache-Control": "no-store",
            "Content-Security-Policy": CSP.format(logo=logo),
            "X-Robots-Tag": "noindex, nofollow",
            # Not no-referrer: with it, browsers send `Origin: null` on the form's POST and the
            # origin check could not tell our own form from a forged one. Nothing leaves the site.
            "Referrer-Policy": "same-origin",
        },
    )


def not_found(request: web.Request) -> web.Response:
    """The page for a forged, altered or outdated link: 404, says what to do, never a 500."""
    return render(request, "invalid.html", status=404, title=i18n.N_("This link is not valid"))


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def read_form(request: web.Request) -> Mapping[str, Any] | None:
    """The posted form, or None when it is not a web form or cannot be parsed (a missing
    multipart boundary, bytes that are not text): the caller answers with a 4xx page."""
    if request.content_type not in FORM_TYPES:
        return None
    try:
        return await request.post()
    except (ValueError, UnicodeDecodeError, AssertionError, web.HTTPBadRequest):
        return None


async def signed_form(
    request: web.Request, purpose: tokens.Purpose, how: str
) -> tuple[tokens.Token, Mapping[str, Any]] | web.Response:
    """The genuine token of the path and the posted web form, or the page to answer with: 404 for
    a forged or altered token, 415 when the body is not a web form (`how` says how to send it),
    400 when the form cannot be read. Nothing is changed in any of those cases."""
    found = tokens.verify(request.app[SETTINGS].keyring, request.match_info["token"], purpose)
    if found is None:
        return not_found(request)
    if request.content_type not in FORM_TYPES:
        return render(
            request, "invalid.html", status=415, title=i18n.N_("Send the form as a web form"), how=how
        )
    form = await read_form(request)
    if form is None:
        return bad_form(request)
    return found, form


async def fresh_form(
    request: web.Request, purpose: tokens.Purpose, how: str, again: str
) -> tuple[tokens.Token, Mapping[str, Any]] | web.Response:
    """`signed_form`, and the form must also come from this site with a current nonce: else the
    403 page that offers to open `again` (the page the form was on). Nothing is changed then."""
    posted = await signed_form(request, purpose, how)
    if isinstance(posted, web.Response):
        return posted
    keyring = request.app[SETTINGS].keyring
    if not same_origin(request) or not nonce_valid(
        keyring, request.match_info["token"], str(posted[1].get("nonce", ""))
    ):
        return render(request, "expired.html", status=403, title=i18n.N_("Please try again"), again=again)
    return posted


def bad_form(request: web.Request) -> web.Response:
    """400 page for a POST that is not a readable web form."""
    return render(
        request,
        "invalid.html",
        status=400,
        title=i18n.N_("This request is not a web form"),
        message=i18n.N_("Nothing was changed: the form could not be read. Open the page again and resubmit."),
    )


# --- CSRF ------------------------------------------------------------------------------------


def _nonce_mac(secret: bytes, token: str, issued: int) -> str:
    message = f"form-nonce:{token}:{issued}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


def form_nonce(secret: bytes, token: str, now: float | None = None) -> str:
    """A nonce for a form shown for `token` now: `ISSUED.MAC`."""
    issued = int(now if now is not None else time.time())
    return f"{issued}.{_nonce_mac(secret, token, issued)}"


def nonce_valid(keys: bytes | Sequence[bytes], token: str, nonce: str, now: float | None = None) -> bool:
    """Whether `nonce` was made for `token` by this server within NONCE_SECONDS, under one of
    `keys` (the keyring: a form shown just before a key rotation still posts)."""
    issued_text, _, mac = nonce.partition(".")
    if not (issued_text.isascii() and issued_text.isdigit()) or len(issued_text) > 12 or not mac.isascii():
        return False
    issued = int(issued_text)
    current = now if now is not None else time.time()
    if not -60 <= current - issued <= NONCE_SECONDS:
        return False
    keyring = (keys,) if isinstance(keys, bytes) else keys
    return any(hmac.compare_digest(mac, _nonce_mac(key, token, issued)) for key in keyring)


def same_origin(request: web.Request) -> bool:
    """False when the browser says the form was posted from another site (Origin, else Referer).
    Requests without either (mail providers' one-click POSTs, old browsers) pass: the nonce and
    the signed token protect those."""
    settings: Settings = request.app[SETTINGS]
    allowed = {_origin(settings.public_url), _origin(str(request.url))}
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin in allowed
    referer = request.headers.get("Referer")
    if referer:
        return _origin(referer) in allowed
    return True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


# --- the e-mail a link came from ---------------------------------------------------------------


@dataclass(frozen=True)
class EmailRef:
    email_id: int | None = None
    newsletter_id: int | None = None

    def query(self) -> str:
        return f"?e={self.email_id}" if self.email_id else ""


async def email_ref(conn: asyncpg.Connection | asyncpg.Pool, account_id: int, raw: str | None) -> EmailRef:
    """The `?e=EMAIL_ID` of a link, if it names an e-mail sent to this account; otherwise empty.
    The id is not a secret: the signed token is what authorises, the id only says where from."""
    if not raw or not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        return EmailRef()
    row = await conn.fetchrow(Q.email_of_account, int(raw), account_id)
    if row is None:
        return EmailRef()
    return EmailRef(row["id"], row["newsletter_id"])


async def record_event(
    conn: asyncpg.Connection,
    kind: str,
    account_id: int,
    ref: EmailRef,
    method: str,
    detail: Mapping[str, Any],
) -> None:
    """Append an unsubscribe/resubscribe/preferences event naming the e-mail and newsletter."""
    await conn.execute(
        Q.insert_member_event,
        kind,
        account_id,
        ref.email_id,
        ref.newsletter_id,
        method,
        dict(detail),
    )


@dataclass(frozen=True)
class LinkedMember:
    """Who a signed link names, as a page's GET sees it."""

    token: str
    found: tokens.Token
    member: asyncpg.Record
    ref: EmailRef
    locale: str | None


async def linked_member(request: web.Request, purpose: tokens.Purpose) -> LinkedMember | None:
    """The member the link's `{token}` names for `purpose`, with the e-mail it came from; None
    (show `not_found`) when the token is not genuine or the member is gone."""
    token = request.match_info["token"]
    found = tokens.verify(request.app[SETTINGS].keyring, token, purpose)
    if found is None:
        return None
    pool = request.app[POOL]
    member = await pool.fetchrow(Q.member, found.account_id)
    if member is None:
        return None
    ref = await email_ref(pool, found.account_id, request.query.get("e"))
    return LinkedMember(token, found, member, ref, member["locale"])


async def member_locale(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> str | None:
    """The locale the member chose, or None when the member is gone (pages then ask the browser)."""
    locale: str | None = await conn.fetchval(Q.account_locale, account_id)
    return locale
