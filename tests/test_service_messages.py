"""POST /v1/service-messages: validated at request time, stored, sent from the service queue."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import queues
from notifier.api import auth
from notifier.mail import outbox
from tests.conftest import MailSink
from tests.factory import Factory

Client = TestClient[Any, Any]


async def service_key(pool: asyncpg.Pool) -> dict[str, str]:
    _, key = await auth.create_key(pool, "account-service", ["service"])
    return {"Authorization": f"Bearer {key}"}


async def test_service_message_is_queued_then_sent(
    client: Client, pool: asyncpg.Pool, factory: Factory, smtp: MailSink, run_worker: Any
) -> None:
    account = await factory.account(external_id="m-1", email="ada@example.com", name="Ada")
    headers = await service_key(pool)
    resp = await client.post(
        "/v1/service-messages",
        json={
            "account": "m-1",
            "template": "email_address_changed",
            "data": {"old_email": "old@example.com", "new_email": "ada@example.com"},
        },
        headers=headers,
    )
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["status"] == "queued"
    row = await pool.fetchrow("SELECT * FROM emails WHERE id = $1", body["id"])
    assert row is not None
    assert (row["queue"], row["kind"], row["account_id"]) == (queues.SERVICE, "service", account["id"])

    assert await run_worker(queues.SERVICE) >= 1
    assert len(smtp.received) == 1
    message = smtp.received[0].message
    assert message["Subject"] == "Your e-mail address was changed"
    assert message["From"] == "Example Org <service@example.org>"
    assert message["List-Unsubscribe"] is None  # service mail is not a list one can leave
    assert message["List-Id"] == "<service.notifier.localhost>"
    text = message.get_body(("plain",))
    assert text is not None
    assert "from old@example.com" in text.get_content()

    status = await client.get(f"/v1/service-messages/{body['id']}", headers=headers)
    assert (await status.json())["status"] == "sent"


async def test_unknown_template_is_422_naming_it(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    await factory.account(external_id="m-1")
    resp = await client.post(
        "/v1/service-messages",
        json={"account": "m-1", "template": "no_such_thing", "data": {}},
        headers=await service_key(pool),
    )
    assert resp.status == 422
    problem = await resp.json()
    assert problem["errors"][0]["field"] == "template"
    assert "no_such_thing" in problem["detail"]
    assert await pool.fetchval("SELECT count(*) FROM emails") == 0


async def test_missing_variable_is_422_naming_it(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    await factory.account(external_id="m-1")
    resp = await client.post(
        "/v1/service-messages",
        json={"account": "m-1", "template": "email_address_changed", "data": {"old_email": "a@example.com"}},
        headers=await service_key(pool),
    )
    assert resp.status == 422
    problem = await resp.json()
    assert problem["errors"] == [
        {"field": "data.new_email", "message": "template 'email_address_changed' needs it"}
    ]
    assert await pool.fetchval("SELECT count(*) FROM emails") == 0


async def test_unknown_account_is_404_and_scope_is_enforced(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    resp = await client.post(
        "/v1/service-messages",
        json={"account": "nobody", "template": "welcome"},
        headers=await service_key(pool),
    )
    assert resp.status == 404
    _, key = await auth.create_key(pool, "registry", ["accounts"])
    resp = await client.post(
        "/v1/service-messages",
        json={"account": "nobody", "template": "welcome"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 403


async def test_idempotency_key_stores_one_email(
    client: Client, pool: asyncpg.Pool, factory: Factory, redis: ArqRedis
) -> None:
    await factory.account(external_id="m-1")
    headers = {**await service_key(pool), "Idempotency-Key": "welcome-m-1"}
    payload = {"account": "m-1", "template": "welcome"}
    first = await client.post("/v1/service-messages", json=payload, headers=headers)
    second = await client.post("/v1/service-messages", json=payload, headers=headers)
    assert first.status == second.status == 202
    assert (await first.json())["id"] == (await second.json())["id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert await pool.fetchval("SELECT count(*) FROM emails") == 1


async def test_erasure_notice_survives_the_account(
    client: Client, pool: asyncpg.Pool, factory: Factory, smtp: MailSink, run_worker: Any
) -> None:
    account = await factory.account(external_id="m-1", email="gone@example.com")
    resp = await client.post(
        "/v1/service-messages",
        json={"account": "m-1", "template": "account_erased"},
        headers=await service_key(pool),
    )
    assert resp.status == 202
    await pool.execute("DELETE FROM accounts WHERE id = $1", account["id"])
    await run_worker(queues.SERVICE)
    assert [r.recipients for r in smtp.received] == [["gone@example.com"]]
    # Once sent, the detached row keeps nothing that names the erased member.
    row = await pool.fetchrow("SELECT status, to_address, subject, context FROM emails")
    assert row is not None and row["status"] == "sent"
    assert (row["to_address"], row["subject"], row["context"]) == ("[erased]", None, {})


async def test_service_message_goes_first_while_a_bulk_backlog_waits(
    client: Client, pool: asyncpg.Pool, factory: Factory, smtp: MailSink, run_worker: Any, redis: ArqRedis
) -> None:
    account = await factory.account(external_id="m-1", email="urgent@example.com")
    async with pool.acquire() as conn:
        ids = await outbox.add_many(
            conn,
            [
                outbox.NewEmail(
                    kind="newsletter",
                    to_address=f"reader{i}@example.com",
                    template="service/selftest",
                    queue=queues.BULK,
                )
                for i in range(2000)
            ],
        )
    await outbox.ring(redis, queues.BULK, count=len(ids))
    resp = await client.post(
        "/v1/service-messages",
        json={"account": "m-1", "template": "welcome"},
        headers=await service_key(pool),
    )
    assert resp.status == 202
    # The service worker (Procfile: `worker --queues service,digest`) sends it without touching
    # the 2,000 newsletters waiting on the bulk queue.
    await run_worker(queues.SERVICE)
    assert [r.recipients for r in smtp.received] == [["urgent@example.com"]]
    assert account["id"] > 0
    counts = dict(await pool.fetch("SELECT status, count(*) FROM emails GROUP BY status"))
    assert counts == {"sent": 1, "queued": 2000}


async def test_data_may_not_override_delivery_names(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    await factory.account(external_id="m-1")
    resp = await client.post(
        "/v1/service-messages",
        json={"account": "m-1", "template": "welcome", "data": {"unsubscribe_url": "https://evil.test"}},
        headers=await service_key(pool),
    )
    assert resp.status == 422
    assert (await resp.json())["errors"] == [{"field": "data.unsubscribe_url", "message": "reserved name"}]


async def test_malformed_bodies_are_4xx_not_500(client: Client, pool: asyncpg.Pool) -> None:
    headers = await service_key(pool)
    for body in ({"template": "welcome"}, {"account": "m-1", "template": "../etc/passwd"}, [1, 2]):
        resp = await client.post("/v1/service-messages", json=body, headers=headers)
        assert resp.status == 422, body
    resp = await client.post(
        "/v1/service-messages", data=b"{not json", headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 400
