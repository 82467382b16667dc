"""Console users: the people who sign in to the console, each with one role (docs/console.md).

An admin (or `notifier console-user add`) adds a user, who is `invited` until the first sign-in
makes them `active`; a `disabled` user cannot sign in and their sessions end. The invitation and
each magic link are service e-mails through the outbox (`templates/mail/service/console_*`).

A magic link is single-use, valid for LINK_SECONDS and bound to the browser that asked for it:
the database keeps only sha256(token ":" nonce), the nonce living in a cookie of that browser, so
the link taken alone (from a mailbox, a log, the outbox row) opens nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal, get_args

import asyncpg

from notifier import audit, queues, suppression, validation
from notifier.audit import Actor
from notifier.db import Q
from notifier.mail import compose, outbox
from notifier.mail.compose import HeaderError

Role = Literal["marketing", "support", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
# What each role is for, shown next to the role on the users page and in the invitation.
ROLE_DUTIES: dict[Role, str] = {
    "marketing": "newsletters, lists, segments, templates and their figures",
    "support": "find, export, correct and erase members",
    "operator": "deliverability, suppressions, re-drives and webhooks",
    "admin": "everything, and console users, keys and settings",
}
Status = Literal["invited", "active", "disabled"]

LINK_SECONDS = 15 * 60
INVITATION_TEMPLATE = "service/console_invitation"
LINK_TEMPLATE = "service/console_sign_in_link"


class UserProblem(Exception):
    """A user cannot be added or changed as asked; the message names the field's problem."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# The form an address is stored and looked up in: trimmed, lower-cased, as the suppression list.
normalise = suppression.normalise


def _check(email: str, name: str, role: str) -> None:
    try:
        validation.normalize_email(email)  # the API's own address rule
    except ValueError as exc:
        raise UserProblem("email", str(exc)) from None
    try:
        compose.check_address(email)
    except HeaderError:
        raise UserProblem("email", "this address cannot be written into an e-mail") from None
    if not name.strip() or len(name) > 200:
        raise UserProblem("name", "give a name (at most 200 characters)")
    if role not in ROLES:
        raise UserProblem("role", f"choose one of {', '.join(ROLES)}")


async def add(conn: asyncpg.Connection, email: str, name: str, role: str, actor: Actor) -> asyncpg.Record:
    """Add an invited user (call inside a transaction; audited as `console_user.added`). Raises
    UserProblem for a bad field or an address that is already a user."""
    email = normalise(email)
    _check(email, name, role)
    row: asyncpg.Record | None = await conn.fetchrow(Q.staff_insert, email, name.strip(), role, str(actor))
    if row is None:
        raise UserProblem("email", "this address is already a console user")
    await audit.record(
        conn, None, actor, "console_user.added", {"user_id": row["id"], "email": email, "role": role}
    )
    return row


async def invite(
    conn: asyncpg.Connection, public_url: str, email: str, name: str, role: str, actor: Actor
) -> asyncpg.Record:
    """Add a user and queue their invitation e-mail (call inside a transaction; ring the service
    queue after commit). Raises UserProblem like `add`."""
    row = await add(conn, email, name, role, actor)
    await _mail(
        conn,
        row,
        INVITATION_TEMPLATE,
        role=role,
        duties=ROLE_DUTIES[row["role"]],
        sign_in_url=f"{public_url}/console/sign-in",
    )
    return row


async def _mail(conn: asyncpg.Connection, user: asyncpg.Record, template: str, **context: object) -> None:
    """Queue a service e-mail to a console user (no member account: it is stored without one)."""
    await outbox.add(
        conn,
        kind="service",
        to_address=user["email"],
        template=template,
        context={"account": {"name": user["name"], "email": user["email"]}, **context},
        queue=queues.SERVICE,
    )


async def all_users(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    """Every user, admins first, then by address."""
    return list(await conn.fetch(Q.staff_all))


async def by_email(conn: asyncpg.Connection | asyncpg.Pool, email: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(Q.staff_by_email, normalise(email))
    return row


async def change(
    conn: asyncpg.Connection,
    user_id: int,
    actor: Actor,
    *,
    role: str | None = None,
    status: str | None = None,
) -> asyncpg.Record | None:
    """Change a user's role and/or disable or re-enable them (call inside a transaction; audited
    as `console_user.changed`). A change of role or a disabling ends the user's sessions, so the
    new rights hold at once. None for an unknown user; UserProblem for an unknown role or status."""
    if role is not None and role not in ROLES:
        raise UserProblem("role", f"choose one of {', '.join(ROLES)}")
    if status is not None and status not in ("active", "disabled"):
        raise UserProblem("status", "choose active or disabled")
    before = await conn.fetchrow(Q.staff_by_id_for_update, user_id)
    if before is None:
        return None
    after: asyncpg.Record = await conn.fetchrow(Q.staff_update, user_id, role, status)
    changes = audit.diff(dict(before), {"role": after["role"], "status": after["status"]})
    if changes:
        await conn.execute(Q.console_delete_user_sessions, user_id)
        await audit.record(
            conn,
            None,
            actor,
            "console_user.changed",
            {"user_id": user_id, "email": after["email"], **changes},
        )
    return after


def link_hash(token: str, nonce: str) -> bytes:
    """What is stored of a magic link: the token bound to the nonce of the browser that asked."""
    return hashlib.sha256(f"{token}:{nonce}".encode()).digest()


async def send_link(
    conn: asyncpg.Connection, public_url: str, email: str, nonce: str, next_path: str = "/console/"
) -> bool:
    """Queue a sign-in link for `email` bound to `nonce` (landing on `next_path`, a console path
    the caller checked) when the address is an invited or active user (call inside a transaction; ring the service queue after commit). True when a link was
    queued; the caller answers the same either way, so nobody learns who is a user."""
    user = await by_email(conn, email)
    if user is None or user["status"] == "disabled":
        return False
    token = secrets.token_urlsafe(32)
    await conn.execute(Q.staff_purge_links)
    await conn.execute(Q.staff_insert_link, link_hash(token, nonce), user["id"], LINK_SECONDS, next_path)
    await _mail(
        conn,
        user,
        LINK_TEMPLATE,
        link=f"{public_url}/console/sign-in/link?token={token}",
        minutes=LINK_SECONDS // 60,
    )
    return True


async def use_link(conn: asyncpg.Connection | asyncpg.Pool, token: str, nonce: str) -> asyncpg.Record | None:
    """The user a magic link signs in (with `next_path`, where to land), marking the link used;
    None when the link is unknown, used,
    expired, asked for by another browser, or its user disabled."""
    if not token or not nonce or len(token) > 100 or len(nonce) > 100:
        return None
    row: asyncpg.Record | None = await conn.fetchrow(Q.staff_use_link, link_hash(token, nonce))
    return row


async def signed_in(conn: asyncpg.Connection | asyncpg.Pool, user_id: int) -> None:
    """Record a sign-in: an invited user becomes active; `last_sign_in_at` is now."""
    await conn.execute(Q.staff_signed_in, user_id)
