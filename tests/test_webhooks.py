"""Webhooks out: signed with Standard Webhooks, delivered from a durable outbox, retried, in order
per member, never to private addresses unless allowed, and erasure leaves no member data behind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from notifier import queues, webhooks
from notifier.app import create_app
from notifier.settings import Settings
from notifier.webhook_client import GuardedResolver, HTTPPoster
from tests.api_helpers import bearer, new_account
from tests.factory import Factory
from tests.webhook_receiver import Receiver


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, allowing the loopback receiver."""
    return settings.model_copy(update={"webhooks_allow_private": True})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def poster(settings: Settings) -> AsyncIterator[HTTPPoster]:
    p = HTTPPoster(settings)
    yield p
    await p.close()


async def register(
    client: TestClient[Any, Any], pool: asyncpg.Pool, receiver: Receiver, events: list[str]
) -> dict[str, Any]:
    resp = await client.post(
        "/v1/webhooks",
        json={"url": receiver.url, "events": events, "description": "test receiver"},
        headers=await bearer(pool, "admin"),
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    receiver.secret = body["secret"]
    return body


# Source rows the fan-out has not read yet.
_UNREAD = " + ".join(
    f"""(SELECT count(*) FROM {table} t WHERE t.txid IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM webhook_cursors c WHERE c.source = '{source}'
        AND (t.txid < c.txid OR (t.txid = c.txid AND t.id <= c.last_id))))"""
    for table, source in (("events", "event"), ("audit_log", "audit"), ("erasures", "erasure"))
)
_UNREAD = f"SELECT {_UNREAD}"


async def deliver_all(
    pool: asyncpg.Pool, settings: Settings, poster: HTTPPoster, now: datetime | None = None
) -> webhooks.Counts:
    """Run passes until a pass finds nothing new (another session's open transaction on the
    server may hold a row back from the fan-out for a moment)."""
    total = webhooks.Counts()
    for _ in range(50):
        counts = await webhooks.run(pool, settings, poster, now=now)
        total.fanned_out += counts.fanned_out
        total.delivered += counts.delivered
        total.retried += counts.retried
        total.failed += counts.failed
        pending = await pool.fetchval(_UNREAD)
        if counts.fanned_out == 0 and counts.delivered == 0 and pending == 0:
            break
        await asyncio.sleep(0.05)
    return total


async def test_every_event_type_arrives_signed(
    client, pool, settings, factory: Factory, receiver, poster
) -> None:
    await register(client, pool, receiver, list(webhooks.EVENT_TYPES))
    admin = await bearer(pool, "accounts", "admin")
    resp = await client.post("/v1/accounts", json=new_account(7), headers=admin)
    assert resp.status == 201
    account = await pool.fetchrow("SELECT * FROM accounts WHERE external_id = 'm-7'")
    email = await factory.email(account, status="sent")
    for kind in ("sent", "bounced", "complained", "failed"):
        await factory.event(
            kind, account_id=account["id"], email_id=email["id"], detail={"error": "550 5.1.1"}
        )
    await factory.event(
        "unsubscribed", account_id=account["id"], method="one-click", detail={"list": "newsletter"}
    )
    await factory.event(
        "resubscribed", account_id=account["id"], method="preference-centre", detail={"list": "newsletter"}
    )
    resp = await client.put(
        "/v1/accounts/m-7/preferences", json={"digest_frequency": "weekly"}, headers=admin
    )
    assert resp.status == 200, await resp.text()
    await deliver_all(pool, settings, poster)
    resp = await client.delete("/v1/accounts/m-7?reason=child", headers=admin)
    assert resp.status == 200
    await deliver_all(pool, settings, poster)

    assert receiver.forged == 0
    types = [c.payload["type"] for c in receiver.delivered()]
    assert types[:6] == [
        "email.sent",
        "email.bounced",
        "email.complained",
        "email.failed",
        "member.unsubscribed",
        "member.resubscribed",
    ]
    assert types[6:] == ["member.preferences_changed", "account.erased"]
    by_type = {c.payload["type"]: c.payload for c in receiver.delivered()}
    assert by_type["email.bounced"]["data"] == {
        "email_id": email["id"],
        "account": "m-7",
        "kind": "service",
        "reason": "550 5.1.1",
    }
    assert by_type["member.preferences_changed"]["data"]["changes"] == {"digest_frequency": "weekly"}
    erased = by_type["account.erased"]
    assert set(erased["data"]) == {"erasure_id", "reason"}
    assert "m-7" not in json.dumps(erased) and "member7" not in json.dumps(erased)
    # The member's delivered payloads went with the member.
    assert (
        await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE payload::text LIKE '%m-7%'") == 0
    )


async def test_a_forged_or_stale_signature_does_not_verify(receiver) -> None:
    receiver.secret = webhooks.new_secret()
    body, headers = webhooks.signed_request(
        webhooks.new_secret(), 1, {"type": "email.sent"}, datetime.now(UTC)
    )
    poster = HTTPPoster(Settings(webhooks_allow_private=True, secret_key="x"))
    try:
        assert (await poster.post(receiver.url, body, headers)).status == 401
        body, headers = webhooks.signed_request(
            receiver.secret, 1, {"type": "email.sent"}, datetime.now(UTC) - timedelta(minutes=10)
        )
        assert (await poster.post(receiver.url, body, headers)).status == 401
        body, headers = webhooks.signed_request(receiver.secret, 1, {"type": "email.sent"}, datetime.now(UTC))
        assert (await poster.post(receiver.url, body, headers)).status == 204
    finally:
        await poster.close()
    assert receiver.forged == 2


async def _sent_events(factory: Factory, members: int, each: int) -> dict[str, list[int]]:
    """`each` sent events per member, interleaved between members; the e-mail ids per member in order."""
    accounts = [await factory.account(external_id=f"o-{m}") for m in range(members)]
    order: dict[str, list[int]] = {a["external_id"]: [] for a in accounts}
    for _ in range(each):
        for account in accounts:
            email = await factory.email(account, status="sent")
            await factory.event("sent", account_id=account["id"], email_id=email["id"])
            order[account["external_id"]].append(email["id"])
    return order


def _received_order(receiver: Receiver) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for call in receiver.delivered():
        out.setdefault(call.payload["data"]["account"], []).append(call.payload["data"]["email_id"])
    return out


async def test_a_receiver_that_fails_for_a_while_gets_every_event_once_in_order(
    client, pool, settings, factory, receiver, poster
) -> None:
    endpoint = await register(client, pool, receiver, ["email.sent"])
    expected = await _sent_events(factory, members=3, each=4)
    receiver.fail_next = 7
    now = datetime.now(UTC)
    for step in range(12):  # the clock moves past each retry delay in turn
        await deliver_all(
            pool, settings, poster, now=now + timedelta(seconds=sum(webhooks.RETRY_DELAYS[:step]))
        )
    assert sum(1 for c in receiver.calls if c.status == 500) == 7
    delivered = receiver.delivered()
    assert len(delivered) == 12 and len({c.msg_id for c in delivered}) == 12
    assert _received_order(receiver) == expected
    resp = await client.get(f"/v1/webhooks/{endpoint['id']}", headers=await bearer(pool, "admin"))
    assert (await resp.json())["status"] == "enabled"
    assert (await resp.json())["failing_since"] is None


async def test_order_per_member_holds_with_many_at_once(
    client, pool, settings, factory, receiver, poster
) -> None:
    await register(client, pool, receiver, ["email.sent"])
    expected = await _sent_events(factory, members=10, each=8)
    receiver.delay = 0.005
    await deliver_all(pool, settings, poster)
    assert _received_order(receiver) == expected


async def test_a_worker_killed_mid_delivery_loses_nothing(
    client, pool, settings, factory, receiver, poster
) -> None:
    await register(client, pool, receiver, ["email.sent"])
    expected = await _sent_events(factory, members=6, each=3)
    receiver.delay = 0.3
    while await pool.fetchval(_UNREAD):  # every event is in the outbox before the worker starts
        await webhooks.fan_out(pool)
        await asyncio.sleep(0.02)
    task = asyncio.create_task(webhooks.run(pool, settings, poster))
    for _ in range(200):
        if receiver.in_flight:
            break
        await asyncio.sleep(0.01)
    assert receiver.in_flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(receiver.delivered()) < 18
    leased = await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE locked_until IS NOT NULL")
    assert leased > 0
    receiver.delay = 0
    # Another worker, once the lease has run out.
    await deliver_all(
        pool,
        settings,
        poster,
        now=datetime.now(UTC) + webhooks.lease_for(settings, 20) + timedelta(seconds=1),
    )
    got = {(c.payload["data"]["account"], c.payload["data"]["email_id"]) for c in receiver.delivered()}
    assert got == {(m, e) for m, ids in expected.items() for e in ids}
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'") == 0


async def test_persistent_failure_disables_the_endpoint_and_enabling_resumes(
    client, pool, settings, factory, receiver, poster
) -> None:
    endpoint = await register(client, pool, receiver, ["email.sent"])
    await _sent_events(factory, members=1, each=2)
    receiver.fail_next = 10_000
    start = datetime.now(UTC)
    await deliver_all(pool, settings, poster, now=start)
    await deliver_all(pool, settings, poster, now=start + timedelta(hours=25))
    admin = await bearer(pool, "admin")
    body = await (await client.get(f"/v1/webhooks/{endpoint['id']}", headers=admin)).json()
    assert body["status"] == "disabled"
    assert "no successful delivery since" in body["disabled_reason"]
    calls = len(receiver.calls)
    await deliver_all(pool, settings, poster, now=start + timedelta(hours=40))
    assert len(receiver.calls) == calls  # disabled: nothing is attempted
    receiver.fail_next = 0
    resp = await client.patch(f"/v1/webhooks/{endpoint['id']}", json={"status": "enabled"}, headers=admin)
    assert resp.status == 200 and (await resp.json())["status"] == "enabled"
    await deliver_all(pool, settings, poster, now=start + timedelta(hours=40))
    assert len(receiver.delivered()) == 2


async def test_erasure_removes_undelivered_payloads(
    client, pool, settings, factory, receiver, poster
) -> None:
    await register(client, pool, receiver, ["member.unsubscribed", "account.erased"])
    admin = await bearer(pool, "accounts", "admin")
    await client.post("/v1/accounts", json=new_account(3), headers=admin)
    account_id = await pool.fetchval("SELECT id FROM accounts WHERE external_id = 'm-3'")
    await factory.event(
        "unsubscribed", account_id=account_id, method="one-click", detail={"list": "newsletter"}
    )
    receiver.fail_next = 1
    await deliver_all(pool, settings, poster)  # fanned out, first attempt failed: still pending
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'") == 1
    resp = await client.delete("/v1/accounts/m-3", headers=admin)
    assert resp.status == 200
    dump = await pool.fetchval("SELECT coalesce(string_agg(payload::text, ' '), '') FROM webhook_deliveries")
    assert "m-3" not in dump
    await deliver_all(pool, settings, poster, now=datetime.now(UTC) + timedelta(minutes=5))
    assert [c.payload["type"] for c in receiver.delivered()] == ["account.erased"]


async def test_api_lists_pages_deliveries_and_redelivers(
    client, pool, settings, factory, receiver, poster
) -> None:
    admin = await bearer(pool, "admin")
    first = await register(client, pool, receiver, ["email.sent"])
    await register(client, pool, receiver, ["account.erased"])
    resp = await client.get("/v1/webhooks?limit=1", headers=admin)
    page = await resp.json()
    assert resp.status == 200 and len(page["items"]) == 1 and page["next_cursor"]
    assert "secret" not in page["items"][0]
    resp = await client.get(f"/v1/webhooks?limit=1&cursor={page['next_cursor']}", headers=admin)
    assert [e["id"] for e in (await resp.json())["items"]] == [first["id"]]
    receiver.secret = first["secret"]
    await _sent_events(factory, members=1, each=1)
    await deliver_all(pool, settings, poster)
    resp = await client.get(f"/v1/webhooks/{first['id']}/deliveries", headers=admin)
    items = (await resp.json())["items"]
    assert [d["status"] for d in items] == ["delivered"] and items[0]["last_status"] == 204
    resp = await client.post(
        f"/v1/webhooks/{first['id']}/deliveries/{items[0]['id']}/redeliver", headers=admin
    )
    assert resp.status == 202 and (await resp.json())["status"] == "pending"
    await deliver_all(pool, settings, poster)
    assert [c.msg_id for c in receiver.delivered()] == [f"msg_{items[0]['id']}"] * 2
    resp = await client.post(f"/v1/webhooks/{first['id']}/deliveries/999999/redeliver", headers=admin)
    assert resp.status == 404
    resp = await client.delete(f"/v1/webhooks/{first['id']}", headers=admin)
    assert resp.status == 204
    assert (await client.get(f"/v1/webhooks/{first['id']}", headers=admin)).status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.org/x", "events": ["email.sent"]}, "url"),
        ({"url": "not a url", "events": ["email.sent"]}, "url"),
        ({"url": "https://u:p@example.org/x", "events": ["email.sent"]}, "url"),
        ({"url": "https://example.org/x", "events": ["email.opened"]}, "events.0"),
        ({"url": "https://example.org/x", "events": []}, "events"),
        ({"url": "https://example.org/x", "events": ["email.sent"], "secret": "x"}, "secret"),
    ],
)
async def test_invalid_registrations_are_422_naming_the_field(client, pool, body, field) -> None:
    resp = await client.post("/v1/webhooks", json=body, headers=await bearer(pool, "admin"))
    assert resp.status == 422
    assert resp.content_type == "application/problem+json"
    assert field in [e["field"] for e in (await resp.json())["errors"]]
    assert await pool.fetchval("SELECT count(*) FROM webhook_endpoints") == 0


async def test_webhooks_need_the_admin_scope(client, pool) -> None:
    resp = await client.get("/v1/webhooks", headers=await bearer(pool, "accounts"))
    assert resp.status == 403


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "http://[::1]/hook",
        "http://[::ffff:192.168.0.1]/hook",
    ],
)
async def test_private_destinations_are_refused(settings, pool, redis, url) -> None:
    strict = settings.model_copy(update={"webhooks_allow_private": False})
    async with TestClient(TestServer(create_app(strict))) as client:
        resp = await client.post(
            "/v1/webhooks", json={"url": url, "events": ["email.sent"]}, headers=await bearer(pool, "admin")
        )
        assert resp.status == 422
        errors = (await resp.json())["errors"]
        assert errors[0]["field"] == "url" and "public addresses" in errors[0]["message"]
    assert await pool.fetchval("SELECT count(*) FROM webhook_endpoints") == 0


async def test_the_client_refuses_private_addresses_at_connection_time(settings, receiver) -> None:
    strict = HTTPPoster(settings.model_copy(update={"webhooks_allow_private": False}))
    try:
        posted = await strict.post(receiver.url, b"{}", {})
        assert posted.status is None and "loopback" in (posted.error or "")
        posted = await strict.post(f"http://localhost:{receiver.port}/hook", b"{}", {})
        assert posted.status is None and "loopback" in (posted.error or "")
    finally:
        await strict.close()
    assert receiver.calls == [] and receiver.forged == 0
    with pytest.raises(OSError, match="loopback"):
        await GuardedResolver().resolve("localhost", 80)


async def test_secrets_are_stored_encrypted_and_open_after_rotation(client, pool, settings, receiver) -> None:
    body = await register(client, pool, receiver, ["email.sent"])
    sealed = await pool.fetchval("SELECT secret FROM webhook_endpoints WHERE id = $1", body["id"])
    assert body["secret"].encode() not in bytes(sealed)
    rotated = settings.model_copy(
        update={"secret_key": SecretStr("a-new-key"), "old_secret_keys": [settings.secret_key]}
    )
    assert webhooks.open_secret(rotated, sealed) == body["secret"]
    with pytest.raises(ValueError, match="cannot be decrypted"):
        webhooks.open_secret(
            settings.model_copy(update={"secret_key": SecretStr("other"), "old_secret_keys": []}), sealed
        )


async def test_answers_match_the_openapi_document(client, pool, settings, receiver) -> None:
    from tests.test_openapi import Checker

    check = Checker(await (await client.get("/openapi.json")).json())
    admin = await bearer(pool, "admin")
    resp = await client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["email.sent"]}, headers=admin
    )
    created = await check(resp, "POST", "/v1/webhooks")
    one = f"/v1/webhooks/{created['id']}"
    await check(
        await client.post("/v1/webhooks", json={"url": "x", "events": []}, headers=admin),
        "POST",
        "/v1/webhooks",
    )
    await check(await client.get("/v1/webhooks", headers=admin), "GET", "/v1/webhooks")
    await check(await client.get(one, headers=admin), "GET", one)
    await check(await client.patch(one, json={"description": "crm"}, headers=admin), "PATCH", one)
    await check(await client.get(f"{one}/deliveries", headers=admin), "GET", f"{one}/deliveries")
    path = f"{one}/deliveries/5/redeliver"
    await check(await client.post(path, headers=admin), "POST", path)
    assert len(check.seen) == 7


async def test_the_worker_job_delivers(client, pool, settings, factory, receiver, redis, run_worker) -> None:
    """The job by its shared name, in a burst worker of the service queue (workers.FUNCTIONS)."""
    await register(client, pool, receiver, ["email.sent"])
    expected = await _sent_events(factory, members=2, each=2)
    while await pool.fetchval(_UNREAD):
        await webhooks.fan_out(pool)
        await asyncio.sleep(0.02)
    await redis.enqueue_job(queues.WEBHOOKS_JOB, _queue_name=queues.SERVICE)
    assert await run_worker(queues.SERVICE) >= 1
    assert _received_order(receiver) == expected
