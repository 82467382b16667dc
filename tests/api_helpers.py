"""Helpers for API tests: keys with given scopes and authorised requests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import newsletter, queues
from notifier.api import auth
from notifier.settings import Settings

if TYPE_CHECKING:
    from tests.conftest import BurstWorker


async def bearer(pool: asyncpg.Pool, *scopes: str, name: str = "registry") -> dict[str, str]:
    """Authorization headers for a fresh API key with `scopes` (default: accounts and messages)."""
    _, key = await auth.create_key(pool, name, list(scopes or ("accounts", "messages")))
    return {"Authorization": f"Bearer {key}"}


def new_account(n: int | str = 1, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"external_id": f"m-{n}", "email": f"member{n}@example.com", "name": f"Member {n}"}
    body.update(fields)
    return body


async def create_newsletter(
    client: TestClient[Any, Any], headers: dict[str, str], **fields: Any
) -> dict[str, Any]:
    """Create a newsletter draft of `fields` (`subject` and `body` at least) through the API; the draft."""
    resp = await client.post("/v1/newsletters", json=fields, headers=headers)
    assert resp.status == 201, await resp.text()
    draft: dict[str, Any] = await resp.json()
    return draft


async def send_newsletter(
    client: TestClient[Any, Any],
    headers: dict[str, str],
    run_worker: BurstWorker,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    settings: Settings,
    newsletter_id: int,
) -> dict[str, Any]:
    """Send newsletter `newsletter_id` now through the API (asserts the 202), deliver it with a burst
    of the bulk worker and one scheduler tick; the newsletter and its figures as the API then shows them."""
    resp = await client.post(f"/v1/newsletters/{newsletter_id}/send", headers=headers)
    assert resp.status == 202, await resp.text()
    await run_worker(queues.BULK)
    await newsletter.tick(pool, redis, settings)
    resp = await client.get(f"/v1/newsletters/{newsletter_id}", headers=headers)
    sent: dict[str, Any] = await resp.json()
    return sent
