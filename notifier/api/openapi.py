"""The API described: an OpenAPI 3.1 document at `/openapi.json` and a readable page at `/docs`.

`build(app, operations)` makes the document from the application's router and a list of
`Operation`s, once, at start-up: every public route that exists appears (the `/v1` API, the signed
member pages, health and metrics; the operator console is a cookie-authenticated HTML application
and is not part of it). The schemas of request and answer bodies are generated from the pydantic
models that validate the requests and build the answers (`notifier.answers`), with their `$defs`
as the document's linked components, so the document cannot drift from the code; what is written
by hand is the operations' descriptions, parameters and examples, in the per-area description
modules (`openapi_routes` for accounts, inboxes, service mail and operations; `newsletter_openapi`
for newsletters), which `create_app` hands to `setup_routes`. A route without a detailed
description still appears, with its handler's docstring, its security (from `@requires`) and the
generic problem answer, so nothing is hidden. tests/test_openapi.py checks real answers against
the document.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from notifier.api.openapi_page import render_docs
from notifier.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from notifier.api.problems import ProblemDetails
from notifier.api.responses import JSON, json_response

SPEC = web.AppKey("openapi_spec", dict)

PUBLIC_PREFIXES = ("/v1/", "/u/", "/preferences/", "/confirm/", "/member/v1/", "/inbox/")
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/static/inbox.js")

PROBLEM = "application/problem+json"
REF_TEMPLATE = "#/components/schemas/{model}"
# The tag of the public routes without an Operation (the member pages, webhooks).
OTHER = "other"

# --- what the description modules write ------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A parameter `in` the path, query or a header; a path parameter is always required."""

    name: str
    where: Literal["path", "query", "header"]
    schema: Mapping[str, Any]
    description: str
    required: bool = False
    example: Any = None


# The page parameters of every keyset-paginated list (`{"items", "next_cursor"}`).
LIMIT = Param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    "page size",
)
CURSOR = Param("cursor", "query", {"type": "string"}, "the `next_cursor` of the previous page")
PAGE = (LIMIT, CURSOR)


@dataclass(frozen=True)
class Body:
    """A request or answer body: `shape` is a pydantic model or typed dict (its schema is
    generated), or a JSON schema for a body that is not JSON (text, HTML)."""

    shape: Any
    media: tuple[str, ...] = (JSON,)
    example: Any = None


@dataclass(frozen=True)
class Answer:
    """An answer of one status: its meaning, its body (and another media type the same route may
    answer with, `alternative`, e.g. HTML on request), its headers."""

    description: str
    body: Body | None = None
    headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    alternative: Body | None = None


def answer(
    shape: Any,
    description: str,
    headers: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    example: Any = None,
) -> Answer:
    """A JSON answer of `shape` (a model of `notifier.answers`)."""
    return Answer(description, Body(shape, example=example), headers or {})


def problem(description: str, headers: Mapping[str, Mapping[str, Any]] | None = None) -> Answer:
    """A problem+json answer (RFC 9457)."""
    return Answer(description, Body(ProblemDetails, (PROBLEM,)), headers or {})


def text(media: str, description: str, schema_type: str) -> Answer:
    """A body that is not described by a model (metrics, HTML, this document)."""
    return Answer(description, Body({"type": schema_type}, (media,)))


@dataclass(frozen=True)
class Operation:
    """One route described: `method` and `path` (the router's template) name it."""

    method: str
    path: str
    tag: str
    summary: str
    answers: Mapping[int | str, Answer]
    scope: str | None = None
    description: str = ""
    parameters: Sequence[Param] = ()
    request: Body | None = None
    request_required: bool = True
    idempotent: bool = False


RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
LOCATION = {"Location": {"schema": {"type": "string"}, "description": "the new resource"}}
REPLAYED = {
    "Idempotent-Replayed": {
        "schema": {"const": "true"},
        "description": "present when this is the stored answer to an earlier request with the same key",
    }
}

IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "repeat a request safely: the same key and body return the first answer (with "
    "`Idempotent-Replayed: true`); the same key with another body is a 422; scoped to the API key and route",
    example="order-1042-welcome",
)

# What any route with a JSON body may answer before its own rules apply (problems.read_json and
# the problem middleware).
_BODY_PROBLEMS = {
    "400": problem("the body is not valid JSON, or holds a character that cannot be stored (NUL)"),
    "413": problem("the body is larger than the limit"),
    "415": problem("the body is not application/json"),
}
# What a route taking an `Idempotency-Key` may also answer.
_IDEMPOTENCY_PROBLEMS = {
    "400": problem("malformed Idempotency-Key, or a body that is not JSON"),
    "409": problem("a request with this Idempotency-Key is still in progress", RETRY_AFTER),
    "422": problem(
        "invalid fields (all listed in `errors`), or an Idempotency-Key reused for another request"
    ),
}

# --- the document -----------------------------------------------------------------------------


class _Schemas:
    """The schemas of every shape the operations name, generated together so that the models
    they share (their `$defs`) become one set of components linked by `$ref`."""

    def __init__(self, operations: Iterable[Operation]) -> None:
        shapes: dict[tuple[int, JsonSchemaMode], tuple[Any, JsonSchemaMode, TypeAdapter[Any]]] = {}
        bodies: list[tuple[Body, JsonSchemaMode]] = [(Body(ProblemDetails), "serialization")]
        for op in operations:
            bodies += [
                (b, "serialization") for a in op.answers.values() for b in (a.body, a.alternative) if b
            ]
            if op.request is not None:
                bodies.append((op.request, "validation"))
        for body, mode in bodies:
            if isinstance(body.shape, type):
                shapes.setdefault((id(body.shape), mode), (id(body.shape), mode, TypeAdapter(body.shape)))
        refs, defs = TypeAdapter.json_schemas(list(shapes.values()), ref_template=REF_TEMPLATE)
        self._refs = refs
        self.components: dict[str, Any] = dict(sorted(defs.get("$defs", {}).items()))

    def of(self, body: Body, mode: JsonSchemaMode) -> dict[str, Any]:
        if isinstance(body.shape, type):
            return dict(self._refs[id(body.shape), mode])
        return dict(body.shape)


def _content(schemas: _Schemas, body: Body, mode: JsonSchemaMode) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schemas.of(body, mode)}
    if body.example is not None:
        media["example"] = body.example
    return dict.fromkeys(body.media, media)


def _param(p: Param) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": p.name,
        "in": p.where,
        "required": p.required or p.where == "path",
        "schema": dict(p.schema),
        "description": p.description,
    }
    if p.example is not None:
        out["example"] = p.example
    return out


def _answer(schemas: _Schemas, a: Answer) -> dict[str, Any]:
    out: dict[str, Any] = {"description": a.description}
    if a.headers:
        out["headers"] = {name: dict(header) for name, header in a.headers.items()}
    if a.body is not None:
        out["content"] = _content(schemas, a.body, "serialization")
    if a.alternative is not None:
        out["content"] = {**out.get("content", {}), **_content(schemas, a.alternative, "serialization")}
    return out


def _secured(op: dict[str, Any], scope: str) -> None:
    """`op` behind an API key with `scope`, with its 401 and 403 answers unless it states them."""
    op["security"] = [{"apiKey": [scope]}]
    op["x-scope"] = scope
    op["responses"].setdefault("401", problem("no API key, or an unknown or revoked one"))
    op["responses"].setdefault("403", problem(f"the API key lacks the `{scope}` scope"))


def _operation(schemas: _Schemas, op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary}
    if op.description:
        out["description"] = op.description
    out["tags"] = [op.tag]
    parameters = [*op.parameters, IDEMPOTENCY_KEY] if op.idempotent else list(op.parameters)
    if parameters:
        out["parameters"] = [_param(p) for p in parameters]
    if op.request is not None:
        out["requestBody"] = {
            "required": op.request_required,
            "content": _content(schemas, op.request, "validation"),
        }
    answers: dict[str, Answer] = dict(_BODY_PROBLEMS) if op.request is not None else {}
    answers.update({str(status): a for status, a in op.answers.items()})
    if op.idempotent:
        answers.update({status: a for status, a in _IDEMPOTENCY_PROBLEMS.items() if status not in op.answers})
    out["responses"] = answers
    if op.scope:
        _secured(out, op.scope)
    out["responses"] = {status: _answer(schemas, a) for status, a in sorted(out["responses"].items())}
    return out


def _from_handler(schemas: _Schemas, handler: Any, path: str) -> dict[str, Any]:
    """An operation from the handler alone: docstring, scope, path parameters, problem answers."""
    doc = inspect.getdoc(handler) or ""
    summary, _, description = doc.partition("\n\n")
    names = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    op: dict[str, Any] = {"summary": " ".join(summary.split()) or path}
    if description:
        op["description"] = description
    op["tags"] = [OTHER]
    op["responses"] = {"default": Answer("see the summary; errors are problem documents")}
    if names:
        op["parameters"] = [_param(Param(name, "path", {"type": "string"}, "")) for name in names]
    scope = getattr(handler, "required_scope", None)
    if scope:
        _secured(op, scope)
    op["responses"] = {status: _answer(schemas, a) for status, a in op["responses"].items()}
    return op


def public(path: str) -> bool:
    """Whether the route `path` belongs in the document."""
    return path.startswith(PUBLIC_PREFIXES) or path in PUBLIC_PATHS


def build(app: web.Application, operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s public routes, described by `operations`.

    Raises ValueError when two operations describe the same route.
    """
    described: dict[tuple[str, str], Operation] = {}
    for op in operations:
        if (op.method, op.path) in described:
            raise ValueError(f"{op.method} {op.path} is described twice")
        described[op.method, op.path] = op
    schemas = _Schemas(operations)
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "OPTIONS", "*"):
            continue
        path = resource.canonical
        if not public(path):
            continue
        description = described.get((route.method, path))
        out = _operation(schemas, description) if description else _from_handler(schemas, route.handler, path)
        out["operationId"] = f"{route.method.lower()}_{getattr(route.handler, '__name__', 'handler')}"
        paths.setdefault(path, {})[route.method.lower()] = out
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "notifier",
            "version": "1",
            "description": "Inboxes, digests, service mail and newsletters. Send `Authorization: Bearer "
            "<API key>`; errors are `application/problem+json` (RFC 9457) with field-level `errors`; "
            'every list answer is `{"items": [...], "next_cursor": ...}`.',
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "tags": [{"name": tag} for tag in dict.fromkeys([*(op.tag for op in operations), OTHER])],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "an API key"}},
        },
    }


def spec_of(app: web.Application) -> dict[str, Any]:
    spec: dict[str, Any] = app[SPEC]
    return spec


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return json_response(200, spec_of(request.app))


async def docs(request: web.Request) -> web.Response:
    """GET /docs: the API as a readable page."""
    return web.Response(text=render_docs(spec_of(request.app)), content_type="text/html")


def setup_routes(app: web.Application, operations: Sequence[Operation]) -> None:
    """Serve `/openapi.json` and `/docs`: the document of `app`'s routes, built from `operations`
    once every route is added (on start-up)."""

    async def build_on_startup(app: web.Application) -> None:
        app[SPEC] = build(app, operations)

    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.on_startup.append(build_on_startup)
