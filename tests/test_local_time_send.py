"""A newsletter sent at each member's local time: the audience frozen at once, each recipient
released at that hour in their own zone (DST-correct), exactly once even with passes side by
side, through real SMTP; the validation of the send; cancelling the waiting part; the CLI."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import cli, newsletter, newsletter_local_time, queues
from notifier.newsletter_local_time import LocalSend, due_instant
from notifier.settings import Settings
from tests.api_helpers import bearer, create_newsletter
from tests.conftest import BurstWorker, MailSink
from tests.factory import Factory

Client = TestClient[Any, Any]

# Seven zones, from UTC+14 to UTC−8, with quarter- and half-hour offsets and a half-hour DST.
ZONES = (
    "Pacific/Kiritimati",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Europe/Berlin",
    "UTC",
    "America/New_York",
    "America/Los_Angeles",
)


def local_nine(day: date, zone: str) -> datetime:
    """09:00 on `day` in `zone`, as a UTC instant (computed here independently of the code)."""
    return datetime.combine(day, time(9, 0), tzinfo=ZoneInfo(zone)).astimezone(UTC)


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `notifier` command sees the test's database, Redis and secret."""
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("NOTIFIER_REDIS_URL", settings.redis_url or "")
    assert settings.secret_key is not None
    monkeypatch.setenv("NOTIFIER_SECRET_KEY", settings.secret_key.get_secret_value())


async def run_due(at: datetime, *extra: str) -> int:
    """`notifier newsletters run-due --at AT --force` in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(
        cli.main, ["newsletters", "run-due", "--at", at.isoformat(), "--force", *extra]
    )


async def start_local_send(
    client: Client, headers: dict[str, str], run_worker: BurstWorker, day: date, **fields: Any
) -> dict[str, Any]:
    draft = await create_newsletter(
        client, headers, subject="Good morning {{ first_name }}", body="Hello", **fields
    )
    resp = await client.post(
        f"/v1/newsletters/{draft['id']}/send",
        json={"local_time": "09:00", "date": day.isoformat()},
        headers=headers,
    )
    assert resp.status == 202, await resp.text()
    started: dict[str, Any] = await resp.json()
    assert started["local_time"] == "09:00" and started["local_date"] == day.isoformat()
    await run_worker(queues.BULK)  # newsletter_start: the audience is frozen now
    return started


async def test_each_zone_gets_it_at_its_local_hour_exactly_once(
    client: Client,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    factory: Factory,
    run_worker: BurstWorker,
    smtp: MailSink,
    cli_env: None,
) -> None:
    day = (datetime.now(UTC) + timedelta(days=3)).date()
    members = {
        zone: [await factory.account(timezone=zone, newsletter=True) for _ in range(2)] for zone in ZONES
    }
    late = await factory.account(timezone="Europe/Berlin", newsletter=False)
    headers = await bearer(pool, "newsletters")
    started = await start_local_send(client, headers, run_worker, day)
    newsletter_id = started["id"]
    await factory.account(timezone="UTC", newsletter=True)  # opts in after the freeze: not added
    await pool.execute("UPDATE accounts SET newsletter = true WHERE id = $1", late["id"])

    got = await (await client.get(f"/v1/newsletters/{newsletter_id}", headers=headers)).json()
    assert got["status"] == "sending"
    assert got["figures"]["recipients"] == got["figures"]["waiting"] == got["figures"]["pending"] == 14
    first = min(local_nine(day, z) for z in ZONES)
    assert datetime.fromisoformat(got["next_due_at"]) == first == local_nine(day, "Pacific/Kiritimati")
    assert smtp.received == []  # nothing goes before its hour, however often the worker runs
    await run_worker(queues.BULK)
    assert smtp.received == []

    rows = await pool.fetch(
        "SELECT a.timezone, e.due_at FROM emails e JOIN accounts a ON a.id = e.account_id WHERE e.newsletter_id = $1",
        newsletter_id,
    )
    for row in rows:
        local = row["due_at"].astimezone(ZoneInfo(row["timezone"]))
        assert (local.date(), local.time()) == (day, time(9, 0)), row["timezone"]

    # Drive the clock through every zone's 09:00, earliest first: a second before it nobody new
    # is due; at it, exactly that zone's members, and two passes at once release them once.
    delivered: set[str] = set()
    for zone in sorted(ZONES, key=lambda z: local_nine(day, z)):
        due = local_nine(day, zone)
        assert await run_due(due - timedelta(seconds=1)) == 0
        await run_worker(queues.BULK)
        assert {r.recipients[0] for r in smtp.received} == delivered, f"early mail before {zone}'s 09:00"
        assert list(await asyncio.gather(run_due(due), run_due(due))) == [0, 0]
        await run_worker(queues.BULK)
        delivered |= {m["email"] for m in members[zone]}
        assert sorted(r.recipients[0] for r in smtp.received) == sorted(delivered), zone
        await newsletter.tick(pool, redis, settings)  # not `sent` while anyone still waits
        status = await pool.fetchval("SELECT status FROM newsletters WHERE id = $1", newsletter_id)
        assert status == ("sent" if len(delivered) == 14 else "sending")
    assert len(smtp.received) == 14  # each member once: passes side by side released nobody twice

    assert await run_due(local_nine(day, "America/Los_Angeles") + timedelta(days=1)) == 0
    await run_worker(queues.BULK)
    assert len(smtp.received) == 14
    await newsletter.tick(pool, redis, settings)
    got = await (await client.get(f"/v1/newsletters/{newsletter_id}", headers=headers)).json()
    assert got["status"] == "sent" and got["next_due_at"] is None
    assert got["figures"]["sent"] == 14 and got["figures"]["waiting"] == 0
    subject = smtp.received[0].message["Subject"]
    assert subject.startswith("Good morning Member")


async def test_release_passes_in_parallel_release_each_row_once(
    client: Client, pool: asyncpg.Pool, redis: ArqRedis, factory: Factory, run_worker: BurstWorker
) -> None:
    day = (datetime.now(UTC) + timedelta(days=2)).date()
    await factory.members(300, newsletter=True)
    await pool.execute("UPDATE accounts SET timezone = 'Asia/Kathmandu'")
    headers = await bearer(pool, "newsletters")
    await start_local_send(client, headers, run_worker, day)
    at = local_nine(day, "Asia/Kathmandu")
    passes = await asyncio.gather(*(newsletter_local_time.release_due(pool, redis, at) for _ in range(4)))
    assert sum(p.total for p in passes) == 300
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE status = 'queued'") == 300


@pytest.mark.parametrize(
    ("zone", "day", "at", "expected"),
    [
        # Spring forward: 02:30 does not exist that day; the first instant after the jump (03:00 EDT).
        ("America/New_York", date(2027, 3, 14), time(2, 30), datetime(2027, 3, 14, 7, 0, tzinfo=UTC)),
        # Fall back: 01:30 happens twice; the first of the two (EDT, UTC−4).
        ("America/New_York", date(2026, 11, 1), time(1, 30), datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
        # Lord Howe moves its clocks by half an hour: 02:15 is skipped, 02:30 LHDT (UTC+11) instead.
        ("Australia/Lord_Howe", date(2026, 10, 4), time(2, 15), datetime(2026, 10, 3, 15, 30, tzinfo=UTC)),
        ("Asia/Kathmandu", date(2026, 12, 10), time(9, 0), datetime(2026, 12, 10, 3, 15, tzinfo=UTC)),
        # A zone the tz database does not know counts as UTC.
        ("Mars/Olympus_Mons", date(2026, 12, 10), time(9, 0), datetime(2026, 12, 10, 9, 0, tzinfo=UTC)),
    ],
)
def test_due_instant_is_dst_correct(zone: str, day: date, at: time, expected: datetime) -> None:
    assert due_instant(LocalSend(at, day), zone) == expected


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"local_time": "9:00", "date": "2026-12-10"}, ["local_time"]),
        ({"local_time": "24:00", "date": "2026-12-10"}, ["local_time"]),
        ({"local_time": 900, "date": "2026-12-10"}, ["local_time"]),
        ({"local_time": "09:00", "date": "2026-13-01"}, ["date"]),
        ({"local_time": "09:00", "date": "10.12.2026"}, ["date"]),
        ({"local_time": "09:00", "date": 20261210}, ["date"]),
        ({"local_time": "09:00", "date": "2100-01-01"}, ["date"]),
        ({"local_time": "23:59", "date": "9999-12-31"}, ["date"]),
        ({"local_time": "00:00", "date": "0001-01-01"}, ["date"]),
        ({"local_time": "09:00"}, ["date"]),
        ({"date": "2026-12-10"}, ["local_time"]),
        ({"local_time": "09:00", "date": "2026-12-10", "at": "2026-12-03T09:00:00Z"}, ["at"]),
    ],
)
async def test_invalid_local_sends_are_422_naming_the_field(
    client: Client, pool: asyncpg.Pool, body: dict[str, Any], fields: list[str]
) -> None:
    headers = await bearer(pool, "newsletters")
    draft = await create_newsletter(client, headers, subject="S", body="B")
    resp = await client.post(f"/v1/newsletters/{draft['id']}/send", json=body, headers=headers)
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert [e["field"] for e in (await resp.json())["errors"]] == fields
    assert await pool.fetchval("SELECT status FROM newsletters WHERE id = $1", draft["id"]) == "draft"


async def test_a_date_is_refused_only_once_past_in_the_last_zone(client: Client, pool: asyncpg.Pool) -> None:
    headers = await bearer(pool, "newsletters")
    now = datetime.now(UTC)
    draft = await create_newsletter(client, headers, subject="S", body="B")
    gone = (now + timedelta(hours=-12, minutes=-2)).replace(second=0, microsecond=0)
    # `gone` as a wall-clock time has passed even at UTC−12 (it is `now − 2 min` there).
    resp = await client.post(
        f"/v1/newsletters/{draft['id']}/send",
        json={"local_time": gone.strftime("%H:%M"), "date": gone.date().isoformat()},
        headers=headers,
    )
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "date"
    # Yesterday's 23:59 has passed in most zones but not at UTC−12 (unless it is late there): accepted.
    soon = now + timedelta(hours=-12, minutes=10)
    resp = await client.post(
        f"/v1/newsletters/{draft['id']}/send",
        json={"local_time": soon.strftime("%H:%M"), "date": soon.date().isoformat()},
        headers=headers,
    )
    assert resp.status == 202, await resp.text()


async def test_cancel_stops_the_waiting_part(
    client: Client,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    factory: Factory,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    day = (datetime.now(UTC) + timedelta(days=2)).date()
    east = await factory.account(timezone="Asia/Kathmandu", newsletter=True)
    await factory.account(timezone="America/New_York", newsletter=True)
    headers = await bearer(pool, "newsletters")
    started = await start_local_send(client, headers, run_worker, day)
    await newsletter_local_time.release_due(pool, redis, local_nine(day, "Asia/Kathmandu"))
    await run_worker(queues.BULK)
    assert [r.recipients for r in smtp.received] == [[east["email"]]]

    resp = await client.post(f"/v1/newsletters/{started['id']}/cancel", headers=headers)
    assert resp.status == 200
    got = await resp.json()
    assert got["status"] == "cancelled" and got["next_due_at"] is None
    assert (got["figures"]["sent"], got["figures"]["cancelled"], got["figures"]["waiting"]) == (1, 1, 0)
    released = await newsletter_local_time.release_due(pool, redis, local_nine(day, "America/New_York"))
    assert released.total == 0
    await run_worker(queues.BULK)
    assert len(smtp.received) == 1


async def test_an_opt_out_or_erasure_while_waiting_stops_that_row(
    client: Client, pool: asyncpg.Pool, redis: ArqRedis, factory: Factory, run_worker: BurstWorker
) -> None:
    day = (datetime.now(UTC) + timedelta(days=2)).date()
    leaving = await factory.account(timezone="Europe/Berlin", newsletter=True)
    erased = await factory.account(timezone="Europe/Berlin", newsletter=True)
    await factory.account(timezone="Europe/Berlin", newsletter=True)
    headers = await bearer(pool, "newsletters", "accounts")
    started = await start_local_send(client, headers, run_worker, day)
    resp = await client.put(
        f"/v1/accounts/{leaving['external_id']}/preferences", json={"newsletter": False}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    resp = await client.delete(f"/v1/accounts/{erased['external_id']}", headers=headers)
    assert resp.status in (200, 204), await resp.text()
    got = await (await client.get(f"/v1/newsletters/{started['id']}", headers=headers)).json()
    assert got["figures"]["recipients"] == 3
    assert (got["figures"]["waiting"], got["figures"]["cancelled"]) == (1, 2)
    released = await newsletter_local_time.release_due(pool, redis, local_nine(day, "Europe/Berlin"))
    assert released.total == 1


def test_run_due_refuses_a_time_ahead_without_force(
    settings: Settings, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    ahead = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    assert cli.main(["newsletters", "run-due", "--at", ahead]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main(["newsletters", "run-due", "--at", ahead, "--dry-run"]) == 0
    assert "recipients due: 0" in capsys.readouterr().out
    assert cli.main(["newsletter", "run-due"]) == 0
    assert "released as of" in capsys.readouterr().out


async def test_console_sends_at_local_time_and_shows_who_waits(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, factory: Factory, run_worker: BurstWorker
) -> None:
    from aiohttp.test_utils import TestServer

    from notifier.app import create_app
    from tests.test_console import sign_in

    day = (datetime.now(UTC) + timedelta(days=2)).date()
    await factory.account(timezone="Asia/Kathmandu", newsletter=True)
    await factory.account(timezone="America/New_York", newsletter=True)
    # plain http keeps the session cookie; signing in with a key
    plain_http = settings.model_copy(update={"public_url": "http://127.0.0.1", "console_key_sign_in": True})
    async with TestClient(TestServer(create_app(plain_http))) as client:
        csrf = await sign_in(client, pool, ["newsletters"], name="Marketing Max")
        resp = await client.post(
            "/console/newsletters/new",
            data={"csrf": csrf, "subject": "S", "body": "B", "body_format": "markdown", "action": "save"},
            allow_redirects=False,
        )
        nid = int(resp.headers["Location"].split("/")[-1].split("?")[0])
        form = {"csrf": csrf, "when": "local", "local_time": "09:00"}
        bad = await client.post(f"/console/newsletters/{nid}/send", data={**form, "local_date": "2000-01-01"})
        assert bad.status == 422 and "past in every time zone" in await bad.text()
        resp = await client.post(
            f"/console/newsletters/{nid}/send",
            data={**form, "local_date": day.isoformat()},
            allow_redirects=False,
        )
        assert resp.headers["Location"].endswith("notice=sending")
        scheduled = await pool.fetchval("SELECT changes FROM audit_log WHERE action = 'newsletter.scheduled'")
        assert (scheduled["local_time"], scheduled["local_date"]) == ("09:00", day.isoformat())
        await run_worker(queues.BULK)
        await newsletter_local_time.release_due(pool, redis, local_nine(day, "Asia/Kathmandu"))
        page = await (await client.get(f"/console/newsletters/{nid}")).text()
        assert "09:00 on " + day.isoformat() in page
        assert 'data-figure="waiting">1<' in page
        assert "1 waiting for their local time; the next at" in page


async def test_the_tick_releases_members_whose_time_has_already_passed(
    client: Client,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    factory: Factory,
    run_worker: BurstWorker,
    smtp: MailSink,
) -> None:
    passed = datetime.now(UTC) - timedelta(hours=1)  # as a wall-clock time: gone in UTC, ahead at UTC−12
    here = await factory.account(timezone="UTC", newsletter=True)
    await factory.account(timezone="Etc/GMT+12", newsletter=True)
    headers = await bearer(pool, "newsletters")
    draft = await create_newsletter(client, headers, subject="S", body="B")
    resp = await client.post(
        f"/v1/newsletters/{draft['id']}/send",
        json={"local_time": passed.strftime("%H:%M"), "date": passed.date().isoformat()},
        headers=headers,
    )
    assert resp.status == 202, await resp.text()
    await run_worker(queues.BULK)
    assert smtp.received == []
    result = await newsletter.tick(pool, redis, settings)  # the bulk queue's cron, as of now
    assert result["released"] == 1
    await run_worker(queues.BULK)
    assert [r.recipients for r in smtp.received] == [[here["email"]]]
    got = await (await client.get(f"/v1/newsletters/{draft['id']}", headers=headers)).json()
    assert got["status"] == "sending" and got["figures"]["waiting"] == 1
    assert datetime.fromisoformat(got["next_due_at"]) > datetime.now(UTC) + timedelta(hours=10)
