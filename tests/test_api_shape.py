"""One API shape: every list answer is `{"items": [...], "next_cursor": ...}`, every JSON body
is written the same way (compact, UTF-8), and problem titles are those docs/api.md shows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import asyncpg

from notifier.api.problems import status_title
from tests.api_helpers import bearer, create_newsletter, new_account

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _compact(raw: str) -> str:
    return json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False)


async def test_every_list_answer_is_items_and_next_cursor(client, pool: asyncpg.Pool, factory) -> None:
    h = await bearer(pool, "accounts", "messages", "newsletters")
    assert (await client.post("/v1/accounts", json=new_account(1), headers=h)).status == 201
    await client.post(
        "/v1/accounts/m-1/messages", json={"category": "news", "subject": "S", "body": "B"}, headers=h
    )
    await create_newsletter(client, h, subject="Hello", body="Text")
    for path in ("/v1/accounts/m-1/messages", "/v1/accounts/m-1/audit", "/v1/newsletters"):
        resp = await client.get(path, params={"limit": "1"}, headers=h)
        assert resp.status == 200, path
        page = await resp.json()
        assert list(page) == ["items", "next_cursor"], path
        assert len(page["items"]) == 1, path


async def test_every_json_body_is_written_the_same_way(client, pool: asyncpg.Pool) -> None:
    h = await bearer(pool, "accounts", "messages", "newsletters")
    await client.post("/v1/accounts", json=new_account(1, name="Zoë Ünal"), headers=h)
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/v1/accounts/m-1", {}),
        ("GET", "/v1/accounts/m-1/preferences", {}),
        ("GET", "/v1/accounts/m-1/audit", {}),
        ("POST", "/v1/newsletters", {"json": {"subject": "Hi", "body": "Text"}}),
        ("GET", "/v1/newsletters", {}),
        ("GET", "/v1/accounts/none", {}),  # a problem document
        ("POST", "/v1/accounts", {"json": {"email": "x"}}),  # a problem with `errors`
    ]
    for method, path, kw in requests:
        resp = await client.request(method, path, headers=h, **kw)
        raw = await resp.text()
        assert resp.charset == "utf-8", path
        assert raw == _compact(raw), f"{method} {path}: {raw[:80]}"
    assert "Zoë Ünal" in await (await client.get("/v1/accounts/m-1", headers=h)).text()


async def test_problem_titles_are_those_of_the_documentation(client, pool: asyncpg.Pool) -> None:
    documented = {
        int(status): title
        for title, status in re.findall(r'"title": "([^"]+)", "status": (\d+)', (DOCS / "api.md").read_text())
    }
    assert documented, "docs/api.md shows a problem document"
    for status, title in documented.items():
        assert status_title(status) == title
    h = await bearer(pool, "accounts", "messages")
    resp = await client.post("/v1/accounts", json={"email": "x"}, headers=h)
    assert resp.status == 422
    assert (await resp.json())["title"] == "Unprocessable Content"
    resp = await client.post("/v1/messages", json={"messages": [{}] * 1001}, headers=h)
    assert resp.status == 413
    assert (await resp.json())["title"] == "Content Too Large"
