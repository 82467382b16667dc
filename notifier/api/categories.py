"""The categories API (scope `admin`): `PUT /v1/categories/{key}` declares a category (labels and
descriptions per language, default frequency, required), `GET /v1/categories` lists them. The
domain lives in notifier.categories; see docs/digests.md, "Categories"."""

from __future__ import annotations

import re

from aiohttp import web

from notifier import categories
from notifier.answers import CategoryAnswer, CategoryPage
from notifier.api.auth import api_key_of, requires
from notifier.api.pagination import decode_cursor, next_cursor, page_limit
from notifier.api.problems import Problem, read_model
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.resources import POOL
from notifier.validation import CATEGORY, MAX_CATEGORY, PATTERN_MESSAGES


def _key(request: web.Request) -> str:
    key = request.match_info["key"]
    if len(key) > MAX_CATEGORY or not re.fullmatch(CATEGORY, key):
        raise Problem(
            422,
            "the category key is not valid",
            errors=[{"field": "key", "message": PATTERN_MESSAGES[CATEGORY]}],
        )
    return key


@requires("admin")
async def put_category(request: web.Request) -> web.Response:
    """Declare or replace a category: 201 when created, 200 when replaced; 422 names bad fields."""
    key = _key(request)
    body = await read_model(request, categories.CategoryIn)
    async with request.app[POOL].acquire() as conn:
        row, created = await categories.declare(conn, key, body, api_key_of(request).actor)
    return json_response(201 if created else 200, CategoryAnswer.of_row(row))


@requires("admin")
async def list_categories(request: web.Request) -> web.Response:
    """Every declared category, newest first, keyset-paginated."""
    limit = page_limit(request)
    before = decode_cursor("category", request.query.get("cursor"))
    rows = await request.app[POOL].fetch(Q.categories_page, before, limit + 1)
    page = CategoryPage(
        items=[CategoryAnswer.of_row(r) for r in rows[:limit]],
        next_cursor=next_cursor("category", rows, limit),
    )
    return json_response(200, page)


def setup_routes(app: web.Application) -> None:
    app.router.add_put("/v1/categories/{key}", put_category)
    app.router.add_get("/v1/categories", list_categories)
