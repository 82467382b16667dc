"""The core API in the OpenAPI document (`/openapi.json`): accounts, inboxes and intake,
preferences, service mail and the operations routes.

Written by hand here: what each operation does, its parameters, its answers' statuses and
examples. The bodies' schemas come from the models that validate the requests and build the
answers (see `notifier.openapi`)."""

from __future__ import annotations

from typing import Any

from notifier import accounts, answers, inbox, service
from notifier.api import inbound
from notifier.api.openapi import (
    CURSOR,
    LIMIT,
    LOCATION,
    REPLAYED,
    Answer,
    Body,
    Operation,
    Param,
    answer,
    problem,
    text,
)
from notifier.api.responses import JSON
from notifier.preferences import Preferences

# --- parameters and answers shared by several operations --------------------------------------

EXTERNAL_ID = Param(
    "external_id",
    "path",
    {"type": "string", "maxLength": 128},
    "the producer's id of the account",
    example="reg-1042",
)
MESSAGE_ID = Param("id", "path", {"type": "integer"}, "the message id", example=9001)
CATEGORY = Param("category", "query", {"type": "string", "maxLength": 64}, "only this category")

_NO_ACCOUNT = problem("no such account")
_INVALID = problem("invalid fields, all listed in `errors`")
_BAD_QUERY = problem("bad query parameter (named in `errors`)")
_CREATED_HEADERS = {**LOCATION, **REPLAYED}

_TIME = "2026-12-01T09:30:00+00:00"
_PREFERENCES = {
    "digest_frequency": "daily",
    "digest_hour": 8,
    "digest_weekday": 1,
    "timezone": "Europe/Berlin",
    "newsletter": False,
    "categories": {"registry": {"frequency": "immediate"}, "community": {"frequency": "weekly"}},
    "quiet_hours": {"start": "22:00", "end": "07:00", "weekends": False},
}
ACCOUNT_EXAMPLE = {
    "external_id": "reg-1042",
    "email": "ann@example.org",
    "name": "Ann Example",
    "timezone": "Europe/Berlin",
    "locale": "de",
    "preferences": _PREFERENCES,
    "created_at": _TIME,
    "updated_at": _TIME,
}
_NEW_MESSAGE = {
    "category": "blog.comments",
    "subject": "New comment on your post",
    "body": "Bob replied: ...",
    "url": "https://blog.example.org/p/42#c7",
    "data": {"post": 42},
}
MESSAGE_EXAMPLE = {"id": 9001, **_NEW_MESSAGE, "created_at": _TIME, "read_at": None, "archived_at": None}


def _account_op(
    method: str, path: str, summary: str, answers_: dict[int | str, Answer], **kw: Any
) -> Operation:
    """An operation under the `accounts` tag and scope, by default taking only the account's id."""
    kw.setdefault("parameters", [EXTERNAL_ID])
    return Operation(method, path, "accounts", summary, answers_, scope="accounts", **kw)


def _message_op(method: str, path: str, summary: str, description: str) -> Operation:
    return Operation(
        method,
        path,
        "inbox",
        summary,
        {
            200: answer(answers.Message, "the message", example=MESSAGE_EXAMPLE),
            404: problem("no such account, or no such message in its inbox"),
        },
        scope="messages",
        description=description,
        parameters=[EXTERNAL_ID, MESSAGE_ID],
    )


def _account_operations() -> list[Operation]:
    acct = "/v1/accounts/{external_id}"
    return [
        _account_op(
            "POST",
            "/v1/accounts",
            "Register an account",
            {
                201: answer(answers.Account, "created", _CREATED_HEADERS, example=ACCOUNT_EXAMPLE),
                409: problem("an account with this external_id exists"),
            },
            description="Creates the account and its inbox with the default preferences "
            "(daily digest at 08:00 local time, Monday for weekly, no newsletter). Audited.",
            parameters=[],
            request=Body(
                accounts.NewAccount,
                example={
                    k: ACCOUNT_EXAMPLE[k] for k in ("external_id", "email", "name", "timezone", "locale")
                },
            ),
            idempotent=True,
        ),
        _account_op(
            "GET", acct, "Read an account", {200: answer(answers.Account, "the account"), 404: _NO_ACCOUNT}
        ),
        _account_op(
            "PATCH",
            acct,
            "Correct an account",
            {200: answer(answers.Account, "the corrected account"), 404: _NO_ACCOUNT, 422: _INVALID},
            description="JSON merge patch of e-mail, name, time zone and locale: absent fields stay, "
            "null is refused. The e-mail is validated again. Every change is an audit row with "
            "before and after.",
            request=Body(
                accounts.AccountPatch, (JSON, "application/merge-patch+json"), example={"name": "Ann Example"}
            ),
        ),
        _account_op(
            "DELETE",
            acct,
            "Erase an account",
            {
                200: answer(
                    answers.Erasure,
                    "erased; the receipt",
                    example={"erased": True, "erasure": {"id": 3, "reason": "child", "created_at": _TIME}},
                ),
                404: _NO_ACCOUNT,
                422: problem("unknown reason"),
            },
            description="Deletes at once, in one transaction, the account, its inbox, digests, "
            "consents, e-mails, events and audit rows. Suppressions (unsubscribes, bounces) remain "
            "as a hash of the address only. The erasure is recorded with its reason and actor and "
            "no personal data.",
            parameters=[
                EXTERNAL_ID,
                Param(
                    "reason",
                    "query",
                    {"enum": list(accounts.ERASURE_REASONS), "default": "request"},
                    "why: the member asked, a child under 13, retention, other",
                ),
            ],
        ),
        _account_op(
            "GET",
            f"{acct}/export",
            "Export everything held on an account",
            {200: answer(answers.Export, "one JSON document"), 404: _NO_ACCOUNT},
        ),
        _account_op(
            "GET",
            f"{acct}/audit",
            "The audit trail of an account",
            {
                200: answer(
                    answers.AuditPage,
                    "a page",
                    example={
                        "items": [
                            {
                                "id": 7,
                                "actor_type": "api_key",
                                "actor": "registry",
                                "action": "account.updated",
                                "changes": {"name": {"before": "Ann", "after": "Ann Example"}},
                                "created_at": _TIME,
                            }
                        ],
                        "next_cursor": None,
                    },
                ),
                404: _NO_ACCOUNT,
                422: problem("bad limit or cursor"),
            },
            description="Who changed what, when; newest first.",
            parameters=[EXTERNAL_ID, LIMIT, CURSOR],
        ),
        _account_op(
            "GET",
            f"{acct}/preferences",
            "An account's digest and newsletter preferences",
            {
                200: answer(
                    answers.CurrentPreferences,
                    "the preferences",
                    example={**_PREFERENCES, "next_digest_at": _TIME},
                ),
                404: _NO_ACCOUNT,
            },
            description="With `next_digest_at`, when the next digest is due (null: none scheduled).",
        ),
        _account_op(
            "PUT",
            f"{acct}/preferences",
            "Change preferences",
            {
                200: answer(answers.CurrentPreferences, "the preferences now in force"),
                404: _NO_ACCOUNT,
                422: _INVALID,
            },
            description="Any of the preferences; fields left out keep their value (`categories` "
            "is merged per category, `null` removing a choice; choosing `off` for a required "
            "category is a 422 naming `categories.<key>.frequency`), and "
            "`next_digest_at` (from GET) may be sent back and is ignored. Validated together; "
            "audited; a change of newsletter is a consent record; the open digest window is rescheduled.",
            request=Body(Preferences, example={"digest_frequency": "weekly", "newsletter": True}),
        ),
    ]


def _inbox_operations() -> list[Operation]:
    acct = "/v1/accounts/{external_id}"
    created = {"accepted": 1, "rejected": 0, "results": [{"index": 0, "status": 201, "id": 9001}]}
    return [
        Operation(
            "POST",
            f"{acct}/messages",
            "intake",
            "Post one message into an inbox",
            {
                201: answer(answers.Message, "created", _CREATED_HEADERS, example=MESSAGE_EXAMPLE),
                404: problem("no such account; nothing was written"),
            },
            scope="messages",
            parameters=[EXTERNAL_ID],
            request=Body(inbox.NewMessage, example=_NEW_MESSAGE),
            idempotent=True,
        ),
        Operation(
            "POST",
            "/v1/messages",
            "intake",
            "Post many messages, for many accounts",
            {
                201: answer(answers.BatchAnswer, "every item accepted", REPLAYED, example=created),
                207: answer(answers.BatchAnswer, "some items not accepted: see `results`", REPLAYED),
                413: problem(f"more than {inbox.MAX_BATCH} messages, or the body is too large"),
            },
            scope="messages",
            description=f"Up to {inbox.MAX_BATCH} messages. Each item is answered in `results` "
            "(same order, with its `index`): 201 and the new `id`, 404 for an unknown account, 422 "
            "with `errors`. Valid items are stored together in one statement, whatever the others. "
            "The answer is 201 when every item was accepted, 207 when any was not.",
            request=Body(inbox.BatchRequest, example={"messages": [{"account": "reg-1042", **_NEW_MESSAGE}]}),
            idempotent=True,
        ),
        Operation(
            "GET",
            f"{acct}/messages",
            "inbox",
            "The inbox, newest first",
            {
                200: answer(
                    answers.InboxPage, "a page", example={"items": [MESSAGE_EXAMPLE], "next_cursor": None}
                ),
                404: _NO_ACCOUNT,
                422: _BAD_QUERY,
            },
            scope="messages",
            description="Keyset pagination: pass `next_cursor` as `cursor` until it is null.",
            parameters=[
                EXTERNAL_ID,
                LIMIT,
                CURSOR,
                Param("unread", "query", {"type": "boolean", "default": False}, "only unread messages"),
                CATEGORY,
                Param(
                    "archived",
                    "query",
                    {"enum": ["exclude", "include", "only"], "default": "exclude"},
                    "archived messages",
                ),
            ],
        ),
        Operation(
            "GET",
            f"{acct}/messages/unread-counts",
            "inbox",
            "Unread messages per category",
            {
                200: answer(
                    answers.UnreadCounts, "counts", example={"total": 3, "categories": {"blog": 1, "news": 2}}
                ),
                404: _NO_ACCOUNT,
            },
            scope="messages",
            description="Archived messages do not count.",
            parameters=[EXTERNAL_ID],
        ),
        Operation(
            "POST",
            f"{acct}/messages/read-all",
            "inbox",
            "Mark all unread messages read",
            {
                200: answer(answers.MarkedRead, "how many were marked", example={"marked_read": 5}),
                404: _NO_ACCOUNT,
                422: _BAD_QUERY,
            },
            scope="messages",
            parameters=[
                EXTERNAL_ID,
                CATEGORY,
                Param("up_to", "query", {"type": "integer"}, "only messages with this id or lower"),
            ],
        ),
        _message_op("GET", f"{acct}/messages/{{id}}", "One message", "Archived messages too."),
        _message_op(
            "POST",
            f"{acct}/messages/{{id}}/read",
            "Mark a message read",
            "Idempotent: keeps the first read time.",
        ),
        _message_op("POST", f"{acct}/messages/{{id}}/unread", "Mark a message unread", ""),
        _message_op(
            "POST",
            f"{acct}/messages/{{id}}/archive",
            "Archive a message",
            "Idempotent. Archived messages leave the listing, unread counts and digests.",
        ),
    ]


def _service_operations() -> list[Operation]:
    return [
        Operation(
            "POST",
            "/v1/service-messages",
            "service",
            "Send a service e-mail from a named template",
            {
                202: answer(
                    answers.ServiceMessageQueued,
                    "queued",
                    _CREATED_HEADERS,
                    example={"id": 311, "status": "queued", "template": "welcome"},
                ),
                404: _NO_ACCOUNT,
            },
            scope="service",
            description="Rendered once to validate (an unknown template or a missing variable is a "
            "422 naming it), stored in the outbox and sent at once by the service queue.",
            request=Body(service.ServiceMessageIn, example={"account": "reg-1042", "template": "welcome"}),
            idempotent=True,
        ),
        Operation(
            "GET",
            "/v1/service-messages/{id}",
            "service",
            "Where a service e-mail is",
            {200: answer(answers.ServiceMessage, "its state"), 404: problem("no such service message")},
            scope="service",
            parameters=[Param("id", "path", {"type": "integer"}, "the id from the POST")],
        ),
    ]


def _operations_routes() -> list[Operation]:
    def op(method: str, path: str, summary: str, answers_: dict[int | str, Answer]) -> Operation:
        return Operation(method, path, "operations", summary, answers_)

    return [
        op("GET", "/healthz", "Liveness", {200: answer(answers.Liveness, "the process answers")}),
        op(
            "GET",
            "/readyz",
            "Readiness: PostgreSQL and Redis answer",
            {
                200: answer(answers.Readiness, "ready"),
                503: answer(answers.Readiness, "a backing service does not answer"),
            },
        ),
        op(
            "GET",
            "/metrics",
            "Prometheus metrics of this process",
            {200: text("text/plain", "text exposition format", "string")},
        ),
        op("GET", "/openapi.json", "This document", {200: text(JSON, "OpenAPI 3.1", "object")}),
        op("GET", "/docs", "This document as a readable page", {200: text("text/html", "HTML", "string")}),
    ]


def _inbound_operations() -> list[Operation]:
    return [
        Operation(
            "POST",
            "/v1/inbound/mime",
            "deliverability",
            "Read one inbound message: a bounce, delay, complaint or mailto unsubscribe",
            {
                200: answer(
                    inbound.InboundResult,
                    "what the message did (`ignored`, with why, for anything not ours)",
                    example={"action": "bounced", "email_id": 4711, "recorded": True, "suppressed": ["all"]},
                ),
                400: problem("an empty body, or a `recipient` that is not one printable address"),
                413: problem("the message is larger than NOTIFIER_INBOUND_MAX_BYTES"),
                415: problem("the body is not a message (`message/rfc822`)"),
            },
            scope="admin",
            description="For an MTA pipe: the raw message as the MTA received it, with the envelope "
            "recipient as `?recipient=` when the MTA passes it. RFC 3464 delivery-status reports, "
            "RFC 5965 feedback reports and mail to the unsubscribe mailto are applied; auto-replies "
            "and messages not tied to an e-mail of ours (by its signed return path or Message-ID) "
            "are ignored. See docs/deliverability.md.",
            parameters=[
                Param(
                    "recipient",
                    "query",
                    {"type": "string", "maxLength": 320},
                    "the envelope recipient (the VERP return path the report was sent to)",
                )
            ],
            request=Body({"type": "string"}, inbound.MEDIA[:1]),
        )
    ]


def operations() -> list[Operation]:
    """The core routes described: accounts and preferences, intake and the inbox, service mail,
    operations."""
    return [
        *_account_operations(),
        *_inbox_operations(),
        *_service_operations(),
        *_inbound_operations(),
        *_operations_routes(),
    ]
