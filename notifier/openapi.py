"""The API described: an OpenAPI 3.1 document at `/openapi.json` and a readable page at `/docs`.

The document is built from the application's router at start-up, so it lists every
public route that exists (the `/v1` API, the signed member pages, health and metrics); the
operator console is a cookie-authenticated HTML application and is not part of it.

Operations are described in detail in `OPERATIONS` (method, path template) -> OpenAPI operation;
a feature module may add its own there (before the application starts). A route without a detailed
description still appears, with the summary and description of its handler's docstring, its
security (from `@requires`) and the generic problem answer, so nothing is hidden.
Request bodies reuse the pydantic models that validate them (`model_json_schema`), so the
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

from notifier import accounts, inbox, service
from notifier.pagination import MAX_LIMIT

SPEC = web.AppKey("openapi_spec", dict)

PUBLIC_PREFIXES = ("/v1/", "/u/", "/preferences/", "/confirm/")
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")

JSON = "application/json"
PROBLEM = "application/problem+json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


TIMESTAMP = {"type": "string", "format": "date-time"}

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
            "errors": {"type": "array", "items": _ref("FieldError")},
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
    "Preferences": {
        "type": "object",
        "required": ["digest_frequency", "digest_hour", "digest_weekday", "timezone", "newsletter"],
        "properties": {
            "digest_frequency": {"enum": ["off", "immediate", "hourly", "daily", "weekly"]},
            "digest_hour": {"type": "integer", "minimum": 0, "maximum": 23},
            "digest_weekday": {"type": "integer", "minimum": 1, "maximum": 7, "description": "1 = Monday"},
            "timezone": {"type": "string"},
            "newsletter": {"type": "boolean"},
            "next_digest_at": _nullable(TIMESTAMP),
        },
    },
    "Account": {
        "type": "object",
        "required": [
            "external_id",
            "email",
            "name",
            "timezone",
            "locale",
            "preferences",
            "created_at",
            "updated_at",
        ],
        "properties": {
            "external_id": {"type": "string"},
            "email": {"type": "string", "format": "email"},
            "name": {"type": "string"},
            "timezone": {"type": "string"},
            "locale": {"type": "string"},
            "preferences": _ref("Preferences"),
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
        },
        "additionalProperties": False,
    },
    "Erasure": {
        "type": "object",
        "required": ["erased", "erasure"],
        "properties": {
            "erased": {"const": True},
            "erasure": {
                "type": "object",
                "required": ["id", "reason", "created_at"],
                "properties": {
                    "id": {"type": "integer"},
                    "reason": {"enum": list(accounts.ERASURE_REASONS)},
                    "created_at": TIMESTAMP,
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "actor_type", "actor", "action", "changes", "created_at"],
        "properties": {
            "id": {"type": "integer"},
            "actor_type": {"enum": ["api_key", "member", "system", "operator"]},
            "actor": {"type": "string", "description": "API key name, `signed link`, ..."},
            "action": {"type": "string", "examples": ["account.created", "account.updated"]},
            "changes": {
                "type": "object",
                "description": "`{field: {before, after}}`",
                "additionalProperties": {"type": "object", "required": ["before", "after"]},
            },
            "created_at": TIMESTAMP,
        },
        "additionalProperties": False,
    },
    "AuditPage": {
        "type": "object",
        "required": ["entries", "next_cursor"],
        "properties": {
            "entries": {"type": "array", "items": _ref("AuditEntry")},
            "next_cursor": _nullable({"type": "string"}),
        },
        "additionalProperties": False,
    },
    "Export": {
        "type": "object",
        "description": "Everything held on the account. Features may add sections.",
        "required": [
            "exported_at",
            "account",
            "preferences",
            "consents",
            "messages",
            "digests",
            "emails",
            "events",
            "audit",
            "suppressed",
            "suppressions",
        ],
        "properties": {
            "exported_at": TIMESTAMP,
            "account": _ref("Account"),
            "preferences": _ref("Preferences"),
            "consents": {"type": "array", "items": {"type": "object"}},
            "messages": {"type": "array", "items": {"type": "object", "required": ["id", "subject"]}},
            "digests": {"type": "array", "items": {"type": "object"}},
            "emails": {"type": "array", "items": {"type": "object", "required": ["id", "kind", "status"]}},
            "events": {"type": "array", "items": {"type": "object", "required": ["id", "kind"]}},
            "audit": {"type": "array", "items": _ref("AuditEntry")},
            "suppressed": {"type": "boolean", "description": "the address is on the suppression list"},
            "suppressions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["list", "reason", "created_at"],
                    "properties": {
                        "list": {"type": "string"},
                        "reason": {"type": "string"},
                        "created_at": TIMESTAMP,
                    },
                },
            },
        },
    },
    "Message": {
        "type": "object",
        "required": [
            "id",
            "category",
            "subject",
            "body",
            "url",
            "data",
            "created_at",
            "read_at",
            "archived_at",
        ],
        "properties": {
            "id": {"type": "integer"},
            "category": {"type": "string"},
            "subject": {"type": "string"},
            "body": {"type": "string"},
            "url": _nullable({"type": "string"}),
            "data": _nullable({"type": "object"}),
            "created_at": TIMESTAMP,
            "read_at": _nullable(TIMESTAMP),
            "archived_at": _nullable(TIMESTAMP),
        },
        "additionalProperties": False,
    },
    "InboxPage": {
        "type": "object",
        "required": ["messages", "next_cursor"],
        "properties": {
            "messages": {"type": "array", "items": _ref("Message")},
            "next_cursor": _nullable({"type": "string"}),
        },
        "additionalProperties": False,
    },
    "UnreadCounts": {
        "type": "object",
        "required": ["total", "categories"],
        "properties": {
            "total": {"type": "integer"},
            "categories": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        },
        "additionalProperties": False,
    },
    "MarkedRead": {
        "type": "object",
        "required": ["marked_read"],
        "properties": {"marked_read": {"type": "integer"}},
        "additionalProperties": False,
    },
    "BatchRequest": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": inbox.MAX_BATCH,
                "items": _ref("BatchMessage"),
            }
        },
        "additionalProperties": False,
    },
    "BatchResult": {
        "type": "object",
        "required": ["index", "status"],
        "properties": {
            "index": {"type": "integer", "description": "position in the request's `messages`"},
            "status": {
                "enum": [201, 404, 422],
                "description": "201 created, 404 unknown account, 422 invalid",
            },
            "id": {"type": "integer", "description": "the new message (status 201)"},
            "errors": {"type": "array", "items": _ref("FieldError")},
        },
        "additionalProperties": False,
    },
    "BatchResponse": {
        "type": "object",
        "required": ["accepted", "rejected", "results"],
        "properties": {
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "results": {"type": "array", "items": _ref("BatchResult")},
        },
        "additionalProperties": False,
    },
    "PreferencesChange": {
        "type": "object",
        "description": "Any of the five preferences; fields left out keep their value. "
        "`next_digest_at` (from GET) may be sent back and is ignored.",
        "properties": {
            "digest_frequency": {"enum": ["off", "immediate", "hourly", "daily", "weekly"]},
            "digest_hour": {"type": "integer", "minimum": 0, "maximum": 23},
            "digest_weekday": {"type": "integer", "minimum": 1, "maximum": 7},
            "timezone": {"type": "string", "description": "an IANA time-zone name"},
            "newsletter": {"type": "boolean"},
            "next_digest_at": {},
        },
        "additionalProperties": False,
    },
    "ServiceMessageQueued": {
        "type": "object",
        "required": ["id", "status", "template"],
        "properties": {
            "id": {"type": "integer"},
            "status": {"const": "queued"},
            "template": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "ServiceMessage": {
        "type": "object",
        "required": [
            "id",
            "template",
            "status",
            "attempts",
            "last_error",
            "message_id",
            "created_at",
            "sent_at",
        ],
        "properties": {
            "id": {"type": "integer"},
            "template": {"type": "string"},
            "status": {"enum": ["queued", "sending", "sent", "failed", "suppressed", "cancelled"]},
            "attempts": {"type": "integer"},
            "last_error": _nullable({"type": "string"}),
            "message_id": _nullable({"type": "string"}),
            "created_at": TIMESTAMP,
            "sent_at": _nullable(TIMESTAMP),
        },
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string"},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}

# Request bodies: the pydantic models that validate them.
_MODELS: dict[str, type[BaseModel]] = {
    "NewAccount": accounts.NewAccount,
    "AccountPatch": accounts.AccountPatch,
    "NewMessage": inbox.NewMessage,
    "BatchMessage": inbox.BatchMessage,
    "ServiceMessageIn": service.ServiceMessageIn,
}


def _model_schemas() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, model in _MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            out[def_name] = definition
        schema["title"] = name
        out[name] = schema
    out["NewAccount"]["properties"]["email"]["description"] = "validated (syntax, no DNS) and normalised"
    out["NewAccount"]["properties"]["timezone"]["description"] = "an IANA time-zone name"
    out["AccountPatch"]["description"] = "JSON merge patch: absent fields stay; null is refused"
    return out


# --- operations -------------------------------------------------------------------------------


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "the new resource"}}
_REPLAYED = {
    "Idempotent-Replayed": {
        "schema": {"const": "true"},
        "description": "present when this is the stored answer to an earlier request with the same key",
    }
}


# What any route with a JSON body may answer before its own rules apply (problems.read_json and
# the problem middleware): not JSON or a character the database cannot store, too large, not JSON.
_BODY_PROBLEMS = {
    "400": _problem("the body is not valid JSON, or holds a character that cannot be stored (NUL)"),
    "413": _problem("the body is larger than the limit"),
    "415": _problem("the body is not application/json"),
}


def _secured(scope: str, op: dict[str, Any]) -> dict[str, Any]:
    op["security"] = [{"apiKey": [scope]}]
    op["x-scope"] = scope
    op["responses"].setdefault("401", _problem("no API key, or an unknown or revoked one"))
    op["responses"].setdefault("403", _problem(f"the API key lacks the `{scope}` scope"))
    return op


def _param(
    name: str, where: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


EXTERNAL_ID = _param(
    "external_id", "path", {"type": "string", "maxLength": 128}, "the producer's id of the account"
)
MESSAGE_ID = _param("id", "path", {"type": "integer"}, "the message id")
IDEMPOTENCY_KEY = _param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "repeat a request safely: the same key and body return the first answer (with "
    "`Idempotent-Replayed: true`); the same key with another body is a 422; scoped to the API key and route",
)
LIMIT = _param(
    "limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "page size"
)
CURSOR = _param("cursor", "query", {"type": "string"}, "the `next_cursor` of the previous page")
CATEGORY = _param("category", "query", {"type": "string", "maxLength": 64}, "only this category")


def _body(name: str, media: str = JSON) -> dict[str, Any]:
    return {"required": True, "content": {media: {"schema": _ref(name)}}}


def _idempotency_problems(responses: dict[str, Any]) -> dict[str, Any]:
    responses["400"] = _problem("malformed Idempotency-Key, or a body that is not JSON")
    responses["409"] = _problem("a request with this Idempotency-Key is still in progress", _RETRY_AFTER)
    responses["422"] = _problem(
        "invalid fields (all listed in `errors`), or an Idempotency-Key reused for another request"
    )
    return responses


def _message_op(summary: str, description: str) -> dict[str, Any]:
    return _secured(
        "messages",
        {
            "summary": summary,
            "description": description,
            "tags": ["inbox"],
            "parameters": [EXTERNAL_ID, MESSAGE_ID],
            "responses": {
                "200": _json(_ref("Message"), "the message"),
                "404": _problem("no such account, or no such message in its inbox"),
            },
        },
    )


def operations() -> dict[tuple[str, str], dict[str, Any]]:
    """The detailed descriptions, keyed by (method, path template)."""
    acct = "/v1/accounts/{external_id}"
    return {
        ("POST", "/v1/accounts"): _secured(
            "accounts",
            {
                "summary": "Register an account",
                "description": "Creates the account and its inbox with the default preferences "
                "(daily digest at 08:00 local time, Monday for weekly, no newsletter). Audited.",
                "tags": ["accounts"],
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": _body("NewAccount"),
                "responses": _idempotency_problems(
                    {
                        "201": _json(_ref("Account"), "created", {**_LOCATION, **_REPLAYED}),
                        "409": _problem("an account with this external_id exists"),
                        "413": _problem("body too large"),
                        "415": _problem("body is not application/json"),
                    }
                ),
            },
        ),
        ("GET", acct): _secured(
            "accounts",
            {
                "summary": "Read an account",
                "tags": ["accounts"],
                "parameters": [EXTERNAL_ID],
                "responses": {
                    "200": _json(_ref("Account"), "the account"),
                    "404": _problem("no such account"),
                },
            },
        ),
        ("PATCH", acct): _secured(
            "accounts",
            {
                "summary": "Correct an account",
                "description": "Merge patch of e-mail, name, time zone and locale. The e-mail is "
                "validated again. Every change is an audit row with before and after.",
                "tags": ["accounts"],
                "parameters": [EXTERNAL_ID],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": _ref("AccountPatch")},
                        "application/merge-patch+json": {"schema": _ref("AccountPatch")},
                    },
                },
                "responses": {
                    "200": _json(_ref("Account"), "the corrected account"),
                    "400": _problem("the body is not JSON"),
                    "404": _problem("no such account"),
                    "422": _problem("invalid fields, all listed in `errors`"),
                },
            },
        ),
        ("DELETE", acct): _secured(
            "accounts",
            {
                "summary": "Erase an account",
                "description": "Deletes at once, in one transaction, the account, its inbox, digests, "
                "consents, e-mails, events and audit rows. Suppressions (unsubscribes, bounces) remain "
                "as a hash of the address only. The erasure is recorded with its reason and actor and "
                "no personal data.",
                "tags": ["accounts"],
                "parameters": [
                    EXTERNAL_ID,
                    _param(
                        "reason",
                        "query",
                        {"enum": list(accounts.ERASURE_REASONS), "default": "request"},
                        "why: the member asked, a child under 13, retention, other",
                    ),
                ],
                "responses": {
                    "200": _json(_ref("Erasure"), "erased; the receipt"),
                    "404": _problem("no such account"),
                    "422": _problem("unknown reason"),
                },
            },
        ),
        ("GET", f"{acct}/export"): _secured(
            "accounts",
            {
                "summary": "Export everything held on an account",
                "tags": ["accounts"],
                "parameters": [EXTERNAL_ID],
                "responses": {
                    "200": _json(_ref("Export"), "one JSON document"),
                    "404": _problem("no such account"),
                },
            },
        ),
        ("GET", f"{acct}/audit"): _secured(
            "accounts",
            {
                "summary": "The audit trail of an account",
                "description": "Who changed what, when; newest first.",
                "tags": ["accounts"],
                "parameters": [EXTERNAL_ID, LIMIT, CURSOR],
                "responses": {
                    "200": _json(_ref("AuditPage"), "a page"),
                    "404": _problem("no such account"),
                    "422": _problem("bad limit or cursor"),
                },
            },
        ),
        ("POST", f"{acct}/messages"): _secured(
            "messages",
            {
                "summary": "Post one message into an inbox",
                "tags": ["intake"],
                "parameters": [EXTERNAL_ID, IDEMPOTENCY_KEY],
                "requestBody": _body("NewMessage"),
                "responses": _idempotency_problems(
                    {
                        "201": _json(_ref("Message"), "created", {**_LOCATION, **_REPLAYED}),
                        "404": _problem("no such account; nothing was written"),
                        "413": _problem("body too large"),
                        "415": _problem("body is not application/json"),
                    }
                ),
            },
        ),
        ("POST", "/v1/messages"): _secured(
            "messages",
            {
                "summary": "Post many messages, for many accounts",
                "description": f"Up to {inbox.MAX_BATCH} messages. Each item is answered in `results` "
                "(same order, with its `index`): 201 and the new `id`, 404 for an unknown account, 422 "
                "with `errors`. Valid items are stored together in one statement, whatever the others. "
                "The answer is 201 when every item was accepted, 207 when any was not.",
                "tags": ["intake"],
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": _body("BatchRequest"),
                "responses": _idempotency_problems(
                    {
                        "201": _json(_ref("BatchResponse"), "every item accepted", _REPLAYED),
                        "207": _json(
                            _ref("BatchResponse"), "some items not accepted: see `results`", _REPLAYED
                        ),
                        "413": _problem(f"more than {inbox.MAX_BATCH} messages, or the body is too large"),
                        "415": _problem("body is not application/json"),
                    }
                ),
            },
        ),
        ("GET", f"{acct}/messages"): _secured(
            "messages",
            {
                "summary": "The inbox, newest first",
                "description": "Keyset pagination: pass `next_cursor` as `cursor` until it is null.",
                "tags": ["inbox"],
                "parameters": [
                    EXTERNAL_ID,
                    LIMIT,
                    CURSOR,
                    _param("unread", "query", {"type": "boolean", "default": False}, "only unread messages"),
                    CATEGORY,
                    _param(
                        "archived",
                        "query",
                        {"enum": ["exclude", "include", "only"], "default": "exclude"},
                        "archived messages",
                    ),
                ],
                "responses": {
                    "200": _json(_ref("InboxPage"), "a page"),
                    "404": _problem("no such account"),
                    "422": _problem("bad query parameter"),
                },
            },
        ),
        ("GET", f"{acct}/messages/unread-counts"): _secured(
            "messages",
            {
                "summary": "Unread messages per category",
                "description": "Archived messages do not count.",
                "tags": ["inbox"],
                "parameters": [EXTERNAL_ID],
                "responses": {
                    "200": _json(_ref("UnreadCounts"), "counts"),
                    "404": _problem("no such account"),
                },
            },
        ),
        ("POST", f"{acct}/messages/read-all"): _secured(
            "messages",
            {
                "summary": "Mark all unread messages read",
                "tags": ["inbox"],
                "parameters": [
                    EXTERNAL_ID,
                    CATEGORY,
                    _param("up_to", "query", {"type": "integer"}, "only messages with this id or lower"),
                ],
                "responses": {
                    "200": _json(_ref("MarkedRead"), "how many were marked"),
                    "404": _problem("no such account"),
                    "422": _problem("bad query parameter"),
                },
            },
        ),
        ("GET", f"{acct}/messages/{{id}}"): _message_op("One message", "Archived messages too."),
        ("POST", f"{acct}/messages/{{id}}/read"): _message_op(
            "Mark a message read", "Idempotent: keeps the first read time."
        ),
        ("POST", f"{acct}/messages/{{id}}/unread"): _message_op("Mark a message unread", ""),
        ("POST", f"{acct}/messages/{{id}}/archive"): _message_op(
            "Archive a message", "Idempotent. Archived messages leave the listing, unread counts and digests."
        ),
        ("GET", f"{acct}/preferences"): _secured(
            "accounts",
            {
                "summary": "An account's digest and newsletter preferences",
                "description": "With `next_digest_at`, when the next digest is due (null: none scheduled).",
                "tags": ["accounts"],
                "parameters": [EXTERNAL_ID],
                "responses": {
                    "200": _json(_ref("Preferences"), "the preferences"),
                    "404": _problem("no such account"),
                },
            },
        ),
        ("PUT", f"{acct}/preferences"): _secured(
            "accounts",
            {
                "summary": "Change preferences",
                "description": "Validated together; audited; a change of newsletter is a consent record; "
                "the open digest window is rescheduled.",
                "tags": ["accounts"],
                "parameters": [EXTERNAL_ID],
                "requestBody": _body("PreferencesChange"),
                "responses": {
                    "200": _json(_ref("Preferences"), "the preferences now in force"),
                    "400": _problem("the body is not JSON"),
                    "404": _problem("no such account"),
                    "422": _problem("invalid fields, all listed in `errors`"),
                },
            },
        ),
        ("POST", "/v1/service-messages"): _secured(
            "service",
            {
                "summary": "Send a service e-mail from a named template",
                "description": "Rendered once to validate (an unknown template or a missing variable is a "
                "422 naming it), stored in the outbox and sent at once by the service queue.",
                "tags": ["service"],
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": _body("ServiceMessageIn"),
                "responses": _idempotency_problems(
                    {
                        "202": _json(_ref("ServiceMessageQueued"), "queued", {**_LOCATION, **_REPLAYED}),
                        "404": _problem("no such account"),
                        "413": _problem("body too large"),
                        "415": _problem("body is not application/json"),
                    }
                ),
            },
        ),
        ("GET", "/v1/service-messages/{id}"): _secured(
            "service",
            {
                "summary": "Where a service e-mail is",
                "tags": ["service"],
                "parameters": [_param("id", "path", {"type": "integer"}, "the id from the POST")],
                "responses": {
                    "200": _json(_ref("ServiceMessage"), "its state"),
                    "404": _problem("no such service message"),
                },
            },
        ),
        ("GET", "/healthz"): {
            "summary": "Liveness",
            "tags": ["operations"],
            "responses": {"200": _json(_ref("Health"), "the process answers")},
        },
        ("GET", "/readyz"): {
            "summary": "Readiness: PostgreSQL and Redis answer",
            "tags": ["operations"],
            "responses": {
                "200": _json(_ref("Health"), "ready"),
                "503": _json(_ref("Health"), "a backing service does not answer"),
            },
        },
        ("GET", "/metrics"): {
            "summary": "Prometheus metrics of this process",
            "tags": ["operations"],
            "responses": {
                "200": {
                    "description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        },
        ("GET", "/openapi.json"): {
            "summary": "This document",
            "tags": ["operations"],
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}
            },
        },
        ("GET", "/docs"): {
            "summary": "This document as a readable page",
            "tags": ["operations"],
            "responses": {
                "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
            },
        },
    }


OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {}


def _from_handler(handler: Any, path: str) -> dict[str, Any]:
    """An operation from the handler alone: docstring, scope, path parameters, problem answers."""
    doc = inspect.getdoc(handler) or ""
    summary, _, description = doc.partition("\n\n")
    params = [
        _param(name, "path", {"type": "string"}, "")
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
        _secured(scope, op)
    return op


def _public(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIXES) or path in PUBLIC_PATHS


def build(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s public routes."""
    described = {**operations(), **OPERATIONS}
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
            "schemas": {**SCHEMAS, **_model_schemas()},
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
