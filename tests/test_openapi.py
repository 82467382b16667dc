"""The OpenAPI document describes every route, and real answers match its schemas."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
import pytest
from jsonschema import Draft202012Validator

from notifier import answers
from notifier.api import openapi, openapi_newsletters, openapi_routes, openapi_webhooks
from notifier.app import create_app
from tests.api_helpers import bearer, new_account


class Checker:
    """Validates real responses against the document and remembers what it saw."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.seen: set[tuple[str, str, str]] = set()

    def _template(self, method: str, path: str) -> str:
        for template, methods in self.spec["paths"].items():
            pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
            if method.lower() in methods and re.match(pattern, path):
                return str(template)
        raise AssertionError(f"{method} {path} is not in the document")

    async def __call__(self, resp: Any, method: str, path: str) -> Any:
        template = self._template(method, path.split("?")[0])
        op = self.spec["paths"][template][method.lower()]
        status = str(resp.status)
        assert status in op["responses"], f"{method} {template} answered {status}, undocumented"
        documented = op["responses"][status]
        media = resp.content_type
        assert media in documented.get("content", {}), f"{method} {template} {status}: {media} undocumented"
        for header in documented.get("headers", {}):
            if header == "Location":
                assert header in resp.headers, f"{method} {template} {status} lacks {header}"
        body = await resp.json() if "json" in media else await resp.text()
        schema = {**documented["content"][media]["schema"], "components": self.spec["components"]}
        errors = sorted(Draft202012Validator(schema).iter_errors(body), key=str)
        assert not errors, (
            f"{method} {template} {status}: {errors[0].message} at {list(errors[0].absolute_path)}"
        )
        self.seen.add((method.upper(), template, status))
        return body


@pytest.fixture
async def spec(client) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    document: dict[str, Any] = await resp.json()
    return document


async def test_document_lists_every_public_route_and_nothing_else(client, spec) -> None:
    assert spec["openapi"].startswith("3.1")
    routes = {
        (r.method, r.resource.canonical)
        for r in client.server.app.router.routes()
        if r.resource is not None
        and r.method not in ("HEAD", "OPTIONS")
        and openapi.public(r.resource.canonical)
    }
    documented = {(m.upper(), p) for p, methods in spec["paths"].items() for m in methods}
    assert documented == routes
    for op in [
        *openapi_routes.operations(),
        *openapi_newsletters.operations(),
        *openapi_webhooks.operations(),
    ]:
        assert (op.method, op.path) in documented, (op.method, op.path)
        assert op.path.count("{") == len(
            [p for p in spec["paths"][op.path][op.method.lower()].get("parameters", []) if p["in"] == "path"]
        ), (op.method, op.path)


def test_every_schema_is_valid_json_schema_and_every_reference_resolves(settings) -> None:
    document = openapi.build(
        create_app(settings), [*openapi_routes.operations(), *openapi_newsletters.operations()]
    )
    schemas = document["components"]["schemas"]
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        assert schema, name
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs and refs <= set(schemas), sorted(refs - set(schemas))
    # Generated from the models the handlers answer with, not copied: a field added to a model
    # is in the document.
    assert set(schemas["Message"]["properties"]) == set(answers.Message.model_fields)
    assert schemas["InboxPage"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Message"}


def test_an_operation_described_twice_is_refused(settings) -> None:
    twice = [*openapi_routes.operations(), openapi_routes.operations()[0]]
    with pytest.raises(ValueError, match="described twice"):
        openapi.build(create_app(settings), twice)


def test_every_list_answer_is_items_and_next_cursor(spec) -> None:
    pages = [name for name in spec["components"]["schemas"] if name.endswith("Page")]
    assert sorted(pages) == [
        "AuditPage",
        "CategoryPage",
        "InboxPage",
        "NewsletterPage",
        "NewsletterTemplatePage",
        "WebhookDeliveryPage",
        "WebhookEndpointPage",
    ]
    for name in pages:
        schema = spec["components"]["schemas"][name]
        assert set(schema["properties"]) == {"items", "next_cursor"}, name
        assert set(schema["required"]) == {"items", "next_cursor"}, name


async def test_docs_page_is_self_contained(client, spec) -> None:
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    for path in spec["paths"]:
        assert path in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")


async def test_docs_page_has_contents_linked_schemas_examples_and_no_backticks(client, spec) -> None:
    page = await (await client.get("/docs")).text()
    ids = set(re.findall(r"id='([^']+)'", page))
    links = set(re.findall(r"href='#([^']+)'", page)) | set(re.findall(r'href="#([^"]+)"', page))
    assert "<h2>Contents</h2>" in page
    # every operation is in the table of contents, every link lands on a section
    for methods in spec["paths"].values():
        for op in methods.values():
            assert op["operationId"] in links
    assert links <= ids, sorted(links - ids)
    assert 'href="#schema-Message"' in page and "id='schema-Message'" in page
    assert "Example:" in page and "&quot;Ann Example&quot;" in page
    assert "`" not in page
    assert "<code>next_cursor</code>" in page


async def test_real_answers_match_the_document(client, spec, pool: asyncpg.Pool, factory) -> None:
    check = Checker(spec)
    h = await bearer(pool, "accounts", "messages")
    weak = await bearer(pool, "newsletters", name="marketing")

    async def call(method: str, path: str, headers=h, **kw: Any) -> Any:
        resp = await client.request(method, path, headers=headers, **kw)
        return await check(resp, method, path)

    # accounts
    await call("POST", "/v1/accounts", json=new_account(1))
    await call("POST", "/v1/accounts", json=new_account(1))  # 409
    await call("POST", "/v1/accounts", json={"email": "x"})  # 422
    await call("POST", "/v1/accounts", json=new_account(2), headers={})  # 401
    await call("POST", "/v1/accounts", json=new_account(2), headers=weak)  # 403
    await call("POST", "/v1/accounts", data="x", headers={**h, "Content-Type": "text/plain"})  # 415
    await call("POST", "/v1/accounts", json=new_account(3), headers={**h, "Idempotency-Key": "k"})
    await call("POST", "/v1/accounts", json=new_account(3), headers={**h, "Idempotency-Key": "k"})  # replay
    await call("POST", "/v1/accounts", json=new_account(4), headers={**h, "Idempotency-Key": "k"})  # 422
    await call("GET", "/v1/accounts/m-1")
    await call("GET", "/v1/accounts/none")
    await call("PATCH", "/v1/accounts/m-1", json={"name": "Renamed"})
    await call("PATCH", "/v1/accounts/m-1", json={"name": None})
    await call("PATCH", "/v1/accounts/none", json={"name": "x"})
    await call("GET", "/v1/accounts/m-1/audit", params={"limit": "1"})
    await call("GET", "/v1/accounts/m-1/audit", params={"limit": "x"})
    await call("GET", "/v1/accounts/none/audit")

    # intake
    msg = {"category": "news", "subject": "Hi", "body": "Text", "url": "https://x.org/", "data": {"a": 1}}
    created = await call("POST", "/v1/accounts/m-1/messages", json=msg)
    await call("POST", "/v1/accounts/m-1/messages", json=msg, headers={**h, "Idempotency-Key": "one"})
    await call("POST", "/v1/accounts/m-1/messages", json=msg, headers={**h, "Idempotency-Key": "one"})
    await call("POST", "/v1/accounts/m-1/messages", json={**msg, "subject": ""})
    await call("POST", "/v1/accounts/none/messages", json=msg)
    await call("POST", "/v1/accounts/m-1/messages", json=msg, headers={**h, "Idempotency-Key": ""})  # 400
    await call("POST", "/v1/messages", json={"messages": [{"account": "m-1", **msg}]})  # 201
    await call("POST", "/v1/messages", json={"messages": [{"account": "none", **msg}, {"x": 1}]})  # 207
    await call("POST", "/v1/messages", json={"messages": [{"account": "m-1", **msg}] * 1001})  # 413
    await call("POST", "/v1/messages", json={"messages": []})  # 422

    # inbox
    base = "/v1/accounts/m-1/messages"
    await call("GET", base, params={"limit": "2"})
    await call("GET", base, params={"unread": "maybe"})
    await call("GET", "/v1/accounts/none/messages")
    await call("GET", f"{base}/unread-counts")
    await call("GET", "/v1/accounts/none/messages/unread-counts")
    for suffix in ("", "/read", "/unread", "/archive"):
        method = "GET" if suffix == "" else "POST"
        await call(method, f"{base}/{created['id']}{suffix}")
        await call(method, f"{base}/999999{suffix}")
    await call("POST", f"{base}/read-all")
    await call("POST", f"{base}/read-all", params={"up_to": "x"})
    await call("POST", "/v1/accounts/none/messages/read-all")

    # export and erasure
    await call("GET", "/v1/accounts/m-1/export")
    await call("GET", "/v1/accounts/none/export")
    await call("DELETE", "/v1/accounts/m-1", params={"reason": "nope"})
    await call("DELETE", "/v1/accounts/m-1", params={"reason": "child"})
    await call("DELETE", "/v1/accounts/m-1")

    # preferences and service messages (documented here, built by other features)
    await call("POST", "/v1/accounts", json=new_account(9))
    await call("GET", "/v1/accounts/m-9/preferences")
    await call("GET", "/v1/accounts/none/preferences")
    await call("PUT", "/v1/accounts/m-9/preferences", json={"digest_frequency": "weekly", "newsletter": True})
    await call("PUT", "/v1/accounts/m-9/preferences", json={"digest_hour": 25, "colour": "red"})
    await call("PUT", "/v1/accounts/none/preferences", json={})
    service = await bearer(pool, "service", name="account-service")
    queued = await call(
        "POST", "/v1/service-messages", headers=service, json={"account": "m-9", "template": "welcome"}
    )
    await call(
        "POST", "/v1/service-messages", headers=service, json={"account": "none", "template": "welcome"}
    )
    await call("POST", "/v1/service-messages", headers=service, json={"account": "m-9", "template": "nope"})
    await call(
        "POST", "/v1/service-messages", headers=h, json={"account": "m-9", "template": "welcome"}
    )  # 403
    await call("GET", f"/v1/service-messages/{queued['id']}", headers=service)
    await call("GET", "/v1/service-messages/999999", headers=service)

    # newsletters (described in newsletter_openapi), the preview also as HTML
    draft = await call(
        "POST", "/v1/newsletters", headers=weak, json={"subject": "Hi {{ first_name }}", "body": "x"}
    )
    await call("GET", "/v1/newsletters", headers=weak, params={"limit": "1"})
    await call("GET", f"/v1/newsletters/{draft['id']}", headers=weak)
    await call("GET", f"/v1/newsletters/{draft['id']}/preview", headers=weak)
    await call("GET", f"/v1/newsletters/{draft['id']}/preview", headers=weak, params={"format": "html"})
    await call("POST", f"/v1/newsletters/{draft['id']}/cancel", headers=weak)
    await call("GET", "/v1/newsletters/999999", headers=weak)

    # inbound mail (the deliverability loop)
    admin = await bearer(pool, "admin", name="mta")
    mime = {**admin, "Content-Type": "message/rfc822"}
    await call("POST", "/v1/inbound/mime", data=b"Subject: hi\r\n\r\nhello\r\n", headers=mime)
    await call("POST", "/v1/inbound/mime", json={"a": 1}, headers=admin)  # 415

    # operations
    await call("GET", "/healthz", headers={})
    await call("GET", "/readyz", headers={})

    mine = {(op.method, op.path) for op in openapi_routes.operations() if op.path.startswith("/v1/")}
    assert len(mine) == 20
    exercised = {(m, p) for (m, p, s) in check.seen if s.startswith("2")}
    assert mine <= exercised, sorted(mine - exercised)
    failures = {(m, p) for (m, p, s) in check.seen if s.startswith("4")}
    assert mine <= failures, sorted(mine - failures)
