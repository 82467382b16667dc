"""The console in a real browser: headless Chromium driven by Playwright against the app on
127.0.0.1. Marketing signs in, composes with the live preview, test-sends, sends and watches the
figures; an operator finds a member and erases them. Every page passes axe-core (no serious or
critical violations) and each journey leaves screenshots behind (in NOTIFIER_SCREENSHOT_DIR when
set, else the test's tmp_path).

Enable on a new machine: see tests/browser_fixtures.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import newsletter, queues
from notifier.api import auth
from notifier.console import newsletters as console_newsletters
from notifier.mail import outbox
from notifier.settings import Settings
from tests.browser_fixtures import BROWSER_MARKS, axe_violations, browser, require_axe
from tests.conftest import BurstWorker, MailSink
from tests.factory import Factory

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = BROWSER_MARKS

Client = TestClient[Any, Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_url": "http://127.0.0.1", "console_key_sign_in": True})


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("NOTIFIER_SCREENSHOT_DIR") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class Journey:
    """One browser tab on the console, checking accessibility and saving screenshots as it goes."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.saved: list[Path] = []

    async def check(self, name: str) -> None:
        """axe-core finds nothing serious on the page, and a full-page screenshot is saved."""
        assert await axe_violations(self.page) == [], name
        path = self.shots / f"console-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        self.saved.append(path)

    async def sign_in(self, key: str) -> None:
        await self.page.goto(self.base + "/console/")
        assert self.page.url.startswith(self.base + "/console/sign-in")
        assert await self.page.get_attribute("html", "lang") == "en"
        await self.check("sign-in")
        await self.page.get_by_label("API key").fill(key)
        async with self.page.expect_navigation():
            await self.page.get_by_label("API key").press("Enter")
        assert await self.page.get_by_role("heading", level=1).inner_text() == "Overview"

    async def submit(self, control: Any) -> None:
        """Click a control that navigates (a submit button or a link) and wait for the new page."""
        await control.scroll_into_view_if_needed()
        async with self.page.expect_navigation():
            await control.click()

    def assert_screenshots(self) -> None:
        for path in self.saved:
            assert path.exists() and path.stat().st_size > 5_000, path
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def open_journey(browser: Any, client: Client, shots: Path, *, width: int = 1400) -> Journey:
    require_axe()
    # bypass_csp lets axe-core be injected; the pages themselves need no inline script.
    context = await browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
    page = await context.new_page()
    return Journey(page, str(client.make_url("")).rstrip("/"), shots)


async def test_marketing_composes_previews_test_sends_sends_and_watches_figures(
    monkeypatch: pytest.MonkeyPatch,
    client: Client,
    settings: Settings,
    redis: ArqRedis,
    browser: Any,
    pool: asyncpg.Pool,
    factory: Factory,
    run_worker: BurstWorker,
    smtp: MailSink,
    shots: Path,
) -> None:
    monkeypatch.setattr(console_newsletters, "REFRESH_SECONDS", 1)  # watch without waiting 5 s
    for n in range(4):
        await factory.account(newsletter=True, name=f"Reader {n}")
    _, key = await auth.create_key(pool, "Marketing Max", ["newsletters"])
    journey = await open_journey(browser, client, shots)
    page = journey.page
    await journey.sign_in(key)
    # A newsletters key sees no operator pages.
    assert await page.get_by_role("link", name="Members").count() == 0

    await journey.submit(page.get_by_role("link", name="Write a newsletter").first)
    await page.get_by_label("Subject", exact=True).fill("Autumn at the allotment")
    await page.get_by_label("Preheader").fill("Pumpkins, mostly")
    await page.get_by_label("Body", exact=True).fill("# Hello {{ first_name }}\n\nThe **pumpkins** are in.")
    # The live preview follows the typing (a few lines of JavaScript) at both widths.
    await page.wait_for_function(
        "() => [...document.querySelectorAll('iframe[data-preview-frame]')]"
        ".filter(f => f.srcdoc.includes('pumpkins</strong>')).length === 2"
    )
    phone = page.frame_locator("iframe[title='Preview at phone width']")
    assert await phone.locator("h1").first.inner_text() == "Hello Ada"
    box = await page.locator("iframe[title='Preview at phone width']").bounding_box()
    assert box is not None and round(box["width"]) == 375
    desktop = await page.locator("iframe[title='Preview at desktop width']").bounding_box()
    assert desktop is not None and round(desktop["width"]) == 600
    # And refreshes without JavaScript through the button.
    await journey.submit(page.get_by_role("button", name="Refresh preview"))
    await page.wait_for_load_state()
    assert "pumpkins" in await page.locator("iframe[title='Preview at desktop width']").get_attribute(
        "srcdoc"
    )
    await journey.check("compose-preview")

    await journey.submit(page.get_by_role("button", name="Create draft"))
    assert await page.get_by_role("status").inner_text() == "Draft created."
    newsletter_id = await pool.fetchval("SELECT id FROM newsletters")

    await page.get_by_label("Send the saved version to").fill("max@example.org")
    await journey.submit(page.get_by_role("button", name="Send test"))
    assert await page.get_by_role("status").inner_text() == "Test e-mail queued."
    await run_worker(queues.SERVICE)
    assert [r.message["Subject"] for r in smtp.received] == ["[TEST] Autumn at the allotment"]

    await journey.submit(page.get_by_role("button", name="Send newsletter"))
    assert await page.get_by_role("status").inner_text() == "Sending has started."
    # What the newsletter_start job does: freeze the audience into queued rows (delivery comes later).
    assert await newsletter.start(pool, settings, newsletter_id) == 4
    await page.goto(f"{journey.base}/console/newsletters/{newsletter_id}")
    assert await page.locator("[data-figure=recipients]").inner_text() == "4"
    assert await page.locator("[data-figure=sent]").inner_text() == "0"
    await journey.check("sending")

    # Watching: the figures update in place while it sends, then the page shows it sent.
    await run_worker(queues.BULK)  # the start job finds the newsletter started and does nothing
    await outbox.ring(redis, queues.BULK, 4)
    await run_worker(queues.BULK)  # delivers
    await page.wait_for_function("() => document.querySelector('[data-figure=sent]').textContent === '4'")
    assert await newsletter.finish_done(pool) == [newsletter_id]
    await page.wait_for_function("() => document.querySelector('h1 .badge').textContent === 'sent'")
    await page.wait_for_load_state()
    assert await page.locator("[data-figure=sent]").inner_text() == "4"
    chart = page.get_by_role("img", name="Newsletter")
    assert await chart.count() == 1
    assert "Delivered 4" in await page.locator("svg.chart desc").text_content()
    await journey.check("figures")

    await journey.submit(page.get_by_role("navigation", name="Main").get_by_role("link", name="Newsletters"))
    assert await page.get_by_role("link", name="Autumn at the allotment").count() == 1
    await journey.check("newsletters")
    journey.assert_screenshots()
    assert len(smtp.received) == 5


async def test_operator_finds_a_member_and_erases_them(
    client: Client, browser: Any, pool: asyncpg.Pool, factory: Factory, shots: Path
) -> None:
    member = await factory.account(email="ada@example.com", name="Ada Byron", external_id="reg-1815")
    await factory.message(member, subject="Your allotment plot is ready")
    await factory.email(member, status="failed", last_error="550 5.1.1 unknown user")
    await factory.email(status="failed", last_error="451 4.4.1 timeout")
    _, key = await auth.create_key(pool, "Support Sam", ["admin"])
    journey = await open_journey(browser, client, shots)
    page = journey.page
    await journey.sign_in(key)
    await journey.check("home")

    # Keyboard: the first Tab reaches the skip link, which moves focus to the main content.
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.textContent") == "Skip to main content"

    for name in ("Deliverability", "Suppressions", "Failed e-mails"):
        await journey.submit(page.get_by_role("navigation", name="Main").get_by_role("link", name=name))
        assert await page.get_by_role("heading", level=1).count() == 1
        await journey.check(name.lower().replace(" ", "-"))

    await journey.submit(page.get_by_role("navigation", name="Main").get_by_role("link", name="Members"))
    await page.get_by_label("E-mail address or external id").fill("ada@")
    await page.get_by_label("E-mail address or external id").press("Enter")
    await page.wait_for_load_state()
    await journey.check("members")
    await journey.submit(page.get_by_role("link", name="Ada Byron"))
    for heading in ("Profile", "Preferences", "Inbox", "E-mails", "Events", "Audit trail"):
        assert await page.get_by_role("heading", name=heading, exact=True).count() == 1, heading
    # In the inbox table and in the inbox as the member sees it.
    assert await page.get_by_text("Your allotment plot is ready").count() == 2
    assert await page.get_by_text("550 5.1.1 unknown user").count() == 1
    await journey.check("member")

    await journey.submit(page.get_by_role("link", name="Erase…"))
    await journey.check("erase-confirm")
    await page.get_by_label("The member asked to be erased").check()
    await page.get_by_label("Type the external id").fill("reg-1814")
    await journey.submit(page.get_by_role("button", name="Erase this member"))
    assert "Type the member" in await page.get_by_role("alert").inner_text()
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 1

    await page.get_by_label("Type the external id").fill("reg-1815")
    await journey.submit(page.get_by_role("button", name="Erase this member"))
    assert (await page.get_by_role("status").inner_text()).startswith("The member was erased.")
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 0
    assert await pool.fetchval("SELECT actor FROM erasures") == "Support Sam"
    await journey.check("erased")

    # A link from another site (here a blank page) lands on its page, still signed in, though
    # the browser withholds the SameSite=Strict cookie on the first, cross-site request.
    await page.route(
        "http://elsewhere.test/",
        lambda route: route.fulfill(
            content_type="text/html", body=f'<a href="{journey.base}/console/failed">failed e-mails</a>'
        ),
    )
    await page.goto("http://elsewhere.test/")
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    await page.get_by_role("link", name="failed e-mails").click()
    await page.wait_for_url(journey.base + "/console/failed")
    assert any("retry=1" in url for url in seen), seen
    assert await page.get_by_role("heading", level=1).inner_text() == "Failed e-mails"

    async with page.expect_navigation():
        await page.get_by_role("button", name="Sign out").click()
    assert page.url.startswith(journey.base + "/console/sign-in")
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0
    journey.assert_screenshots()
    assert len(journey.saved) == 9


async def test_phone_width_pages_pass_axe(
    client: Client, browser: Any, pool: asyncpg.Pool, factory: Factory, shots: Path
) -> None:
    await factory.account(name="Narrow Nell")
    _, key = await auth.create_key(pool, "Operator", ["admin"])
    journey = await open_journey(browser, client, shots, width=375)
    await journey.sign_in(key)
    await journey.page.goto(journey.base + "/console/members?q=member")
    await journey.check("phone-members")
    await journey.page.goto(journey.base + "/console/newsletters/new")
    frame = journey.page.frame_locator("iframe[title='Preview at phone width']")
    assert "Hello Ada," in await frame.locator("body").inner_text()
    await journey.check("phone-compose")
    journey.assert_screenshots()


async def test_compose_and_preview_work_without_javascript(
    client: Client, browser: Any, pool: asyncpg.Pool, shots: Path
) -> None:
    _, key = await auth.create_key(pool, "Marketing Max", ["newsletters"])
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    journey = Journey(page, str(client.make_url("")).rstrip("/"), shots)
    await page.goto(journey.base + "/console/newsletters/new")
    await page.get_by_label("API key").fill(key)
    async with page.expect_navigation():
        await page.get_by_label("API key").press("Enter")
    assert page.url == journey.base + "/console/newsletters/new"
    await page.get_by_label("Subject", exact=True).fill("Plain")
    await page.get_by_label("Body", exact=True).fill("No *script* needed, {{ first_name }}.")
    await journey.submit(page.get_by_role("button", name="Refresh preview"))
    frame = page.frame_locator("iframe[title='Preview at desktop width']")
    assert "No script needed, Ada." in await frame.locator("body").inner_text()
    assert await pool.fetchval("SELECT count(*) FROM newsletters") == 0
    await journey.submit(page.get_by_role("button", name="Create draft"))
    assert await page.get_by_role("status").inner_text() == "Draft created."
    await context.close()


async def test_live_preview_shows_template_errors_instead_of_the_last_good_render(
    client: Client, browser: Any, pool: asyncpg.Pool, shots: Path
) -> None:
    _, key = await auth.create_key(pool, "Marketing Max", ["newsletters"])
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    journey = Journey(await context.new_page(), str(client.make_url("")).rstrip("/"), shots)
    page = journey.page
    await page.goto(journey.base + "/console/sign-in")
    await page.get_by_label("API key").fill(key)
    async with page.expect_navigation():
        await page.get_by_label("API key").press("Enter")
    await page.goto(journey.base + "/console/newsletters/new")
    await page.get_by_label("Subject", exact=True).fill("Autumn")
    await page.get_by_label("Body", exact=True).fill("The **pumpkins** are in.")
    frames = "[...document.querySelectorAll('iframe[data-preview-frame]')]"
    await page.wait_for_function(f"() => {frames}.every(f => f.srcdoc.includes('pumpkins</strong>'))")

    # Both templates break: the preview says why, naming both, and both fields are marked.
    await page.get_by_label("Subject", exact=True).fill("Autumn {{ nickname }}")
    await page.get_by_label("Body", exact=True).fill("The **pumpkins** are {{ in")
    errors = page.locator("[data-preview-errors]")
    await errors.wait_for(state="visible")
    assert await page.locator("[data-preview-shown]").is_hidden()
    items = await errors.get_by_role("listitem").all_inner_texts()
    assert [i.split(":")[0] for i in items] == ["Subject", "Body"] and "nickname" in items[0]
    for name in ("subject", "body"):
        field = page.locator(f"#{name}")
        assert await field.get_attribute("aria-invalid") == "true"
        assert f"{name}-error" in (await field.get_attribute("aria-describedby") or "").split()
        assert await page.locator(f"#{name}-error").inner_text()
    await page.screenshot(path=str(shots / "console-live-preview-errors.png"), full_page=True)

    # Fixed again: the preview comes back and the marks go.
    await page.get_by_label("Subject", exact=True).fill("Autumn {{ first_name }}")
    await page.get_by_label("Body", exact=True).fill("The **pumpkins** are in, {{ name }}.")
    await page.wait_for_function(f"() => {frames}.every(f => f.srcdoc.includes('Ada Lovelace'))")
    assert await errors.is_hidden()
    assert await page.locator("[data-preview-subject]").inner_text() == "Autumn Ada"
    assert await page.locator("#subject").get_attribute("aria-invalid") is None
    assert await page.locator("#body-error").count() == 0
    assert await page.locator("#body").get_attribute("aria-describedby") == "body-hint"
    await context.close()


async def test_complaints_and_webhooks_pages_pass_axe(
    client: Client, browser: Any, pool: asyncpg.Pool, factory: Factory, shots: Path
) -> None:
    member = await factory.account(name="Complaining Carl")
    for kind in ("sent", "sent", "bounced", "complained"):
        await factory.event(kind, account_id=member["id"])
    endpoint = await pool.fetchval(
        "INSERT INTO webhook_endpoints (url, events, secret, created_by, status, disabled_reason) "
        "VALUES ('https://crm.example.org/hook', '{email.sent}', '\\x00', 'test', 'disabled', "
        "'no successful delivery since 2026-12-01T09:00:00+00:00; last: HTTP 500') RETURNING id"
    )
    await pool.execute(
        "INSERT INTO webhook_deliveries (endpoint_id, account_id, source, source_id, event_type, payload, "
        "occurred_at, status, attempts, last_status, last_error) "
        "VALUES ($1, $2, 'event', 1, 'email.sent', '{}', now(), 'pending', 3, 500, 'HTTP 500')",
        endpoint,
        member["id"],
    )
    _, key = await auth.create_key(pool, "Operator", ["admin"])
    journey = await open_journey(browser, client, shots)
    page = journey.page
    await journey.sign_in(key)
    for name in ("Complaints", "Webhooks"):
        await journey.submit(page.get_by_role("navigation", name="Main").get_by_role("link", name=name))
        await journey.check(name.lower())
    assert "Disabled:" in await page.locator("main").inner_text()
    journey.assert_screenshots()


async def test_marketing_makes_a_list_and_targets_a_draft_at_it_with_a_segment(
    client: Client, browser: Any, pool: asyncpg.Pool, factory: Factory, shots: Path
) -> None:
    from notifier import audit, preferences
    from notifier.mail.newsletter_render import Draft

    _, key = await auth.create_key(pool, "Marketing Max", ["newsletters"])
    journey = await open_journey(browser, client, shots)
    page = journey.page
    await journey.sign_in(key)
    await journey.submit(page.get_by_role("navigation", name="Main").get_by_role("link", name="Lists"))
    assert await page.get_by_role("heading", level=1).inner_text() == "Lists"
    await journey.check("lists")

    # A key that breaks the rule: the form again, the field marked and described.
    await page.get_by_label("Key").fill("Garden News")
    await page.get_by_label("Name", exact=True).fill("Garden news")
    await journey.submit(page.get_by_role("button", name="Create list"))
    assert await page.get_by_label("Key").get_attribute("aria-invalid") == "true"
    await journey.check("lists-error")
    await page.get_by_label("Key").fill("garden")
    await page.get_by_label("Description").fill("What grows, twice a month.")
    await journey.submit(page.get_by_role("button", name="Create list"))
    assert await page.get_by_role("status").inner_text() == "List created."
    assert await page.get_by_role("cell", name="garden", exact=True).count() == 1

    for name, country in (("Ada", "DE"), ("Bea", "FR")):
        member = await factory.account(name=name, attributes={"country": country})
        async with pool.acquire() as conn:
            await preferences.apply_preferences(
                conn, member["id"], {"lists": {"garden": True}}, audit.MEMBER, "api"
            )
    draft = await newsletter.create_draft(
        pool, Draft(0, "Seeds", "", "Hello {{ first_name }}", "markdown"), "test"
    )
    await page.goto(f"{journey.base}/console/newsletters/{draft['id']}")
    await page.get_by_label("Garden news").check()
    await page.get_by_label("Newsletter").uncheck()
    await page.get_by_label("Segment").fill('{"attr": "country", "op": "eq", "value": "DE"}')
    await journey.submit(page.get_by_role("button", name="Save audience and count"))
    assert await page.get_by_role("status").first.inner_text() == "Audience saved."
    assert "would reach 1 member " in await page.locator("#audience-count").inner_text()
    await journey.check("audience")
    # The count follows the editing (a few lines of JavaScript), without saving.
    await page.get_by_label("Segment").fill('{"attr": "country", "op": "in", "value": ["DE", "FR"]}')
    await page.wait_for_function(
        "() => document.getElementById('audience-count').textContent.includes('would reach 2 members')"
    )
    await page.get_by_label("Segment").fill('{"attr": "country", "op": "like"}')
    await page.wait_for_function(
        "() => document.getElementById('audience-count').textContent.includes('segment.op')"
    )
    assert await pool.fetchval("SELECT segment FROM newsletters") == {
        "attr": "country",
        "op": "eq",
        "value": "DE",
    }
    journey.assert_screenshots()
