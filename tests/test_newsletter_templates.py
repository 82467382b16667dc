"""Reusable newsletter templates: `/v1/newsletter-templates` CRUD (scope newsletters), a draft
started from one, and the console's template pages."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier.settings import Settings
from tests.api_helpers import bearer
from tests.console_people import as_person
from tests.factory import Factory
from tests.test_console import sign_in

Client = TestClient[Any, Any]
MONTHLY = {
    "name": "Monthly news",
    "subject": "News for {{ first_name }}",
    "preheader": "What happened this month",
    "body": "Hello {{ first_name }},\n\n| Event | When |\n|---|---|\n| Regatta | Saturday |\n",
    "body_format": "markdown",
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_url": "http://127.0.0.1", "console_key_sign_in": True})


async def test_template_crud_and_a_draft_started_from_it(client: Client, pool: asyncpg.Pool) -> None:
    headers = await bearer(pool, "newsletters", name="marketing")
    resp = await client.post("/v1/newsletter-templates", json=MONTHLY, headers=headers)
    assert resp.status == 201, await resp.text()
    template = await resp.json()
    assert resp.headers["Location"] == f"/v1/newsletter-templates/{template['id']}"
    assert {k: template[k] for k in MONTHLY} == MONTHLY and template["created_by"] == "api_key:marketing"

    again = await client.post("/v1/newsletter-templates", json=MONTHLY, headers=headers)
    assert again.status == 409 and (await again.json())["errors"][0]["field"] == "name"
    listing = await (await client.get("/v1/newsletter-templates", headers=headers)).json()
    assert [t["id"] for t in listing["items"]] == [template["id"]] and listing["next_cursor"] is None

    resp = await client.post(f"/v1/newsletter-templates/{template['id']}/draft", headers=headers)
    assert resp.status == 201
    draft = await resp.json()
    assert draft["status"] == "draft" and resp.headers["Location"] == f"/v1/newsletters/{draft['id']}"
    assert (draft["subject"], draft["preheader"], draft["body"], draft["body_format"]) == (
        MONTHLY["subject"],
        MONTHLY["preheader"],
        MONTHLY["body"],
        "markdown",
    )
    # The draft is a copy: editing the template later leaves it as it was.
    resp = await client.patch(
        f"/v1/newsletter-templates/{template['id']}", json={"subject": "Changed"}, headers=headers
    )
    assert resp.status == 200 and (await resp.json())["subject"] == "Changed"
    kept = await (await client.get(f"/v1/newsletters/{draft['id']}", headers=headers)).json()
    assert kept["subject"] == MONTHLY["subject"]
    # A preview of the draft shows the Markdown table.
    preview = await (await client.get(f"/v1/newsletters/{draft['id']}/preview", headers=headers)).json()
    assert "<table" in preview["html"] and "Regatta" in preview["html"]

    resp = await client.delete(f"/v1/newsletter-templates/{template['id']}", headers=headers)
    assert resp.status == 204
    assert (await client.get(f"/v1/newsletter-templates/{template['id']}", headers=headers)).status == 404
    assert (await client.get(f"/v1/newsletters/{draft['id']}", headers=headers)).status == 200


async def test_templates_are_checked_and_scoped(client: Client, pool: asyncpg.Pool) -> None:
    headers = await bearer(pool, "newsletters")
    resp = await client.post(
        "/v1/newsletter-templates",
        json={**MONTHLY, "subject": "{{ secret_key }}", "body": "{% for %}"},
        headers=headers,
    )
    body = await resp.json()
    assert resp.status == 422 and {e["field"] for e in body["errors"]} == {"subject", "body"}
    resp = await client.post(
        "/v1/newsletter-templates", json={**MONTHLY, "name": "a\u202eb"}, headers=headers
    )
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "name"
    accounts_only = await bearer(pool, "accounts", name="registry-2")
    assert (await client.get("/v1/newsletter-templates", headers=accounts_only)).status == 403
    assert (await client.get("/v1/newsletter-templates/99x", headers=headers)).status == 404
    assert (await client.post("/v1/newsletter-templates/99/draft", headers=headers)).status == 404
    assert await pool.fetchval("SELECT count(*) FROM newsletter_templates") == 0


async def test_the_console_saves_a_template_and_starts_a_draft_from_it(
    client: Client, pool: asyncpg.Pool
) -> None:
    csrf = await sign_in(client, pool, ["newsletters"])
    page = await client.get("/console/templates")
    assert page.status == 200 and "No template yet" in await page.text()
    resp = await client.post("/console/templates/new", data={"csrf": csrf, **MONTHLY}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    template_id = await pool.fetchval("SELECT id FROM newsletter_templates")
    listing = await (await client.get("/console/templates")).text()
    assert "Monthly news" in listing and f'action="/console/templates/{template_id}/draft"' in listing
    bad = await client.post(
        "/console/templates/new", data={"csrf": csrf, **MONTHLY, "name": "Other", "body": "{% for %}"}
    )
    assert bad.status == 422 and 'id="body-error"' in await bad.text()
    resp = await client.post(
        f"/console/templates/{template_id}/draft", data={"csrf": csrf}, allow_redirects=False
    )
    assert resp.status == 303
    match = re.fullmatch(r"/console/newsletters/(\d+)(\?.*)?", resp.headers["Location"])
    assert match
    row = await pool.fetchrow("SELECT subject, body, status FROM newsletters WHERE id = $1", int(match[1]))
    assert (row["subject"], row["body"], row["status"]) == (MONTHLY["subject"], MONTHLY["body"], "draft")


async def test_template_changes_in_the_console_are_audited_under_the_person(
    client: Client, pool: asyncpg.Pool, settings: Settings, factory: Factory
) -> None:
    mia = await factory.console_user("marketing", email="mia@example.org", name="Mia Marketing")
    headers, csrf = await as_person(client, pool, settings, mia)

    async def post(path: str, **form: str) -> None:
        resp = await client.post(path, data={"csrf": csrf, **form}, headers=headers, allow_redirects=False)
        assert resp.status == 303, await resp.text()

    await post("/console/templates/new", **MONTHLY)
    template_id = await pool.fetchval("SELECT id FROM newsletter_templates")
    await post(f"/console/templates/{template_id}", **{**MONTHLY, "subject": "Changed"})
    await post(f"/console/templates/{template_id}/draft")
    draft_id = await pool.fetchval("SELECT id FROM newsletters")
    await post(f"/console/templates/{template_id}/delete")

    rows = await pool.fetch(
        "SELECT actor_type, actor, action, changes, console_user_id FROM audit_log ORDER BY id"
    )
    assert [r["action"] for r in rows] == [
        "newsletter_template.created",
        "newsletter_template.edited",
        "newsletter.created",
        "newsletter_template.deleted",
    ]
    assert {(r["actor_type"], r["actor"], r["console_user_id"]) for r in rows} == {
        ("console", "mia@example.org (marketing)", mia["id"])
    }
    assert rows[1]["changes"]["fields"] == ["subject"]
    assert rows[2]["changes"] == {"newsletter_id": draft_id, "subject": "Changed", "template_id": template_id}
    # The draft's history names the person who started it from the template.
    page = await (await client.get(f"/console/newsletters/{draft_id}", headers=headers)).text()
    history = page[page.index('id="history-heading"') :]
    assert "Mia Marketing" in history and "created" in history
