"""The API described: an OpenAPI 3.1 document at `/openapi.json` and a readable page at `/docs`.

The document is built from the application's router at start-up, so it lists every
public route that exists (the `/v1` API, the signed member pages, health and metrics); the
operator console is a cookie-authenticated HTML application and is not part of it.

This module is the builder: the helpers that make schemas, parameters, answers and problem
answers, the registry, the document and the page. The routes are described elsewhere, each
module adding its operations to `OPERATIONS` ((method, path template) -> OpenAPI operation) and
its schemas to `SCHEMAS` before the application starts: `openapi_routes.py` for accounts, inbox,
service mail and operations, `newsletter_openapi.py` for newsletters. A route without a detailed
description still appears, with the summary and description of its handler's docstring, its
security (from `@requires`) and the generic problem answer, so nothing is hidden.
Request bodies reuse the pydantic models that validate them (`model_schemas`), so the
document cannot drift from the validation; response schemas are checked against real answers
by tests/test_openapi.py.
"""

from __future__ import annotations

import html
import inspect
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel

SPEC = web.AppKey("openapi_spec", dict)

PUBLIC_PREFIXES = ("/v1/", "/u/", "/preferences/", "/confirm/", "/member/v1/", "/inbox/")
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/static/inbox.js")

JSON = "application/json"
PROBLEM = "application/problem+json"

# --- schemas ----------------------------------------------------------------------------------


def ref(name: str) -> dict[str, str]:
    """A reference to the schema `name` of the document's components."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` or null."""
    return {"anyOf": [schema, {"type": "null"}]}


TIMESTAMP = {"type": "string", "format": "date-time"}


def obj(
    properties: dict[str, Any],
    required: list[str] | None = None,
    description: str | None = None,
    closed: bool = True,
) -> dict[str, Any]:
    """An object schema; `closed`: no properties beyond those listed."""
    out: dict[str, Any] = {"type": "object"}
    if description is not None:
        out["description"] = description
    if required is not None:
        out["required"] = required
    out["properties"] = properties
    if closed:
        out["additionalProperties"] = False
    return out


def array(items: dict[str, Any]) -> dict[str, Any]:
    """An array schema."""
    return {"type": "array", "items": items}


def page(key: str, item: str, closed: bool = True) -> dict[str, Any]:
    """A keyset-paginated page: a list of `item` under `key` and the cursor of the next page."""
    return obj(
        {key: array(ref(item)), "next_cursor": nullable({"type": "string"})},
        [key, "next_cursor"],
        closed=closed,
    )


# The schemas of the document: the problem answer's own here; route descriptions add theirs.
SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": ref("FieldError")},
        },
    },
    "FieldError": {
        "type": "object",
        "required": ["field", "message"],
        "properties": {
            "field": {"type": "string", "description": "dotted path, e.g. `messages.3.subject`"},
            "message": {"type": "string"},
        },
        "additionalProperties": False,
    },
}


def model_schemas(models: dict[str, type[BaseModel]]) -> dict[str, dict[str, Any]]:
    """The schemas of the pydantic models that validate request bodies, named as given, with the
    models they use (their `$defs`) alongside."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            out[def_name] = definition
        schema["title"] = name
        out[name] = schema
    return out


# --- parameters, bodies and answers -----------------------------------------------------------


def param(
    name: str, where: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    """A parameter `in` path, query or header; a path parameter is always required."""
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


def body(name: str, media: str = JSON) -> dict[str, Any]:
    """A required request body of the schema `name`."""
    return {"required": True, "content": {media: {"schema": ref(name)}}}


def ok(name: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON answer of the schema `name`."""
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": ref(name)}}}
    if headers:
        out["headers"] = headers
    return out


def problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A problem+json answer (RFC 9457)."""
    out: dict[str, Any] = {"description": description, "content": {PROBLEM: {"schema": ref("Problem")}}}
    if headers:
        out["headers"] = headers
    return out


RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
LOCATION = {"Location": {"schema": {"type": "string"}, "description": "the new resource"}}
REPLAYED = {
    "Idempotent-Replayed": {
        "schema": {"const": "true"},
        "description": "present when this is the stored answer to an earlier request with the same key",
    }
}

IDEMPOTENCY_KEY = param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "repeat a request safely: the same key and body return the first answer (with "
    "`Idempotent-Replayed: true`); the same key with another body is a 422; scoped to the API key and route",
)


def idempotent(responses: dict[str, Any]) -> dict[str, Any]:
    """`responses` with what a route taking an `Idempotency-Key` may also answer (400, 409, 422)."""
    responses["400"] = problem("malformed Idempotency-Key, or a body that is not JSON")
    responses["409"] = problem("a request with this Idempotency-Key is still in progress", RETRY_AFTER)
    responses["422"] = problem(
        "invalid fields (all listed in `errors`), or an Idempotency-Key reused for another request"
    )
    return responses


# What any route with a JSON body may answer before its own rules apply (problems.read_json and
# the problem middleware): not JSON or a character the database cannot store, too large, not JSON.
_BODY_PROBLEMS = {
    "400": problem("the body is not valid JSON, or holds a character that cannot be stored (NUL)"),
    "413": problem("the body is larger than the limit"),
    "415": problem("the body is not application/json"),
}

# --- operations -------------------------------------------------------------------------------


def secured(scope: str, op: dict[str, Any]) -> dict[str, Any]:
    """`op` behind an API key with `scope`, with its 401 and 403 answers unless it states them."""
    op["security"] = [{"apiKey": [scope]}]
    op["x-scope"] = scope
    op["responses"].setdefault("401", problem("no API key, or an unknown or revoked one"))
    op["responses"].setdefault("403", problem(f"the API key lacks the `{scope}` scope"))
    return op


def operation(
    scope: str | None,
    tag: str,
    summary: str,
    responses: dict[str, Any],
    *,
    description: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
    request_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An operation under one tag; with a `scope`, behind an API key (see `secured`)."""
    op: dict[str, Any] = {"summary": summary}
    if description is not None:
        op["description"] = description
    op["tags"] = [tag]
    if parameters:
        op["parameters"] = parameters
    if request_body:
        op["requestBody"] = request_body
    op["responses"] = responses
    return secured(scope, op) if scope else op


# The detailed descriptions, (method, path template) -> operation; route descriptions add theirs.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {}


def _from_handler(handler: Any, path: str) -> dict[str, Any]:
    """An operation from the handler alone: docstring, scope, path parameters, problem answers."""
    doc = inspect.getdoc(handler) or ""
    summary, _, description = doc.partition("\n\n")
    params = [
        param(name, "path", {"type": "string"}, "")
        for name in (part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}"))
    ]
    op: dict[str, Any] = {
        "summary": " ".join(summary.split()) or path,
        "responses": {"default": {"description": "see the summary; errors are problem documents"}},
    }
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    scope = getattr(handler, "required_scope", None)
    if scope:
        secured(scope, op)
    return op


def _public(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIXES) or path in PUBLIC_PATHS


def build(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s public routes."""
    described = OPERATIONS
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "OPTIONS", "*"):
            continue
        path = resource.canonical
        if not _public(path):
            continue
        op = described.get((route.method, path)) or _from_handler(route.handler, path)
        op = {**op, "operationId": f"{route.method.lower()}_{getattr(route.handler, '__name__', 'handler')}"}
        if "requestBody" in op:
            op["responses"] = {**_BODY_PROBLEMS, **op["responses"]}
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "notifier",
            "version": "1",
            "description": "Inboxes, digests, service mail and newsletters. Send `Authorization: Bearer "
            "<API key>`; errors are `application/problem+json` (RFC 9457) with field-level `errors`.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(SCHEMAS),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "an API key"}},
        },
    }


def spec_of(app: web.Application) -> dict[str, Any]:
    spec: dict[str, Any] = app[SPEC]
    return spec


async def _build_on_startup(app: web.Application) -> None:
    app[SPEC] = build(app)


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return web.json_response(spec_of(request.app))


# --- the docs page ----------------------------------------------------------------------------

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}
h2{margin-top:2.5rem;border-bottom:1px solid #ccc}
.op{margin:1.5rem 0;padding:.5rem 1rem;border-left:4px solid #36c;background:#f7f9fc}
.m{font-weight:700;font-family:monospace;margin-right:.5rem}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#fff;border:1px solid #ddd;padding:.5rem;overflow:auto;max-height:20rem}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _schema_block(schema: dict[str, Any]) -> str:
    return f"<pre>{_e(json.dumps(schema, indent=2))}</pre>"


def render_docs(spec: dict[str, Any]) -> str:
    """The document as one self-contained HTML page (no scripts, no network)."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(spec['info']['title'])} API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(spec['info']['title'])} API</h1><p>{_e(spec['info']['description'])}</p>",
        "<p>Machine-readable: <a href=/openapi.json>/openapi.json</a> (OpenAPI 3.1).</p>",
        "<h2>Routes</h2>",
    ]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            parts.append("<div class=op>")
            parts.append(f"<h3><span class=m>{_e(method.upper())}</span><code>{_e(path)}</code></h3>")
            parts.append(f"<p><strong>{_e(op.get('summary', ''))}</strong></p>")
            if op.get("description"):
                parts.append(f"<p>{_e(op['description'])}</p>")
            if op.get("x-scope"):
                parts.append(f"<p>API key scope: <code>{_e(op['x-scope'])}</code></p>")
            if op.get("parameters"):
                parts.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th>meaning</th></tr>")
                for p in op["parameters"]:
                    parts.append(
                        f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
                        f"<td><code>{_e(json.dumps(p['schema']))}</code></td><td>{_e(p.get('description', ''))}</td></tr>"
                    )
                parts.append("</table>")
            body = op.get("requestBody")
            if body:
                media, content = next(iter(body["content"].items()))
                parts.append(
                    f"<p>Request body (<code>{_e(media)}</code>):</p>{_schema_block(content['schema'])}"
                )
            parts.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
            for status, resp in op["responses"].items():
                content = resp.get("content", {})
                shape = ", ".join(
                    f"{media}: {c['schema'].get('$ref', '').rsplit('/', 1)[-1] or c['schema'].get('type', '')}"
                    for media, c in content.items()
                )
                parts.append(
                    f"<tr><td>{_e(status)}</td><td>{_e(resp['description'])}</td><td>{_e(shape)}</td></tr>"
                )
            parts.append("</table></div>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        parts.append(f"<h3 id='{_e(name)}'>{_e(name)}</h3>{_schema_block(schema)}")
    parts.append("</body></html>")
    return "".join(parts)


async def docs(request: web.Request) -> web.Response:
    """GET /docs: the API as a readable page."""
    return web.Response(text=render_docs(spec_of(request.app)), content_type="text/html")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.on_startup.append(_build_on_startup)
