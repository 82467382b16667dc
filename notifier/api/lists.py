"""Lists and segments (scope `newsletters`): `/v1/lists...` (create, read, edit, archive),
`/v1/segments...` (saved rules) and `POST /v1/segments/count` (how many members lists and a rule
reach now). Thin: the domain is notifier.lists, notifier.segments and notifier.audience."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from notifier import audience, lists, segments
from notifier.answers import AudienceCount, NewsList, NewsListPage, Segment, SegmentPage
from notifier.api.auth import requires
from notifier.api.problems import Problem, read_model
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.resources import POOL
from notifier.validation import check_one_line


class SegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=lists.KEY_PATTERN, description="the segment's permanent name")
    name: str = Field(min_length=1, max_length=100)
    rule: dict[str, Any] = Field(description="a segment rule (docs/newsletters.md)")

    _name = field_validator("name")(check_one_line)


class SegmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    rule: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else check_one_line(value)


class CountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lists: list[str] = Field(default_factory=list, max_length=20, description="none: the default list")
    segment: dict[str, Any] | None = Field(default=None, description="an inline rule")
    segment_key: str | None = Field(default=None, max_length=40, description="a saved segment")


def _list(row: asyncpg.Record, subscribers: int | None = None) -> NewsList:
    return NewsList.of_row(row, default=row["is_default"], subscribers=subscribers)


def _key(request: web.Request, what: str) -> str:
    key = request.match_info["key"]
    if len(key) > 40 or not key.isascii():
        raise Problem(404, f"no {what} with that key")
    return key


@requires("newsletters")
async def create_list(request: web.Request) -> web.Response:
    """POST /v1/lists: 201 with the list; 409 when the key is taken."""
    new = await read_model(request, lists.ListIn)
    row = await lists.create(request.app[POOL], new)
    return json_response(201, _list(row, 0), {"Location": f"/v1/lists/{row['key']}"})


@requires("newsletters")
async def all_lists(request: web.Request) -> web.Response:
    """GET /v1/lists: every list, the default first; `?archived=true` shows archived ones too."""
    archived = request.query.get("archived") == "true"
    rows = await request.app[POOL].fetch(Q.all_lists, archived)
    return json_response(200, NewsListPage(items=[_list(r) for r in rows], next_cursor=None))


@requires("newsletters")
async def read_list(request: web.Request) -> web.Response:
    """GET /v1/lists/{key}: the list with its number of subscribers."""
    pool = request.app[POOL]
    row = await lists.get(pool, _key(request, "list"))
    return json_response(200, _list(row, (await lists.subscribers(pool, [row]))[row["id"]]))


@requires("newsletters")
async def edit_list(request: web.Request) -> web.Response:
    """PATCH /v1/lists/{key}: name, description, double_opt_in."""
    patch = await read_model(request, lists.ListPatch)
    row = await lists.update(request.app[POOL], _key(request, "list"), patch)
    return json_response(200, _list(row))


@requires("newsletters")
async def archive_list(request: web.Request) -> web.Response:
    """POST /v1/lists/{key}/archive (and DELETE /v1/lists/{key}): archived, not deleted."""
    row = await lists.archive(request.app[POOL], _key(request, "list"))
    return json_response(200, _list(row))


@requires("newsletters")
async def create_segment(request: web.Request) -> web.Response:
    """POST /v1/segments: a saved rule; 422 names each fault of the rule (`rule.all.2.op`)."""
    new = await read_model(request, SegmentIn)
    segments.check(new.rule, where="rule")
    row = await request.app[POOL].fetchrow(Q.insert_segment, new.key, new.name.strip(), new.rule)
    if row is None:
        raise Problem(409, f"a segment with key {new.key!r} already exists")
    return json_response(201, Segment.of_row(row), {"Location": f"/v1/segments/{row['key']}"})


@requires("newsletters")
async def all_segments(request: web.Request) -> web.Response:
    """GET /v1/segments: every saved segment by key."""
    rows = await request.app[POOL].fetch(Q.all_segments)
    return json_response(200, SegmentPage(items=[Segment.of_row(r) for r in rows], next_cursor=None))


async def _segment(pool: asyncpg.Pool, key: str) -> asyncpg.Record:
    row = await pool.fetchrow(Q.get_segment, key)
    if row is None:
        raise Problem(404, "no segment with that key")
    return row


@requires("newsletters")
async def read_segment(request: web.Request) -> web.Response:
    """GET /v1/segments/{key}."""
    return json_response(200, Segment.of_row(await _segment(request.app[POOL], _key(request, "segment"))))


@requires("newsletters")
async def edit_segment(request: web.Request) -> web.Response:
    """PATCH /v1/segments/{key}: name or rule; a newsletter naming it uses the rule as it is when
    sending starts."""
    patch = await read_model(request, SegmentPatch)
    pool = request.app[POOL]
    before = await _segment(pool, _key(request, "segment"))
    if patch.rule is not None:
        segments.check(patch.rule, where="rule")
    name = patch.name.strip() if patch.name is not None else before["name"]
    row = await pool.fetchrow(Q.update_segment, before["key"], name, patch.rule or before["rule"])
    return json_response(200, Segment.of_row(row))


@requires("newsletters")
async def delete_segment(request: web.Request) -> web.Response:
    """DELETE /v1/segments/{key}: 204; 409 while a newsletter names it."""
    pool = request.app[POOL]
    key = _key(request, "segment")
    await _segment(pool, key)
    try:
        await pool.execute(Q.delete_segment, key)
    except asyncpg.ForeignKeyViolationError:
        raise Problem(409, "a newsletter names this segment") from None
    return web.Response(status=204)


@requires("newsletters")
async def count_segment(request: web.Request) -> web.Response:
    """POST /v1/segments/count: how many members `lists` and `segment` (or `segment_key`) reach
    now, minus the suppressed; 422 names each fault."""
    body = await read_model(request, CountIn)
    total = await audience.count_for(request.app[POOL], body.lists, body.segment, body.segment_key)
    return json_response(200, AudienceCount(count=total))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/lists", create_list)
    app.router.add_get("/v1/lists", all_lists)
    app.router.add_get("/v1/lists/{key}", read_list)
    app.router.add_patch("/v1/lists/{key}", edit_list)
    app.router.add_delete("/v1/lists/{key}", archive_list)
    app.router.add_post("/v1/lists/{key}/archive", archive_list)
    app.router.add_post("/v1/segments", create_segment)
    app.router.add_get("/v1/segments", all_segments)
    app.router.add_post("/v1/segments/count", count_segment)
    app.router.add_get("/v1/segments/{key}", read_segment)
    app.router.add_patch("/v1/segments/{key}", edit_segment)
    app.router.add_delete("/v1/segments/{key}", delete_segment)
