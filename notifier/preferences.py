"""A member's digest and newsletter preferences: `apply_preferences`, the one function every
writer of preferences uses (the API in notifier/api/preferences.py, the preference centre,
unsubscribe links).

Defaults (for a new account): a daily digest at 08:00 local time, Monday for weekly, time zone
UTC, no newsletter, no choice per category (each follows its declared default or the member's
frequency), no quiet hours.

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

from notifier import audit, categories, digest_windows, i18n, lists, schedule
from notifier.answers import CurrentPreferences
from notifier.audit import Actor
from notifier.db import Q
from notifier.errors import FieldError, Problem
from notifier.serialize import merge_patch
from notifier.validation import Category, check_timezone, errors_of

FIELDS = (
    "digest_frequency",
    "digest_hour",
    "digest_weekday",
    "timezone",
    "newsletter",
    "categories",
    "quiet_hours",
)
# Shown by GET; a PUT may send them back (GET, edit, PUT) and they are ignored.
READ_ONLY = frozenset({"next_digest_at", "digest_window_start"})
_SCHEDULE_FIELDS = frozenset(
    {"digest_frequency", "digest_hour", "digest_weekday", "timezone", "categories", "quiet_hours"}
)
# A change of these moves the open windows' ends (the others only open or close windows).
_CLOCK_FIELDS = frozenset({"digest_hour", "digest_weekday", "timezone", "quiet_hours"})
_WALL_CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class CategoryChoice(BaseModel):
    """A member's choice for one category."""

    model_config = ConfigDict(extra="forbid")

    frequency: schedule.Frequency


class QuietHours(BaseModel):
    """No e-mail between `start` and `end` (local `HH:MM`; end before start crosses midnight),
    and with `weekends` none on Saturday and Sunday either. Service e-mails ignore them."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(pattern=_WALL_CLOCK, examples=["22:00"])
    end: str = Field(pattern=_WALL_CLOCK, examples=["07:00"])
    weekends: StrictBool = False

    @field_validator("end")
    @classmethod
    def _not_empty(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("start"):
            raise ValueError("must differ from start")
        return value


class Preferences(BaseModel):
    """The preferences, validated together. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    digest_frequency: schedule.Frequency = "daily"
    digest_hour: int = Field(default=8, ge=0, le=23, description="local hour for daily and weekly")
    digest_weekday: int = Field(default=1, ge=1, le=7, description="ISO weekday for weekly, 1 = Monday")
    timezone: str = "UTC"
    newsletter: StrictBool = False
    categories: dict[Category, CategoryChoice] = Field(
        default_factory=dict,
        description="frequency per category (absent: the category's default, else digest_frequency)",
    )
    quiet_hours: QuietHours | None = None

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
    """The preferences of an account row as a plain dict (the row's `digest_categories` column
    is the document's `categories`)."""
    out = {name: row[name] for name in FIELDS if name != "categories"}
    out["categories"] = row["categories"] if "categories" in row.keys() else row["digest_categories"]  # noqa: SIM118
    return out


def _merged_categories(before: Mapping[str, Any], change: Any) -> Any:
    """The member's choices with a change applied per category: a category left out keeps its
    choice, `null` (or `{"frequency": null}`) removes it. Anything but an object is left for
    validation to refuse."""
    if not isinstance(change, Mapping):
        return change
    cleared = {
        k: None if isinstance(c, Mapping) and c.get("frequency", "") is None else c for k, c in change.items()
    }
    return merge_patch(before, cleared)


def validate(
    before: Mapping[str, Any],
    changes: Mapping[str, Any],
    declared: Mapping[str, categories.Category] | None = None,
) -> Preferences:
    """`before` with `changes` applied, validated as a whole; with `declared` (the declared
    categories), each category named in the change must be declared, and a required one cannot
    be turned off (the error names `categories.<key>.frequency`). Raises InvalidPreferences."""
    if not isinstance(changes, Mapping):
        raise InvalidPreferences([{"field": "body", "message": "must be a JSON object"}])
    old = current(before)
    merged = {**old, **{k: v for k, v in changes.items() if k not in READ_ONLY}}
    if "categories" in changes:
        merged["categories"] = _merged_categories(old["categories"], changes["categories"])
    try:
        after = Preferences.model_validate(merged, context={"stored_timezone": before["timezone"]})
    except ValidationError as exc:
        raise InvalidPreferences(errors_of(exc)) from None
    change = changes.get("categories")
    if declared is not None and isinstance(change, Mapping):
        errors: list[FieldError] = []
        for key in change:
            if key not in declared:
                errors.append({"field": f"categories.{key}", "message": "is not a declared category"})
            elif (
                declared[key].required
                and key in after.categories
                and after.categories[key].frequency == "off"
            ):
                errors.append(
                    {
                        "field": f"categories.{key}.frequency",
                        "message": "this category is required: it cannot be off",
                    }
                )
        if errors:
            raise InvalidPreferences(errors)
    return after


def in_use(prefs: Mapping[str, Any], declared: Mapping[str, categories.Category]) -> set[str]:
    """The frequencies the member's categories run on under `prefs` (a preferences dict)."""
    return categories.frequencies_in_use(prefs["categories"], prefs["digest_frequency"], declared)


async def _last_sent(conn: asyncpg.Connection, account_id: int) -> dict[str, datetime]:
    rows = await conn.fetch(Q.last_digest_per_frequency, account_id)
    return {r["frequency"]: r["last"] for r in rows}


async def _replan(
    conn: asyncpg.Connection,
    row: Mapping[str, Any],
    after: Mapping[str, Any],
    declared: Mapping[str, categories.Category],
    clock_changed: bool,
    now: datetime,
) -> tuple[datetime, datetime | None, dict[str, Any]]:
    """(window start, next due, clocks document) of the account `row` under the preferences
    `after` (see digest_windows.replan); "immediate" categories with waiting messages are due at
    once (at the end of quiet hours if inside them), a coalescing window in progress stays."""
    before = digest_windows.stored(row)
    used = in_use(after, declared)
    last = await _last_sent(conn, row["id"]) if clock_changed else {}
    start, windows = digest_windows.replan(
        before, row["digest_window_start"], used, after, clock_changed=clock_changed, last_sent=last, now=now
    )
    immediate = None
    if "immediate" in used:
        before_used = in_use(current(row), declared)
        pending = row["next_digest_at"]
        if (
            "immediate" in before_used
            and pending is not None
            and pending not in {e for _, e in before.values()}
        ):
            immediate = pending  # a coalescing window in progress stays
        elif await conn.fetchval(Q.has_pending_messages, row["id"]):
            # Checked per category by the pass: at worst one pass finds nothing to say.
            quiet = schedule.Quiet.of(after["quiet_hours"])
            immediate = quiet.end_after(now, schedule.zone(after["timezone"])) if quiet else now
    nxt = digest_windows.earliest(windows, immediate)
    return start, nxt, digest_windows.document(windows, after["digest_frequency"], start, nxt)


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


async def document(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: int, prefs: Mapping[str, Any]
) -> CurrentPreferences:
    """The preferences document GET and PUT answer (the API and the member API): `prefs` (an
    account's preferences row, or what `apply_preferences` returned) with `next_digest_at` and
    `lists`, `{key: subscribed}` of every list not archived, the default list first."""
    memberships = {r["key"]: r["subscribed"] for r in await lists.memberships(conn, account_id)}
    return CurrentPreferences.of_row(prefs, next_digest_at=prefs.get("next_digest_at"), lists=memberships)


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
    locale: str = i18n.DEFAULT,
) -> dict[str, Any]:
    """Validate and save a change of preferences for one account, atomically, and return the
    preferences now in force (the fields of FIELDS plus `next_digest_at`).

    `changes` holds any subset of FIELDS and lists (`{key: bool}`; the default list's key is the
    same as `newsletter`; read-only fields from GET are ignored; `categories` is merged per
    category, `null` removing a choice). Lists other than the default are written by
    `lists.set_memberships`. In one transaction (a savepoint if the
    caller has one open) it locks the account, writes the new values, writes an audit row
    (`preferences.update`, before/after of each changed field, by `actor`), reschedules the open
    digest window, and, when `newsletter` changes, records a consent row with `source` (e.g.
    "api", "preference-centre", "one-click") and the `wording` / `wording_version` shown.

    Rescheduling applies to the open window of each frequency in use (`digest_windows.replan`):
    the new end is the first scheduled time after the window's start under the new preferences
    (daily → weekly: no daily digest tonight); if that has passed, the next one after now, and
    never in the local period of the last digest of that frequency. "off" sets no due time;
    "immediate" is due at once when messages are waiting. Unchanged values write nothing.
    Idempotent.

    Raises InvalidPreferences (a 422 Problem naming the fields) or AccountNotFound.
    """
    now = now or datetime.now(UTC)
    async with conn.transaction():
        row = await conn.fetchrow(Q.preferences_for_update, account_id)
        if row is None:
            raise AccountNotFound(account_id)
        changes, wanted, by_key = await _list_changes(conn, changes)
        declared = await categories.all_categories(conn)
        after = validate(row, changes, declared).model_dump()
        if wanted:
            await lists.set_memberships(
                conn,
                account_id,
                wanted,
                by_key,
                actor,
                source,
                with_wording=wording is not None,
                locale=locale,
            )
        changed = audit.diff(current(row), after)
        if not changed:
            return {**current(row), "next_digest_at": row["next_digest_at"]}
        start, end, clocks = row["digest_window_start"], row["next_digest_at"], row["digest_clocks"]
        if _SCHEDULE_FIELDS & changed.keys():
            start, end, clocks = await _replan(
                conn, row, after, declared, bool(_CLOCK_FIELDS & changed.keys()), now
            )
        await conn.execute(
            Q.update_preferences,
            account_id,
            after["digest_frequency"],
            after["digest_hour"],
            after["digest_weekday"],
            after["timezone"],
            after["newsletter"],
            start,
            end,
            after["categories"],
            after["quiet_hours"],
            clocks,
        )
        await audit.record(conn, account_id, actor, "preferences.update", {**changed, "source": source})
        if "newsletter" in changed:
            await conn.execute(
                Q.insert_consent, account_id, after["newsletter"], source, wording, wording_version
            )
            if not after["newsletter"]:
                # However the member opts out (API, link, page), nothing still queued goes to them.
                await conn.execute(Q.cancel_queued_newsletters_of_account, account_id)
        return {**after, "next_digest_at": end}


async def start_schedule(conn: asyncpg.Connection, account: Mapping[str, Any], now: datetime) -> None:
    """Open a newly registered account's first digest windows at `now`: the accounts module calls
    this right after inserting the account (same transaction). `account` is the inserted row."""
    prefs = current(account)
    windows = digest_windows.opened(in_use(prefs, await categories.all_categories(conn)), prefs, now)
    end = digest_windows.earliest(windows, None)
    clocks = digest_windows.document(windows, prefs["digest_frequency"], now, end)
    await conn.execute(Q.start_schedule, account["id"], now, end, clocks)


# --- the schedule follows the account ------------------------------------------------------------


async def follow_timezone(conn: asyncpg.Connection, before: asyncpg.Record, after: asyncpg.Record) -> bool:
    """A corrected time zone moves the open window's end to the member's hour in the new zone.
    Call inside the correcting transaction; True when the schedule moved."""
    if before["timezone"] == after["timezone"]:
        return False
    declared = await categories.all_categories(conn)
    prefs = current(after)
    if not in_use(prefs, declared) & schedule.SCHEDULED:
        return False
    start, end, clocks = await _replan(conn, after, prefs, declared, True, datetime.now(UTC))
    await conn.execute(Q.start_schedule, after["id"], start, end, clocks)
    return True
