"""Console pages for reusable newsletter templates (role marketing): the list, a form to save
or edit one, and "start a draft from this", which opens the new draft in the compose page.
The same rules as the API (`notifier.api.newsletters`): the fields of `NewsletterTemplateIn`,
templates that must render, a name used once. Each change is audited under the person
(`newsletter_template.*`, and `newsletter.created` for a draft started from one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import ValidationError

from notifier import audit, newsletter_templates
from notifier.api.newsletters import NewsletterTemplateIn
from notifier.console.ui import form_of, number, pool_of, redirect, render, session_of
from notifier.db import Q
from notifier.errors import Problem
from notifier.mail.newsletter_render import Draft
from notifier.resources import RENDER_POOL
from notifier.validation import errors_of

LIST_LIMIT = 100
FIELDS = ("name", "subject", "preheader", "body", "body_format")


async def _template(request: web.Request) -> asyncpg.Record:
    template_id = number(request.match_info["id"])
    row = await pool_of(request).fetchrow(Q.get_newsletter_template, template_id) if template_id else None
    if row is None:
        raise web.HTTPNotFound(text="There is no newsletter template with that number.")
    return row


async def index(request: web.Request) -> web.Response:
    """GET /console/templates: the saved templates, newest first."""
    rows = await pool_of(request).fetch(Q.list_newsletter_templates, None, LIST_LIMIT)
    return render(request, "templates.html", templates=rows, limit=LIST_LIMIT)


def _form(
    request: web.Request,
    row: asyncpg.Record | None,
    form: Mapping[str, Any],
    errors: dict[str, str],
    status: int = 200,
) -> web.Response:
    values = {name: str(form.get(name, "")) for name in FIELDS}
    return render(request, "template_form.html", status=status, row=row, form=values, errors=errors)


async def new(request: web.Request) -> web.Response:
    """GET /console/templates/new: an empty template form."""
    form = {"body": "Hello {{ first_name }},\n\n", "body_format": "markdown"}
    return _form(request, None, form, {})


async def edit(request: web.Request) -> web.Response:
    """GET /console/templates/{id}: the template's form."""
    row = await _template(request)
    return _form(request, row, dict(row), {})


async def _checked(
    request: web.Request, form: Mapping[str, str]
) -> tuple[NewsletterTemplateIn | None, dict[str, str]]:
    """The form as the API's model and rendering for the sample member, or the errors by field."""
    data = {name: form.get(name, "").strip() if name != "body" else form.get("body", "") for name in FIELDS}
    data["body_format"] = data["body_format"] or "markdown"
    try:
        body = NewsletterTemplateIn.model_validate(data)
    except ValidationError as exc:
        return None, {e["field"]: e["message"] for e in errors_of(exc)}
    draft = Draft(0, body.subject, body.preheader, body.body, body.body_format)
    problems = await request.config_dict[RENDER_POOL].problems(draft)
    return (None, problems) if problems else (body, {})


def _draft(body: NewsletterTemplateIn) -> Draft:
    return Draft(0, body.subject, body.preheader, body.body, body.body_format)


async def _store(request: web.Request, row: asyncpg.Record | None) -> web.Response:
    """Check the posted form and save it as a new template (`row` None) or over `row`."""
    form = await form_of(request)
    body, errors = await _checked(request, form)
    if body is None:
        return _form(request, row, form, errors, 422)
    actor = session_of(request).actor
    try:
        async with pool_of(request).acquire() as conn, conn.transaction():
            if row is None:
                saved = await newsletter_templates.create(conn, body.name, _draft(body), str(actor))
                changes = {"template_id": saved["id"], "name": body.name}
                await audit.record(conn, None, actor, "newsletter_template.created", changes)
            else:
                await newsletter_templates.update(conn, row["id"], body.name, _draft(body), str(actor))
                fields = sorted(audit.diff(dict(row), body.model_dump(include=set(FIELDS))))
                changes = {"template_id": row["id"], "name": body.name, "fields": fields}
                await audit.record(conn, None, actor, "newsletter_template.edited", changes)
    except Problem as exc:
        return _form(request, row, form, {"name": exc.detail}, exc.status)
    raise redirect("/console/templates", "saved")


async def create(request: web.Request) -> web.Response:
    """POST /console/templates/new: save a new template."""
    return await _store(request, None)


async def save(request: web.Request) -> web.Response:
    """POST /console/templates/{id}: save the template's changes."""
    return await _store(request, await _template(request))


async def start_draft(request: web.Request) -> web.Response:
    """POST /console/templates/{id}/draft: a new draft holding a copy; opens it to edit."""
    row = await _template(request)
    actor = session_of(request).actor
    async with pool_of(request).acquire() as conn, conn.transaction():
        draft = await newsletter_templates.start_draft(conn, row["id"], str(actor))
        changes = {"newsletter_id": draft["id"], "subject": draft["subject"], "template_id": row["id"]}
        await audit.record(conn, None, actor, "newsletter.created", changes)
    raise redirect(f"/console/newsletters/{draft['id']}", "created")


async def delete(request: web.Request) -> web.Response:
    """POST /console/templates/{id}/delete: delete it (drafts started from it keep their copy)."""
    row = await _template(request)
    async with pool_of(request).acquire() as conn, conn.transaction():
        await newsletter_templates.delete(conn, row["id"])
        changes = {"template_id": row["id"], "name": row["name"]}
        await audit.record(conn, None, session_of(request).actor, "newsletter_template.deleted", changes)
    raise redirect("/console/templates", "template-deleted")
