"""JSON answers: one serialisation for every JSON body the web application sends (compact, UTF-8),
whether the body is an answer model (`notifier.answers`), a problem document or a plain dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic_core
from aiohttp import web
from pydantic import BaseModel

JSON = "application/json"


def to_json(body: Any) -> bytes:
    """`body` (a pydantic model, or values `json.dumps` accepts) as compact UTF-8 JSON."""
    if isinstance(body, BaseModel):
        return body.__pydantic_serializer__.to_json(body)
    return pydantic_core.to_json(body)


def to_jsonable(body: Any) -> Any:
    """`body` as plain JSON values (dicts, lists, strings, numbers), e.g. to store it."""
    if isinstance(body, BaseModel):
        return body.model_dump(mode="json")
    return body


def json_response(
    status: int, body: Any, headers: Mapping[str, str] | None = None, *, content_type: str = JSON
) -> web.Response:
    """A JSON answer of `status` with `body` serialised by `to_json`."""
    return web.Response(
        status=status,
        body=to_json(body),
        content_type=content_type,
        charset="utf-8",
        headers=dict(headers or {}),
    )
