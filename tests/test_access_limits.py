"""Limits on what a key, a client and a link may do (issue 17): a preview as a member needs the
right to read accounts and never tells whether one exists; test-sends go only to subscribed members
or allowed domains, never to suppressed addresses, at a rate; console sign-in is throttled per
client; links signed with a rotated-out secret keep working from the keyring."""

# ruff: noqa: F811  (tests take the imported `make_client` fixture by name)

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis
from pydantic import SecretStr

from notifier import pages, queues, suppression, tokens
from notifier.api import auth
from notifier.embedded import free_port
from notifier.resources import REDIS
from notifier.settings import Settings
from tests.api_helpers import bearer, create_newsletter
from tests.conftest import BurstWorker, MailSink
from tests.factory import Factory
from tests.test_console import csrf_of, post_key
from tests.test_security import make_client  # noqa: F401  (the fixture: a client per settings)

Client = TestClient[Any, Any]
PROBLEM = "application/problem+json"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Over plain http, so the test client sends console cookies back (see tests/test_console.py)."""
    return settings.model_copy(update={"public_url": "http://127.0.0.1", "console_key_sign_in": True})


# --- preview as a member -----------------------------------------------------------------------


async def test_preview_as_a_member_needs_a_key_that_may_read_accounts(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    await factory.account(external_id="in", name="Ina Reader", email="ina@example.com", newsletter=True)
    await factory.account(external_id="out", name="Otto Left", email="otto@example.com", newsletter=False)
    marketing = await bearer(pool, "newsletters", name="marketing")
    draft = await create_newsletter(client, marketing, subject="Hi {{ name }}", body="{{ email }}")
    base = f"/v1/newsletters/{draft['id']}/preview"

    refused = []
    for account in ("in", "out", "nobody", ""):
        resp = await client.get(base, params={"account": account}, headers=marketing)
        assert resp.status == 403, (account, resp.status)
        assert resp.content_type == PROBLEM
        body = await resp.text()
        assert "Ina" not in body and "otto@" not in body
        refused.append(body)
    assert len(set(refused)) == 1  # the same answer whether the account exists or not
    sample = await client.get(base, headers=marketing)
    assert sample.status == 200 and "Ada" in (await sample.json())["subject"]

    for scopes in (("newsletters", "accounts"), ("admin",)):
        reader = await bearer(pool, *scopes, name="-".join(scopes))
        resp = await client.get(base, params={"account": "in"}, headers=reader)
        assert resp.status == 200
        preview = await resp.json()
        assert preview["subject"] == "Hi Ina Reader" and "ina@example.com" in preview["text"]
        assert (await client.get(base, params={"account": "nobody"}, headers=reader)).status == 404
    for scopes in (("accounts",), ("messages",), ("service",)):
        other = await bearer(pool, *scopes, name="only-" + scopes[0])
        assert (await client.get(base, params={"account": "in"}, headers=other)).status == 403


# --- test-sends ----------------------------------------------------------------------------------


async def _draft(client: Client, headers: dict[str, str]) -> str:
    draft = await create_newsletter(client, headers, subject="Proof", body="Hello {{ name }}")
    return f"/v1/newsletters/{draft['id']}/test"


async def test_test_sends_go_only_to_subscribers_and_allowed_domains(
    client: Client,
    pool: asyncpg.Pool,
    factory: Factory,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    await factory.account(email="reader@example.com", newsletter=True)
    await factory.account(email="left@example.com", newsletter=False)
    await factory.account(email="bounced@example.com", newsletter=True)
    await suppression.add(pool, "bounced@example.com", "hard_bounce")
    await suppression.add(pool, "unsubscribed@example.org", "unsubscribed", "newsletter")
    headers = await bearer(pool, "newsletters")
    path = await _draft(client, headers)

    outsiders = ["anyone@elsewhere.net", "left@example.com", "bounced@example.com"]
    messages = []
    for address in outsiders:
        resp = await client.post(path, json={"to": ["proof@example.org", address]}, headers=headers)
        assert resp.status == 422, address
        [error] = (await resp.json())["errors"]
        assert error["field"] == "to.1"
        messages.append(error["message"])
    assert len(set(messages)) == 1  # an unknown address and a member who left read the same
    assert "example.org" in messages[0]

    resp = await client.post(path, json={"to": ["unsubscribed@example.org"]}, headers=headers)
    assert resp.status == 422
    assert "suppression list" in (await resp.json())["errors"][0]["message"]
    assert await pool.fetchval("SELECT count(*) FROM emails") == 0

    resp = await client.post(path, json={"to": ["reader@example.com", "proof@example.org"]}, headers=headers)
    assert resp.status == 202, await resp.text()
    await run_worker(queues.SERVICE)
    assert sorted(r.recipients[0] for r in smtp.received) == ["proof@example.org", "reader@example.com"]


async def test_test_send_domains_setting(make_client: Any, pool: asyncpg.Pool) -> None:
    client = await make_client(test_send_domains=["staff.example.net"])
    headers = await bearer(pool, "newsletters")
    path = await _draft(client, headers)
    assert (await client.post(path, json={"to": ["proof@example.org"]}, headers=headers)).status == 422
    assert (await client.post(path, json={"to": ["Proof@Staff.Example.NET"]}, headers=headers)).status == 202
    members_only = await make_client(test_send_domains=[])
    assert (
        await members_only.post(path, json={"to": ["a@staff.example.net"]}, headers=headers)
    ).status == 422


async def test_test_sends_are_limited_per_key_and_hour(
    make_client: Any, pool: asyncpg.Pool, redis: ArqRedis
) -> None:
    client = await make_client(test_send_per_hour=3)
    headers = await bearer(pool, "newsletters", name="first")
    path = await _draft(client, headers)
    two = {"to": ["a@example.org", "b@example.org"]}
    assert (await client.post(path, json=two, headers=headers)).status == 202
    resp = await client.post(path, json=two, headers=headers)
    assert resp.status == 429 and resp.content_type == PROBLEM
    assert 3000 < int(resp.headers["Retry-After"]) <= 3600
    assert await pool.fetchval("SELECT count(*) FROM emails") == 2  # nothing of the refused one
    assert (await client.post(path, json={"to": ["c@example.org"]}, headers=headers)).status == 202
    assert (await client.post(path, json={"to": ["d@example.org"]}, headers=headers)).status == 429
    other = await bearer(pool, "newsletters", name="second")
    assert (await client.post(path, json={"to": ["d@example.org"]}, headers=other)).status == 202
    # The count lives in Redis, shared by every web process.
    second_process = await make_client(test_send_per_hour=3)
    assert (await second_process.post(path, json={"to": ["e@example.org"]}, headers=headers)).status == 429


async def test_test_sends_stop_when_redis_cannot_count_them(client: Client, pool: asyncpg.Pool) -> None:
    headers = await bearer(pool, "newsletters")
    path = await _draft(client, headers)
    assert client.app is not None
    redis = client.app[REDIS]
    redis.connection_pool.connection_kwargs["port"] = free_port()  # a real client, nobody listening
    await redis.connection_pool.disconnect()
    redis.connection_pool.reset()  # new connections, to the new port
    resp = await client.post(path, json={"to": ["proof@example.org"]}, headers=headers)
    assert resp.status == 503 and resp.content_type == PROBLEM and resp.headers["Retry-After"] == "2"
    assert await pool.fetchval("SELECT count(*) FROM emails") == 0


async def test_console_test_send_has_the_same_rules(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    _, key = await auth.create_key(pool, "Marketing Max", ["newsletters"])
    assert (await post_key(client, key)).status == 303
    csrf = csrf_of(await (await client.get("/console/")).text())
    row = await pool.fetchrow("INSERT INTO newsletters (subject, body) VALUES ('Proof', 'Hi') RETURNING id")
    await factory.account(email="left@example.com", newsletter=False)
    for to in ("anyone@elsewhere.net", "left@example.com"):
        resp = await client.post(f"/console/newsletters/{row['id']}/test", data={"csrf": csrf, "to": to})
        assert resp.status == 422, to
        assert "Nothing was sent" in await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM emails") == 0
    resp = await client.post(
        f"/console/newsletters/{row['id']}/test", data={"csrf": csrf, "to": "me@example.org"}
    )
    assert resp.status == 200
    assert await pool.fetchval("SELECT count(*) FROM emails") == 1


# --- console sign-in throttle ----------------------------------------------------------------------


async def test_console_sign_in_is_throttled_per_client(
    make_client: Any, pool: asyncpg.Pool, redis: ArqRedis
) -> None:
    client = await make_client(console_sign_in_attempts=3)
    _, key = await auth.create_key(pool, "Operator", ["admin"])
    for _ in range(3):
        assert (await post_key(client, "ntf_wrong")).status == 401
    throttled = await post_key(client, key)  # even the right key waits: the door is shut
    assert throttled.status == 429
    assert 0 < int(throttled.headers["Retry-After"]) <= 15 * 60
    assert "Too many failed sign-ins" in await throttled.text()
    assert "notifier_console=" not in throttled.headers.get("Set-Cookie", "")
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0
    await redis.flushdb()  # the window is over
    assert (await post_key(client, key)).status == 303


# --- rotating the signing secret --------------------------------------------------------------------


async def test_links_signed_with_an_older_secret_keep_working(
    make_client: Any, pool: asyncpg.Pool, factory: Factory, settings: Settings
) -> None:
    old, new = b"the-secret-before-rotation", b"the-secret-after-rotation"
    member = await factory.account(newsletter=True, digest_frequency="daily")
    unsubscribe = tokens.sign(old, "unsubscribe", member["id"], "newsletter")
    preferences = tokens.sign(old, "preferences", member["id"], "all")
    forged = tokens.sign(b"never-on-the-ring", "unsubscribe", member["id"], "newsletter")

    rotated = await make_client(
        secret_key=SecretStr(new.decode()), old_secret_keys=[SecretStr("x-older"), SecretStr(old.decode())]
    )
    assert (await rotated.get(f"/u/{forged}")).status == 404
    assert (await rotated.get(f"/preferences/{preferences}")).status == 200
    page = await rotated.get(f"/u/{unsubscribe}")
    assert page.status == 200
    resp = await rotated.post(f"/u/{unsubscribe}", data={"List-Unsubscribe": "One-Click"})
    assert resp.status == 200
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", member["id"]) is False

    # A form shown before the rotation (its nonce made with the old key) still posts.
    resp = await rotated.post(
        f"/preferences/{preferences}",
        data={"nonce": pages.form_nonce(old, preferences), "digest_frequency": "weekly", "digest_weekday": "5",
              "digest_hour": "7", "timezone": "UTC"},
    )  # fmt: skip
    assert resp.status == 200 and "Saved" in await resp.text()
    assert (
        await pool.fetchval("SELECT digest_frequency FROM accounts WHERE id = $1", member["id"]) == "weekly"
    )

    dropped = await make_client(secret_key=SecretStr(new.decode()))
    assert (await dropped.get(f"/u/{unsubscribe}")).status == 404  # off the ring: refused


def test_the_keyring_signs_with_the_newest_and_verifies_with_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_SECRET_KEY", "current")
    monkeypatch.setenv("NOTIFIER_OLD_SECRET_KEYS", "older, oldest")
    settings = Settings(_env_file=None)
    assert settings.keyring == (b"current", b"older", b"oldest")
    token = tokens.sign(settings.secret, "confirm", 7, "newsletter")
    assert tokens.verify((b"current",), token, "confirm") is not None
    assert tokens.verify(settings.keyring, tokens.sign(b"oldest", "confirm", 7), "confirm") is not None
    assert tokens.verify(settings.keyring, tokens.sign(b"other", "confirm", 7), "confirm") is None
    monkeypatch.setenv("NOTIFIER_OLD_SECRET_KEYS", '["with,comma"]')
    assert Settings(_env_file=None).keyring == (b"current", b"with,comma")
