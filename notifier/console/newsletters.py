"""Console pages for newsletters: the list, compose with a live preview, test-send, send or
schedule, progress while sending, and figures over time afterwards.

Validation, rendering and the status machine are the newsletter feature's (`newsletter_api`'s
models, `newsletter_render`, `newsletter`); this module only turns forms into those calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import ValidationError

from notifier import audience, audit, clicks, newsletter, newsletter_local_time, newsletter_test_send, queues
from notifier.api.newsletters import MAX_BODY_CHARS, NewsletterIn, TestSendIn
from notifier.api.responses import json_response
from notifier.console import chart as console_chart
from notifier.console.ui import (
    form_of,
    number,
    pool_of,
    posted,
    redirect,
    redis_of,
    render,
    require_fresh,
    session_of,
    settings_of,
)
from notifier.db import Q
from notifier.errors import Problem
from notifier.mail import outbox
from notifier.mail.newsletter_render import Draft, TemplateProblem, sample_personal
from notifier.resources import RENDER_POOL
from notifier.validation import errors_of, parse_instant

LIST_LIMIT = 200
# While sending, the page reloads itself this often (seconds).
REFRESH_SECONDS = 5
# A scheduled newsletter's page looks for the start less often.
SCHEDULED_REFRESH_SECONDS = 30


async def _preview(request: web.Request, draft: Draft) -> tuple[str | None, str | None, dict[str, str]]:
    """(subject, HTML) of the draft for a sample member, or the template errors of every field;
    rendered in the render pool, off the event loop and within the template budget."""
    render_pool = request.config_dict[RENDER_POOL]
    try:
        out = await render_pool.render(draft, sample_personal(settings_of(request)))
    except TemplateProblem as exc:
        return None, None, (await render_pool.problems(draft)) or {exc.field: exc.message}
    return out.subject, out.html, {}


def _read_draft(form: Mapping[str, str]) -> tuple[NewsletterIn | None, dict[str, str]]:
    """The compose form as the API's model, or the errors by field."""
    data = {
        "subject": form.get("subject", "").strip(),
        "preheader": form.get("preheader", "").strip(),
        "body": form.get("body", ""),
        "body_format": form.get("body_format", "markdown"),
        "track_clicks": form.get("track_clicks") == "on",
    }
    try:
        return NewsletterIn.model_validate(data), {}
    except ValidationError as exc:
        return None, {e["field"]: e["message"] for e in errors_of(exc)}


def _clicks_field(form: Mapping[str, Any]) -> Mapping[str, Any]:
    """The form with `track_clicks` as a bool, whether it came from a row or a posted checkbox."""
    return {**form, "track_clicks": form.get("track_clicks") in (True, "on")}


def _draft_of(body: NewsletterIn, newsletter_id: int = 0) -> Draft:
    return Draft(newsletter_id, body.subject, body.preheader, body.body, body.body_format)


async def _newsletter(request: web.Request) -> asyncpg.Record:
    newsletter_id = number(request.match_info["id"])
    row = await newsletter.get(pool_of(request), newsletter_id) if newsletter_id else None
    if row is None:
        raise web.HTTPNotFound(text="There is no newsletter with that number.")
    return row


async def index(request: web.Request) -> web.Response:
    """GET /console/newsletters: every newsletter, newest first, with status and figures."""
    rows = await pool_of(request).fetch(Q.console_newsletters, LIST_LIMIT)
    return render(request, "newsletters.html", newsletters=rows, limit=LIST_LIMIT)


def _form_draft(form: Mapping[str, Any], newsletter_id: int = 0) -> Draft:
    """The form as it stands, valid or not, for previewing while the draft is written."""
    body_format = form.get("body_format", "markdown")
    return Draft(
        newsletter_id,
        str(form.get("subject", "")),
        str(form.get("preheader", "")),
        str(form.get("body", "")),
        body_format if body_format in ("markdown", "html") else "markdown",
    )


COMPOSE_FIELDS = ("subject", "preheader", "body", "body_format")


async def _compose(
    request: web.Request,
    *,
    row: asyncpg.Record | None,
    form: Mapping[str, Any],
    errors: dict[str, str],
    status: int = 200,
    segment_text: str | None = None,
) -> web.Response:
    # A posted form may lack any field (a hand-made request): the page shows each as empty.
    track_clicks = _clicks_field(form)["track_clicks"]
    form = {name: str(form.get(name, "")) for name in COMPOSE_FIELDS} | {"track_clicks": track_clicks}
    subject = html = None
    render_errors: dict[str, str] = {}
    if len(form["body"]) <= MAX_BODY_CHARS:
        subject, html, render_errors = await _preview(request, _form_draft(form, row["id"] if row else 0))
        errors = {**render_errors, **errors}
    targeting: dict[str, Any] = {}
    if row is not None:
        targeting = await _audience(request, row, segment_text, errors)
    return render(
        request,
        "newsletter_compose.html",
        status=status,
        row=row,
        form=form,
        errors=errors,
        preview_subject=subject,
        preview_html=html,
        preview_errors=render_errors,
        **targeting,
        **await _approval(request, row),
    )


async def _approval(request: web.Request, row: asyncpg.Record | None) -> dict[str, Any]:
    """What the approval and history panels need: the four-eyes limit (None: off), whether this
    person may approve (not the author or last editor), and who did what to the newsletter."""
    history = await pool_of(request).fetch(Q.console_newsletter_audit, row["id"], 50) if row else []
    me = audit.person_of(str(session_of(request).actor))
    authors = (
        {audit.person_of(row["created_by"] or ""), audit.person_of(row["updated_by"] or "")} if row else set()
    )
    return {
        "four_eyes": settings_of(request).four_eyes_recipients,
        "may_approve": me not in authors,
        "history": history,
    }


async def _audience(
    request: web.Request, row: asyncpg.Record, segment_text: str | None, errors: dict[str, str]
) -> dict[str, Any]:
    """The audience panel of a draft: every list, the chosen ones, the segment as text and how
    many members sending now would reach (None when the form's segment has errors)."""
    pool = pool_of(request)
    all_lists = await pool.fetch(Q.all_lists, False)
    chosen = list(row["lists"]) or [r["key"] for r in all_lists if r["is_default"]]
    count = None
    if "segment" not in errors:
        count = await audience.count_of(pool, row)
    if segment_text is None:
        segment_text = json.dumps(row["segment"], ensure_ascii=False) if row["segment"] is not None else ""
    return {
        "all_lists": all_lists,
        "chosen_lists": chosen,
        "segment_text": segment_text,
        "audience_count": count,
    }


class _AudienceForm:
    """The audience form (checked lists, segment as JSON text), checked as the API checks it;
    `list_ids`: the lists it names (none: the default list), once it is valid."""

    def __init__(
        self, keys: list[str], text: str, rule: Any, error: str | None, list_ids: list[int] | None = None
    ) -> None:
        self.keys, self.text, self.rule, self.error, self.list_ids = keys, text, rule, error, list_ids


async def _audience_form(request: web.Request) -> _AudienceForm:
    data = await posted(request)
    keys = [str(k) for k in data.getall("list", []) if isinstance(k, str)][:20]
    text = str(data.get("segment", "")).strip()
    try:
        rule = json.loads(text) if text else None
        list_ids, _ = await audience.check_targeting(pool_of(request), keys, rule, None)
    except ValueError:
        example = '{"attr": "country", "op": "eq", "value": "DE"}'
        return _AudienceForm(keys, text, None, f"not JSON: write a rule such as {example}")
    except Problem as exc:
        return _AudienceForm(
            keys, text, None, "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors or [])
        )
    return _AudienceForm(keys, text, rule, None, list_ids)


async def save_audience(request: web.Request) -> web.Response:
    """POST /console/newsletters/{id}/audience: the draft's lists and segment; the page again
    with the segment's faults (422) when it is not valid."""
    row = await _newsletter(request)
    posted_form = await _audience_form(request)
    if posted_form.error is not None:
        errors = {"segment": posted_form.error}
        return await _compose(
            request, row=row, form=dict(row), errors=errors, status=422, segment_text=posted_form.text
        )
    target = newsletter.Target(tuple(posted_form.keys), posted_form.rule, None)
    async with pool_of(request).acquire() as conn, conn.transaction():
        if await newsletter.retarget(conn, row["id"], target, str(session_of(request).actor)) is None:
            raise web.HTTPConflict(text=f"The newsletter is {row['status']}; only a draft can be changed.")
        await _audit(request, conn, row["id"], "targeted", lists=list(target.lists), segment=target.segment)
    raise redirect(f"/console/newsletters/{row['id']}", "audience-saved")


async def live_count(request: web.Request) -> web.Response:
    """POST /console/newsletters/count: how many members the audience form as it stands would
    reach now, as JSON for the page's script: `{count}`, or 422 `{error}`. Saves nothing."""
    posted_form = await _audience_form(request)
    if posted_form.error is not None or posted_form.list_ids is None:
        return json_response(422, {"error": posted_form.error})
    total = await audience.count(pool_of(request), posted_form.list_ids, posted_form.rule)
    return json_response(200, {"count": total})


async def new(request: web.Request) -> web.Response:
    """GET /console/newsletters/new: an empty compose form."""
    form = {"subject": "", "preheader": "", "body": "Hello {{ first_name }},\n\n", "body_format": "markdown"}
    return await _compose(request, row=None, form=form, errors={})


async def create(request: web.Request) -> web.Response:
    """POST /console/newsletters/new: preview (action=preview) or save a new draft."""
    form = await form_of(request)
    body, errors = _read_draft(form)
    if form.get("action") == "preview" or body is None:
        return await _compose(request, row=None, form=form, errors=errors, status=200 if body else 422)
    _, _, render_errors = await _preview(request, _draft_of(body))
    if render_errors:
        return await _compose(request, row=None, form=form, errors=render_errors, status=422)
    async with pool_of(request).acquire() as conn, conn.transaction():
        row = await newsletter.create_draft(
            conn, _draft_of(body), str(session_of(request).actor), track_clicks=body.track_clicks
        )
        await _audit(request, conn, row["id"], "created", subject=body.subject)
    raise redirect(f"/console/newsletters/{row['id']}", "created")


async def _audit(
    request: web.Request,
    conn: asyncpg.Connection | asyncpg.Pool,
    newsletter_id: int,
    action: str,
    **changes: Any,
) -> None:
    """Record what the person did to the newsletter (`newsletter.<action>`), shown on its page."""
    await audit.record(
        conn,
        None,
        session_of(request).actor,
        f"newsletter.{action}",
        {"newsletter_id": newsletter_id, **changes},
    )


async def show(request: web.Request) -> web.Response:
    """GET /console/newsletters/{id}: edit a draft, or follow and read the figures of the rest."""
    row = await _newsletter(request)
    if row["status"] == "draft":
        return await _compose(request, row=row, form=dict(row), errors={})
    pool = pool_of(request)
    figures = await newsletter.figures(pool, row["id"])
    chart = await console_chart.timeline(
        pool, row["id"], datetime.now(UTC) if row["status"] == "sending" else None
    )
    _, html, _ = await _preview(request, newsletter.draft_of(row))
    done = figures["sent"] + figures["failed"] + figures["suppressed"] + figures["cancelled"]
    _, next_due_at = await newsletter_local_time.waiting(pool, row["id"])
    return render(
        request,
        "newsletter.html",
        row=row,
        figures=figures,
        done=done,
        percent=round(100 * done / figures["recipients"]) if figures["recipients"] else 0,
        refresh={"sending": REFRESH_SECONDS, "scheduled": SCHEDULED_REFRESH_SECONDS}.get(row["status"]),
        chart_svg=None if chart.empty else console_chart.svg(chart, f"Newsletter {row['id']} over time"),
        chart=chart,
        legend=console_chart.legend(),
        preview_html=html,
        next_due_at=next_due_at,
        clicks=await clicks.per_link(pool, row["id"]),
        **await _approval(request, row),
    )


async def save(request: web.Request) -> web.Response:
    """POST /console/newsletters/{id}: preview (action=preview) or save the draft."""
    row = await _newsletter(request)
    form = await form_of(request)
    body, errors = _read_draft(form)
    if form.get("action") == "preview" or body is None:
        return await _compose(request, row=row, form=form, errors=errors, status=200 if body else 422)
    _, _, render_errors = await _preview(request, _draft_of(body, row["id"]))
    if render_errors:
        return await _compose(request, row=row, form=form, errors=render_errors, status=422)
    async with pool_of(request).acquire() as conn, conn.transaction():
        updated = await newsletter.update_draft(
            conn, _draft_of(body, row["id"]), str(session_of(request).actor), track_clicks=body.track_clicks
        )
        if updated is not None:
            changed = sorted(audit.diff(dict(row), body.model_dump()))
            await _audit(request, conn, row["id"], "edited", fields=changed)
    if updated is None:
        raise web.HTTPConflict(text=f"The newsletter is {row['status']}; only a draft can be edited.")
    raise redirect(f"/console/newsletters/{row['id']}", "saved")


async def live_preview(request: web.Request) -> web.Response:
    """POST /console/newsletters/preview: the form as it stands, rendered, as JSON for the live
    preview script: `{subject, html}`, or 422 with `errors` naming every field that is wrong
    (`render_errors`: those that stop the preview, then `html` is null)."""
    form = await form_of(request)
    if len(form.get("body", "")) > MAX_BODY_CHARS:
        too_long = {"body": "The body is too long."}
        return json_response(422, {"errors": too_long, "render_errors": too_long, "html": None})
    _, errors = _read_draft(form)
    subject, html, render_errors = await _preview(request, _form_draft(form))
    errors = {**render_errors, **errors}
    if errors:
        body = {"errors": errors, "render_errors": render_errors, "subject": subject, "html": html}
        return json_response(422, body)
    return json_response(200, {"subject": subject, "html": html})


async def test_send(request: web.Request) -> web.Response:
    """POST /console/newsletters/{id}/test: the newsletter as it stands to up to 10 addresses."""
    row = await _newsletter(request)
    form = await form_of(request)
    addresses = [a for a in form.get("to", "").replace(",", " ").split() if a]
    try:
        body = TestSendIn.model_validate({"to": addresses})
    except ValidationError:
        raise web.HTTPUnprocessableEntity(
            text="Give one to ten valid e-mail addresses, separated by commas or spaces."
        ) from None
    _, _, render_errors = await _preview(request, newsletter.draft_of(row))
    if render_errors:
        raise web.HTTPUnprocessableEntity(
            text="The newsletter does not render: " + "; ".join(render_errors.values())
        )
    addresses = list(dict.fromkeys(str(a) for a in body.to))
    try:
        ids = await newsletter_test_send.queue(
            pool_of(request),
            redis_of(request),
            settings_of(request),
            row["id"],
            addresses,
            session_of(request).quota_owner,
        )
    except newsletter_test_send.RecipientsRefused as exc:
        reasons = "; ".join(f"{addresses[r.index]} {r.message}" for r in exc.refusals)
        raise web.HTTPUnprocessableEntity(text=f"Nothing was sent: {reasons}.") from None
    except newsletter_test_send.QuotaUsed as exc:
        raise web.HTTPTooManyRequests(
            text=f"Nothing was sent: {exc}.", headers={"Retry-After": str(exc.retry_after)}
        ) from None
    await outbox.ring(redis_of(request), queues.SERVICE, len(ids))
    raise redirect(f"/console/newsletters/{row['id']}", "test-sent")


def _when(form: Mapping[str, str]) -> datetime | None:
    """The schedule time of the send form (UTC, `datetime-local`), None for now (and for a
    local-time send); ValueError naming what is wrong (the same bounds as the API's `at`)."""
    if form.get("when", "now") in ("now", "local"):
        return None
    return parse_instant(form.get("at", ""), naive="utc")


def _local(form: Mapping[str, str], now: datetime) -> newsletter_local_time.LocalSend | None:
    """The local-time send of the form (`when=local`), or None; ValueError naming what is wrong
    (the API's rules)."""
    if form.get("when") != "local":
        return None
    send = newsletter_local_time.LocalSend(
        newsletter_local_time.parse_local_time(form.get("local_time", "")),
        newsletter_local_time.parse_day(form.get("local_date", "")),
    )
    reason = send.problem(now)
    if reason:
        raise ValueError(reason)
    return send


async def send(request: web.Request) -> web.Response:
    """POST /console/newsletters/{id}/send: send now, schedule (`when=later`, `at` in UTC), or
    at each member's local time (`when=local`, `local_time` and `local_date`)."""
    row = await _newsletter(request)
    form = await form_of(request)
    now = datetime.now(UTC)
    try:
        at = _when(form)
    except ValueError as exc:
        raise web.HTTPUnprocessableEntity(
            text=f"Give the date and time to send at (UTC): it {exc}."
        ) from None
    try:
        local = _local(form, now)
    except ValueError as exc:
        raise web.HTTPUnprocessableEntity(
            text=f"Give the local time and the date to send at: the time or date {exc}."
        ) from None
    _, _, render_errors = await _preview(request, newsletter.draft_of(row))
    if render_errors:
        raise web.HTTPUnprocessableEntity(
            text="The newsletter does not render: " + "; ".join(render_errors.values())
        )
    await _check_send(request, row)
    try:
        async with pool_of(request).acquire() as conn, conn.transaction():
            await newsletter.schedule(conn, row["id"], at or now, str(session_of(request).actor), local)
            when = {"at": (at or now).isoformat()}
            if local is not None:
                when |= {"local_time": local.at.isoformat("minutes"), "local_date": local.day.isoformat()}
            await _audit(request, conn, row["id"], "scheduled", **when)
    except newsletter.StateConflict:
        raise web.HTTPConflict(text=f"The newsletter is {row['status']}; it cannot be sent again.") from None
    if at is None or at <= now:
        await redis_of(request).enqueue_job(queues.NEWSLETTER_START_JOB, row["id"], _queue_name=queues.BULK)
        raise redirect(f"/console/newsletters/{row['id']}", "sending")
    raise redirect(f"/console/newsletters/{row['id']}", "scheduled")


async def _check_send(request: web.Request, row: asyncpg.Record) -> None:
    """Before a send: four-eyes (409 without a second person's approval above
    NOTIFIER_FOUR_EYES_RECIPIENTS) and a fresh sign-in above NOTIFIER_CONSOLE_FRESH_RECIPIENTS.
    The audience is counted only when one of them may apply."""
    settings = settings_of(request)
    if settings.four_eyes_recipients is None and session_of(request).fresh(settings):
        return
    recipients = await audience.count_of(pool_of(request), row)
    if newsletter.needs_approval(settings, recipients, row):
        raise web.HTTPConflict(
            text=f"This newsletter would go to {recipients:,} recipients: above "
            f"{settings.four_eyes_recipients:,} it needs a second person's approval before it is sent."
        )
    if recipients > settings.console_fresh_recipients:
        require_fresh(request, f"/console/newsletters/{row['id']}")


async def approve(request: web.Request) -> web.Response:
    """POST /console/newsletters/{id}/approve: a second person approves (four-eyes sending)."""
    row = await _newsletter(request)
    try:
        async with pool_of(request).acquire() as conn, conn.transaction():
            await newsletter.approve(conn, row["id"], session_of(request).actor)
    except newsletter.NotAllowed as exc:
        raise web.HTTPForbidden(text=f"{exc}.") from None
    except newsletter.StateConflict:
        raise web.HTTPConflict(
            text=f"The newsletter is {row['status']}; it can no longer be approved."
        ) from None
    raise redirect(f"/console/newsletters/{row['id']}", "approved")


async def unschedule(request: web.Request) -> web.Response:
    """POST /console/newsletters/{id}/unschedule: back to draft."""
    row = await _newsletter(request)
    async with pool_of(request).acquire() as conn, conn.transaction():
        updated = await newsletter.unschedule(conn, row["id"], str(session_of(request).actor))
        if updated is not None:
            await _audit(request, conn, row["id"], "unscheduled")
    if updated is None:
        raise web.HTTPConflict(
            text=f"The newsletter is {row['status']}; only a scheduled one can be unscheduled."
        )
    raise redirect(f"/console/newsletters/{row['id']}", "unscheduled")


async def cancel(request: web.Request) -> web.Response:
    """POST /console/newsletters/{id}/cancel: nobody not yet sent to gets it."""
    row = await _newsletter(request)
    try:
        await newsletter.cancel(pool_of(request), row["id"], str(session_of(request).actor))
    except newsletter.StateConflict:
        raise web.HTTPConflict(text=f"The newsletter is {row['status']}; it cannot be cancelled.") from None
    await _audit(request, pool_of(request), row["id"], "cancelled")
    raise redirect(f"/console/newsletters/{row['id']}", "cancelled")
