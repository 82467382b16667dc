"""Member import from CSV (docs/import.md): bad rows reported by row and field while the rest is
imported, idempotent re-runs, dry runs, opt-in with consent, and the side effects registration has."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from notifier import audit
from notifier.cli import main
from notifier.member_import import ImportRefused, ImportResult, OptIn, import_csv, parse_maps
from notifier.settings import Settings
from tests.factory import Factory, member_csv

ACTOR = audit.Actor("system", "import")

GOOD_AND_BAD = [
    ["m-1", "ada@example.com", "Ada Lovelace", "Europe/London"],
    ["m-2", "not-an-address", "Bad Mail", "UTC"],  # row 3: email
    ["m-3", "grace@example.com", "Grace Hopper", "Mars/Olympus"],  # row 4: timezone
    ["m-4", "alan@example.com", "Alan Turing", ""],  # empty time zone: the default
    ["bad id!", "x@example.com", "X", "UTC"],  # row 6: external_id
    ["m-1", "again@example.com", "Ada Again", "UTC"],  # row 7: repeated external_id
    ["m-5", "", "No Mail", "UTC"],  # row 8: email required for a new member
    ["m-6", "six@example.com"],  # row 9: too few cells
]


async def run(conn_pool: asyncpg.Pool, data: bytes, **options: Any) -> ImportResult:
    async with conn_pool.acquire() as conn:
        return await import_csv(conn, io.BytesIO(data), source="members.csv", actor=ACTOR, **options)


async def test_bad_rows_are_reported_by_row_and_field_and_the_rest_imported(pool: asyncpg.Pool) -> None:
    result = await run(pool, member_csv(GOOD_AND_BAD))
    assert (result.created, result.updated, result.unchanged, result.failed) == (2, 0, 0, 6)
    fields = [(row, field) for row, field, _ in result.errors]
    assert fields == [
        (3, "email"),
        (4, "timezone"),
        (6, "external_id"),
        (7, "external_id"),
        (8, "email"),
        (9, "row"),
    ]
    reasons = {(row, field): reason for row, field, reason in result.errors}
    assert reasons[(7, "external_id")] == "appears again (first on row 2)"
    assert "time zone" in reasons[(4, "timezone")]
    rows = await pool.fetch("SELECT external_id, email, timezone FROM accounts ORDER BY external_id")
    assert [tuple(r) for r in rows] == [
        ("m-1", "ada@example.com", "Europe/London"),
        ("m-4", "alan@example.com", "UTC"),
    ]
    # Registration's side effects: an audit row by the import, and an open digest window.
    audit_rows = await pool.fetch("SELECT actor_type, actor, action, changes FROM audit_log ORDER BY id")
    assert [(r["actor_type"], r["actor"], r["action"]) for r in audit_rows] == [
        ("system", "import", "account.created")
    ] * 2
    assert audit_rows[0]["changes"]["email"] == {"before": None, "after": "ada@example.com"}
    assert await pool.fetchval("SELECT count(*) FROM accounts WHERE next_digest_at > now()") == 2
    # The staging tables keep nothing; the history keeps the counts.
    assert await pool.fetchval("SELECT count(*) FROM import_rows") == 0
    assert await pool.fetchval("SELECT count(*) FROM import_errors") == 0
    history = await pool.fetchrow("SELECT created, failed, finished_at FROM imports")
    assert (history["created"], history["failed"]) == (2, 6) and history["finished_at"] is not None


async def test_a_second_run_changes_nothing_and_says_so(pool: asyncpg.Pool) -> None:
    data = member_csv(GOOD_AND_BAD)
    await run(pool, data)
    before = await pool.fetch("SELECT * FROM accounts ORDER BY id")
    audit_count = await pool.fetchval("SELECT count(*) FROM audit_log")
    again = await run(pool, data)
    assert (again.created, again.updated, again.unchanged, again.failed) == (0, 0, 2, 6)
    assert "nothing changed" in again.summary()
    assert await pool.fetch("SELECT * FROM accounts ORDER BY id") == before
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == audit_count


async def test_an_update_corrects_only_what_differs_audited_and_moves_the_window(
    pool: asyncpg.Pool, factory: Factory
) -> None:
    account = await factory.account(external_id="m-1", email="old@example.com", name="Ada", timezone="UTC")
    await pool.execute(
        "UPDATE accounts SET next_digest_at = now() + interval '1 hour' WHERE id = $1", account["id"]
    )
    result = await run(pool, member_csv([["m-1", "new@example.com", "Ada", "Pacific/Auckland"]]))
    assert (result.created, result.updated, result.unchanged) == (0, 1, 0)
    row = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", account["id"])
    assert (row["email"], row["name"], row["timezone"]) == ("new@example.com", "Ada", "Pacific/Auckland")
    changes = await pool.fetchval("SELECT changes FROM audit_log WHERE action = 'account.updated'")
    assert changes == {
        "email": {"before": "old@example.com", "after": "new@example.com"},
        "timezone": {"before": "UTC", "after": "Pacific/Auckland"},
    }
    # The daily digest at 08:00 now means 08:00 in Auckland (20:00 or 19:00 UTC).
    assert row["next_digest_at"].hour in (19, 20)
    # Columns absent from the file, and empty cells, leave the account's values.
    again = await run(pool, member_csv([["m-1", "", "Ada L."]], header=("external_id", "email", "name")))
    assert again.updated == 1
    row = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", account["id"])
    assert (row["email"], row["name"], row["timezone"]) == ("new@example.com", "Ada L.", "Pacific/Auckland")


async def test_a_dry_run_writes_nothing(pool: asyncpg.Pool, factory: Factory) -> None:
    await factory.account(external_id="m-1", email="old@example.com", name="Ada")
    data = member_csv([*GOOD_AND_BAD, ["m-7", "seven@example.com", "Seven", "UTC"]])
    result = await run(pool, data, dry_run=True, opt_in=OptIn("Yes, send me news"))
    assert (result.created, result.updated, result.failed, result.opted_in) == (2, 1, 6, 3)
    assert "dry run" in result.summary()
    for table in ("audit_log", "consents", "imports", "import_rows", "import_errors"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1
    assert await pool.fetchval("SELECT email FROM accounts") == "old@example.com"


async def test_opt_in_records_consent_and_leaves_members_who_opted_out(
    pool: asyncpg.Pool, factory: Factory
) -> None:
    left = await factory.account(external_id="m-9", email="left@example.com", name="Left")
    await pool.execute(
        "INSERT INTO consents (account_id, granted, source) VALUES ($1, false, 'one-click')", left["id"]
    )
    rows = [["m-1", "ada@example.com", "Ada", "UTC"], ["m-9", "left@example.com", "Left", "UTC"]]
    result = await run(pool, member_csv(rows), opt_in=OptIn("Yes, send me the newsletter"))
    assert (result.opted_in, result.kept_out) == (1, 1)
    consent = await pool.fetchrow(
        "SELECT c.granted, c.source, c.wording FROM consents c JOIN accounts a ON a.id = c.account_id"
        " WHERE a.external_id = 'm-1'"
    )
    assert tuple(consent) == (True, "import", "Yes, send me the newsletter")
    default_list = await pool.fetchval("SELECT id FROM lists WHERE is_default")
    assert await pool.fetchval("SELECT list_id FROM consents WHERE source = 'import'") == default_list
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE external_id = 'm-9'") is False
    again = await run(pool, member_csv(rows), opt_in=OptIn("Yes, send me the newsletter"))
    assert again.opted_in == 0 and not again.changed


async def test_opt_in_to_another_list_records_its_consent_and_leaves_who_left_it(
    pool: asyncpg.Pool, factory: Factory
) -> None:
    offers = await pool.fetchval("INSERT INTO lists (key, name) VALUES ('offers', 'Offers') RETURNING id")
    left = await factory.account(external_id="m-9", email="left@example.com", name="Left")
    await pool.execute(
        "INSERT INTO consents (account_id, topic, granted, source, list_id) VALUES ($1, 'list', false, 'one-click', $2)",
        left["id"],
        offers,
    )
    rows = [["m-1", "ada@example.com", "Ada", "UTC"], ["m-9", "left@example.com", "Left", "UTC"]]
    result = await run(pool, member_csv(rows), opt_in=OptIn("Yes, send me offers", "offers"))
    assert (result.opted_in, result.kept_out) == (1, 1)
    members = await pool.fetch(
        "SELECT a.external_id FROM list_members m JOIN accounts a ON a.id = m.account_id"
        " WHERE m.list_id = $1 AND m.subscribed",
        offers,
    )
    assert [m["external_id"] for m in members] == ["m-1"]
    consent = await pool.fetchrow(
        "SELECT c.topic, c.granted, c.source, c.wording, c.list_id FROM consents c"
        " JOIN accounts a ON a.id = c.account_id WHERE a.external_id = 'm-1'"
    )
    assert tuple(consent) == ("list", True, "import", "Yes, send me offers", offers)
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE external_id = 'm-1'") is False
    again = await run(pool, member_csv(rows), opt_in=OptIn("Yes, send me offers", "offers"))
    assert again.opted_in == 0 and not again.changed
    with pytest.raises(ImportRefused, match="no list"):
        await run(pool, member_csv(rows), opt_in=OptIn("Yes", "nope"))


async def test_columns_map_by_name_and_the_file_is_refused_whole_when_it_cannot_be_read(
    pool: asyncpg.Pool,
) -> None:
    data = member_csv(
        [["m-1", "ada@example.com", "Ada", "x"]], header=("Member No", "E-mail", "Full name", "Notes")
    )
    maps = parse_maps(["Member No=external_id", "E-mail=email", "Full name=name"])
    result = await run(pool, data, maps=maps)
    assert result.created == 1 and result.ignored_columns == ["Notes"]
    with pytest.raises(ImportRefused, match="external_id"):
        await run(pool, member_csv([["a"]], header=("email",)))
    with pytest.raises(ImportRefused, match="not a field"):
        parse_maps(["Notes=password"])
    with pytest.raises(ImportRefused, match="UTF-8"):
        await run(pool, b"external_id,email,name\nm-2,a@example.com,\xff\xfe\n")
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1


async def test_attribute_columns_set_attributes_merged_audited_and_checked(
    pool: asyncpg.Pool, factory: Factory
) -> None:
    await factory.account(external_id="m-1", email="ada@example.com", name="Ada")
    await pool.execute("UPDATE accounts SET attributes = '{\"plan\": \"gold\"}' WHERE external_id = 'm-1'")
    header = ("external_id", "email", "name", "attributes.country", "attributes.city")
    rows = [
        ["m-1", "", "", "DE", ""],
        ["m-2", "bob@example.com", "Bob", "FR", "Lyon"],
        ["m-3", "cy@example.com", "Cy", "x" * 501, ""],
    ]
    result = await run(pool, member_csv(rows, header=header))
    assert (result.created, result.updated, result.failed) == (1, 1, 1)
    assert [(row, field) for row, field, _ in result.errors] == [(4, "attributes.country")]
    got = {
        r["external_id"]: r["attributes"]
        for r in await pool.fetch("SELECT external_id, attributes FROM accounts")
    }
    assert got == {"m-1": {"plan": "gold", "country": "DE"}, "m-2": {"country": "FR", "city": "Lyon"}}
    audited = await pool.fetchval(
        "SELECT l.changes FROM audit_log l JOIN accounts a ON a.id = l.account_id"
        " WHERE a.external_id = 'm-1' AND l.action = 'account.updated'"
    )
    assert audited["attributes"] == {"before": {"plan": "gold"}, "after": {"plan": "gold", "country": "DE"}}
    assert not (await run(pool, member_csv(rows, header=header))).changed
    with pytest.raises(ImportRefused, match="not a field"):
        parse_maps(["Country=attributes.Bad-Key"])


async def test_chunks_stream_the_file_and_report_progress(pool: asyncpg.Pool) -> None:
    rows = [[f"m-{i}", f"member{i}@example.com", f"Member {i}", "UTC"] for i in range(250)]
    rows[100][1] = "broken"
    data = member_csv(rows)
    seen: list[int] = []
    result = await run(
        pool, data, chunk_rows=40, progress=lambda done, total: seen.append(done), total_bytes=len(data)
    )
    assert (result.created, result.failed) == (249, 1)
    assert result.errors == [(102, "email", result.errors[0][2])]
    assert len(seen) == 7 and seen == sorted(seen) and seen[-1] == len(data)


def test_the_cli_imports_prints_counts_and_writes_the_error_report(
    settings: Settings,
    pool: asyncpg.Pool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("NOTIFIER_REDIS_URL", str(settings.redis_url))
    path = tmp_path / "members.csv"
    path.write_bytes(member_csv(GOOD_AND_BAD))
    report = tmp_path / "errors.csv"
    assert main(["members", "import", str(path), "--dry-run"]) == 1
    assert "dry run: 2 created, 0 updated, 0 unchanged, 6 failed" in capsys.readouterr().out
    assert main(["members", "import", str(path), "--errors", str(report)]) == 1
    assert report.read_text().splitlines()[:2] == ["row,field,reason", report.read_text().splitlines()[1]]
    assert len(report.read_text().splitlines()) == 7
    assert main(["members", "import", str(path), "--opt-in"]) == 2
    assert main(["members", "import", str(path)]) == 1
    assert "0 created, 0 updated, 2 unchanged, 6 failed (nothing changed)" in capsys.readouterr().out


async def test_the_console_upload_imports_and_lists_the_bad_rows(
    settings: Settings, pool: asyncpg.Pool, redis: Any, factory: Factory
) -> None:
    from aiohttp import FormData
    from aiohttp.test_utils import TestClient, TestServer

    from notifier.app import create_app
    from tests.console_people import as_person, csv_upload

    olga = await factory.console_user("admin", email="olga@example.org", name="Olga")
    app = create_app(settings.model_copy(update={"public_url": "http://127.0.0.1"}))
    async with TestClient(TestServer(app)) as client:
        headers, csrf = await as_person(client, pool, settings, olga)

        def upload(**fields: str) -> FormData:
            return csv_upload(csrf, member_csv(GOOD_AND_BAD), **fields)

        resp = await client.post("/console/import", data=upload(dry_run="on"), headers=headers)
        html = await resp.text()
        assert resp.status == 200 and "Dry run: nothing was written" in html
        assert '<th scope="row" class="num">3</th><td><code>email</code></td>' in html
        assert await pool.fetchval("SELECT count(*) FROM accounts") == 0
        resp = await client.post(
            "/console/import", data=upload(opt_in="on", consent_wording="News, monthly"), headers=headers
        )
        html = await resp.text()
        assert "2 created, 0 updated, 0 unchanged, 6 failed; 2 opted in" in html
        # every change names the person who imported, and points at their console user
        actors = await pool.fetch("SELECT DISTINCT actor_type, actor, console_user_id FROM audit_log")
        assert [tuple(a) for a in actors] == [("console", "olga@example.org (admin) (import)", olga["id"])]
        assert await pool.fetchval("SELECT count(*) FROM consents WHERE source = 'import'") == 2
        resp = await client.post("/console/import", data=upload(opt_in="on"), headers=headers)
        assert resp.status == 422 and "consent wording" in await resp.text()


async def test_an_imported_member_gets_the_schedule_an_api_registration_gets(
    client: Any, pool: asyncpg.Pool
) -> None:
    from tests.api_helpers import bearer, new_account

    headers = await bearer(pool, "accounts")
    zones = ("Asia/Tokyo", "America/New_York")
    for i, zone in enumerate(zones):
        resp = await client.post("/v1/accounts", json=new_account(f"api{i}", timezone=zone), headers=headers)
        assert resp.status == 201
    await run(
        pool, member_csv([[f"imp{i}", f"imp{i}@example.com", "Imported", z] for i, z in enumerate(zones)])
    )
    query = "SELECT digest_frequency, digest_hour, digest_weekday, next_digest_at FROM accounts WHERE external_id = $1"
    for i, zone in enumerate(zones):
        api, imported = await pool.fetchrow(query, f"m-api{i}"), await pool.fetchrow(query, f"imp{i}")
        assert imported is not None and api is not None and imported["next_digest_at"] is not None
        assert tuple(imported) == tuple(api), zone


async def test_hostile_cells_fail_their_row_only(pool: asyncpg.Pool) -> None:
    huge = "x" * 200_000  # over the CSV reader's cell limit
    data = (
        "external_id,email,name\n"
        "m-1,ada@example.com,Ada\n"
        f"m-2,b@example.com,{huge}\n"
        "m-3,c@example.com,Null\x00Byte\n"
        "m-4,d@example.com,\u202eevil\n"
        "m-5,e@example.com,Eve\n"
    ).encode()
    result = await run(pool, data)
    assert (result.created, result.failed) == (2, 3)
    assert [(row, field) for row, field, _ in result.errors] == [(3, "row"), (4, "name"), (5, "name")]
    assert "field limit" in result.errors[0][2]
    assert await pool.fetchval("SELECT array_agg(external_id ORDER BY id) FROM accounts") == ["m-1", "m-5"]


async def test_a_file_of_known_members_with_one_new_one_registers_it(
    pool: asyncpg.Pool, factory: Factory
) -> None:
    """The registering step is skipped only when no staged row is left for a new member: the
    refused rows are counted as rows, not as errors (a row missing both e-mail and name is one row
    with two errors)."""
    await factory.account(external_id="m-1", email="ada@example.com", name="Ada")
    rows = [
        ["m-1", "ada@example.com", "Ada", "UTC"],  # known, unchanged
        ["m-3", "", "", "UTC"],  # new and incomplete: two errors, one row
        ["m-1", "again@example.com", "Ada", "UTC"],  # repeated
        ["m-2", "bob@example.com", "Bob", "Asia/Tokyo"],  # new
    ]
    result = await run(pool, member_csv(rows))
    assert (result.created, result.updated, result.unchanged, result.failed) == (1, 0, 1, 2)
    assert await pool.fetchval("SELECT timezone FROM accounts WHERE external_id = 'm-2'") == "Asia/Tokyo"
    again = await run(pool, member_csv(rows))
    assert (again.created, again.updated, again.unchanged, again.failed) == (0, 0, 2, 2)
