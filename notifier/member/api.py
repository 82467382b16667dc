"""The member API, `/member/v1/...`, for the `<notifier-inbox>` component and an organisation's own
front end; and `POST /v1/accounts/{external_id}/inbox-token`, which gives the organisation's
backend a member token. Every member route acts on the token's member only: another member's
message is a 404, exactly like one that does not exist.

Routes (token as `Authorization: Bearer`):
- `GET /member/v1/messages` (`unread`, `archived` true|false|include, `category`, `limit`, `cursor`)
  → `{items, next_cursor}`, newest first.
- `GET /member/v1/counts` → `{unread, unseen, by_category}`.
- `POST /member/v1/messages/{id}/read|unread|archive|unarchive` → the message.
- `POST /member/v1/read-all` (`?category=`) → `{marked_read}`; `POST /member/v1/seen` → `{marked_seen}`.
- `GET` / `PUT /member/v1/preferences`: as the API's preferences, audit actor `member`.
- `GET /member/v1/stream`: Server-Sent Events (notifier.member.stream).

CORS (aiohttp-cors) answers only the origins of NOTIFIER_INBOX_ORIGINS; no cookies are used.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp_cors
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from notifier import audit, consent, i18n, inbox, inbox_rings, preferences
from notifier.accounts import account_id_of
from notifier.api.accounts import external_id_of
from notifier.api.auth import requires
from notifier.api.messages import query_category, query_flag
from notifier.api.pagination import decode_cursor, encode_cursor, page_limit
from notifier.api.problems import Problem, parse_json, parse_model, path_id, read_body
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.member import stream, tokens
from notifier.member.auth import INBOX_SECRET, check_registered, claims_of, member_of
from notifier.resources import POOL, REDIS, SETTINGS
from notifier.templating import STATIC_DIR

# Changes a member makes are recorded as theirs, made through the inbox.
ACTOR = audit.Actor("member", "inbox")
SOURCE = "inbox"
_CURSOR = "member"
_ARCHIVED: dict[str, inbox.Archived] = {
    "false": "exclude",
    "true": "only",
    "only": "only",
    "include": "include",
    "exclude": "exclude",
}


def _archived(request: web.Request) -> inbox.Archived:
    raw = request.query.get("archived", "false").lower()
    if raw not in _ARCHIVED:
        raise Problem(
            422,
            "archived must be true, false or include",
            errors=[{"field": "archived", "message": "must be true, false or include"}],
        )
    return _ARCHIVED[raw]


async def list_messages(request: web.Request) -> web.Response:
    """GET /member/v1/messages: a page of the member's inbox, newest first; the token's account is
    resolved by the page's own statement (one round trip)."""
    claims = claims_of(request)
    limit = page_limit(request)
    before = decode_cursor(_CURSOR, request.query.get("cursor"))
    page = await inbox.member_page(
        request.app[POOL],
        claims.external_id,
        before=before,
        unread=query_flag(request, "unread"),
        category=query_category(request),
        archived=_archived(request),
        limit=limit,
    )
    check_registered(claims, page.registered_at if page is not None else None)
    assert page is not None
    next_cursor = encode_cursor(_CURSOR, page.next_before) if page.next_before is not None else None
    return json_response(
        200, {"items": [inbox.member_item(r) for r in page.rows], "next_cursor": next_cursor}
    )


async def counts(request: web.Request) -> web.Response:
    """GET /member/v1/counts."""
    member = await member_of(request)
    return json_response(200, await inbox.member_counts(request.app[POOL], member.account_id))


async def _mark(request: web.Request, action: inbox.MemberAction) -> web.Response:
    member = await member_of(request)
    message_id = path_id(request, "message in your inbox")
    row = await inbox.member_mark(request.app[POOL], member.account_id, message_id, action)
    if row is None:
        raise Problem(404, f"no message {message_id} in your inbox")
    await inbox_rings.announce_changed(request.app[REDIS], member.account_id)
    return json_response(200, inbox.member_item(row))


async def mark_read(request: web.Request) -> web.Response:
    """POST /member/v1/messages/{id}/read: idempotent; a read message leaves the next digest."""
    return await _mark(request, "read")


async def mark_unread(request: web.Request) -> web.Response:
    """POST /member/v1/messages/{id}/unread."""
    return await _mark(request, "unread")


async def archive(request: web.Request) -> web.Response:
    """POST /member/v1/messages/{id}/archive: idempotent."""
    return await _mark(request, "archive")


async def unarchive(request: web.Request) -> web.Response:
    """POST /member/v1/messages/{id}/unarchive."""
    return await _mark(request, "unarchive")


async def read_all(request: web.Request) -> web.Response:
    """POST /member/v1/read-all (`?category=`): every unread message read."""
    member = await member_of(request)
    marked = await inbox.member_read_all(request.app[POOL], member.account_id, query_category(request))
    await inbox_rings.announce_changed(request.app[REDIS], member.account_id)
    return json_response(200, {"marked_read": marked})


async def seen(request: web.Request) -> web.Response:
    """POST /member/v1/seen: the member opened the bell; the unseen count drops to 0."""
    member = await member_of(request)
    marked = await inbox.member_seen(request.app[POOL], member.account_id)
    if marked:
        await inbox_rings.announce_changed(request.app[REDIS], member.account_id)
    return json_response(200, {"marked_seen": marked})


async def get_preferences(request: web.Request) -> web.Response:
    """GET /member/v1/preferences: as `GET /v1/accounts/{external_id}/preferences`."""
    member = await member_of(request)
    row = await request.app[POOL].fetchrow(Q.preferences_by_external_id, member.external_id)
    if row is None:  # erased since the token was checked
        raise Problem(401, "the member token is not valid: get a new one")
    return json_response(200, await preferences.document(request.app[POOL], member.account_id, row))


async def put_preferences(request: web.Request) -> web.Response:
    """PUT /member/v1/preferences: the API's rules (422 names bad fields), audit actor `member`,
    newsletter consent recorded with source `inbox` and the wording of the consent text."""
    member = await member_of(request)
    body = parse_json(await read_body(request))
    if not isinstance(body, dict):
        raise preferences.InvalidPreferences([{"field": "body", "message": "must be a JSON object"}])
    async with request.app[POOL].acquire() as conn:
        try:
            prefs = await preferences.apply_preferences(
                conn,
                member.account_id,
                body,
                ACTOR,
                SOURCE,
                wording=consent.WORDING,
                wording_version=consent.WORDING_VERSION,
            )
        except preferences.AccountNotFound:
            raise Problem(401, "the member token is not valid: get a new one") from None
        return json_response(200, await preferences.document(conn, member.account_id, prefs))


# --- tokens for the organisation's backend ----------------------------------------------------


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_seconds: StrictInt = Field(default=tokens.DEFAULT_TTL, ge=tokens.MIN_TTL, le=tokens.MAX_TTL)


@requires("accounts")
async def issue_token(request: web.Request) -> web.Response:
    """POST /v1/accounts/{external_id}/inbox-token (`{"ttl_seconds": 60..86400}`, default 3600):
    201 `{token, expires_at}`; 404 for an unknown account."""
    raw = await read_body(request) if request.body_exists else b""  # no body: the defaults
    wanted = parse_model(TokenRequest, parse_json(raw) if raw.strip() else {})
    external_id = external_id_of(request)
    await account_id_of(request.app[POOL], external_id)  # 404 naming the account
    now = int(time.time())
    expires = now + wanted.ttl_seconds
    token = tokens.mint(request.app[INBOX_SECRET], external_id, expires, issued=now)
    return json_response(
        201,
        {"token": token, "expires_at": datetime.fromtimestamp(expires, UTC).isoformat()},
        {"Cache-Control": "no-store"},
    )


# --- the component's script ---------------------------------------------------------------------

COMPONENT = STATIC_DIR / "inbox.js"
_SCRIPT = web.AppKey("inbox_script", bytes)


async def component(request: web.Request) -> web.Response:
    """GET /static/inbox.js: the `<notifier-inbox>` custom element with its words in every shipped
    language (read and filled in once per process)."""
    body = request.app[_SCRIPT]
    etag = hashlib.sha256(body).hexdigest()[:32]
    if request.headers.get("If-None-Match") == f'"{etag}"':
        return web.Response(status=304, headers={"ETag": f'"{etag}"'})
    return web.Response(
        body=body,
        content_type="text/javascript",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=300", "ETag": f'"{etag}"'},
    )


# --- wiring -------------------------------------------------------------------------------------

MEMBER_ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/member/v1/messages", list_messages),
    ("GET", "/member/v1/counts", counts),
    ("POST", r"/member/v1/messages/{id:\d+}/read", mark_read),
    ("POST", r"/member/v1/messages/{id:\d+}/unread", mark_unread),
    ("POST", r"/member/v1/messages/{id:\d+}/archive", archive),
    ("POST", r"/member/v1/messages/{id:\d+}/unarchive", unarchive),
    ("POST", "/member/v1/read-all", read_all),
    ("POST", "/member/v1/seen", seen),
    ("GET", "/member/v1/preferences", get_preferences),
    ("PUT", "/member/v1/preferences", put_preferences),
    ("GET", "/member/v1/stream", stream.stream),
)


def setup(app: web.Application) -> None:
    """Add the member API, its event stream, the token route and CORS for the inbox origins."""
    settings = app[SETTINGS]
    app[INBOX_SECRET] = tokens.inbox_secret(settings.secret)
    app[_SCRIPT] = i18n.component_script(COMPONENT.read_text(encoding="utf-8")).encode()
    app.router.add_get("/static/inbox.js", component)
    app.router.add_post("/v1/accounts/{external_id}/inbox-token", issue_token)
    stream.setup(app)
    resources: dict[str, web.Resource] = {}
    for method, path, handler in MEMBER_ROUTES:
        resource = resources.get(path) or app.router.add_resource(path)
        resources[path] = resource
        resource.add_route(method, handler)
    origins = settings.inbox_origin_list
    if not origins:
        return  # no origin may call the member API from a browser page: no CORS headers at all
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,
        expose_headers=("Content-Type", "Retry-After", "WWW-Authenticate"),
        allow_headers=("Authorization", "Content-Type", "Last-Event-ID"),
        allow_methods=("GET", "POST", "PUT"),
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults={})
    for resource in resources.values():
        cors.add(resource, dict.fromkeys(origins, options))
