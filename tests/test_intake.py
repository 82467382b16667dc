"""Intake: one message, a batch, idempotency under concurrency, limits and scopes."""

from __future__ import annotations

import asyncio
import io
import json

import asyncpg
import pytest

from notifier import inbox
from notifier.api import messages
from notifier.validation import MAX_BODY, MAX_DATA_BYTES
from tests.api_helpers import bearer
from tests.factory import Factory

MESSAGE = {"category": "blog.comments", "subject": "New comment", "body": "Someone replied.\nRead it."}


@pytest.fixture
async def headers(pool: asyncpg.Pool) -> dict[str, str]:
    return await bearer(pool, "messages", name="blog")


async def test_post_one_message(client, headers, factory: Factory, pool) -> None:
    await factory.account(external_id="ann")
    body = {**MESSAGE, "url": "https://blog.example.org/p/1#c2", "data": {"post": 1, "tags": ["a"]}}
    resp = await client.post("/v1/accounts/ann/messages", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    message = await resp.json()
    assert message["category"] == "blog.comments" and message["subject"] == "New comment"
    assert message["url"] == body["url"] and message["data"] == body["data"]
    assert message["read_at"] is None and message["archived_at"] is None
    assert resp.headers["Location"] == f"/v1/accounts/ann/messages/{message['id']}"
    row = await pool.fetchrow("SELECT * FROM messages")
    assert row["id"] == message["id"] and row["data"] == body["data"] and row["body"] == MESSAGE["body"]


async def test_the_answer_is_the_message_model_byte_for_byte(client, headers, factory: Factory) -> None:
    """Intake builds its answer without the `Message` model (its hot path); the bytes are the
    model's, as the message's own route answers it, with or without url and data."""
    await factory.account(external_id="ann")
    bodies = [
        MESSAGE,
        {**MESSAGE, "subject": "Grüße “quoted” ✓", "url": "https://e.org/ä?q=1#x",
         "data": {"n": 1.5, "big": 2**60, "list": [None, True, "é"], "nested": {"k": "\u2028"}}},
    ]  # fmt: skip
    for body in bodies:
        resp = await client.post("/v1/accounts/ann/messages", json=body, headers=headers)
        assert resp.status == 201
        posted = await resp.read()
        got = await client.get(resp.headers["Location"], headers=headers)
        assert got.status == 200 and await got.read() == posted


async def test_unknown_account_is_404_and_writes_nothing(client, headers, pool) -> None:
    resp = await client.post("/v1/accounts/ghost/messages", json=MESSAGE, headers=headers)
    assert resp.status == 404
    assert "ghost" in (await resp.json())["detail"]
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


@pytest.mark.parametrize(
    "change, fields",
    [
        ({"category": "Has Spaces"}, ["category"]),
        ({"category": "x" * 65}, ["category"]),
        ({"subject": "x" * 301}, ["subject"]),
        ({"subject": "two\nlines"}, ["subject"]),
        ({"body": "x" * (MAX_BODY + 1)}, ["body"]),
        ({"body": "bell\x07"}, ["body"]),
        ({"url": "javascript:alert(1)"}, ["url"]),
        ({"url": "ftp://example.org/x"}, ["url"]),
        ({"data": {"blob": "x" * MAX_DATA_BYTES}}, ["data"]),
        ({"data": [1, 2]}, ["data"]),
        ({"priority": "high"}, ["priority"]),
        ({"subject": None, "body": ""}, ["body", "subject"]),
    ],
)
async def test_invalid_message_is_422_naming_fields(client, headers, factory, pool, change, fields) -> None:
    await factory.account(external_id="ann")
    resp = await client.post("/v1/accounts/ann/messages", json={**MESSAGE, **change}, headers=headers)
    assert resp.status == 422
    problem = await resp.json()
    assert sorted(e["field"] for e in problem["errors"]) == fields
    assert all("pattern" not in e["message"] for e in problem["errors"])
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_too_large_body_is_413(client, headers, factory, settings) -> None:
    await factory.account(external_id="ann")
    big = io.BytesIO(json.dumps({**MESSAGE, "body": "x" * (settings.max_body_bytes + 10)}).encode())
    resp = await client.post(
        "/v1/accounts/ann/messages", data=big, headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["title"] == "Content Too Large"  # RFC 9110's name, as docs/api.md


async def test_messages_routes_need_the_messages_scope(client, pool, factory) -> None:
    await factory.account(external_id="ann")
    accounts_only = await bearer(pool, "accounts", name="registry")
    for path in ("/v1/accounts/ann/messages", "/v1/messages"):
        assert (await client.post(path, json=MESSAGE)).status == 401
        assert (await client.post(path, json=MESSAGE, headers=accounts_only)).status == 403
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


# --- idempotency ------------------------------------------------------------------------------


async def test_repeat_with_same_key_replays(client, headers, factory, pool) -> None:
    await factory.account(external_id="ann")
    h = {**headers, "Idempotency-Key": "evt-1"}
    first = await client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=h)
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    # Same JSON, different formatting and key order: still the same request.
    reordered = json.dumps(dict(reversed(list(MESSAGE.items()))), indent=2)
    again = await client.post(
        "/v1/accounts/ann/messages", data=reordered, headers={**h, "Content-Type": "application/json"}
    )
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert await pool.fetchval("SELECT count(*) FROM messages") == 1


async def test_same_key_with_another_body_is_422(client, headers, factory, pool) -> None:
    await factory.account(external_id="ann")
    await factory.account(external_id="bob")
    h = {**headers, "Idempotency-Key": "evt-1"}
    assert (await client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=h)).status == 201
    resp = await client.post("/v1/accounts/ann/messages", json={**MESSAGE, "subject": "Other"}, headers=h)
    assert resp.status == 422
    assert "evt-1" in (await resp.json())["detail"]
    # The key belongs to the route: the same key for another account is another request too.
    resp = await client.post("/v1/accounts/bob/messages", json=MESSAGE, headers=h)
    assert resp.status == 422
    assert await pool.fetchval("SELECT count(*) FROM messages") == 1


async def test_keys_are_scoped_to_the_api_key(client, headers, factory, pool) -> None:
    await factory.account(external_id="ann")
    other = await bearer(pool, "messages", name="registry")
    for h in (headers, other):
        resp = await client.post(
            "/v1/accounts/ann/messages", json=MESSAGE, headers={**h, "Idempotency-Key": "k"}
        )
        assert resp.status == 201 and "Idempotent-Replayed" not in resp.headers
    assert await pool.fetchval("SELECT count(*) FROM messages") == 2


async def test_failed_request_does_not_burn_the_key(client, headers, factory, pool) -> None:
    h = {**headers, "Idempotency-Key": "early"}
    assert (await client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=h)).status == 404
    await factory.account(external_id="ann")
    resp = await client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=h)
    assert resp.status == 201 and "Idempotent-Replayed" not in resp.headers


async def test_malformed_key_is_400(client, headers, factory) -> None:
    await factory.account(external_id="ann")
    for key in ("", "x" * 256, "naïve"):
        resp = await client.post(
            "/v1/accounts/ann/messages", json=MESSAGE, headers={**headers, "Idempotency-Key": key}
        )
        assert resp.status == 400, key


async def test_concurrent_repeats_create_one_message(client, headers, factory, pool) -> None:
    await factory.account(external_id="ann")
    h = {**headers, "Idempotency-Key": "burst"}
    responses = await asyncio.gather(
        *(client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=h) for _ in range(12))
    )
    assert [r.status for r in responses] == [201] * 12
    bodies = [await r.json() for r in responses]
    assert len({b["id"] for b in bodies}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 11
    assert await pool.fetchval("SELECT count(*) FROM messages") == 1


async def test_record_in_flight_is_409_with_retry_after(client, headers, factory, pool) -> None:
    """A claim committed without its answer (a caller that claims before the effect) is in flight."""
    await factory.account(external_id="ann")
    h = {**headers, "Idempotency-Key": "slow"}
    assert (await client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=h)).status == 201
    await pool.execute("UPDATE idempotency_keys SET status = NULL, response = NULL")
    resp = await client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=h)
    assert resp.status == 409 and resp.headers["Retry-After"] == "1"


async def test_expired_key_is_reclaimed(client, headers, factory, pool) -> None:
    await factory.account(external_id="ann")
    h = {**headers, "Idempotency-Key": "old"}
    assert (await client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=h)).status == 201
    await pool.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    resp = await client.post("/v1/accounts/ann/messages", json={**MESSAGE, "subject": "New"}, headers=h)
    assert resp.status == 201 and "Idempotent-Replayed" not in resp.headers
    assert await pool.fetchval("SELECT count(*) FROM messages") == 2
    await pool.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    from notifier.api.idempotency import purge_expired

    assert await purge_expired(pool) == 1
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0


# --- batch ------------------------------------------------------------------------------------


async def test_batch_answers_per_item(client, headers, factory, pool) -> None:
    await factory.account(external_id="ann")
    await factory.account(external_id="bob")
    items = [
        {"account": "ann", **MESSAGE},
        {"account": "ghost", **MESSAGE},
        {"account": "bob", **MESSAGE, "subject": "For Bob", "data": {"n": 1, "none": None, "l": [None, "ü"]}},
        {"account": "bob", **MESSAGE, "category": "BAD"},
        "not an object",
    ]
    resp = await client.post("/v1/messages", json={"messages": items}, headers=headers)
    assert resp.status == 207, await resp.text()
    body = await resp.json()
    assert body["accepted"] == 2 and body["rejected"] == 3
    statuses = [(r["index"], r["status"]) for r in body["results"]]
    assert statuses == [(0, 201), (1, 404), (2, 201), (3, 422), (4, 422)]
    assert body["results"][1]["errors"][0]["field"] == "account"
    assert body["results"][3]["errors"][0]["field"] == "category"
    assert body["results"][4]["errors"][0]["field"] == "item"
    rows = await pool.fetch(
        "SELECT m.id, a.external_id, m.subject, m.data FROM messages m JOIN accounts a ON a.id = m.account_id"
        " ORDER BY m.id"
    )
    assert [(r["id"], r["external_id"], r["subject"], r["data"]) for r in rows] == [
        (body["results"][0]["id"], "ann", "New comment", None),
        (body["results"][2]["id"], "bob", "For Bob", {"n": 1, "none": None, "l": [None, "ü"]}),
    ]


async def test_batch_all_accepted_is_201(client, headers, factory, pool) -> None:
    accounts = [await factory.account() for _ in range(5)]
    items = [
        {"account": a["external_id"], **MESSAGE, "subject": f"S{i}"} for i, a in enumerate(accounts * 20)
    ]
    resp = await client.post("/v1/messages", json={"messages": items}, headers=headers)
    assert resp.status == 201
    body = await resp.json()
    assert body["accepted"] == 100 and body["rejected"] == 0
    ids = {r["index"]: r["id"] for r in body["results"]}
    rows = {r["id"]: r["subject"] for r in await pool.fetch("SELECT id, subject FROM messages")}
    assert all(rows[ids[i]] == f"S{i}" for i in range(100))


async def test_batch_limits(client, headers, factory, pool, settings) -> None:
    await factory.account(external_id="ann")
    too_many = [{"account": "ann", **MESSAGE}] * 1001
    resp = await client.post("/v1/messages", json={"messages": too_many}, headers=headers)
    assert resp.status == 413
    assert "1000" in (await resp.json())["detail"]
    bodies: list[object] = [{"messages": []}, {"messages": "x"}, {}, [], {"messages": [], "extra": 1}]
    for body in bodies:
        resp = await client.post("/v1/messages", json=body, headers=headers)
        assert resp.status == 422, body
        assert (await resp.json())["title"] == "Unprocessable Content"
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_batch_body_limit_is_413(client, headers, settings) -> None:
    payload = io.BytesIO(b'{"messages": ["' + b"x" * settings.max_batch_body_bytes + b'"]}')
    resp = await client.post(
        "/v1/messages", data=payload, headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 413


async def test_batch_with_idempotency_key_replays(client, headers, factory, pool) -> None:
    await factory.account(external_id="ann")
    h = {**headers, "Idempotency-Key": "batch-1"}
    payload = {"messages": [{"account": "ann", **MESSAGE}, {"account": "nobody", **MESSAGE}]}
    first, second = await asyncio.gather(
        client.post("/v1/messages", json=payload, headers=h),
        client.post("/v1/messages", json=payload, headers=h),
    )
    assert first.status == second.status == 207
    assert await first.json() == await second.json()
    assert {first.headers.get("Idempotent-Replayed"), second.headers.get("Idempotent-Replayed")} == {
        None,
        "true",
    }
    assert await pool.fetchval("SELECT count(*) FROM messages") == 1


def test_batch_item_has_the_rules_of_batch_message() -> None:
    """Valid batches are checked as `BatchItem` dicts, invalid ones item by item as `BatchMessage`."""
    from pydantic import TypeAdapter

    item = TypeAdapter(inbox.BatchItem).json_schema()
    message = inbox.BatchMessage.model_json_schema()
    for schema in (item, message):
        schema.pop("title")
        schema.pop("description", None)
        schema["required"] = sorted(schema["required"])
        for field in schema["properties"].values():
            field.pop("default", None)  # BatchMessage's None is BatchItem's NotRequired
    assert item == message


async def test_valid_and_mixed_batches_store_the_same(client, headers, factory, pool) -> None:
    """An all-valid batch (read straight from the bytes) and the same items beside an invalid one
    (the item-by-item path) store the same rows and answer alike."""
    await factory.account(external_id="ann")
    items = [
        {"account": "ann", **MESSAGE, "subject": "  Padded  ", "url": " https://x.example/p?q=1 "},
        {"account": "ann", **MESSAGE, "url": None, "data": None},
        {
            "account": "ann",
            **MESSAGE,
            "data": {"big": 2**70, "f": 0.1, "inf": float("inf"), "nan": float("nan")},
        },
        {"account": "ann", **MESSAGE, "data": {"u": "ü “q” \u2028", "dup": 1, "n": [None, True, {}]}},
        {"account": "ghost", **MESSAGE},
    ]
    stored = (
        "SELECT category, subject, body, url, data FROM messages WHERE id = ANY($1::bigint[]) ORDER BY id"
    )
    answers = []
    for batch in (items, [*items, {"account": "ann", **MESSAGE, "category": "BAD"}]):
        # json.dumps writes NaN and Infinity, as some producers do; both paths store them as null
        resp = await client.post(
            "/v1/messages",
            data=json.dumps({"messages": batch}),
            headers={**headers, "Content-Type": "application/json"},
        )
        assert resp.status == 207, await resp.text()
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        body = await resp.json()
        ids = [r["id"] for r in body["results"] if r["status"] == 201]
        rows = [dict(r) for r in await pool.fetch(stored, ids)]
        for r in body["results"]:
            r.pop("id", None)
        answers.append((body, rows))
    (valid, valid_rows), (mixed, mixed_rows) = answers
    assert valid_rows == mixed_rows
    assert valid_rows[0]["subject"] == "Padded" and valid_rows[0]["url"] == "https://x.example/p?q=1"
    assert valid_rows[1]["url"] is None and valid_rows[1]["data"] is None
    assert valid_rows[2]["data"] == {"big": 2**70, "f": 0.1, "inf": None, "nan": None}
    assert mixed["results"][:5] == valid["results"]
    assert (mixed["accepted"], mixed["rejected"]) == (valid["accepted"], valid["rejected"] + 1) == (4, 2)


async def test_intake_waits_its_turn_on_a_one_connection_pool(settings, pool, redis, factory) -> None:
    """The intake gate (1.5 x the pool) in front of a single connection: plain, batched and
    repeated idempotent requests at once all finish, in the pool's one connection."""
    from aiohttp.test_utils import TestClient, TestServer

    from notifier.app import create_app

    await factory.account(external_id="ann")
    headers = await bearer(pool, "messages", name="blog")
    settings.db_pool_min = settings.db_pool_max = 1
    async with TestClient(TestServer(create_app(settings))) as client:
        assert client.app[messages.INTAKE_GATE]._value == 2  # round(1 * 1.5)
        keyed = {**headers, "Idempotency-Key": "same"}
        batch = {"messages": [{"account": "ann", **MESSAGE}] * 3}
        answers = await asyncio.gather(
            *(client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=headers) for _ in range(10)),
            *(client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=keyed) for _ in range(5)),
            *(client.post("/v1/messages", json=batch, headers=headers) for _ in range(5)),
        )
        assert [a.status for a in answers] == [201] * 20
        assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 4
    assert await pool.fetchval("SELECT count(*) FROM messages") == 10 + 1 + 15


# --- intake makes members on "immediate" due ---------------------------------------------------


async def test_intake_makes_immediate_members_due(client, headers, factory, pool) -> None:
    ann = await factory.account(external_id="ann", digest_frequency="immediate")
    bob = await factory.account(external_id="bob", digest_frequency="immediate")
    eve = await factory.account(external_id="eve", digest_frequency="daily")
    await pool.execute("UPDATE accounts SET next_digest_at = NULL WHERE digest_frequency = 'immediate'")
    before = await pool.fetchval("SELECT next_digest_at FROM accounts WHERE id = $1", eve["id"])
    one = await client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=headers)
    many = await client.post(
        "/v1/messages",
        json={"messages": [{"account": a, **MESSAGE} for a in ("bob", "eve")]},
        headers=headers,
    )
    assert one.status == 201 and many.status == 201
    due = dict(await pool.fetch("SELECT id, next_digest_at FROM accounts"))
    assert due[ann["id"]] is not None and due[bob["id"]] is not None
    assert due[eve["id"]] == before


async def test_batch_ids_follow_input_order(client, headers, factory) -> None:
    accounts = [await factory.account() for _ in range(3)]
    items = [{"account": accounts[i % 3]["external_id"], **MESSAGE} for i in range(30)]
    resp = await client.post("/v1/messages", json={"messages": items}, headers=headers)
    ids = [r["id"] for r in (await resp.json())["results"]]
    assert ids == sorted(ids) and len(set(ids)) == 30


async def test_large_batch_arriving_in_many_chunks_is_read_whole(client, headers, factory, pool) -> None:
    """A body of several hundred KB reaches the server in pieces; all of it must be read."""
    accounts = [await factory.account() for _ in range(10)]
    text = "Ünïcödé “quoted” text " * 40
    items = [{"account": accounts[i % 10]["external_id"], **MESSAGE, "body": text} for i in range(1000)]
    payload = json.dumps({"messages": items}).encode()
    assert len(payload) > 500_000
    resp = await client.post(
        "/v1/messages", data=io.BytesIO(payload), headers={**headers, "Content-Type": "application/json"}
    )
    assert resp.status == 201, (await resp.text())[:300]
    assert (await resp.json())["accepted"] == 1000
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE body = $1", text) == 1000


async def test_purge_job_runs_from_a_worker(
    client, headers, factory, pool, settings, redis, run_worker
) -> None:
    from workers import CRON_JOBS

    names = {job.name for jobs in CRON_JOBS.values() for job in jobs}
    assert {"idempotency-purge", "inbox-retention"} <= names
    from workers.jobs import idempotency_purge as purge_job

    await factory.account(external_id="ann")
    h = {**headers, "Idempotency-Key": "x"}
    assert (await client.post("/v1/accounts/ann/messages", json=MESSAGE, headers=h)).status == 201
    assert await purge_job({"pool": pool}) == 0
    await pool.execute("UPDATE idempotency_keys SET created_at = now() - interval '2 days'")
    assert await purge_job({"pool": pool}) == 1


async def test_nul_in_data_is_a_per_item_422(client, headers, factory, pool) -> None:
    """jsonb cannot store NUL: caught by validation, so one bad item does not sink the batch."""
    await factory.account(external_id="ann")
    items = [{"account": "ann", **MESSAGE, "data": {"k": "a\x00b"}}, {"account": "ann", **MESSAGE}]
    resp = await client.post("/v1/messages", json={"messages": items}, headers=headers)
    assert resp.status == 207
    results = (await resp.json())["results"]
    assert [r["status"] for r in results] == [422, 201]
    assert results[0]["errors"][0]["field"] == "data"
    single = {**MESSAGE, "data": {"k": "a\x00b"}}
    resp = await client.post("/v1/accounts/ann/messages", json=single, headers=headers)
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == ["data"]
    assert await pool.fetchval("SELECT count(*) FROM messages") == 1


async def _blocked_on_a_lock(pool: asyncpg.Pool) -> None:
    """Wait until some backend waits for a lock (the request reached the locked account row)."""
    for _ in range(500):
        if await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the request never waited for the erasure's lock")


@pytest.mark.parametrize("path", ["/v1/accounts/ann/messages", "/v1/messages"])
async def test_account_erased_during_intake_is_404_not_500(client, headers, factory, pool, path) -> None:
    """The insert saw the account, the erasure committed before its foreign-key check."""
    await factory.account(external_id="ann")
    body = MESSAGE if "accounts" in path else {"messages": [{"account": "ann", **MESSAGE}]}
    async with pool.acquire() as eraser:
        tx = eraser.transaction()
        await tx.start()
        await eraser.execute("DELETE FROM accounts WHERE external_id = 'ann'")
        request = asyncio.ensure_future(client.post(path, json=body, headers=headers))
        await _blocked_on_a_lock(pool)
        await tx.commit()
        resp = await request
    if "accounts" in path:
        assert resp.status == 404
    else:
        assert resp.status == 207
        assert (await resp.json())["results"][0]["status"] == 404
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0
