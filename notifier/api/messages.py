"""The inbox's `/v1` routes (all need an API key with the `messages` scope):
- `POST /v1/accounts/{external_id}/messages` one message; 201. Honours `Idempotency-Key`.
- `POST /v1/messages` up to `MAX_BATCH` messages for many accounts; answers per item: 201 when all
  were accepted, 207 when any was not (each result has `index`, `status` 201/404/422 and `id` or
  `errors`). Valid items are inserted in one statement. Honours `Idempotency-Key`.
- `GET /v1/accounts/{external_id}/messages` newest first, keyset-paginated (`?cursor=`, `?limit=`),
  `?unread=true`, `?category=`, `?archived=exclude|include|only` (default exclude).
- `GET /v1/accounts/{external_id}/messages/unread-counts` unread counts per category.
- `GET /v1/accounts/{external_id}/messages/{id}`, `POST .../{id}/read`, `.../{id}/unread`,
  `.../{id}/archive`, `POST .../messages/read-all` (`?category=`, `?up_to=` id).
What a message is and what happens once it is stored: notifier/inbox.py.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ValidationError

from notifier import inbox, inbox_rings
from notifier.accounts import account_id_of
from notifier.answers import (
    BatchAnswer,
    BatchResult,
    InboxPage,
    MarkedRead,
    Message,
    UnreadCounts,
    utc_isoformat,
)
from notifier.api.accounts import external_id_of
from notifier.api.auth import requires
from notifier.api.idempotency import HEADER, idempotent
from notifier.api.pagination import decode_cursor, encode_cursor, page_limit
from notifier.api.problems import Problem, parse_json, path_id, read_body
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.inbox import (
    MAX_BATCH,
    Archived,
    BatchItem,
    CreatedMessage,
    NewMessage,
    parse_valid_batch,
    validate_batch,
)
from notifier.resources import POOL, REDIS, SETTINGS
from notifier.validation import Category, parse

# Intake waits its turn for the database in a FIFO line. asyncpg's pool gives a released connection
# to whichever request asks first, and a waiter that loses that race goes back to the end of the
# line (asyncio.Queue): at 64 connections on a pool of 10, p50 was 15 ms and p99 55 to 70 ms. A fair
# semaphore lets at most 1.5 times the pool size ask the pool; they can overtake only each other.
INTAKE_GATE = web.AppKey("intake_gate", asyncio.Semaphore)

GATE_PER_CONNECTION = 1.5


_STORED_FIELDS = ("id", "category", "subject", "body", "url", "data")  # the answer's first fields


def _new_message(row: asyncpg.Record) -> dict[str, Any]:
    """The `Message` answer of a message just inserted (no read or archive time yet), as the dict
    that `to_json` encodes to the same bytes as `Message.of_row(row, read_at=None,
    archived_at=None)` (a test holds them equal): every single-message intake answers with one, and
    the model's validation cost twice the rest of the answer (13 against 4.5 µs, timeit)."""
    answer = {name: row[name] for name in _STORED_FIELDS}
    answer["created_at"] = utc_isoformat(row["created_at"])
    answer["read_at"] = answer["archived_at"] = None
    return answer


def _message_location(external_id: str, message_id: int) -> str:
    return f"/v1/accounts/{quote(external_id, safe='')}/messages/{message_id}"


def _no_account(external_id: str) -> Problem:
    return Problem(404, f"no account with external_id {external_id!r}")


@requires("messages")
async def post_message(request: web.Request) -> web.Response:
    """POST /v1/accounts/{external_id}/messages: 201 with the message; 404 for an unknown account."""
    external_id = external_id_of(request)
    raw = await read_body(request)
    try:  # the common, valid case: pydantic parses the bytes itself, no json.loads dict between
        new = NewMessage.model_validate_json(raw)
    except ValidationError:  # not JSON, or invalid: the general path words the 400 / 422
        new = parse(NewMessage, parse_json(raw))
    args = (external_id, new.category, new.subject, new.body, new.url, new.data)
    if HEADER not in request.headers:
        # The common case costs one statement: resolve the account and insert together.
        try:
            async with request.app[INTAKE_GATE]:
                row = await request.app[POOL].fetchrow(Q.insert_message, *args)
        except asyncpg.ForeignKeyViolationError:  # erased between the lookup and the insert
            row = None
        if row is None:
            raise _no_account(external_id)
        response = json_response(
            201, _new_message(row), {"Location": _message_location(external_id, row["id"])}
        )
    else:
        async with request.app[INTAKE_GATE], idempotent(request, parse_json(raw)) as idem:
            if idem.replayed:
                return idem.response
            try:
                row = await idem.conn.fetchrow(Q.insert_message, *args)
            except asyncpg.ForeignKeyViolationError:
                row = None
            if row is None:
                raise _no_account(external_id)
            response = idem.respond(
                201,
                _new_message(row),
                headers={"Location": _message_location(external_id, row["id"])},
                account_id=row["account_id"],
            )
    await inbox.messages_created(
        request.app[POOL],
        request.app[REDIS],
        request.app[SETTINGS],
        [
            CreatedMessage(
                row["id"],
                row["account_id"],
                row["maybe_immediate"],
                inbox.new_member_item(row),
                row["category"],
            )
        ],
    )
    return response


def _batch_items(payload: Any) -> list[Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
        raise Problem(
            422,
            'send {"messages": [...]}',
            errors=[{"field": "messages", "message": "must be a list of messages"}],
        )
    unknown = sorted(set(payload) - {"messages"})
    if unknown:
        raise Problem(
            422,
            "the request body is not valid",
            errors=[{"field": name, "message": "Extra inputs are not permitted"} for name in unknown],
        )
    items: list[Any] = payload["messages"]
    if not items:
        raise Problem(
            422, "the batch is empty", errors=[{"field": "messages", "message": "must hold at least one"}]
        )
    if len(items) > MAX_BATCH:
        raise Problem(
            413,
            f"a batch holds at most {MAX_BATCH} messages; this one has {len(items)}: split it",
            errors=[{"field": "messages", "message": f"at most {MAX_BATCH} items"}],
        )
    return items


def _batch_answer(
    size: int,
    valid: list[tuple[int, BatchItem]],
    results: list[BatchResult | None],
    rows: list[asyncpg.Record],
) -> tuple[int, BatchAnswer]:
    for row in rows:
        index = valid[row["ord"] - 1][0]
        results[index] = {"index": index, "status": 201, "id": row["id"]}
    for i, message in valid:
        if results[i] is None:
            results[i] = {
                "index": i,
                "status": 404,
                "errors": [
                    {"field": "account", "message": f"no account with external_id {message['account']!r}"}
                ],
            }
    accepted = len(rows)
    answered = [r for r in results if r is not None]
    assert len(answered) == size, "every item of a batch is answered"
    body: BatchAnswer = {"accepted": accepted, "rejected": size - accepted, "results": answered}
    return (201 if accepted == size else 207), body


@requires("messages")
async def post_batch(request: web.Request) -> web.Response:
    """POST /v1/messages: up to MAX_BATCH messages; 201 all accepted, 207 some not (per item)."""
    raw = await read_body(request, max_bytes=request.app[SETTINGS].max_batch_body_bytes)
    fast = parse_valid_batch(raw)
    payload: Any = None
    if fast is not None:  # the common case: every item valid, checked in one pass over the bytes
        size, valid = len(fast), list(enumerate(fast))
        results: list[BatchResult | None] = [None] * size
    else:  # the general path words each 400 / 413 / 422 and checks item by item
        payload = parse_json(raw)
        items = _batch_items(payload)
        size = len(items)
        results = [None] * size
        valid, invalid = validate_batch(items)
        for i, errors in invalid.items():
            results[i] = {"index": i, "status": 422, "errors": errors}
    if HEADER not in request.headers:
        async with request.app[INTAKE_GATE]:
            rows = await inbox.insert_batch(request.app[POOL], valid, in_transaction=False)
        status, body = _batch_answer(size, valid, results, rows)
        response = json_response(status, body)
    else:
        if payload is None:
            payload = parse_json(raw)
        async with request.app[INTAKE_GATE], idempotent(request, payload) as idem:
            if idem.replayed:
                return idem.response
            rows = await inbox.insert_batch(idem.conn, valid, in_transaction=True)
            status, body = _batch_answer(size, valid, results, rows)
            response = idem.respond(status, body)
    if rows:
        created = [CreatedMessage(r["id"], r["account_id"], r["maybe_immediate"]) for r in rows]
        await inbox.messages_created(request.app[POOL], request.app[REDIS], request.app[SETTINGS], created)
    return response


def query_flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise Problem(
            422, f"{name} must be true or false", errors=[{"field": name, "message": "must be true or false"}]
        )
    return raw in ("true", "1")


def query_category(request: web.Request) -> str | None:
    category = request.query.get("category")
    if category is None:
        return None
    try:
        return parse(_CategoryQuery, {"category": category}).category
    except Problem as exc:
        raise Problem(422, "category is not valid", errors=exc.errors) from None


class _CategoryQuery(BaseModel):
    category: Category


def _archived(request: web.Request) -> Archived:
    raw = request.query.get("archived", "exclude")
    if raw not in ("exclude", "include", "only"):
        raise Problem(
            422,
            "archived must be exclude, include or only",
            errors=[{"field": "archived", "message": "must be exclude, include or only"}],
        )
    return raw  # type: ignore[return-value]


@requires("messages")
async def list_inbox(request: web.Request) -> web.Response:
    """GET /v1/accounts/{external_id}/messages: a page of the inbox, newest first."""
    limit = page_limit(request)
    before = decode_cursor("inbox", request.query.get("cursor"))
    unread, category, archived = query_flag(request, "unread"), query_category(request), _archived(request)
    external_id = external_id_of(request)
    page = await inbox.member_page(
        request.app[POOL],
        external_id,
        before=before,
        unread=unread,
        category=category,
        archived=archived,
        limit=limit,
    )
    if page is None:
        raise _no_account(external_id)
    cursor = encode_cursor("inbox", page.next_before) if page.next_before is not None else None
    return json_response(200, InboxPage(items=[Message.of_row(r) for r in page.rows], next_cursor=cursor))


@requires("messages")
async def unread_counts(request: web.Request) -> web.Response:
    """GET /v1/accounts/{external_id}/messages/unread-counts: `{total, categories: {name: n}}`."""
    pool = request.app[POOL]
    account_id = await account_id_of(pool, external_id_of(request))
    rows = await pool.fetch(Q.unread_counts, account_id)
    categories = {r["category"]: r["unread"] for r in rows}
    return json_response(200, UnreadCounts(total=sum(categories.values()), categories=categories))


async def _one(request: web.Request, query: str, *, changes: bool = False) -> web.Response:
    """One message of the path's account, read or changed by `query`; open inboxes of the member
    hear of a change (`inbox_rings.announce_changed`), as when the member changes it."""
    external_id = external_id_of(request)
    message_id = path_id(request, "message")
    row = await request.app[POOL].fetchrow(query, external_id, message_id)
    if row is None:
        await account_id_of(request.app[POOL], external_id)  # 404 naming the account if it is that
        raise Problem(404, f"no message {message_id} in the inbox of {external_id!r}")
    if changes:
        await inbox_rings.announce_changed(request.app[REDIS], row["account_id"])
    return json_response(200, Message.of_row(row))


@requires("messages")
async def get_message(request: web.Request) -> web.Response:
    """GET /v1/accounts/{external_id}/messages/{id}."""
    return await _one(request, Q.get_inbox_message)


@requires("messages")
async def mark_read(request: web.Request) -> web.Response:
    """POST .../messages/{id}/read: idempotent, keeps the first read time."""
    return await _one(request, Q.mark_message_read, changes=True)


@requires("messages")
async def mark_unread(request: web.Request) -> web.Response:
    """POST .../messages/{id}/unread."""
    return await _one(request, Q.mark_message_unread, changes=True)


@requires("messages")
async def archive(request: web.Request) -> web.Response:
    """POST .../messages/{id}/archive: idempotent; archived messages leave listings and digests."""
    return await _one(request, Q.archive_message, changes=True)


@requires("messages")
async def mark_all_read(request: web.Request) -> web.Response:
    """POST .../messages/read-all: every unread message (`?category=`, up to `?up_to=` id)."""
    category = query_category(request)
    raw_up_to = request.query.get("up_to")
    if raw_up_to is not None and (not (raw_up_to.isascii() and raw_up_to.isdigit()) or len(raw_up_to) > 18):
        raise Problem(
            422, "up_to must be a message id", errors=[{"field": "up_to", "message": "must be a message id"}]
        )
    up_to = int(raw_up_to) if raw_up_to is not None else None
    pool = request.app[POOL]
    account_id = await account_id_of(pool, external_id_of(request))
    result = await pool.execute(Q.mark_all_read, account_id, category, up_to)
    await inbox_rings.announce_changed(request.app[REDIS], account_id)
    return json_response(200, MarkedRead(marked_read=int(result.split()[-1])))


async def _open_gate(app: web.Application) -> None:
    app[INTAKE_GATE] = asyncio.Semaphore(max(1, round(app[SETTINGS].db_pool_max * GATE_PER_CONNECTION)))


def setup_routes(app: web.Application) -> None:
    app.on_startup.append(_open_gate)
    app.router.add_post("/v1/messages", post_batch)
    app.router.add_post("/v1/accounts/{external_id}/messages", post_message)
    app.router.add_get("/v1/accounts/{external_id}/messages", list_inbox)
    app.router.add_get("/v1/accounts/{external_id}/messages/unread-counts", unread_counts)
    app.router.add_post("/v1/accounts/{external_id}/messages/read-all", mark_all_read)
    app.router.add_get(r"/v1/accounts/{external_id}/messages/{id:\d+}", get_message)
    app.router.add_post(r"/v1/accounts/{external_id}/messages/{id:\d+}/read", mark_read)
    app.router.add_post(r"/v1/accounts/{external_id}/messages/{id:\d+}/unread", mark_unread)
    app.router.add_post(r"/v1/accounts/{external_id}/messages/{id:\d+}/archive", archive)
