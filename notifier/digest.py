"""Digests: each member's unread inbox summarised at the frequency they chose, exactly once.

`run_pass(pool, redis, settings, now)` is the scheduler pass (an arq cron runs it every minute;
`notifier digests run` runs one by hand). It claims due accounts (`next_digest_at <= now`) a batch
at a time with `FOR NO KEY UPDATE SKIP LOCKED` and, in one transaction per batch, with three
set-based statements for the whole batch (claim, build, advance):

1. one statement (`build_digests` in sql/digest.sql) records a digest per account that has
   something to say (unique (account_id, window_end)) with its messages' ids, takes those messages
   (queued in `pending_messages`, unread, not archived, created before the window's end) out of
   the queue without writing `messages` (migration 0021), builds each e-mail's
   content and writes the outbox rows (`emails`, kind digest, template `digest`, the content as
   its context; unique per digest) — the same rows `outbox.add_many` writes, built in SQL so that
   no message row travels to Python;
2. the windows advance: the next starts at the old end and ends at the next scheduled time after
   now (missed windows are not replayed one by one: one digest covers them).

Then it rings the delivery doorbell (`outbox.ring`). Any number of passes may run at once: a
locked account is skipped by the others, and the account row is only released with its window
advanced, so no window gets two digests, no message gets into two digests (each is locked and
checked and dequeued under its row lock; one locked by someone else, a member reading it, is
skipped) and no message is lost (it is queued in the transaction that stores it, and taken by
"created before the window's end" with no lower bound, so a late or skipped one goes in the next
digest). The pass never waits for
a row lock.

Immediate members have no clock: the intake hook `messages_arrived` makes them due one
coalescing window (`NOTIFIER_IMMEDIATE_COALESCE_SECONDS`) after the first waiting message, so
whatever arrives in that window goes out as one e-mail with the same pass.

What a digest e-mail holds and how it renders (at send time, leaving out what was read since the
pass) is notifier/digest_email.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from notifier import brand, categories, digest_windows, i18n, queues, schedule, tokens
from notifier.db import Q
from notifier.digest_email import TEMPLATE, build_context, labels_of, render_digest
from notifier.mail import compose, delivery, outbox
from notifier.mail.render import Language, OutgoingEmail, Rendered, Templates
from notifier.settings import Settings

log = logging.getLogger("notifier.digest")

BATCH_SIZE = 500  # accounts per claim and transaction


@dataclass
class PassResult:
    """What one scheduler pass did."""

    accounts: int = 0  # due accounts whose window was closed
    digests: int = 0  # digests recorded (accounts with something to say)
    messages: int = 0  # messages put into those digests
    emails: int = 0  # outbox rows written
    skipped: list[int] = field(default_factory=list)  # accounts whose address cannot be mailed

    def add(self, other: PassResult) -> None:
        self.accounts += other.accounts
        self.digests += other.digests
        self.messages += other.messages
        self.emails += other.emails
        self.skipped += other.skipped


# --- the scheduler pass --------------------------------------------------------------------------


def _mailable(address: str) -> bool:
    try:
        compose.check_address(address)
    except compose.HeaderError:
        return False
    return True


async def _sql_timezones(conn: asyncpg.Connection) -> frozenset[str]:
    """The zone names PostgreSQL knows, read once per process. A name Python's tz database knows
    but the server's does not (a newer zone) is formatted as UTC rather than failing the batch."""
    global _PG_ZONES
    if _PG_ZONES is None:
        _PG_ZONES = frozenset(r["name"] for r in await conn.fetch(Q.known_timezones))
    return _PG_ZONES


_PG_ZONES: frozenset[str] | None = None


class _Schedule:
    """One member's rules as a pass applies them (the frequencies in use, and which categories go
    when given windows close), shared by every member with the same default and choices."""

    def __init__(self, plan: _Plan, default: str, choices: Mapping[str, Any]) -> None:
        self._plan = plan
        self._default = default
        self._choices = choices
        self.used = categories.frequencies_in_use(choices, default, plan.declared)
        self._sends: dict[frozenset[str], tuple[str, bool, bool]] = {}

    def sends(self, due: frozenset[str]) -> tuple[str, bool, bool]:
        """The categories sent when the windows of `due` close (and every "immediate" one):
        (declared categories sent, space-separated; whether all are; whether an undeclared one is)."""
        if due not in self._sends:
            sending = due | {"immediate"}
            declared, default, choices = self._plan.declared, self._default, self._choices
            included = [
                k
                for k in self._plan.keys
                if categories.effective_frequency(k, choices, default, declared[k]) in sending
            ]
            others = categories.effective_frequency("", {}, default, None) in sending
            self._sends[due] = (" ".join(included), others and len(included) == len(self._plan.keys), others)
        return self._sends[due]


class _Plan:
    """The declared categories as a pass read them, and each member's `_Schedule`, memoised per
    (default frequency, choices): most members share them, and each account's choices are
    serialised once per claim."""

    def __init__(self, declared: Mapping[str, categories.Category]) -> None:
        self.declared = declared
        self.keys = sorted(declared)
        self._schedules: dict[tuple[str, str], _Schedule] = {}

    def schedule(self, default: str, choices: Mapping[str, Any]) -> _Schedule:
        key = (default, json.dumps(choices, sort_keys=True) if choices else "")
        found = self._schedules.get(key)
        if found is None:
            found = self._schedules[key] = _Schedule(self, default, choices)
        return found


def _prefs(account: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "digest_frequency": account["digest_frequency"],
        "digest_hour": account["digest_hour"],
        "digest_weekday": account["digest_weekday"],
        "timezone": account["timezone"],
        "quiet_hours": account["quiet_hours"],
        "categories": account["digest_categories"],
    }


async def _run_batch(
    conn: asyncpg.Connection, settings: Settings, now: datetime, batch_size: int, plan: _Plan
) -> PassResult:
    result = PassResult()
    await conn.execute(Q.batch_without_jit)
    accounts = await conn.fetch(Q.claim_due_accounts, now, batch_size)
    if not accounts:
        return result
    result.accounts = len(accounts)
    zones = await _sql_timezones(conn)
    ids = [a["id"] for a in accounts]
    ends = [a["next_digest_at"] for a in accounts]
    mailable = [_mailable(a["email"]) for a in accounts]
    windows = [digest_windows.stored(a) for a in accounts]
    schedules = [plan.schedule(a["digest_frequency"], a["digest_categories"]) for a in accounts]
    used = [s.used for s in schedules]
    due = [
        frozenset(digest_windows.due(w, e) & s.used) for w, s, e in zip(windows, schedules, ends, strict=True)
    ]
    sends = [s.sends(d) for s, d in zip(schedules, due, strict=True)]
    rows = await conn.fetch(
        Q.build_digests,
        ids,
        [a["digest_window_start"] for a in accounts],
        ends,
        [_told(a["digest_frequency"], d) for a, d in zip(accounts, due, strict=True)],
        [a["timezone"] if a["timezone"] in zones else "UTC" for a in accounts],
        [a["name"] for a in accounts],
        [a["email"] for a in accounts],
        mailable,
        queues.DIGEST,
        TEMPLATE,
        settings.digest_max_per_category,
        [tokens.inbox_link(settings, i) for i in ids],
        [included for included, _, _ in sends],
        [everything for _, everything, _ in sends],
        [others for _, _, others in sends],
        [" ".join(sorted(d)) for d in due],
        plan.keys,
    )
    unmailable = {a["id"] for a, ok in zip(accounts, mailable, strict=True) if not ok}
    for row in rows:
        if row["marked"]:
            result.digests += 1
            result.messages += row["marked"]
        if row["email_id"] is not None:
            result.emails += 1
    result.skipped.extend(sorted(unmailable))
    waiting = await _waiting_immediate(
        conn, [(a["id"], s) for a, s in zip(accounts, schedules, strict=True) if "immediate" in s.used], plan
    )
    nexts: list[datetime | None] = []
    clocks: list[str] = []
    for a, w, u, end, closed in zip(accounts, windows, used, ends, due, strict=True):
        prefs = _prefs(a)
        after = digest_windows.advanced(w, u, prefs, end, now, closed)
        immediate = digest_windows.immediate_due(
            waiting.get(a["id"]), settings.immediate_coalesce_seconds, prefs
        )
        nxt = digest_windows.earliest(after, immediate)
        nexts.append(nxt)
        clocks.append(json.dumps(digest_windows.document(after, a["digest_frequency"], end, nxt)))
    await conn.execute(Q.advance_windows, ids, ends, nexts, clocks)
    return result


def _told(default: str, due: frozenset[str]) -> str:
    """The frequency the e-mail names ("your daily summary", "you receive this e-mail for every new
    message"): the member's own when it is among the windows closing now, else the least frequent
    of those; with none closing, the e-mail is one of "immediate" categories alone and says so,
    not "daily"."""
    if not due:
        return "immediate"
    if default in due:
        return default
    return max(due, key=schedule.FREQUENCIES.index)  # in order of how seldom they come


async def _waiting_immediate(
    conn: asyncpg.Connection, accounts: Sequence[tuple[int, _Schedule]], plan: _Plan
) -> dict[int, datetime]:
    """The oldest pending message in an "immediate" category of each of these (account id,
    schedule) pairs: the categories are decided per schedule (memoised), the messages in SQL."""
    if not accounts:
        return {}
    immediate = [s.sends(frozenset()) for _, s in accounts]
    rows = await conn.fetch(
        Q.waiting_since,
        [i for i, _ in accounts],
        [included for included, _, _ in immediate],
        [others for _, _, others in immediate],
        plan.keys,
    )
    return {r["account_id"]: r["first"] for r in rows}


async def _drain(
    pool: asyncpg.Pool,
    redis: outbox.Doorbell | None,
    settings: Settings,
    now: datetime,
    batch_size: int,
    total: PassResult,
    plan: _Plan,
) -> None:
    """Batches until none is due, each added to `total` once committed (so that a failure
    leaves in `total` what was done)."""
    while True:
        async with pool.acquire() as conn, conn.transaction():
            batch = await _run_batch(conn, settings, now, batch_size, plan)
        total.add(batch)
        if batch.emails and redis is not None:
            await outbox.ring(redis, queues.DIGEST, batch.emails)
        if batch.accounts < batch_size:
            return


class PassFailed(Exception):
    """A pass stopped by an error (the database or Redis gone, a statement cut off by the command
    timeout). The batches committed before it stand: `done` says what they did, and their digests
    are queued. The accounts left are still due; the next pass (or a run again) takes them."""

    def __init__(self, done: PassResult, cause: BaseException) -> None:
        self.done = done
        self.cause = cause
        super().__init__(
            f"digest pass failed after {done.digests} digests ({done.emails} e-mails queued): "
            f"{describe_error(cause)}; the accounts left are still due"
        )


def describe_error(exc: BaseException) -> str:
    """One line naming what went wrong (no traceback, no query text)."""
    if isinstance(exc, TimeoutError):  # asyncpg's command timeout, or waiting for a connection
        return "the database did not answer in time (TimeoutError)"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def run_pass(
    pool: asyncpg.Pool,
    redis: outbox.Doorbell | None,
    settings: Settings,
    now: datetime | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    concurrency: int = 2,
) -> PassResult:
    """Build every digest due at `now` (default: the clock), batch by batch until none is due,
    and ring delivery after each batch commits (skipped when `redis` is None; the outbox sweep
    rings within a minute then). `concurrency` batches are built at once on separate connections
    (the database works on one while Python builds the contents of another).

    Safe to run any number of times and in parallel, beside intake, members reading and delivery:
    each window gets at most one digest and each message at most one digest, and the pass never
    waits for a row lock (accounts and messages locked by someone else are skipped, and left to
    the next pass). Returns what it did; raises PassFailed (with what was done) when a batch
    fails: the other batches still run to the end."""
    now = now or datetime.now(UTC)
    total = PassResult()
    try:
        await pool.execute(Q.repair_immediate, timedelta(seconds=settings.immediate_coalesce_seconds))
        # The declared categories once per pass, and one plan (memoised per schedule) for all its
        # batches: a category declared meanwhile counts from the next pass.
        plan = _Plan(await categories.all_categories(pool))
    except Exception as exc:
        raise PassFailed(total, exc) from exc
    outcomes = await asyncio.gather(
        *(_drain(pool, redis, settings, now, batch_size, total, plan) for _ in range(max(1, concurrency))),
        return_exceptions=True,
    )
    if total.accounts:
        log.info(
            "digest pass as of %s: %d due, %d digests, %d messages, %d e-mails",
            now.isoformat(),
            total.accounts,
            total.digests,
            total.messages,
            total.emails,
        )
    for account_id in total.skipped:
        log.warning("account %d has an address that cannot be mailed; its digest was not sent", account_id)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise PassFailed(total, outcome) from outcome
        if isinstance(outcome, BaseException):  # cancelled: not a failure of the pass
            raise outcome
    return total


# --- immediate mode ------------------------------------------------------------------------------


async def messages_arrived(
    conn: asyncpg.Connection,
    account_ids: Sequence[int],
    settings: Settings,
    at: datetime | None = None,
) -> None:
    """Intake calls this after messages were stored for these accounts: a member with waiting
    messages in a category they get at once ("immediate") becomes due one coalescing window after
    `at` (default: now, as the database says), or at the end of their quiet hours if that falls
    inside them, unless already due sooner; so every message arriving in that window goes out in
    one e-mail. Others are untouched: no row of theirs is locked or written."""
    if not account_ids:
        return
    plan = _Plan(await categories.all_categories(conn))
    rows = await conn.fetch(Q.immediate_candidates, sorted(set(account_ids)))
    schedules = {r["id"]: plan.schedule(r["digest_frequency"], r["digest_categories"]) for r in rows}
    candidates = [r for r in rows if "immediate" in schedules[r["id"]].used]
    if not candidates:
        return
    waiting = await _waiting_immediate(conn, [(r["id"], schedules[r["id"]]) for r in candidates], plan)
    dues = {
        r["id"]: digest_windows.immediate_due(at or r["at"], settings.immediate_coalesce_seconds, _prefs(r))
        for r in candidates
        if r["id"] in waiting
    }
    if dues:
        ids = sorted(dues)
        await conn.execute(Q.schedule_due, ids, [dues[i] for i in ids])


# --- preview ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    """The next digest of an account as it would be sent (context and rendered None when there is
    nothing to say), and the rules that shaped it."""

    account_id: int
    due: datetime | None
    context: dict[str, Any] | None
    rendered: Rendered | None
    frequencies: dict[str, str] = field(default_factory=dict)  # category -> how often it is e-mailed
    sent: tuple[str, ...] = ()  # the categories of the messages the next e-mail carries
    windows: dict[str, datetime] = field(default_factory=dict)  # frequency -> when its window ends
    quiet_hours: dict[str, Any] | None = None


def _window_ends(
    account: Mapping[str, Any], windows: digest_windows.Windows, used: set[str], at: datetime
) -> dict[str, datetime]:
    """When each window in use ends: a frequency newly in use (no window yet) gets one at the next
    pass, ending at its next scheduled time after `at`."""
    opened = digest_windows.advanced({}, used - windows.keys(), _prefs(account), at, at)
    return {f: e for f, (_, e) in sorted({**opened, **windows}.items()) if f in used}


class UnknownAccount(LookupError):
    """No account with that external id."""


async def preview(
    pool: asyncpg.Pool,
    settings: Settings,
    external_id: str,
    now: datetime | None = None,
    templates: Templates | None = None,
) -> Preview:
    """Render the account's next digest under its rules without recording, marking or sending
    anything: the e-mail the pass would send at the account's due time (the windows that end by
    then, and "immediate" categories), with the messages waiting now (those created before the due
    time, if that is earlier). Raises UnknownAccount."""
    now = now or datetime.now(UTC)
    account = await pool.fetchrow(Q.preview_account, external_id)
    if account is None:
        raise UnknownAccount(external_id)
    plan = _Plan(await categories.all_categories(pool))
    default, choices = account["digest_frequency"], account["digest_categories"]
    due: datetime | None = account["next_digest_at"]
    end = min(due, now) if due is not None else now
    windows = digest_windows.stored(account)
    schedule = plan.schedule(default, choices)
    closing = frozenset(digest_windows.due(windows, due or now) & schedule.used)
    included, everything, others = schedule.sends(closing)
    sent = set(included.split())
    messages = [
        m
        for m in await pool.fetch(Q.preview_messages, account["id"], end)
        if everything or m["category"] in sent or (others and m["category"] not in plan.declared)
    ]
    rules = Preview(
        account["id"],
        due,
        None,
        None,
        frequencies={
            k: categories.effective_frequency(k, choices, default, c)
            for k, c in sorted(plan.declared.items())
        },
        sent=tuple(sorted({m["category"] for m in messages})),
        windows=_window_ends(account, windows, schedule.used, max(due or now, now)),
        quiet_hours=account["quiet_hours"],
    )
    if not messages:
        return rules
    context = build_context(account, messages, settings, account["digest_window_start"], end)
    # The context delivery would add at send time (links with signed tokens, postal address).
    email = OutgoingEmail(0, "digest", account["id"], account["email"], TEMPLATE, None, context)
    full, _ = delivery.context_for(settings, email, await brand.load(pool, settings))
    language = Language(i18n.normalise(account["locale"]), account["timezone"])
    rendered = render_digest(templates or Templates(), full, language, labels_of(plan.declared))
    return dataclasses.replace(rules, context=context, rendered=rendered)


# --- the command line --------------------------------------------------------------------------


# How far ahead `digests run --at` may look without --force: a pass as of a later time sends real
# mail now and moves every window it closes to that time.
AHEAD_WITHOUT_FORCE = timedelta(minutes=5)


async def cli_run(
    settings: Settings, at: datetime | None, *, dry_run: bool = False, force: bool = False
) -> int:
    """`notifier digests run [--at TIME] [--dry-run] [--force]`: one pass, then print what it did.
    A pass that fails prints one line on stderr (what was done, and why it stopped) and returns 1.
    `--dry-run` counts what a pass would find and writes nothing; a time more than
    AHEAD_WITHOUT_FORCE ahead is refused (2) without `--force`."""
    from notifier.resources import opened

    now = datetime.now(UTC)
    if at is not None and at - now > AHEAD_WITHOUT_FORCE and not (force or dry_run):
        print(
            f"notifier: error: --at {at.isoformat()} is {_ahead(at - now)} ahead: a pass then sends real "
            "mail now and moves every window it closes to that time; add --force to do it, or "
            "--dry-run to see what it would find",
            file=sys.stderr,
        )
        return 2
    async with opened(settings) as res:
        if dry_run:
            found = await res.pool.fetchrow(Q.due_at, at or now)
            print(
                f"dry run as of {(at or now).isoformat()}: due accounts: {found['due']}  "
                f"with something to send: {found['with_messages']}  (nothing written)"
            )
            return 0
        try:
            result = await run_pass(res.pool, res.redis, settings, at)
        except PassFailed as exc:
            print(f"notifier: error: {exc}", file=sys.stderr)
            return 1
    print(
        f"due accounts: {result.accounts}  digests: {result.digests}  "
        f"messages: {result.messages}  e-mails queued: {result.emails}"
        + (f"  not mailable: {len(result.skipped)}" if result.skipped else "")
    )
    return 0


def _ahead(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


async def cli_preview(
    settings: Settings, external_id: str, *, html: bool = False, at: datetime | None = None
) -> int:
    """`notifier digests preview EXTERNAL_ID [--at TIME] [--html]`: what the member would get as of
    `at` (default now) under their rules: when the next e-mail is due, which categories it carries
    and when the others go, then the e-mail itself. Sends, marks and changes nothing."""
    from notifier.resources import open_pool
    from notifier.settings import ConfigError

    pool = await open_pool(settings)
    try:
        result = await preview(pool, settings, external_id, now=at)
    except UnknownAccount:
        raise ConfigError(f"no account with external_id {external_id!r}") from None
    finally:
        await pool.close()
    due = result.due.isoformat() if result.due else "not scheduled"
    print(f"Next e-mail due: {due}")
    by_frequency: dict[str, list[str]] = {}
    for category, frequency in result.frequencies.items():
        by_frequency.setdefault(frequency, []).append(category)
    for frequency in schedule.FREQUENCIES:
        names = by_frequency.get(frequency)
        if not names:
            continue
        when = {"off": "never e-mailed", "immediate": "at once"}.get(frequency)
        if when is None:
            end = result.windows.get(frequency)
            when = f"next window ends {end.isoformat()}" if end else "no window open"
        print(f"  {frequency}: {', '.join(names)} ({when})")
    if result.quiet_hours:
        q = result.quiet_hours
        print(f"Quiet hours: {q['start']} to {q['end']}" + (" and all weekend" if q.get("weekends") else ""))
    if result.rendered is None:
        print("nothing to say: no unread, undigested messages in the categories due")
        return 0
    print(f"Categories in it: {', '.join(result.sent)}")
    print(f"Subject: {result.rendered.subject}\n")
    print(result.rendered.html if html else result.rendered.text)
    return 0
