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
from typing import Annotated, Any, NamedTuple, NotRequired, cast

import asyncpg
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from notifier import digest
from notifier.db import Q
from notifier.errors import FieldError, Problem
from notifier.settings import Settings
from notifier.validation import Body, Category, Data, ExternalId, Subject, Url, errors_of

log = logging.getLogger("notifier.inbox")

MAX_BATCH = 1000


class CreatedMessage(NamedTuple):
    """A message just stored (a tuple: cheap to make a thousand of per batch)."""

    id: int
    account_id: int
    digest_frequency: str


async def messages_created(pool: asyncpg.Pool, settings: Settings, created: Sequence[CreatedMessage]) -> None:
    """After new messages are committed: members on "immediate" become due one coalescing window
    from now (`digest.messages_arrived`, in a transaction of its own). Never raises: a failure is
    logged (the messages exist, and the digest pass still finds them at the next window)."""
    ids = [m.account_id for m in created if m.digest_frequency == "immediate"]
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
    digest_frequency, ...) of those whose account exists. Raises a 409 Problem when an account is
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
