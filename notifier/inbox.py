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

from notifier import digest, schedule
from notifier.accounts import account_id_of, external_id_of
from notifier.api.auth import requires
from notifier.api.idempotency import HEADER, idempotent, json_response
from notifier.api.pagination import decode_cursor, encode_cursor, page_limit
from notifier.api.problems import Problem, parse_json, read_body
from notifier.db import Q
from notifier.resources import POOL, REDIS, SETTINGS
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
    """New messages: announced to open inboxes (`announce_created`) and, for members on
    "immediate", due one coalescing window from now."""
    await announce_created(app[REDIS], created)
    ids = [m.account_id for m in created if m.digest_frequency == "immediate"]
    if not ids:
        return
    try:
        async with app[POOL].acquire() as conn:
            await digest.messages_arrived(conn, ids, app[SETTINGS])
    except Exception:
        log.exception("scheduling immediate digests after intake failed")


class NewMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: Category
    subject: Subject
    body: Body
    url: Url | None = None
    data: Data | None = None


class BatchMessage(NewMessage):
    account: ExternalId


@with_config(ConfigDict(extra="forbid"))
class BatchItem(TypedDict):
    """A valid `BatchMessage` as a plain dict: the same rules, cheaper to build and to serialise.

    A test checks that both describe the same schema; `BatchMessage` words the per-item errors.
    """

    account: ExternalId
    category: Category
    subject: Subject
    body: Body
    url: NotRequired[Url | None]
    data: NotRequired[Data | None]


@with_config(ConfigDict(extra="forbid"))
class _ValidBatch(TypedDict):
    messages: Annotated[list[BatchItem], Field(min_length=1, max_length=MAX_BATCH)]


_VALID_BATCH = TypeAdapter(_ValidBatch)


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
) -> tuple[list[tuple[int, BatchItem]], dict[int, list[dict[str, Any]]]]:
    """(valid items with their index, {index: errors}), each item checked on its own."""
    valid: list[tuple[int, BatchItem]] = []
    invalid: dict[int, list[dict[str, Any]]] = {}
    for i, item in enumerate(items):
        try:
            message = BatchMessage.model_validate(item)
        except ValidationError as exc:
            invalid[i] = errors_of(exc, whole="item")
        else:
            valid.append((i, cast(BatchItem, message.model_dump(exclude_none=True))))
    return valid, invalid


def message_json(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """The public view of an inbox message."""
    return {
        "id": row["id"],
        "category": row["category"],
        "subject": row["subject"],
        "body": row["body"],
        "url": row["url"],
        "data": row["data"],
        "created_at": row["created_at"].isoformat(),
        "read_at": row["read_at"].isoformat() if row["read_at"] else None,
        "archived_at": row["archived_at"].isoformat() if row["archived_at"] else None,
    }


def _new_message_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "category": row["category"],
        "subject": row["subject"],
        "body": row["body"],
        "url": row["url"],
        "data": row["data"],
        "created_at": row["created_at"].isoformat(),
        "read_at": None,
        "archived_at": None,
    }


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
            201, _new_message_json(row), {"Location": _message_location(external_id, row["id"])}
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
                _new_message_json(row),
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
    results: list[dict[str, Any] | None],
    rows: list[asyncpg.Record],
) -> tuple[int, dict[str, Any]]:
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
    body = {"accepted": accepted, "rejected": size - accepted, "results": results}
    return (201 if accepted == size else 207), body


def _batch_response(status: int, body: dict[str, Any]) -> web.Response:
    """The answer to a batch of valid items (integers and validated account ids only), serialised
    by pydantic-core: the same compact JSON as `json_response` in under half the time."""
    return web.Response(
        status=status, body=pydantic_core.to_json(body), content_type="application/json", charset="utf-8"
    )


@requires("messages")
async def post_batch(request: web.Request) -> web.Response:
    """POST /v1/messages: up to MAX_BATCH messages; 201 all accepted, 207 some not (per item)."""
    raw = await read_body(request, max_bytes=request.app[SETTINGS].max_batch_body_bytes)
    fast = parse_valid_batch(raw)
    payload: Any = None
    if fast is not None:  # the common case: every item valid, checked in one pass over the bytes
        size, valid = len(fast), list(enumerate(fast))
        results: list[dict[str, Any] | None] = [None] * size
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
        response = _batch_response(status, body) if payload is None else json_response(status, body)
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
    next_cursor = encode_cursor("inbox", rows[limit - 1]["id"]) if len(rows) > limit else None
    return json_response(
        200, {"messages": [message_json(r) for r in rows[:limit]], "next_cursor": next_cursor}
    )


@requires("messages")
async def unread_counts(request: web.Request) -> web.Response:
    """GET /v1/accounts/{external_id}/messages/unread-counts: `{total, categories: {name: n}}`."""
    pool = request.app[POOL]
    account_id = await account_id_of(pool, external_id_of(request))
    rows = await pool.fetch(Q.unread_counts, account_id)
    categories = {r["category"]: r["unread"] for r in rows}
    return json_response(200, {"total": sum(categories.values()), "categories": categories})


async def _one(request: web.Request, query: str) -> web.Response:
    external_id = external_id_of(request)
    message_id = _message_id(request)
    row = await request.app[POOL].fetchrow(query, external_id, message_id)
    if row is None:
        await account_id_of(request.app[POOL], external_id)  # 404 naming the account if it is that
        raise Problem(404, f"no message {message_id} in the inbox of {external_id!r}")
    return json_response(200, message_json(row))


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
    return json_response(200, {"marked_read": int(result.split()[-1])})


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


# --- the member's own inbox (the member API, the hosted page, the console) ----------------------
# No aiohttp below: the front doors (notifier.member, notifier.pages.inbox, the console) call these.

# Open inboxes hear of changes through one Redis pub/sub channel: "<account id> <message id>" when
# a message arrived, "<account id> counts" when the member changed something (another tab updates).
# Redis is only a doorbell: a stream that missed a ring catches up from PostgreSQL.
INBOX_CHANNEL = "notifier:inbox"
ANNOUNCE_TIMEOUT = 0.5  # seconds intake waits for Redis at most; a slow Redis never slows intake

MEMBER_VIEWS: dict[str, Archived] = {"unread": "exclude", "all": "exclude", "archived": "only"}
MemberAction = Literal["read", "unread", "archive", "unarchive"]
_ACTIONS: dict[str, str] = {
    "read": "member_mark_read",
    "unread": "member_mark_unread",
    "archive": "member_archive",
    "unarchive": "member_unarchive",
}


async def announce_created(redis: Any, created: Sequence[CreatedMessage]) -> None:
    """Ring the inbox doorbell for each new message, after its commit. One round trip, bounded by
    ANNOUNCE_TIMEOUT; a failure is logged and never reaches the producer (the messages exist, and
    a stream resuming with Last-Event-ID finds them in PostgreSQL)."""
    if not created:
        return
    try:
        async with asyncio.timeout(ANNOUNCE_TIMEOUT):
            async with redis.pipeline(transaction=False) as pipe:
                for m in created:
                    pipe.publish(INBOX_CHANNEL, f"{m.account_id} {m.id}")
                await pipe.execute()
    except Exception as exc:  # Redis down or slow: the inbox catches up from PostgreSQL
        log.warning("announcing %d new inbox messages failed: %s", len(created), type(exc).__name__)


async def announce_changed(redis: Any, account_id: int) -> None:
    """Tell the member's open inboxes that their counts changed (they read or archived). Never
    raises."""
    try:
        async with asyncio.timeout(ANNOUNCE_TIMEOUT):
            await redis.publish(INBOX_CHANNEL, f"{account_id} counts")
    except Exception as exc:
        log.warning("announcing an inbox change failed: %s", type(exc).__name__)


def parse_announcement(raw: bytes | str) -> tuple[int, int | None] | None:
    """(account id, message id or None for "counts") of a doorbell ring; None if malformed."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    account, _, what = text.partition(" ")
    if not (account.isdigit() and len(account) <= 18):
        return None
    if what == "counts":
        return int(account), None
    if what.isdigit() and len(what) <= 18:
        return int(account), int(what)
    return None


_MEMBER_FIELDS = ("id", "category", "subject", "body", "url")
_MEMBER_TIMES = ("created_at", "read_at", "seen_at", "archived_at")


def member_item(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A message as the member API and the component show it (the producer's `data` is not
    shown: it is for templates, not for the member)."""
    item = {name: row[name] for name in _MEMBER_FIELDS}
    for name in _MEMBER_TIMES:
        item[name] = row[name].isoformat() if row[name] else None
    return item


class MemberPage(NamedTuple):
    rows: list[asyncpg.Record]
    next_before: int | None  # the id the next page continues below; None on the last page


async def member_page(
    conn: asyncpg.Connection | asyncpg.Pool,
    account_id: int,
    *,
    before: int | None = None,
    unread: bool = False,
    category: str | None = None,
    archived: Archived = "exclude",
    limit: int = 20,
) -> MemberPage:
    """A page of the member's inbox, newest first, below message id `before`."""
    rows = await conn.fetch(Q.inbox_page, account_id, before, unread, category, archived, limit + 1)
    return MemberPage(rows[:limit], rows[limit - 1]["id"] if len(rows) > limit else None)


async def member_counts(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> dict[str, Any]:
    """`{unread, unseen, by_category: {name: unread}}` over the messages not archived."""
    rows = await conn.fetch(Q.member_counts, account_id)
    return {
        "unread": sum(r["unread"] for r in rows),
        "unseen": sum(r["unseen"] for r in rows),
        "by_category": {r["category"]: r["unread"] for r in rows},
    }


async def member_message(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: int, message_id: int
) -> asyncpg.Record | None:
    """One message of the member's inbox; None when it is not theirs or does not exist."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.member_message, account_id, message_id)
    return row


class MemberNews(NamedTuple):
    messages: list[tuple[int, str]]  # (id, the item as JSON text), oldest first
    counts: str  # `member_counts` as JSON text


async def member_news(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: int, after: int, limit: int
) -> MemberNews:
    """What an open inbox has not been sent yet, in one round trip, as JSON text ready to send:
    the member's messages after id `after` (at most `limit`, 0 for none) and the counts."""
    rows = await conn.fetch(Q.member_news, account_id, after, limit)
    return MemberNews([(r["id"], r["item"]) for r in rows if r["id"] is not None], rows[0]["counts"])


async def member_mark(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: int, message_id: int, action: MemberAction
) -> asyncpg.Record | None:
    """Mark one of the member's messages read, unread, archived or not; idempotent (first read and
    archive times are kept). None when the message is not theirs: nothing changed."""
    row: asyncpg.Record | None = await conn.fetchrow(Q[_ACTIONS[action]], account_id, message_id)
    return row


async def member_read_all(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: int, category: str | None = None
) -> int:
    """Mark every unread, unarchived message read (of one category if given); how many."""
    result: str = await conn.execute(Q.member_read_all, account_id, category)
    return int(result.split()[-1])


async def member_seen(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> int:
    """The member opened the bell: every unseen message is seen; how many."""
    result: str = await conn.execute(Q.member_seen, account_id)
    return int(result.split()[-1])


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def member_time(moment: datetime, zone: str) -> str:
    """A time as the member reads it, in their time zone: `2 Mar 2026, 08:30`."""
    local = moment.astimezone(schedule.zone(zone))
    return f"{local.day} {_MONTHS[local.month - 1]} {local.year}, {local.hour:02d}:{local.minute:02d}"
