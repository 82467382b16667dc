"""RFC 9457 problem details: every error the API returns, and request-body validation."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, TypeVar

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ValidationError

log = logging.getLogger("notifier.web")

PROBLEM_JSON = "application/problem+json"
M = TypeVar("M", bound=BaseModel)


class Problem(Exception):
    """Raise anywhere in a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> web.Response:
        return problem_response(
            self.status, self.detail, title=self.title, errors=self.errors, headers=self.headers, **self.extra
        )


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_JSON, headers=headers)


def validation_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Pydantic errors as `[{field, message}]`, with dotted field paths (`messages.3.subject`)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "body")
        message = err["msg"].removeprefix("Value error, ")
        out.append({"field": field, "message": message})
    return out


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


def parse_json(raw: bytes) -> Any:
    """`raw` as JSON; 400 when it is not."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, f"request body is not valid JSON: {exc}") from None


async def read_model(request: web.Request, model: type[M], *, max_bytes: int | None = None) -> M:
    """Read and validate the body against a pydantic model; 422 lists every invalid field."""
    data = await read_json(request, max_bytes=max_bytes)
    return parse_model(model, data)


def parse_model(model: type[M], data: Any, prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Problem(422, "the request body is not valid", errors=validation_errors(exc, prefix)) from None


# Path segments after these prefixes are bearer secrets (signed tokens): never log them.
_SECRET_PATH = re.compile(r"^(/(?:u|preferences|confirm|inbox)/)[^/?]+")


def redact_path(path: str) -> str:
    """The request path with signed tokens replaced and the query string dropped."""
    path = path.split("?", 1)[0]
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
        return exc.response()
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
