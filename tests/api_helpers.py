"""Helpers for API tests: keys with given scopes and authorised requests."""

from __future__ import annotations

from typing import Any

import asyncpg

from notifier import auth


async def bearer(pool: asyncpg.Pool, *scopes: str, name: str = "registry") -> dict[str, str]:
    """Authorization headers for a fresh API key with `scopes` (default: accounts and messages)."""
    _, key = await auth.create_key(pool, name, list(scopes or ("accounts", "messages")))
    return {"Authorization": f"Bearer {key}"}


def new_account(n: int | str = 1, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"external_id": f"m-{n}", "email": f"member{n}@example.com", "name": f"Member {n}"}
    body.update(fields)
    return body
