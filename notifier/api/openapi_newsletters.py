"""The newsletters API in the OpenAPI document (`/openapi.json`).

Written by hand here: what each operation does, its parameters, statuses and examples; the bodies'
schemas come from the models of `newsletter_api` (requests) and `answers` (answers)."""

from __future__ import annotations

from typing import Any

from notifier import answers, i18n, newsletter
from notifier.api.newsletters import (
    MAX_TEST_RECIPIENTS,
    NewsletterIn,
    NewsletterPatch,
    NewsletterTemplateIn,
    NewsletterTemplatePatch,
    SendIn,
    TestSendIn,
)
from notifier.api.openapi import LOCATION, PAGE, RETRY_AFTER, Answer, Body, Operation, Param, answer, problem

NEWSLETTER_ID = Param("id", "path", {"type": "string"}, "the newsletter's id", example="12")

_DRAFT = {
    "subject": "News for {{ first_name }}",
    "preheader": "What happened in November",
    "body": "Hello {{ first_name }},\n\n...",
    "body_format": "markdown",
}
_TIME = "2026-12-01T09:30:00+00:00"
NEWSLETTER_EXAMPLE = {
    "id": 12,
    **_DRAFT,
    "status": "draft",
    "recipients": None,
    "scheduled_at": None,
    "started_at": None,
    "finished_at": None,
    "cancelled_at": None,
    "failure": None,
    "track_clicks": False,
    "local_time": None,
    "local_date": None,
    "created_by": "api_key:marketing",
    "created_at": _TIME,
    "updated_at": _TIME,
}

_INVALID = problem("invalid fields, or a template that does not render (field `subject` or `body`)")
_MISSING = problem("no newsletter with that id")
_CONFLICT = problem("the newsletter's status does not allow this")


def _op(
    method: str, path: str, summary: str, description: str, answers_: dict[int | str, Answer], **kw: Any
) -> Operation:
    """An operation under the `newsletters` tag and scope, by default on one newsletter."""
    kw.setdefault("parameters", [NEWSLETTER_ID])
    return Operation(
        method, path, "newsletters", summary, answers_, scope="newsletters", description=description, **kw
    )


def operations() -> list[Operation]:
    """The newsletter routes described."""
    base = "/v1/newsletters/{id}"
    one = answers.Newsletter
    return [
        _op(
            "POST",
            "/v1/newsletters",
            "Create a draft",
            "Subject and body are Jinja templates rendered in a sandbox; a syntax error or an unknown "
            "variable is a 422 naming the field. See docs/newsletters.md.",
            {201: answer(one, "the draft", LOCATION, example=NEWSLETTER_EXAMPLE), 422: _INVALID},
            parameters=[],
            request=Body(NewsletterIn, example=_DRAFT),
        ),
        _op(
            "GET",
            "/v1/newsletters",
            "List newsletters",
            "Newest first, keyset-paginated: pass `next_cursor` as `cursor` until it is null.",
            {
                200: answer(
                    answers.NewsletterPage,
                    "a page",
                    example={"items": [NEWSLETTER_EXAMPLE], "next_cursor": None},
                ),
                422: problem("bad status, limit or cursor"),
            },
            parameters=[
                Param(
                    "status", "query", {"enum": list(newsletter.STATUSES)}, "only newsletters in this status"
                ),
                *PAGE,
            ],
        ),
        _op(
            "GET",
            base,
            "A newsletter and its figures",
            "Figures come from the outbox rows and events, live while it sends; `figures.waiting` "
            "and `next_due_at` show a local-time send's recipients still waiting for their hour; "
            "`clicks` each counted link's clicks per day (never by whom).",
            {200: answer(one, "the newsletter"), 404: _MISSING},
        ),
        _op(
            "PATCH",
            base,
            "Edit a draft",
            "Only drafts can be edited; fields left out keep their value.",
            {200: answer(one, "the draft"), 404: _MISSING, 409: _CONFLICT, 422: _INVALID},
            request=Body(NewsletterPatch, example={"subject": "December news for {{ first_name }}"}),
        ),
        _op(
            "GET",
            f"{base}/preview",
            "Preview",
            "As the member `account` would get it (their name, sample links): `account` needs a key that "
            "may read accounts (`accounts` or `admin` scope). Sample data without it. "
            "With `format=html`, the HTML itself, as an inert document.",
            {
                200: Answer(
                    "subject, HTML and text (JSON); with `format=html`, the HTML itself",
                    Body(answers.NewsletterPreview),
                    alternative=Body({"type": "string"}, ("text/html",)),
                ),
                403: problem("the API key lacks the `newsletters` scope, or `account` without `accounts`"),
                404: problem("no such newsletter or account"),
                422: _INVALID,
            },
            parameters=[
                NEWSLETTER_ID,
                Param("account", "query", {"type": "string"}, "the external_id of a member to preview for"),
                Param("format", "query", {"enum": ["json", "html"]}, "`html`: the HTML body itself"),
                Param(
                    "locale",
                    "query",
                    {"enum": list(i18n.LOCALES)},
                    "as members of that language get it: its variant if any, the footer in it",
                ),
            ],
        ),
        _op(
            "POST",
            f"{base}/test",
            "Test-send",
            f"To up to {MAX_TEST_RECIPIENTS} addresses, subject prefixed [TEST]; the e-mails go "
            "through the outbox like any other. Only to members subscribed to the newsletter or "
            "addresses at the test-send domains (NOTIFIER_TEST_SEND_DOMAINS), none suppressed; at most "
            "NOTIFIER_TEST_SEND_PER_HOUR recipients an hour per API key.",
            {
                202: answer(answers.TestSendQueued, "queued", example={"emails": [401, 402]}),
                404: _MISSING,
                422: problem("an address that may not get test-sends (named in `errors`), or invalid fields"),
                429: problem("the API key's test-sends this hour are used up", RETRY_AFTER),
                503: problem("Redis, which counts test-sends, is unavailable", RETRY_AFTER),
            },
            request=Body(TestSendIn, example={"to": ["marketing@example.org"]}),
        ),
        _op(
            "POST",
            f"{base}/send",
            "Send now or schedule",
            "No body or a past `at`: sending starts (202). A future `at`: scheduled (200). "
            "`local_time` and `date`: the audience is frozen now (202) and each member gets it at "
            "that time on that date in their own time zone; a date past in every zone is a 422.",
            {
                200: answer(one, "scheduled"),
                202: answer(one, "sending starts"),
                404: _MISSING,
                409: _CONFLICT,
                422: _INVALID,
            },
            request=Body(SendIn, example={"at": "2026-12-03T09:00:00+01:00"}),
            request_required=False,
        ),
        _op(
            "POST",
            f"{base}/unschedule",
            "Back to draft",
            "Only a scheduled newsletter.",
            {200: answer(one, "the draft"), 404: _MISSING, 409: _CONFLICT},
        ),
        _op(
            "POST",
            f"{base}/cancel",
            "Cancel",
            "Rows not yet claimed are cancelled.",
            {200: answer(one, "cancelled, with figures"), 404: _MISSING, 409: _CONFLICT},
        ),
        *template_operations(),
    ]


TEMPLATE_ID = Param("id", "path", {"type": "string"}, "the template's id", example="3")
_TEMPLATE = {"name": "Monthly news", **_DRAFT}
TEMPLATE_EXAMPLE = {
    "id": 3,
    **_TEMPLATE,
    "created_by": "api_key:marketing",
    "updated_by": "api_key:marketing",
    "created_at": _TIME,
    "updated_at": _TIME,
}
_NO_TEMPLATE = problem("no newsletter template with that id")


def template_operations() -> list[Operation]:
    """The newsletter template routes described."""
    base = "/v1/newsletter-templates"
    one = answers.NewsletterTemplate
    with_id = {"parameters": [TEMPLATE_ID]}
    return [
        _op(
            "POST",
            base,
            "Save a newsletter template",
            "A named subject, preheader and body that drafts start from; checked like a draft's "
            "(a template that does not render is a 422 naming the field). 409 when the name is taken.",
            {
                201: answer(one, "the template", LOCATION, example=TEMPLATE_EXAMPLE),
                409: problem("another template has that name"),
                422: _INVALID,
            },
            parameters=[],
            request=Body(NewsletterTemplateIn, example=_TEMPLATE),
        ),
        _op(
            "GET",
            base,
            "List newsletter templates",
            "Newest first, keyset-paginated: pass `next_cursor` as `cursor` until it is null.",
            {
                200: answer(
                    answers.NewsletterTemplatePage,
                    "a page",
                    example={"items": [TEMPLATE_EXAMPLE], "next_cursor": None},
                ),
                422: problem("bad limit or cursor"),
            },
            parameters=list(PAGE),
        ),
        _op(
            "GET",
            f"{base}/{{id}}",
            "A newsletter template",
            "",
            {200: answer(one, "the template"), 404: _NO_TEMPLATE},
            **with_id,
        ),
        _op(
            "PATCH",
            f"{base}/{{id}}",
            "Edit a newsletter template",
            "Fields left out keep their value; drafts already started from it keep their copy.",
            {
                200: answer(one, "the template"),
                404: _NO_TEMPLATE,
                409: problem("another template has that name"),
                422: _INVALID,
            },
            request=Body(NewsletterTemplatePatch, example={"name": "Monthly news (2027)"}),
            **with_id,
        ),
        _op(
            "DELETE",
            f"{base}/{{id}}",
            "Delete a newsletter template",
            "Drafts started from it are not touched.",
            {204: Answer("deleted"), 404: _NO_TEMPLATE},
            **with_id,
        ),
        _op(
            "POST",
            f"{base}/{{id}}/draft",
            "Start a draft from a template",
            "A new newsletter draft holding a copy of the template's subject, preheader and body.",
            {
                201: answer(answers.Newsletter, "the new draft", LOCATION, example=NEWSLETTER_EXAMPLE),
                404: _NO_TEMPLATE,
            },
            **with_id,
        ),
    ]
