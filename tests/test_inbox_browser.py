"""The member's inbox in a real browser (Debian's headless Chromium through Playwright): the
`<notifier-inbox>` component embedded in a page served from another origin, and the hosted page
with JavaScript disabled. Mouse and keyboard alone, axe-core, and layout at desktop and phone
widths (nothing overflows the viewport)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from notifier import tokens
from notifier.app import create_app
from notifier.member import tokens as member_tokens
from notifier.settings import Settings
from tests.api_helpers import bearer
from tests.browser_fixtures import BROWSER_MARKS, axe_violations, browser
from tests.factory import Factory

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = BROWSER_MARKS

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}

SHOP_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Example shop</title>
<script src="{api}/static/inbox.js" defer></script>
<style>body {{ margin: 0; font-family: sans-serif; }} header {{ display: flex; justify-content: space-between;
align-items: center; padding: .5rem 1rem; border-bottom: 1px solid #ccc; }} h1 {{ font-size: 1.2rem; }}</style>
</head><body><header><h1>Example shop</h1>
<notifier-inbox api="{api}" token="{token}" time-zone="Europe/Berlin"></notifier-inbox>
</header><main><p>Welcome back.</p></main></body></html>"""


class Shop:
    """A page on another origin that embeds the component (what an organisation's site does)."""

    def __init__(self) -> None:
        self.api = ""
        self.token = ""
        app = web.Application()
        app.router.add_get("/", self.page)
        self.server = TestServer(app, host="127.0.0.1")

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=SHOP_PAGE.format(api=self.api, token=self.token), content_type="text/html")

    @property
    def origin(self) -> str:
        return str(self.server.make_url("/")).rstrip("/")


@pytest.fixture
async def shop(
    settings: Settings, pool: asyncpg.Pool, redis: Any
) -> AsyncIterator[tuple[Shop, TestClient[Any, Any]]]:
    shop = Shop()
    await shop.server.start_server()
    app = create_app(settings.model_copy(update={"inbox_origins": shop.origin}))
    async with TestClient(TestServer(app, host="127.0.0.1")) as api:
        shop.api = str(api.make_url("/")).rstrip("/")
        try:
            yield shop, api
        finally:
            await shop.server.close()


async def unread_in_db(pool: asyncpg.Pool, account_id: int) -> int:
    n: int = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1 AND read_at IS NULL AND archived_at IS NULL",
        account_id,
    )
    return n


async def tab_to(page: Any, name: str, limit: int = 40) -> None:
    """Press Tab until the focused element (inside shadow roots too) is named `name`."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(
            """() => { let e = document.activeElement; while (e && e.shadowRoot && e.shadowRoot.activeElement) e = e.shadowRoot.activeElement;
                       return e ? (e.getAttribute('aria-label') || e.textContent).trim() : ''; }"""
        )
        if focused == name:
            return
    raise AssertionError(f"no focusable element named {name!r} within {limit} tabs")


OVERFLOW = """() => {
  const width = window.innerWidth, bad = [];
  const check = (root) => { for (const e of root.querySelectorAll('*')) {
      if (e.shadowRoot) check(e.shadowRoot);
      const r = e.getBoundingClientRect();
      if (r.width && r.height && (r.left < -1 || r.right > width + 1)) bad.push(`${e.tagName}.${e.className}: ${r.left}..${r.right}`);
  } };
  check(document);
  if (document.documentElement.scrollWidth > width + 1) bad.push(`page scrolls sideways: ${document.documentElement.scrollWidth}`);
  return bad;
}"""


async def check_layout(page: Any, tmp_path: Path, name: str) -> None:
    for size in (DESKTOP, PHONE):
        await page.set_viewport_size(size)
        await page.wait_for_timeout(100)
        assert await page.evaluate(OVERFLOW) == [], size
        shot = Path(os.environ.get("INBOX_SCREENSHOTS", tmp_path)) / f"{name}-{size['width']}.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    await page.set_viewport_size(DESKTOP)


BADGE = "() => document.querySelector('notifier-inbox').shadowRoot.querySelector('.badge')"


async def badge(page: Any) -> str:
    text: str = await page.evaluate(
        f"() => {{ const b = ({BADGE})(); return b.hidden ? '' : b.textContent; }}"
    )
    return text


async def test_component_on_another_origin(
    shop: tuple[Shop, TestClient[Any, Any]],
    browser: Any,
    pool: asyncpg.Pool,
    factory: Factory,
    tmp_path: Path,
) -> None:
    site, api = shop
    ann = await factory.account(external_id="ann", timezone="Europe/Berlin")
    await factory.message(ann, subject="Welcome", category="account")
    producer = await bearer(pool, "messages", "accounts")
    resp = await api.post("/v1/accounts/ann/inbox-token", headers=producer)
    site.token = (await resp.json())["token"]
    context = await browser.new_context(viewport=DESKTOP, locale="en-GB")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(site.origin + "/")
    bell = page.get_by_role("button", name="Notifications, 1 unread")
    await bell.wait_for(timeout=5000)
    # Make sure the stream is open before posting (the first `counts` event has been applied).
    await page.wait_for_function(f"() => ({BADGE})().textContent === '1'")

    async def post(subject: str, category: str = "news") -> int:
        body = {
            "category": category,
            "subject": subject,
            "body": f"About {subject}",
            "url": "https://example.org/x",
        }
        r = await api.post("/v1/accounts/ann/messages", json=body, headers=producer)
        assert r.status == 201
        message_id: int = (await r.json())["id"]
        return message_id

    # A message posted through the API appears, with no reload, within 2 s.
    started = time.monotonic()
    await post("Live message")
    await page.wait_for_function(f"() => ({BADGE})().textContent === '2'", timeout=2000)
    assert time.monotonic() - started < 2
    live = await page.evaluate(
        "() => document.querySelector('notifier-inbox').shadowRoot.querySelector('[aria-live]').textContent"
    )
    assert live in ("", "New message: Live message")  # set a moment later for screen readers
    await page.wait_for_function(
        "() => document.querySelector('notifier-inbox').shadowRoot.querySelector('[aria-live]').textContent === 'New message: Live message'"
    )
    for i in range(3):
        await post(f"News {i}")
    await page.wait_for_function(f"() => ({BADGE})().textContent === '5'", timeout=2000)

    # Keyboard alone: Tab to the bell, Enter opens the panel (focus moves into it).
    await tab_to(page, "Notifications, 5 unread")
    await page.keyboard.press("Enter")
    panel = page.get_by_role("dialog", name="Notifications")
    await panel.wait_for()
    await page.get_by_role("heading", name="Unread: News 2").wait_for()
    assert await page.get_by_role("button", name="Mark as read").count() == 5
    await tab_to(page, "Mark as read")  # the newest message's
    await page.keyboard.press("Enter")
    await page.wait_for_function(f"() => ({BADGE})().textContent === '4'", timeout=2000)
    assert await unread_in_db(pool, ann["id"]) == 4
    await tab_to(page, "Archive")
    await page.keyboard.press(" ")
    await page.wait_for_function(f"() => ({BADGE})().textContent === '3'", timeout=2000)
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE archived_at IS NOT NULL") == 1
    assert (
        await page.evaluate(
            "() => document.querySelector('notifier-inbox').shadowRoot.querySelector('time').title"
        )
        != ""
    )

    # The mouse: read one, archive one.
    await page.get_by_role("button", name="Mark as read").first.click()
    await page.wait_for_function(f"() => ({BADGE})().textContent === '2'", timeout=2000)
    await page.get_by_role("button", name="Archive", exact=True).first.click()
    await page.wait_for_function(f"() => ({BADGE})().textContent === '1'", timeout=2000)
    assert await unread_in_db(pool, ann["id"]) == 1

    # Category tabs and the archived view.
    await page.get_by_role("button", name="Archived", exact=True).click()
    await page.get_by_role("button", name="Move to inbox").first.wait_for()
    assert await page.get_by_role("button", name="Move to inbox").count() == 2
    await page.get_by_role("button", name="Unread", exact=True).click()
    await page.get_by_role("heading", name="Unread: Welcome").wait_for()

    # Checked by axe-core with the panel open, and laid out at desktop and phone widths.
    assert await axe_violations(page, ("minor", "moderate", "serious", "critical")) == []
    await check_layout(page, tmp_path, "component")

    # Mark all as read by keyboard; then, after a new message, by mouse.
    await tab_to(page, "Mark all as read")
    await page.keyboard.press("Enter")
    await page.wait_for_function(f"() => ({BADGE})().hidden", timeout=2000)
    assert await unread_in_db(pool, ann["id"]) == 0
    await page.get_by_text("You are all caught up.").wait_for()
    await post("After all", category="events")
    await page.wait_for_function(f"() => ({BADGE})().textContent === '1'", timeout=2000)
    await page.get_by_role("heading", name="Unread: After all").wait_for()  # appears in the open panel
    await page.get_by_role("button", name="Mark all as read").click()
    await page.wait_for_function(f"() => ({BADGE})().hidden", timeout=2000)
    assert await unread_in_db(pool, ann["id"]) == 0

    # Escape closes the panel and gives focus back to the bell.
    await page.keyboard.press("Escape")
    await panel.wait_for(state="hidden")
    assert (
        await page.evaluate(
            "() => document.querySelector('notifier-inbox').shadowRoot.activeElement.className"
        )
        == "bell"
    )
    assert errors == []
    assert await context.cookies() == []
    await context.close()


async def test_component_in_dark_mode_is_accessible(
    shop: tuple[Shop, TestClient[Any, Any]], browser: Any, factory: Factory, settings: Settings
) -> None:
    site, _ = shop
    ann = await factory.account(external_id="ann")
    await factory.message(ann, subject="Dark", category="news")
    now = int(time.time())
    site.token = member_tokens.mint(member_tokens.inbox_secret(settings.secret), "ann", now + 600, issued=now)
    context = await browser.new_context(viewport=PHONE, color_scheme="dark")
    page = await context.new_page()
    await page.goto(site.origin + "/")
    await page.get_by_role("button", name="Notifications, 1 unread").click()
    await page.get_by_role("heading", name="Unread: Dark").wait_for()
    assert await axe_violations(page, ("minor", "moderate", "serious", "critical")) == []
    assert await page.evaluate(OVERFLOW) == []
    await context.close()


async def test_hosted_page_without_javascript(
    client: TestClient[Any, Any],
    browser: Any,
    pool: asyncpg.Pool,
    factory: Factory,
    settings: Settings,
    tmp_path: Path,
) -> None:
    ann = await factory.account(timezone="America/New_York")
    for i in range(4):
        await factory.message(
            ann, subject=f"Page {i}", category="news" if i % 2 else "events", url=f"https://example.org/{i}"
        )
    url = str(client.make_url("/inbox/" + tokens.sign(settings.secret, "inbox", ann["id"])))
    context = await browser.new_context(java_script_enabled=False, viewport=DESKTOP)
    page = await context.new_page()
    assert (await page.goto(url)).status == 200

    # Keyboard alone: read the newest, then archive the next.
    await tab_to(page, "Mark as read")
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert "Marked as read." in await page.get_by_role("status").inner_text()
    assert await unread_in_db(pool, ann["id"]) == 3
    await tab_to(page, "Archive")
    async with page.expect_navigation():
        await page.keyboard.press(" ")
    assert "Archived." in await page.get_by_role("status").inner_text()
    assert await unread_in_db(pool, ann["id"]) == 2
    # The mouse: read one, then mark all.
    async with page.expect_navigation():
        await page.get_by_role("button", name="Mark as read").first.click()
    assert await unread_in_db(pool, ann["id"]) == 1
    await factory.message(ann, subject="Later")
    await page.goto(url)
    async with page.expect_navigation():
        await page.get_by_role("button", name="Mark all as read").click()
    assert await unread_in_db(pool, ann["id"]) == 0
    await factory.message(ann, subject="Later still")
    await page.goto(url)
    await tab_to(page, "Mark all as read")
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert await unread_in_db(pool, ann["id"]) == 0
    async with page.expect_navigation():
        await page.get_by_role("link", name="All").click()
    assert await page.get_by_role("button", name="Mark as unread").count() == 5
    await check_layout(page, tmp_path, "hosted")
    assert await context.cookies() == []
    await context.close()

    checker = await browser.new_context(bypass_csp=True, viewport=PHONE)
    page = await checker.new_page()
    await page.goto(url + "?view=all")
    assert await axe_violations(page, ("minor", "moderate", "serious", "critical")) == []
    await checker.close()
