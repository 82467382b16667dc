"""The audit trail: who changed what on an account, when. Rows are only ever inserted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from notifier.db import Q

ActorType = Literal["api_key", "member", "system", "operator", "console"]


@dataclass(frozen=True)
class Actor:
    """Who acted: an API key (by name), the member through a signed page, the system, an API key
    in the console (`operator`, development), or a console user (`console`: the person's address
    and role, and `user_id` their row in console_users)."""

    type: ActorType
    name: str
    user_id: int | None = None

    def __str__(self) -> str:
        return f"{self.type}:{self.name}"


def person_of(actor: str) -> str:
    """The person behind an actor as stored (`str(Actor)`): a console user's without the role
    they had (`console:ada@example.org (marketing)` → `console:ada@example.org`), others whole."""
    if actor.startswith("console:"):
        return actor.split(" (", 1)[0]
    return actor


SYSTEM = Actor("system", "notifier")
MEMBER = Actor("member", "signed link")


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`{field: {"before": old, "after": new}}` for the fields of `after` whose value changed."""
    return {k: {"before": before.get(k), "after": v} for k, v in after.items() if before.get(k) != v}


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    account_id: int | None,
    actor: Actor,
    action: str,
    changes: Mapping[str, Any] | None = None,
) -> None:
    """Append one audit row. Call inside the transaction that makes the change."""
    await conn.execute(
        Q.insert_audit,
        account_id,
        actor.type,
        actor.name,
        action,
        dict(changes or {}),
        actor.user_id,
    )
