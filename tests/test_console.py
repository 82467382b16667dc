"""The web console (/console): sign-in and sessions, CSRF, scopes, and every page over real data."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from notifier import auth
from notifier.settings import Settings

Client = TestClient[Any, Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings over plain http, so the test client sends the session cookie back
    (it keeps Secure cookies for https); `test_cookie_flags` checks the https case."""
    return settings.model_copy(update={"public_url": "http://127.0.0.1"})


async def sign_in(client: Client, pool: asyncpg.Pool, scopes: list[str], name: str = "Operator") -> str:
    """Create a key with `scopes`, sign in with it, and return the session's CSRF token."""
    _, key = await auth.create_key(pool, name, scopes)
    page = await client.get("/console/sign-in")
    assert page.status == 200
    token = re.search(r'name="signin_token" value="([^"]+)"', await page.text())
    assert token
    resp = await client.post(
        "/console/sign-in", data={"key": key, "signin_token": token[1], "next": "/console/"}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    home = await client.get("/console/")
    assert home.status == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', await home.text())
    assert csrf
    return csrf[1]


async def test_sign_in(client: Client, pool: asyncpg.Pool) -> None:
    csrf = await sign_in(client, pool, ["admin"])
    assert csrf
