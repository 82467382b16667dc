"""Shared set-up of the browser tests: Debian's headless Chromium (never a Playwright download)
driven by Playwright's async API, and axe-core from `tests/browser/package.json`.

Import what you use into the test module (`from tests.browser_fixtures import browser, ...`).
To enable these tests on a new machine:
    apt-get install -y chromium chromium-driver
    pip install -e '.[dev]'             # Playwright for Python
    npm ci --prefix tests/browser       # axe-core, pinned in tests/browser/package-lock.json
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = Path(__file__).parent / "browser" / "node_modules" / "axe-core" / "axe.min.js"

ENABLE_CHROMIUM = "needs headless Chromium at /usr/bin/chromium: apt-get install -y chromium chromium-driver"
ENABLE_AXE = "needs axe-core: npm ci --prefix tests/browser"

# For a module of browser tests: `pytestmark = BROWSER_MARKS`.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=ENABLE_CHROMIUM),
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium, closed after the test."""
    playwright_api = pytest.importorskip(
        "playwright.async_api", reason="needs Playwright: pip install -e '.[dev]'"
    )
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def require_axe() -> None:
    """Skip the calling test with how to enable it when axe-core is not installed."""
    if not AXE.exists():
        pytest.skip(ENABLE_AXE)


async def axe_violations(page: Any, impacts: tuple[str, ...] = ("serious", "critical")) -> list[str]:
    """The page's axe-core violations of the given impacts, as readable lines (the context needs
    `bypass_csp=True` when the page's CSP forbids inline scripts). Skips when axe is absent."""
    require_axe()
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result
        if v["impact"] in impacts
    ]
