"""API keys and signed tokens."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from notifier import tokens
from notifier.api import auth
from notifier.api.auth import api_key_of, requires
from notifier.app import create_app
from notifier.settings import Settings

SECRET = b"k" * 32


def test_token_round_trip() -> None:
    token = tokens.sign(SECRET, "unsubscribe", 42, "newsletter")
    assert len(token) == 35
    assert tokens.verify(SECRET, token, "unsubscribe") == tokens.Token("unsubscribe", "newsletter", 42)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # altered MAC
        lambda t: ("A" if t[0] != "A" else "B") + t[1:],  # altered payload
        lambda t: t[:20],  # truncated
        lambda t: t + "AAAA",  # extended
        lambda t: "",  # empty
        lambda t: "not a token!",  # not base64
        lambda t: "x" * 500,  # huge
    ],
)
def test_token_rejects_tampering(mangle) -> None:
    token = tokens.sign(SECRET, "unsubscribe", 7, "digest")
    assert tokens.verify(SECRET, mangle(token), "unsubscribe") is None


def test_token_is_bound_to_secret_and_purpose() -> None:
    token = tokens.sign(SECRET, "preferences", 7)
    assert tokens.verify(b"other secret", token, "preferences") is None
    assert tokens.verify(SECRET, token, "unsubscribe") is None


async def test_key_is_stored_only_as_a_hash(pool: asyncpg.Pool) -> None:
    key_id, key = await auth.create_key(pool, "registry", ["accounts", "messages"])
    assert key.startswith("ntf_") and len(key) > 40
    row = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
    assert row is not None
    assert key not in str(dict(row))
    assert row["key_hash"] == auth.hash_key(key)
    assert row["scopes"] == ["accounts", "messages"]


async def test_unknown_scope_is_refused(pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError, match="scopes must be among"):
        await auth.create_key(pool, "x", ["everything"])


@pytest.fixture
async def scoped_client(settings: Settings, pool: asyncpg.Pool, redis):
    @requires("messages")
    async def protected(request: web.Request) -> web.Response:
        return web.json_response({"key": api_key_of(request).name})

    app = create_app(settings)
    app.router.add_get("/v1/protected", protected)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_scope_checks(scoped_client, pool: asyncpg.Pool) -> None:
    _, messages_key = await auth.create_key(pool, "blog", ["messages"])
    _, accounts_key = await auth.create_key(pool, "registry", ["accounts"])
    _, admin_key = await auth.create_key(pool, "ops", ["admin"])

    resp = await scoped_client.get("/v1/protected")
    assert resp.status == 401 and resp.content_type == "application/problem+json"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await scoped_client.get("/v1/protected", headers={"Authorization": "Bearer ntf_nope"})
    assert resp.status == 401
    resp = await scoped_client.get("/v1/protected", headers={"Authorization": f"Bearer {accounts_key}"})
    assert resp.status == 403
    assert "messages" in (await resp.json())["detail"]
    for key, name in ((messages_key, "blog"), (admin_key, "ops")):
        resp = await scoped_client.get("/v1/protected", headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 200
        assert await resp.json() == {"key": name}
    # every key that authenticated (even the one refused for its scope) was touched
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL") == 3


async def test_revoked_key_is_refused(scoped_client, pool: asyncpg.Pool, monkeypatch) -> None:
    monkeypatch.setattr(auth, "CACHE_SECONDS", 0.0)
    key_id, key = await auth.create_key(pool, "blog", ["messages"])
    headers = {"Authorization": f"Bearer {key}"}
    assert (await scoped_client.get("/v1/protected", headers=headers)).status == 200
    assert await auth.revoke_key(pool, key_id)
    assert not await auth.revoke_key(pool, key_id)
    assert (await scoped_client.get("/v1/protected", headers=headers)).status == 401


def test_rate_limiter_refills() -> None:
    limiter = auth.RateLimiter(rate=2.0, burst=3)
    assert [limiter.take(1, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(1, now=0.0) == pytest.approx(0.5)
    assert limiter.take(2, now=0.0) == 0.0  # buckets are per key
    assert limiter.take(1, now=0.5) == 0.0  # one token back after 1/rate seconds
    assert auth.RateLimiter(rate=0, burst=1).take(1) == 0.0  # 0 turns it off


async def test_rate_limit_answers_429(settings: Settings, pool: asyncpg.Pool, redis) -> None:
    @requires("messages")
    async def protected(request: web.Request) -> web.Response:
        return web.json_response({})

    settings.api_rate_limit, settings.api_rate_burst = 0.5, 2
    app = create_app(settings)
    app.router.add_get("/v1/protected", protected)
    _, key = await auth.create_key(pool, "blog", ["messages"])
    headers = {"Authorization": f"Bearer {key}"}
    async with TestClient(TestServer(app)) as c:
        assert [(await c.get("/v1/protected", headers=headers)).status for _ in range(2)] == [200, 200]
        resp = await c.get("/v1/protected", headers=headers)
        assert resp.status == 429
        assert resp.content_type == "application/problem+json"
        assert int(resp.headers["Retry-After"]) >= 1
