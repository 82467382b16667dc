"""Console sessions: a person signed in by a magic link or OpenID Connect (or, in development
only, an API key) gets a server-side session that carries their role.

The session id lives only in a cookie (HttpOnly, SameSite=Strict, Path=/console, Secure when
PUBLIC_URL is https); the database keeps its sha256, the user (or key), the role, a per-session
CSRF token, when it was signed in and last used. A session ends after
NOTIFIER_CONSOLE_IDLE_MINUTES without a request and NOTIFIER_CONSOLE_SESSION_HOURS after sign-in;
disabling a user, changing their role or revoking the key ends its sessions at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from notifier.api import auth
from notifier.api.headers import is_token_text
from notifier.audit import Actor
from notifier.db import Q
from notifier.ratelimit import Window
from notifier.settings import Settings
from notifier.staff import Role

# Who may open a route: anyone, anyone signed in, or a role (admin may open everything).
Access = Literal["public", "signed-in", "marketing", "support", "operator", "admin"]
Method = Literal["link", "oidc", "api_key"]

SESSION_COOKIE = "notifier_console"
SIGN_IN_COOKIE = "notifier_console_signin"  # double-submit token of the sign-in form
SIGN_IN_WINDOW_SECONDS = 15 * 60


@dataclass(frozen=True)
class ConsoleSession:
    id_hash: bytes
    user_id: int | None  # None for an API-key session (development)
    key_id: int | None
    name: str
    email: str | None
    role: Role
    method: Method
    csrf_token: str
    signed_in_at: datetime
    expires_at: datetime

    @property
    def actor(self) -> Actor:
        """The audit actor of everything done in this session: the person and their role
        (`console:ada@example.org (support)`), or the key in development (`operator:<key name>`)."""
        if self.user_id is None:
            return Actor("operator", self.name)
        return Actor("console", f"{self.email} ({self.role})", self.user_id)

    @property
    def quota_owner(self) -> str:
        """Whom per-person quotas (test-sends an hour) count against."""
        return f"user:{self.user_id}" if self.user_id is not None else f"key:{self.key_id}"

    def allows(self, access: Access) -> bool:
        """Whether this session may open a route declaring `access`."""
        return access in ("public", "signed-in") or self.role == "admin" or self.role == access

    def fresh(self, settings: Settings) -> bool:
        """Signed in within NOTIFIER_CONSOLE_FRESH_MINUTES (for dangerous actions)."""
        return datetime.now(UTC) - self.signed_in_at < timedelta(minutes=settings.console_fresh_minutes)


def _hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


def role_of_key(scopes: frozenset[str] | list[str]) -> Role | None:
    """The console role a key's scopes grant (development sign-in): admin, newsletters →
    marketing; None for neither."""
    if "admin" in scopes:
        return "admin"
    if "newsletters" in scopes:
        return "marketing"
    return None


def sign_in_throttle(attempts: int) -> Window:
    """At most `attempts` failed sign-ins per client within SIGN_IN_WINDOW_SECONDS."""
    return Window("console-sign-in", attempts, SIGN_IN_WINDOW_SECONDS)


class SignInRefused(Exception):
    """The sign-in cannot go on; the message is fit to show."""


async def open_session(
    pool: asyncpg.Pool | asyncpg.Connection,
    settings: Settings,
    *,
    role: Role,
    method: Method,
    user_id: int | None = None,
    key_id: int | None = None,
    user_agent: str = "",
) -> str:
    """Open a session for a user (or a key) and return the id for the cookie. Expired sessions
    are purged on the way."""
    session_id = secrets.token_urlsafe(32)
    await pool.execute(Q.console_purge_sessions, settings.console_idle_minutes)
    await pool.execute(
        Q.console_insert_session,
        _hash(session_id),
        user_id,
        key_id,
        role,
        method,
        secrets.token_urlsafe(32),
        settings.console_session_hours * 3600,
        user_agent[:300],
    )
    return session_id


async def sign_in_with_key(pool: asyncpg.Pool, settings: Settings, key: str, user_agent: str = "") -> str:
    """Development only (NOTIFIER_CONSOLE_KEY_SIGN_IN): open a session for an API key; returns the
    id for the cookie. Raises SignInRefused with a message fit to show."""
    if not settings.console_key_sign_in:
        raise SignInRefused("signing in with an API key is turned off; ask for a sign-in link")
    key = key.strip()
    if not key:
        raise SignInRefused("paste an API key")
    row = await pool.fetchrow(Q.console_key_by_hash, auth.hash_key(key)) if is_token_text(key) else None
    if row is None:
        raise SignInRefused("this API key is not valid (unknown or revoked)")
    role = role_of_key(list(row["scopes"]))
    if role is None:
        raise SignInRefused("the console needs a key with the admin or newsletters scope")
    return await open_session(
        pool, settings, role=role, method="api_key", key_id=row["id"], user_agent=user_agent
    )


async def load(pool: asyncpg.Pool, settings: Settings, session_id: str | None) -> ConsoleSession | None:
    """The live session for a cookie value, marking it used; None when unknown, idle too long,
    past its absolute end, or its user disabled or key revoked."""
    if not session_id or len(session_id) > 128 or not is_token_text(session_id):
        return None
    row = await pool.fetchrow(Q.console_touch_session, _hash(session_id), settings.console_idle_minutes)
    if row is None:
        return None
    return ConsoleSession(
        bytes(row["id_hash"]),
        row["user_id"],
        row["api_key_id"],
        row["name"],
        row["email"],
        row["role"],
        row["method"],
        row["csrf_token"],
        row["signed_in_at"],
        row["expires_at"],
    )


async def of_user(pool: asyncpg.Pool, session: ConsoleSession) -> list[asyncpg.Record]:
    """The live sessions of the session's user (or key), newest first."""
    if session.user_id is not None:
        return list(await pool.fetch(Q.console_user_sessions, session.user_id))
    return list(await pool.fetch(Q.console_key_sessions, session.key_id))


async def sign_out(pool: asyncpg.Pool, session: ConsoleSession) -> None:
    """End the session. Idempotent."""
    await pool.execute(Q.console_delete_session, session.id_hash)


async def sign_out_everywhere(pool: asyncpg.Pool, session: ConsoleSession) -> int:
    """End every session of the session's user (or key), this one included; how many ended."""
    if session.user_id is not None:
        return int(await pool.fetchval(Q.console_delete_user_sessions, session.user_id))
    return int(await pool.fetchval(Q.console_delete_key_sessions, session.key_id))


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
