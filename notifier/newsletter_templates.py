"""Reusable newsletter templates: a saved layout (subject, preheader, body and its format) that a
draft starts from. Starting a draft copies the template into a new newsletter draft
(`newsletter.create_draft`); editing the draft or the template later changes only that one.

A template's subject and body are Jinja templates like a draft's, checked by the caller the same
way (they must render for the sample member) before they are saved.
"""

from __future__ import annotations

import asyncpg

from notifier import newsletter
from notifier.db import Q
from notifier.errors import Problem
from notifier.mail.newsletter_render import Draft


class NameTaken(Problem):
    """Another template has that name (409)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            409,
            f"a newsletter template named {name!r} already exists",
            errors=[{"field": "name", "message": "another template has this name"}],
        )


def draft_of(row: asyncpg.Record) -> Draft:
    """The template as a draft (id 0: not a newsletter), for checking and for starting one."""
    return Draft(0, row["subject"], row["preheader"], row["body"], row["body_format"])


async def get(conn: asyncpg.Connection | asyncpg.Pool, template_id: int) -> asyncpg.Record:
    """The template, or Problem 404."""
    row = await conn.fetchrow(Q.get_newsletter_template, template_id)
    if row is None:
        raise Problem(404, "no newsletter template with that id")
    return row


async def create(
    conn: asyncpg.Connection | asyncpg.Pool, name: str, draft: Draft, actor: str
) -> asyncpg.Record:
    """Save a new template; NameTaken (409) when the name is in use."""
    row = await conn.fetchrow(
        Q.insert_newsletter_template,
        name,
        draft.subject,
        draft.preheader,
        draft.body,
        draft.body_format,
        actor,
    )
    if row is None:
        raise NameTaken(name)
    return row


async def update(
    conn: asyncpg.Connection | asyncpg.Pool, template_id: int, name: str, draft: Draft, actor: str
) -> asyncpg.Record:
    """Replace the template's fields; Problem 404 when it is gone, NameTaken for a used name."""
    try:
        row = await conn.fetchrow(
            Q.update_newsletter_template,
            template_id,
            name,
            draft.subject,
            draft.preheader,
            draft.body,
            draft.body_format,
            actor,
        )
    except asyncpg.UniqueViolationError:
        raise NameTaken(name) from None
    if row is None:
        raise Problem(404, "no newsletter template with that id")
    return row


async def delete(conn: asyncpg.Connection | asyncpg.Pool, template_id: int) -> None:
    """Delete the template (drafts started from it keep their copy); Problem 404 when gone."""
    if await conn.fetchval(Q.delete_newsletter_template, template_id) is None:
        raise Problem(404, "no newsletter template with that id")


async def start_draft(
    conn: asyncpg.Connection | asyncpg.Pool, template_id: int, actor: str
) -> asyncpg.Record:
    """A new newsletter draft holding a copy of the template; returns the newsletter row."""
    row = await get(conn, template_id)
    return await newsletter.create_draft(conn, draft_of(row), actor)
