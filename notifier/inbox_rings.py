"""The inbox's doorbell: open inboxes (the member's event streams, in any web process) hear of
new messages and changed counts through one Redis pub/sub channel per Redis database
(`inbox_channel`). Redis is only a doorbell: a stream that missed a ring catches up from
PostgreSQL (notifier.member.stream).

Rings: `"<account id> new <message id> <category> <item JSON>"` carries a message posted alone;
`"<account id> new"` says new messages arrived (a batch, a long message); `"<account id> counts"`
says the member changed something (another tab updates).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from notifier import coalesced_publish

if TYPE_CHECKING:
    from notifier.inbox import CreatedMessage

log = logging.getLogger("notifier.inbox")

INBOX_CHANNEL = "notifier:inbox"  # and ":<database number>" (inbox_channel)
ANNOUNCE_TIMEOUT = 0.5  # seconds intake waits for Redis at most; a slow Redis never slows intake
RING_ITEM_MAX = 8192  # characters of a message a ring carries at most; a longer one is read back


def inbox_channel(redis: Any) -> str:
    """The doorbell's channel for the Redis database `redis` is connected to. Redis pub/sub
    ignores database numbers: without the number, deployments sharing a Redis server on different
    databases (production and staging, say) would hear each other's rings, and a ring carries the
    message, to the stream of whichever member has the same account id there."""
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
    return f"{INBOX_CHANNEL}:{kwargs.get('db', 0)}"


async def announce_created(redis: Any, created: Sequence[CreatedMessage]) -> None:
    """Ring the inbox doorbell after the messages' commit: one ring per message that carries its
    item (when no longer than RING_ITEM_MAX: the woken stream sends it as it is and counts it),
    and one ring naming only the account for each member with other new messages (the stream
    reads what is new from PostgreSQL). One round trip, shared with concurrent announcements and
    bounded by ANNOUNCE_TIMEOUT; a failure is logged and never reaches the producer (the messages
    exist, and a stream resuming with Last-Event-ID finds them in PostgreSQL)."""
    if not created:
        return
    try:  # concurrent requests' rings share a round trip (notifier.coalesced_publish), which
        # bounds this caller's wait by trip_seconds
        await coalesced_publish.publish(
            redis, inbox_channel(redis), _rings(created), trip_seconds=ANNOUNCE_TIMEOUT
        )
    except Exception as exc:  # Redis down or slow: the inbox catches up from PostgreSQL
        log.warning("announcing %d new inbox messages failed: %s", len(created), type(exc).__name__)


def _rings(created: Sequence[CreatedMessage]) -> list[str]:
    carried, bare = [], {}
    for m in created:
        if m.item is not None and len(m.item) <= RING_ITEM_MAX and m.category:
            carried.append(f"{m.account_id} new {m.id} {m.category} {m.item}")
        else:
            bare[m.account_id] = f"{m.account_id} new"
    return carried + list(bare.values())


async def announce_changed(redis: Any, account_id: int) -> None:
    """Tell the member's open inboxes that their counts changed (they read or archived). Never
    raises."""
    try:
        async with asyncio.timeout(ANNOUNCE_TIMEOUT):
            await redis.publish(inbox_channel(redis), f"{account_id} counts")
    except Exception as exc:
        log.warning("announcing an inbox change failed: %s", type(exc).__name__)


class Carried(NamedTuple):
    """A new message as a doorbell ring carries it."""

    id: int
    category: str
    item: str  # JSON text, as `member_news` gives it


class Ring(NamedTuple):
    account_id: int
    arrived: bool  # new messages arrived; else only the counts changed
    message: Carried | None  # the new message, when the ring carries it


def _ring_number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def parse_announcement(raw: bytes | str) -> Ring | None:
    """A doorbell ring: `<account> counts`, `<account> new` or `<account> new <id> <category>
    <item JSON>`; None if malformed."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    parts = text.split(" ", 4)
    account = _ring_number(parts[0])
    if account is None:
        return None
    if len(parts) == 2 and parts[1] in ("new", "counts"):
        return Ring(account, parts[1] == "new", None)
    if len(parts) == 5 and parts[1] == "new":
        message_id = _ring_number(parts[2])
        if message_id is not None and parts[3] and parts[4].startswith("{"):
            return Ring(account, True, Carried(message_id, parts[3], parts[4]))
    return None
