"""Accounts: register, read, correct, erase, export, audit; idempotent registration."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.api_helpers import bearer, new_account


@pytest.fixture
async def headers(pool: asyncpg.Pool) -> dict[str, str]:
    return await bearer(pool, "accounts", "messages")


async def test_register_creates_account_with_default_preferences(client, headers, pool) -> None:
    resp = await client.post(
        "/v1/accounts",
        json={
            "external_id": "u-1",
            "email": "Ann.Example@Example.COM",
            "name": " Ann ",
            "timezone": "Europe/Berlin",
        },
        headers=headers,
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert resp.headers["Location"] == "/v1/accounts/u-1"
    assert body["email"] == "Ann.Example@example.com"  # domain normalised, local part kept
    assert body["name"] == "Ann"
    assert body["timezone"] == "Europe/Berlin" and body["locale"] == "en"
    assert body["preferences"] == {
        "digest_frequency": "daily",
        "digest_hour": 8,
        "digest_weekday": 1,
        "timezone": "Europe/Berlin",
        "newsletter": False,
        "categories": {},
        "quiet_hours": None,
    }
    resp = await client.get("/v1/accounts/u-1", headers=headers)
    assert resp.status == 200 and (await resp.json()) == body
    audit_rows = await pool.fetch("SELECT * FROM audit_log")
    assert [(r["action"], r["actor_type"], r["actor"]) for r in audit_rows] == [
        ("account.created", "api_key", "registry")
    ]
    assert audit_rows[0]["changes"]["email"] == {"before": None, "after": "Ann.Example@example.com"}


async def test_duplicate_external_id_is_409(client, headers, pool) -> None:
    assert (await client.post("/v1/accounts", json=new_account(1), headers=headers)).status == 201
    resp = await client.post("/v1/accounts", json=new_account(1, email="other@example.com"), headers=headers)
    assert resp.status == 409
    assert resp.content_type == "application/problem+json"
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 1


async def test_registration_lists_every_invalid_field(client, headers, pool) -> None:
    resp = await client.post(
        "/v1/accounts",
        json={
            "external_id": "has space",
            "email": "not-an-address",
            "name": "x" * 201,
            "timezone": "Mars/Olympus",
            "locale": "!!",
            "role": "admin",
        },
        headers=headers,
    )
    assert resp.status == 422
    problem = await resp.json()
    fields = sorted(e["field"] for e in problem["errors"])
    assert fields == ["email", "external_id", "locale", "name", "role", "timezone"]
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"email": "a@example.com", "name": "A"}, "external_id"),
        ({"external_id": "x" * 129, "email": "a@example.com", "name": "A"}, "external_id"),
        ({"external_id": "a", "email": "a@example.com", "name": "line\nbreak"}, "name"),
        ({"external_id": "a", "email": "a@example.com", "name": ""}, "name"),
        ({"external_id": "a", "email": 5, "name": "A"}, "email"),
        ({"external_id": "a", "email": "a@@example.com", "name": "A"}, "email"),
    ],
)
async def test_registration_field_rules(client, headers, body, field) -> None:
    resp = await client.post("/v1/accounts", json=body, headers=headers)
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == [field]


async def test_body_that_is_not_json_or_not_an_object(client, headers) -> None:
    resp = await client.post(
        "/v1/accounts", data=b"{nope", headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 400
    resp = await client.post("/v1/accounts", data=b"x", headers={**headers, "Content-Type": "text/plain"})
    assert resp.status == 415
    resp = await client.post("/v1/accounts", json=[1, 2], headers=headers)
    assert resp.status == 422


async def test_accounts_routes_need_the_accounts_scope(client, pool) -> None:
    messages_only = await bearer(pool, "messages", name="blog")
    for method, path in [
        ("POST", "/v1/accounts"),
        ("GET", "/v1/accounts/x"),
        ("PATCH", "/v1/accounts/x"),
        ("DELETE", "/v1/accounts/x"),
        ("GET", "/v1/accounts/x/export"),
        ("GET", "/v1/accounts/x/audit"),
    ]:
        resp = await client.request(method, path, json={})
        assert resp.status == 401, (method, path)
        resp = await client.request(method, path, json={}, headers=messages_only)
        assert resp.status == 403, (method, path)


async def test_unknown_account_is_404(client, headers) -> None:
    for method, path in [
        ("GET", "/v1/accounts/a%00b"),
        ("GET", "/v1/accounts/bad%0A"),
        ("DELETE", "/v1/accounts/" + "x" * 129),
        ("GET", "/v1/accounts/%C2%B2/audit"),
        ("GET", "/v1/accounts/nobody"),
        ("PATCH", "/v1/accounts/nobody"),
        ("DELETE", "/v1/accounts/nobody"),
        ("GET", "/v1/accounts/nobody/export"),
        ("GET", "/v1/accounts/nobody/audit"),
    ]:
        resp = await client.request(method, path, json={"name": "X"}, headers=headers)
        assert resp.status == 404, (method, path)
        assert resp.content_type == "application/problem+json"


# --- correction and audit ---------------------------------------------------------------------


async def test_patch_corrects_and_audits_before_and_after(client, headers, pool) -> None:
    await client.post("/v1/accounts", json=new_account(1), headers=headers)
    resp = await client.patch(
        "/v1/accounts/m-1", json={"email": "New@Example.org", "name": "Renamed"}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["email"] == "New@example.org" and body["name"] == "Renamed"
    row = await pool.fetchrow("SELECT * FROM audit_log WHERE action = 'account.updated'")
    assert row["actor"] == "registry"
    assert row["changes"] == {
        "email": {"before": "member1@example.com", "after": "New@example.org"},
        "name": {"before": "Member 1", "after": "Renamed"},
    }
    # A patch that changes nothing writes nothing.
    resp = await client.patch("/v1/accounts/m-1", json={"name": "Renamed"}, headers=headers)
    assert resp.status == 200
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 2


async def test_patch_revalidates_and_refuses_null_and_unknown_fields(client, headers, pool) -> None:
    await client.post("/v1/accounts", json=new_account(1), headers=headers)
    resp = await client.patch(
        "/v1/accounts/m-1",
        json={"email": "broken", "name": None, "timezone": "Nowhere/Land", "external_id": "other"},
        headers=headers,
    )
    assert resp.status == 422
    fields = sorted(e["field"] for e in (await resp.json())["errors"])
    assert fields == ["email", "external_id", "name", "timezone"]
    assert (await pool.fetchrow("SELECT email, name FROM accounts"))["email"] == "member1@example.com"


async def test_audit_trail_is_newest_first_and_paginated(client, headers) -> None:
    await client.post("/v1/accounts", json=new_account(1), headers=headers)
    for i in range(4):
        resp = await client.patch("/v1/accounts/m-1", json={"name": f"Name {i}"}, headers=headers)
        assert resp.status == 200
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/v1/accounts/m-1/audit", params=params, headers=headers)
        assert resp.status == 200
        page = await resp.json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["action"] for e in seen] == ["account.updated"] * 4 + ["account.created"]
    assert [e["changes"]["name"]["after"] for e in seen[:4]] == ["Name 3", "Name 2", "Name 1", "Name 0"]
    assert all(e["actor_type"] == "api_key" and e["actor"] == "registry" for e in seen)
    ids = [e["id"] for e in seen]
    assert ids == sorted(ids, reverse=True)
    resp = await client.get("/v1/accounts/m-1/audit", params={"cursor": "garbage"}, headers=headers)
    assert resp.status == 422
    resp = await client.get("/v1/accounts/m-1/audit", params={"limit": "1000"}, headers=headers)
    assert resp.status == 422


# --- what registering sets up ------------------------------------------------------------------


async def test_registration_opens_the_first_digest_window(client, headers, pool) -> None:
    resp = await client.post("/v1/accounts", json=new_account(1), headers=headers)
    assert resp.status == 201
    row = await pool.fetchrow("SELECT digest_window_start, next_digest_at FROM accounts")
    assert row["next_digest_at"] is not None and row["next_digest_at"] > row["digest_window_start"]


# --- idempotent registration ------------------------------------------------------------------


async def test_registration_replays_with_idempotency_key(client, headers, pool) -> None:
    h = {**headers, "Idempotency-Key": "reg-1"}
    first = await client.post("/v1/accounts", json=new_account(1), headers=h)
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    again = await client.post("/v1/accounts", json=new_account(1), headers=h)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert await again.json() == await first.json()
    other = await client.post("/v1/accounts", json=new_account(2), headers=h)
    assert other.status == 422
    assert "reg-1" in (await other.json())["detail"]
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1


async def test_concurrent_registrations_with_one_key_create_one_account(client, headers, pool) -> None:
    h = {**headers, "Idempotency-Key": "same"}
    responses = await asyncio.gather(
        *(client.post("/v1/accounts", json=new_account(7), headers=h) for _ in range(8))
    )
    assert sorted(r.status for r in responses) == [201] * 8
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 7
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 1


# --- erasure and export -----------------------------------------------------------------------

PERSON = {"external_id": "ext-zq-77", "email": "Zelda.Private@Example.net", "name": "Zelda Quixote"}


async def _populate_everything(client, headers, pool) -> asyncpg.Record:
    """An account with a row in every table that can hold something about it."""
    resp = await client.post("/v1/accounts", json=PERSON, headers={**headers, "Idempotency-Key": "reg"})
    assert resp.status == 201
    await client.patch("/v1/accounts/ext-zq-77", json={"name": "Zelda Q. Quixote"}, headers=headers)
    await client.patch("/v1/accounts/ext-zq-77", json={"name": PERSON["name"]}, headers=headers)
    account = await pool.fetchrow("SELECT * FROM accounts WHERE external_id = 'ext-zq-77'")
    resp = await client.post(
        "/v1/accounts/ext-zq-77/messages",
        json={
            "category": "news",
            "subject": "Hello Zelda Quixote",
            "body": "For Zelda.Private@Example.net",
            "data": {"who": "ext-zq-77"},
        },
        headers={**headers, "Idempotency-Key": "msg"},
    )
    assert resp.status == 201
    aid = account["id"]
    await pool.execute(
        "INSERT INTO consents (account_id, granted, source, wording) VALUES ($1, true, 'api', 'Yes please')",
        aid,
    )
    digest_id = await pool.fetchval(
        "INSERT INTO digests (account_id, frequency, window_start, window_end) "
        "VALUES ($1, 'daily', now() - interval '1 day', now()) RETURNING id",
        aid,
    )
    email_id = await pool.fetchval(
        "INSERT INTO emails (kind, queue, account_id, to_address, subject, context, digest_id) "
        "VALUES ('digest', 'q', $1, $2, 'Your digest, Zelda Quixote', $3, $4) RETURNING id",
        aid,
        account["email"],
        {"name": PERSON["name"]},
        digest_id,
    )
    # A test send without an account, to the same address.
    await pool.execute(
        "INSERT INTO emails (kind, queue, to_address, subject) VALUES ('test', 'q', $1, 'Preview')",
        "zelda.private@example.net",
    )
    await pool.execute(
        "INSERT INTO events (kind, account_id, email_id, detail) VALUES ('bounced', $1, $2, $3)",
        aid,
        email_id,
        {"reply": "550 5.1.1 <Zelda.Private@Example.net> unknown"},
    )
    from notifier.suppression import address_hash

    await pool.execute(
        "INSERT INTO suppressions (address_hash, list, reason, detail) VALUES ($1, 'all', 'hard_bounce', $2)",
        address_hash(account["email"]),
        "550 5.1.1 <Zelda.Private@Example.net> unknown",
    )
    return account


async def _tables_mentioning(pool: asyncpg.Pool, needles: list[str]) -> list[str]:
    """Every (table.column) of every table whose text, json or bytea holds any of `needles`."""
    columns = await pool.fetch(
        """
        SELECT c.table_name, c.column_name, c.data_type
        FROM information_schema.columns c
        JOIN pg_tables t ON t.tablename = c.table_name AND t.schemaname = c.table_schema
        WHERE c.table_schema = 'public'
          AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea', 'ARRAY')
        """
    )
    assert len({c["table_name"] for c in columns}) >= 10
    found = []
    for col in columns:
        expr = f'"{col["column_name"]}"::text'
        if col["data_type"] == "bytea":
            expr = f"encode(\"{col['column_name']}\", 'escape')"
        for needle in needles:
            hits = await pool.fetchval(
                f'SELECT count(*) FROM "{col["table_name"]}" WHERE {expr} ILIKE $1', f"%{needle}%"
            )
            if hits:
                found.append(f"{col['table_name']}.{col['column_name']} ~ {needle}")
    return found


async def test_erasure_leaves_no_personal_data_behind(client, headers, pool) -> None:
    account = await _populate_everything(client, headers, pool)
    needles = [PERSON["external_id"], "Zelda.Private@Example.net", PERSON["name"], "Zelda Q. Quixote"]
    before = await _tables_mentioning(pool, needles)
    for table in (
        "accounts",
        "messages",
        "emails",
        "events",
        "audit_log",
        "idempotency_keys",
        "suppressions",
    ):
        assert any(hit.startswith(f"{table}.") for hit in before), (table, before)

    resp = await client.delete("/v1/accounts/ext-zq-77", params={"reason": "child"}, headers=headers)
    assert resp.status == 200, await resp.text()
    receipt = await resp.json()
    assert receipt["erased"] is True and receipt["erasure"]["reason"] == "child"

    assert await _tables_mentioning(pool, needles) == []
    for table in (
        "accounts",
        "messages",
        "consents",
        "digests",
        "emails",
        "events",
        "audit_log",
        "idempotency_keys",
    ):
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    erasure = await pool.fetchrow("SELECT * FROM erasures")
    assert (erasure["reason"], erasure["actor_type"], erasure["actor"]) == ("child", "api_key", "registry")
    # The hard bounce is honoured still, as a hash only.
    from notifier.suppression import address_hash

    kept = await pool.fetchrow("SELECT * FROM suppressions")
    assert kept["address_hash"] == address_hash(account["email"]) and kept["reason"] == "hard_bounce"
    assert (await client.get("/v1/accounts/ext-zq-77", headers=headers)).status == 404
    # The external id is free again.
    assert (await client.post("/v1/accounts", json=PERSON, headers=headers)).status == 201


async def test_erasure_reason_is_checked_and_defaults_to_request(client, headers, pool) -> None:
    await client.post("/v1/accounts", json=new_account(1), headers=headers)
    resp = await client.delete("/v1/accounts/m-1", params={"reason": "bored"}, headers=headers)
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "reason"
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1
    resp = await client.delete("/v1/accounts/m-1", headers=headers)
    assert resp.status == 200
    assert await pool.fetchval("SELECT reason FROM erasures") == "request"
    assert (await client.delete("/v1/accounts/m-1", headers=headers)).status == 404
    assert await pool.fetchval("SELECT count(*) FROM erasures") == 1


async def test_export_holds_everything(client, headers, pool) -> None:
    await _populate_everything(client, headers, pool)
    other = await client.post("/v1/accounts", json=new_account(2), headers=headers)
    assert other.status == 201
    resp = await client.get("/v1/accounts/ext-zq-77/export", headers=headers)
    assert resp.status == 200
    doc = await resp.json()
    assert doc["account"]["email"] == "Zelda.Private@example.net"
    assert doc["account"]["name"] == PERSON["name"]
    assert doc["preferences"]["digest_frequency"] == "daily"
    assert [c["wording"] for c in doc["consents"]] == ["Yes please"]
    assert [m["subject"] for m in doc["messages"]] == ["Hello Zelda Quixote"]
    assert doc["messages"][0]["data"] == {"who": "ext-zq-77"}
    assert [d["frequency"] for d in doc["digests"]] == ["daily"]
    assert [e["subject"] for e in doc["emails"]] == ["Your digest, Zelda Quixote"]
    assert [e["kind"] for e in doc["events"]] == ["bounced"]
    assert [a["action"] for a in doc["audit"]] == ["account.created", "account.updated", "account.updated"]
    assert doc["suppressed"] is True
    assert [(s["list"], s["reason"]) for s in doc["suppressions"]] == [("all", "hard_bounce")]
    assert "Member 2" not in await resp.text()


async def test_erasure_keeps_a_pending_detached_notice(client, headers, pool) -> None:
    """The erasure notice is a service e-mail without an account; erasing must not cancel it."""
    await client.post("/v1/accounts", json=new_account(1), headers=headers)
    await pool.execute(
        "INSERT INTO emails (kind, queue, to_address, template) VALUES ('service', 'q', $1, 'service/account_erased')",
        "member1@example.com",
    )
    await pool.execute(
        "INSERT INTO emails (kind, queue, to_address, status) VALUES ('service', 'q', $1, 'sent')",
        "member1@example.com",
    )
    assert (await client.delete("/v1/accounts/m-1", headers=headers)).status == 200
    rows = await pool.fetch("SELECT template, status FROM emails")
    assert [(r["template"], r["status"]) for r in rows] == [("service/account_erased", "queued")]


@pytest.mark.parametrize(
    "frequency, newsletter, left, kept",
    [
        ("off", False, ["all"], [("all", "unsubscribed")]),
        ("off", False, ["digest"], [("digest", "unsubscribed")]),
        ("off", True, ["newsletter", "digest"], [("digest", "unsubscribed")]),  # opted in again
        ("daily", False, ["newsletter"], [("newsletter", "unsubscribed")]),
        ("off", False, [], []),  # never unsubscribed: nothing to honour
    ],
)
async def test_erasure_keeps_an_unsubscribe_as_a_hash(
    client, headers, pool, factory, frequency, newsletter, left, kept
) -> None:
    account = await factory.account(external_id="u-1", digest_frequency=frequency, newsletter=newsletter)
    for list_name in left:
        await pool.execute(
            "INSERT INTO events (kind, account_id, detail) VALUES ('unsubscribed', $1, $2)",
            account["id"],
            {"list": list_name},
        )
    assert (await client.delete("/v1/accounts/u-1", headers=headers)).status == 200
    rows = await pool.fetch("SELECT address_hash, list, reason, detail FROM suppressions ORDER BY list")
    assert [(r["list"], r["reason"]) for r in rows] == kept
    from notifier.suppression import address_hash

    assert all(r["address_hash"] == address_hash(account["email"]) and r["detail"] is None for r in rows)
