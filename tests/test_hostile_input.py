"""Hostile input found by the outside review (issue 17): far dates and epoch numbers, deeply nested
JSON, bytes that are not text in headers and cookies, time zones that are not a place, and
text-direction controls in names and subjects. Each is a clear 4xx, never a 500 or a stored
half-truth, on every route that takes that kind of input."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier.api import auth
from notifier.mail import compose
from notifier.settings import Settings
from tests.api_helpers import bearer, create_newsletter, new_account, send_newsletter
from tests.conftest import BurstWorker, MailSink
from tests.factory import Factory
from tests.test_security import fill, v1_routes

Client = TestClient[Any, Any]
PROBLEM = "application/problem+json"

FAR_OR_NOT_ISO = [
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-05:00",
    "1970-01-01T00:00:00Z",
    "2200-01-01T00:00:00+00:00",
    1700000000,
    1.7e9,
    "1700000000",
    True,
    "2026-12-01",
    "2026-12-01T09:00:00",
    "next tuesday",
    "2026-02-30T09:00:00Z",
    "+002026-12-01T09:00:00Z",
]


# --- dates -------------------------------------------------------------------------------------


async def test_send_at_far_dates_and_numbers_are_a_422_and_schedule_nothing(
    client: Client, pool: asyncpg.Pool
) -> None:
    headers = await bearer(pool, "newsletters")
    draft = await create_newsletter(client, headers, subject="News", body="Hello")
    for at in FAR_OR_NOT_ISO:
        resp = await client.post(f"/v1/newsletters/{draft['id']}/send", json={"at": at}, headers=headers)
        assert resp.status == 422, (at, resp.status, await resp.text())
        assert resp.content_type == PROBLEM
        assert [e["field"] for e in (await resp.json())["errors"]] == ["at"], at
        row = await pool.fetchrow("SELECT status, scheduled_at FROM newsletters WHERE id = $1", draft["id"])
        assert (row["status"], row["scheduled_at"]) == ("draft", None), at
    resp = await client.get("/v1/newsletters", headers=headers)
    assert resp.status == 200
    later = await client.post(
        f"/v1/newsletters/{draft['id']}/send", json={"at": "2099-12-31T23:00:00+01:00"}, headers=headers
    )
    assert later.status == 200
    assert (await later.json())["scheduled_at"] == "2099-12-31T22:00:00+00:00"
    assert (await client.get("/v1/newsletters", headers=headers)).status == 200


def test_one_instant_rule() -> None:
    from notifier.validation import EARLIEST, LATEST, parse_instant

    assert parse_instant("2026-12-01T09:00:00+01:00").isoformat() == "2026-12-01T08:00:00+00:00"
    assert parse_instant("2026-12-01T09:00", naive="utc").isoformat() == "2026-12-01T09:00:00+00:00"
    assert parse_instant(EARLIEST.isoformat()) == EARLIEST
    for value in [*FAR_OR_NOT_ISO, LATEST.isoformat(), None, "", "2026-12-01T09:00:00Z" + " " * 40]:
        with pytest.raises(ValueError):
            parse_instant(value)


def test_cli_times_have_the_same_bounds() -> None:
    from notifier import cli

    assert cli._instant("2026-12-01T09:00").isoformat() == "2026-12-01T09:00:00+00:00"
    for value in ("0001-01-01", "0001-01-01T00:00:00", "9999-12-31T23:59:59-05:00", "1700000000"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._instant(value)


async def test_an_infinite_schedule_cannot_be_stored(pool: asyncpg.Pool, factory: Factory) -> None:
    row = await pool.fetchrow("INSERT INTO newsletters (subject, body) VALUES ('s', 'b') RETURNING id")
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE newsletters SET scheduled_at = '-infinity' WHERE id = $1", row["id"])


# --- deeply nested JSON --------------------------------------------------------------------------


async def test_deeply_nested_json_is_a_400_on_every_json_route(
    client: Client, pool: asyncpg.Pool, factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    await factory.account(external_id="m-1")
    await pool.execute("INSERT INTO newsletters (subject, body) VALUES ('s', 'b')")  # id 1
    admin = await bearer(pool, "admin")
    nested = b"[" * 1000 + b"]" * 1000
    deep_object = b'{"a":' * 1000 + b"1" + b"}" * 1000
    assert client.app is not None
    routes = [(m, t) for m, t, _ in v1_routes(client.app) if m in ("POST", "PUT", "PATCH")]
    assert len(routes) >= 10
    json_routes = 0
    with caplog.at_level(logging.WARNING):
        for method, template in routes:
            not_json = await client.request(
                method, fill(template), data=b"{", headers={**admin, "Content-Type": "application/json"}
            )
            if not_json.status != 400:  # the route reads no body
                continue
            json_routes += 1
            for body in (nested, deep_object):
                for extra in ({}, {"Idempotency-Key": "deep-1"}):
                    resp = await client.request(
                        method,
                        fill(template),
                        data=body,
                        headers={**admin, **extra, "Content-Type": "application/json"},
                    )
                    assert resp.status == 400, (method, template, resp.status, await resp.text())
                    assert resp.content_type == PROBLEM
                    assert "nests deeper than 200" in (await resp.json())["detail"]
    assert json_routes >= 10
    assert "RecursionError" not in caplog.text and "unhandled" not in caplog.text


async def test_nesting_within_the_limit_is_still_accepted(
    client: Client, pool: asyncpg.Pool, factory
) -> None:
    await factory.account(external_id="m-1")
    headers = await bearer(pool, "messages")
    data: Any = 1
    for _ in range(150):
        data = {"a": data}
    resp = await client.post(
        "/v1/accounts/m-1/messages",
        json={"category": "news", "subject": "Deep", "body": "x", "data": data},
        headers=headers,
    )
    assert resp.status == 201, await resp.text()


# --- bytes that are not text in headers and cookies ------------------------------------------------


async def raw_request(client: Client, request: bytes) -> tuple[int, bytes]:
    """Send `request` (bytes, exactly as given) to the test server; (status, whole answer)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.parametrize("value", [b"\xff\xfe", b"\xc3\x28", b"caf\xe9", b"\xed\xa0\x80", b"x\x01y"])
async def test_authorization_bytes_that_are_not_text_are_a_401(
    client: Client, pool: asyncpg.Pool, value: bytes
) -> None:
    _, key = await auth.create_key(pool, "k", ["admin"])
    for header in (b"Bearer " + value, b"Bearer " + key.encode() + value, value):
        status, answer = await raw_request(
            client,
            b"GET /v1/newsletters HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
            + header
            + b"\r\n\r\n",
        )
        assert status in (400, 401), answer[:300]
        if status == 401:
            assert PROBLEM.encode() in answer and b"WWW-Authenticate: Bearer" in answer


@pytest.mark.parametrize("value", [b"\xff\xfe", b"caf\xe9", b"\xed\xa0\x80"])
async def test_console_cookies_that_are_not_text_mean_no_session(client: Client, value: bytes) -> None:
    for path, method, cookie in (
        (b"/console/", b"GET", b"notifier_console=" + value),
        (b"/console/sign-in", b"GET", b"notifier_console=" + value),
        (b"/console/newsletters", b"GET", b"notifier_console=x; notifier_console_signin=" + value),
    ):
        status, answer = await raw_request(
            client,
            method
            + b" "
            + path
            + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: "
            + cookie
            + b"\r\n\r\n",
        )
        assert status in (200, 303), (path, answer[:300])
    form = b"key=ntf_x&signin_token=abc"
    status, answer = await raw_request(
        client,
        b"POST /console/sign-in HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nCookie: notifier_console_signin="
        + value
        + b"\r\n"
        b"Content-Length: " + str(len(form)).encode() + b"\r\n\r\n" + form,
    )
    assert status == 403, answer[:300]


def test_a_form_nonce_that_is_not_ascii_is_refused_not_an_error() -> None:
    from notifier import pages

    assert pages.nonce_valid(b"key", "token", pages.form_nonce(b"key", "token"))
    now = int(time.time())
    for nonce in (f"{now}.caf\u00e9", f"{now}.\udcff", "\u0661.abc"):
        assert not pages.nonce_valid(b"key", "token", nonce)


# --- time zones ------------------------------------------------------------------------------------

NOT_A_PLACE = [
    "localtime",
    "Factory",
    "EST5EDT",
    "CST6CDT",
    "posixrules",
    "GB",
    "EST",
    "UCT",
    "Europe/Nowhere",
]
PLACES = ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5", "US/Eastern"]


async def test_time_zones_that_are_not_a_place_are_refused_everywhere(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    headers = await bearer(pool, "accounts")
    await client.post("/v1/accounts", json=new_account(0), headers=headers)
    for i, zone in enumerate(NOT_A_PLACE, start=1):
        resp = await client.post("/v1/accounts", json=new_account(i, timezone=zone), headers=headers)
        assert resp.status == 422, (zone, await resp.text())
        assert [e["field"] for e in (await resp.json())["errors"]] == ["timezone"]
        resp = await client.patch("/v1/accounts/m-0", json={"timezone": zone}, headers=headers)
        assert resp.status == 422, zone
        resp = await client.put("/v1/accounts/m-0/preferences", json={"timezone": zone}, headers=headers)
        assert resp.status == 422, zone
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1
    for zone in PLACES:
        resp = await client.put("/v1/accounts/m-0/preferences", json={"timezone": zone}, headers=headers)
        assert resp.status == 200, (zone, await resp.text())


async def test_a_zone_stored_before_the_rule_stays_until_changed(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    headers = await bearer(pool, "accounts")
    await factory.account(external_id="old", timezone="GB")
    resp = await client.put(
        "/v1/accounts/old/preferences", json={"digest_frequency": "weekly"}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    resp = await client.put("/v1/accounts/old/preferences", json={"timezone": "Japan"}, headers=headers)
    assert resp.status == 422


def test_one_list_of_time_zones() -> None:
    from notifier import schedule
    from notifier.pages import preference_centre
    from notifier.validation import check_timezone

    offered = preference_centre.timezones()
    assert offered == sorted(schedule.timezone_names())
    assert set(NOT_A_PLACE).isdisjoint(offered) and set(PLACES) <= set(offered)
    for zone in NOT_A_PLACE:
        with pytest.raises(ValueError):
            check_timezone(zone)


# --- text-direction controls ------------------------------------------------------------------------

BIDI = ["\u202e", "\u202d", "\u2066", "\u2069", "\u200f", "\u061c", "\x85", "\x9b"]


async def test_direction_controls_in_names_and_subjects_are_a_422(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    headers = await bearer(pool, "accounts", "messages", "newsletters")
    await client.post("/v1/accounts", json=new_account(0), headers=headers)
    for i, char in enumerate(BIDI, start=1):
        name = f"Ann {char}gpj.exe"
        resp = await client.post("/v1/accounts", json=new_account(i, name=name), headers=headers)
        assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "name", repr(char)
        resp = await client.patch("/v1/accounts/m-0", json={"name": name}, headers=headers)
        assert resp.status == 422, repr(char)
        resp = await client.post(
            "/v1/accounts/m-0/messages", json={"category": "x", "subject": name, "body": "b"}, headers=headers
        )
        assert resp.status == 422, repr(char)
        resp = await client.post("/v1/newsletters", json={"subject": name, "body": "b"}, headers=headers)
        assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "subject", repr(char)
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1
    assert await pool.fetchval("SELECT count(*) FROM newsletters") == 0
    # Right-to-left text itself is welcome.
    resp = await client.post("/v1/accounts", json=new_account(99, name="שרה כהן"), headers=headers)
    assert resp.status == 201


async def test_direction_controls_never_reach_a_header(
    client: Client,
    pool: asyncpg.Pool,
    factory: Factory,
    redis: ArqRedis,
    settings: Settings,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    # Stored before the input rule (or by any other path): dropped when the header is written.
    await factory.account(name="Ann \u202egpj.exe\u202c Lee", newsletter=True)
    headers = await bearer(pool, "newsletters")
    draft = await create_newsletter(client, headers, subject="For {{ name }}", body="Hi")
    await send_newsletter(client, headers, run_worker, pool, redis, settings, draft["id"])
    [received] = smtp.received
    subject = received.message["Subject"]
    assert subject == "For Ann gpj.exe Lee"
    assert not any(char in received.data.decode("ascii") for char in BIDI)
    for char in BIDI:
        line = compose.text_header("Subject", f"a{char}b").encode("ascii")
        assert "\u202e".encode() not in line and char not in compose.one_line(f"a{char}b")
        assert char not in compose.mailbox(f"A{char}B", "a@example.org")
