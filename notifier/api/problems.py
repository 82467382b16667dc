"""RFC 9457 problem details: every error the API returns, and request-body validation."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg
import pydantic_core
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from notifier.api.responses import json_response
from notifier.errors import FieldError as FieldError
from notifier.errors import Problem as Problem  # raised by every layer; answered here
from notifier.errors import status_title as status_title
from notifier.validation import errors_of

log = logging.getLogger("notifier.web")

PROBLEM_JSON = "application/problem+json"
M = TypeVar("M", bound=BaseModel)


class ProblemDetails(BaseModel):
    """RFC 9457 problem details: every error answer of the API."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", examples=["about:blank"])
    title: str = Field(description="the status's RFC 9110 phrase, or the problem's own title")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="what is wrong, for a person to read")
    errors: list[FieldError] | None = Field(
        default=None, description="for invalid input: every invalid field at once"
    )


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A problem+json answer; `extra` members are added to the document (RFC 9457 extensions)."""
    fields: dict[str, Any] = {"type": "about:blank", "title": title or status_title(status), "status": status}
    fields["detail"] = detail
    if errors is not None:
        fields["errors"] = errors
    body = ProblemDetails.model_validate({**fields, **extra})
    return json_response(status, body.model_dump(exclude_unset=True), headers, content_type=PROBLEM_JSON)


async def read_json(request: web.Request, *, max_bytes: int | None = None) -> Any:
    """The request body as JSON; 413 when too large, 415/400 when it is not JSON."""
    return parse_json(await read_body(request, max_bytes=max_bytes))


async def read_body(request: web.Request, *, max_bytes: int | None = None) -> bytes:
    """The raw body of a JSON request; 413 when too large, 415 when not sent as JSON."""
    limit = max_bytes or request.app[_MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, f"request body is {request.content_length} bytes; the limit is {limit}")
    if request.content_type not in ("application/json", "application/merge-patch+json"):
        raise Problem(415, "send the body as application/json")
    # StreamReader.read(n) returns what has arrived so far, not n bytes: read until the end.
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"request body is larger than the limit of {limit} bytes")
    return b"".join(chunks)


# How deep a JSON body may nest: jiter (pydantic-core's parser, which every JSON route uses, also
# the fast paths' `model_validate_json`) refuses the 202nd level without recursing in Python, so a
# body of a thousand `[` is a 400, never a RecursionError; everything after it (validation,
# `json.dumps` of `data`, jsonb) handles this depth with room to spare.
MAX_JSON_DEPTH = 200


def parse_json(raw: bytes) -> Any:
    """`raw` (UTF-8) as JSON; 400 when it is not, nests deeper than MAX_JSON_DEPTH, or holds a
    lone surrogate escape (`"\\ud800"`, which no text column can store)."""
    try:
        return pydantic_core.from_json(raw)
    except ValueError as exc:
        reason = str(exc)
        if reason.startswith("recursion limit exceeded"):
            reason = f"it nests deeper than {MAX_JSON_DEPTH} levels"
        raise Problem(400, f"request body is not valid JSON: {reason}") from None


async def read_model(request: web.Request, model: type[M], *, max_bytes: int | None = None) -> M:
    """Read and validate the body against a pydantic model; 422 lists every invalid field."""
    data = await read_json(request, max_bytes=max_bytes)
    return parse_model(model, data)


def parse_model(model: type[M], data: Any, prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Problem(422, "the request body is not valid", errors=errors_of(exc, prefix)) from None


# Path segments after these prefixes are bearer secrets (signed tokens): never log them.
_SECRET_PREFIXES = ("/u/", "/preferences/", "/confirm/", "/inbox/")
_SECRET_PATH = re.compile("^(" + "|".join(map(re.escape, _SECRET_PREFIXES)) + ")[^/?]+")


def redact_path(path: str) -> str:
    """The request path with signed tokens replaced and the query string dropped."""
    path = path.partition("?")[0]
    if not path.startswith(_SECRET_PREFIXES):  # most paths (every access line): no regex
        return path
    return _SECRET_PATH.sub(r"\1[token]", path)


_MAX_BODY = web.AppKey("max_body_bytes", int)
MAX_BODY = _MAX_BODY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_DB_UNAVAILABLE = (
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,
    TimeoutError,
    OSError,
)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a problem document: HTTP errors keep their status, a database that
    is away is a 503 with Retry-After, anything unexpected is a logged 500 without a traceback."""
    try:
        return await handler(request)
    except Problem as exc:
        return problem_response(
            exc.status, exc.detail, title=exc.title, errors=exc.errors, headers=exc.headers, **exc.extra
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == PROBLEM_JSON:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            detail = "request body is too large"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        return problem_response(exc.status, detail or exc.reason, headers=headers)
    except asyncpg.DataError:
        # Raised by asyncpg before the query is sent: a value the column type cannot hold
        # (an id beyond 64 bits); it would otherwise pass for InterfaceError, a 503.
        log.warning("value out of range on %s %s", request.method, redact_path(request.path))
        return problem_response(400, "a value in the request is out of range")
    except _DB_UNAVAILABLE as exc:
        log.warning(
            "service unavailable on %s %s: %s", request.method, redact_path(request.path), type(exc).__name__
        )
        return problem_response(
            503, "a backing service is unavailable; retry shortly", headers={"Retry-After": "2"}
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate in ("22021", "22P05"):  # NUL or unencodable text in the request
            return problem_response(400, "the request contains a character that cannot be stored (NUL)")
        if exc.sqlstate and exc.sqlstate.startswith(("08", "57P")):
            log.warning("database unavailable: %s", exc.sqlstate)
            return problem_response(
                503, "the database is unavailable; retry shortly", headers={"Retry-After": "2"}
            )
        log.exception("database error on %s %s", request.method, redact_path(request.path))
        return problem_response(500, "internal error")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, redact_path(request.path))
        return problem_response(500, "internal error")


def path_id(request: web.Request, what: str, name: str = "id") -> int:
    """The numeric id in the path's `{name}`: ASCII digits, at most 18 of them (a bigint); else a
    404 "no WHAT with that id" (route patterns' `\\d` also matches other scripts' digits)."""
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise Problem(404, f"no {what} with that id")
    return int(raw)
