"""Accounts: register, correct, erase and export (the `/v1/accounts...` routes are in
notifier/api/accounts.py).

Registering an account creates its inbox (the account's messages) with the default preferences
of the schema: daily digest at 08:00 local time, weekday Monday, no newsletter.

What else changes with an account is called here, in the same transaction: registering opens
the first digest window (`preferences.start_schedule`) and a corrected time zone moves the open
window (`preferences.follow_timezone`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, field_validator

from notifier import audit, newsletter, preferences, suppression
from notifier.answers import (
    Account,
    AccountPreferences,
    ErasureReason,
    Export,
)
from notifier.db import Q
from notifier.errors import Problem
from notifier.idempotency_records import forget_external_id
from notifier.serialize import jsonable
from notifier.suppression import ListName, address_hash
from notifier.validation import Email, ExternalId, Locale, Name, TimeZone

# Why an account was erased; recorded in `erasures` without any personal data.
ERASURE_REASONS: tuple[str, ...] = get_args(ErasureReason)
# Fields a producer may correct with PATCH.
CORRECTABLE = ("email", "name", "timezone", "locale")


class NewAccount(BaseModel):
    """A member to register; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    external_id: ExternalId = Field(description="the producer's id: letters, digits and `. _ : @ + -`")
    email: Email = Field(description="validated (syntax, no DNS) and stored normalised")
    name: Name = Field(description="one line, trimmed")
    timezone: TimeZone = Field(default="UTC", description="an IANA time-zone name")
    locale: Locale = Field(default="en", description="a language tag")


class AccountPatch(BaseModel):
    """JSON merge patch of the correctable fields; absent fields stay, `null` is refused."""

    model_config = ConfigDict(extra="forbid")

    email: Email | None = None
    name: Name | None = None
    timezone: TimeZone | None = None
    locale: Locale | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _no_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null (these fields cannot be removed)")
        return value


def public_account(row: asyncpg.Record) -> Account:
    """The public view of an account row (its internal id stays internal)."""
    return Account.of_row(
        row, preferences=AccountPreferences.of_row(row, categories=row["digest_categories"])
    )


async def find_account(
    conn: asyncpg.Connection | asyncpg.Pool, external_id: str, *, lock: bool = False
) -> asyncpg.Record:
    """The account row, or a 404 problem."""
    row = await conn.fetchrow(Q.lock_account if lock else Q.get_account, external_id)
    if row is None:
        raise Problem(404, f"no account with external_id {external_id!r}")
    return row


async def account_id_of(conn: asyncpg.Connection | asyncpg.Pool, external_id: str) -> int:
    """The internal id of an account, or a 404 problem."""
    account_id: int | None = await conn.fetchval(Q.get_account_id, external_id)
    if account_id is None:
        raise Problem(404, f"no account with external_id {external_id!r}")
    return account_id


async def create_account(conn: asyncpg.Connection, new: NewAccount, actor: audit.Actor) -> asyncpg.Record:
    """Insert the account, open its first digest window and audit it; call inside a transaction.

    Raises Problem 409 when the external_id is taken.
    """
    row = await conn.fetchrow(
        Q.insert_account, new.external_id, new.email, new.name, new.timezone, new.locale
    )
    if row is None:
        raise Problem(409, f"an account with external_id {new.external_id!r} already exists")
    # The registering transaction's time (the row's default window start) opens the first window.
    await preferences.start_schedule(conn, row, row["digest_window_start"])
    row = await conn.fetchrow(Q.get_account_by_id, row["id"])
    created = {k: {"before": None, "after": v} for k, v in new.model_dump().items()}
    await audit.record(conn, row["id"], actor, "account.created", created)
    return row


async def correct(
    conn: asyncpg.Connection, before: asyncpg.Record, patch: AccountPatch, actor: audit.Actor
) -> asyncpg.Record:
    """Apply a correction to the (locked) account `before`, move its digest window if the time
    zone changed and audit it; call inside a transaction. Returns the account as it is after;
    nothing is written when nothing changes."""
    fields = patch.model_dump(exclude_unset=True)
    changes = audit.diff(dict(before), fields)
    if not changes:
        return before
    values = {name: fields.get(name, before[name]) for name in CORRECTABLE}
    after: asyncpg.Record = await conn.fetchrow(
        Q.update_account,
        before["id"],
        values["email"],
        values["name"],
        values["timezone"],
        values["locale"],
    )
    if await preferences.follow_timezone(conn, before, after):
        after = await conn.fetchrow(Q.get_account_by_id, before["id"])
    await audit.record(conn, before["id"], actor, "account.updated", changes)
    return after


async def _unsubscribes_to_keep(conn: asyncpg.Connection, account: asyncpg.Record) -> list[ListName]:
    """The suppression lists that keep an unsubscribe in force once the account is gone.

    An unsubscribe lives in the account's preferences; erasure would forget it, and a producer
    registering the address again must not start mailing it. Kept: the lists the member left
    through an unsubscribe and is still off (`all` when that is both).
    """
    left = set(await conn.fetchval(Q.unsubscribed_lists, account["id"]))
    digest_off = account["digest_frequency"] == "off" and bool(left & {"digest", "all"})
    newsletter_off = not account["newsletter"] and bool(left & {"newsletter", "all"})
    if digest_off and newsletter_off:
        return ["all"]
    if digest_off:
        return ["digest"]
    if newsletter_off:
        return ["newsletter"]
    return []


async def erase_account(
    conn: asyncpg.Connection, account: asyncpg.Record, reason: str, actor: audit.Actor
) -> asyncpg.Record:
    """Delete everything held on `account` and record the erasure; call inside a transaction.

    The account row cascades to its messages, digests, consents, e-mails, events, audit rows and
    idempotency records; the newsletters' figures keep what it counted (numbers only). Outbox rows
    without an account that were addressed to it go too, except a service e-mail still waiting to
    be sent (the notice of the erasure itself).
    Suppressions stay, being keyed by `address_hash` only; their free-text detail is cleared. An
    unsubscribe still in force becomes a suppression (`_unsubscribes_to_keep`), so it survives too.
    Idempotency records tied to no account lose the external id (`forget_external_id`). The
    notice, once sent, refused or suppressed, keeps nothing personal either (`record_results`).
    Returns the `erasures` row, which holds the reason and the actor and no personal data.
    """
    if reason not in ERASURE_REASONS:
        raise ValueError(reason)
    for list_name in await _unsubscribes_to_keep(conn, account):
        await suppression.add(conn, account["email"], "unsubscribed", list_name)
    await conn.execute(Q.delete_unowned_email_events, account["email"])
    await conn.execute(Q.delete_unowned_emails_to, account["email"])
    await conn.execute(Q.scrub_suppression_detail, address_hash(account["email"]))
    await newsletter.keep_erased_figures(conn, account["id"])
    await forget_external_id(conn, account["external_id"])
    await conn.execute(Q.delete_account, account["id"])
    erasure: asyncpg.Record = await conn.fetchrow(Q.insert_erasure, reason, actor.type, actor.name)
    return erasure


async def export_account(conn: asyncpg.Connection, account: asyncpg.Record) -> dict[str, Any]:
    """Everything held on the account, as one JSON-ready document (read in one snapshot) of the
    shape `answers.Export`."""
    account_id = account["id"]
    suppressions = [
        jsonable(r) for r in await conn.fetch(Q.export_suppressions, address_hash(account["email"]))
    ]
    public = public_account(account)
    return Export.model_validate(
        {
            "exported_at": datetime.now(UTC),
            "account": public,
            "preferences": public.preferences,
            "consents": [jsonable(r) for r in await conn.fetch(Q.export_consents, account_id)],
            "messages": [jsonable(r) for r in await conn.fetch(Q.export_messages, account_id)],
            "digests": [jsonable(r) for r in await conn.fetch(Q.export_digests, account_id)],
            "emails": [jsonable(r) for r in await conn.fetch(Q.export_emails, account_id)],
            "events": [jsonable(r) for r in await conn.fetch(Q.export_events, account_id)],
            "audit": [dict(r) for r in await conn.fetch(Q.export_audit, account_id)],
            "suppressed": bool(suppressions),
            "suppressions": suppressions,
        }
    ).model_dump(mode="json")
