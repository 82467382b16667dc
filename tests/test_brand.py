"""The house style (notifier.brand): settings as defaults, console overrides, used by every e-mail
layout and member page; hostile values refused or escaped; Markdown styled in newsletters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis
from pydantic import ValidationError

from notifier import queues, tokens
from notifier.brand import Brand
from notifier.digest import run_pass
from notifier.mail import newsletter_render
from notifier.settings import Settings
from tests.console_people import as_person
from tests.factory import Factory
from tests.test_console import sign_in

Client = TestClient[Any, Any]
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)

HOSTILE_TEXT = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Plain http (the test client keeps the console's session cookie) and a brand by settings."""
    return settings.model_copy(
        update={
            "public_url": "http://127.0.0.1",
            "console_key_sign_in": True,
            "brand_name": "Example Society",
            "brand_primary_color": "#0b5394",
            "brand_footer_text": "Example Society, members since 1901",
        }
    )


async def save_brand(client: Client, csrf: str, **fields: str) -> Any:
    form = {
        "csrf": csrf,
        "name": "",
        "logo_url": "",
        "primary_color": "",
        "accent_color": "",
        "footer_text": "",
    }
    return await client.post("/console/brand", data={**form, **fields}, allow_redirects=False)


async def test_the_settings_brand_is_on_the_preference_centre(
    client: Client, factory: Factory, settings: Settings
) -> None:
    member = await factory.account()
    resp = await client.get(
        f"/preferences/{tokens.sign(settings.secret, 'preferences', member['id'], 'all')}"
    )
    html = await resp.text()
    assert resp.status == 200
    assert '<header class="brand">Example Society</header>' in html
    assert "Example Society, members since 1901" in html
    assert "background: #0b5394" in html


async def test_a_brand_saved_in_the_console_reaches_pages_and_a_digest_email(
    client: Client,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    factory: Factory,
    smtp: Any,
    run_worker: Any,
) -> None:
    csrf = await sign_in(client, pool, ["admin"])
    page = await client.get("/console/brand")
    assert page.status == 200 and 'placeholder="Example Society"' in await page.text()
    resp = await save_brand(
        client,
        csrf,
        name="Riverside Rowing Club",
        logo_url="https://cdn.example.org/rowing/logo.png",
        primary_color="#8A1538",
        footer_text="Rowing on the river since 1887",
    )
    assert resp.status == 303 and resp.headers["Location"] == "/console/brand?notice=saved"
    stored = await pool.fetchrow("SELECT * FROM brand")
    assert (stored["primary_color"], stored["accent_color"]) == ("#8a1538", None)  # blank: the setting

    # A member page of this process shows it at once, and lets the logo's origin load.
    member = await factory.account(
        digest_frequency="daily", digest_window_start=T0, next_digest_at=T0 + timedelta(days=1), name="Ann"
    )
    token = tokens.sign(settings.secret, "preferences", member["id"], "all")
    resp = await client.get(f"/preferences/{token}")
    html = await resp.text()
    assert '<img src="https://cdn.example.org/rowing/logo.png" alt="Riverside Rowing Club">' in html
    assert "Rowing on the river since 1887" in html and "#8a1538" in html
    assert "img-src 'self' https://cdn.example.org;" in resp.headers["Content-Security-Policy"]

    # The worker reads it from the database for the digest it renders.
    await factory.message(member, subject="Regatta on Saturday", created_at=T0 + timedelta(hours=1))
    await run_pass(pool, redis, settings, T0 + timedelta(days=1))
    await run_worker(queues.DIGEST)
    [got] = smtp.received
    body = got.message.get_body(("html",)).get_content()
    assert 'src="https://cdn.example.org/rowing/logo.png"' in body and 'alt="Riverside Rowing Club"' in body
    assert "Rowing on the river since 1887" in body
    assert "background-color: #8a1538" in body  # the button, in the primary colour
    assert "Rowing on the river since 1887" in got.message.get_body(("plain",)).get_content()


async def test_hostile_brand_values_are_refused_or_escaped(
    client: Client, pool: asyncpg.Pool, settings: Settings, factory: Factory
) -> None:
    csrf = await sign_in(client, pool, ["admin"])
    for field, value in [
        ("primary_color", "red;}body{background:url(https://evil.example/x)"),
        ("accent_color", "#12345"),
        ("logo_url", "javascript:alert(1)"),
        ("logo_url", "http://cdn.example.org/logo.png"),
        ("logo_url", "https://evil.example;script-src *;/x.png"),
        ("logo_url", 'https://cdn.example.org/a"onerror="alert(1).png'),
        ("name", "Two\nlines"),
    ]:
        resp = await save_brand(client, csrf, **{field: value})
        html = await resp.text()
        assert resp.status == 422, (field, value)
        assert f'id="{field}-error"' in html and 'aria-invalid="true"' in html
        assert (
            "<script>" not in html and "url(https://evil" not in html.split("</form>")[0].split("value=")[-1]
        )
    assert await pool.fetchval("SELECT count(*) FROM brand") == 0

    # Text is text: stored as written, escaped wherever it is shown.
    resp = await save_brand(client, csrf, name=HOSTILE_TEXT, footer_text=HOSTILE_TEXT)
    assert resp.status == 303
    member = await factory.account()
    page = await client.get(
        f"/preferences/{tokens.sign(settings.secret, 'preferences', member['id'], 'all')}"
    )
    html = await page.text()
    assert "<script>alert(1)</script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    console = await (await client.get("/console/brand")).text()
    assert "<script>alert(1)</script>" not in console and "<img src=x" not in console

    # The same rules hold for the settings and for a Brand built from anywhere.
    with pytest.raises(ValidationError):
        Settings(brand_primary_color="red")
    with pytest.raises(ValidationError):
        Settings(brand_logo_url="https://x.example/a b.png")
    with pytest.raises(ValidationError):
        Brand(accent_color="#fff;}")


def test_markdown_tables_quotes_code_and_https_images_are_styled_in_newsletters(settings: Settings) -> None:
    body = (
        "Hello {{ first_name }}\n\n| Race | Time |\n|---|---|\n| Eights | 10:00 |\n\n"
        "> Row, row, row\n\nUse `oars`:\n\n```\nstroke()\n```\n\n"
        "![crew](https://cdn.example.org/crew.jpg) ![tracker](http://track.example/p.gif)"
        ' <img src="data:image/gif;base64,R0lGOD" alt="pixel">'
    )
    draft = newsletter_render.Draft(
        1, "News", "", body, "markdown", brand=Brand(name="Club", accent_color="#aa0000")
    )
    out = newsletter_render.prepare(settings, draft).render(newsletter_render.sample_personal(settings))
    html = out.html
    assert "<th" in html and "border-bottom: 2px solid" in html  # table header, in the primary colour
    assert "<blockquote" in html and "border-left: 4px solid #aa0000" in html  # the accent colour
    assert '<pre style="' in html and "font-family: Menlo" in html and "<code" in html
    assert '<img src="https://cdn.example.org/crew.jpg"' in html and "max-width: 100%" in html
    assert "track.example" not in html and "data:image" not in html  # only https images load
    assert 'alt="tracker"' in html and 'alt="pixel"' in html  # they show their alt text
    assert ">Club<" in html  # the brand's name heads the newsletter


async def test_a_brand_save_is_audited_under_the_person_and_a_refused_one_is_not(
    client: Client, pool: asyncpg.Pool, settings: Settings, factory: Factory
) -> None:
    ada = await factory.console_user("admin", email="ada@example.org", name="Ada Admin")
    headers, csrf = await as_person(client, pool, settings, ada)
    form = {"csrf": csrf, "name": "Riverside", "logo_url": "", "primary_color": "#8a1538"}
    resp = await client.post("/console/brand", data=form, headers=headers, allow_redirects=False)
    assert resp.status == 303
    refused = {**form, "name": "Other", "accent_color": "#12345"}
    assert (await client.post("/console/brand", data=refused, headers=headers)).status == 422
    rows = await pool.fetch("SELECT actor_type, actor, action, changes, console_user_id FROM audit_log")
    assert [dict(r) for r in rows] == [
        {
            "actor_type": "console",
            "actor": "ada@example.org (admin)",
            "action": "brand.saved",
            "changes": {
                "name": {"before": None, "after": "Riverside"},
                "primary_color": {"before": None, "after": "#8a1538"},
            },
            "console_user_id": ada["id"],
        }
    ]
