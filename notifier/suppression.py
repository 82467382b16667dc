"""The suppression list: addresses not to write to, kept only as a sha256 hash of the address.

An entry names a list: `all` (hard bounces, complaints, erasure), `digest` or `newsletter`
(unsubscribed from that kind of mail). Service mail only respects the entries that say the
address must not receive anything (`SERVICE_BLOCKING_REASONS`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Literal

import asyncpg

from notifier.db import Q

ListName = Literal["all", "digest", "newsletter"]
Reason = Literal["unsubscribed", "hard_bounce", "soft_bounce", "complaint", "manual", "erased"]

# What stops a service message (about the member's own account): the mailbox does not exist or
# the mailbox keeps failing (the soft-bounce rule), or the member complained. An unsubscribe from
# newsletters or digests does not.
SERVICE_BLOCKING_REASONS = frozenset({"hard_bounce", "soft_bounce", "complaint", "manual"})


def normalise(address: str) -> str:
    """The form that is hashed: surrounding space removed, lower-cased."""
    return address.strip().lower()


def address_hash(address: str) -> bytes:
    """sha256 of the normalised address (32 bytes)."""
    return hashlib.sha256(normalise(address).encode("utf-8")).digest()


async def add(
    conn: asyncpg.Connection | asyncpg.Pool,
    address: str,
    reason: Reason,
    list_name: ListName = "all",
    detail: str | None = None,
) -> bool:
    """Suppress `address` for `list_name`. Idempotent: True when the entry is new."""
    status: str = await conn.execute(Q.add_suppression, address_hash(address), list_name, reason, detail)
    return status.endswith(" 1")


async def remove(conn: asyncpg.Connection | asyncpg.Pool, address: str, list_name: ListName) -> bool:
    """Lift the suppression of `address` for `list_name` (e.g. a member opts in again); True if
    there was one."""
    status: str = await conn.execute(Q.remove_suppression, address_hash(address), list_name)
    return status.endswith(" 1")


async def check(
    conn: asyncpg.Connection | asyncpg.Pool, address: str, lists: Iterable[ListName] = ("all",)
) -> str | None:
    """The reason `address` is suppressed on any of `lists`, or None."""
    found = await lookup(conn, [address])
    for list_name, reason in found.get(normalise(address), []):
        if list_name in set(lists):
            return reason
    return None


async def lookup(
    conn: asyncpg.Connection | asyncpg.Pool, addresses: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    """For a batch of addresses, one query: {normalised address: [(list, reason), ...]} of those
    that have any entry."""
    by_hash = {address_hash(a): normalise(a) for a in addresses}
    if not by_hash:
        return {}
    rows = await conn.fetch(Q.lookup_suppressions, list(by_hash))
    found: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        found.setdefault(by_hash[bytes(row["address_hash"])], []).append((row["list"], row["reason"]))
    return found
