"""The member pages in a real browser: headless Chromium (the Debian package, not a Playwright
download) driven by Playwright's async API against the app on 127.0.0.1. Keyboard only, no
JavaScript needed by the pages; axe-core checks accessibility when `npm ci --prefix tests/browser`
has installed it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from notifier import tokens
from notifier.settings import Settings
from tests.browser_fixtures import BROWSER_MARKS, axe_violations, browser
from tests.factory import Factory

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = BROWSER_MARKS


async def test_preference_centre_by_keyboard_with_a_screenshot(
    client: TestClient[Any, Any],
    browser: Any,
    factory: Factory,
    pool: asyncpg.Pool,
    settings: Settings,
    tmp_path: Path,
) -> None:
    ann = await factory.account(name="Ann Lee", digest_frequency="daily")
    token = tokens.sign(settings.secret, "preferences", ann["id"], "digest")
    url = str(client.make_url(f"/preferences/{token}"))
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    response = await page.goto(url)
    assert response.status == 200
    assert await page.get_attribute("html", "lang") == "en"

    # Lower the frequency instead of leaving: choose Weekly on Friday at 07:00 in Berlin, opt in.
    await page.get_by_role("radio", name="Weekly", exact=True).check()
    await page.get_by_label("Hour (daily and weekly)").select_option("7")
    await page.get_by_label("Day of the week (weekly)").select_option("5")
    await page.get_by_label("Time zone").select_option("Europe/Berlin")
    await page.get_by_label("Send me the newsletter").check()
    # Submit from the keyboard: focus the button and press Enter.
    await page.get_by_role("button", name="Save preferences").focus()
    async with page.expect_navigation():
        await page.keyboard.press("Enter")

    status = page.get_by_role("status")
    assert "How often: Weekly" in await status.inner_text()
    row = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", ann["id"])
    assert (row["digest_frequency"], row["digest_hour"], row["digest_weekday"], row["timezone"], row["newsletter"]) == (
        "weekly", 7, 5, "Europe/Berlin", True,
    )  # fmt: skip
    assert await context.cookies() == []

    shot = tmp_path / "preference-centre.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    await context.close()

    # The same page, checked by axe-core (scripts allowed only for the checker).
    checker = await browser.new_context(bypass_csp=True)
    page = await checker.new_page()
    await page.goto(url)
    assert await axe_violations(page) == []
    await checker.close()


async def test_unsubscribe_page_button(
    client: TestClient[Any, Any], browser: Any, factory: Factory, pool: asyncpg.Pool, settings: Settings
) -> None:
    ann = await factory.account(newsletter=True)
    token = tokens.sign(settings.secret, "unsubscribe", ann["id"], "newsletter")
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(str(client.make_url(f"/u/{token}")))
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", ann["id"]) is True
    async with page.expect_navigation():
        await page.get_by_role("button", name="Unsubscribe").click()
    assert "You are unsubscribed" in await page.content()
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", ann["id"]) is False
    method = await pool.fetchval("SELECT method FROM events WHERE kind = 'unsubscribed'")
    assert method == "unsubscribe-page"
    async with page.expect_navigation():
        await page.get_by_role("button", name="Subscribe again").click()
    assert await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", ann["id"]) is True
    await context.close()
