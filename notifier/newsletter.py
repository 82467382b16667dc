"""Newsletters: drafts, preview, test-send, scheduling, the fan-out and the status machine.

    draft → scheduled → sending → sent
      └──────┴───────────┴──→ cancelled

Sending "now" is scheduling for now: the request records the intent and enqueues `start`; a
bulk-queue job (or the `newsletter_tick` cron, should the job be lost) moves the newsletter to
`sending` with one conditional UPDATE and, in the same transaction, freezes the audience into one
outbox row per member with one INSERT … SELECT. Delivery (notifier.mail.delivery) then sends the rows
through the bulk queue; the tick marks the newsletter `sent` once no row is queued or sending.
Every recipient is a row, so figures come from rows and events, and a crash loses nothing.

A newsletter may carry variants by language (`variants`: subject, preheader and body for `de`,
`fr`, ...): each member gets the variant of their language, else the newsletter's own subject and
body; the footer is in the member's language either way (`for_language`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import asyncpg

from notifier import audience, audit, clicks, consent, newsletter_local_time, queues
from notifier.audit import Actor
from notifier.brand import Brand
from notifier.db import Q
from notifier.mail import outbox, render
from notifier.mail.newsletter_render import Draft, Prepared, PreparedCache, TemplateProblem, sample_personal
from notifier.newsletter_local_time import LocalSend
from notifier.settings import Settings

log = logging.getLogger("notifier.newsletter")

Status = Literal["draft", "scheduled", "sending", "sent", "cancelled", "failed"]
STATUSES: tuple[Status, ...] = get_args(Status)
TICK_SECONDS = {0, 10, 20, 30, 40, 50}  # when the bulk queue's `newsletter-tick` cron runs


class StateConflict(Exception):
    """The newsletter is not in a state that allows the operation."""


def draft_of(row: Mapping[str, Any]) -> Draft:
    return Draft(
        id=row["id"],
        subject=row["subject"],
        preheader=row["preheader"],
        body=row["body"],
        body_format=row["body_format"],
        version=row["updated_at"],
        links=tuple(row.get("links") or ()),
    )


async def figures(conn: asyncpg.Connection | asyncpg.Pool, newsletter_id: int) -> dict[str, int]:
    """Recipients, sent, failed, suppressed, pending, cancelled (outbox rows) and bounced,
    complained, unsubscribed, resubscribed (distinct members with such an event), including what
    members erased since counted (`keep_erased_figures`): erasing a member changes no figure."""
    delivery = await conn.fetchrow(Q.newsletter_delivery_figures, newsletter_id)
    events = await conn.fetchrow(Q.newsletter_event_figures, newsletter_id)
    assert delivery is not None and events is not None
    erased = {r["figure"]: r["count"] for r in await conn.fetch(Q.newsletter_erased_figures, newsletter_id)}
    return {name: value + erased.get(name, 0) for name, value in {**dict(delivery), **dict(events)}.items()}


async def keep_erased_figures(conn: asyncpg.Connection, account_id: int) -> None:
    """Before an account is erased (same transaction): add what it counts in each newsletter's
    figures to `newsletter_erased_figures`, numbers without anything personal. An e-mail still
    to send counts as cancelled: erasure stops it."""
    await conn.execute(Q.keep_erased_newsletter_figures, account_id)


async def get(conn: asyncpg.Connection | asyncpg.Pool, newsletter_id: int) -> asyncpg.Record | None:
    """The newsletter row, or None."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.get_newsletter, newsletter_id)
    return row


@dataclass(frozen=True)
class Target:
    """Who a newsletter goes to: members of any of `lists` (keys; none: the default list)
    matching `segment` (an inline rule) or the saved segment `segment_key` (neither: all of them).
    Checked by `audience.check_targeting`."""

    lists: tuple[str, ...] = ()
    segment: Any = None
    segment_key: str | None = None


async def create_draft(
    conn: asyncpg.Connection | asyncpg.Pool,
    draft: Draft,
    created_by: str,
    target: Target = Target(),
    *,
    track_clicks: bool = False,
) -> asyncpg.Record:
    """Store a new draft (its templates and target already checked by the caller, off the event
    loop); `track_clicks`: count clicks on its links (notifier.clicks)."""
    row: asyncpg.Record = await conn.fetchrow(
        Q.insert_targeted_newsletter,
        draft.subject,
        draft.preheader,
        draft.body,
        draft.body_format,
        created_by,
        list(target.lists),
        target.segment,
        target.segment_key,
        track_clicks,
    )
    return row


async def retarget(
    conn: asyncpg.Connection | asyncpg.Pool, newsletter_id: int, target: Target, updated_by: str
) -> asyncpg.Record | None:
    """Set a draft's audience (checked by the caller); None when it is no longer a draft."""
    row: asyncpg.Record | None = await conn.fetchrow(
        Q.target_newsletter, newsletter_id, list(target.lists), target.segment, target.segment_key, updated_by
    )
    return row


async def update_draft(
    conn: asyncpg.Connection | asyncpg.Pool, draft: Draft, updated_by: str, *, track_clicks: bool = False
) -> asyncpg.Record | None:
    """Change draft `draft.id` (and whether it counts clicks); None when it is no longer a draft
    (scheduled or later)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        Q.update_newsletter_draft,
        draft.id,
        draft.subject,
        draft.preheader,
        draft.body,
        draft.body_format,
        updated_by,
        track_clicks,
    )
    return row


def for_language(draft: Draft, variants: Mapping[str, Mapping[str, str]], locale: str) -> Draft:
    """What a member whose language is `locale` gets: the variant for that language when there is
    one (its preheader defaults to the newsletter's), else the newsletter itself, with the
    layout's words in `locale`."""
    variant = variants.get(locale)
    if variant is None:
        return replace(draft, locale=locale)
    return replace(
        draft,
        subject=variant["subject"],
        preheader=variant.get("preheader") or draft.preheader,
        body=variant["body"],
        locale=locale,
    )


async def set_variants(
    conn: asyncpg.Connection | asyncpg.Pool, newsletter_id: int, variants: Mapping[str, Mapping[str, str]]
) -> asyncpg.Record | None:
    """Replace a draft's language variants (already checked by the caller); None when it is no
    longer a draft."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.set_newsletter_variants, newsletter_id, dict(variants))
    return row


async def unschedule(
    conn: asyncpg.Connection | asyncpg.Pool, newsletter_id: int, actor: str
) -> asyncpg.Record | None:
    """Take a scheduled newsletter back to draft; None unless it was scheduled."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.unschedule_newsletter, newsletter_id, actor)
    return row


async def schedule(
    conn: asyncpg.Connection | asyncpg.Pool,
    newsletter_id: int,
    at: datetime,
    actor: str,
    local: LocalSend | None = None,
) -> asyncpg.Record:
    """Schedule a draft (or move a schedule) to start at `at`; with `local`, each recipient then
    waits for that local time (newsletter_local_time). Raises StateConflict if it is past that."""
    row = await conn.fetchrow(
        Q.schedule_newsletter, newsletter_id, at, actor, local and local.at, local and local.day
    )
    if row is None:
        raise StateConflict("only a draft or scheduled newsletter can be scheduled")
    return row


class NotAllowed(Exception):
    """The person may not do this to the newsletter (four-eyes: the author approving their own)."""


class _Held(Exception):
    """Raised inside `start`'s transaction to undo a start that needed an approval."""


def needs_approval(settings: Settings, recipients: int, row: Mapping[str, Any]) -> bool:
    """Four-eyes sending: with NOTIFIER_FOUR_EYES_RECIPIENTS set, a newsletter to more than that
    many recipients needs a second person's approval before it can start."""
    limit = settings.four_eyes_recipients
    return limit is not None and recipients > limit and row["approved_at"] is None


async def approve(conn: asyncpg.Connection, newsletter_id: int, actor: Actor) -> asyncpg.Record:
    """Record `actor`'s approval (call inside a transaction; audited as `newsletter.approved`).
    Raises NotAllowed when `actor` is the person who wrote or last edited it, StateConflict when
    it is past scheduling."""
    row = await get(conn, newsletter_id)
    if row is None or row["status"] not in ("draft", "scheduled"):
        raise StateConflict("only a draft or scheduled newsletter can be approved")
    me = audit.person_of(str(actor))
    if me in {audit.person_of(row["created_by"] or ""), audit.person_of(row["updated_by"] or "")}:
        raise NotAllowed("the author of a newsletter cannot approve it; a second person must")
    approved: asyncpg.Record = await conn.fetchrow(Q.approve_newsletter, newsletter_id, str(actor))
    await audit.record(conn, None, actor, "newsletter.approved", {"newsletter_id": newsletter_id})
    return approved


async def _fan_out(conn: asyncpg.Connection, row: Mapping[str, Any], local: LocalSend | None) -> None:
    """Freeze the audience of the newsletter `row` (its lists and segment) into outbox rows, each
    waiting for its member's `local` time when there is one. Call inside a transaction."""
    due = newsletter_local_time.DueInstants.of(local)
    list_ids, rule = await audience.targeting(conn, row)
    await audience.freeze(conn, row["id"], list_ids, rule, due)


async def start(pool: asyncpg.Pool, settings: Settings, newsletter_id: int) -> int | None:
    """Move a draft or scheduled newsletter to `sending` and freeze its audience, atomically.

    Idempotent and safe under concurrency: of any number of callers one does the work; the others
    (and calls on a newsletter already started, sent or cancelled) return None. Returns the number
    of recipients otherwise. A newsletter that needs an approval it lacks (`needs_approval`) does
    not start: it goes back to draft, and the answer is None.
    """
    try:
        async with pool.acquire() as conn, conn.transaction():
            started = await conn.fetchrow(Q.start_newsletter, newsletter_id)
            if started is None:
                return None
            local = None
            if started["local_time"] is not None:
                local = LocalSend(started["local_time"], started["local_date"])
            await _fan_out(conn, started, local)
            if started["track_clicks"]:
                await clicks.number_links(conn, started)
            recipients: int = await conn.fetchval(Q.set_newsletter_recipients, newsletter_id)
            if needs_approval(settings, recipients, started):
                raise _Held
    except _Held:
        await pool.execute(Q.hold_newsletter, newsletter_id)
        log.warning(
            "newsletter %s held: %s recipients need a second person's approval", newsletter_id, recipients
        )
        return None
    log.info("newsletter %s sending to %s recipients", newsletter_id, recipients)
    return recipients


async def start_due(pool: asyncpg.Pool, settings: Settings, now: datetime | None = None) -> list[int]:
    """Start every scheduled newsletter whose time has come; returns the ids this call started."""
    now = now or datetime.now(UTC)
    started = []
    for row in await pool.fetch(Q.due_newsletters, now, 20):
        if await start(pool, settings, row["id"]) is not None:
            started.append(row["id"])
    return started


async def finish_done(pool: asyncpg.Pool) -> list[int]:
    """Mark `sent` every sending newsletter with no queued or sending row; returns their ids."""
    finished = []
    for row in await pool.fetch(Q.sending_newsletters):
        if await pool.fetchrow(Q.finish_newsletter, row["id"]) is not None:
            finished.append(row["id"])
            log.info("newsletter %s sent", row["id"])
    return finished


async def fail(pool: asyncpg.Pool, newsletter_id: int, reason: str) -> bool:
    """Stop a sending newsletter that cannot be sent (its templates do not render in the worker):
    `failed` with `reason`, its rows not yet handed to a worker cancelled; those already claimed
    fail with the same reason. False when it was not sending any more."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(Q.fail_newsletter, newsletter_id, reason[:500]) is None:
            return False
        await conn.execute(Q.cancel_newsletter_emails, newsletter_id)
    log.warning("newsletter %s failed: %s", newsletter_id, reason)
    return True


async def cancel(pool: asyncpg.Pool, newsletter_id: int, actor: str) -> asyncpg.Record:
    """Cancel a draft, scheduled or sending newsletter: rows not yet handed to a worker are
    cancelled, a message being sent right now still goes. Raises StateConflict when sent."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(Q.cancel_newsletter, newsletter_id, actor)
        if row is None:
            raise StateConflict("a sent or cancelled newsletter cannot be cancelled")
        await conn.execute(Q.cancel_newsletter_emails, newsletter_id)
    return row


# --- rendering in the worker -----------------------------------------------------------------


class NewsletterRenderer:
    """The outbox renderer for `newsletter` and `test` e-mails: each newsletter version is
    prepared once per worker process (Markdown, layout, CSS inlining, compiled templates); each
    e-mail only fills in the name and the member's links."""

    def __init__(self, settings: Settings, templates: render.Templates) -> None:
        self.settings = settings
        self.cache = PreparedCache()
        self.drafts: OrderedDict[int, Draft] = OrderedDict()
        self.variants: dict[int, dict[str, dict[str, str]]] = {}
        self._languages: dict[int, render.Language] = {}
        # (newsletter, language, brand) -> its prepared version, for the batches loaded by the
        # last `prepare` (each e-mail would otherwise copy the draft twice to find it).
        self._ready: dict[tuple[int, str, Brand | None], Prepared] = {}
        self.fallback = render.TemplateRenderer(templates)

    async def prepare(self, pool: asyncpg.Pool, emails: Sequence[render.OutgoingEmail]) -> None:
        await self.fallback.prepare(pool, [e for e in emails if e.newsletter_id is None])
        ids = sorted({e.newsletter_id for e in emails if e.newsletter_id is not None})
        if not ids:
            return
        self._languages.update(await render.languages(pool, [e for e in emails if e.kind == "newsletter"]))
        for row in await pool.fetch(Q.newsletter_variants, ids):
            self.variants[row["id"]] = row["variants"]
        rows = await pool.fetch(Q.newsletter_versions, ids)
        self._ready.clear()
        for row in rows:
            draft = draft_of(row)
            self.drafts[draft.id] = draft
            self.drafts.move_to_end(draft.id)
            misses = self.cache.misses
            try:
                self.cache.get(self.settings, draft)
            except TemplateProblem as exc:
                if self.cache.misses != misses:  # once per version, not per batch
                    await fail(pool, draft.id, f"does not render ({exc.field}): {exc.message}")
        while len(self.drafts) > 64:  # the least recently sent go; those being sent stay
            gone, _ = self.drafts.popitem(last=False)
            self.variants.pop(gone, None)

    def render(self, email: render.OutgoingEmail, context: Mapping[str, Any]) -> render.Rendered:
        if email.newsletter_id is None:
            return self.fallback.render(email, context)
        draft = self.drafts.get(email.newsletter_id)
        if draft is None:
            raise render.TemplateError("the newsletter no longer exists", template="newsletter")
        sample = sample_personal(self.settings)
        locale = draft.locale
        if email.kind == "test":
            # A test e-mail goes to an address, not a member: it shows what the preview shows.
            personal = sample
        else:
            locale = (self._languages.pop(email.id, None) or render.Language()).locale
            name = str(context.get("name") or "")
            personal = {
                "name": name,
                "first_name": name.split(" ", 1)[0] if name else "",
                "email": email.to_address,
                "unsubscribe_url": context.get("unsubscribe_url") or sample["unsubscribe_url"],
                "preferences_url": context.get("preferences_url") or sample["preferences_url"],
            }
        try:
            out = self._prepared(draft, email.kind, locale, context.get("brand")).render(personal)
        except TemplateProblem as exc:
            raise render.TemplateError(
                f"the newsletter does not render ({exc.field}): {exc.message}", template="newsletter"
            ) from None
        subject = out.subject if email.kind == "newsletter" else f"[TEST] {out.subject}"
        return render.Rendered(subject=subject, text=out.text, html=out.html)

    def _prepared(self, draft: Draft, kind: str, locale: str, brand: Brand | None) -> Prepared:
        """The prepared version of `draft` for a member of `locale` (a test e-mail: the draft as
        it is) in `brand`. Raises TemplateProblem (remembered by the cache)."""
        key = (draft.id, locale if kind != "test" else "", brand)
        found = self._ready.get(key)
        if found is None:
            if kind != "test":
                draft = for_language(draft, self.variants.get(draft.id, {}), locale)
            found = self.cache.get(self.settings, replace(draft, brand=brand))
            self._ready[key] = found
        return found


# --- jobs (bulk queue) -----------------------------------------------------------------------


async def tick(
    pool: asyncpg.Pool, redis: Any, settings: Settings, now: datetime | None = None
) -> dict[str, Any]:
    """One pass of the newsletter clock: start due scheduled newsletters (and ring the bulk queue),
    release recipients whose local time has come, mark finished ones `sent`, queue double opt-in
    confirmations. Idempotent; any worker may run it."""
    started = await start_due(pool, settings, now)
    for newsletter_id in started:
        await outbox.ring(redis, queues.BULK, 1000)
        log.info("newsletter %s started on schedule", newsletter_id)
    released = await newsletter_local_time.release_due(pool, redis, now)
    finished = await finish_done(pool)
    confirmations = await consent.send_confirmations(pool, settings)
    if confirmations:
        await outbox.ring(redis, queues.SERVICE, confirmations)
    return {
        "started": started,
        "released": released.total,
        "finished": finished,
        "confirmations": confirmations,
    }


# --- `notifier newsletter send ID` -------------------------------------------------------------


def progress_line(status: str, figures: Mapping[str, int], width: int = 30) -> str:
    """One line: a bar of handled recipients (sent, failed or suppressed) and the counts."""
    total = figures["recipients"]
    handled = figures["sent"] + figures["failed"] + figures["suppressed"] + figures["cancelled"]
    filled = width if total == 0 else min(width, handled * width // total)
    percent = 100 if total == 0 else handled * 100 // total
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {percent:3d}% {handled}/{total} {status}: "
        f"sent {figures['sent']}, failed {figures['failed']}, suppressed {figures['suppressed']}, "
        f"unsubscribed {figures['unsubscribed']}"
    )


async def cli_send(settings: Settings, newsletter_id: int, *, wait: bool = True, poll: float = 0.5) -> int:
    """Start the newsletter now (unless it already is sending) and show a progress bar until it
    is sent. The bulk workers deliver; this only starts, follows and marks it done. Exit codes:
    0 sent, 1 cancelled or missing, 2 refused. Ctrl-C stops following, not sending."""
    import sys
    import time

    from notifier.resources import opened

    tty = sys.stdout.isatty()
    async with opened(settings) as res:
        row = await res.pool.fetchrow(Q.get_newsletter, newsletter_id)
        if row is None:
            print(f"no newsletter with id {newsletter_id}", file=sys.stderr)
            return 1
        if row["status"] in ("draft", "scheduled"):
            recipients = await start(res.pool, settings, newsletter_id)
            if recipients:
                await outbox.ring(res.redis, queues.BULK, recipients)
            print(f"newsletter {newsletter_id}: sending to {recipients or 0} recipients")
        last_print = 0.0
        while True:
            await finish_done(res.pool)
            current = await res.pool.fetchrow(Q.get_newsletter, newsletter_id)
            status = current["status"] if current else "cancelled"
            line = progress_line(status, await figures(res.pool, newsletter_id))
            now = time.monotonic()
            if tty:
                print("\r" + line, end="", flush=True)
            elif now - last_print >= 5 or status != "sending":
                print(line, flush=True)
                last_print = now
            if status != "sending" or not wait:
                if tty:
                    print()
                return 0 if status in ("sent", "sending") else 1
            await asyncio.sleep(poll)
