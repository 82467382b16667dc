"""`POST /v1/inbound/mime` (scope admin): one inbound message, as an MTA pipe delivers it.

The body is the raw message (`message/rfc822`); `?recipient=` may name the envelope recipient (an
MTA pipe passes it as `$RECIPIENT` / `${original_recipient}`), otherwise the message's own
Delivered-To / X-Original-To / To headers are read. The same domain function as `notifier inbound`
(`bounces.read_report` then `bounces.apply`) decides what it means.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
from aiohttp import web
from pydantic import Field

from notifier import bounces, pages, reports
from notifier.answers import Answer
from notifier.api.auth import requires
from notifier.api.problems import Problem
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.pages import unsubscribe
from notifier.resources import POOL, SETTINGS

MEDIA = ("message/rfc822", "text/plain", "application/octet-stream")


class InboundResult(Answer):
    """What an inbound message (or provider event) did."""

    action: Literal["bounced", "deferred", "complained", "delivered", "unsubscribed", "ignored"]
    why: str | None = Field(default=None, description="why it was ignored, or which list was left")
    email_id: int | None = Field(default=None, description="the outbox e-mail it was tied to")
    recorded: bool = Field(description="an event was written (false for a repeat)")
    suppressed: list[str] = Field(description="suppression lists the address was added to")


async def unsubscribe_member(
    conn: asyncpg.Connection,
    account_id: int,
    list_name: str,
    email_id: int | None,
    newsletter_id: int | None,
    method: str,
) -> bool:
    """The member pages' unsubscribe path (`bounces.Unsubscribe`), for mail to the
    List-Unsubscribe mailto and providers' unsubscribe events. A list token's list arrives as
    `list:ID`; a newsletter e-mail sent through a list other than the default leaves that list."""
    ref = pages.EmailRef(email_id, newsletter_id)
    list_id: int | None = None
    if list_name.startswith("list:"):
        list_name, list_id = "list", int(list_name.removeprefix("list:"))
    elif list_name == "newsletter" and email_id is not None:
        list_id = await conn.fetchval(Q.list_of_email, email_id, account_id)
        list_name = "list" if list_id is not None else list_name
    return await unsubscribe.unsubscribe(conn, account_id, list_name, ref, method, list_id)


def answer(outcome: bounces.Outcome) -> InboundResult:
    return InboundResult(
        action=outcome.action,
        why=outcome.why or None,
        email_id=outcome.email_id,
        recorded=outcome.recorded,
        suppressed=list(outcome.suppressed),
    )


@requires("admin")
async def post_mime(request: web.Request) -> web.Response:
    """Read one raw message and apply what it says. 200 with the outcome (also when the message
    is ignored: an MTA must not bounce a bounce back); 413 over the size limit; 415 when the
    body is not a message."""
    settings = request.app[SETTINGS]
    if request.content_type not in MEDIA:
        raise Problem(415, "send the raw message as `Content-Type: message/rfc822`")
    limit = settings.inbound_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, f"the message is larger than {limit} bytes (NOTIFIER_INBOUND_MAX_BYTES)")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise Problem(413, f"the message is larger than {limit} bytes (NOTIFIER_INBOUND_MAX_BYTES)")
    if not raw.strip():
        raise Problem(400, "the body is empty: expected a whole e-mail message")
    recipient = request.query.get("recipient", "")
    if len(recipient) > 320 or not recipient.isprintable():
        raise Problem(
            400,
            "`recipient` must be one printable address",
            errors=[{"field": "recipient", "message": "at most 320 printable characters"}],
        )
    finding = reports.read_report(settings, raw, [recipient] if recipient else [])
    outcome = await bounces.apply(request.app[POOL], settings, finding, unsubscribe_member)
    return json_response(200, answer(outcome))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/inbound/mime", post_mime)
