"""The newsletters API (scope `newsletters`): draft, edit, list, follow, preview, test-send,
send now or schedule, cancel. The domain lives in notifier.newsletter."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from datetime import UTC, datetime, time
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, field_validator
from redis import exceptions as redis_exceptions

from notifier import (
    audience,
    clicks,
    i18n,
    newsletter,
    newsletter_local_time,
    newsletter_templates,
    newsletter_test_send,
    queues,
)
from notifier.answers import (
    AudienceCount,
    Newsletter,
    NewsletterPage,
    NewsletterPreview,
    NewsletterTemplate,
    NewsletterTemplatePage,
    TestSendQueued,
)
from notifier.api.auth import api_key_of, requires
from notifier.api.pagination import decode_cursor, next_cursor, page_limit
from notifier.api.problems import Problem, path_id, read_model
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.mail import outbox
from notifier.mail.newsletter_render import (
    Draft,
    Rendered,
    TemplateProblem,
    sample_personal,
)
from notifier.newsletter_local_time import LocalSend, parse_day, parse_local_time
from notifier.resources import POOL, REDIS, RENDER_POOL, SETTINGS
from notifier.validation import Instant, check_one_line

MAX_BODY_CHARS = 512 * 1024
MAX_TEST_RECIPIENTS = 10
TRACK_CLICKS = "count clicks per link and day, never by whom (docs/newsletters.md, Clicks)"


def _line_or_none(value: str | None) -> str | None:
    return None if value is None else check_one_line(value)


class VariantIn(BaseModel):
    """The newsletter for the members of one language (same body format as the newsletter)."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=300)
    preheader: str | None = Field(default=None, max_length=300)
    body: str = Field(min_length=1, max_length=MAX_BODY_CHARS)

    _lines = field_validator("subject", "preheader")(_line_or_none)


def _languages(value: dict[str, VariantIn] | None) -> dict[str, VariantIn] | None:
    unknown = sorted(k for k in value or {} if k not in i18n.LOCALES)
    if unknown:
        raise ValueError(f"unknown language {unknown[0]!r}; one of {', '.join(i18n.LOCALES)}")
    return value


Variants = dict[str, VariantIn]


class NewsletterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=300)
    preheader: str = Field(default="", max_length=300)
    body: str = Field(min_length=1, max_length=MAX_BODY_CHARS)
    body_format: Literal["markdown", "html"] = "markdown"
    track_clicks: bool = Field(default=False, description=TRACK_CLICKS)
    variants: Variants | None = Field(default=None, description="by language: what its members get instead")
    lists: list[str] = Field(
        default_factory=list, max_length=20, description="list keys; none: the default list `newsletter`"
    )
    segment: dict[str, Any] | None = Field(default=None, description="an inline segment rule")
    segment_key: str | None = Field(default=None, max_length=40, description="a saved segment")

    _lines = field_validator("subject", "preheader")(check_one_line)
    _variant_languages = field_validator("variants")(_languages)

    def target(self) -> newsletter.Target:
        return newsletter.Target(tuple(self.lists), self.segment, self.segment_key)


class NewsletterPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str | None = Field(default=None, min_length=1, max_length=300)
    preheader: str | None = Field(default=None, max_length=300)
    body: str | None = Field(default=None, min_length=1, max_length=MAX_BODY_CHARS)
    body_format: Literal["markdown", "html"] | None = None
    track_clicks: bool | None = Field(default=None, description=TRACK_CLICKS)
    variants: Variants | None = Field(default=None, description="replaces every variant ({} removes them)")
    lists: list[str] | None = Field(default=None, max_length=20)
    segment: dict[str, Any] | None = Field(default=None, description="null removes the segment")
    segment_key: str | None = Field(default=None, max_length=40, description="null removes it")

    def target(self, row: Mapping[str, Any]) -> newsletter.Target | None:
        """The audience after this patch, or None when the patch leaves it alone."""
        given = self.model_fields_set & {"lists", "segment", "segment_key"}
        if not given:
            return None
        lists = self.lists if "lists" in given and self.lists is not None else row["lists"]
        segment = self.segment if "segment" in given else row["segment"]
        segment_key = self.segment_key if "segment_key" in given else row["segment_key"]
        if "segment" in given and self.segment is not None and "segment_key" not in given:
            segment_key = None  # a new inline rule replaces a saved one
        if "segment_key" in given and self.segment_key is not None and "segment" not in given:
            segment = None
        return newsletter.Target(tuple(lists), segment, segment_key)

    _lines = field_validator("subject", "preheader")(_line_or_none)
    _variant_languages = field_validator("variants")(_languages)


class NewsletterTemplateIn(NewsletterIn):
    """A template: a name and what a draft holds."""

    name: str = Field(min_length=1, max_length=100)

    _name = field_validator("name")(check_one_line)


class NewsletterTemplatePatch(NewsletterPatch):
    name: str | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("name")
    @classmethod
    def _one_line_name(cls, value: str | None) -> str | None:
        return None if value is None else check_one_line(value)


class SendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: Instant | None = Field(default=None, description="when to send; absent or past: now")
    local_time: Annotated[time, BeforeValidator(parse_local_time)] | None = Field(
        default=None,
        description="HH:MM: start now and deliver at this time in each member's time zone, on `date`",
        json_schema_extra={"type": "string", "example": "09:00"},
    )
    date: Annotated[dt.date, BeforeValidator(parse_day)] | None = Field(
        default=None,
        description="YYYY-MM-DD: the day of `local_time`",
        json_schema_extra={"example": "2026-12-10"},
    )

    def local(self, now: datetime) -> LocalSend | None:
        """The local-time send asked for, or None; Problem 422 naming the field that is wrong."""
        if self.local_time is None and self.date is None:
            return None
        errors = []
        if self.at is not None:
            errors.append({"field": "at", "message": "give either `at` or `local_time` and `date`, not both"})
        for name in ("local_time", "date"):
            if getattr(self, name) is None:
                errors.append({"field": name, "message": "is required with `local_time` and `date`"})
        if errors or self.local_time is None or self.date is None:
            raise Problem(422, "the send time is not valid", errors=errors)
        send = LocalSend(self.local_time, self.date)
        reason = send.problem(now)
        if reason:
            raise Problem(422, "the send time is not valid", errors=[{"field": "date", "message": reason}])
        return send


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


async def _check(
    request: web.Request, draft: Draft, variants: Mapping[str, Mapping[str, str]] | None = None
) -> None:
    """A 422 naming every field whose template does not render (subject and body at once, of the
    newsletter and of each language variant: `variants.de.body`), found in the render pool within
    the template budget."""
    errors = []
    for prefix, probe in [("", draft)] + [
        (f"variants.{locale}.", newsletter.for_language(draft, variants or {}, locale))
        for locale in sorted(variants or {})
    ]:
        problems = await request.config_dict[RENDER_POOL].problems(probe)
        errors += [{"field": prefix + field, "message": message} for field, message in problems.items()]
    if errors:
        raise Problem(422, "the newsletter does not render", errors=errors)


def _variants(variants: Variants | None) -> dict[str, dict[str, str]] | None:
    if variants is None:
        return None
    return {k: v.model_dump(exclude_none=True) for k, v in variants.items()}


async def _followed(request: web.Request, row: Any) -> Newsletter:
    """The newsletter with its figures, what still waits for its local time, and its clicks."""
    pool = request.app[POOL]
    figures = await newsletter.figures(pool, row["id"])
    _, next_due_at = await newsletter_local_time.waiting(pool, row["id"])
    return Newsletter.of_row(
        row, figures=figures, next_due_at=next_due_at, clicks=await clicks.per_link(pool, row["id"])
    )


async def _get(request: web.Request) -> Any:
    row = await newsletter.get(request.app[POOL], path_id(request, "newsletter"))
    if row is None:
        raise Problem(404, "no newsletter with that id")
    return row


@requires("newsletters")
async def create_newsletter(request: web.Request) -> web.Response:
    """A new draft. Its templates are checked: a syntax error or unknown variable is a 422."""
    body = await read_model(request, NewsletterIn)
    draft = Draft(0, body.subject, body.preheader, body.body, body.body_format)
    target = body.target()
    await audience.check_targeting(request.app[POOL], target.lists, target.segment, target.segment_key)
    variants = _variants(body.variants)
    await _check(request, draft, variants)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await newsletter.create_draft(
            conn, draft, str(api_key_of(request).actor), target, track_clicks=body.track_clicks
        )
        if variants:
            row = await newsletter.set_variants(conn, row["id"], variants)
    return json_response(201, Newsletter.of_row(row), {"Location": f"/v1/newsletters/{row['id']}"})


@requires("newsletters")
async def edit_newsletter(request: web.Request) -> web.Response:
    """Change a draft's subject, preheader, body or format; 409 once it is scheduled or later."""
    row = await _get(request)
    patch = await read_model(request, NewsletterPatch)
    merged = {**dict(row), **patch.model_dump(exclude_none=True, exclude={"variants"})}
    draft = Draft(row["id"], merged["subject"], merged["preheader"], merged["body"], merged["body_format"])
    target = patch.target(row)
    if target is not None:
        await audience.check_targeting(request.app[POOL], target.lists, target.segment, target.segment_key)
    variants = _variants(patch.variants)
    await _check(request, draft, row["variants"] if variants is None else variants)
    actor = str(api_key_of(request).actor)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        updated = await newsletter.update_draft(conn, draft, actor, track_clicks=merged["track_clicks"])
        if updated is not None and variants is not None:
            updated = await newsletter.set_variants(conn, row["id"], variants)
        if updated is not None and target is not None:
            updated = await newsletter.retarget(conn, row["id"], target, actor)
    if updated is None:
        raise Problem(409, f"the newsletter is {row['status']}; only a draft can be edited")
    return json_response(200, Newsletter.of_row(updated))


@requires("newsletters")
async def newsletter_audience(request: web.Request) -> web.Response:
    """How many members the newsletter would reach if sending started now (its lists and
    segment, minus the suppressed); once sending started, `recipients` is the frozen figure."""
    total = await audience.count_of(request.app[POOL], await _get(request))
    return json_response(200, AudienceCount(count=total))


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
    return json_response(200, await _followed(request, row))


@requires("newsletters")
async def preview_newsletter(request: web.Request) -> web.Response:
    """The newsletter as `?account=EXTERNAL_ID` would get it (sample data without `account`), in
    the variant and footer of `?locale=` (default: the newsletter itself, footer in English): JSON
    `{subject, html, text}`, or the HTML itself with `?format=html`.

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
    draft = newsletter.draft_of(row)
    locale = request.query.get("locale")
    if locale is not None:
        if locale not in i18n.LOCALES:
            raise Problem(
                422,
                "unknown language",
                errors=[{"field": "locale", "message": f"one of {', '.join(i18n.LOCALES)}"}],
            )
        draft = newsletter.for_language(draft, row["variants"], locale)
    out = await render_draft(request, draft, personal)
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
    """Send now (no body, or `at` absent or past) or schedule (`at` in the future); with
    `local_time` and `date`, start now and deliver to each member at that time in their own zone
    (422 naming the field when the date is past everywhere). Sending is started by a bulk worker;
    follow it with GET. 202 when sending starts, 200 when scheduled, 409 when the newsletter is
    already sending, sent or cancelled, or needs a second person's approval
    (NOTIFIER_FOUR_EYES_RECIPIENTS) that it does not have."""
    row = await _get(request)
    has_body = request.can_read_body and (request.content_length or 0) > 0
    body = await read_model(request, SendIn) if has_body else SendIn()
    await _check(request, newsletter.draft_of(row))
    settings = request.app[SETTINGS]
    if settings.four_eyes_recipients is not None and row["approved_at"] is None:
        recipients = await audience.count_of(request.app[POOL], row)
        if newsletter.needs_approval(settings, recipients, row):
            raise Problem(
                409,
                f"the newsletter would go to {recipients} recipients: above {settings.four_eyes_recipients} "
                "it needs a second person's approval in the console first",
            )
    now = datetime.now(UTC)
    local = body.local(now)
    at = body.at or now
    try:
        scheduled = await newsletter.schedule(
            request.app[POOL], row["id"], at, str(api_key_of(request).actor), local
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
    return json_response(200, await _followed(request, cancelled))


# --- templates a draft starts from ------------------------------------------------------------


def _draft_of(body: NewsletterIn) -> Draft:
    return Draft(0, body.subject, body.preheader, body.body, body.body_format)


@requires("newsletters")
async def create_template(request: web.Request) -> web.Response:
    """A new template; its subject and body must render (422 naming the field); 409 for a name in use."""
    body = await read_model(request, NewsletterTemplateIn)
    await _check(request, _draft_of(body))
    row = await newsletter_templates.create(
        request.app[POOL], body.name, _draft_of(body), str(api_key_of(request).actor)
    )
    return json_response(
        201, NewsletterTemplate.of_row(row), {"Location": f"/v1/newsletter-templates/{row['id']}"}
    )


@requires("newsletters")
async def list_templates(request: web.Request) -> web.Response:
    """Newest first; `?limit=` and `?cursor=` page."""
    limit = page_limit(request)
    before = decode_cursor("newsletter-templates", request.query.get("cursor"))
    rows = await request.app[POOL].fetch(Q.list_newsletter_templates, before, limit + 1)
    items = [NewsletterTemplate.of_row(r) for r in rows[:limit]]
    return json_response(
        200, NewsletterTemplatePage(items=items, next_cursor=next_cursor("newsletter-templates", rows, limit))
    )


@requires("newsletters")
async def get_template(request: web.Request) -> web.Response:
    row = await newsletter_templates.get(request.app[POOL], path_id(request, "newsletter template"))
    return json_response(200, NewsletterTemplate.of_row(row))


@requires("newsletters")
async def edit_template(request: web.Request) -> web.Response:
    """Change fields of a template (drafts already started from it keep their copy)."""
    row = await newsletter_templates.get(request.app[POOL], path_id(request, "newsletter template"))
    patch = await read_model(request, NewsletterTemplatePatch)
    merged = NewsletterTemplateIn.model_validate(
        {
            k: v
            for k, v in {**dict(row), **patch.model_dump(exclude_none=True)}.items()
            if k in NewsletterTemplateIn.model_fields
        }
    )
    await _check(request, _draft_of(merged))
    updated = await newsletter_templates.update(
        request.app[POOL], row["id"], merged.name, _draft_of(merged), str(api_key_of(request).actor)
    )
    return json_response(200, NewsletterTemplate.of_row(updated))


@requires("newsletters")
async def delete_template(request: web.Request) -> web.Response:
    """Delete a template; drafts started from it are not touched. 204."""
    await newsletter_templates.delete(request.app[POOL], path_id(request, "newsletter template"))
    return web.Response(status=204)


@requires("newsletters")
async def draft_from_template(request: web.Request) -> web.Response:
    """A new newsletter draft holding a copy of the template: 201 with the newsletter."""
    row = await newsletter_templates.start_draft(
        request.app[POOL], path_id(request, "newsletter template"), str(api_key_of(request).actor)
    )
    return json_response(201, Newsletter.of_row(row), {"Location": f"/v1/newsletters/{row['id']}"})


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/newsletters", create_newsletter)
    app.router.add_get("/v1/newsletters", list_newsletters)
    app.router.add_get("/v1/newsletters/{id}", get_newsletter)
    app.router.add_patch("/v1/newsletters/{id}", edit_newsletter)
    app.router.add_get("/v1/newsletters/{id}/preview", preview_newsletter)
    app.router.add_get("/v1/newsletters/{id}/audience", newsletter_audience)
    app.router.add_post("/v1/newsletters/{id}/test", test_send)
    app.router.add_post("/v1/newsletters/{id}/send", send_newsletter)
    app.router.add_post("/v1/newsletters/{id}/unschedule", unschedule_newsletter)
    app.router.add_post("/v1/newsletters/{id}/cancel", cancel_newsletter)
    app.router.add_post("/v1/newsletter-templates", create_template)
    app.router.add_get("/v1/newsletter-templates", list_templates)
    app.router.add_get("/v1/newsletter-templates/{id}", get_template)
    app.router.add_patch("/v1/newsletter-templates/{id}", edit_template)
    app.router.add_delete("/v1/newsletter-templates/{id}", delete_template)
    app.router.add_post("/v1/newsletter-templates/{id}/draft", draft_from_template)
