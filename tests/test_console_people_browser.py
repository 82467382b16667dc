"""Console users in a real browser (headless Chromium, Playwright): an admin signs in by a link
from the captured mail and invites a marketer, who signs in by link and sends a newsletter; a
support person erases a member after a fresh sign-in, and the member's audit names them. Every new
page passes axe-core; see tests/test_console_browser.py for the machinery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from notifier.settings import Settings
from tests.browser_fixtures import BROWSER_MARKS, browser
from tests.conftest import BurstWorker, MailSink
from tests.console_people import link_in, mails_to
from tests.factory import Factory
from tests.test_console_browser import Client, Journey, open_journey, shots

__all__ = ["browser", "shots"]  # the fixtures, imported for pytest

pytestmark = BROWSER_MARKS


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_url": "http://127.0.0.1"})


async def sign_in_by_link(
    journey: Journey, address: str, run_worker: BurstWorker, smtp: MailSink, name: str
) -> None:
    """On the sign-in page: ask for a link, take it from the captured mail, open it, press Sign in."""
    page = journey.page
    assert await page.get_by_role("heading", level=1).inner_text() == "Sign in"
    await page.get_by_label("Your e-mail address").fill(address)
    await journey.submit(page.get_by_role("button", name="E-mail me a sign-in link"))
    assert await page.get_by_role("heading", level=1).inner_text() == "Check your e-mail"
    await journey.check(f"{name}-link-sent")
    await run_worker()
    await page.goto(journey.base + link_in(mails_to(smtp, address)[-1]))
    await journey.check(f"{name}-link")
    await journey.submit(page.get_by_role("button", name="Sign in"))


async def test_invite_sign_in_by_link_and_send_as_marketing(
    client: Client,
    browser: Any,
    pool: asyncpg.Pool,
    factory: Factory,
    run_worker: BurstWorker,
    smtp: MailSink,
    shots: Path,
) -> None:
    await factory.account(newsletter=True)
    await factory.console_user("admin", email="ada@example.org", name="Ada Admin")
    admin = await open_journey(browser, client, shots)
    await admin.page.goto(admin.base + "/console/")
    await admin.check("people-sign-in")
    await sign_in_by_link(admin, "ada@example.org", run_worker, smtp, "admin")
    assert await admin.page.get_by_role("heading", level=1).inner_text() == "Overview"

    page = admin.page
    await admin.submit(page.get_by_role("navigation", name="Main").get_by_role("link", name="Users"))
    await admin.check("users")
    await page.get_by_label("E-mail address").fill("mia@example.org")
    await page.get_by_label("Name").fill("Mia Marketing")
    await page.get_by_label("Role", exact=True).select_option("marketing")
    await admin.submit(page.get_by_role("button", name="Send the invitation"))
    assert await page.get_by_role("status").inner_text() == "Invitation sent."
    await run_worker()
    assert mails_to(smtp, "mia@example.org"), "the invitation was sent"

    mia = await open_journey(browser, client, shots)
    await mia.page.goto(mia.base + "/console/newsletters/new")
    await sign_in_by_link(mia, "mia@example.org", run_worker, smtp, "marketing")
    page = mia.page
    assert page.url.endswith("/console/newsletters/new")  # back where she was going
    assert await page.get_by_role("link", name="Members").count() == 0  # marketing sees no members
    await page.get_by_label("Subject", exact=True).fill("Hello from Mia")
    await page.get_by_label("Body", exact=True).fill("Hello {{ first_name }}")
    await mia.submit(page.get_by_role("button", name="Create draft"))
    await mia.submit(page.get_by_role("button", name="Send newsletter"))
    assert await page.get_by_role("status").inner_text() == "Sending has started."
    row = await pool.fetchrow("SELECT status, created_by, updated_by FROM newsletters")
    assert row["created_by"] == "console:mia@example.org (marketing)"

    await mia.submit(page.get_by_role("link", name="Mia Marketing"))
    assert await page.get_by_role("heading", level=1).inner_text() == "Your sessions"
    await mia.check("sessions")
    mia.assert_screenshots()
    admin.assert_screenshots()


async def test_support_erases_a_member_after_a_fresh_sign_in(
    client: Client,
    browser: Any,
    pool: asyncpg.Pool,
    factory: Factory,
    run_worker: BurstWorker,
    smtp: MailSink,
    shots: Path,
) -> None:
    member = await factory.account(external_id="reg-1815", name="Ada Byron")
    await factory.console_user("support", email="sam@example.org", name="Sam Support")
    sam = await open_journey(browser, client, shots)
    page = sam.page
    await page.goto(f"{sam.base}/console/members/{member['external_id']}")
    await sign_in_by_link(sam, "sam@example.org", run_worker, smtp, "support")
    async with page.expect_download():
        await page.get_by_role("link", name="Export").click()
    await page.reload()
    audit = page.locator("#audit ~ div table, section:has(#audit) table")
    assert "Sam Support (sam@example.org (support))" in await audit.first.inner_text()

    await pool.execute("UPDATE console_sessions SET signed_in_at = now() - interval '1 hour'")
    await page.goto(f"{sam.base}/console/members/{member['external_id']}/erase")
    await page.get_by_label("Type the external id").fill("reg-1815")
    await sam.submit(page.get_by_role("button", name="Erase this member"))
    assert await page.get_by_role("heading", level=1).inner_text() == "Sign in again to do this"
    await sam.check("fresh")
    await sam.submit(page.get_by_role("link", name="Sign in again"))
    await sign_in_by_link(sam, "sam@example.org", run_worker, smtp, "fresh")
    assert page.url.endswith(f"/console/members/{member['external_id']}/erase")
    await page.get_by_label("Type the external id").fill("reg-1815")
    await sam.submit(page.get_by_role("button", name="Erase this member"))
    assert "The member was erased" in await page.get_by_role("status").inner_text()
    assert await pool.fetchval("SELECT actor FROM erasures") == "sam@example.org (support)"
    sam.assert_screenshots()
