"""What erasure does to stored Idempotency-Key records that are tied to no account (a batch
names many members): the erased member's external id is taken out of them. The records
themselves are written and replayed by `notifier.api.idempotency`."""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from notifier.db import Q

ERASED = "[erased]"


def _token(external_id: str) -> re.Pattern[str]:
    # The id as a whole token: not inside a longer word (`erased-ext-41` names `ext-41`). A short
    # id must stand alone from the id alphabet too, so that `1` does not match `batch-1`.
    edge = r"A-Za-z0-9" if len(external_id) >= 6 else r"A-Za-z0-9._:@+\-"
    return re.compile(rf"(?<![{edge}]){re.escape(external_id)}(?![{edge}])")


def _scrub(value: Any, token: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return token.sub(ERASED, value)
    if isinstance(value, list):
        return [_scrub(v, token) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, token) for k, v in value.items()}
    return value


async def forget_external_id(conn: asyncpg.Connection, external_id: str) -> int:
    """Remove an erased member's external id from the records tied to no account; call inside
    the erasure's transaction. A record whose key names the member goes (a repeat of that
    request then runs afresh, and finds no account); one whose stored answer names it keeps its
    answer with the id replaced by `[erased]`, so a repeat of a batch still replays and never
    inserts its messages twice. Returns how many records changed."""
    token = _token(external_id)
    changed = 0
    for row in await conn.fetch(Q.idempotency_keys_naming, external_id):
        scope = (row["api_key_id"], row["route"], row["key"])
        if token.search(row["key"]):
            await conn.execute(Q.delete_idempotency_key, *scope)
            changed += 1
            continue
        response = _scrub(row["response"], token)
        if response != row["response"]:
            await conn.execute(Q.replace_idempotency_response, *scope, response)
            changed += 1
    return changed
