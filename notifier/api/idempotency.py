"""`Idempotency-Key` for POST routes: a repeated request returns the first answer, never a second effect.

Usage in a handler (the route must be behind `@requires(...)`, so an API key is known)::

    payload = await read_json(request)
    async with idempotent(request, payload) as idem:
        if idem.replayed:
            return idem.response                      # the stored answer, marked as a replay
        row = await idem.conn.fetchrow(Q.insert_x, ...)  # the effect, inside the transaction
        idem.respond(201, body_json, headers={"Location": ...}, account_id=row["account_id"])
    # committed here: enqueue jobs, ring doorbells, etc.
    return idem.response

Semantics:
- The key (header `Idempotency-Key`, 1 to 255 printable ASCII characters) is scoped to the API key
  and the route (method and path template). The request is identified by a hash of the concrete
  path and the canonical JSON body, so whitespace and key order do not matter.
- `idem.conn` is a pooled connection inside a transaction. The record is claimed with
  `INSERT ... ON CONFLICT DO NOTHING` in that same transaction and completed with the response
  before commit. A concurrent repeat blocks on the uncommitted row, then finds the committed
  answer and replays it: concurrent repeats create exactly one effect.
- A repeat with the same key and body: the stored status, JSON body and headers, plus
  `Idempotent-Replayed: true`.
- The same key with another body (or another path): 422 problem naming the key.
- A record still in flight when seen (only possible if a caller claims outside the effect's
  transaction): 409 with `Retry-After: 1`.
- Errors are not stored: if the block raises (a `Problem` such as 404, or anything else), the
  transaction rolls back, the claim disappears, and a retry runs afresh.
- Without the header the block still runs in a transaction and `idem.response` is the plain answer.
- Records expire after `KEY_TTL`; an expired key is reclaimed on use and `purge_expired` deletes them.
- `account_id` passed to `respond` ties the record to an account, so erasure deletes it with the
  account (the stored response may name the member). Records tied to no account that still name
  an erased member's external id (a batch answer's 404 for it, a key made from it) are cleaned
  by `forget_external_id`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
from aiohttp import web

from notifier.api.auth import api_key_of
from notifier.api.problems import Problem
from notifier.api.responses import json_response, to_jsonable
from notifier.db import Q
from notifier.resources import POOL

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
KEY_TTL = timedelta(hours=24)
# Response headers worth replaying; others (Date, Content-Length, ...) are made afresh.
_REPLAYED_HEADERS = ("Location",)


def key_of(request: web.Request) -> str | None:
    """The request's `Idempotency-Key`, or None; 400 when present but malformed."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise Problem(400, f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return key


def request_hash(request: web.Request, payload: Any) -> bytes:
    """sha256 over the concrete path and the canonical JSON of the body."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{request.method} {request.path}\n{canonical}".encode()).digest()


def route_of(request: web.Request) -> str:
    """`METHOD /path/{template}`: the scope of a key besides the API key."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    return f"{request.method} {path}"


@dataclass
class Idempotency:
    """State of one idempotent request: the connection (in a transaction) and its answer."""

    conn: asyncpg.Connection
    key: str | None
    replayed: bool = False
    _response: web.Response | None = None
    _stored: dict[str, Any] | None = None
    _status: int | None = None
    _account_id: int | None = None
    _scope: tuple[int, str, str] | None = field(default=None, repr=False)

    def respond(
        self,
        status: int,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        account_id: int | None = None,
    ) -> web.Response:
        """Set the answer (an answer model or JSON values); it is stored with the key when the
        block ends."""
        self._response = json_response(status, body, headers)
        kept = {k: v for k, v in (headers or {}).items() if k in _REPLAYED_HEADERS}
        if self.key is not None:
            self._stored = {"body": to_jsonable(body), "headers": kept}
        self._status = status
        self._account_id = account_id
        return self._response

    @property
    def response(self) -> web.Response:
        """The answer: the replayed one, or the one given to `respond`."""
        if self._response is None:
            raise RuntimeError("idempotent block ended without calling respond()")
        return self._response


def _replay(status: int, stored: dict[str, Any]) -> web.Response:
    headers = dict(stored.get("headers") or {})
    headers[REPLAY_HEADER] = "true"
    return json_response(status, stored.get("body"), headers)


async def _claim(conn: asyncpg.Connection, idem: Idempotency, digest: bytes) -> None:
    """Claim the key, or turn `idem` into a replay, or raise the conflict."""
    assert idem._scope is not None
    api_key_id, route, key = idem._scope
    for _ in range(3):
        if await conn.fetchval(Q.claim_idempotency_key, api_key_id, route, key, digest):
            return
        # Someone holds the key. The INSERT above waited for their transaction, so what we read
        # now is committed (or gone, if they rolled back: then claim again).
        row = await conn.fetchrow(Q.find_idempotency_key, api_key_id, route, key, KEY_TTL)
        if row is None:
            continue
        if row["expired"]:
            await conn.execute(Q.delete_expired_idempotency_key, api_key_id, route, key, KEY_TTL)
            continue
        if row["request_hash"] != digest:
            raise Problem(
                422,
                f"{HEADER} {key!r} was already used with a different request; use a new key",
                title="Idempotency-Key reused",
            )
        if row["status"] is None:
            raise Problem(
                409,
                f"a request with {HEADER} {key!r} is still in progress; retry shortly",
                headers={"Retry-After": "1"},
            )
        idem.replayed = True
        idem._response = _replay(row["status"], row["response"])
        return
    raise Problem(409, f"{HEADER} {key!r} is contended; retry shortly", headers={"Retry-After": "1"})


@asynccontextmanager
async def idempotent(request: web.Request, payload: Any) -> AsyncIterator[Idempotency]:
    """Run the block once per (API key, route, Idempotency-Key); see the module docstring.

    Yields an `Idempotency` whose `conn` is in a transaction. Raises `Problem` 400 (malformed
    key), 409 (in flight) or 422 (key reused with another request).
    """
    key = key_of(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        idem = Idempotency(conn=conn, key=key)
        if key is not None:
            idem._scope = (api_key_of(request).id, route_of(request), key)
            await _claim(conn, idem, request_hash(request, payload))
        yield idem
        if idem._response is None:
            raise RuntimeError("idempotent block ended without calling respond()")
        if key is not None and not idem.replayed:
            assert idem._scope is not None
            await conn.execute(
                Q.complete_idempotency_key, *idem._scope, idem._status, idem._stored, idem._account_id
            )


async def purge_expired(conn: asyncpg.Connection | asyncpg.Pool, ttl: timedelta = KEY_TTL) -> int:
    """Delete records older than `ttl`; returns how many. Safe to run from any process, any time."""
    result: str = await conn.execute(Q.purge_idempotency_keys, ttl)
    return int(result.split()[-1])
