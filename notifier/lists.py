"""Lists members choose between, each with its own consent evidence, double opt-in, `List-Id`
and one-click unsubscribe.

The default list (key `newsletter`, made by migration 0015) is the newsletter consent there
was before lists: its members are the accounts with `newsletter = true`, written through
`preferences.apply_preferences` as before, so the preferences document's `newsletter` and
newsletters sent without lists keep working; its `double_opt_in` is NOTIFIER_NEWSLETTER_DOUBLE_OPT_IN,
written by `follow_setting` when a process starts, so every reader treats all lists alike. Every other list keeps its members in
`list_members`, written only by `set_memberships` (called by `apply_preferences` for the `lists`
of a preferences change); each opt-in and opt-out of any list is a `consents` row naming the
list, with the source and the wording shown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from notifier import audit, i18n
from notifier.audit import Actor
from notifier.db import Q
from notifier.errors import FieldError, Problem
from notifier.validation import check_one_line

KEY_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
KEY_RULE = "must be 1-40 characters: a lower-case letter, then lower-case letters, digits or -"
# Keys another `List-Id` (`<KIND.domain>`) or a token's list already stands for.
RESERVED_KEYS = frozenset({"newsletter", "digest", "all", "service", "test", "confirmation", "list"})
WORDING_VERSION_PREFIX = "list"
SETTING = "NOTIFIER_NEWSLETTER_DOUBLE_OPT_IN"

log = logging.getLogger("notifier.lists")


class ListIn(BaseModel):
    """A new list; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=KEY_PATTERN, description="the list's permanent name, in URLs and List-Id")
    name: str = Field(min_length=1, max_length=100, description="shown to members")
    description: str = Field(
        default="", max_length=500, description="what members get, shown with the opt-in"
    )
    double_opt_in: StrictBool = Field(default=False, description="an opt-in counts once confirmed by e-mail")

    _lines = field_validator("name", "description")(check_one_line)


class ListPatch(BaseModel):
    """A merge patch of a list; the key never changes."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    double_opt_in: StrictBool | None = None

    @field_validator("name", "description")
    @classmethod
    def _lines(cls, value: str | None) -> str | None:
        return None if value is None else check_one_line(value)


def wording(row: Mapping[str, Any], locale: str = i18n.DEFAULT) -> str:
    """The consent wording a member agrees to when opting in to the list `row`, in their language
    (the list's name and description as the organisation wrote them)."""
    about = f" {row['description']}" if row["description"] else ""
    sentence = i18n.gettext(
        locale,
        i18n.N_("Send me “%(name)s”.%(about)s I can unsubscribe at any time with the link in every issue."),
    )
    return sentence % {"name": row["name"], "about": about}


def wording_version(row: Mapping[str, Any]) -> str:
    """Names the wording: the list and when its text last changed."""
    return f"{WORDING_VERSION_PREFIX}:{row['key']}:{row['updated_at']:%Y-%m-%dT%H:%M:%S}"


async def create(conn: asyncpg.Connection | asyncpg.Pool, new: ListIn) -> asyncpg.Record:
    """Store a new list. Raises Problem 409 when the key is taken, 422 when it is reserved."""
    if new.key in RESERVED_KEYS:
        raise Problem(
            422, "that key is reserved", errors=[{"field": "key", "message": f"{new.key!r} is reserved"}]
        )
    row = await conn.fetchrow(
        Q.insert_list, new.key, new.name.strip(), new.description.strip(), new.double_opt_in
    )
    if row is None:
        raise Problem(409, f"a list with key {new.key!r} already exists")
    return row


async def get(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> asyncpg.Record:
    """The list, or Problem 404."""
    row = await conn.fetchrow(Q.get_list, key)
    if row is None:
        raise Problem(404, "no list with that key")
    return row


async def follow_setting(conn: asyncpg.Connection | asyncpg.Pool, double_opt_in: bool) -> None:
    """Make the default list's `double_opt_in` the setting NOTIFIER_NEWSLETTER_DOUBLE_OPT_IN
    (`double_opt_in`). Called by each web and worker process as it starts and by `notifier
    migrate`; idempotent. A database not migrated yet is left for `notifier migrate`."""
    try:
        changed = await conn.fetchval(Q.set_default_double_opt_in, double_opt_in)
    except asyncpg.UndefinedTableError:
        log.warning(
            "the database is not migrated: the default list follows %s after `notifier migrate`", SETTING
        )
        return
    if changed is not None:
        log.info("the default list's double opt-in is now %s (%s)", "on" if double_opt_in else "off", SETTING)


async def update(conn: asyncpg.Connection | asyncpg.Pool, key: str, patch: ListPatch) -> asyncpg.Record:
    """Apply a merge patch; Problem 404 for an unknown key, 422 for a change of the default
    list's `double_opt_in` (it is the setting NOTIFIER_NEWSLETTER_DOUBLE_OPT_IN)."""
    before = await get(conn, key)
    if before["is_default"] and patch.double_opt_in not in (None, before["double_opt_in"]):
        message = f"the default list's double opt-in is the setting {SETTING}"
        raise Problem(422, message, errors=[{"field": "double_opt_in", "message": message}])
    fields = {
        k: v.strip() if isinstance(v, str) else v for k, v in patch.model_dump(exclude_none=True).items()
    }
    after = {**dict(before), **fields}
    row: asyncpg.Record = await conn.fetchrow(
        Q.update_list, key, after["name"], after["description"], after["double_opt_in"]
    )
    return row


async def archive(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> asyncpg.Record:
    """Archive the list: no longer shown to members nor sent to; its members and consent
    evidence stay. Idempotent. Problem 404 for an unknown key, 409 for the default list."""
    row = await conn.fetchrow(Q.archive_list, key)
    if row is None:
        await get(conn, key)
        raise Problem(409, "the default list cannot be archived")
    return row


async def subscribers(
    conn: asyncpg.Connection | asyncpg.Pool, rows: Sequence[Mapping[str, Any]]
) -> dict[int, int]:
    """How many members are subscribed to each of the lists `rows` (confirmed or not), by list id,
    in one statement."""
    return {
        r["id"]: r["subscribers"] for r in await conn.fetch(Q.list_subscribers, [row["id"] for row in rows])
    }


async def resolve(
    conn: asyncpg.Connection | asyncpg.Pool, keys: Sequence[str], field: str = "lists"
) -> list[asyncpg.Record]:
    """The lists named by `keys`, in that order; Problem 422 naming each unknown or archived one
    (`lists.1`)."""
    rows = {r["key"]: r for r in await conn.fetch(Q.lists_by_key, list(keys))}
    errors: list[FieldError] = []
    for i, key in enumerate(keys):
        row = rows.get(key)
        if row is None:
            errors.append({"field": f"{field}.{i}", "message": f"no list with key {key[:50]!r}"})
        elif row["archived_at"] is not None:
            errors.append({"field": f"{field}.{i}", "message": f"the list {key!r} is archived"})
    if errors:
        raise Problem(422, "unknown lists", errors=errors)
    return [rows[k] for k in dict.fromkeys(keys)]


async def memberships(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> list[asyncpg.Record]:
    """Every list not archived (the default first) with `subscribed` for the member."""
    return list(await conn.fetch(Q.memberships_of_account, account_id))


def parse_changes(value: Any, lists_by_key: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
    """The `lists` of a preferences change: `{key: true|false}` naming known lists (an archived
    one can be left, not joined). Raises Problem 422 naming each bad entry (`lists.KEY`)."""
    if not isinstance(value, Mapping):
        raise Problem(
            422,
            "the preferences are not valid",
            errors=[{"field": "lists", "message": "must be an object of list keys to true or false"}],
        )
    errors: list[FieldError] = []
    for key, wanted in value.items():
        where = f"lists.{str(key)[:50]}"
        if key not in lists_by_key:
            errors.append({"field": where, "message": "no such list"})
        elif not isinstance(wanted, bool):
            errors.append({"field": where, "message": "must be true or false"})
        elif wanted and lists_by_key[key]["archived_at"] is not None:
            errors.append({"field": where, "message": "the list is archived"})
    if errors:
        raise Problem(422, "the preferences are not valid", errors=errors)
    return dict(value)


async def set_memberships(
    conn: asyncpg.Connection,
    account_id: int,
    wanted: Mapping[str, bool],
    lists_by_key: Mapping[str, Mapping[str, Any]],
    actor: Actor,
    source: str,
    *,
    with_wording: bool,
    locale: str = i18n.DEFAULT,
) -> dict[str, dict[str, Any]]:
    """Subscribe or unsubscribe the member to each list of `wanted` (not the default list: its
    membership is `newsletter`, see `preferences.apply_preferences`), in the caller's
    transaction and in one statement for all the lists (`set_list_members`). Each change writes
    a consent row (with the list's wording when `with_wording`, in `locale` as the member was
    shown it) and leaving a list cancels what is still queued to the member for it; one audit
    row `lists.update` lists the changes. Returns {key: {before, after}} of what changed, in the
    order of `wanted`."""
    if not wanted:
        return {}
    rows = [lists_by_key[key] for key in wanted]
    shown = [with_wording and wanted[r["key"]] for r in rows]
    written = await conn.fetch(
        Q.set_list_members,
        account_id,
        [r["id"] for r in rows],
        [wanted[r["key"]] for r in rows],
        [wording(r, locale) if s else None for r, s in zip(rows, shown, strict=True)],
        [wording_version(r) if s else None for r, s in zip(rows, shown, strict=True)],
        source,
    )
    before = {w["list_id"]: w["before"] for w in written}
    changed = {
        r["key"]: {"before": before[r["id"]], "after": wanted[r["key"]]} for r in rows if r["id"] in before
    }
    if changed:
        await audit.record(conn, account_id, actor, "lists.update", {**changed, "source": source})
    return changed
