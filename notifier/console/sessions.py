"""Console sign-in: an API key pasted once is exchanged for a server-side session.

The session id lives only in a cookie (HttpOnly, SameSite=Strict, Path=/console, Secure when
PUBLIC_URL is https); the database keeps its sha256, the key it came from, the scope it grants
(`admin` sees everything, `newsletters` only the newsletter pages), a per-session CSRF token and
an expiry. Every request re-checks the key, so revoking it ends its sessions at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from notifier.api import auth
from notifier.api.headers import is_token_text
from notifier.audit import Actor
from notifier.db import Q
from notifier.ratelimit import Window

ConsoleScope = Literal["admin", "newsletters"]

SESSION_COOKIE = "notifier_console"
SIGN_IN_COOKIE = "notifier_console_signin"  # double-submit token of the sign-in form
SESSION_SECONDS = 12 * 3600
SIGN_IN_WINDOW_SECONDS = 15 * 60


@dataclass(frozen=True)
class ConsoleSession:
    id_hash: bytes
    key_id: int
    key_name: str
    scope: ConsoleScope
    csrf_token: str
    expires_at: datetime

    @property
    def actor(self) -> Actor:
        """The audit actor of everything done in this session."""
        return Actor("operator", self.key_name)

    def allows(self, scope: ConsoleScope) -> bool:
        return self.scope == "admin" or self.scope == scope


def _hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


def scope_of(scopes: frozenset[str] | list[str]) -> ConsoleScope | None:
    """The console scope a key's scopes grant: admin over newsletters; None for neither."""
    if "admin" in scopes:
        return "admin"
    if "newsletters" in scopes:
        return "newsletters"
    return None


def sign_in_throttle(attempts: int) -> Window:
    """At most `attempts` failed sign-ins per client within SIGN_IN_WINDOW_SECONDS."""
    return Window("console-sign-in", attempts, SIGN_IN_WINDOW_SECONDS)


class SignInRefused(Exception):
    """The pasted key is unknown, revoked, or has neither the admin nor the newsletters scope."""


async def sign_in(pool: asyncpg.Pool, key: str) -> tuple[str, ConsoleSession]:
    """Open a session for `key`; returns (the id for the cookie, the session).

    Raises SignInRefused with a message fit to show. Expired sessions are purged on the way.
    """
    key = key.strip()
    if not key:
        raise SignInRefused("paste an API key")
    if not is_token_text(key):
        raise SignInRefused("this API key is not valid (unknown or revoked)")
    row = await pool.fetchrow(Q.console_key_by_hash, auth.hash_key(key))
    if row is None:
        raise SignInRefused("this API key is not valid (unknown or revoked)")
    scope = scope_of(list(row["scopes"]))
    if scope is None:
        raise SignInRefused("the console needs a key with the admin or newsletters scope")
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.console_purge_sessions)
        expires_at = await conn.fetchval(
            Q.console_insert_session, _hash(session_id), row["id"], scope, csrf, SESSION_SECONDS
        )
    return session_id, ConsoleSession(_hash(session_id), row["id"], row["name"], scope, csrf, expires_at)


async def load(pool: asyncpg.Pool, session_id: str | None) -> ConsoleSession | None:
    """The live session for a cookie value, or None (unknown, expired, or its key revoked)."""
    if not session_id or len(session_id) > 128 or not is_token_text(session_id):
        return None
    row = await pool.fetchrow(Q.console_touch_session, _hash(session_id))
    if row is None:
        return None
    return ConsoleSession(
        bytes(row["id_hash"]),
        row["api_key_id"],
        row["name"],
        row["scope"],
        row["csrf_token"],
        row["expires_at"],
    )


async def sign_out(pool: asyncpg.Pool, session: ConsoleSession) -> None:
    """End the session. Idempotent."""
    await pool.execute(Q.console_delete_session, session.id_hash)


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
