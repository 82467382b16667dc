"""Console pages for members: find, look at everything held on one, export, erase.

Export and erasure are `notifier.accounts`' own functions, so the console and the API hold and
delete exactly the same things; the console's actor is the person (`console:<address> (<role>)`).
"""

from __future__ import annotations

import json

import asyncpg
from aiohttp import web

from notifier import accounts, audit, inbox, lists, suppression
from notifier.console.ui import form_of, member_url, pool_of, redirect, render, require_fresh, session_of
from notifier.db import Q

SEARCH_LIMIT = 50
SECTION_LIMIT = 50
MEMBER_VIEW_LIMIT = 20  # the first page of the member's own inbox, as the component shows it
# Why an operator erases an account (a subset of accounts.ERASURE_REASONS; `retention` is the purge's).
ERASE_REASONS = {
    "request": "The member asked to be erased",
    "child": "The member is a child under 13",
    "other": "Other reason",
}


def _like_prefix(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


async def find(request: web.Request) -> web.Response:
    """GET /console/members?q=: by external id or e-mail address (exact, or the start of one)."""
    q = request.query.get("q", "").strip()
    results = []
    if q:
        results = await pool_of(request).fetch(Q.console_find_members, q, _like_prefix(q), SEARCH_LIMIT)
        if len(results) == 1 and results[0]["external_id"] == q:
            raise web.HTTPSeeOther(member_url(q))
    return render(request, "members.html", q=q, results=results, limit=SEARCH_LIMIT)


async def _member_view(pool: asyncpg.Pool, external_id: str) -> list[asyncpg.Record]:
    """The first page of the inbox as the member sees it (none if erased meanwhile)."""
    page = await inbox.member_page(pool, external_id, limit=MEMBER_VIEW_LIMIT)
    return page.rows if page is not None else []


async def profile(request: web.Request) -> web.Response:
    """GET /console/members/{external_id}: profile, preferences, inbox, e-mails, events, audit."""
    pool = pool_of(request)
    account = await accounts.find_account(pool, request.match_info["external_id"])
    account_id = account["id"]
    return render(
        request,
        "member.html",
        account=account,
        consents=await pool.fetch(Q.console_account_consents, account_id, 10),
        lists=await lists.memberships(pool, account_id),
        inbox_counts=await pool.fetchrow(Q.console_account_inbox_counts, account_id),
        inbox=await pool.fetch(Q.console_account_inbox, account_id, SECTION_LIMIT),
        member_counts=await inbox.member_counts(pool, account_id),
        member_view=[
            {**dict(r), "when": inbox.member_time(r["created_at"], account["timezone"])}
            for r in await _member_view(pool, account["external_id"])
        ],
        emails=await pool.fetch(Q.console_account_emails, account_id, SECTION_LIMIT),
        events=await pool.fetch(Q.console_account_events, account_id, SECTION_LIMIT),
        audit_rows=await pool.fetch(Q.console_account_audit, account_id, SECTION_LIMIT),
        suppressions=await pool.fetch(Q.console_suppressions_for, suppression.address_hash(account["email"])),
        limit=SECTION_LIMIT,
    )


async def export(request: web.Request) -> web.Response:
    """GET /console/members/{external_id}/export: the API's export document, as a download.
    The export is recorded in the member's audit trail (who looked, when)."""
    pool = pool_of(request)
    async with pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            account = await accounts.find_account(conn, request.match_info["external_id"])
            document = await accounts.export_account(conn, account)
        await audit.record(conn, account["id"], session_of(request).actor, "account.exported", {})
    filename = "".join(c if c.isalnum() or c in "-_." else "_" for c in account["external_id"])
    return web.Response(
        text=json.dumps(document, indent=2, ensure_ascii=False),
        content_type="application/json",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="account-{filename}.json"'},
    )


async def erase_confirm(request: web.Request) -> web.Response:
    """GET /console/members/{external_id}/erase: what will go, and the confirmation form."""
    pool = pool_of(request)
    account = await accounts.find_account(pool, request.match_info["external_id"])
    return render(
        request,
        "member_erase.html",
        account=account,
        counts=await pool.fetchrow(Q.console_account_inbox_counts, account["id"]),
        reasons=ERASE_REASONS,
        error=None,
        reason="request",
    )


async def erase(request: web.Request) -> web.Response:
    """POST /console/members/{external_id}/erase: erase once the operator typed the external id,
    within NOTIFIER_CONSOLE_FRESH_MINUTES of signing in (else a page to sign in again)."""
    form = await form_of(request)
    external_id = request.match_info["external_id"]
    require_fresh(request, member_url(external_id) + "/erase")
    reason = form.get("reason", "")
    pool = pool_of(request)
    if form.get("confirm", "").strip() != external_id or reason not in ERASE_REASONS:
        account = await accounts.find_account(pool, external_id)
        return render(
            request,
            "member_erase.html",
            status=422,
            account=account,
            counts=await pool.fetchrow(Q.console_account_inbox_counts, account["id"]),
            reasons=ERASE_REASONS,
            reason=reason if reason in ERASE_REASONS else "request",
            error="Type the member's external id exactly to confirm, and choose a reason.",
        )
    async with pool.acquire() as conn, conn.transaction():
        account = await accounts.find_account(conn, external_id, lock=True)
        await accounts.erase_account(conn, account, reason, session_of(request).actor)
    raise redirect("/console/members", "erased")
