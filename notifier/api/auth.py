"""API keys: created once and shown once, stored as a SHA-256 hash, checked on every `/v1` route.

Routes declare the scope they need with `@requires("messages")`; a key with the `admin` scope may
do everything. No key or an unknown/revoked key: 401. A key without the scope: 403.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import asyncpg
from aiohttp import web

from notifier.api.headers import text_header
from notifier.api.problems import Handler, Problem
from notifier.audit import Actor
from notifier.db import Q
from notifier.resources import POOL
from notifier.settings import Settings

Scope = Literal["accounts", "messages", "service", "newsletters", "admin"]
SCOPES: tuple[Scope, ...] = ("accounts", "messages", "service", "newsletters", "admin")
KEY_PREFIX = "ntf_"

# A verified key is remembered this long per process, so a request costs no extra query; a
# revocation therefore takes effect within this many seconds on every web process.
CACHE_SECONDS = 5.0
# last_used_at is written at most this often per key and process.
TOUCH_SECONDS = 60.0


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @property
    def actor(self) -> Actor:
        return Actor("api_key", self.name)


API_KEY = web.RequestKey("api_key", ApiKey)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_key(
    pool: asyncpg.Pool | asyncpg.Connection, name: str, scopes: list[str]
) -> tuple[int, str]:
    """Store a new key's hash; returns (id, key). The key is not recoverable afterwards."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}")
    if not name.strip():
        raise ValueError("a key needs a name")
    key = new_key()
    key_id: int = await pool.fetchval(
        Q.insert_api_key,
        name.strip(),
        key[: len(KEY_PREFIX) + 6],
        hash_key(key),
        sorted(set(scopes)),
    )
    return key_id, key


async def list_keys(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every key with its state; never the key itself."""
    rows: list[asyncpg.Record] = await pool.fetch(Q.list_api_keys)
    return rows


async def revoke_key(pool: asyncpg.Pool, key_id: int) -> bool:
    """Revoke a key; False when there is no such active key."""
    result = await pool.execute(Q.revoke_api_key, key_id)
    return bool(result.endswith(" 1"))


class KeyCache:
    """Per-process memory of verified keys (see CACHE_SECONDS) and of when each was last touched."""

    def __init__(self) -> None:
        self._keys: dict[bytes, tuple[float, ApiKey | None]] = {}
        self._touched: dict[int, float] = {}

    async def lookup(self, pool: asyncpg.Pool, key: str) -> ApiKey | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._keys.get(digest)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            found = hit[1]
        else:
            row = await pool.fetchrow(Q.active_api_key, digest)
            found = ApiKey(row["id"], row["name"], frozenset(row["scopes"])) if row else None
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[digest] = (now, found)
        if found is not None and now - self._touched.get(found.id, -TOUCH_SECONDS) >= TOUCH_SECONDS:
            self._touched[found.id] = now
            await pool.execute(Q.touch_api_key, found.id)
        return found


KEY_CACHE = web.AppKey("key_cache", KeyCache)


class RateLimiter:
    """Token buckets per API key in this process: `rate` requests/s sustained, `burst` at once.

    Per process on purpose: it costs no round trip to Redis on every request. With N web
    processes a key may make up to N times the rate; size the setting accordingly.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[int, tuple[float, float]] = {}

    def take(self, key_id: int, now: float | None = None) -> float:
        """0.0 when the request may go ahead, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key_id] = (tokens - 1.0, now)
        return 0.0


RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)

H = TypeVar("H", bound=Callable[..., Any])


def requires(scope: Scope) -> Callable[[H], H]:
    """Mark a handler as needing an API key with `scope` (checked by `auth_middleware`)."""

    def mark(handler: H) -> H:
        handler.required_scope = scope  # type: ignore[attr-defined]
        return handler

    return mark


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="notifier"'})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every route whose handler declares a scope."""
    scope: Scope | None = getattr(request.match_info.handler, "required_scope", None)
    if scope is None:
        return await handler(request)
    await authenticate(request, scope)
    return await handler(request)


async def authenticate(request: web.Request, scope: Scope) -> ApiKey:
    """Check the request's `Authorization: Bearer` key for `scope` (and its rate) and remember it
    on the request; raises the 401 / 403 / 429 Problem otherwise. The middleware calls this for
    `@requires` handlers; a handler that answers people without a key too calls it itself."""
    header = text_header(request, "Authorization")
    if header is None and "Authorization" in request.headers:
        raise _unauthorized("the Authorization header must be printable ASCII: `Bearer <key>`")
    kind, _, key = (header or "").partition(" ")
    if kind.lower() != "bearer" or not key.strip():
        raise _unauthorized("send an API key as `Authorization: Bearer <key>`")
    api_key = await request.app[KEY_CACHE].lookup(request.app[POOL], key.strip())
    if api_key is None:
        raise _unauthorized("the API key is not valid (unknown or revoked)")
    if not api_key.allows(scope):
        raise Problem(403, f"this API key lacks the `{scope}` scope")
    wait = request.app[RATE_LIMITER].take(api_key.id)
    if wait > 0:
        raise Problem(
            429,
            "too many requests for this API key; slow down",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    request[API_KEY] = api_key
    return api_key


def api_key_of(request: web.Request) -> ApiKey:
    key: ApiKey = request[API_KEY]
    return key


def setup(app: web.Application, settings: Settings) -> None:
    app[KEY_CACHE] = KeyCache()
    app[RATE_LIMITER] = RateLimiter(settings.api_rate_limit, settings.api_rate_burst)
