"""The core API in the OpenAPI document (`/openapi.json`): accounts, inboxes and intake,
preferences, service mail and the operations routes; their operations and schemas, the request
bodies taken from the pydantic models that validate them. Built with the helpers of `openapi`."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel

from notifier import accounts, inbox, service
from notifier.api import openapi
from notifier.api.openapi import (
    IDEMPOTENCY_KEY,
    JSON,
    LOCATION,
    REPLAYED,
    TIMESTAMP,
    array,
    body,
    idempotent,
    nullable,
    obj,
    ok,
    operation,
    page,
    param,
    problem,
    ref,
)
from notifier.api.pagination import MAX_LIMIT

_FREQUENCY = {"enum": ["off", "immediate", "hourly", "daily", "weekly"]}
_HOUR = {"type": "integer", "minimum": 0, "maximum": 23}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Preferences": obj(
        {
            "digest_frequency": _FREQUENCY,
            "digest_hour": _HOUR,
            "digest_weekday": {"type": "integer", "minimum": 1, "maximum": 7, "description": "1 = Monday"},
            "timezone": {"type": "string"},
            "newsletter": {"type": "boolean"},
            "next_digest_at": nullable(TIMESTAMP),
        },
        ["digest_frequency", "digest_hour", "digest_weekday", "timezone", "newsletter"],
        closed=False,
    ),
    "Account": obj(
        {
            "external_id": {"type": "string"},
            "email": {"type": "string", "format": "email"},
            "name": {"type": "string"},
            "timezone": {"type": "string"},
            "locale": {"type": "string"},
            "preferences": ref("Preferences"),
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
        },
        ["external_id", "email", "name", "timezone", "locale", "preferences", "created_at", "updated_at"],
    ),
    "Erasure": obj(
        {
            "erased": {"const": True},
            "erasure": obj(
                {
                    "id": {"type": "integer"},
                    "reason": {"enum": list(accounts.ERASURE_REASONS)},
                    "created_at": TIMESTAMP,
                },
                ["id", "reason", "created_at"],
            ),
        },
        ["erased", "erasure"],
    ),
    "AuditEntry": obj(
        {
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
        ["id", "actor_type", "actor", "action", "changes", "created_at"],
    ),
    "AuditPage": page("entries", "AuditEntry"),
    "Export": obj(
        {
            "exported_at": TIMESTAMP,
            "account": ref("Account"),
            "preferences": ref("Preferences"),
            "consents": array({"type": "object"}),
            "messages": array({"type": "object", "required": ["id", "subject"]}),
            "digests": array({"type": "object"}),
            "emails": array({"type": "object", "required": ["id", "kind", "status"]}),
            "events": array({"type": "object", "required": ["id", "kind"]}),
            "audit": array(ref("AuditEntry")),
            "suppressed": {"type": "boolean", "description": "the address is on the suppression list"},
            "suppressions": array(
                obj(
                    {"list": {"type": "string"}, "reason": {"type": "string"}, "created_at": TIMESTAMP},
                    ["list", "reason", "created_at"],
                    closed=False,
                )
            ),
        },
        [
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
        "Everything held on the account. Features may add sections.",
        closed=False,
    ),
    "Message": obj(
        {
            "id": {"type": "integer"},
            "category": {"type": "string"},
            "subject": {"type": "string"},
            "body": {"type": "string"},
            "url": nullable({"type": "string"}),
            "data": nullable({"type": "object"}),
            "created_at": TIMESTAMP,
            "read_at": nullable(TIMESTAMP),
            "archived_at": nullable(TIMESTAMP),
        },
        ["id", "category", "subject", "body", "url", "data", "created_at", "read_at", "archived_at"],
    ),
    "InboxPage": page("messages", "Message"),
    "UnreadCounts": obj(
        {
            "total": {"type": "integer"},
            "categories": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        },
        ["total", "categories"],
    ),
    "MarkedRead": obj({"marked_read": {"type": "integer"}}, ["marked_read"]),
    "BatchRequest": obj(
        {
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": inbox.MAX_BATCH,
                "items": ref("BatchMessage"),
            }
        },
        ["messages"],
    ),
    "BatchResult": obj(
        {
            "index": {"type": "integer", "description": "position in the request's `messages`"},
            "status": {
                "enum": [201, 404, 422],
                "description": "201 created, 404 unknown account, 422 invalid",
            },
            "id": {"type": "integer", "description": "the new message (status 201)"},
            "errors": array(ref("FieldError")),
        },
        ["index", "status"],
    ),
    "BatchResponse": obj(
        {
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "results": array(ref("BatchResult")),
        },
        ["accepted", "rejected", "results"],
    ),
    "PreferencesChange": obj(
        {
            "digest_frequency": _FREQUENCY,
            "digest_hour": _HOUR,
            "digest_weekday": {"type": "integer", "minimum": 1, "maximum": 7},
            "timezone": {"type": "string", "description": "an IANA time-zone name"},
            "newsletter": {"type": "boolean"},
            "next_digest_at": {},
        },
        description="Any of the five preferences; fields left out keep their value. "
        "`next_digest_at` (from GET) may be sent back and is ignored.",
    ),
    "ServiceMessageQueued": obj(
        {"id": {"type": "integer"}, "status": {"const": "queued"}, "template": {"type": "string"}},
        ["id", "status", "template"],
    ),
    "ServiceMessage": obj(
        {
            "id": {"type": "integer"},
            "template": {"type": "string"},
            "status": {"enum": ["queued", "sending", "sent", "failed", "suppressed", "cancelled"]},
            "attempts": {"type": "integer"},
            "last_error": nullable({"type": "string"}),
            "message_id": nullable({"type": "string"}),
            "created_at": TIMESTAMP,
            "sent_at": nullable(TIMESTAMP),
        },
        ["id", "template", "status", "attempts", "last_error", "message_id", "created_at", "sent_at"],
    ),
    "Health": obj(
        {
            "status": {"type": "string"},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        ["status"],
        closed=False,
    ),
}

# Request bodies: the pydantic models that validate them.
MODELS: dict[str, type[BaseModel]] = {
    "NewAccount": accounts.NewAccount,
    "AccountPatch": accounts.AccountPatch,
    "NewMessage": inbox.NewMessage,
    "BatchMessage": inbox.BatchMessage,
    "ServiceMessageIn": service.ServiceMessageIn,
}


def model_schemas() -> dict[str, dict[str, Any]]:
    """The request bodies' schemas, with what the models do not say themselves."""
    out = openapi.model_schemas(MODELS)
    out["NewAccount"]["properties"]["email"]["description"] = "validated (syntax, no DNS) and normalised"
    out["NewAccount"]["properties"]["timezone"]["description"] = "an IANA time-zone name"
    out["AccountPatch"]["description"] = "JSON merge patch: absent fields stay; null is refused"
    return out


# --- parameters and answers shared by several operations --------------------------------------

EXTERNAL_ID = param(
    "external_id", "path", {"type": "string", "maxLength": 128}, "the producer's id of the account"
)
MESSAGE_ID = param("id", "path", {"type": "integer"}, "the message id")
LIMIT = param(
    "limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "page size"
)
CURSOR = param("cursor", "query", {"type": "string"}, "the `next_cursor` of the previous page")
CATEGORY = param("category", "query", {"type": "string", "maxLength": 64}, "only this category")

_NO_ACCOUNT = problem("no such account")
_NOT_JSON = problem("the body is not JSON")
_INVALID = problem("invalid fields, all listed in `errors`")
_BAD_QUERY = problem("bad query parameter")
_NOT_APPLICATION_JSON = problem("body is not application/json")


def _idempotent_write(responses: dict[str, Any]) -> dict[str, Any]:
    """The answers of a route writing one thing under an Idempotency-Key: `responses`, a large or
    non-JSON body, and what `idempotent` adds."""
    return idempotent({**responses, "413": problem("body too large"), "415": _NOT_APPLICATION_JSON})


_CREATED_HEADERS = {**LOCATION, **REPLAYED}


# Every accounts route is under the `accounts` tag and scope; most take only the account's id.
_account_op = functools.partial(operation, "accounts", "accounts", parameters=[EXTERNAL_ID])


def _message_op(summary: str, description: str) -> dict[str, Any]:
    return operation(
        "messages",
        "inbox",
        summary,
        {
            "200": ok("Message", "the message"),
            "404": problem("no such account, or no such message in its inbox"),
        },
        description=description,
        parameters=[EXTERNAL_ID, MESSAGE_ID],
    )


def _operations_op(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return operation(None, "operations", summary, responses)


def _text(media: str, description: str, schema_type: str) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": schema_type}}}}


def operations() -> dict[tuple[str, str], dict[str, Any]]:
    """The detailed descriptions, keyed by (method, path template)."""
    acct = "/v1/accounts/{external_id}"
    return {
        ("POST", "/v1/accounts"): _account_op(
            "Register an account",
            _idempotent_write(
                {
                    "201": ok("Account", "created", _CREATED_HEADERS),
                    "409": problem("an account with this external_id exists"),
                }
            ),
            description="Creates the account and its inbox with the default preferences "
            "(daily digest at 08:00 local time, Monday for weekly, no newsletter). Audited.",
            parameters=[IDEMPOTENCY_KEY],
            request_body=body("NewAccount"),
        ),
        ("GET", acct): _account_op(
            "Read an account", {"200": ok("Account", "the account"), "404": _NO_ACCOUNT}
        ),
        ("PATCH", acct): _account_op(
            "Correct an account",
            {
                "200": ok("Account", "the corrected account"),
                "400": _NOT_JSON,
                "404": _NO_ACCOUNT,
                "422": _INVALID,
            },
            description="Merge patch of e-mail, name, time zone and locale. The e-mail is "
            "validated again. Every change is an audit row with before and after.",
            request_body={
                "required": True,
                "content": {
                    JSON: {"schema": ref("AccountPatch")},
                    "application/merge-patch+json": {"schema": ref("AccountPatch")},
                },
            },
        ),
        ("DELETE", acct): _account_op(
            "Erase an account",
            {
                "200": ok("Erasure", "erased; the receipt"),
                "404": _NO_ACCOUNT,
                "422": problem("unknown reason"),
            },
            description="Deletes at once, in one transaction, the account, its inbox, digests, "
            "consents, e-mails, events and audit rows. Suppressions (unsubscribes, bounces) remain "
            "as a hash of the address only. The erasure is recorded with its reason and actor and "
            "no personal data.",
            parameters=[
                EXTERNAL_ID,
                param(
                    "reason",
                    "query",
                    {"enum": list(accounts.ERASURE_REASONS), "default": "request"},
                    "why: the member asked, a child under 13, retention, other",
                ),
            ],
        ),
        ("GET", f"{acct}/export"): _account_op(
            "Export everything held on an account",
            {"200": ok("Export", "one JSON document"), "404": _NO_ACCOUNT},
        ),
        ("GET", f"{acct}/audit"): _account_op(
            "The audit trail of an account",
            {
                "200": ok("AuditPage", "a page"),
                "404": _NO_ACCOUNT,
                "422": problem("bad limit or cursor"),
            },
            description="Who changed what, when; newest first.",
            parameters=[EXTERNAL_ID, LIMIT, CURSOR],
        ),
        ("POST", f"{acct}/messages"): operation(
            "messages",
            "intake",
            "Post one message into an inbox",
            _idempotent_write(
                {
                    "201": ok("Message", "created", _CREATED_HEADERS),
                    "404": problem("no such account; nothing was written"),
                }
            ),
            parameters=[EXTERNAL_ID, IDEMPOTENCY_KEY],
            request_body=body("NewMessage"),
        ),
        ("POST", "/v1/messages"): operation(
            "messages",
            "intake",
            "Post many messages, for many accounts",
            idempotent(
                {
                    "201": ok("BatchResponse", "every item accepted", REPLAYED),
                    "207": ok("BatchResponse", "some items not accepted: see `results`", REPLAYED),
                    "413": problem(f"more than {inbox.MAX_BATCH} messages, or the body is too large"),
                    "415": _NOT_APPLICATION_JSON,
                }
            ),
            description=f"Up to {inbox.MAX_BATCH} messages. Each item is answered in `results` "
            "(same order, with its `index`): 201 and the new `id`, 404 for an unknown account, 422 "
            "with `errors`. Valid items are stored together in one statement, whatever the others. "
            "The answer is 201 when every item was accepted, 207 when any was not.",
            parameters=[IDEMPOTENCY_KEY],
            request_body=body("BatchRequest"),
        ),
        ("GET", f"{acct}/messages"): operation(
            "messages",
            "inbox",
            "The inbox, newest first",
            {"200": ok("InboxPage", "a page"), "404": _NO_ACCOUNT, "422": _BAD_QUERY},
            description="Keyset pagination: pass `next_cursor` as `cursor` until it is null.",
            parameters=[
                EXTERNAL_ID,
                LIMIT,
                CURSOR,
                param("unread", "query", {"type": "boolean", "default": False}, "only unread messages"),
                CATEGORY,
                param(
                    "archived",
                    "query",
                    {"enum": ["exclude", "include", "only"], "default": "exclude"},
                    "archived messages",
                ),
            ],
        ),
        ("GET", f"{acct}/messages/unread-counts"): operation(
            "messages",
            "inbox",
            "Unread messages per category",
            {"200": ok("UnreadCounts", "counts"), "404": _NO_ACCOUNT},
            description="Archived messages do not count.",
            parameters=[EXTERNAL_ID],
        ),
        ("POST", f"{acct}/messages/read-all"): operation(
            "messages",
            "inbox",
            "Mark all unread messages read",
            {"200": ok("MarkedRead", "how many were marked"), "404": _NO_ACCOUNT, "422": _BAD_QUERY},
            parameters=[
                EXTERNAL_ID,
                CATEGORY,
                param("up_to", "query", {"type": "integer"}, "only messages with this id or lower"),
            ],
        ),
        ("GET", f"{acct}/messages/{{id}}"): _message_op("One message", "Archived messages too."),
        ("POST", f"{acct}/messages/{{id}}/read"): _message_op(
            "Mark a message read", "Idempotent: keeps the first read time."
        ),
        ("POST", f"{acct}/messages/{{id}}/unread"): _message_op("Mark a message unread", ""),
        ("POST", f"{acct}/messages/{{id}}/archive"): _message_op(
            "Archive a message", "Idempotent. Archived messages leave the listing, unread counts and digests."
        ),
        ("GET", f"{acct}/preferences"): _account_op(
            "An account's digest and newsletter preferences",
            {"200": ok("Preferences", "the preferences"), "404": _NO_ACCOUNT},
            description="With `next_digest_at`, when the next digest is due (null: none scheduled).",
        ),
        ("PUT", f"{acct}/preferences"): _account_op(
            "Change preferences",
            {
                "200": ok("Preferences", "the preferences now in force"),
                "400": _NOT_JSON,
                "404": _NO_ACCOUNT,
                "422": _INVALID,
            },
            description="Validated together; audited; a change of newsletter is a consent record; "
            "the open digest window is rescheduled.",
            request_body=body("PreferencesChange"),
        ),
        ("POST", "/v1/service-messages"): operation(
            "service",
            "service",
            "Send a service e-mail from a named template",
            _idempotent_write(
                {
                    "202": ok("ServiceMessageQueued", "queued", _CREATED_HEADERS),
                    "404": _NO_ACCOUNT,
                }
            ),
            description="Rendered once to validate (an unknown template or a missing variable is a "
            "422 naming it), stored in the outbox and sent at once by the service queue.",
            parameters=[IDEMPOTENCY_KEY],
            request_body=body("ServiceMessageIn"),
        ),
        ("GET", "/v1/service-messages/{id}"): operation(
            "service",
            "service",
            "Where a service e-mail is",
            {"200": ok("ServiceMessage", "its state"), "404": problem("no such service message")},
            parameters=[param("id", "path", {"type": "integer"}, "the id from the POST")],
        ),
        ("GET", "/healthz"): _operations_op("Liveness", {"200": ok("Health", "the process answers")}),
        ("GET", "/readyz"): _operations_op(
            "Readiness: PostgreSQL and Redis answer",
            {"200": ok("Health", "ready"), "503": ok("Health", "a backing service does not answer")},
        ),
        ("GET", "/metrics"): _operations_op(
            "Prometheus metrics of this process",
            {"200": _text("text/plain", "text exposition format", "string")},
        ),
        ("GET", "/openapi.json"): _operations_op(
            "This document", {"200": _text(JSON, "OpenAPI 3.1", "object")}
        ),
        ("GET", "/docs"): _operations_op(
            "This document as a readable page", {"200": _text("text/html", "HTML", "string")}
        ),
    }


def describe() -> None:
    """Add the core routes' operations and schemas to the OpenAPI document (idempotent)."""
    openapi.SCHEMAS.update(SCHEMAS)
    openapi.SCHEMAS.update(model_schemas())
    openapi.OPERATIONS.update(operations())
