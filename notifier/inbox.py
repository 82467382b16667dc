"""The inbox: what a message is (validated one at a time or as a batch), storing them, what
happens after they are stored, and the retention purge. The `/v1` routes that take and show
messages are in notifier/api/messages.py.

After new messages are committed, `messages_created` makes members on `immediate` due
(`digest.messages_arrived`, in a transaction of its own). A failure there is logged, never turned
into an error answer: the messages exist, and a retry by the producer would duplicate them; the
digest pass still finds the messages at the member's next window.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple, NotRequired, cast

import asyncpg
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from notifier import digest, inbox_rings, schedule
from notifier.db import Q
from notifier.errors import FieldError, Problem
from notifier.settings import Settings
from notifier.validation import Body, Category, Data, ExternalId, Subject, Url, errors_of

log = logging.getLogger("notifier.inbox")

MAX_BATCH = 1000
# Which messages a listing shows by their archived state.
Archived = Literal["exclude", "include", "only"]


class CreatedMessage(NamedTuple):
    """A message just stored (a tuple: cheap to make a thousand of per batch)."""

    id: int
    account_id: int
    maybe_immediate: bool  # the member may get this message's category at once
    # The message as an open inbox shows it (`new_member_item`), carried in the doorbell ring so a
    # woken stream need not read it back; None where intake did not build it (batches).
    item: str | None = None
    category: str = ""


async def messages_created(
    pool: asyncpg.Pool, redis: Any, settings: Settings, created: Sequence[CreatedMessage]
) -> None:
    """After new messages are committed: announced to open inboxes (`announce_created`) and, for
    members on "immediate", due one coalescing window from now (`digest.messages_arrived`, in a
    transaction of its own). Never raises: a failure is logged (the messages exist, and the
    digest pass still finds them at the next window)."""
    await inbox_rings.announce_created(redis, created)
    ids = [m.account_id for m in created if m.maybe_immediate]
    if not ids:
        return
    try:
        async with pool.acquire() as conn:
            await digest.messages_arrived(conn, ids, settings)
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


# --- intake -----------------------------------------------------------------------------------


async def insert_batch(
    conn: asyncpg.Connection | asyncpg.Pool, valid: list[tuple[int, BatchItem]], *, in_transaction: bool
) -> list[asyncpg.Record]:
    """Insert the valid items of a batch in one statement; the rows (id, account_id,
    maybe_immediate, ...) of those whose account exists. Raises a 409 Problem when an account is
    erased meanwhile inside a transaction (the client retries)."""
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


# --- retention -------------------------------------------------------------------------------

PURGE_SLICE = 5000
PARTITIONS_AHEAD = 3  # months of partitions that exist before their first message (docs/scaling.md)


class Purged(NamedTuple):
    """What one retention purge removed: whole month partitions, and rows deleted one by one."""

    partitions: list[str]
    rows: int


async def purge_messages_before(pool: asyncpg.Pool, before: datetime) -> Purged:
    """Remove inbox messages created before `before`: every month partition that ended by then is
    detached (the only moment `messages` is locked, whatever the month holds), then dropped whole in
    a statement of its own (its files removed, no row by row delete, nothing the engine uses
    locked); the rest (the month that straddles `before`, strays in the DEFAULT partition) is
    deleted in slices of PURGE_SLICE. A month an earlier purge detached and did not drop is dropped.

    Idempotent and safe to run from several workers at once (each step is its own statement).
    """
    await pool.fetch(Q.detach_message_partitions, before)
    dropped = [
        r["name"]
        for r in await pool.fetch(Q.detached_message_partitions)
        if await pool.fetchval(Q.drop_detached_message_partition, r["name"])
    ]
    total = 0
    while True:
        result: str = await pool.execute(Q.purge_messages_before, before, PURGE_SLICE)
        deleted = int(result.split()[-1])
        total += deleted
        if deleted < PURGE_SLICE:
            return Purged(dropped, total)


async def maintain_partitions(pool: asyncpg.Pool, months_ahead: int = PARTITIONS_AHEAD) -> list[str]:
    """Make the inbox's month partitions exist from this month to `months_ahead` months ahead, and
    seal the months that ended (their id range recorded and enforced, so lookups by id skip them).
    Idempotent; `notifier migrate` and a daily cron job run it. Returns what it created and sealed.
    """
    async with pool.acquire() as conn, conn.transaction():
        created = [r["name"] for r in await conn.fetch(Q.create_message_partitions, months_ahead)]
    async with pool.acquire() as conn, conn.transaction():
        sealed = [r["name"] for r in await conn.fetch(Q.seal_message_partitions)]
    return created + sealed


# --- the member's own inbox (the member API, the hosted page, the console) ----------------------
# No aiohttp below: the front doors (notifier.member, notifier.pages.inbox, the console) call these.

MEMBER_VIEWS: dict[str, Archived] = {"unread": "exclude", "all": "exclude", "archived": "only"}
MemberAction = Literal["read", "unread", "archive", "unarchive"]
_ACTIONS: dict[str, str] = {
    "read": "member_mark_read",
    "unread": "member_mark_unread",
    "archive": "member_archive",
    "unarchive": "member_unarchive",
}


_MEMBER_FIELDS = ("id", "category", "subject", "body", "url")


def member_item(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A message as the member API and the component show it (the producer's `data` is not
    shown: it is for templates, not for the member)."""
    # Spelled out rather than looped over the names: a page builds twenty of these per request,
    # and this costs a fifth less (31 against 38 µs for twenty, timeit).
    created, read, seen, archived = row["created_at"], row["read_at"], row["seen_at"], row["archived_at"]
    return {
        "id": row["id"],
        "category": row["category"],
        "subject": row["subject"],
        "body": row["body"],
        "url": row["url"],
        "created_at": created.isoformat() if created else None,
        "read_at": read.isoformat() if read else None,
        "seen_at": seen.isoformat() if seen else None,
        "archived_at": archived.isoformat() if archived else None,
    }


def new_member_item(row: asyncpg.Record) -> str:
    """A message just inserted (never read, seen or archived yet) as JSON text, as `member_item`
    and `member_news` give it."""
    item = {name: row[name] for name in _MEMBER_FIELDS}
    item["created_at"] = row["created_at"].isoformat()
    item.update(read_at=None, seen_at=None, archived_at=None)
    # pydantic-core's encoder, compact and UTF-8 as `json.dumps(..., ensure_ascii=False)` was, at
    # a sixth of its time (every single-message intake builds one).
    return pydantic_core.to_json(item).decode()


class MemberPage(NamedTuple):
    account_id: int
    registered_at: datetime  # when the account was registered (a member token must be younger)
    rows: list[asyncpg.Record]
    next_before: int | None  # the id the next page continues below; None on the last page


async def member_page(
    conn: asyncpg.Connection | asyncpg.Pool,
    external_id: str,
    *,
    before: int | None = None,
    unread: bool = False,
    category: str | None = None,
    archived: Archived = "exclude",
    limit: int = 20,
) -> MemberPage | None:
    """A page of the inbox of the account `external_id`, newest first, below message id `before`,
    with the account, in one statement; None when there is no such account."""
    rows = await conn.fetch(Q.inbox_page, external_id, before, unread, category, archived, limit + 1)
    if not rows:
        return None
    first = rows[0]
    messages = rows if first["id"] is not None else []
    return MemberPage(
        first["account_id"],
        first["registered_at"],
        messages[:limit],
        messages[limit - 1]["id"] if len(messages) > limit else None,
    )


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
