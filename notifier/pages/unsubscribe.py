"""Unsubscribe: `GET /u/{token}` shows a page and changes nothing; `POST /u/{token}` acts.

The POST is RFC 8058 one-click: a mailbox provider posts `List-Unsubscribe=One-Click` as
`application/x-www-form-urlencoded` or `multipart/form-data`, with no cookie, and gets 200 with
no redirect. The page's own button posts the same field. The token names the member and the list:
`digest` turns digests off, `newsletter` opts out of the newsletter (a consent withdrawal row),
`all` does both. Every change is an `unsubscribed` / `resubscribed` event naming the method and,
when the link carries `?e=EMAIL_ID` (as List-Unsubscribe URLs do), the e-mail and newsletter.
All changes go through `preferences.apply_preferences` (audit actor: the member).

`POST /v1/inbound/unsubscribe` (scope admin) is the mailto path: a mail provider's inbound webhook
(or an operator's script in front of an MTA) posts the message's recipient address, and the token
in its local part (`unsubscribe+TOKEN@…`) or the subject unsubscribes the same way.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from notifier import audit, consent, i18n, pages, preferences, tokens
from notifier.api.auth import requires
from notifier.api.problems import Problem, read_model
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.resources import POOL, SETTINGS

LIST_LABELS = {
    "digest": i18n.N_("inbox summary e-mails (digests)"),
    "newsletter": i18n.N_("the newsletter"),
    "all": i18n.N_("digests and the newsletter"),
}


async def _locked_member(conn: asyncpg.Connection, account_id: int) -> asyncpg.Record:
    """The member's row, locked until the caller's transaction ends. Raises AccountNotFound."""
    before = await conn.fetchrow(Q.member_for_update, account_id)
    if before is None:
        raise preferences.AccountNotFound(account_id)
    return before


async def unsubscribe(
    conn: asyncpg.Connection,
    account_id: int,
    list_name: str,
    ref: pages.EmailRef,
    method: str,
    list_id: int | None = None,
) -> bool:
    """Take the member off `list_name` (`list`: the list `list_id` only). Idempotent: True when
    something changed (then one `unsubscribed` event is written), False when already off.
    Raises preferences.AccountNotFound."""
    async with conn.transaction():
        before = await _locked_member(conn, account_id)
        changes: dict[str, Any] = {}
        if list_name in ("digest", "all") and before["digest_frequency"] != "off":
            changes["digest_frequency"] = "off"
        if list_name in ("digest", "all"):
            # A frequency chosen per category would outlive "off": those choices go too (a
            # required category still reaches the member, as it always does).
            chosen = {k: None for k, c in before["categories"].items() if c.get("frequency") != "off"}
            if chosen:
                changes["categories"] = chosen
        if list_name in ("newsletter", "all") and before["newsletter"]:
            changes["newsletter"] = False
        if list_name == "list" and list_id is not None:
            row = await conn.fetchrow(Q.list_membership, list_id, account_id)
            if row is not None and row["subscribed"]:
                changes["lists"] = {row["key"]: False}
                list_name = row["key"]
        if not changes:
            return False
        await preferences.apply_preferences(conn, account_id, changes, audit.MEMBER, method)
        detail: dict[str, Any] = {"list": list_name, "changes": sorted(changes)}
        if "digest_frequency" in changes:
            detail["previous_frequency"] = before["digest_frequency"]
        await pages.record_event(conn, "unsubscribed", account_id, ref, method, detail)
    return True


async def resubscribe(
    conn: asyncpg.Connection,
    account_id: int,
    list_name: str,
    ref: pages.EmailRef,
    method: str,
    list_id: int | None = None,
) -> bool:
    """Undo an unsubscribe: the newsletter (or the list `list_id`) opt-in again with the consent
    wording, digests back at the frequency they had (daily if unknown). Idempotent like
    `unsubscribe`; an archived list is not joined again."""
    async with conn.transaction():
        before = await _locked_member(conn, account_id)
        changes: dict[str, Any] = {}
        if list_name in ("digest", "all") and before["digest_frequency"] == "off":
            previous = await conn.fetchval(Q.last_digest_frequency, account_id)
            changes["digest_frequency"] = previous if previous and previous != "off" else "daily"
        if list_name in ("newsletter", "all") and not before["newsletter"]:
            changes["newsletter"] = True
        if list_name == "list" and list_id is not None:
            row = await conn.fetchrow(Q.list_membership, list_id, account_id)
            if row is not None and not row["subscribed"] and row["archived_at"] is None:
                changes["lists"] = {row["key"]: True}
                list_name = row["key"]
        if not changes:
            return False
        # The wording shown, in the member's language: the newsletter's, and each list's own
        # (`lists.wording`).
        locale = i18n.normalise(before["locale"])
        await preferences.apply_preferences(
            conn,
            account_id,
            changes,
            audit.MEMBER,
            method,
            wording=i18n.gettext(locale, consent.WORDING),
            wording_version=consent.WORDING_VERSION,
            locale=locale,
        )
        await pages.record_event(
            conn, "resubscribed", account_id, ref, method, {"list": list_name, "changes": sorted(changes)}
        )
    return True


def _context(
    request: web.Request,
    token: str,
    found: tokens.Token,
    member: Any,
    ref: pages.EmailRef,
    listed: Any = None,
) -> dict[str, Any]:
    """What the page shows; `listed` is the `list_membership` row of a `list` token."""
    settings = request.app[SETTINGS]
    prefs_token = tokens.sign(settings.secret, "preferences", found.account_id, "all")
    if found.list == "list":
        label, subscribed = (f"“{listed['name']}”", listed["subscribed"]) if listed else ("this list", False)
    else:
        label = LIST_LABELS[found.list]
        subscribed = {
            "digest": member["digest_frequency"] != "off",
            "newsletter": member["newsletter"],
            "all": member["digest_frequency"] != "off" or member["newsletter"],
        }[found.list]
    return {
        "list_label": label,
        "list_name": found.list,
        "subscribed": subscribed,
        "action": f"/u/{token}{ref.query()}",
        "preferences_url": f"/preferences/{prefs_token}{ref.query()}",
        "nonce": pages.form_nonce(settings.secret, token),
    }


async def get_unsubscribe(request: web.Request) -> web.Response:
    """The confirmation page. Changes nothing, whatever follows the link."""
    linked = await pages.linked_member(request, "unsubscribe")
    if linked is None:
        return pages.not_found(request)
    return pages.render(
        request,
        "unsubscribe.html",
        locale=linked.locale,
        title=i18n.N_("Unsubscribe"),
        state="confirm",
        **_context(
            request,
            linked.token,
            linked.found,
            linked.member,
            linked.ref,
            await _listed(request.app[POOL], linked.found),
        ),
    )


async def _listed(conn: asyncpg.Connection | asyncpg.Pool, found: tokens.Token) -> Any:
    """The list a `list` token names, with the member's membership; None for other tokens."""
    if found.list_id is None:
        return None
    return await conn.fetchrow(Q.list_membership, found.list_id, found.account_id)


async def post_unsubscribe(request: web.Request) -> web.Response:
    """One-click unsubscribe (RFC 8058), or the page's resubscribe button. 200, no redirect."""
    token = request.match_info["token"]
    settings = request.app[SETTINGS]
    posted = await pages.signed_form(
        request, "unsubscribe", i18n.N_("post `List-Unsubscribe=One-Click` as a web form")
    )
    if isinstance(posted, web.Response):
        return posted
    found, form = posted
    pool = request.app[POOL]
    async with pool.acquire() as conn:
        ref = await pages.email_ref(conn, found.account_id, request.query.get("e"))
        try:
            if form.get("action") == "resubscribe":
                nonce = str(form.get("nonce", ""))
                if not pages.same_origin(request) or not pages.nonce_valid(settings.keyring, token, nonce):
                    return pages.render(
                        request,
                        "expired.html",
                        status=403,
                        title=i18n.N_("Please try again"),
                        again=request.path_qs,
                    )
                await resubscribe(conn, found.account_id, found.list, ref, "unsubscribe-page", found.list_id)
                state = "resubscribed"
            elif form.get("List-Unsubscribe") == "One-Click":
                method = "unsubscribe-page" if form.get("via") == "page" else "one-click"
                await unsubscribe(conn, found.account_id, found.list, ref, method, found.list_id)
                state = "done"
            else:
                return pages.render(
                    request,
                    "invalid.html",
                    status=400,
                    title=i18n.N_("This request is not an unsubscribe"),
                    message=i18n.N_("Nothing was changed: the form lacks `List-Unsubscribe=One-Click`."),
                )
        except preferences.AccountNotFound:
            return pages.not_found(request)
        member = await conn.fetchrow(Q.member, found.account_id)
        locale = member["locale"] if member is not None else None
        listed = await _listed(conn, found)
    return pages.render(
        request,
        "unsubscribe.html",
        locale=locale,
        title=i18n.N_("Unsubscribed") if state == "done" else i18n.N_("Subscribed again"),
        state=state,
        **_context(request, token, found, member, ref, listed),
    )


# --- mailto ----------------------------------------------------------------------------------

_TOKEN_IN_ADDRESS = re.compile(r"^[^+@\s]+\+([A-Za-z0-9_-]{20,64})@", re.ASCII)


class InboundMail(BaseModel):
    """What an inbound-mail webhook tells us: the address the message was sent to, its subject."""

    model_config = ConfigDict(extra="ignore")

    recipient: str = Field(min_length=3, max_length=320)
    subject: str = Field(default="", max_length=2000)


@requires("admin")
async def inbound_unsubscribe(request: web.Request) -> web.Response:
    """A mailto unsubscribe delivered by a mail provider's webhook. 200 `{unsubscribed: bool}`;
    422 when no valid token is found (the message is then ignored)."""
    body = await read_model(request, InboundMail)
    keyring = request.app[SETTINGS].keyring
    candidates = []
    match = _TOKEN_IN_ADDRESS.match(body.recipient.strip())
    if match:
        candidates.append(match[1])
    # The List-Unsubscribe mailto puts `unsubscribe-TOKEN` in the subject; replies add "Re:".
    for word in body.subject.split()[:20]:
        candidates.append(word.removeprefix("unsubscribe-").removeprefix("UNSUBSCRIBE-"))
    found = next((t for c in candidates if (t := tokens.verify(keyring, c, "unsubscribe")) is not None), None)
    if found is None:
        raise Problem(
            422,
            "no valid unsubscribe token in the recipient address or subject",
            errors=[{"field": "recipient", "message": "expected unsubscribe+TOKEN@…"}],
        )
    async with request.app[POOL].acquire() as conn:
        try:
            changed = await unsubscribe(
                conn, found.account_id, found.list, pages.EmailRef(), "mailto", found.list_id
            )
        except preferences.AccountNotFound:
            raise Problem(404, "the member no longer exists") from None
    return json_response(200, {"unsubscribed": True, "changed": changed, "list": found.list})


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/u/{token}", get_unsubscribe)
    app.router.add_post("/u/{token}", post_unsubscribe)
    app.router.add_post("/v1/inbound/unsubscribe", inbound_unsubscribe)
