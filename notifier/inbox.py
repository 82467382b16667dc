"""The inbox: intake of messages (one or a batch) and the member's view of them.

Routes (all need an API key with the `messages` scope):
- `POST /v1/accounts/{external_id}/messages` one message; 201. Honours `Idempotency-Key`.
- `POST /v1/messages` up to `MAX_BATCH` messages for many accounts; answers per item: 201 when all
  were accepted, 207 when any was not (each result has `index`, `status` 201/404/422 and `id` or
  `errors`). Valid items are inserted in one statement. Honours `Idempotency-Key`.
- `GET /v1/accounts/{external_id}/messages` newest first, keyset-paginated (`?cursor=`, `?limit=`),
  `?unread=true`, `?category=`, `?archived=exclude|include|only` (default exclude).
- `GET /v1/accounts/{external_id}/messages/unread-counts` unread counts per category.
- `GET /v1/accounts/{external_id}/messages/{id}`, `POST .../{id}/read`, `.../{id}/unread`,
  `.../{id}/archive`, `POST .../messages/read-all` (`?category=`, `?up_to=` id).

After new messages are committed, intake makes members on `immediate` due
(`digest.messages_arrived`, in a transaction of its own). A failure there is logged, never turned
into an error answer: the messages exist, and a retry by the producer would duplicate them; the
digest pass still finds the messages at the member's next window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple, NotRequired, cast
from urllib.parse import quote

import asyncpg
import pydantic_core
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from notifier import digest
from notifier.accounts import account_id_of, external_id_of
from notifier.api.answers import BatchAnswer, BatchResult, InboxPage, MarkedRead, Message, UnreadCounts
from notifier.api.auth import requires
from notifier.api.idempotency import HEADER, idempotent
from notifier.api.pagination import decode_cursor, next_cursor, page_limit
from notifier.api.problems import FieldError, Problem, parse_json, read_body
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.resources import POOL, SETTINGS
from notifier.validation import Body, Category, Data, ExternalId, Subject, Url, errors_of, parse

log = logging.getLogger("notifier.inbox")

MAX_BATCH = 1000

# Intake waits its turn for the database in a FIFO line. asyncpg's pool gives a released connection
# to whichever request asks first, and a waiter that loses that race goes back to the end of the
# line (asyncio.Queue): at 64 connections on a pool of 10, p50 was 15 ms and p99 55 to 70 ms. A fair
# semaphore lets at most 1.5 times the pool size ask the pool; they can overtake only each other.
INTAKE_GATE = web.AppKey("intake_gate", asyncio.Semaphore)
GATE_PER_CONNECTION = 1.5


class CreatedMessage(NamedTuple):
    """A message just stored (a tuple: cheap to make a thousand of per batch)."""

    id: int
    account_id: int
    digest_frequency: str


async def _messages_created(app: web.Application, created: Sequence[CreatedMessage]) -> None:
    """New messages for members on "immediate": due one coalescing window from now."""
    ids = [m.account_id for m in created if m.digest_frequency == "immediate"]
    if not ids:
        return
    try:
        async with app[POOL].acquire() as conn:
            await digest.messages_arrived(conn, ids, app[SETTINGS])
    except Exception:
        log.exception("scheduling immediate digests after intake failed")


# The fields of a message with what the API documentation says of them, shared by the model and
# the typed dict below.
_Category = Annotated[
    Category, Field(description="lower-case letters, digits and `. _ -`; digests group by it")
]
_Subject = Annotated[Subject, Field(description="one line, trimmed")]
_Body = Annotated[Body, Field(description="line breaks allowed, other control characters not")]
_Url = Annotated[Url, Field(description="an absolute URL, http or https")]
_Data = Annotated[Data, Field(description="a JSON object of at most 16 KB, for templates")]
_Account = Annotated[ExternalId, Field(description="the external_id of the account")]


class NewMessage(BaseModel):
    """A message for a member's inbox; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    category: _Category
    subject: _Subject
    body: _Body
    url: _Url | None = None
    data: _Data | None = None


class BatchMessage(NewMessage):
    account: _Account


@with_config(ConfigDict(extra="forbid"))
class BatchItem(TypedDict):
    """A valid `BatchMessage` as a plain dict: the same rules, cheaper to build and to serialise.

    A test checks that both describe the same schema; `BatchMessage` words the per-item errors.
    """

    account: _Account
    category: _Category
    subject: _Subject
    body: _Body
    url: NotRequired[_Url | None]
    data: NotRequired[_Data | None]


@with_config(ConfigDict(extra="forbid"))
class BatchRequest(TypedDict):
    """A batch in which every item is valid (the general path answers the others item by item)."""

    messages: Annotated[list[BatchItem], Field(min_length=1, max_length=MAX_BATCH)]


_VALID_BATCH = TypeAdapter(BatchRequest)


def parse_valid_batch(raw: bytes) -> list[BatchItem] | None:
    """The messages of a batch body in which every item is valid, parsed and checked straight from
    the bytes (no `json.loads` dict first); None for anything else (not JSON, no list, too many
    or no items, one invalid item), which the general path then answers item by item."""
    try:
        return _VALID_BATCH.validate_json(raw)["messages"]
    except ValidationError:
        return None


def validate_batch(
    items: list[Any],
) -> tuple[list[tuple[int, BatchItem]], dict[int, list[FieldError]]]:
    """(valid items with their index, {index: errors}), each item checked on its own."""
    valid: list[tuple[int, BatchItem]] = []
    invalid: dict[int, list[FieldError]] = {}
    for i, item in enumerate(items):
        try:
            message = BatchMessage.model_validate(item)
        except ValidationError as exc:
            invalid[i] = errors_of(exc, whole="item")
        else:
            valid.append((i, cast(BatchItem, message.model_dump(exclude_none=True))))
    return valid, invalid


def _new_message(row: asyncpg.Record) -> Message:
    """A message just inserted (its row has no read or archive time yet)."""
    return Message.of_row(row, read_at=None, archived_at=None)


def _message_location(external_id: str, message_id: int) -> str:
    return f"/v1/accounts/{quote(external_id, safe='')}/messages/{message_id}"


def _no_account(external_id: str) -> Problem:
    return Problem(404, f"no account with external_id {external_id!r}")


# --- intake -----------------------------------------------------------------------------------


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
    await _messages_created(
        request.app, [CreatedMessage(row["id"], row["account_id"], row["digest_frequency"])]
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


async def _insert_batch(
    conn: asyncpg.Connection | asyncpg.Pool, valid: list[tuple[int, BatchItem]], *, in_transaction: bool
) -> list[asyncpg.Record]:
    if not valid:
        return []
    # Infinity and NaN (which Python's JSON reader accepts inside `data`) become null, as JSON has no
    # such numbers; PostgreSQL reads a JSON null as SQL NULL for every column.
    document = pydantic_core.to_json([m for _, m in valid], inf_nan_mode="null").decode()
    try:
        rows: list[asyncpg.Record] = await conn.fetch(Q.insert_messages_batch, document)
    except asyncpg.ForeignKeyViolationError:
        # An account was erased between the lookup and the insert; nothing was written.
        if in_transaction:  # the transaction is aborted: the client retries the whole request
            raise Problem(
                409, "an account of this batch was erased meanwhile; retry", headers={"Retry-After": "1"}
            ) from None
        rows = await conn.fetch(Q.insert_messages_batch, document)  # it is now an unknown account
    return rows


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
            rows = await _insert_batch(request.app[POOL], valid, in_transaction=False)
        status, body = _batch_answer(size, valid, results, rows)
        response = json_response(status, body)
    else:
        if payload is None:
            payload = parse_json(raw)
        async with request.app[INTAKE_GATE], idempotent(request, payload) as idem:
            if idem.replayed:
                return idem.response
            rows = await _insert_batch(idem.conn, valid, in_transaction=True)
            status, body = _batch_answer(size, valid, results, rows)
            response = idem.respond(status, body)
    if rows:
        created = [CreatedMessage(r["id"], r["account_id"], r["digest_frequency"]) for r in rows]
        await _messages_created(request.app, created)
    return response


# --- the inbox --------------------------------------------------------------------------------


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise Problem(
            422, f"{name} must be true or false", errors=[{"field": name, "message": "must be true or false"}]
        )
    return raw in ("true", "1")


def _category(request: web.Request) -> str | None:
    category = request.query.get("category")
    if category is None:
        return None
    try:
        return parse(_CategoryQuery, {"category": category}).category
    except Problem as exc:
        raise Problem(422, "category is not valid", errors=exc.errors) from None


class _CategoryQuery(BaseModel):
    category: Category


Archived = Literal["exclude", "include", "only"]


def _archived(request: web.Request) -> Archived:
    raw = request.query.get("archived", "exclude")
    if raw not in ("exclude", "include", "only"):
        raise Problem(
            422,
            "archived must be exclude, include or only",
            errors=[{"field": "archived", "message": "must be exclude, include or only"}],
        )
    return raw  # type: ignore[return-value]


def _message_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if len(raw) > 18:
        raise Problem(404, "no such message")
    return int(raw)


@requires("messages")
async def list_inbox(request: web.Request) -> web.Response:
    """GET /v1/accounts/{external_id}/messages: a page of the inbox, newest first."""
    limit = page_limit(request)
    before = decode_cursor("inbox", request.query.get("cursor"))
    unread, category, archived = _flag(request, "unread"), _category(request), _archived(request)
    pool = request.app[POOL]
    account_id = await account_id_of(pool, external_id_of(request))
    rows = await pool.fetch(Q.inbox_page, account_id, before, unread, category, archived, limit + 1)
    page = InboxPage(
        items=[Message.of_row(r) for r in rows[:limit]], next_cursor=next_cursor("inbox", rows, limit)
    )
    return json_response(200, page)


@requires("messages")
async def unread_counts(request: web.Request) -> web.Response:
    """GET /v1/accounts/{external_id}/messages/unread-counts: `{total, categories: {name: n}}`."""
    pool = request.app[POOL]
    account_id = await account_id_of(pool, external_id_of(request))
    rows = await pool.fetch(Q.unread_counts, account_id)
    categories = {r["category"]: r["unread"] for r in rows}
    return json_response(200, UnreadCounts(total=sum(categories.values()), categories=categories))


async def _one(request: web.Request, query: str) -> web.Response:
    external_id = external_id_of(request)
    message_id = _message_id(request)
    row = await request.app[POOL].fetchrow(query, external_id, message_id)
    if row is None:
        await account_id_of(request.app[POOL], external_id)  # 404 naming the account if it is that
        raise Problem(404, f"no message {message_id} in the inbox of {external_id!r}")
    return json_response(200, Message.of_row(row))


@requires("messages")
async def get_message(request: web.Request) -> web.Response:
    """GET /v1/accounts/{external_id}/messages/{id}."""
    return await _one(request, Q.get_inbox_message)


@requires("messages")
async def mark_read(request: web.Request) -> web.Response:
    """POST .../messages/{id}/read: idempotent, keeps the first read time."""
    return await _one(request, Q.mark_message_read)


@requires("messages")
async def mark_unread(request: web.Request) -> web.Response:
    """POST .../messages/{id}/unread."""
    return await _one(request, Q.mark_message_unread)


@requires("messages")
async def archive(request: web.Request) -> web.Response:
    """POST .../messages/{id}/archive: idempotent; archived messages leave listings and digests."""
    return await _one(request, Q.archive_message)


@requires("messages")
async def mark_all_read(request: web.Request) -> web.Response:
    """POST .../messages/read-all: every unread message (`?category=`, up to `?up_to=` id)."""
    category = _category(request)
    raw_up_to = request.query.get("up_to")
    if raw_up_to is not None and (not (raw_up_to.isascii() and raw_up_to.isdigit()) or len(raw_up_to) > 18):
        raise Problem(
            422, "up_to must be a message id", errors=[{"field": "up_to", "message": "must be a message id"}]
        )
    up_to = int(raw_up_to) if raw_up_to is not None else None
    pool = request.app[POOL]
    account_id = await account_id_of(pool, external_id_of(request))
    result = await pool.execute(Q.mark_all_read, account_id, category, up_to)
    return json_response(200, MarkedRead(marked_read=int(result.split()[-1])))


# --- retention -------------------------------------------------------------------------------

PURGE_SLICE = 5000


async def purge_messages_before(pool: asyncpg.Pool, before: datetime) -> int:
    """Delete inbox messages created before `before`, in slices of PURGE_SLICE; returns how many.

    Idempotent and safe to run from several workers at once (each slice is its own statement).
    """
    total = 0
    while True:
        result: str = await pool.execute(Q.purge_messages_before, before, PURGE_SLICE)
        deleted = int(result.split()[-1])
        total += deleted
        if deleted < PURGE_SLICE:
            return total


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
