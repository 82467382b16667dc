"""Who is asking on the member API: the member named by a genuine, current member token.

`Authorization: Bearer <token>` everywhere; `?token=` only where a route allows it (the event
stream: `EventSource` cannot send headers). Anything else is a 401 problem that says why only as
far as a caller can act on it (missing, or not valid: expired, altered and forged look alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from notifier.api.problems import Problem
from notifier.db import Q
from notifier.member import tokens
from notifier.resources import POOL

INBOX_SECRET = web.AppKey("inbox_secret", str)


@dataclass(frozen=True, slots=True)
class Member:
    account_id: int
    external_id: str
    timezone: str
    locale: str
    expires: int  # Unix time the token ends


_NOT_VALID = "the member token is not valid (expired, altered or not ours): get a new one"


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="member"'})


def _token_of(request: web.Request, *, query_allowed: bool) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if query_allowed and request.query.get("token"):
        return request.query["token"]
    raise _unauthorized("a member token is required: send Authorization: Bearer <token>")


def claims_of(request: web.Request, *, query_allowed: bool = False) -> tokens.Claims:
    """What the request's member token says, before its account is looked at (`check_registered`).
    Raises a 401 Problem for a missing, malformed, altered, forged or expired token."""
    claims = tokens.verify(request.app[INBOX_SECRET], _token_of(request, query_allowed=query_allowed))
    if claims is None:
        raise _unauthorized(_NOT_VALID)
    return claims


def check_registered(claims: tokens.Claims, registered_at: datetime | None) -> None:
    """Raises a 401 Problem unless the token's account exists (registered at `registered_at`) and
    the token was issued for it, not for an erased account of the same external id."""
    if registered_at is None or not tokens.issued_for(claims, registered_at.timestamp()):
        raise _unauthorized(_NOT_VALID)


async def member_of(request: web.Request, *, query_allowed: bool = False) -> Member:
    """The member whose token the request carries. Raises a 401 Problem for a missing, malformed,
    altered, forged or expired token, and for one whose account was erased."""
    claims = claims_of(request, query_allowed=query_allowed)
    row = await request.app[POOL].fetchrow(Q.member_account_by_external_id, claims.external_id)
    check_registered(claims, row["created_at"] if row is not None else None)
    assert row is not None
    return Member(row["id"], row["external_id"], row["timezone"], row["locale"], claims.expires)
