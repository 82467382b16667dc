"""The console's member import opts the members in to the list chosen on the form, as the CLI's
`--list KEY` does (docs/import.md); the newsletter unless another list is chosen."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from notifier import lists
from notifier.app import create_app
from notifier.settings import Settings
from tests.console_people import as_person, csv_upload
from tests.factory import Factory, member_csv

ROWS = [["m-1", "ada@example.com", "Ada Lovelace", "UTC"], ["m-2", "alan@example.com", "Alan Turing", "UTC"]]


async def test_the_upload_opts_in_to_the_list_chosen(
    settings: Settings, pool: asyncpg.Pool, redis: Any, factory: Factory
) -> None:
    await lists.create(pool, lists.ListIn(key="offers", name="Offers"))
    await lists.create(pool, lists.ListIn(key="old", name="Old"))
    await lists.archive(pool, "old")
    olga = await factory.console_user("admin", email="olga@example.org", name="Olga")
    app = create_app(settings.model_copy(update={"public_url": "http://127.0.0.1"}))
    async with TestClient(TestServer(app)) as client:
        headers, csrf = await as_person(client, pool, settings, olga)

        def upload(**fields: str) -> FormData:
            return csv_upload(csrf, member_csv(ROWS), **fields)

        page = await (await client.get("/console/import", headers=headers)).text()
        assert '<option value="newsletter" selected>' in page and '<option value="offers">' in page
        assert 'value="old"' not in page  # archived lists are not offered

        resp = await client.post(
            "/console/import",
            data=upload(opt_in="on", consent_wording="Offers, weekly", list="nope"),
            headers=headers,
        )
        assert resp.status == 422 and "no list with key" in await resp.text()
        assert await pool.fetchval("SELECT count(*) FROM accounts") == 0

        resp = await client.post(
            "/console/import",
            data=upload(opt_in="on", consent_wording="Offers, weekly", list="offers"),
            headers=headers,
        )
        html = await resp.text()
        assert resp.status == 200 and "2 created, 0 updated, 0 unchanged, 0 failed; 2 opted in" in html
        assert '<option value="offers" selected>' in html
        joined = await pool.fetch(
            """SELECT a.external_id, c.wording, c.source FROM list_members m
               JOIN lists l ON l.id = m.list_id JOIN accounts a ON a.id = m.account_id
               JOIN consents c ON c.account_id = a.id AND c.list_id = l.id
               WHERE l.key = 'offers' AND m.subscribed ORDER BY a.external_id"""
        )
        assert [tuple(r) for r in joined] == [
            ("m-1", "Offers, weekly", "import"),
            ("m-2", "Offers, weekly", "import"),
        ]
        assert await pool.fetchval("SELECT count(*) FROM accounts WHERE newsletter") == 0

        resp = await client.post(
            "/console/import", data=upload(opt_in="on", consent_wording="News, monthly"), headers=headers
        )
        assert "2 opted in" in await resp.text()
        assert await pool.fetchval("SELECT count(*) FROM accounts WHERE newsletter") == 2
