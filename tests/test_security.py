"""Nobody reaches what isn't theirs: every `/v1` route against every kind of key, signed member
links forged, altered and crossed, hostile path and query values, size and rate limits, and no
secret in any log line."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from arq import ArqRedis
from pydantic import SecretStr

from notifier import tokens
from notifier.api import auth
from notifier.api.problems import problem_middleware
from notifier.app import RedactingAccessLogger, create_app
from notifier.settings import Settings
from tests.api_helpers import bearer, new_account
from tests.factory import Factory

PROBLEM = "application/problem+json"


def v1_routes(app: web.Application) -> list[tuple[str, str, str | None]]:
    """(method, path template, required scope) of every `/v1` route the router serves."""
    found = set()
    for route in app.router.routes():
        if route.resource is None or route.method in ("HEAD", "OPTIONS"):
            continue
        path = route.resource.canonical
        if path.startswith("/v1/"):
            found.add((route.method, path, getattr(route.handler, "required_scope", None)))
    return sorted(found)


def fill(path: str, **values: str) -> str:
    """The template with its `{name}` parameters replaced (`external_id`, `id`, `delivery_id` and
    `key` by default)."""
    values = {"external_id": "m-1", "id": "1", "delivery_id": "1", "key": "news", **values}
    return re.sub(r"\{(\w+)[^}]*\}", lambda m: values[m[1]], path)


@pytest.fixture
async def make_client(settings: Settings, pool: asyncpg.Pool, redis: ArqRedis) -> AsyncIterator[Any]:
    """`await make_client(**settings_overrides)`: a client for an app with those settings,
    served with the production access logger."""
    clients: list[TestClient[Any, Any]] = []

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        server = TestServer(create_app(settings.model_copy(update=overrides)))
        await server.start_server(access_log_class=RedactingAccessLogger)
        client: TestClient[Any, Any] = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


# --- the access matrix ------------------------------------------------------------------------


async def test_every_v1_route_needs_a_scope(client) -> None:
    routes = v1_routes(client.server.app)
    assert len(routes) >= 25
    assert [r for r in routes if r[2] not in auth.SCOPES] == []


async def test_access_matrix(client, pool: asyncpg.Pool, factory: Factory) -> None:
    await factory.account(external_id="m-1", email="member1@example.com")
    routes = v1_routes(client.server.app)
    revoked_id, revoked = await auth.create_key(pool, "revoked", list(auth.SCOPES))
    assert await auth.revoke_key(pool, revoked_id)
    keys = {scope: await bearer(pool, scope, name=f"key-{scope}") for scope in auth.SCOPES}
    refused = {
        "no key": {},
        "empty bearer": {"Authorization": "Bearer "},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "unknown key": {"Authorization": "Bearer ntf_" + "x" * 43},
        "revoked key": {"Authorization": f"Bearer {revoked}"},
    }
    seen: dict[str, set[int]] = {}
    for method, template, scope in routes:
        path = fill(template)
        body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
        for name, headers in refused.items():
            resp = await client.request(method, path, headers=headers, **body)
            assert resp.status == 401, (method, template, name, resp.status)
            assert resp.content_type == PROBLEM
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        for key_scope, headers in keys.items():
            resp = await client.request(method, path, headers=headers, **body)
            allowed = key_scope in (scope, "admin")
            if allowed:
                assert resp.status not in (401, 403), (method, template, key_scope, resp.status)
                assert resp.status < 500, (method, template, key_scope, resp.status, await resp.text())
            else:
                assert resp.status == 403, (method, template, key_scope, resp.status)
                assert resp.content_type == PROBLEM
            seen.setdefault(f"{method} {template}", set()).add(resp.status)
    assert len(seen) == len(routes)


async def test_revocation_reaches_a_key_in_use_within_the_cache_time(client, pool: asyncpg.Pool) -> None:
    key_id, key = await auth.create_key(pool, "soon-revoked", ["accounts"])
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/v1/accounts/none", headers=headers)).status == 404
    assert await auth.revoke_key(pool, key_id)
    cache = client.server.app[auth.KEY_CACHE]
    # Age the cached verification past CACHE_SECONDS instead of sleeping.
    cache._keys = {d: (at - auth.CACHE_SECONDS, k) for d, (at, k) in cache._keys.items()}
    assert (await client.get("/v1/accounts/none", headers=headers)).status == 401


HOSTILE = ["²", "١٢", "99999999999999999999", "-1", "0", "1e3", " 1", "%00", "%E2%80%AE", "x" * 300]


async def test_hostile_path_and_query_values_never_make_a_5xx(client, pool: asyncpg.Pool, factory) -> None:
    account = await factory.account(external_id="m-1")
    email = await factory.email(account)
    headers = await bearer(pool, "admin")
    problems = []
    for method, template, _ in v1_routes(client.server.app):
        for value in HOSTILE:
            path = fill(template, id=value) if "{id" in template else fill(template, external_id=value)
            for query in ("", "?limit=" + value, "?cursor=" + value, "?up_to=" + value, "?unread=" + value):
                body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
                resp = await client.request(method, path + query, headers=headers, **body)
                if resp.status >= 500:
                    problems.append((method, template, value, query.partition("=")[0], resp.status))
    member_token = tokens.sign(b"test-secret-key-not-for-production", "unsubscribe", account["id"], "all")
    prefs_token = tokens.sign(b"test-secret-key-not-for-production", "preferences", account["id"], "all")
    for value in [*HOSTILE, str(email["id"])]:
        for path in (f"/u/{member_token}", f"/preferences/{prefs_token}"):
            resp = await client.get(f"{path}?e={value}")
            if resp.status >= 500:
                problems.append(("GET", path[:3], value, "?e", resp.status))
    assert not problems, "\n".join(map(str, sorted(set(problems))))


async def test_preference_form_with_odd_digits_is_a_form_error(client, factory) -> None:
    account = await factory.account()
    token = tokens.sign(b"test-secret-key-not-for-production", "preferences", account["id"], "all")
    page = await (await client.get(f"/preferences/{token}")).text()
    nonce = re.search(r'name="nonce" value="([^"]+)"', page)
    assert nonce is not None
    for hour in ("²", "١٢", "99", "-3"):
        resp = await client.post(
            f"/preferences/{token}",
            data={"nonce": nonce[1], "digest_hour": hour, "digest_frequency": "daily"},
        )
        assert resp.status == 422, (hour, resp.status)


# --- signed member links ------------------------------------------------------------------------

SECRET = b"test-secret-key-not-for-production"


def substitutions(token: str) -> list[str]:
    """Every token that differs from `token` in exactly one character (URL-safe alphabet and
    characters a decoder might skip or translate)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=.! "
    return [token[:i] + c + token[i + 1 :] for i in range(len(token)) for c in alphabet if c != token[i]]


@pytest.mark.parametrize("purpose", ["unsubscribe", "preferences", "confirm"])
def test_no_single_character_change_of_a_token_is_accepted(purpose: Any) -> None:
    token = tokens.sign(SECRET, purpose, 123456, "newsletter")
    accepted = [t for t in substitutions(token) if tokens.verify(SECRET, t, purpose) is not None]
    inserted = [token[:i] + c + token[i:] for i in range(len(token) + 1) for c in "=.!\n -+"]
    accepted += [t for t in inserted if tokens.verify(SECRET, t, purpose) is not None]
    assert accepted == []


async def _member_state(pool: asyncpg.Pool, account_id: int) -> tuple[Any, ...]:
    row = await pool.fetchrow(
        "SELECT digest_frequency, digest_hour, timezone, newsletter FROM accounts WHERE id = $1", account_id
    )
    events = await pool.fetchval("SELECT count(*) FROM events WHERE account_id = $1", account_id)
    return (*row.values(), events) if row else ()


async def test_forged_altered_and_crossed_links_change_nothing(client, pool: asyncpg.Pool, factory) -> None:
    a = await factory.account(digest_frequency="daily", newsletter=True)
    b = await factory.account(digest_frequency="daily", newsletter=True)
    before_a, before_b = await _member_state(pool, a["id"]), await _member_state(pool, b["id"])
    one_click = {"List-Unsubscribe": "One-Click"}
    genuine = tokens.sign(SECRET, "unsubscribe", a["id"], "all")
    bad = {
        "forged with another secret": tokens.sign(b"another secret", "unsubscribe", a["id"], "all"),
        "altered payload": tokens.sign(SECRET, "unsubscribe", b["id"], "all")[:14] + genuine[14:],
        "altered mac": genuine[:-3] + ("AAA" if genuine[-3:] != "AAA" else "BBB"),
        "preferences token": tokens.sign(SECRET, "preferences", a["id"], "all"),
        "confirm token": tokens.sign(SECRET, "confirm", a["id"], "newsletter"),
        "truncated": genuine[:-1],
        "padded": genuine + "=",
        "member that does not exist": tokens.sign(SECRET, "unsubscribe", 10**12, "all"),
    }
    for name, token in bad.items():
        for method in ("GET", "POST"):
            resp = await client.request(method, f"/u/{token}", data=one_click)
            assert resp.status == 404, (name, method, resp.status)
            assert resp.content_type == "text/html"
    prefs_bad = {
        "forged": tokens.sign(b"another secret", "preferences", a["id"], "all"),
        "unsubscribe token": genuine,
        "altered": tokens.sign(SECRET, "preferences", a["id"], "all")[:-2] + "zz",
    }
    for name, token in prefs_bad.items():
        for method in ("GET", "POST"):
            resp = await client.request(method, f"/preferences/{token}", data={"newsletter": "no"})
            assert resp.status == 404, (name, method, resp.status)
    assert await _member_state(pool, a["id"]) == before_a
    assert await _member_state(pool, b["id"]) == before_b

    # A's genuine link with ?e= naming B's e-mail acts on A only and does not name B's e-mail.
    b_email = await factory.email(b, kind="newsletter", queue="notifier:bulk")
    resp = await client.post(f"/u/{genuine}?e={b_email['id']}", data=one_click)
    assert resp.status == 200
    assert await _member_state(pool, b["id"]) == before_b
    rows = await pool.fetch("SELECT account_id, email_id FROM events WHERE kind = 'unsubscribed'")
    assert [tuple(r) for r in rows] == [(a["id"], None)]


async def test_preference_form_of_one_member_cannot_touch_another(
    client, pool: asyncpg.Pool, factory
) -> None:
    a = await factory.account(digest_frequency="daily", newsletter=True)
    b = await factory.account(digest_frequency="daily", newsletter=True)
    before_b = await _member_state(pool, b["id"])
    token_a = tokens.sign(SECRET, "preferences", a["id"], "all")
    token_b = tokens.sign(SECRET, "preferences", b["id"], "all")
    page = await (await client.get(f"/preferences/{token_a}")).text()
    nonce = re.search(r'name="nonce" value="([^"]+)"', page)
    assert nonce is not None
    # A's nonce does not open B's form; extra fields naming B are ignored on A's form.
    resp = await client.post(f"/preferences/{token_b}", data={"nonce": nonce[1], "digest_frequency": "off"})
    assert resp.status == 403
    resp = await client.post(
        f"/preferences/{token_a}",
        data={
            "nonce": nonce[1],
            "digest_frequency": "weekly",
            "account_id": str(b["id"]),
            "id": str(b["id"]),
        },
    )
    assert resp.status == 200
    assert await _member_state(pool, b["id"]) == before_b
    assert await pool.fetchval("SELECT digest_frequency FROM accounts WHERE id = $1", a["id"]) == "weekly"


# --- limits -----------------------------------------------------------------------------------


async def test_request_size_limits(make_client, pool: asyncpg.Pool, factory) -> None:
    client = await make_client(max_body_bytes=2048, max_batch_body_bytes=8192)
    headers = await bearer(pool, "accounts", "messages")
    account = await factory.account(external_id="m-1")
    big = new_account(1, name="x" * 3000)
    resp = await client.post("/v1/accounts", json=big, headers=headers)
    assert resp.status == 413 and resp.content_type == PROBLEM

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"external_id": "m-9", "email": "m9@example.com", "name": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    resp = await client.post(
        "/v1/accounts", data=chunked(), headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 413 and resp.content_type == PROBLEM
    message = {"category": "news", "subject": "s", "body": "b" * 1500}
    resp = await client.post(
        "/v1/accounts/m-1/messages", json={**message, "body": "b" * 2500}, headers=headers
    )
    assert resp.status == 413
    batch = {"messages": [{"account": "m-1", **message}] * 4}  # > 2048, < 8192: a batch may be bigger
    resp = await client.post("/v1/messages", json=batch, headers=headers)
    assert resp.status == 201, await resp.text()
    resp = await client.post(
        "/v1/messages", json={"messages": [{"account": "m-1", **message}] * 8}, headers=headers
    )
    assert resp.status == 413 and resp.content_type == PROBLEM
    token = tokens.sign(SECRET, "unsubscribe", account["id"], "all")
    resp = await client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click", "pad": "p" * 20000})
    assert resp.status == 413
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1
    assert await pool.fetchval("SELECT count(*) FROM messages") == 4


async def test_per_key_rate_limit(make_client, pool: asyncpg.Pool) -> None:
    client = await make_client(api_rate_limit=0.01, api_rate_burst=3)
    first = await bearer(pool, "accounts", name="first")
    second = await bearer(pool, "accounts", name="second")
    statuses = [(await client.get("/v1/accounts/none", headers=first)).status for _ in range(3)]
    assert statuses == [404, 404, 404]
    resp = await client.get("/v1/accounts/none", headers=first)
    assert resp.status == 429 and resp.content_type == PROBLEM
    assert 1 <= int(resp.headers["Retry-After"]) <= 100
    # Another key is not held back, and requests without a valid key don't spend the bucket.
    assert (await client.get("/v1/accounts/none", headers=second)).status == 404
    assert (await client.get("/v1/accounts/none")).status == 401


def test_rate_limiter_refills_at_the_configured_rate() -> None:
    limiter = auth.RateLimiter(rate=2.0, burst=2)
    assert [limiter.take(1, now=100.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.take(1, now=100.0) == pytest.approx(0.5)
    assert limiter.take(1, now=100.5) == 0.0
    assert limiter.take(1, now=100.5) > 0
    assert auth.RateLimiter(rate=0, burst=1).take(1) == 0.0


# --- secrets stay out of logs ---------------------------------------------------------------------


async def test_no_secret_in_any_log_line(
    make_client, pool: asyncpg.Pool, factory, run_worker, smtp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_key = "very-secret-signing-key-0123456789"
    smtp_password = "smtp-password-0123456789"
    client = await make_client(secret_key=SecretStr(secret_key), smtp_password=SecretStr(smtp_password))
    key_id, api_key = await auth.create_key(pool, "registry", list(auth.SCOPES))
    _, revoked = await auth.create_key(pool, "old", ["accounts"])
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id <> $1", key_id)
    h = {"Authorization": f"Bearer {api_key}"}
    account = await factory.account(external_id="m-1", digest_frequency="daily", newsletter=True)
    member_tokens = [
        tokens.sign(secret_key.encode(), purpose, account["id"], "all")
        for purpose in ("unsubscribe", "preferences", "confirm")
    ]
    await client.post("/v1/accounts", json=new_account(2), headers=h)
    await client.post("/v1/accounts", json={"email": api_key}, headers=h)
    await client.get("/v1/accounts/m-1", headers={"Authorization": f"Bearer {revoked}"})
    await client.get(f"/v1/accounts/m-1?key={api_key}", headers=h)
    await client.post(
        "/v1/accounts/m-1/messages", json={"category": "x", "subject": "s", "body": "b"}, headers=h
    )
    await client.post("/v1/service-messages", json={"account": "m-1", "template": "welcome"}, headers=h)
    for token in member_tokens:
        for prefix in ("/u/", "/preferences/", "/confirm/"):
            await client.get(f"{prefix}{token}?e=1")
            await client.post(f"{prefix}{token}", data={"List-Unsubscribe": "One-Click"})
            await client.post(f"{prefix}{token}", data="x", headers={"Content-Type": "text/plain"})
    await client.post(
        "/console/sign-in", data={"key": api_key}, headers={"Origin": str(client.make_url("/"))}
    )
    await run_worker()
    assert smtp.received, "the service message was sent"
    secrets_seen = [secret_key, smtp_password, api_key, revoked, *member_tokens]
    access = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert len(access) >= 20, "the access log was captured"
    leaks = []
    for record in caplog.records:
        text = record.getMessage() + (caplog.handler.format(record) if record.exc_info else "")
        leaks += [(record.name, s[:8]) for s in secrets_seen if s in text]
    assert leaks == []


async def test_error_logs_name_the_route_without_its_token(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/u/{token}", broken)
    app.router.add_get("/preferences/{token}", broken)
    caplog.set_level(logging.DEBUG)
    async with TestClient(TestServer(app)) as client:
        for path in ("/u/SECRETTOKEN123?e=1", "/preferences/SECRETTOKEN123"):
            resp = await client.get(path)
            assert resp.status == 500
    messages = [r.getMessage() for r in caplog.records if r.name == "notifier.web"]
    assert any("/u/[token]" in m for m in messages), messages
    assert not any("SECRETTOKEN123" in m for m in messages), messages
