"""Rows to JSON-ready values: timestamps as ISO 8601 strings, bytes as hex."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any


def merge_patch(before: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`before` with a JSON merge patch (RFC 7396, one level) applied: a `null` removes the key,
    anything else sets it. Not validated: the caller checks the result."""
    merged = dict(before)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def jsonable_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row (asyncpg Record or dict) as a dict whose values `json.dumps` accepts."""
    return {key: jsonable_value(value) for key, value in row.items()}
