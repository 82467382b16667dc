"""The member's inbox API (`/member/v1`), member tokens, the event stream and CORS, against real
PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier import cli
from notifier.app import create_app
from notifier.member import tokens
from notifier.settings import Settings
from tests.api_helpers import bearer
from tests.factory import Factory

ORIGIN = "https://www.example.org"


def secret_of(settings: Settings) -> str:
    return tokens.inbox_secret(settings.secret)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def member_token(
    client: TestClient[Any, Any], pool: asyncpg.Pool, external_id: str, **body: Any
) -> str:
    headers = await bearer(pool, "accounts")
    resp = await client.post(f"/v1/accounts/{external_id}/inbox-token", json=body or None, headers=headers)
    assert resp.status == 201, await resp.text()
    token: str = (await resp.json())["token"]
    return token


async def post_message(
    client: TestClient[Any, Any], headers: dict[str, str], external_id: str, **fields: Any
) -> int:
    body = {"category": "news", "subject": "Hello", "body": "Some news", **fields}
    resp = await client.post(f"/v1/accounts/{external_id}/messages", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    message_id: int = (await resp.json())["id"]
    return message_id


# --- tokens ---------------------------------------------------------------------------------------


async def test_inbox_token_route(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    await factory.account(external_id="ann")
    headers = await bearer(pool, "accounts")
    before = time.time()
    resp = await client.post("/v1/accounts/ann/inbox-token", headers=headers)
    assert resp.status == 201
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    claims = tokens.verify(secret_of(settings), body["token"])
    assert claims is not None and claims.external_id == "ann"
    assert before + 3599 <= claims.expires <= time.time() + 3601
    resp = await client.post("/v1/accounts/ann/inbox-token", json={"ttl_seconds": 60}, headers=headers)
    assert resp.status == 201
    for bad in ({"ttl_seconds": 59}, {"ttl_seconds": 86401}, {"ttl_seconds": "60"}, {"ttl": 60}, [1]):
        resp = await client.post("/v1/accounts/ann/inbox-token", json=bad, headers=headers)
        assert resp.status == 422, bad
        assert resp.content_type == "application/problem+json"
    resp = await client.post(
        "/v1/accounts/ann/inbox-token", data=b"{", headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 400
    resp = await client.post("/v1/accounts/nobody/inbox-token", headers=headers)
    assert resp.status == 404
    messages_only = await bearer(pool, "messages")
    resp = await client.post("/v1/accounts/ann/inbox-token", headers=messages_only)
    assert resp.status == 403
    resp = await client.post("/v1/accounts/ann/inbox-token")
    assert resp.status == 401


async def test_offline_formula_and_cli_secret(
    client: TestClient[Any, Any],
    factory: Factory,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token minted offline by the documented formula, with the secret the CLI prints, works."""
    import base64
    import hashlib
    import hmac

    await factory.account(external_id="bob@example/7")
    monkeypatch.setenv("NOTIFIER_SECRET_KEY", settings.secret.decode())
    assert cli.main(["inbox-secret"]) == 0
    secret = capsys.readouterr().out.strip()
    assert secret == secret_of(settings) and len(secret) == 64
    # docs/inbox.md, step by step
    issued = int(time.time())
    expires = issued + 600
    encoded = base64.urlsafe_b64encode(b"bob@example/7").decode().rstrip("=")
    signed = f"v1.{encoded}.{issued}.{expires}"
    token = signed + "." + hmac.new(secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
    resp = await client.get("/member/v1/counts", headers=auth(token))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"unread": 0, "unseen": 0, "by_category": {}}


async def test_bad_tokens_are_401(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    ann = await factory.account(external_id="ann")
    secret = secret_of(settings)
    now = int(time.time())
    good = tokens.mint(secret, "ann", now + 600, issued=now)
    expired = tokens.mint(secret, "ann", now - 1, issued=now - 601)
    forged = tokens.mint("not-the-secret" * 4, "ann", now + 600, issued=now)
    parts = good.split(".")
    altered_id = ".".join([parts[0], "Ym9i", *parts[2:]])  # "bob" with ann's signature
    altered_expiry = ".".join([*parts[:3], str(now + 86000), parts[4]])
    too_long = tokens.mint(secret, "ann", now + 90000, issued=now)
    from_the_future = tokens.mint(secret, "ann", now + 4000, issued=now + 3600)
    await factory.account(external_id="bob")
    for token in (
        expired,
        forged,
        altered_id,
        altered_expiry,
        too_long,
        from_the_future,
        "",
        "v1....",
        good + "0",
        "x" * 5000,
    ):
        for path in (
            "/member/v1/messages",
            "/member/v1/counts",
            "/member/v1/preferences",
            "/member/v1/stream",
        ):
            resp = await client.get(path, headers=auth(token))
            assert resp.status == 401, (token[:40], path)
            assert resp.content_type == "application/problem+json"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.get("/member/v1/messages")
    assert resp.status == 401
    # ?token= is for the event stream only
    resp = await client.get("/member/v1/messages", params={"token": good})
    assert resp.status == 401
    resp = await client.get("/member/v1/messages", headers=auth(good))
    assert resp.status == 200

    # Erasing the account ends its tokens, also for a later account with the same external id.
    headers = await bearer(pool, "accounts")
    resp = await client.delete("/v1/accounts/ann", headers=headers)
    assert resp.status == 200, await resp.text()
    assert (await client.get("/member/v1/counts", headers=auth(good))).status == 401
    await factory.account(
        external_id="ann", created_at=ann["created_at"].replace(year=ann["created_at"].year + 1)
    )
    assert (await client.get("/member/v1/counts", headers=auth(good))).status == 401


# --- isolation -----------------------------------------------------------------------------------


async def test_a_member_sees_and_changes_only_their_own_messages(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory
) -> None:
    ann = await factory.account(external_id="ann")
    bob = await factory.account(external_id="bob")
    mine = await factory.message(ann, subject="Ann's")
    theirs = await factory.message(bob, subject="Bob's", category="events")
    token = auth(await member_token(client, pool, "ann"))

    page = await (await client.get("/member/v1/messages", headers=token)).json()
    assert [m["id"] for m in page["items"]] == [mine["id"]]
    counts = await (await client.get("/member/v1/counts", headers=token)).json()
    assert counts == {"unread": 1, "unseen": 1, "by_category": {"news": 1}}
    page = await (
        await client.get("/member/v1/messages", params={"category": "events"}, headers=token)
    ).json()
    assert page["items"] == []
    for action in ("read", "unread", "archive", "unarchive"):
        resp = await client.post(f"/member/v1/messages/{theirs['id']}/{action}", headers=token)
        assert resp.status == 404, action
        assert resp.content_type == "application/problem+json"
        assert "Bob" not in await resp.text()
    resp = await client.post("/member/v1/messages/99999999999999999999/read", headers=token)
    assert resp.status == 404
    resp = await client.post("/member/v1/read-all", headers=token)
    assert (await resp.json()) == {"marked_read": 1}
    resp = await client.post("/member/v1/seen", headers=token)
    assert resp.status == 200
    row = await pool.fetchrow(
        "SELECT read_at, seen_at, archived_at FROM messages WHERE id = $1", theirs["id"]
    )
    assert tuple(row) == (None, None, None)

    # Bob's stream hears nothing of Ann's message; Ann's hears it.
    bob_token = await member_token(client, pool, "bob")
    headers = await bearer(pool, "messages")
    async with open_stream(client, bob_token) as bob_events:
        assert (await bob_events.next())[0] == "counts"
        await post_message(client, headers, "ann", subject="For Ann only")
        with pytest.raises(TimeoutError):
            await bob_events.next(timeout=0.8)


async def test_what_the_producer_marks_reaches_the_members_bell(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory
) -> None:
    """A message the organisation's system marks read (`/v1/.../read`, `read-all`) is seen too,
    as when the member reads it, and the member's open inbox hears that its counts changed."""
    ann = await factory.account(external_id="ann")
    first = await factory.message(ann, subject="One")
    await factory.message(ann, subject="Two")
    token = await member_token(client, pool, "ann")
    headers = await bearer(pool, "messages")
    async with open_stream(client, token) as events:
        assert (await events.next())[0] == "counts"
        resp = await client.post(f"/v1/accounts/ann/messages/{first['id']}/read", headers=headers)
        assert resp.status == 200
        event, data, _ = await events.next()
        assert (event, data["unread"], data["unseen"]) == ("counts", 1, 1)
        resp = await client.post("/v1/accounts/ann/messages/read-all", headers=headers)
        assert (await resp.json()) == {"marked_read": 1}
        event, data, _ = await events.next()
        assert (event, data["unread"], data["unseen"]) == ("counts", 0, 0)


async def test_listing_filters_pages_and_marks(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory
) -> None:
    ann = await factory.account(external_id="ann")
    ids = [
        (await factory.message(ann, category="news" if i % 2 else "events", url=f"https://example.org/{i}"))[
            "id"
        ]
        for i in range(5)
    ]
    token = auth(await member_token(client, pool, "ann"))
    page = await (await client.get("/member/v1/messages", params={"limit": "2"}, headers=token)).json()
    assert [m["id"] for m in page["items"]] == ids[:-3:-1]
    item = page["items"][0]
    assert set(item) == {
        "id",
        "category",
        "subject",
        "body",
        "url",
        "created_at",
        "read_at",
        "seen_at",
        "archived_at",
    }
    assert item["url"] == "https://example.org/4"
    rest = await (
        await client.get("/member/v1/messages", params={"cursor": page["next_cursor"]}, headers=token)
    ).json()
    assert [m["id"] for m in rest["items"]] == ids[2::-1] and rest["next_cursor"] is None

    read = await (await client.post(f"/member/v1/messages/{ids[0]}/read", headers=token)).json()
    assert read["read_at"] and read["seen_at"]
    archived = await (await client.post(f"/member/v1/messages/{ids[1]}/archive", headers=token)).json()
    assert archived["archived_at"]
    unread = await (await client.get("/member/v1/messages", params={"unread": "true"}, headers=token)).json()
    assert [m["id"] for m in unread["items"]] == [ids[4], ids[3], ids[2]]
    only = await (await client.get("/member/v1/messages", params={"archived": "true"}, headers=token)).json()
    assert [m["id"] for m in only["items"]] == [ids[1]]
    news = await (await client.get("/member/v1/messages", params={"category": "news"}, headers=token)).json()
    assert [m["id"] for m in news["items"]] == [ids[3]]
    counts = await (await client.get("/member/v1/counts", headers=token)).json()
    assert counts == {"unread": 3, "unseen": 3, "by_category": {"events": 2, "news": 1}}
    assert (await (await client.post("/member/v1/seen", headers=token)).json()) == {"marked_seen": 3}
    counts = await (await client.get("/member/v1/counts", headers=token)).json()
    assert (counts["unread"], counts["unseen"]) == (3, 0)
    await client.post(f"/member/v1/messages/{ids[1]}/unarchive", headers=token)
    again = await (await client.post(f"/member/v1/messages/{ids[0]}/unread", headers=token)).json()
    assert again["read_at"] is None
    resp = await client.post("/member/v1/read-all", params={"category": "events"}, headers=token)
    assert (await resp.json()) == {"marked_read": 3}
    for bad in (
        {"limit": "0"},
        {"limit": "x"},
        {"unread": "maybe"},
        {"archived": "sometimes"},
        {"cursor": "nope"},
        {"category": "x" * 200},
    ):
        resp = await client.get("/member/v1/messages", params=bad, headers=token)
        assert resp.status == 422, bad
        assert resp.content_type == "application/problem+json"


async def test_preferences_as_the_member(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory
) -> None:
    ann = await factory.account(external_id="ann")
    token = auth(await member_token(client, pool, "ann"))
    prefs = await (await client.get("/member/v1/preferences", headers=token)).json()
    assert prefs["digest_frequency"] == "daily" and prefs["newsletter"] is False
    resp = await client.put(
        "/member/v1/preferences", json={"digest_frequency": "weekly", "newsletter": True}, headers=token
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["digest_frequency"] == "weekly"
    audit_row = await pool.fetchrow(
        "SELECT * FROM audit_log WHERE account_id = $1 AND action = 'preferences.update'", ann["id"]
    )
    assert (audit_row["actor_type"], audit_row["actor"]) == ("member", "inbox")
    consent = await pool.fetchrow("SELECT * FROM consents WHERE account_id = $1", ann["id"])
    assert consent["granted"] is True and consent["source"] == "inbox" and consent["wording"]
    for bad in ({"digest_hour": 24}, {"timezone": "Mars/Base"}, {"unknown": 1}, [1]):
        resp = await client.put("/member/v1/preferences", json=bad, headers=token)
        assert resp.status == 422, bad
    resp = await client.put(
        "/member/v1/preferences", data=b"{", headers={**token, "Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert await pool.fetchval("SELECT digest_frequency FROM accounts WHERE id = $1", ann["id"]) == "weekly"
    # Topics and quiet hours (issue 14), with the same rules as the API.
    await pool.execute(
        "INSERT INTO categories (key, required) VALUES ('registry', true), ('community', false)"
    )
    change = {
        "categories": {"community": {"frequency": "off"}},
        "quiet_hours": {"start": "22:00", "end": "07:00", "weekends": True},
    }
    resp = await client.put("/member/v1/preferences", json=change, headers=token)
    assert resp.status == 200, await resp.text()
    got = await (await client.get("/member/v1/preferences", headers=token)).json()
    assert {k: got[k] for k in change} == change
    resp = await client.put(
        "/member/v1/preferences", json={"categories": {"registry": {"frequency": "off"}}}, headers=token
    )
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == ["categories.registry.frequency"]


async def test_intake_url_is_http_only(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory
) -> None:
    await factory.account(external_id="ann")
    headers = await bearer(pool, "messages")
    for bad in ("javascript:alert(1)", "data:text/html,x", "ftp://example.org/x"):
        body = {"category": "news", "subject": "s", "body": "b", "url": bad}
        resp = await client.post("/v1/accounts/ann/messages", json=body, headers=headers)
        assert resp.status == 422, bad
    await post_message(client, headers, "ann", url="https://example.org/read")


# --- the event stream ----------------------------------------------------------------------------


class Events:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = 3.0) -> tuple[str, Any, str | None]:
        """(event, data, id) of the next event, skipping heartbeats."""
        event, ident = "message", None
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.resp.content.readline()).decode().rstrip("\r\n")
                if line.startswith(":"):
                    continue
                if line == "":
                    if data:
                        return event, json.loads("\n".join(data)), ident
                    continue
                field, _, value = line.partition(": ")
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    ident = value


@asynccontextmanager
async def open_stream(
    client: TestClient[Any, Any], token: str, last_event_id: str | None = None, origin: str | None = None
) -> AsyncIterator[Events]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    if origin:
        headers["Origin"] = origin
    resp = await client.get("/member/v1/stream", params={"token": token}, headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    try:
        yield Events(resp)
    finally:
        resp.close()


async def test_stream_delivers_and_resumes(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory
) -> None:
    ann = await factory.account(external_id="ann")
    await factory.message(ann, subject="Old")
    token = await member_token(client, pool, "ann")
    headers = await bearer(pool, "messages")
    async with open_stream(client, token) as events:
        event, data, _ = await events.next()
        assert (event, data["unread"]) == ("counts", 1)
        started = time.monotonic()
        first = await post_message(client, headers, "ann", subject="Live one", url="https://example.org/1")
        event, data, ident = await events.next()
        assert time.monotonic() - started < 2
        assert (event, data["id"], data["subject"], data["url"], ident) == (
            "message",
            first,
            "Live one",
            "https://example.org/1",
            str(first),
        )
        event, data, _ = await events.next()
        assert (event, data["unread"]) == ("counts", 2)
        # Another tab reads it: counts follow.
        await client.post(f"/member/v1/messages/{first}/read", headers=auth(token))
        event, data, _ = await events.next()
        assert (event, data["unread"]) == ("counts", 1)
    # Away for a while: two messages arrive (one by batch), then the browser reconnects.
    second = await post_message(client, headers, "ann", subject="While away")
    resp = await client.post(
        "/v1/messages",
        json={"messages": [{"account": "ann", "category": "news", "subject": "Batch", "body": "b"}]},
        headers=headers,
    )
    assert resp.status == 201
    third = (await resp.json())["results"][0]["id"]
    async with open_stream(client, token, last_event_id=str(first)) as events:
        seen = [await events.next() for _ in range(3)]
        messages = [(e[1]["id"], e[2]) for e in seen if e[0] == "message"]
        assert messages == [(second, str(second)), (third, str(third))]


async def test_stream_across_two_web_processes(
    settings: Settings, pool: asyncpg.Pool, redis: Any, factory: Factory
) -> None:
    """A message posted to one web process reaches a stream held by another, through Redis."""
    await factory.account(external_id="ann")
    async with (
        TestClient(TestServer(create_app(settings))) as one,
        TestClient(TestServer(create_app(settings))) as two,
    ):
        token = await member_token(one, pool, "ann")
        async with open_stream(two, token) as events:
            assert (await events.next())[0] == "counts"
            message_id = await post_message(one, await bearer(pool, "messages"), "ann")
            event, data, _ = await events.next()
            assert (event, data["id"]) == ("message", message_id)


# --- CORS ----------------------------------------------------------------------------------------


@pytest.fixture
async def cors_client(
    settings: Settings, pool: asyncpg.Pool, redis: Any
) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings.model_copy(update={"inbox_origins": ORIGIN}))
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_cors_only_for_the_inbox_origins(
    cors_client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory
) -> None:
    await factory.account(external_id="ann")
    token = await member_token(cors_client, pool, "ann")
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    resp = await cors_client.options("/member/v1/read-all", headers={"Origin": ORIGIN, **preflight})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in resp.headers
    resp = await cors_client.get("/member/v1/counts", headers={"Origin": ORIGIN, **auth(token)})
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    resp = await cors_client.get("/member/v1/counts", headers={"Origin": ORIGIN, **auth("forged")})
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN

    evil = "https://evil.example"
    resp = await cors_client.options("/member/v1/read-all", headers={"Origin": evil, **preflight})
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    resp = await cors_client.get("/member/v1/counts", headers={"Origin": evil, **auth(token)})
    assert "Access-Control-Allow-Origin" not in resp.headers
    # The organisation's API is never opened to browsers.
    resp = await cors_client.options("/v1/accounts/ann/inbox-token", headers={"Origin": ORIGIN, **preflight})
    assert "Access-Control-Allow-Origin" not in resp.headers
    async with open_stream(cors_client, token, origin=ORIGIN) as events:
        assert events.resp.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_no_cors_without_origins(client: TestClient[Any, Any]) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    resp = await client.options("/member/v1/counts", headers=preflight)
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_component_script_is_served(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/static/inbox.js")
    assert resp.status == 200 and resp.content_type == "text/javascript"
    text = await resp.text()
    assert 'customElements.define("notifier-inbox"' in text and "attachShadow" in text
    again = await client.get("/static/inbox.js", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304


async def test_a_stream_ends_when_its_client_leaves(
    settings: Settings, pool: asyncpg.Pool, redis: Any, factory: Factory
) -> None:
    """No stream outlives its client: the heartbeat notices, and the process forgets it."""
    from notifier.member.stream import HUB

    await factory.account(external_id="ann")
    app = create_app(settings.model_copy(update={"inbox_heartbeat_seconds": 0.2}))
    async with TestClient(TestServer(app)) as client:
        token = await member_token(client, pool, "ann")
        async with open_stream(client, token) as events:
            assert (await events.next())[0] == "counts"
            assert len(app[HUB]) == 1
        for _ in range(50):
            if len(app[HUB]) == 0:
                break
            await asyncio.sleep(0.1)
        assert len(app[HUB]) == 0


async def test_announcing_never_fails_or_stalls_intake(caplog: pytest.LogCaptureFixture) -> None:
    """With Redis unreachable or hanging, the doorbell gives up quietly within ANNOUNCE_TIMEOUT;
    PostgreSQL has the messages and open inboxes catch up from it."""
    from redis.asyncio import Redis

    from notifier import inbox, inbox_rings
    from notifier.embedded import free_port

    handlers: list[asyncio.Task[Any]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await reader.read()  # accepts, never answers
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    hanging = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = hanging.sockets[0].getsockname()[1]
    for url in (f"redis://127.0.0.1:{free_port()}/0", f"redis://127.0.0.1:{port}/0"):
        client = Redis.from_url(url)
        started = time.monotonic()
        async with asyncio.timeout(5):  # a stalling doorbell fails the test, not hangs it
            await inbox_rings.announce_created(client, [inbox.CreatedMessage(1, 1, False)])
            await inbox_rings.announce_changed(client, 1)
        assert time.monotonic() - started < 2 * inbox_rings.ANNOUNCE_TIMEOUT + 0.5, url
        await client.aclose(close_connection_pool=True)
    assert caplog.text.count("announcing") == 4
    hanging.close()
    await asyncio.wait(handlers, timeout=2)
    await hanging.wait_closed()
