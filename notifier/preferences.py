"""A member's digest and newsletter preferences: `apply_preferences`, the one function every
writer of preferences uses (the API in notifier/api/preferences.py, the preference centre,
unsubscribe links).

Defaults (for a new account): a daily digest at 08:00 local time, Monday for weekly, time zone
UTC, no newsletter.

The digest schedule follows the account: `notifier.accounts` calls `start_schedule` when it
registers one and `follow_timezone` when it corrects one (see notifier/digest.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from notifier import audit, lists, schedule
from notifier.audit import Actor
from notifier.db import Q
from notifier.errors import Problem
from notifier.validation import check_timezone, errors_of

FIELDS = ("digest_frequency", "digest_hour", "digest_weekday", "timezone", "newsletter")
# Shown by GET; a PUT may send them back (GET, edit, PUT) and they are ignored.
READ_ONLY = frozenset({"next_digest_at", "digest_window_start"})
_SCHEDULE_FIELDS = frozenset({"digest_frequency", "digest_hour", "digest_weekday", "timezone"})


class Preferences(BaseModel):
    """The five preferences, validated together. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    digest_frequency: schedule.Frequency = "daily"
    digest_hour: int = Field(default=8, ge=0, le=23, description="local hour for daily and weekly")
    digest_weekday: int = Field(default=1, ge=1, le=7, description="ISO weekday for weekly, 1 = Monday")
    timezone: str = "UTC"
    newsletter: StrictBool = False

    @field_validator("digest_hour", "digest_weekday", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a whole number")
        return value

    @field_validator("timezone")
    @classmethod
    def _iana(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        # A zone stored before the rule was narrowed (`GB`) may stay until the member changes it.
        if value == (info.context or {}).get("stored_timezone"):
            return value
        return check_timezone(value)


class InvalidPreferences(Problem):
    """422 naming every invalid field (`errors: [{field, message}]`)."""

    def __init__(self, errors: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(422, "the preferences are not valid", errors=errors)


class AccountNotFound(Exception):
    """No account with that id."""


def current(row: Mapping[str, Any]) -> dict[str, Any]:
    """The preferences of an account row as a plain dict."""
    return {name: row[name] for name in FIELDS}


def validate(before: Mapping[str, Any], changes: Mapping[str, Any]) -> Preferences:
    """`before` with `changes` applied, validated as a whole. Raises InvalidPreferences."""
    if not isinstance(changes, Mapping):
        raise InvalidPreferences([{"field": "body", "message": "must be a JSON object"}])
    merged = {**current(before), **{k: v for k, v in changes.items() if k not in READ_ONLY}}
    try:
        return Preferences.model_validate(merged, context={"stored_timezone": before["timezone"]})
    except ValidationError as exc:
        raise InvalidPreferences(errors_of(exc)) from None


async def _list_changes(
    conn: asyncpg.Connection, changes: Mapping[str, Any]
) -> tuple[Mapping[str, Any], dict[str, bool], dict[str, asyncpg.Record]]:
    """Split `lists` off a change: the default list's entry becomes `newsletter` (422 when both
    are given and disagree); returns (the other changes, the other lists' wishes, lists by key)."""
    if not isinstance(changes, Mapping) or "lists" not in changes:
        return changes, {}, {}
    rest = {k: v for k, v in changes.items() if k != "lists"}
    by_key = {r["key"]: r for r in await conn.fetch(Q.all_lists, True)}
    try:
        wanted = lists.parse_changes(changes["lists"], by_key)
    except Problem as exc:
        raise InvalidPreferences(exc.errors or []) from None
    default = next(key for key, r in by_key.items() if r["is_default"])
    if default in wanted:
        subscribed = wanted.pop(default)
        if rest.get("newsletter", subscribed) != subscribed:
            message = f"disagrees with lists.{default}, the same list"
            raise InvalidPreferences([{"field": "newsletter", "message": message}])
        rest["newsletter"] = subscribed
    return rest, wanted, by_key


async def list_document(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> dict[str, bool]:
    """`{key: subscribed}` of every list not archived, the default list first (the preferences
    document's `lists`)."""
    return {r["key"]: r["subscribed"] for r in await lists.memberships(conn, account_id)}


def _next_window(
    before: Mapping[str, Any], after: Preferences, has_pending: bool, now: datetime
) -> tuple[datetime, datetime | None]:
    """(window start, window end) after a change of schedule."""
    start: datetime = before["digest_window_start"]
    freq = after.digest_frequency
    if freq == "off":
        return start, None
    if freq == "immediate":
        if before["digest_frequency"] == "immediate":
            # Still immediate (e.g. a new time zone): a coalescing window in progress stays.
            return start, before["next_digest_at"]
        # Waiting messages go out with the next pass; later ones are coalesced as they arrive.
        return start, (now if has_pending else None)
    if before["digest_frequency"] not in schedule.SCHEDULED:
        # Off or immediate until now: a clock starts now.
        start = now
    end = schedule.reschedule(freq, after.digest_hour, after.digest_weekday, after.timezone, start, now)
    return start, end


async def apply_preferences(
    conn: asyncpg.Connection,
    account_id: int,
    changes: Mapping[str, Any],
    actor: Actor,
    source: str,
    *,
    now: datetime | None = None,
    wording: str | None = None,
    wording_version: str | None = None,
) -> dict[str, Any]:
    """Validate and save a change of preferences for one account, atomically, and return the
    preferences now in force (the five fields plus `next_digest_at`).

    `changes` holds any subset of digest_frequency, digest_hour, digest_weekday, timezone,
    newsletter and lists (`{key: bool}`; the default list's key is the same as `newsletter`;
    read-only fields from GET are ignored). Lists other than the default are written by
    `lists.set_memberships`. In one transaction (a savepoint if the
    caller has one open) it locks the account, writes the new values, writes an audit row
    (`preferences.update`, before/after of each changed field, by `actor`), reschedules the open
    digest window, and, when `newsletter` changes, records a consent row with `source` (e.g.
    "api", "preference-centre", "one-click") and the `wording` / `wording_version` shown.

    Rescheduling applies to the open window: the new end is the first scheduled time after the
    window's start under the new preferences (daily → weekly: no daily digest tonight); if that
    has passed, the next one after now. "off" sets no due time; "immediate" is due at once when
    messages are waiting. Unchanged values write nothing. Idempotent.

    Raises InvalidPreferences (a 422 Problem naming the fields) or AccountNotFound.
    """
    now = now or datetime.now(UTC)
    async with conn.transaction():
        row = await conn.fetchrow(Q.preferences_for_update, account_id)
        if row is None:
            raise AccountNotFound(account_id)
        changes, wanted, by_key = await _list_changes(conn, changes)
        after = validate(row, changes)
        if wanted:
            await lists.set_memberships(
                conn, account_id, wanted, by_key, actor, source, with_wording=wording is not None
            )
        changed = audit.diff(current(row), after.model_dump())
        if not changed:
            return {**current(row), "next_digest_at": row["next_digest_at"]}
        start, end = row["digest_window_start"], row["next_digest_at"]
        if _SCHEDULE_FIELDS & changed.keys():
            pending = after.digest_frequency == "immediate" and bool(
                await conn.fetchval(Q.has_pending_messages, account_id)
            )
            start, end = _next_window(row, after, pending, now)
        await conn.execute(
            Q.update_preferences,
            account_id,
            after.digest_frequency,
            after.digest_hour,
            after.digest_weekday,
            after.timezone,
            after.newsletter,
            start,
            end,
        )
        await audit.record(conn, account_id, actor, "preferences.update", {**changed, "source": source})
        if "newsletter" in changed:
            await conn.execute(
                Q.insert_consent, account_id, after.newsletter, source, wording, wording_version
            )
            if not after.newsletter:
                # However the member opts out (API, link, page), nothing still queued goes to them.
                await conn.execute(Q.cancel_queued_newsletters_of_account, account_id)
        return {**after.model_dump(), "next_digest_at": end}


async def start_schedule(conn: asyncpg.Connection, account: Mapping[str, Any], now: datetime) -> None:
    """Open a newly registered account's first digest window at `now`: the accounts module calls
    this right after inserting the account (same transaction). `account` is the inserted row."""
    end = schedule.next_due(
        account["digest_frequency"],
        account["digest_hour"],
        account["digest_weekday"],
        account["timezone"],
        now,
    )
    await conn.execute(Q.start_schedule, account["id"], now, end)


# --- the schedule follows the account ------------------------------------------------------------


async def follow_timezone(conn: asyncpg.Connection, before: asyncpg.Record, after: asyncpg.Record) -> bool:
    """A corrected time zone moves the open window's end to the member's hour in the new zone.
    Call inside the correcting transaction; True when the schedule moved."""
    if before["timezone"] == after["timezone"] or after["digest_frequency"] not in schedule.SCHEDULED:
        return False
    end = schedule.reschedule(
        after["digest_frequency"],
        after["digest_hour"],
        after["digest_weekday"],
        after["timezone"],
        after["digest_window_start"],
        datetime.now(UTC),
    )
    await conn.execute(Q.start_schedule, after["id"], after["digest_window_start"], end)
    return True
