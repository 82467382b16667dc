"""The preference centre: server-rendered, accessible markup, CSRF nonce and Origin checks, saving
through apply_preferences (audit, consent, events), invalid values shown back, forged links."""

from __future__ import annotations

import functools
import re
import time
from html.parser import HTMLParser
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier import consent, i18n, pages, tokens
from notifier.settings import Settings
from tests.factory import Factory


class Form(HTMLParser):
    """What a browser would see of the page: fields, labels, fieldsets, scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.labels_for: set[str] = set()
        self.legends = 0
        self.fieldsets = 0
        self.scripts = 0
        self.html_lang: str | None = None
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.html_lang = a.get("lang")
        elif tag in ("input", "select"):
            self.inputs.append(a)
            if tag == "input" and a.get("type") == "hidden":
                self.values[a["name"] or ""] = a.get("value") or ""
        elif tag == "label" and a.get("for"):
            self.labels_for.add(a["for"] or "")
        elif tag == "legend":
            self.legends += 1
        elif tag == "fieldset":
            self.fieldsets += 1
        elif tag == "script":
            self.scripts += 1


def parse(html: str) -> Form:
    form = Form()
    form.feed(html)
    return form


async def open_centre(client: TestClient[Any, Any], settings: Settings, account_id: int) -> tuple[str, str]:
    token = tokens.sign(settings.secret, "preferences", account_id, "all")
    resp = await client.get(f"/preferences/{token}")
    assert resp.status == 200
    return token, parse(await resp.text()).values["nonce"]


def form_data(nonce: str, **fields: str) -> dict[str, str]:
    data = {
        "nonce": nonce,
        "digest_frequency": "daily",
        "digest_hour": "8",
        "digest_weekday": "1",
        "timezone": "UTC",
    }
    data.update(fields)
    return data


async def test_page_is_accessible_and_sets_no_cookie(
    client: TestClient[Any, Any], factory: Factory, settings: Settings
) -> None:
    ann = await factory.account(digest_frequency="weekly", digest_hour=18, timezone="Europe/Berlin")
    token = tokens.sign(settings.secret, "preferences", ann["id"], "digest")
    resp = await client.get(f"/preferences/{token}")
    assert resp.status == 200
    assert "Set-Cookie" not in resp.headers
    assert resp.headers["Cache-Control"] == "no-store"
    assert "form-action 'self'" in resp.headers["Content-Security-Policy"]
    html = await resp.text()
    form = parse(html)
    assert form.html_lang == "en" and form.scripts == 0
    assert form.fieldsets == form.legends == 4  # how often, when, quiet hours, newsletter
    visible = [i for i in form.inputs if i.get("type") != "hidden"]
    assert visible and all(i.get("id") in form.labels_for for i in visible), "every field has a label"
    assert re.search(r'value="weekly"[^>]*checked', html)
    assert re.search(r'<option value="18" selected>', html)
    assert re.search(r'<option value="Europe/Berlin" selected>', html)
    assert consent.WORDING in html


async def test_lower_the_frequency_and_opt_in(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    ann = await factory.account(digest_frequency="daily")
    token, nonce = await open_centre(client, settings, ann["id"])
    resp = await client.post(
        f"/preferences/{token}",
        data=form_data(nonce, digest_frequency="weekly", digest_weekday="5", digest_hour="7",
                       timezone="America/New_York", newsletter="yes"),
    )  # fmt: skip
    assert resp.status == 200
    html = await resp.text()
    assert "Saved" in html and "How often: Weekly" in html and "Day of the week: Friday" in html
    row = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", ann["id"])
    assert (row["digest_frequency"], row["digest_weekday"], row["digest_hour"], row["timezone"], row["newsletter"]) == (
        "weekly", 5, 7, "America/New_York", True,
    )  # fmt: skip
    audit_row = await pool.fetchrow("SELECT * FROM audit_log WHERE account_id = $1", ann["id"])
    assert (audit_row["actor_type"], audit_row["changes"]["source"]) == ("member", "preference-centre")
    granted = await pool.fetchrow("SELECT * FROM consents WHERE account_id = $1", ann["id"])
    assert granted["granted"] and granted["source"] == "preference-centre"
    assert (granted["wording"], granted["wording_version"]) == (consent.WORDING, consent.WORDING_VERSION)
    kinds = [
        r["kind"]
        for r in await pool.fetch("SELECT kind FROM events WHERE account_id = $1 ORDER BY id", ann["id"])
    ]
    assert kinds == ["preferences_changed", "resubscribed"]

    # Opting out is as easy: untick and save.
    resp = await client.post(f"/preferences/{token}", data=form_data(nonce, digest_frequency="weekly",
                             digest_weekday="5", digest_hour="7", timezone="America/New_York"))  # fmt: skip
    assert resp.status == 200 and "Newsletter: not subscribed" in await resp.text()
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", ann["id"]) is False
    # Saving unchanged values writes nothing.
    resp = await client.post(f"/preferences/{token}", data=form_data(nonce, digest_frequency="weekly",
                             digest_weekday="5", digest_hour="7", timezone="America/New_York"))  # fmt: skip
    assert "Nothing needed changing" in await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE account_id = $1", ann["id"]) == 2


async def test_csrf_nonce_and_origin_are_checked(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    ann = await factory.account(digest_frequency="daily")
    token, nonce = await open_centre(client, settings, ann["id"])
    other = tokens.sign(settings.secret, "preferences", ann["id"] + 1, "all")
    stale = pages.form_nonce(settings.secret, token, now=time.time() - pages.NONCE_SECONDS - 10)
    attempts = [
        ({}, form_data("")),  # no nonce
        ({}, form_data("123.abc")),  # forged
        ({}, form_data("²³.abc")),  # not ASCII digits
        ({}, form_data(pages.form_nonce(settings.secret, other))),  # made for another token
        ({}, form_data(stale)),  # expired
        ({"Origin": "https://evil.example"}, form_data(nonce)),
        ({"Origin": "null"}, form_data(nonce)),
        ({"Referer": "https://evil.example/page"}, form_data(nonce)),
    ]
    for extra, data in attempts:
        resp = await client.post(
            f"/preferences/{token}", data={**data, "digest_frequency": "off"}, headers=extra
        )
        assert resp.status == 403, (extra, data)
    assert await pool.fetchval("SELECT digest_frequency FROM accounts WHERE id = $1", ann["id"]) == "daily"
    resp = await client.post(
        f"/preferences/{token}",
        data=form_data(nonce, digest_frequency="off"),
        headers={"Origin": "https://notifier.test"},
    )
    assert resp.status == 200
    assert await pool.fetchval("SELECT digest_frequency FROM accounts WHERE id = $1", ann["id"]) == "off"


async def test_invalid_values_are_shown_back_and_nothing_is_saved(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    ann = await factory.account(digest_frequency="daily")
    token, nonce = await open_centre(client, settings, ann["id"])
    resp = await client.post(
        f"/preferences/{token}",
        data=form_data(
            nonce, timezone="Mars/Olympus", digest_hour="25", digest_weekday="³", newsletter="yes"
        ),
    )
    assert resp.status == 422
    html = await resp.text()
    assert "Nothing was saved" in html and "Mars/Olympus" in html
    assert 'aria-invalid="true"' in html
    row = await pool.fetchrow(
        "SELECT timezone, digest_hour, newsletter FROM accounts WHERE id = $1", ann["id"]
    )
    assert tuple(row) == ("UTC", 8, False)
    resp = await client.post(f"/preferences/{token}", json={"nonce": nonce})
    assert resp.status == 415


async def test_forged_links_are_refused(
    client: TestClient[Any, Any], factory: Factory, settings: Settings
) -> None:
    ann = await factory.account()
    unsubscribe = tokens.sign(settings.secret, "unsubscribe", ann["id"], "all")
    genuine = tokens.sign(settings.secret, "preferences", ann["id"], "all")
    for bad in (unsubscribe, genuine[:-2] + "xx", "abc", "A" * 70):
        assert (await client.get(f"/preferences/{bad}")).status == 404
        assert (await client.post(f"/preferences/{bad}", data={"nonce": "1.x"})).status == 404


async def test_with_double_opt_in_the_page_says_to_confirm(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    settings.newsletter_double_opt_in = True
    ann = await factory.account(digest_frequency="daily")
    token, nonce = await open_centre(client, settings, ann["id"])
    resp = await client.post(f"/preferences/{token}", data=form_data(nonce, newsletter="yes"))
    assert "confirm with the link we are e-mailing you" in await resp.text()
    row = await pool.fetchrow("SELECT granted, confirmed_at FROM consents WHERE account_id = $1", ann["id"])
    assert row["granted"] and row["confirmed_at"] is None


async def test_topics_and_quiet_hours(
    client: TestClient[Any, Any], factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    await pool.execute(
        """INSERT INTO categories (key, labels, descriptions, default_frequency, required) VALUES
           ('registry', '{"en": "Certificates", "de": "Zertifikate"}', '{"de": "Ablauf"}', 'immediate', true),
           ('community', '{"en": "Community", "de": "Gemeinschaft"}', '{}', 'weekly', false)"""
    )
    ann = await factory.account(digest_frequency="daily", locale="de-CH")
    token, nonce = await open_centre(client, settings, ann["id"])
    html = await (await client.get(f"/preferences/{token}")).text()
    form = parse(html)
    assert form.fieldsets == form.legends == 5
    visible = [i for i in form.inputs if i.get("type") != "hidden"]
    assert all(i.get("id") in form.labels_for for i in visible), "every field has a label"
    # In the member's language (de-CH reads German): the topic's own label and the page's words.
    assert "Zertifikate (erforderlich: kann nicht abgeschaltet werden)" in html and "Ablauf" in html
    de = functools.partial(i18n.gettext, "de")
    assert f"Standard ({de('As messages arrive')})" in html and f"Standard ({de('Weekly')})" in html
    registry = html[
        html.index('name="category.registry"') : html.index(
            "</select>", html.index('name="category.registry"')
        )
    ]
    assert 'value="off"' not in registry

    resp = await client.post(
        f"/preferences/{token}",
        data=form_data(nonce, **{"category.registry": "", "category.community": "off", "quiet_form": "1",
                                 "quiet": "yes", "quiet_start": "22:30", "quiet_end": "06:45"}),
    )  # fmt: skip
    assert resp.status == 200, await resp.text()
    html = await resp.text()
    # What was saved names each topic by its label in the member's language, not by its key.
    assert f"Themen: Gemeinschaft: {de('Never')}" in html and "Ruhezeiten: 22:30 bis 06:45" in html
    row = await pool.fetchrow("SELECT digest_categories, quiet_hours FROM accounts WHERE id = $1", ann["id"])
    assert row["digest_categories"] == {"community": {"frequency": "off"}}
    assert row["quiet_hours"] == {"start": "22:30", "end": "06:45", "weekends": False}
    audit_row = await pool.fetchrow("SELECT changes FROM audit_log WHERE account_id = $1", ann["id"])
    assert set(audit_row["changes"]) == {"categories", "quiet_hours", "source"}

    # Off for the required one (a forged form): 422, the form again with the message, nothing saved.
    resp = await client.post(
        f"/preferences/{token}",
        data=form_data(nonce, **{"category.registry": "off", "quiet_form": "1"}),
    )
    assert resp.status == 422
    assert "this category is required" in await resp.text()
    assert await pool.fetchval("SELECT quiet_hours FROM accounts WHERE id = $1", ann["id"]) is not None
    # Unticking quiet hours removes them; a bad time is shown back.
    resp = await client.post(
        f"/preferences/{token}",
        data=form_data(
            nonce, **{"quiet_form": "1", "quiet": "yes", "quiet_start": "25:00", "quiet_end": "07:00"}
        ),
    )
    assert (
        resp.status == 422
        and 'id="quiet_hours.start" name="quiet_start" value="25:00" aria-invalid="true"'
        in (await resp.text())
    )
    resp = await client.post(f"/preferences/{token}", data=form_data(nonce, quiet_form="1"))
    assert resp.status == 200 and "Ruhezeiten: keine Ruhezeiten" in await resp.text()
