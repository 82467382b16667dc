"""The newsletters API in the OpenAPI document (`/openapi.json`): operations and schemas, the
request bodies taken from the pydantic models that validate them."""

from __future__ import annotations

from typing import Any

from notifier import newsletter, openapi
from notifier.newsletter_api import NewsletterIn, NewsletterPatch, SendIn, TestSendIn
from notifier.openapi import TIMESTAMP, nullable, ok, page, param, problem, ref, secured


def describe() -> None:
    """Add the newsletter routes' operations and schemas to the OpenAPI document (idempotent)."""

    def op(
        summary: str,
        description: str,
        responses: dict[str, Any],
        body: str | None = None,
        path_id: bool = True,
        query: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        out = secured(
            "newsletters",
            {"summary": summary, "description": description, "tags": ["newsletters"], "responses": responses},
        )
        params = [param("id", "path", {"type": "string"}, "the newsletter's id")] if path_id else []
        params += query or []
        if params:
            out["parameters"] = params
        if body:
            out["requestBody"] = {
                "required": body != "SendNewsletter",
                "content": {openapi.JSON: {"schema": ref(body)}},
            }
        return out

    timestamp = nullable(TIMESTAMP)
    count = {"type": "integer", "minimum": 0}
    figures = (
        "recipients",
        "sent",
        "failed",
        "suppressed",
        "pending",
        "cancelled",
        "bounced",
        "complained",
        "unsubscribed",
        "resubscribed",
    )
    openapi.SCHEMAS.update(
        {
            "NewNewsletter": NewsletterIn.model_json_schema(),
            "NewsletterPatch": NewsletterPatch.model_json_schema(),
            "SendNewsletter": SendIn.model_json_schema(),
            "TestSend": TestSendIn.model_json_schema(),
            "NewsletterFigures": {
                "type": "object",
                "required": list(figures),
                "properties": dict.fromkeys(figures, count),
            },
            "Newsletter": {
                "type": "object",
                "required": ["id", "subject", "preheader", "body", "body_format", "status"],
                "properties": {
                    "id": {"type": "integer"},
                    "subject": {"type": "string"},
                    "preheader": {"type": "string"},
                    "body": {"type": "string"},
                    "body_format": {"enum": ["markdown", "html"]},
                    "status": {"enum": list(newsletter.STATUSES)},
                    "recipients": {**nullable(count), "description": "audience frozen when sending started"},
                    "scheduled_at": timestamp,
                    "started_at": timestamp,
                    "finished_at": timestamp,
                    "cancelled_at": timestamp,
                    "created_at": timestamp,
                    "updated_at": timestamp,
                    "created_by": nullable({"type": "string"}),
                    "figures": ref("NewsletterFigures"),
                },
            },
            "NewsletterPage": page("items", "Newsletter", closed=False),
            "NewsletterPreview": {
                "type": "object",
                "required": ["subject", "html", "text"],
                "properties": {
                    "subject": {"type": "string"},
                    "html": {"type": "string"},
                    "text": {"type": "string"},
                },
            },
        }
    )
    invalid = problem("invalid fields, or a template that does not render (field `subject` or `body`)")
    missing = problem("no newsletter with that id")
    conflict = problem("the newsletter's status does not allow this")
    base = "/v1/newsletters/{id}"
    openapi.OPERATIONS.update(
        {
            ("POST", "/v1/newsletters"): op(
                "Create a draft",
                "Subject and body are Jinja templates rendered in a sandbox; see docs/newsletters.md.",
                {"201": ok("Newsletter", "the draft"), "422": invalid},
                "NewNewsletter",
                path_id=False,
            ),
            ("GET", "/v1/newsletters"): op(
                "List newsletters",
                "Newest first, keyset-paginated.",
                {"200": ok("NewsletterPage", "a page"), "422": problem("bad status, limit or cursor")},
                path_id=False,
                query=[
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"enum": list(newsletter.STATUSES)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
            ),
            ("GET", base): op(
                "A newsletter and its figures",
                "Figures come from the outbox rows and events, live while it sends.",
                {"200": ok("Newsletter", "the newsletter"), "404": missing},
            ),
            ("PATCH", base): op(
                "Edit a draft",
                "Only drafts can be edited.",
                {"200": ok("Newsletter", "the draft"), "404": missing, "409": conflict, "422": invalid},
                "NewsletterPatch",
            ),
            ("GET", f"{base}/preview"): op(
                "Preview",
                "As the member `account` would get it (their name, sample links): `account` needs a key "
                "that may read accounts (`accounts` or `admin` scope). Sample data without it.",
                {
                    "200": ok("NewsletterPreview", "subject, HTML and text"),
                    "403": problem(
                        "the API key lacks the `newsletters` scope, or `account` without `accounts`"
                    ),
                    "404": problem("no such newsletter or account"),
                    "422": invalid,
                },
                query=[
                    {"name": "account", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "schema": {"enum": ["json", "html"]},
                    },
                ],
            ),
            ("POST", f"{base}/test"): op(
                "Test-send",
                "To up to 10 addresses, subject prefixed [TEST]: members subscribed to the newsletter or "
                "addresses at the test-send domains (NOTIFIER_TEST_SEND_DOMAINS), none suppressed; at most "
                "NOTIFIER_TEST_SEND_PER_HOUR recipients an hour per API key.",
                {
                    "202": {
                        "description": "queued",
                        "content": {
                            openapi.JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {"emails": {"type": "array", "items": {"type": "integer"}}},
                                }
                            }
                        },
                    },
                    "404": missing,
                    "422": problem(
                        "an address that may not get test-sends (named in `errors`), or invalid fields"
                    ),
                    "429": problem("the API key's test-sends this hour are used up", openapi.RETRY_AFTER),
                    "503": problem("Redis, which counts test-sends, is unavailable", openapi.RETRY_AFTER),
                },
                "TestSend",
            ),
            ("POST", f"{base}/send"): op(
                "Send now or schedule",
                "No body or a past `at`: sending starts (202). A future `at`: scheduled (200).",
                {
                    "200": ok("Newsletter", "scheduled"),
                    "202": ok("Newsletter", "sending starts"),
                    "404": missing,
                    "409": conflict,
                    "422": invalid,
                },
                "SendNewsletter",
            ),
            ("POST", f"{base}/unschedule"): op(
                "Back to draft",
                "Only a scheduled newsletter.",
                {"200": ok("Newsletter", "the draft"), "404": missing, "409": conflict},
            ),
            ("POST", f"{base}/cancel"): op(
                "Cancel",
                "Rows not yet claimed are cancelled.",
                {"200": ok("Newsletter", "cancelled, with figures"), "404": missing, "409": conflict},
            ),
        }
    )
