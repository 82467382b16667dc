"""Keyset pagination: opaque cursors and the `?limit=` rule shared by list routes.

A list route fetches `limit + 1` rows below the cursor's id, answers the first `limit` as the
page's `items` (`notifier.answers.Page`) and `next_cursor(kind, rows, limit)` as its cursor.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from notifier.api.problems import Problem

DEFAULT_LIMIT = 50
MAX_LIMIT = 100


def encode_cursor(kind: str, last_id: int) -> str:
    """An opaque cursor naming the last row returned (rows continue below `last_id`)."""
    return base64.urlsafe_b64encode(f"{kind}:{last_id}".encode()).decode().rstrip("=")


def next_cursor(kind: str, rows: Sequence[Mapping[str, Any]], limit: int) -> str | None:
    """The cursor of the page after `rows[:limit]`: None when `rows` (fetched with `limit + 1`)
    shows there is no row after them."""
    return encode_cursor(kind, rows[limit - 1]["id"]) if len(rows) > limit else None


def decode_cursor(kind: str, cursor: str | None) -> int | None:
    """The id in a cursor made by `encode_cursor(kind, ...)`; 422 for anything else."""
    if cursor is None or cursor == "":
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = text.partition(":")
        if prefix != kind or not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise ValueError(cursor)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Problem(
            422,
            "cursor is not valid; pass the next_cursor of a previous page unchanged",
            errors=[{"field": "cursor", "message": "not a cursor of this list"}],
        ) from None


def page_limit(request: web.Request) -> int:
    """`?limit=` between 1 and MAX_LIMIT (default DEFAULT_LIMIT); 422 otherwise."""
    raw = request.query.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not 1 <= int(raw) <= MAX_LIMIT:
        raise Problem(
            422,
            f"limit must be a whole number from 1 to {MAX_LIMIT}",
            errors=[{"field": "limit", "message": f"must be from 1 to {MAX_LIMIT}"}],
        )
    return int(raw)
