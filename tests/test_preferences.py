"""Preferences: the API, validation, rescheduling of the open window, audit and consent rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.api import auth
from notifier.audit import MEMBER, Actor
from notifier.preferences import AccountNotFound, InvalidPreferences, apply_preferences, start_schedule
from tests.factory import Factory

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)  # a Monday
ACTOR = Actor("api_key", "test")


@pytest.fixture
async def headers(pool: asyncpg.Pool) -> dict[str, str]:
    _, key = await auth.create_key(pool, "prefs-test", ["accounts"])
    return {"Authorization": f"Bearer {key}"}


async def daily_account(factory: Factory, **fields: Any) -> asyncpg.Record:
    """A daily member whose window opened at T0 and ends tomorrow 08:00 UTC."""
    return await factory.account(
        digest_frequency="daily", digest_window_start=T0, next_digest_at=T0 + timedelta(days=1), **fields
    )


async def test_get_shows_defaults_and_next_due(
    client: TestClient[Any, Any], factory: Factory, headers
) -> None:
    await daily_account(factory, external_id="ann")
    resp = await client.get("/v1/accounts/ann/preferences", headers=headers)
    assert resp.status == 200
    assert await resp.json() == {
        "digest_frequency": "daily",
        "digest_hour": 8,
        "digest_weekday": 1,
        "timezone": "UTC",
        "newsletter": False,
        "categories": {},
        "quiet_hours": None,
        "next_digest_at": "2026-06-02T08:00:00+00:00",
    }


async def test_put_changes_schedule_and_is_audited(
    client: TestClient[Any, Any], factory: Factory, headers, pool: asyncpg.Pool
) -> None:
    acc = await daily_account(factory, external_id="bob")
    resp = await client.put(
        "/v1/accounts/bob/preferences",
        json={
            "digest_frequency": "weekly",
            "digest_weekday": 5,
            "digest_hour": 18,
            "timezone": "Europe/Berlin",
        },
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    # The API acts as of the real clock: the window opened at T0 long ago, so the next Friday
    # 18:00 in Berlin after now.
    due = datetime.fromisoformat(body["next_digest_at"])
    local = due.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.isoweekday(), local.hour, local.minute) == (5, 18, 0)
    assert timedelta(0) < due - datetime.now(UTC) <= timedelta(days=7)
    assert body["digest_frequency"] == "weekly"
    audit_rows = await pool.fetch("SELECT * FROM audit_log WHERE account_id = $1", acc["id"])
    assert len(audit_rows) == 1
    row = audit_rows[0]
    assert (row["actor_type"], row["actor"], row["action"]) == ("api_key", "prefs-test", "preferences.update")
    assert row["changes"]["digest_frequency"] == {"before": "daily", "after": "weekly"}
    assert row["changes"]["timezone"] == {"before": "UTC", "after": "Europe/Berlin"}
    assert "newsletter" not in row["changes"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"digest_frequency": "monthly"}, "digest_frequency"),
        ({"digest_hour": 24}, "digest_hour"),
        ({"digest_hour": -1}, "digest_hour"),
        ({"digest_hour": 7.5}, "digest_hour"),
        ({"digest_hour": True}, "digest_hour"),
        ({"digest_weekday": 0}, "digest_weekday"),
        ({"digest_weekday": 8}, "digest_weekday"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"newsletter": "maybe"}, "newsletter"),
        ({"digest_frequency": None}, "digest_frequency"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_invalid_values_are_422_naming_the_field(
    client: TestClient[Any, Any],
    factory: Factory,
    headers,
    pool: asyncpg.Pool,
    body: dict[str, Any],
    field: str,
) -> None:
    acc = await daily_account(factory, external_id="cat")
    resp = await client.put("/v1/accounts/cat/preferences", json=body, headers=headers)
    assert resp.status == 422
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert [e["field"] for e in problem["errors"]] == [field]
    after = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", acc["id"])
    assert after["digest_frequency"] == "daily" and after["next_digest_at"] == acc["next_digest_at"]
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 0


async def test_several_bad_fields_are_all_named(
    client: TestClient[Any, Any], factory: Factory, headers
) -> None:
    await daily_account(factory, external_id="dan")
    resp = await client.put(
        "/v1/accounts/dan/preferences", json={"digest_hour": 99, "timezone": "Nowhere"}, headers=headers
    )
    assert resp.status == 422
    assert sorted(e["field"] for e in (await resp.json())["errors"]) == ["digest_hour", "timezone"]


async def test_not_an_object_unknown_account_and_auth(
    client: TestClient[Any, Any], factory: Factory, headers, pool
) -> None:
    await daily_account(factory, external_id="eve")
    resp = await client.put("/v1/accounts/eve/preferences", json=[1, 2], headers=headers)
    assert resp.status == 422
    resp = await client.put("/v1/accounts/nobody/preferences", json={}, headers=headers)
    assert resp.status == 404
    resp = await client.get("/v1/accounts/nobody/preferences", headers=headers)
    assert resp.status == 404
    resp = await client.get("/v1/accounts/eve/preferences")
    assert resp.status == 401
    _, other = await auth.create_key(pool, "wrong-scope", ["messages"])
    resp = await client.get("/v1/accounts/eve/preferences", headers={"Authorization": f"Bearer {other}"})
    assert resp.status == 403


async def test_read_only_fields_from_get_may_be_sent_back(
    client: TestClient[Any, Any], factory: Factory, headers
) -> None:
    await daily_account(factory, external_id="fay")
    body = await (await client.get("/v1/accounts/fay/preferences", headers=headers)).json()
    body["digest_hour"] = 20
    body["next_digest_at"] = "1999-01-01T00:00:00+00:00"
    resp = await client.put("/v1/accounts/fay/preferences", json=body, headers=headers)
    assert resp.status == 200
    due = datetime.fromisoformat((await resp.json())["next_digest_at"])
    assert (due.hour, due.minute) == (20, 0)
    assert timedelta(0) < due - datetime.now(UTC) <= timedelta(days=1)


# --- apply_preferences: rescheduling the open window --------------------------------------------


async def test_lowering_daily_to_weekly_skips_tonights_daily(factory: Factory, pool: asyncpg.Pool) -> None:
    # Window opened Monday 08:00 (UTC); a daily would be due Tuesday 08:00. Now is Monday 21:00.
    acc = await daily_account(factory)
    async with pool.acquire() as conn:
        prefs = await apply_preferences(
            conn,
            acc["id"],
            {"digest_frequency": "weekly"},
            MEMBER,
            "preference-centre",
            now=T0 + timedelta(hours=13),
        )
    # Weekly on Monday 08:00: the first after the window start is next Monday.
    assert prefs["next_digest_at"] == datetime(2026, 6, 8, 8, 0, tzinfo=UTC)
    row = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", acc["id"])
    assert row["next_digest_at"] == prefs["next_digest_at"]
    assert row["digest_window_start"] == T0


async def test_raising_weekly_to_hourly_late_in_window_waits_for_next_hour(
    factory: Factory, pool: asyncpg.Pool
) -> None:
    acc = await factory.account(
        digest_frequency="weekly", digest_window_start=T0, next_digest_at=T0 + timedelta(days=7)
    )
    now = T0 + timedelta(days=2, minutes=20)
    async with pool.acquire() as conn:
        prefs = await apply_preferences(
            conn, acc["id"], {"digest_frequency": "hourly"}, MEMBER, "api", now=now
        )
    # The first hourly after the window start (09:00 Monday) has passed: the next after now.
    assert prefs["next_digest_at"] == T0 + timedelta(days=2, hours=1)


async def test_turning_off_and_on_again(factory: Factory, pool: asyncpg.Pool) -> None:
    acc = await daily_account(factory)
    async with pool.acquire() as conn:
        off = await apply_preferences(
            conn, acc["id"], {"digest_frequency": "off"}, MEMBER, "one-click", now=T0
        )
        assert off["next_digest_at"] is None
        later = T0 + timedelta(days=3, hours=2)  # Thursday 10:00
        on = await apply_preferences(conn, acc["id"], {"digest_frequency": "daily"}, MEMBER, "api", now=later)
    # A fresh window starts when the clock restarts: no catch-up digest for the days it was off.
    assert on["next_digest_at"] == datetime(2026, 6, 5, 8, 0, tzinfo=UTC)
    row = await pool.fetchrow("SELECT digest_window_start FROM accounts WHERE id = $1", acc["id"])
    assert row["digest_window_start"] == later


async def test_immediate_is_due_now_only_when_messages_wait(factory: Factory, pool: asyncpg.Pool) -> None:
    quiet = await daily_account(factory)
    busy = await daily_account(factory)
    await factory.message(busy)
    async with pool.acquire() as conn:
        q = await apply_preferences(
            conn, quiet["id"], {"digest_frequency": "immediate"}, MEMBER, "api", now=T0
        )
        b = await apply_preferences(
            conn, busy["id"], {"digest_frequency": "immediate"}, MEMBER, "api", now=T0
        )
    assert q["next_digest_at"] is None
    assert b["next_digest_at"] == T0
    # Still immediate with a new time zone: a coalescing window in progress is kept.
    await pool.execute(
        "UPDATE accounts SET next_digest_at = $2 WHERE id = $1", busy["id"], T0 + timedelta(minutes=2)
    )
    async with pool.acquire() as conn:
        tz = await apply_preferences(conn, busy["id"], {"timezone": "Europe/Paris"}, MEMBER, "api", now=T0)
    assert tz["next_digest_at"] == T0 + timedelta(minutes=2)


async def test_newsletter_change_records_consent_and_nothing_for_no_change(
    factory: Factory, pool: asyncpg.Pool
) -> None:
    acc = await daily_account(factory)
    async with pool.acquire() as conn:
        await apply_preferences(
            conn,
            acc["id"],
            {"newsletter": True},
            MEMBER,
            "preference-centre",
            wording="Send me the monthly newsletter",
            wording_version="2026-01",
        )
        # The same value again: no audit row, no consent row.
        await apply_preferences(conn, acc["id"], {"newsletter": True}, MEMBER, "preference-centre")
        await apply_preferences(conn, acc["id"], {"newsletter": False}, MEMBER, "one-click")
    consents = await pool.fetch("SELECT * FROM consents WHERE account_id = $1 ORDER BY id", acc["id"])
    assert [(c["granted"], c["source"], c["wording_version"]) for c in consents] == [
        (True, "preference-centre", "2026-01"),
        (False, "one-click", None),
    ]
    assert consents[0]["wording"] == "Send me the monthly newsletter"
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE account_id = $1", acc["id"]) == 2
    row = await pool.fetchrow("SELECT next_digest_at FROM accounts WHERE id = $1", acc["id"])
    assert row["next_digest_at"] == acc["next_digest_at"]  # newsletter changes leave the schedule alone


async def test_apply_errors(factory: Factory, pool: asyncpg.Pool) -> None:
    acc = await daily_account(factory)
    async with pool.acquire() as conn:
        with pytest.raises(AccountNotFound):
            await apply_preferences(conn, acc["id"] + 1000, {}, MEMBER, "api")
        with pytest.raises(InvalidPreferences) as info:
            await apply_preferences(conn, acc["id"], {"digest_weekday": 9}, MEMBER, "api")
    assert info.value.status == 422
    assert info.value.errors == [
        {"field": "digest_weekday", "message": "Input should be less than or equal to 7"}
    ]


async def test_start_schedule_opens_the_first_window(factory: Factory, pool: asyncpg.Pool) -> None:
    acc = await factory.account(timezone="America/New_York", digest_hour=7)
    async with pool.acquire() as conn:
        await start_schedule(conn, acc, T0)
    row = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", acc["id"])
    assert row["digest_window_start"] == T0
    # 07:00 in New York (EDT, UTC-4) on 2026-06-01 is 11:00 UTC, after T0.
    assert row["next_digest_at"] == datetime(2026, 6, 1, 11, 0, tzinfo=UTC)


async def test_answers_match_the_openapi_document(
    client: TestClient[Any, Any], factory: Factory, headers
) -> None:
    from tests.test_openapi import Checker

    spec = await (await client.get("/openapi.json")).json()
    check = Checker(spec)
    path = "/v1/accounts/doc-1/preferences"
    await daily_account(factory, external_id="doc-1")
    await check(await client.get(path, headers=headers), "GET", path)
    body = await check(await client.put(path, json={"digest_frequency": "off"}, headers=headers), "PUT", path)
    assert body["next_digest_at"] is None
    await check(await client.put(path, json={"digest_hour": 30}, headers=headers), "PUT", path)
    await check(
        await client.put(path, data=b"{", headers={**headers, "Content-Type": "application/json"}),
        "PUT",
        path,
    )
    await check(await client.get("/v1/accounts/nobody/preferences", headers=headers), "GET", path)
    await check(await client.get(path), "GET", path)
    request = spec["paths"]["/v1/accounts/{external_id}/preferences"]["put"]["requestBody"]
    schema = request["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= {
        "digest_frequency",
        "digest_hour",
        "digest_weekday",
        "timezone",
        "newsletter",
    }
    assert check.seen == {
        ("GET", "/v1/accounts/{external_id}/preferences", "200"),
        ("GET", "/v1/accounts/{external_id}/preferences", "404"),
        ("GET", "/v1/accounts/{external_id}/preferences", "401"),
        ("PUT", "/v1/accounts/{external_id}/preferences", "200"),
        ("PUT", "/v1/accounts/{external_id}/preferences", "422"),
        ("PUT", "/v1/accounts/{external_id}/preferences", "400"),
    }


async def test_time_zone_correction_leaves_unscheduled_accounts_alone(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool
) -> None:
    _, key = await auth.create_key(pool, "tz", ["accounts"])
    headers = {"Authorization": f"Bearer {key}"}
    off = await factory.account(external_id="tz-off", digest_frequency="off", next_digest_at=None)
    resp = await client.patch(
        "/v1/accounts/tz-off",
        json={"timezone": "Asia/Tokyo"},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    row = await pool.fetchrow("SELECT timezone, next_digest_at FROM accounts WHERE id = $1", off["id"])
    assert (row["timezone"], row["next_digest_at"]) == ("Asia/Tokyo", None)


async def test_opting_out_through_the_api_cancels_queued_newsletters(
    client: TestClient[Any, Any], headers: dict[str, str], factory: Factory, pool: asyncpg.Pool
) -> None:
    acc = await factory.account(external_id="nina", newsletter=True)
    queued = await factory.email(acc, kind="newsletter", queue="notifier:bulk")
    sent = await factory.email(acc, kind="newsletter", queue="notifier:bulk", status="sent")
    resp = await client.put("/v1/accounts/nina/preferences", json={"newsletter": False}, headers=headers)
    assert resp.status == 200
    states = dict(await pool.fetch("SELECT id, status FROM emails"))
    assert states == {queued["id"]: "cancelled", sent["id"]: "sent"}
