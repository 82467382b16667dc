"""Console pages for deliverability: sending rate and queue depths, the suppression list, failed
e-mails and their re-drive.

Suppressions are kept only as a sha256 of the normalised address (notifier.suppression), so the
list shows hashes and a search hashes the address typed. Adding or removing an entry records who
did it and why: an audit row and an event on the member's account when one has that address,
and an audit row without an account (naming only the hash) otherwise.
"""

from __future__ import annotations

from typing import Any, get_args

import asyncpg
from aiohttp import web

from notifier import audit, queues, suppression
from notifier.console.ui import form_of, number, pool_of, posted, redirect, redis_of, render, session_of
from notifier.db import Q
from notifier.mail import outbox
from notifier.mail.delivery import POLICY_PREFIX

RECENT_LIMIT = 100
FAILED_LIMIT = 200
LISTS: tuple[str, ...] = get_args(suppression.ListName)
# Reasons an operator may give when adding; the others come from delivery and unsubscribes.
ADD_REASONS = ("manual", "complaint", "hard_bounce")
MAX_NOTE = 500
POLICY_SHOWN = 5  # newest policy refusals quoted on the overview


async def overview(request: web.Request) -> web.Response:
    """GET /console/deliverability: sending rate, failures, queue depths (outbox and Redis)."""
    pool = pool_of(request)
    redis = redis_of(request)
    depths = {row["queue"]: row for row in await pool.fetch(Q.console_queue_depths)}
    rows = []
    for label, name in queues.ALL.items():
        depth = depths.get(name)
        rows.append(
            {
                "label": label,
                "name": name,
                "queued": depth["queued"] if depth else 0,
                "due": depth["due"] if depth else 0,
                "sending": depth["sending"] if depth else 0,
                "oldest_due": depth["oldest_due"] if depth else None,
                "jobs": await redis.zcard(name),
            }
        )
    return render(
        request,
        "deliverability.html",
        rate=await pool.fetchrow(Q.console_send_rate),
        failures=await pool.fetchrow(Q.console_failure_rate),
        failed_total=await pool.fetchval(Q.console_failed_count),
        queues=rows,
        suppression_counts=await pool.fetch(Q.console_suppression_counts),
        policy=await pool.fetch(Q.console_policy_rejections, POLICY_PREFIX, POLICY_SHOWN),
        policy_prefix=POLICY_PREFIX,
    )


async def suppressions(request: web.Request) -> web.Response:
    """GET /console/suppressions?address=: search by address, or the most recent entries."""
    address = request.query.get("address", "").strip()
    pool = pool_of(request)
    if address:
        rows = await pool.fetch(Q.console_suppressions_for, suppression.address_hash(address))
    else:
        rows = await pool.fetch(Q.console_recent_suppressions, RECENT_LIMIT)
    return render(
        request,
        "suppressions.html",
        address=address,
        rows=rows,
        lists=LISTS,
        reasons=ADD_REASONS,
        errors={},
        form={},
        limit=RECENT_LIMIT,
    )


def _check_note(form: dict[str, str] | Any, errors: dict[str, str]) -> str:
    note = " ".join(str(form.get("note", "")).split())
    if not note:
        errors["note"] = "Say why, for the audit trail."
    elif len(note) > MAX_NOTE:
        errors["note"] = f"Keep it under {MAX_NOTE} characters."
    return note


async def _record(
    conn: asyncpg.Connection,
    address: str | None,
    hashed: bytes,
    actor: audit.Actor,
    kind: str,
    changes: dict[str, Any],
) -> None:
    """The audit row (and the member's event) of a change to the suppression list."""
    account_ids = (
        [r["id"] for r in await conn.fetch(Q.console_accounts_with_hash, suppression.normalise(address))]
        if address
        else []
    )
    changes = {**changes, "address_hash": hashed.hex()}
    for account_id in account_ids:
        await audit.record(conn, account_id, actor, f"suppression.{kind}", changes)
        await conn.execute(Q.console_insert_event, kind, account_id, changes)
    if not account_ids:
        await audit.record(conn, None, actor, f"suppression.{kind}", changes)


async def add(request: web.Request) -> web.Response:
    """POST /console/suppressions: suppress an address on a list, with a reason and a note."""
    form = await form_of(request)
    errors: dict[str, str] = {}
    address = form.get("address", "").strip()
    list_name = form.get("list", "all")
    reason = form.get("reason", "manual")
    if "@" not in address or len(address) > 320 or any(c.isspace() for c in address):
        errors["address"] = "Enter an e-mail address."
    if list_name not in LISTS:
        errors["list"] = "Choose a list."
    if reason not in ADD_REASONS:
        errors["reason"] = "Choose a reason."
    note = _check_note(form, errors)
    if errors:
        pool = pool_of(request)
        return render(
            request,
            "suppressions.html",
            status=422,
            address="",
            rows=await pool.fetch(Q.console_recent_suppressions, RECENT_LIMIT),
            lists=LISTS,
            reasons=ADD_REASONS,
            errors=errors,
            form=form,
            limit=RECENT_LIMIT,
        )
    actor = session_of(request).actor
    async with pool_of(request).acquire() as conn, conn.transaction():
        added = await suppression.add(conn, address, reason, list_name, note)  # type: ignore[arg-type]
        if added:
            await _record(
                conn,
                address,
                suppression.address_hash(address),
                actor,
                "suppressed",
                {"list": list_name, "reason": reason, "note": note},
            )
    raise redirect("/console/suppressions", "suppressed" if added else "already-suppressed", address=address)


async def remove(request: web.Request) -> web.Response:
    """POST /console/suppressions/remove: lift one entry (by its hash and list), with a note."""
    form = await form_of(request)
    errors: dict[str, str] = {}
    address = form.get("address", "").strip()
    list_name = form.get("list", "")
    try:
        hashed = bytes.fromhex(form.get("hash", ""))
    except ValueError:
        hashed = b""
    if len(hashed) != 32 or list_name not in LISTS:
        raise web.HTTPBadRequest(text="That suppression entry is not valid.")
    if address and suppression.address_hash(address) != hashed:
        address = ""
    note = _check_note(form, errors)
    if errors:
        rows = await pool_of(request).fetch(Q.console_suppressions_for, hashed)
        return render(
            request,
            "suppressions.html",
            status=422,
            address=address,
            rows=rows,
            lists=LISTS,
            reasons=ADD_REASONS,
            errors={"remove": errors["note"]},
            form={},
            limit=RECENT_LIMIT,
        )
    actor = session_of(request).actor
    async with pool_of(request).acquire() as conn, conn.transaction():
        was = await conn.fetchval(Q.console_remove_suppression, hashed, list_name)
        if was is not None:
            await _record(
                conn,
                address or None,
                hashed,
                actor,
                "unsuppressed",
                {"list": list_name, "was": was, "note": note},
            )
    query = {"address": address} if address else {}
    raise redirect("/console/suppressions", "unsuppressed" if was else "not-suppressed", **query)


async def failed(request: web.Request) -> web.Response:
    """GET /console/failed: e-mails that failed for good, newest first, with their errors."""
    pool = pool_of(request)
    return render(
        request,
        "failed.html",
        rows=await pool.fetch(Q.console_failed_emails, FAILED_LIMIT),
        total=await pool.fetchval(Q.console_failed_count),
        limit=FAILED_LIMIT,
    )


async def redrive(request: web.Request) -> web.Response:
    """POST /console/failed/redrive: queue failed e-mails again: the one of the row's button
    (`only`), else the ids ticked."""
    data = await posted(request)
    only = data.get("only")
    values = [only] if only is not None else data.getall("id", [])
    ids = [n for n in (number(v) for v in values if isinstance(v, str)) if n is not None]
    if not ids:
        raise web.HTTPBadRequest(text="Choose at least one failed e-mail to re-drive.")
    done = await outbox.retry_failed(pool_of(request), redis_of(request), ids=ids)
    if done:
        await audit.record(
            pool_of(request), None, session_of(request).actor, "emails.redriven", {"email_ids": done}
        )
    raise redirect("/console/failed", "redriven" if done else "nothing-redriven")
