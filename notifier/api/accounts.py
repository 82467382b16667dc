"""The `/v1/accounts...` routes (scope `accounts`): register, read, correct, erase, export and the
audit trail. Thin: they parse, call `notifier.accounts` and answer."""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from notifier.accounts import (
    ERASURE_REASONS,
    AccountPatch,
    NewAccount,
    account_id_of,
    correct,
    create_account,
    erase_account,
    export_account,
    find_account,
    public_account,
)
from notifier.answers import AuditEntry, AuditPage, Erasure, ErasureReceipt
from notifier.api.auth import api_key_of, requires
from notifier.api.idempotency import idempotent
from notifier.api.pagination import decode_cursor, next_cursor, page_limit
from notifier.api.problems import Problem, read_json
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.resources import POOL
from notifier.validation import EXTERNAL_ID, MAX_EXTERNAL_ID, parse


@requires("accounts")
async def register(request: web.Request) -> web.Response:
    """POST /v1/accounts: 201 with the account and its Location; 409 when the id is taken."""
    payload = await read_json(request)
    new = parse(NewAccount, payload)
    async with idempotent(request, payload) as idem:
        if idem.replayed:
            return idem.response
        row = await create_account(idem.conn, new, api_key_of(request).actor)
        idem.respond(
            201,
            public_account(row),
            headers={"Location": account_location(row["external_id"])},
            account_id=row["id"],
        )
    return idem.response


@requires("accounts")
async def read_account(request: web.Request) -> web.Response:
    """GET /v1/accounts/{external_id}."""
    row = await find_account(request.app[POOL], external_id_of(request))
    return json_response(200, public_account(row))


@requires("accounts")
async def correct_account(request: web.Request) -> web.Response:
    """PATCH /v1/accounts/{external_id}: correct e-mail, name, time zone or locale; audited."""
    patch = parse(AccountPatch, await read_json(request))
    async with request.app[POOL].acquire() as conn, conn.transaction():
        before = await find_account(conn, external_id_of(request), lock=True)
        after = await correct(conn, before, patch, api_key_of(request).actor)
    return json_response(200, public_account(after))


@requires("accounts")
async def delete_account(request: web.Request) -> web.Response:
    """DELETE /v1/accounts/{external_id}?reason=request|child|retention|other: erase at once."""
    reason = request.query.get("reason", "request")
    if reason not in ERASURE_REASONS:
        raise Problem(
            422,
            f"reason must be one of {', '.join(ERASURE_REASONS)}",
            errors=[{"field": "reason", "message": f"must be one of {', '.join(ERASURE_REASONS)}"}],
        )
    async with request.app[POOL].acquire() as conn, conn.transaction():
        account = await find_account(conn, external_id_of(request), lock=True)
        erasure = await erase_account(conn, account, reason, api_key_of(request).actor)
    receipt = ErasureReceipt(id=erasure["id"], reason=erasure["reason"], created_at=erasure["created_at"])
    return json_response(200, Erasure(erased=True, erasure=receipt))


@requires("accounts")
async def export(request: web.Request) -> web.Response:
    """GET /v1/accounts/{external_id}/export: everything held on the account."""
    async with (
        request.app[POOL].acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        account = await find_account(conn, external_id_of(request))
        document = await export_account(conn, account)
    return json_response(200, document)


@requires("accounts")
async def audit_trail(request: web.Request) -> web.Response:
    """GET /v1/accounts/{external_id}/audit: newest first, `?limit=`, `?cursor=`."""
    limit = page_limit(request)
    before = decode_cursor("audit", request.query.get("cursor"))
    pool = request.app[POOL]
    account_id = await account_id_of(pool, external_id_of(request))
    rows = await pool.fetch(Q.account_audit_page, account_id, before, limit + 1)
    entries = [AuditEntry.of_row(r) for r in rows[:limit]]
    return json_response(200, AuditPage(items=entries, next_cursor=next_cursor("audit", rows, limit)))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/accounts", register)
    app.router.add_get("/v1/accounts/{external_id}", read_account)
    app.router.add_patch("/v1/accounts/{external_id}", correct_account)
    app.router.add_delete("/v1/accounts/{external_id}", delete_account)
    app.router.add_get("/v1/accounts/{external_id}/export", export)
    app.router.add_get("/v1/accounts/{external_id}/audit", audit_trail)


def account_location(external_id: str) -> str:
    return f"/v1/accounts/{quote(external_id, safe='')}"


_EXTERNAL_ID = re.compile(EXTERNAL_ID)


def external_id_of(request: web.Request) -> str:
    """The `{external_id}` of the path; 404 when it could not name an account (bad characters,
    too long), without asking the database."""
    external_id = request.match_info["external_id"]
    if len(external_id) > MAX_EXTERNAL_ID or not _EXTERNAL_ID.fullmatch(external_id):
        raise Problem(404, "no account with that external_id")
    return external_id
