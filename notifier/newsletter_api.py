"""The newsletters API (scope `newsletters`): draft, edit, list, follow, preview, test-send,
send now or schedule, cancel. The domain lives in notifier.newsletter."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from notifier import mail, newsletter, outbox, queues
from notifier.auth import api_key_of, requires
from notifier.db import Q
from notifier.newsletter_render import Draft, Rendered, TemplateProblem, sample_personal
from notifier.pagination import decode_cursor, encode_cursor, page_limit
from notifier.problems import Problem, read_model
from notifier.resources import POOL, REDIS, RENDER_POOL, SETTINGS

MAX_BODY_CHARS = 512 * 1024
MAX_TEST_RECIPIENTS = 10


def _one_line(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("must be one line")
    return value


class NewsletterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=300)
    preheader: str = Field(default="", max_length=300)
    body: str = Field(min_length=1, max_length=MAX_BODY_CHARS)
    body_format: Literal["markdown", "html"] = "markdown"

    _lines = field_validator("subject", "preheader")(_one_line)


class NewsletterPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str | None = Field(default=None, min_length=1, max_length=300)
    preheader: str | None = Field(default=None, max_length=300)
    body: str | None = Field(default=None, min_length=1, max_length=MAX_BODY_CHARS)
    body_format: Literal["markdown", "html"] | None = None

    @field_validator("subject", "preheader")
    @classmethod
    def _lines(cls, value: str | None) -> str | None:
        return None if value is None else _one_line(value)


class SendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: datetime | None = Field(default=None, description="when to send; absent or past: now")

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a time zone offset, e.g. 2026-12-01T09:00:00+01:00")
        return value


class TestSendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: list[EmailStr] = Field(min_length=1, max_length=MAX_TEST_RECIPIENTS)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _json(row: Mapping[str, Any], figures: Mapping[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": row["id"],
        "subject": row["subject"],
        "preheader": row["preheader"],
        "body": row["body"],
        "body_format": row["body_format"],
        "status": row["status"],
        "recipients": row["recipients"],
        "scheduled_at": _iso(row["scheduled_at"]),
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "cancelled_at": _iso(row["cancelled_at"]),
        "created_by": row["created_by"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }
    if figures is not None:
        body["figures"] = dict(figures)
    return body


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
    await render_draft(request, draft)


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise Problem(404, "no newsletter with that id")
    return int(raw)


async def _get(request: web.Request) -> Any:
    row = await request.app[POOL].fetchrow(Q.get_newsletter, _id(request))
    if row is None:
        raise Problem(404, "no newsletter with that id")
    return row


@requires("newsletters")
async def create_newsletter(request: web.Request) -> web.Response:
    """A new draft. Its templates are checked: a syntax error or unknown variable is a 422."""
    body = await read_model(request, NewsletterIn)
    await _check(request, Draft(0, body.subject, body.preheader, body.body, body.body_format))
    row = await request.app[POOL].fetchrow(
        Q.insert_newsletter,
        body.subject,
        body.preheader,
        body.body,
        body.body_format,
        str(api_key_of(request).actor),
    )
    assert row is not None
    return web.json_response(_json(row), status=201, headers={"Location": f"/v1/newsletters/{row['id']}"})


@requires("newsletters")
async def edit_newsletter(request: web.Request) -> web.Response:
    """Change a draft's subject, preheader, body or format; 409 once it is scheduled or later."""
    row = await _get(request)
    patch = await read_model(request, NewsletterPatch)
    merged = {**dict(row), **patch.model_dump(exclude_none=True)}
    await _check(
        request,
        Draft(row["id"], merged["subject"], merged["preheader"], merged["body"], merged["body_format"]),
    )
    updated = await request.app[POOL].fetchrow(
        Q.update_newsletter_draft,
        row["id"],
        merged["subject"],
        merged["preheader"],
        merged["body"],
        merged["body_format"],
        str(api_key_of(request).actor),
    )
    if updated is None:
        raise Problem(409, f"the newsletter is {row['status']}; only a draft can be edited")
    return web.json_response(_json(updated))


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
    items = [_json(r) for r in rows[:limit]]
    next_cursor = encode_cursor("newsletters", rows[limit - 1]["id"]) if len(rows) > limit else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


@requires("newsletters")
async def get_newsletter(request: web.Request) -> web.Response:
    """The newsletter with its figures, derived from its outbox rows and events (live while sending)."""
    row = await _get(request)
    figures = await newsletter.figures(request.app[POOL], row["id"])
    return web.json_response(_json(row, figures))


@requires("newsletters")
async def preview_newsletter(request: web.Request) -> web.Response:
    """The newsletter as `?account=EXTERNAL_ID` would get it (sample data without `account`):
    JSON `{subject, html, text}`, or the HTML itself with `?format=html`."""
    row = await _get(request)
    settings = request.app[SETTINGS]
    personal = sample_personal(settings)
    external_id = request.query.get("account")
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
    return web.json_response({"subject": out.subject, "html": out.html, "text": out.text})


@requires("newsletters")
async def test_send(request: web.Request) -> web.Response:
    """Send the newsletter as it stands to up to 10 addresses, subject prefixed `[TEST]`; the
    e-mails go through the outbox like any other (202 with their ids)."""
    row = await _get(request)
    body = await read_model(request, TestSendIn)
    await _check(request, newsletter.draft_of(row))
    ids = []
    addresses = list(dict.fromkeys(str(a) for a in body.to))
    for i, address in enumerate(addresses):
        try:
            mail.check_address(address)
        except mail.HeaderError as exc:
            raise Problem(
                422, "an address cannot be used", errors=[{"field": f"to.{i}", "message": str(exc)}]
            ) from None
    async with request.app[POOL].acquire() as conn, conn.transaction():
        for address in addresses:
            ids.append(
                await outbox.add(
                    conn,
                    kind="test",
                    to_address=address,
                    template=None,
                    newsletter_id=row["id"],
                    context={"name": ""},
                    queue=queues.SERVICE,
                )
            )
    await outbox.ring(request.app[REDIS], queues.SERVICE, len(ids))
    return web.json_response({"emails": ids}, status=202)


@requires("newsletters")
async def send_newsletter(request: web.Request) -> web.Response:
    """Send now (no body, or `at` absent or past) or schedule (`at` in the future). Sending is
    started by a bulk worker; follow it with GET. 202 when sending starts, 200 when scheduled,
    409 when the newsletter is already sending, sent or cancelled."""
    row = await _get(request)
    has_body = request.can_read_body and (request.content_length or 0) > 0
    body = await read_model(request, SendIn) if has_body else SendIn()
    await _check(request, newsletter.draft_of(row))
    now = datetime.now(UTC)
    at = body.at or now
    try:
        scheduled = await newsletter.schedule(
            request.app[POOL], row["id"], at, str(api_key_of(request).actor)
        )
    except newsletter.StateConflict:
        raise Problem(409, f"the newsletter is {row['status']}; it cannot be sent again") from None
    if at <= now:
        await request.app[REDIS].enqueue_job("newsletter_start", row["id"], _queue_name=queues.BULK)
        return web.json_response(_json(scheduled), status=202)
    return web.json_response(_json(scheduled))


@requires("newsletters")
async def unschedule_newsletter(request: web.Request) -> web.Response:
    """Take a scheduled newsletter back to draft (409 unless scheduled)."""
    row = await _get(request)
    updated = await request.app[POOL].fetchrow(
        Q.unschedule_newsletter, row["id"], str(api_key_of(request).actor)
    )
    if updated is None:
        raise Problem(409, f"the newsletter is {row['status']}; only a scheduled one can be unscheduled")
    return web.json_response(_json(updated))


@requires("newsletters")
async def cancel_newsletter(request: web.Request) -> web.Response:
    """Cancel a draft, scheduled or sending newsletter; recipients not yet sent to get nothing."""
    row = await _get(request)
    try:
        cancelled = await newsletter.cancel(request.app[POOL], row["id"], str(api_key_of(request).actor))
    except newsletter.StateConflict:
        raise Problem(409, f"the newsletter is {row['status']}; it cannot be cancelled") from None
    figures = await newsletter.figures(request.app[POOL], row["id"])
    return web.json_response(_json(cancelled, figures))


def setup_routes(app: web.Application) -> None:
    from notifier import newsletter_openapi

    newsletter_openapi.describe()
    app.router.add_post("/v1/newsletters", create_newsletter)
    app.router.add_get("/v1/newsletters", list_newsletters)
    app.router.add_get("/v1/newsletters/{id}", get_newsletter)
    app.router.add_patch("/v1/newsletters/{id}", edit_newsletter)
    app.router.add_get("/v1/newsletters/{id}/preview", preview_newsletter)
    app.router.add_post("/v1/newsletters/{id}/test", test_send)
    app.router.add_post("/v1/newsletters/{id}/send", send_newsletter)
    app.router.add_post("/v1/newsletters/{id}/unschedule", unschedule_newsletter)
    app.router.add_post("/v1/newsletters/{id}/cancel", cancel_newsletter)
