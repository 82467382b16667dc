"""Clicks without tracking people: a newsletter's links rewritten to `/c/{newsletter}/{link}`,
redirects only to that newsletter's own links, counted per link and day, and nothing stored
about who clicked."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier.mail.newsletter_render import Draft, prepare, sample_personal, trackable_links
from notifier.settings import Settings
from tests.api_helpers import bearer, create_newsletter, send_newsletter
from tests.conftest import BurstWorker, MailSink
from tests.factory import Factory
from tests.test_console import sign_in

Client = TestClient[Any, Any]

BODY = """Hello {{ first_name }},

Read [our report](https://example.org/report?year=2026&lang=en) and
[the shop](https://shop.example.org/) — or [the report again](https://example.org/report?year=2026&lang=en).

[Your page](https://example.org/me?who={{ email }}), [write to us](mailto:news@example.org).
"""
REPORT, SHOP = "https://example.org/report?year=2026&lang=en", "https://shop.example.org/"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Plain http, so the test client keeps the console's session cookie; signing in with a key."""
    return settings.model_copy(update={"public_url": "http://127.0.0.1", "console_key_sign_in": True})


def test_only_whole_http_links_are_counted_each_once() -> None:
    draft = Draft(7, "S", "", BODY, "markdown")
    # Personal links (built with a template tag), mailto: and repeats are not numbered.
    assert trackable_links(draft) == [REPORT, SHOP]
    html = (
        '<a href="https://a.example/x">a</a> <a class=x href=\'https://b.example/\'>b</a> <a href="#top">t</a>'
        ' <a href="https://c.example/caf\u00e9">not ASCII</a> <a href="https://d.example/\nx">two lines</a>'
    )
    assert trackable_links(Draft(7, "S", "", html, "html")) == ["https://a.example/x", "https://b.example/"]


def test_rendering_rewrites_the_numbered_links_in_both_parts(settings: Settings) -> None:
    draft = Draft(7, "S", "", BODY, "markdown", links=(REPORT, SHOP))
    out = prepare(settings, draft).render(sample_personal(settings))
    assert 'href="http://127.0.0.1/c/7/0"' in out.html and 'href="http://127.0.0.1/c/7/1"' in out.html
    assert "example.org/report" not in out.html and "shop.example.org" not in out.html
    assert "https://example.org/me?who=ada@example.org" in out.html  # personal: left as written
    assert "(http://127.0.0.1/c/7/0)" in out.text and "(http://127.0.0.1/c/7/1)" in out.text
    plain = prepare(settings, Draft(7, "S", "", BODY, "markdown")).render(sample_personal(settings))
    assert "/c/7/" not in plain.html + plain.text  # without `track_clicks`, nothing is rewritten


Send = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
async def send(
    client: Client, pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, run_worker: BurstWorker
) -> Send:
    """`await send(track_clicks=True)`: a newsletter of BODY created and sent through the API to
    everyone opted in, delivered; the newsletter as GET then shows it."""
    headers = await bearer(pool, "newsletters")

    async def sent(track_clicks: bool = True, **fields: Any) -> dict[str, Any]:
        draft = await create_newsletter(
            client, headers, subject="News", body=BODY, track_clicks=track_clicks, **fields
        )
        assert draft["track_clicks"] is track_clicks
        return await send_newsletter(client, headers, run_worker, pool, redis, settings, draft["id"])

    return sent


async def test_clicks_redirect_count_per_link_and_store_nothing_about_the_member(
    client: Client, pool: asyncpg.Pool, factory: Factory, smtp: MailSink, send: Send
) -> None:
    members = [await factory.account(newsletter=True) for _ in range(2)]
    sent = await send()
    nid = sent["id"]
    assert sent["status"] == "sent" and sent["clicks"] == [
        {"link": 0, "url": REPORT, "clicks": 0, "days": []},
        {"link": 1, "url": SHOP, "clicks": 0, "days": []},
    ]

    # Every recipient gets the same counting links; nothing in them names the member.
    assert len(smtp.received) == 2
    for received, member in zip(
        sorted(smtp.received, key=lambda r: r.recipients[0]),
        sorted(members, key=lambda m: m["email"]),
        strict=True,
    ):
        part = received.message.get_body(("html",))
        assert part is not None
        html = part.get_content()
        links = set(re.findall(r'href="(http://127\.0\.0\.1/c/[^"]*)"', html))
        assert links == {f"http://127.0.0.1/c/{nid}/0", f"http://127.0.0.1/c/{nid}/1"}
        assert member["email"] in html  # the personal link stays personal, and is not counted
        assert REPORT.replace("&", "&amp;") not in html

    events_before = await pool.fetchval("SELECT count(*) FROM events")
    for _ in range(3):
        resp = await client.get(f"/c/{nid}/0", allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"] == REPORT
        assert "Set-Cookie" not in resp.headers
    resp = await client.get(f"/c/{nid}/1?url=https://evil.example/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == SHOP  # the query is never a destination
    # Not counted: HEAD (link checkers) and announced prefetches; both still redirect.
    resp = await client.head(f"/c/{nid}/0", allow_redirects=False)
    assert resp.status == 302
    resp = await client.get(f"/c/{nid}/0", headers={"Sec-Purpose": "prefetch"}, allow_redirects=False)
    assert resp.status == 302

    headers = await bearer(pool, "newsletters")
    got = await (await client.get(f"/v1/newsletters/{nid}", headers=headers)).json()
    assert [(c["link"], c["clicks"]) for c in got["clicks"]] == [(0, 3), (1, 1)]
    assert len(got["clicks"][0]["days"]) == 1 and got["clicks"][0]["days"][0]["clicks"] == 3

    # Nothing about the member: the tables hold a newsletter, a link, a URL, a day and a count;
    # no click wrote an event; no row mentions an address, an account or an IP address.
    columns = await pool.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_name IN ('newsletter_links', 'link_clicks') ORDER BY table_name, ordinal_position"
    )
    assert [(c["table_name"], c["column_name"]) for c in columns] == [
        ("link_clicks", "newsletter_id"),
        ("link_clicks", "link"),
        ("link_clicks", "day"),
        ("link_clicks", "clicks"),
        ("newsletter_links", "newsletter_id"),
        ("newsletter_links", "link"),
        ("newsletter_links", "url"),
    ]
    assert await pool.fetchval("SELECT count(*) FROM events") == events_before
    stored = " ".join(
        str(tuple(r))
        for r in await pool.fetch("SELECT * FROM link_clicks")
        + await pool.fetch("SELECT * FROM newsletter_links")
    )
    for member in members:
        assert member["email"] not in stored and member["external_id"] not in stored
    assert "127.0.0.1" not in stored


async def test_a_language_variant_links_count_too(factory: Factory, smtp: MailSink, send: Send) -> None:
    await factory.account(newsletter=True, locale="de")
    german = "Hallo! [Der Bericht](https://example.org/bericht) und [der Laden](https://shop.example.org/)."
    sent = await send(variants={"de": {"subject": "Neuigkeiten", "body": german}})
    nid = sent["id"]
    assert [c["url"] for c in sent["clicks"]] == [REPORT, SHOP, "https://example.org/bericht"]
    (received,) = smtp.received
    part = received.message.get_body(("html",))
    assert part is not None
    links = set(re.findall(r'href="(http://127\.0\.0\.1/c/[^"]*)"', part.get_content()))
    assert links == {f"http://127.0.0.1/c/{nid}/2", f"http://127.0.0.1/c/{nid}/1"}


async def test_links_not_in_the_newsletter_and_foreign_newsletters_are_404(
    client: Client, pool: asyncpg.Pool, factory: Factory, send: Send
) -> None:
    await factory.account(newsletter=True)
    counted = await send()
    uncounted = await send(track_clicks=False)
    nid = counted["id"]
    for path in (
        f"/c/{nid}/2",  # the newsletter has two links
        f"/c/{nid}/99999",
        f"/c/{uncounted['id']}/0",  # a newsletter that does not count clicks has no numbered links
        f"/c/{nid + 1000}/0",  # no such newsletter
        f"/c/{nid}/-1",
        f"/c/{nid}/1e3",
        f"/c/{nid}/%E0%A5%A7",  # a Devanagari digit
        f"/c/{'9' * 30}/0",
        "/c/x/0",
        "/c/https:%2F%2Fevil.example/0",
    ):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 404, path
        assert "Location" not in resp.headers
        assert resp.content_type == "text/html"
    assert await pool.fetchval("SELECT count(*) FROM link_clicks") == 0


async def test_console_shows_clicks_per_link_and_sets_the_choice(
    client: Client, pool: asyncpg.Pool, factory: Factory, send: Send
) -> None:
    await factory.account(newsletter=True)
    sent = await send()
    await client.get(f"/c/{sent['id']}/1", allow_redirects=False)
    csrf = await sign_in(client, pool, ["newsletters"], name="Marketing Max")
    page = await (await client.get(f"/console/newsletters/{sent['id']}")).text()
    table = page[page.index('id="clicks"') :]
    assert SHOP in table and re.search(r'<td class="num">1</td>', table)
    assert re.search(r'<td class="num">0</td>', table)

    resp = await client.post(
        "/console/newsletters/new",
        data={
            "csrf": csrf,
            "subject": "S",
            "body": "B",
            "body_format": "markdown",
            "track_clicks": "on",
            "action": "save",
        },
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    created = int(resp.headers["Location"].split("/")[-1].split("?")[0])
    assert await pool.fetchval("SELECT track_clicks FROM newsletters WHERE id = $1", created) is True
    page = await (await client.get(f"/console/newsletters/{created}")).text()
    assert re.search(r'name="track_clicks" value="on"[^>]*checked', page)
    await client.post(
        f"/console/newsletters/{created}",
        data={"csrf": csrf, "subject": "S", "body": "B", "body_format": "markdown", "action": "save"},
        allow_redirects=False,
    )
    assert await pool.fetchval("SELECT track_clicks FROM newsletters WHERE id = $1", created) is False


async def test_patch_turns_counting_on_and_off(client: Client, pool: asyncpg.Pool) -> None:
    headers = await bearer(pool, "newsletters")
    draft = await create_newsletter(client, headers, subject="S", body="B")
    assert draft["track_clicks"] is False and draft["clicks"] is None
    resp = await client.patch(f"/v1/newsletters/{draft['id']}", json={"track_clicks": True}, headers=headers)
    assert (await resp.json())["track_clicks"] is True
    resp = await client.patch(f"/v1/newsletters/{draft['id']}", json={"subject": "T"}, headers=headers)
    assert (await resp.json())["track_clicks"] is True
    resp = await client.patch(
        f"/v1/newsletters/{draft['id']}", json={"track_clicks": "yes please"}, headers=headers
    )
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == ["track_clicks"]
