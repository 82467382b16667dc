"""Lists, member attributes and segments (issue #18): the lists API, per-list consent, a newsletter
to a list and a segment delivered over real SMTP, one-click unsubscribe from one list, hostile
segment rules, attributes, and the migration of the newsletter consent to the default list."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import newsletter, queues, segments, suppression, tokens
from notifier.db import MIGRATIONS_DIR, migrate, scratch_database
from notifier.settings import Settings
from tests.api_helpers import bearer, create_newsletter, send_newsletter
from tests.conftest import BurstWorker, MailSink, Services

GERMANY = {"attr": "country", "op": "eq", "value": "DE"}


@pytest.fixture
async def headers(pool: asyncpg.Pool) -> dict[str, str]:
    return await bearer(pool, "newsletters", "accounts", name="marketing")


async def make_list(
    client: TestClient[Any, Any], headers: dict[str, str], key: str, **fields: Any
) -> dict[str, Any]:
    resp = await client.post("/v1/lists", json={"key": key, "name": key.title(), **fields}, headers=headers)
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def member(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    name: str,
    lists: dict[str, bool],
    **attributes: Any,
) -> dict[str, Any]:
    """A member registered with `attributes`, opted in to `lists` through the preferences API."""
    body = {
        "external_id": name,
        "email": f"{name}@example.com",
        "name": name.title(),
        "attributes": attributes,
    }
    resp = await client.post("/v1/accounts", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    resp = await client.put(f"/v1/accounts/{name}/preferences", json={"lists": lists}, headers=headers)
    assert resp.status == 200, await resp.text()
    account: dict[str, Any] = await resp.json()
    return account


def path_of(header: str) -> str:
    """The https URL of a List-Unsubscribe header, as a path on the test server."""
    url = urlsplit(header.split(",")[0].strip("<> "))
    return f"{url.path}?{url.query}"


async def test_lists_are_created_read_edited_and_archived(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    offers = await make_list(client, headers, "offers", description="Discounts.", double_opt_in=True)
    assert offers["default"] is False and offers["double_opt_in"] is True and offers["subscribers"] == 0
    assert (
        await client.post("/v1/lists", json={"key": "offers", "name": "x"}, headers=headers)
    ).status == 409
    for bad, field in [
        ({"key": "Offers!", "name": "x"}, "key"),
        ({"key": "digest", "name": "x"}, "key"),
        ({"key": "ok", "name": ""}, "name"),
        ({"key": "ok", "name": "two\nlines"}, "name"),
        ({"key": "ok", "name": "x", "double_opt_in": "yes"}, "double_opt_in"),
    ]:
        resp = await client.post("/v1/lists", json=bad, headers=headers)
        assert resp.status == 422, (bad, await resp.text())
        assert [e["field"] for e in (await resp.json())["errors"]] == [field]
    resp = await client.get("/v1/lists", headers=headers)
    assert [(x["key"], x["default"]) for x in (await resp.json())["items"]] == [
        ("newsletter", True),
        ("offers", False),
    ]
    resp = await client.patch("/v1/lists/offers", json={"name": "Member offers"}, headers=headers)
    assert resp.status == 200 and (await resp.json())["name"] == "Member offers"
    assert (await client.get("/v1/lists/nothing", headers=headers)).status == 404
    assert (await client.post("/v1/lists/newsletter/archive", headers=headers)).status == 409
    resp = await client.delete("/v1/lists/offers", headers=headers)
    assert resp.status == 200 and (await resp.json())["archived_at"] is not None
    resp = await client.get("/v1/lists", headers=headers)
    assert [x["key"] for x in (await resp.json())["items"]] == ["newsletter"]
    resp = await client.get("/v1/lists?archived=true", headers=headers)
    assert [x["key"] for x in (await resp.json())["items"]] == ["newsletter", "offers"]


async def test_a_newsletter_to_list_a_and_germany_reaches_exactly_those_members_once(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    await make_list(client, headers, "alpha")
    await make_list(client, headers, "beta")
    await member(client, headers, "ann", {"alpha": True}, country="DE")
    await member(client, headers, "bob", {"alpha": True, "beta": True}, country="DE", plan="pro")
    await member(client, headers, "cat", {"alpha": True}, country="FR")
    await member(client, headers, "dan", {"beta": True}, country="DE")
    await member(client, headers, "eve", {"alpha": True}, country="DE")
    await member(client, headers, "fay", {}, country="DE")
    await member(client, headers, "gil", {"newsletter": True}, country="DE")
    await suppression.add(pool, "eve@example.com", "complaint", "newsletter")

    resp = await client.post(
        "/v1/segments/count", json={"lists": ["alpha"], "segment": GERMANY}, headers=headers
    )
    assert resp.status == 200 and await resp.json() == {"count": 2}
    created = await create_newsletter(
        client, headers, subject="Hallo", body="Hallo {{ first_name }}", lists=["alpha"], segment=GERMANY
    )
    assert created["lists"] == ["alpha"] and created["segment"] == GERMANY
    resp = await client.get(f"/v1/newsletters/{created['id']}/audience", headers=headers)
    assert await resp.json() == {"count": 2}

    sent = await send_newsletter(client, headers, run_worker, pool, redis, settings, created["id"])
    assert sent["status"] == "sent" and sent["recipients"] == 2
    assert sorted(r.recipients[0] for r in smtp.received) == ["ann@example.com", "bob@example.com"]
    messages = {r.recipients[0]: r.message for r in smtp.received}
    assert {str(m["List-Id"]) for m in messages.values()} == {"<alpha.notifier.localhost>"}

    # Bob leaves alpha by one-click (RFC 8058) and stays on beta.
    resp = await client.post(
        path_of(str(messages["bob@example.com"]["List-Unsubscribe"])), data={"List-Unsubscribe": "One-Click"}
    )
    assert resp.status == 200 and "You are unsubscribed" in await resp.text()
    resp = await client.get("/v1/accounts/bob/preferences", headers=headers)
    assert (await resp.json())["lists"] == {"newsletter": False, "alpha": False, "beta": True}
    consents = await pool.fetch(
        """SELECT l.key, c.granted, c.source FROM consents c JOIN lists l ON l.id = c.list_id
           JOIN accounts a ON a.id = c.account_id WHERE a.external_id = 'bob' ORDER BY c.id"""
    )
    assert [tuple(r) for r in consents] == [
        ("alpha", True, "api"),
        ("beta", True, "api"),
        ("alpha", False, "one-click"),
    ]
    event = await pool.fetchrow("SELECT detail, newsletter_id FROM events WHERE kind = 'unsubscribed'")
    assert event["detail"]["list"] == "alpha" and event["newsletter_id"] == created["id"]

    # A saved segment over two lists: each member once, through the first of the lists they are on.
    resp = await client.post(
        "/v1/segments", json={"key": "germany", "name": "Germany", "rule": GERMANY}, headers=headers
    )
    assert resp.status == 201, await resp.text()
    saved = {"lists": ["alpha", "beta"], "segment_key": "germany"}
    assert await (await client.post("/v1/segments/count", json=saved, headers=headers)).json() == {"count": 3}
    smtp.clear()
    second = await create_newsletter(
        client, headers, subject="Zwei", body="Hallo", lists=["alpha", "beta"], segment_key="germany"
    )
    sent = await send_newsletter(client, headers, run_worker, pool, redis, settings, second["id"])
    assert sent["recipients"] == 3
    got = sorted((r.recipients[0], str(r.message["List-Id"])) for r in smtp.received)
    assert got == [
        ("ann@example.com", "<alpha.notifier.localhost>"),
        ("bob@example.com", "<beta.notifier.localhost>"),
        ("dan@example.com", "<beta.notifier.localhost>"),
    ]
    assert (await client.delete("/v1/segments/germany", headers=headers)).status == 409


async def test_newsletters_without_lists_still_go_to_the_default_list(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    await make_list(client, headers, "alpha")
    await member(client, headers, "ann", {"newsletter": True})
    await member(client, headers, "bob", {"alpha": True})
    created = await create_newsletter(client, headers, subject="Old way", body="Hi")
    sent = await send_newsletter(client, headers, run_worker, pool, redis, settings, created["id"])
    assert sent["recipients"] == 1 and [r.recipients[0] for r in smtp.received] == ["ann@example.com"]
    assert str(smtp.received[0].message["List-Id"]) == "<newsletter.notifier.localhost>"


@pytest.mark.parametrize(
    ("rule", "fields"),
    [
        ({"attr": "country'; DROP TABLE accounts; --", "op": "eq", "value": "DE"}, ["segment.attr"]),
        ({"attr": "country", "op": "like", "value": "%"}, ["segment.op"]),
        ({"attr": "country", "op": "eq; DELETE FROM accounts", "value": 1}, ["segment.op"]),
        ({"field": "email) OR (TRUE", "op": "eq", "value": "x"}, ["segment.field"]),
        ({"field": "created_at", "op": "gt", "value": "yesterday"}, ["segment.value"]),
        ({"field": "created_at", "op": "gt", "value": "0001-01-01T00:00:00+00:00"}, ["segment.value"]),
        ({"field": "locale", "op": "lt", "value": "de"}, ["segment.op"]),
        ({"attr": "tags", "op": "in", "value": []}, ["segment.value"]),
        ({"attr": "x", "op": "eq", "value": {"$ne": 1}}, ["segment.value"]),
        ({"attr": "x", "op": "eq", "value": "a\u0000b"}, ["segment.value"]),
        ({"attr": "x", "op": "exists", "value": 1}, ["segment.value"]),
        ({"attr": "x", "field": "locale", "op": "eq", "value": 1}, ["segment"]),
        ({"category": "news", "attr": "x", "op": "eq", "value": "off"}, ["segment"]),
        ({"category": "news", "op": "gt", "value": "off"}, ["segment.op"]),
        ({"category": "news", "op": "eq", "value": "sometimes"}, ["segment.value"]),
        ({"category": "News'--", "op": "eq", "value": "off"}, ["segment.category"]),
        ({"attr": "x", "op": "eq", "value": 1, "sql": "1=1"}, ["segment.sql"]),
        ({"all": "x"}, ["segment.all"]),
        ({"any": []}, ["segment.any"]),
        ({"all": [GERMANY], "any": [GERMANY]}, ["segment"]),
        (
            {"all": [GERMANY, {"attr": "plan", "op": "eq"}, {"attr": "plan", "op": "bogus", "value": 1}]},
            ["segment.all.1.value", "segment.all.2.op"],
        ),
        ({"not": {"not": {"not": {"not": {"not": {"not": GERMANY}}}}}}, ["segment.not.not.not.not.not.not"]),
        ({"any": [GERMANY] * (segments.MAX_CONDITIONS + 1)}, [f"segment.any.{segments.MAX_CONDITIONS}"]),
        ({"attr": "country", "op": "eq", "value": "x" * segments.MAX_RULE_BYTES}, ["segment"]),
    ],
)
async def test_hostile_segment_rules_are_422_with_field_errors(
    client: TestClient[Any, Any], headers: dict[str, str], pool: asyncpg.Pool, rule: Any, fields: list[str]
) -> None:
    resp = await client.post("/v1/segments/count", json={"segment": rule}, headers=headers)
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert [e["field"] for e in (await resp.json())["errors"]] == fields
    resp = await client.post(
        "/v1/newsletters", json={"subject": "x", "body": "y", "segment": rule}, headers=headers
    )
    assert resp.status == 422
    resp = await client.post(
        "/v1/segments", json={"key": "bad", "name": "Bad", "rule": rule}, headers=headers
    )
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == [
        f.replace("segment", "rule", 1) for f in fields
    ]
    assert await pool.fetchval("SELECT count(*) FROM newsletters") == 0
    assert await pool.fetchval("SELECT count(*) FROM segments") == 0


async def test_hostile_values_are_only_ever_parameters(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    await member(client, headers, "ann", {"newsletter": True}, country="DE", note="x' OR '1'='1")
    for value in ["DE' OR '1'='1", 'DE"; DROP TABLE accounts; --', "$1", "' || (SELECT 1) || '"]:
        rule = {
            "any": [
                {"attr": "country", "op": "eq", "value": value},
                {"field": "locale", "op": "in", "value": [value]},
            ]
        }
        resp = await client.post("/v1/segments/count", json={"segment": rule}, headers=headers)
        assert resp.status == 200 and await resp.json() == {"count": 0}, value
    plain = {"attr": "note", "op": "eq", "value": "x' OR '1'='1"}
    resp = await client.post("/v1/segments/count", json={"segment": plain}, headers=headers)
    assert await resp.json() == {"count": 1}


async def test_every_operator_selects_what_it_says(
    client: TestClient[Any, Any], headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    await member(client, headers, "ann", {"newsletter": True}, country="DE", age=30, tags=["a", "b"])
    await member(client, headers, "bob", {"newsletter": True}, country="FR", age=41)
    await member(client, headers, "cat", {"newsletter": True}, age="old")
    await pool.execute(
        "UPDATE accounts SET locale = 'de', timezone = 'Europe/Berlin' WHERE external_id = 'ann'"
    )
    await pool.execute("UPDATE accounts SET created_at = '2020-01-01T00:00:00Z' WHERE external_id = 'bob'")

    async def who(rule: Any) -> int:
        resp = await client.post("/v1/segments/count", json={"segment": rule}, headers=headers)
        assert resp.status == 200, await resp.text()
        return int((await resp.json())["count"])

    assert await who({"attr": "country", "op": "ne", "value": "DE"}) == 2  # absent counts as different
    assert await who({"attr": "country", "op": "in", "value": ["DE", "FR"]}) == 2
    assert await who({"attr": "age", "op": "gte", "value": 30}) == 2  # "old" is not a number
    assert await who({"attr": "age", "op": "lt", "value": 41}) == 1
    assert await who({"attr": "tags", "op": "contains", "value": "b"}) == 1
    assert await who({"attr": "country", "op": "exists"}) == 2
    assert await who({"not": {"attr": "country", "op": "exists"}}) == 1
    assert await who({"field": "locale", "op": "eq", "value": "de"}) == 1
    assert await who({"field": "timezone", "op": "in", "value": ["Europe/Berlin", "UTC"]}) == 3
    assert await who({"field": "created_at", "op": "lt", "value": "2021-01-01"}) == 1
    # Category preferences: what each member chose for a category ("default": nothing chosen).
    await pool.execute(
        """UPDATE accounts SET digest_categories = '{"community": {"frequency": "off"}}'
           WHERE external_id = 'ann'"""
    )
    await pool.execute(
        """UPDATE accounts SET digest_categories = '{"community": {"frequency": "weekly"}}'
           WHERE external_id = 'bob'"""
    )
    assert await who({"category": "community", "op": "eq", "value": "off"}) == 1
    assert await who({"category": "community", "op": "ne", "value": "off"}) == 2
    assert await who({"category": "community", "op": "in", "value": ["weekly", "default"]}) == 2
    assert await who({"category": "events", "op": "eq", "value": "default"}) == 3
    assert (
        await who({"category": "order-updates.v2", "op": "eq", "value": "default"}) == 3
    )  # any category key
    assert (
        await who(
            {"all": [{"field": "created_at", "op": "gte", "value": "2021-01-01T00:00:00+00:00"}, GERMANY]}
        )
        == 1
    )


async def test_attributes_are_validated_merged_audited_exported_and_erased(
    client: TestClient[Any, Any], headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    await make_list(client, headers, "alpha")
    await member(client, headers, "ann", {"alpha": True}, country="DE", plan="pro")
    resp = await client.patch(
        "/v1/accounts/ann", json={"attributes": {"plan": None, "tags": ["x", 2, True]}}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["attributes"] == {"country": "DE", "tags": ["x", 2, True]}
    audit = await pool.fetchval("SELECT changes FROM audit_log WHERE action = 'account.updated'")
    assert audit["attributes"]["before"] == {"country": "DE", "plan": "pro"}
    for bad, field in [
        ({"Bad-Key": 1}, "attributes.Bad-Key"),
        ({"nested": {"a": 1}}, "attributes.nested"),
        ({"tags": [[1]]}, "attributes.tags.0"),
        ({"big": "x" * 400, **{f"k{i}": "y" * 400 for i in range(10)}}, "attributes"),
        ({"nul": "a\u0000"}, "attributes.nul"),
    ]:
        resp = await client.patch("/v1/accounts/ann", json={"attributes": bad}, headers=headers)
        assert resp.status == 422, (bad, await resp.text())
        assert field in [e["field"] for e in (await resp.json())["errors"]]
    resp = await client.post(
        "/v1/accounts",
        json={"external_id": "x", "email": "x@example.com", "name": "X", "attributes": []},
        headers=headers,
    )
    assert resp.status == 422
    export = await (await client.get("/v1/accounts/ann/export", headers=headers)).json()
    assert export["account"]["attributes"]["country"] == "DE"
    assert [(x["list"], x["subscribed"]) for x in export["lists"]] == [("alpha", True)]
    assert [(c["list"], c["granted"]) for c in export["consents"]] == [("alpha", True)]
    assert (await client.delete("/v1/accounts/ann", headers=headers)).status == 200
    assert await pool.fetchval("SELECT count(*) FROM list_members") == 0
    assert await pool.fetchval("SELECT count(*) FROM consents") == 0


async def test_preferences_refuse_unknown_lists_and_a_disagreeing_newsletter(
    client: TestClient[Any, Any], headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    await member(client, headers, "ann", {})
    for body, field in [
        ({"lists": {"nope": True}}, "lists.nope"),
        ({"lists": {"newsletter": "yes"}}, "lists.newsletter"),
        ({"lists": ["newsletter"]}, "lists"),
        ({"lists": {"newsletter": True}, "newsletter": False}, "newsletter"),
    ]:
        resp = await client.put("/v1/accounts/ann/preferences", json=body, headers=headers)
        assert resp.status == 422, (body, await resp.text())
        assert [e["field"] for e in (await resp.json())["errors"]] == [field]
    resp = await client.put(
        "/v1/accounts/ann/preferences", json={"lists": {"newsletter": True}}, headers=headers
    )
    body = await resp.json()
    assert body["newsletter"] is True and body["lists"] == {"newsletter": True}


def test_list_tokens_name_the_list_and_refuse_tampering() -> None:
    secret = b"k" * 32
    token = tokens.sign(secret, "unsubscribe", 42, "list", 7)
    found = tokens.verify(secret, token, "unsubscribe")
    assert found is not None and (found.list, found.account_id, found.list_id) == ("list", 42, 7)
    old = tokens.sign(secret, "unsubscribe", 42, "newsletter")
    assert len(old) == 35 and tokens.verify(secret, old, "unsubscribe").list_id is None  # type: ignore[union-attr]
    raw = bytearray(base64.urlsafe_b64decode(token + "=="))
    raw[13] ^= 1  # another list id under the same MAC
    forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    assert tokens.verify(secret, forged, "unsubscribe") is None
    with pytest.raises(ValueError):
        tokens.sign(secret, "unsubscribe", 42, "list")


async def test_the_migration_moves_the_newsletter_consent_to_the_default_list(
    services: Services, tmp_path: Path
) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) < 15:
            shutil.copy(path, before)
    async with scratch_database(services.admin_url, "notifier_migration", migrated=False) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, before)
            ann = await conn.fetchval(
                "INSERT INTO accounts (external_id, email, name, newsletter) VALUES ('ann', 'ann@example.com', 'Ann', true) RETURNING id"
            )
            await conn.execute(
                "INSERT INTO consents (account_id, granted, source, wording) VALUES ($1, true, 'api', 'Yes')",
                ann,
            )
            await conn.execute(
                "INSERT INTO accounts (external_id, email, name) VALUES ('bob', 'bob@example.com', 'Bob')"
            )
            assert await migrate(conn) == [
                v for v in sorted(int(p.name[:4]) for p in MIGRATIONS_DIR.glob("*.sql")) if v >= 15
            ]
            default = await conn.fetchrow("SELECT * FROM lists WHERE is_default")
            assert default["key"] == "newsletter" and default["archived_at"] is None
            rows = await conn.fetch("SELECT account_id, list_id, topic, wording FROM consents")
            assert [tuple(r) for r in rows] == [(ann, default["id"], "newsletter", "Yes")]
            assert await conn.fetchval("SELECT attributes FROM accounts WHERE id = $1", ann) == "{}"
        finally:
            await conn.close()


async def test_a_double_opt_in_list_counts_a_member_once_confirmed(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    await make_list(client, headers, "offers", double_opt_in=True)
    await member(client, headers, "ann", {"offers": True})
    await member(client, headers, "bob", {"offers": True})
    count = {"lists": ["offers"]}
    assert await (await client.post("/v1/segments/count", json=count, headers=headers)).json() == {"count": 0}
    ticked = await newsletter.tick(pool, redis, settings)  # the default list's setting is off
    assert ticked["confirmations"] == 2
    assert (await newsletter.tick(pool, redis, settings))["confirmations"] == 0
    await run_worker(queues.SERVICE)
    text = next(
        r.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        for r in smtp.received
        if r.recipients[0] == "ann@example.com"
    )
    url = next(line for line in text.splitlines() if "/confirm/" in line).strip()
    path = url[url.index("/confirm/") :]
    nonce = (await (await client.get(path)).text()).split('name="nonce" value="')[1].split('"')[0]
    assert (await client.post(path, data={"nonce": nonce})).status == 200
    assert await (await client.post("/v1/segments/count", json=count, headers=headers)).json() == {"count": 1}
    confirmed = await pool.fetch("SELECT list_id FROM consents WHERE confirmed_at IS NOT NULL")
    assert len(confirmed) == 1 and confirmed[0]["list_id"] is not None


async def test_the_preference_centre_and_the_member_api_show_every_list(
    client: TestClient[Any, Any], headers: dict[str, str], pool: asyncpg.Pool, settings: Settings
) -> None:
    from tests.test_preference_centre import form_data, open_centre

    await make_list(client, headers, "alpha", description="Alpha news.")
    await make_list(client, headers, "beta")
    ann = await member(client, headers, "ann", {"beta": True})
    account_id = await pool.fetchval("SELECT id FROM accounts WHERE external_id = 'ann'")
    assert ann["lists"] == {"newsletter": False, "alpha": False, "beta": True}
    token, nonce = await open_centre(client, settings, account_id)
    page = await (await client.get(f"/preferences/{token}")).text()
    assert 'name="list-alpha"' in page and "Send me “Alpha”. Alpha news." in page
    resp = await client.post(f"/preferences/{token}", data=form_data(nonce, **{"list-alpha": "yes"}))
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    assert "Alpha" in text and "Beta" in text
    resp = await client.get("/v1/accounts/ann/preferences", headers=headers)
    assert (await resp.json())["lists"] == {"newsletter": False, "alpha": True, "beta": False}
    rows = await pool.fetch(
        "SELECT l.key, c.granted, c.source, c.wording FROM consents c JOIN lists l ON l.id = c.list_id "
        "WHERE c.source = 'preference-centre' ORDER BY l.key"
    )
    assert [(r["key"], r["granted"]) for r in rows] == [("alpha", True), ("beta", False)]
    assert rows[0]["wording"].startswith("Send me “Alpha”")
    kinds = await pool.fetch("SELECT kind, detail->>'list' AS list FROM events ORDER BY id")
    assert [(r["kind"], r["list"]) for r in kinds if r["list"]] == [
        ("resubscribed", "alpha"),
        ("unsubscribed", "beta"),
    ]


async def test_a_german_member_reads_and_consents_to_a_lists_wording_in_german(
    client: TestClient[Any, Any], headers: dict[str, str], pool: asyncpg.Pool, settings: Settings
) -> None:
    from tests.test_preference_centre import form_data, open_centre

    await make_list(client, headers, "alpha", description="Alpha news.")
    await member(client, headers, "gert", {})
    await pool.execute("UPDATE accounts SET locale = 'de-DE' WHERE external_id = 'gert'")
    account_id = await pool.fetchval("SELECT id FROM accounts WHERE external_id = 'gert'")
    token, nonce = await open_centre(client, settings, account_id)
    page = await (await client.get(f"/preferences/{token}")).text()
    german = "Senden Sie mir „Alpha“. Alpha news. Ich kann mich jederzeit"
    assert german in page and "Send me" not in page
    resp = await client.post(f"/preferences/{token}", data=form_data(nonce, **{"list-alpha": "yes"}))
    assert resp.status == 200, await resp.text()
    wording = await pool.fetchval(
        "SELECT wording FROM consents WHERE account_id = $1 AND topic = 'list'", account_id
    )
    assert wording.startswith(german)  # the evidence is the wording the member was shown


async def test_the_console_makes_lists_counts_a_drafts_audience_and_shows_a_members_lists(
    pool: asyncpg.Pool, settings: Settings, redis: ArqRedis
) -> None:
    from aiohttp.test_utils import TestServer

    from notifier.app import create_app
    from tests.test_console import sign_in

    app = create_app(
        settings.model_copy(update={"public_url": "http://127.0.0.1", "console_key_sign_in": True})
    )
    async with TestClient(TestServer(app)) as console:
        csrf = await sign_in(console, pool, ["admin"])
        resp = await console.post("/console/lists", data={"csrf": csrf, "key": "Bad Key", "name": "x"})
        assert resp.status == 422 and 'aria-invalid="true"' in await resp.text()
        resp = await console.post(
            "/console/lists", data={"csrf": csrf, "key": "alpha", "name": "Alpha", "double_opt_in": "yes"}
        )
        assert resp.status == 200 and "Alpha" in await resp.text()
        assert await pool.fetchval("SELECT double_opt_in FROM lists WHERE key = 'alpha'") is True
        api = await bearer(pool, "newsletters", "accounts")
        await member(console, api, "ann", {"alpha": True, "newsletter": True}, country="DE")
        await member(console, api, "bob", {"newsletter": True}, country="FR")
        page = await (await console.get("/console/members/ann")).text()
        assert "Alpha" in page and "<code>country</code>: " in page, page[page.find("Attributes") :][:300]
        page = await (await console.get("/console/lists")).text()
        counts = re.findall(r"<code>([a-z-]+)</code>.*?<td>[^<]*</td>\s*<td>(\d+)</td>", page, re.S)
        assert counts == [("newsletter", "2"), ("alpha", "1")], counts  # ann's alpha is unconfirmed

        created = await create_newsletter(console, api, subject="S", body="B")
        page = await (await console.get(f"/console/newsletters/{created['id']}")).text()
        assert "would reach <strong>2</strong> members" in page
        target = f"/console/newsletters/{created['id']}/audience"
        resp = await console.post(
            target, data={"csrf": csrf, "list": "newsletter", "segment": '{"attr": "country", "op": "like"}'}
        )
        assert resp.status == 422 and "segment.op" in await resp.text()
        resp = await console.post(target, data={"csrf": csrf, "list": "newsletter", "segment": "{not json"})
        assert resp.status == 422
        resp = await console.post(
            target,
            data={
                "csrf": csrf,
                "list": "newsletter",
                "segment": '{"attr": "country", "op": "eq", "value": "DE"}',
            },
        )
        assert resp.status == 200 and "would reach <strong>1</strong> member " in await resp.text()
        live = await console.post(
            "/console/newsletters/count",
            data={"csrf": csrf, "list": "newsletter", "segment": '{"attr": "country", "op": "exists"}'},
        )
        assert live.status == 200 and await live.json() == {"count": 2}
        live = await console.post("/console/newsletters/count", data={"csrf": csrf, "list": "nope"})
        assert live.status == 422 and "lists.0" in (await live.json())["error"]
        row = await pool.fetchrow("SELECT lists, segment FROM newsletters")
        assert row["lists"] == ["newsletter"] and row["segment"] == GERMANY
        resp = await console.post("/console/lists/alpha/archive", data={"csrf": csrf})
        assert resp.status == 200 and "archived" in await resp.text()


async def test_the_export_of_a_member_whose_preferences_changed_is_whole(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    await member(client, headers, "ann", {"newsletter": True})
    resp = await client.get("/v1/accounts/ann/export", headers=headers)
    assert resp.status == 200, await resp.text()
    audit = (await resp.json())["audit"]
    assert [a["changes"].get("source") for a in audit if a["action"] == "preferences.update"] == ["api"]


async def test_the_member_api_shows_and_changes_every_list_with_its_wording(
    client: TestClient[Any, Any], headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    from tests.test_member_inbox import auth, member_token

    await make_list(client, headers, "alpha", description="Alpha news.")
    await member(client, headers, "ann", {})
    token = auth(await member_token(client, pool, "ann"))
    prefs = await (await client.get("/member/v1/preferences", headers=token)).json()
    assert prefs["lists"] == {"newsletter": False, "alpha": False}
    resp = await client.put("/member/v1/preferences", json={"lists": {"alpha": True}}, headers=token)
    assert resp.status == 200 and (await resp.json())["lists"] == {"newsletter": False, "alpha": True}
    row = await pool.fetchrow(
        "SELECT source, wording, wording_version FROM consents WHERE list_id IS NOT NULL"
    )
    assert row["wording"].startswith("Send me “Alpha”. Alpha news.") and row["wording_version"].startswith(
        "list:alpha:"
    )
    resp = await client.put("/member/v1/preferences", json={"lists": {"gamma": True}}, headers=token)
    assert resp.status == 422 and [e["field"] for e in (await resp.json())["errors"]] == ["lists.gamma"]


async def test_mailto_and_provider_unsubscribes_leave_the_list_of_the_email(
    client: TestClient[Any, Any], headers: dict[str, str], pool: asyncpg.Pool, factory: Any
) -> None:
    from notifier.api.inbound import unsubscribe_member

    alpha = await make_list(client, headers, "alpha")
    await make_list(client, headers, "beta")
    await member(client, headers, "ann", {"alpha": True, "beta": True, "newsletter": True})
    ann = await pool.fetchrow("SELECT * FROM accounts WHERE external_id = 'ann'")
    ids = dict(await pool.fetch("SELECT key, id FROM lists"))
    assert alpha["key"] == "alpha"
    email = await factory.email(
        ann,
        kind="newsletter",
        queue=queues.BULK,
        status="sent",
        context={"name": "Ann", "list": "alpha", "list_id": ids["alpha"]},
    )
    async with pool.acquire() as conn:
        # A provider's unsubscribe event names the e-mail: the list it came through is left.
        assert await unsubscribe_member(conn, ann["id"], "newsletter", email["id"], None, "ses") is True
        # A mailto to a list token (`list:ID`): that list.
        assert await unsubscribe_member(conn, ann["id"], f"list:{ids['beta']}", None, None, "mailto") is True
    resp = await client.get("/v1/accounts/ann/preferences", headers=headers)
    assert (await resp.json())["lists"] == {"newsletter": True, "alpha": False, "beta": False}


async def test_test_sends_go_to_members_the_newsletter_reaches(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    await make_list(client, headers, "alpha")
    await member(client, headers, "ann", {"alpha": True}, country="DE")
    await member(client, headers, "bob", {"alpha": True}, country="FR")
    await member(client, headers, "cat", {"newsletter": True}, country="DE")
    created = await create_newsletter(
        client, headers, subject="S", body="B", lists=["alpha"], segment=GERMANY
    )
    to = ["ann@example.com", "bob@example.com", "cat@example.com"]
    resp = await client.post(f"/v1/newsletters/{created['id']}/test", json={"to": to}, headers=headers)
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == ["to.1", "to.2"]
    resp = await client.post(f"/v1/newsletters/{created['id']}/test", json={"to": to[:1]}, headers=headers)
    assert resp.status == 202, await resp.text()
