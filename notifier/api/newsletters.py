"""The newsletters API (scope `newsletters`): draft, edit, list, follow, preview, test-send,
send now or schedule, cancel. The domain lives in notifier.newsletter."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from redis import exceptions as redis_exceptions

from notifier import newsletter, newsletter_test_send, queues
from notifier.answers import Newsletter, NewsletterPage, NewsletterPreview, TestSendQueued
from notifier.api.auth import api_key_of, requires
from notifier.api.pagination import decode_cursor, next_cursor, page_limit
from notifier.api.problems import Problem, read_model
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.mail import outbox
from notifier.mail.newsletter_render import (
    Draft,
    Rendered,
    TemplateProblem,
    sample_personal,
)
from notifier.resources import POOL, REDIS, RENDER_POOL, SETTINGS
from notifier.validation import Instant, check_one_line

MAX_BODY_CHARS = 512 * 1024
MAX_TEST_RECIPIENTS = 10


class NewsletterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=300)
    preheader: str = Field(default="", max_length=300)
    body: str = Field(min_length=1, max_length=MAX_BODY_CHARS)
    body_format: Literal["markdown", "html"] = "markdown"

    _lines = field_validator("subject", "preheader")(check_one_line)


class NewsletterPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str | None = Field(default=None, min_length=1, max_length=300)
    preheader: str | None = Field(default=None, max_length=300)
    body: str | None = Field(default=None, min_length=1, max_length=MAX_BODY_CHARS)
    body_format: Literal["markdown", "html"] | None = None

    @field_validator("subject", "preheader")
    @classmethod
    def _lines(cls, value: str | None) -> str | None:
        return None if value is None else check_one_line(value)


class SendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: Instant | None = Field(default=None, description="when to send; absent or past: now")


class TestSendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: list[EmailStr] = Field(min_length=1, max_length=MAX_TEST_RECIPIENTS)


async def render_draft(
    request: web.Request, draft: Draft, personal: Mapping[str, Any] | None = None
) -> Rendered:
    """The draft rendered for `personal` (sample data by default) in the render pool, off the
    event loop and within the template budget; a template that does not render, or not within
    its budget, is a 422 naming the field."""
    settings = request.config_dict[SETTINGS]
    try:
        return await request.config_dict[RENDER_POOL].render(draft, personal or sample_personal(settings))
    except TemplateProblem as exc:
        raise Problem(
            422, "the newsletter does not render", errors=[{"field": exc.field, "message": exc.message}]
        ) from None


async def _check(request: web.Request, draft: Draft) -> None:
    """A 422 naming every field whose template does not render (subject and body at once),
    found in the render pool within the template budget."""
    problems = await request.config_dict[RENDER_POOL].problems(draft)
    if problems:
        errors = [{"field": field, "message": message} for field, message in problems.items()]
        raise Problem(422, "the newsletter does not render", errors=errors)


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise Problem(404, "no newsletter with that id")
    return int(raw)


async def _get(request: web.Request) -> Any:
    row = await newsletter.get(request.app[POOL], _id(request))
    if row is None:
        raise Problem(404, "no newsletter with that id")
    return row


@requires("newsletters")
async def create_newsletter(request: web.Request) -> web.Response:
    """A new draft. Its templates are checked: a syntax error or unknown variable is a 422."""
    body = await read_model(request, NewsletterIn)
    draft = Draft(0, body.subject, body.preheader, body.body, body.body_format)
    await _check(request, draft)
    row = await newsletter.create_draft(request.app[POOL], draft, str(api_key_of(request).actor))
    return json_response(201, Newsletter.of_row(row), {"Location": f"/v1/newsletters/{row['id']}"})


@requires("newsletters")
async def edit_newsletter(request: web.Request) -> web.Response:
    """Change a draft's subject, preheader, body or format; 409 once it is scheduled or later."""
    row = await _get(request)
    patch = await read_model(request, NewsletterPatch)
    merged = {**dict(row), **patch.model_dump(exclude_none=True)}
    draft = Draft(row["id"], merged["subject"], merged["preheader"], merged["body"], merged["body_format"])
    await _check(request, draft)
    updated = await newsletter.update_draft(request.app[POOL], draft, str(api_key_of(request).actor))
    if updated is None:
        raise Problem(409, f"the newsletter is {row['status']}; only a draft can be edited")
    return json_response(200, Newsletter.of_row(updated))


@requires("newsletters")
async def list_newsletters(request: web.Request) -> web.Response:
    """Newest first; `?status=` filters, `?limit=` and `?cursor=` page."""
    status = request.query.get("status") or None
    if status is not None and status not in newsletter.STATUSES:
        raise Problem(
            422,
            "unknown status",
            errors=[{"field": "status", "message": f"must be one of {', '.join(newsletter.STATUSES)}"}],
        )
    limit = page_limit(request)
    before = decode_cursor("newsletters", request.query.get("cursor"))
    rows = await request.app[POOL].fetch(Q.list_newsletters, before, status, limit + 1)
    items = [Newsletter.of_row(r) for r in rows[:limit]]
    return json_response(
        200, NewsletterPage(items=items, next_cursor=next_cursor("newsletters", rows, limit))
    )


@requires("newsletters")
async def get_newsletter(request: web.Request) -> web.Response:
    """The newsletter with its figures, derived from its outbox rows and events (live while sending)."""
    row = await _get(request)
    figures = await newsletter.figures(request.app[POOL], row["id"])
    return json_response(200, Newsletter.of_row(row, figures=figures))


@requires("newsletters")
async def preview_newsletter(request: web.Request) -> web.Response:
    """The newsletter as `?account=EXTERNAL_ID` would get it (sample data without `account`):
    JSON `{subject, html, text}`, or the HTML itself with `?format=html`.

    A member's name and address are account data: `?account=` needs a key that may also read
    accounts (`accounts` or `admin`); for any other key it is a 403 before anything is looked up,
    so the answer never says whether the account exists."""
    row = await _get(request)
    settings = request.app[SETTINGS]
    personal = sample_personal(settings)
    external_id = request.query.get("account")
    if external_id is not None and not api_key_of(request).allows("accounts"):
        raise Problem(
            403,
            "previewing as a member shows their name and address: it needs a key with the "
            "`accounts` scope; without `account` the preview uses a sample member",
        )
    if external_id:
        account = await request.app[POOL].fetchrow(Q.newsletter_account, external_id)
        if account is None:
            raise Problem(404, "no account with that external_id")
        name = account["name"]
        # The member's name and address, but not their signed links: a preview is shown to
        # marketing, and a working unsubscribe token is the member's to use.
        personal = {
            **personal,
            "name": name,
            "first_name": name.split(" ", 1)[0],
            "email": account["email"],
        }
    out = await render_draft(request, newsletter.draft_of(row), personal)
    if request.query.get("format") == "html":
        # Marketing's HTML may hold anything: shown as an inert document (no script, no forms).
        return web.Response(
            text=out.html,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src * data:"
            },
        )
    return json_response(200, NewsletterPreview(subject=out.subject, html=out.html, text=out.text))


@requires("newsletters")
async def test_send(request: web.Request) -> web.Response:
    """Send the newsletter as it stands to up to 10 addresses, subject prefixed `[TEST]`; the
    e-mails go through the outbox like any other (202 with their ids). Only to subscribed members
    or addresses at the test-send domains, none suppressed (422 naming each), and at most
    NOTIFIER_TEST_SEND_PER_HOUR recipients an hour per key (429); see newsletter_test_send."""
    row = await _get(request)
    body = await read_model(request, TestSendIn)
    await _check(request, newsletter.draft_of(row))
    given = [str(a) for a in body.to]
    addresses = list(dict.fromkeys(given))
    try:
        ids = await newsletter_test_send.queue(
            request.app[POOL],
            request.app[REDIS],
            request.app[SETTINGS],
            row["id"],
            addresses,
            f"key:{api_key_of(request).id}",
        )
    except newsletter_test_send.RecipientsRefused as exc:
        errors = [
            {"field": f"to.{given.index(addresses[r.index])}", "message": r.message} for r in exc.refusals
        ]
        raise Problem(422, "an address may not get test-sends", errors=errors) from None
    except newsletter_test_send.QuotaUsed as exc:
        raise Problem(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    except (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError):
        # The hourly count lives in Redis: without it no test-send goes out, rather than unlimited.
        raise Problem(
            503,
            "test-sends cannot be counted now (Redis is unavailable); retry shortly",
            headers={"Retry-After": "2"},
        ) from None
    await outbox.ring(request.app[REDIS], queues.SERVICE, len(ids))
    return json_response(202, TestSendQueued(emails=ids))


@requires("newsletters")
async def send_newsletter(request: web.Request) -> web.Response:
    """Send now (no body, or `at` absent or past) or schedule (`at` in the future). Sending is
    started by a bulk worker; follow it with GET. 202 when sending starts, 200 when scheduled,
    409 when the newsletter is already sending, sent or cancelled, or needs a second person's
    approval (NOTIFIER_FOUR_EYES_RECIPIENTS) that it does not have."""
    row = await _get(request)
    has_body = request.can_read_body and (request.content_length or 0) > 0
    body = await read_model(request, SendIn) if has_body else SendIn()
    await _check(request, newsletter.draft_of(row))
    settings = request.app[SETTINGS]
    if settings.four_eyes_recipients is not None and row["approved_at"] is None:
        recipients = await newsletter.audience_size(request.app[POOL], settings, row["id"])
        if newsletter.needs_approval(settings, recipients, row):
            raise Problem(
                409,
                f"the newsletter would go to {recipients} recipients: above {settings.four_eyes_recipients} "
                "it needs a second person's approval in the console first",
            )
    now = datetime.now(UTC)
    at = body.at or now
    try:
        scheduled = await newsletter.schedule(
            request.app[POOL], row["id"], at, str(api_key_of(request).actor)
        )
    except newsletter.StateConflict:
        raise Problem(409, f"the newsletter is {row['status']}; it cannot be sent again") from None
    if at <= now:
        await request.app[REDIS].enqueue_job(queues.NEWSLETTER_START_JOB, row["id"], _queue_name=queues.BULK)
        return json_response(202, Newsletter.of_row(scheduled))
    return json_response(200, Newsletter.of_row(scheduled))


@requires("newsletters")
async def unschedule_newsletter(request: web.Request) -> web.Response:
    """Take a scheduled newsletter back to draft (409 unless scheduled)."""
    row = await _get(request)
    updated = await newsletter.unschedule(request.app[POOL], row["id"], str(api_key_of(request).actor))
    if updated is None:
        raise Problem(409, f"the newsletter is {row['status']}; only a scheduled one can be unscheduled")
    return json_response(200, Newsletter.of_row(updated))


@requires("newsletters")
async def cancel_newsletter(request: web.Request) -> web.Response:
    """Cancel a draft, scheduled or sending newsletter; recipients not yet sent to get nothing."""
    row = await _get(request)
    try:
        cancelled = await newsletter.cancel(request.app[POOL], row["id"], str(api_key_of(request).actor))
    except newsletter.StateConflict:
        raise Problem(409, f"the newsletter is {row['status']}; it cannot be cancelled") from None
    figures = await newsletter.figures(request.app[POOL], row["id"])
    return json_response(200, Newsletter.of_row(cancelled, figures=figures))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/newsletters", create_newsletter)
    app.router.add_get("/v1/newsletters", list_newsletters)
    app.router.add_get("/v1/newsletters/{id}", get_newsletter)
    app.router.add_patch("/v1/newsletters/{id}", edit_newsletter)
    app.router.add_get("/v1/newsletters/{id}/preview", preview_newsletter)
    app.router.add_post("/v1/newsletters/{id}/test", test_send)
    app.router.add_post("/v1/newsletters/{id}/send", send_newsletter)
    app.router.add_post("/v1/newsletters/{id}/unschedule", unschedule_newsletter)
    app.router.add_post("/v1/newsletters/{id}/cancel", cancel_newsletter)
