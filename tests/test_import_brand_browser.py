"""The console's import, brand and template pages in a real browser (Playwright, Chromium): an
operator uploads a CSV file with bad rows, sets the brand (a refused colour first), and marketing
starts a draft from a template. Every page passes axe-core; screenshots are saved as in
tests/test_console_browser.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from notifier.api import auth
from notifier.settings import Settings
from tests.browser_fixtures import BROWSER_MARKS, browser
from tests.factory import member_csv
from tests.test_console_browser import Client, open_journey, shots

__all__ = ["browser", "shots"]  # the fixtures, imported for pytest

pytestmark = BROWSER_MARKS


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"public_url": "http://127.0.0.1", "console_key_sign_in": True})


async def test_operator_imports_members_and_sets_the_brand(
    client: Client, browser: Any, pool: asyncpg.Pool, shots: Path, tmp_path: Path
) -> None:
    csv_path = tmp_path / "members.csv"
    csv_path.write_bytes(
        member_csv(
            [
                ["m-1", "ada@example.com", "Ada Lovelace", "Europe/London"],
                ["m-2", "not-an-address", "Bad Mail", "UTC"],
                ["m-3", "grace@example.com", "Grace Hopper", "America/New_York"],
            ]
        )
    )
    _, key = await auth.create_key(pool, "Support Sam", ["admin"])
    journey = await open_journey(browser, client, shots)
    page = journey.page
    await journey.sign_in(key)

    await journey.submit(page.get_by_role("navigation", name="Main").get_by_role("link", name="Import"))
    await journey.check("import")
    await page.get_by_label("CSV file").set_input_files(str(csv_path))
    await page.get_by_label("Dry run: check and count, write nothing").check()
    await journey.submit(page.get_by_role("button", name="Import"))
    assert "2 created, 0 updated, 0 unchanged, 1 failed" in await page.get_by_role("status").inner_text()
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 0
    await page.get_by_label("CSV file").set_input_files(str(csv_path))
    await page.get_by_label("Dry run: check and count, write nothing").uncheck()
    await journey.submit(page.get_by_role("button", name="Import"))
    table = page.get_by_role("table", name="Rows not imported")
    assert await table.get_by_role("row").count() == 2  # the header and row 3
    assert await table.get_by_role("rowheader").inner_text() == "3"
    await journey.check("import-result")
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 2

    await journey.submit(page.get_by_role("navigation", name="Main").get_by_role("link", name="Brand"))
    await journey.check("brand")
    await page.get_by_label("Organisation name").fill("Riverside Rowing Club")
    await page.get_by_label("Primary colour").fill("#12345")  # five digits: refused
    await page.evaluate("() => document.querySelector('form.stack').noValidate = true")
    await journey.submit(page.get_by_role("button", name="Save brand"))
    assert await page.get_by_role("alert").count() == 1
    assert await page.get_by_label("Primary colour").get_attribute("aria-invalid") == "true"
    await journey.check("brand-refused")
    await page.get_by_label("Primary colour").fill("#8a1538")
    await journey.submit(page.get_by_role("button", name="Save brand"))
    assert await page.get_by_role("status").inner_text() == "Saved."
    assert await pool.fetchval("SELECT name FROM brand") == "Riverside Rowing Club"
    await journey.check("brand-saved")
    journey.assert_screenshots()


async def test_marketing_starts_a_draft_from_a_template(
    client: Client, browser: Any, pool: asyncpg.Pool, shots: Path
) -> None:
    _, key = await auth.create_key(pool, "Marketing Max", ["newsletters"])
    journey = await open_journey(browser, client, shots)
    page = journey.page
    await journey.sign_in(key)
    await journey.submit(page.get_by_role("navigation", name="Main").get_by_role("link", name="Templates"))
    await journey.check("templates-empty")
    await journey.submit(page.get_by_role("link", name="Save a new template"))
    await page.get_by_label("Name").fill("Monthly news")
    await page.get_by_label("Subject", exact=True).fill("News for {{ first_name }}")
    await page.get_by_label("Body", exact=True).fill("| Race | Time |\n|---|---|\n| Eights | 10:00 |\n")
    await journey.check("template-form")
    await journey.submit(page.get_by_role("button", name="Save new template"))
    await journey.check("templates")
    await journey.submit(page.get_by_role("button", name="Start a draft from “Monthly news”"))
    assert await page.get_by_role("status").inner_text() == "Draft created."
    assert await page.get_by_label("Subject", exact=True).input_value() == "News for {{ first_name }}"
    await journey.check("draft-from-template")
    journey.assert_screenshots()
