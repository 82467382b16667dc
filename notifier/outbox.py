"""The outbox: every e-mail is a row before any job is enqueued; Redis only rings the doorbell.

Producers (service messages, digests, newsletters) call `add` / `add_many` inside their own
transaction, then `ring` after it commits. A `deliver` job on the row's queue claims due rows in
batches (`FOR UPDATE SKIP LOCKED`, a lease in `locked_until`), renders them, sends them over
several SMTP connections at once and records each result as it comes in (group commit: one
statement per write, with an append-only event per result; answers that arrive during a write
go in the next, at most one write per batch every 5 ms), so a worker killed mid-batch sends again
only what was in flight or answered in the last few milliseconds, not the whole batch (a stopped
one sends nothing again). A job that runs twice sends once: a result is only recorded for a row
still held under the lease that claimed it. `sweep` (cron) re-rings queues whose rows are due and
have no job (Redis flushed, a worker killed mid-send: its lease runs out and the row is due again).

States: queued -> sending -> sent | failed | suppressed, and sending -> queued for a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from arq import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.exceptions import RedisError

from notifier import mail, queues, suppression, tokens
from notifier.db import Q
from notifier.render import OutgoingEmail, Renderers, TemplateError
from notifier.settings import Settings
from notifier.smtp import Envelope, PermanentFailure, RateLimiter, Sender, TemporaryFailure

log = logging.getLogger("notifier.outbox")

Kind = Literal["service", "digest", "newsletter", "test", "confirmation"]

# Seconds to wait after the 1st, 2nd, ... temporary failure. After the last, the e-mail fails.
RETRY_DELAYS: tuple[int, ...] = (30, 120, 600, 1800, 3600, 4 * 3600)

MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
BATCH_SIZE = 100  # rows per claim
# Deliver jobs one ring starts at most; each loops until nothing is due. Two overlap one batch's
# database work with the other's sending; more only queue up on the same SMTP connections.
MAX_BELLS = 2
LEASE_SECONDS = 120.0  # a claimed row becomes due again if not recorded by then
RUN_SECONDS = 240.0  # a deliver job hands over to a new one after this long (job timeouts: 600 s+)
JOB_NAME = "deliver"
# A batch writes its results at most this often (see `_Recorder`): the bound on what a SIGKILL can
# leave unrecorded, against one statement per answer (a third of the throughput on the 2-core VM).
RECORD_INTERVAL = 0.005
BUILD_TURN_SECONDS = 0.002  # building a batch lets other tasks of the loop run this often


@dataclass(frozen=True)
class KindPolicy:
    """How e-mails of a kind are sent: which From, and which list a member may leave (None: the
    mail is about their account and carries no unsubscribe)."""

    sender: Literal["service", "newsletter"]
    list_name: Literal["digest", "newsletter"] | None


POLICIES: dict[str, KindPolicy] = {
    "service": KindPolicy("service", None),
    "confirmation": KindPolicy("newsletter", None),
    "digest": KindPolicy("service", "digest"),
    "newsletter": KindPolicy("newsletter", "newsletter"),
    "test": KindPolicy("newsletter", "newsletter"),
}

DEFAULT_QUEUE = {
    "service": queues.SERVICE,
    "confirmation": queues.SERVICE,
    "test": queues.SERVICE,
    "digest": queues.DIGEST,
    "newsletter": queues.BULK,
}


# --- putting e-mails in ----------------------------------------------------------------------


@dataclass(frozen=True)
class NewEmail:
    """One row for `add_many`."""

    kind: Kind
    to_address: str
    template: str | None
    context: Mapping[str, Any] = field(default_factory=dict)
    account_id: int | None = None
    subject: str | None = None
    digest_id: int | None = None
    newsletter_id: int | None = None
    queue: str | None = None
    send_at: datetime | None = None


def _check_new(kind: str, to_address: str, queue: str | None) -> str:
    if kind not in POLICIES:
        raise ValueError(f"unknown kind of e-mail {kind!r}")
    mail.check_address(to_address)
    queue = queue or DEFAULT_QUEUE[kind]
    if queue not in queues.ALL.values():
        raise ValueError(f"unknown queue {queue!r}")
    return queue


async def add(
    conn: asyncpg.Connection,
    *,
    kind: Kind,
    to_address: str,
    template: str | None,
    context: Mapping[str, Any] | None = None,
    account_id: int | None = None,
    queue: str | None = None,
    subject: str | None = None,
    digest_id: int | None = None,
    newsletter_id: int | None = None,
    idempotency_key: str | None = None,
    send_at: datetime | None = None,
) -> int | None:
    """Insert one e-mail (status queued) in the caller's transaction; returns its id, or None if
    the row already exists (the same `digest_id`, or the same newsletter and account).

    Nothing is sent until the transaction commits and someone calls `ring(redis, queue)` (or the
    sweep finds it within a minute). `context` (JSON-able) is rendered with `template` at send
    time; `subject`, when given, replaces the template's subject. `queue` defaults by kind
    (service -> service, digest -> digest, newsletter -> bulk). Raises HeaderError for an
    address that cannot be written into a header, ValueError for an unknown kind or queue.
    """
    queue = _check_new(kind, to_address, queue)
    email_id: int | None = await conn.fetchval(
        Q.add_email,
        kind,
        queue,
        account_id,
        to_address,
        template,
        subject,
        dict(context or {}),
        digest_id,
        newsletter_id,
        idempotency_key,
        send_at,
    )
    return email_id


async def add_many(conn: asyncpg.Connection, emails: Sequence[NewEmail]) -> list[int]:
    """Insert many e-mails in one statement; returns the ids of the rows inserted (rows that
    already exist — same digest, or same newsletter and account — are skipped). Same rules as
    `add`; ring each queue afterwards with `ring(redis, queue, count=len(ids))`."""
    if not emails:
        return []
    columns: list[list[Any]] = [[] for _ in range(10)]
    for e in emails:
        values = (
            e.kind,
            _check_new(e.kind, e.to_address, e.queue),
            e.account_id,
            e.to_address,
            e.template,
            e.subject,
            dict(e.context),
            e.digest_id,
            e.newsletter_id,
            e.send_at,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    rows = await conn.fetch(Q.add_emails, *columns)
    return [r["id"] for r in rows]


async def ring(redis: ArqRedis, queue: str, count: int = 1, *, at: datetime | None = None) -> bool:
    """Ring the doorbell of `queue` after the rows are committed: enqueue enough `deliver` jobs for
    `count` e-mails (at most MAX_BELLS; each loops until nothing is due). With `at`, one job then
    (rings for the same second are merged).

    Never raises for Redis trouble: the rows are committed, so a lost ring only delays them until
    the sweep (within 30 s) — a producer's request must not fail after its e-mail was stored.
    Returns False (and logs) when the ring did not get through."""
    try:
        if at is not None:
            stamp = int(at.timestamp())
            await redis.enqueue_job(
                JOB_NAME,
                _queue_name=queue,
                _job_id=f"deliver:{queue}:{stamp}",
                _defer_until=datetime.fromtimestamp(stamp + 1, UTC),
            )
            return True
        for _ in range(min(MAX_BELLS, max(1, math.ceil(count / BATCH_SIZE)))):
            await redis.enqueue_job(
                JOB_NAME, _queue_name=queue, _job_id=f"deliver:{queue}:{uuid.uuid4().hex}"
            )
    except (RedisError, OSError) as exc:
        log.warning("could not ring %s (%s); the sweep will deliver", queue, type(exc).__name__)
        return False
    return True


async def _has_bell(redis: ArqRedis, queue: str) -> bool:
    """Whether a deliver job of `queue` is waiting (due within a second) or running. Jobs
    deferred further (a retry bell) do not count: rows due now need their own. Nor does a job
    marked in progress for longer than a live one runs (RUN_SECONDS + a lease): its worker was
    killed, and arq keeps such a job in the queue, marked in progress, until the job's timeout
    (up to an hour for bulk) — it must not stop the sweep from ringing."""
    now_ms = int(time.time() * 1000)
    stale_ms = now_ms - int((RUN_SECONDS + LEASE_SECONDS) * 1000)
    members = await redis.zrangebyscore(queue, "-inf", now_ms + 1000, start=0, num=1000, withscores=True)
    for member, score in members:
        job_id = member.decode() if isinstance(member, bytes) else member
        if not job_id.startswith("deliver:"):
            continue
        if score >= stale_ms or not await redis.exists(in_progress_key_prefix + job_id):
            return True
    return False


async def sweep(pool: asyncpg.Pool, redis: ArqRedis, now: datetime | None = None) -> dict[str, int]:
    """Ring every queue that has due rows but no job waiting or running (lost jobs, expired leases,
    retries that came due). Returns {queue: due rows} for the queues it rang. Idempotent."""
    now = now or datetime.now(UTC)
    rang: dict[str, int] = {}
    for row in await pool.fetch(Q.due_by_queue, now):
        queue, due = row["queue"], row["due"]
        # A lease that ran out means the worker holding those rows died: whatever arq says
        # about its job, the queue needs a new one.
        if row["expired"] or not await _has_bell(redis, queue):
            await ring(redis, queue, due)
            rang[queue] = due
    if rang:
        log.info("sweep rang %s", ", ".join(f"{q} ({n} due)" for q, n in rang.items()))
    return rang


async def retry_failed(
    pool: asyncpg.Pool,
    redis: ArqRedis,
    *,
    ids: Sequence[int] = (),
    since: datetime | None = None,
    now: datetime | None = None,
) -> list[int]:
    """Put failed e-mails back in the queue (by id, or all that failed at or after `since`) with
    a fresh retry schedule, and ring their queues. Only rows in state failed move; returns their
    ids. An address suppressed since is still skipped at send time."""
    now = now or datetime.now(UTC)
    if ids:
        rows = await pool.fetch(Q.retry_failed_ids, list(ids), now)
    elif since is not None:
        rows = await pool.fetch(Q.retry_failed_since, since, now)
    else:
        raise ValueError("give e-mail ids or a time")
    by_queue: dict[str, int] = {}
    for row in rows:
        by_queue[row["queue"]] = by_queue.get(row["queue"], 0) + 1
    for queue, count in by_queue.items():
        await ring(redis, queue, count)
    return sorted(r["id"] for r in rows)


# --- sending ---------------------------------------------------------------------------------


@dataclass
class Result:
    id: int
    status: Literal["sent", "failed", "suppressed", "queued"]
    event: str
    message_id: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    detail: dict[str, Any] | None = None


@dataclass
class Counts:
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    suppressed: int = 0
    bounced: int = 0

    def add(self, result: Result) -> None:
        attribute = {"queued": "deferred", "sent": "sent", "suppressed": "suppressed"}.get(result.status)
        if attribute is None:
            attribute = "bounced" if result.event == "bounced" else "failed"
        setattr(self, attribute, getattr(self, attribute) + 1)


def context_for(settings: Settings, email: OutgoingEmail) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The render context of an e-mail (its own context plus `public_url`, `postal_address`,
    `to_address` and, for kinds a member may leave, `unsubscribe_url` and `preferences_url`)
    and the list headers it gets (List-Id; List-Unsubscribe and List-Unsubscribe-Post)."""
    s = settings
    policy = POLICIES[email.kind]
    context: dict[str, Any] = {
        **email.context,
        "public_url": s.public_url,
        "postal_address": s.postal_address,
        "to_address": email.to_address,
    }
    headers = [("List-Id", f"<{email.kind}.{s.list_id_domain}>")]
    if policy.list_name is not None and email.account_id is not None:
        unsubscribe = tokens.sign(s.secret, "unsubscribe", email.account_id, policy.list_name)
        preferences = tokens.sign(s.secret, "preferences", email.account_id, policy.list_name)
        # `?e=ID` names the e-mail the link came from (not a secret: it is checked against the
        # token's account), so unsubscribes from the header and the footer alike are attributed
        # to this e-mail and its newsletter.
        context["unsubscribe_url"] = f"{s.public_url}/u/{unsubscribe}?e={email.id}"
        context["preferences_url"] = f"{s.public_url}/preferences/{preferences}?e={email.id}"
        value = f"<{context['unsubscribe_url']}>"
        if s.unsubscribe_mailto:
            value += f", <mailto:{s.unsubscribe_mailto}?subject=unsubscribe-{unsubscribe}>"
        headers.append(("List-Unsubscribe", value))
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    elif policy.list_name is None:
        headers.append(("Auto-Submitted", "auto-generated"))
    return context, headers


class _Recorder:
    """Records one batch's results as the SMTP answers come in, from a task of its own so that no
    send waits for the database (group commit): a result is written at once when no write is in
    progress and the last one started at least `interval` seconds ago; results that arrive
    meanwhile go together in the next write. A slow batch records every answer as it comes; a fast
    one writes at most 1/`interval` statements a second (each costs the database about the same
    whether it records one result or twenty). A worker killed mid-batch then leaves unrecorded
    only what was in flight and the answers of the last `interval` plus one write, not a group or
    a batch. `close` writes the rest."""

    def __init__(self, write: Callable[[Sequence[Result]], Awaitable[None]], interval: float) -> None:
        self._write = write
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._last_write = -math.inf
        self._pending: list[Result] = []
        self._added: set[int] = set()
        self._arrived = asyncio.Event()  # a result waits
        self._task: asyncio.Task[None] | None = None
        self._writing = False
        self._closing = False

    def add(self, result: Result) -> None:
        """Queue one result for the next write (never blocks)."""
        self._added.add(result.id)
        self._pending.append(result)
        self._arrived.set()
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._write_as_they_come())

    async def _write_as_they_come(self) -> None:
        while True:
            await self._arrived.wait()
            wait = self._last_write + self._interval - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._arrived.clear()
            group, self._pending = self._pending, []
            self._last_write = self._loop.time()
            self._writing = True
            try:
                await self._write(group)
            except Exception:
                # Keep them for `close`, which tries once more and raises if it fails too.
                log.exception("recording %d delivery results failed; retrying at the batch's end", len(group))
                self._pending[:0] = group
                return
            finally:
                self._writing = False
            if self._closing:
                return

    async def close(self, rest: Sequence[Result] = ()) -> None:
        """Stop the writer (letting a write in progress finish), then record what still waits and
        those of `rest` never added, in one statement."""
        self._closing = True
        task = self._task
        if task is not None:
            if not self._writing:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        group = self._pending + [r for r in rest if r.id not in self._added]
        self._pending = []
        if group:
            await self._write(group)


class Delivery:
    """Claims, renders, sends and records. One per worker process and queue (`ctx["delivery"]`)."""

    record_interval = RECORD_INTERVAL  # see `_Recorder`; tests change it

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        sender: Sender,
        *,
        redis: ArqRedis | None = None,
        renderers: Renderers | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.sender = sender
        self.redis = redis
        self.renderers = renderers or Renderers(settings)
        self.batch_size = batch_size
        self.signer = mail.Signer.from_settings(settings)
        self.limiter = (
            RateLimiter(redis, settings.send_rate) if redis is not None and settings.send_rate else None
        )
        self._from = {
            "service": mail.parse_mailbox(settings.service_from),
            "newsletter": mail.parse_mailbox(settings.newsletter_from),
        }
        self._from_header = {k: mail.mailbox(*v) for k, v in self._from.items()}

    def lease_seconds(self) -> float:
        rate = self.settings.send_rate
        return LEASE_SECONDS + (2 * self.batch_size / rate if rate else 0)

    async def run(self, queue: str, *, now: datetime | None = None) -> Counts:
        """Deliver every due row of `queue`, batch after batch, until none is due (rows other
        workers hold are skipped). Stops early when a whole batch was deferred (the server is
        down or refusing): the rest stay due, untouched, and the retry bell or the sweep brings
        the worker back. `now` fixes the clock (tests); otherwise the real time."""
        counts = Counts()
        started = time.monotonic()
        while True:
            batch_now = now or datetime.now(UTC)
            results = await self.deliver_batch(queue, batch_now)
            if results is None:
                return counts
            for result in results:
                counts.add(result)
            if all(r.status == "queued" for r in results):
                log.warning("%s: every e-mail of a batch was deferred; pausing this queue's job", queue)
                return counts
            if time.monotonic() - started > RUN_SECONDS and self.redis is not None:
                # Hand over to a fresh job well before arq's timeout could cancel this one
                # mid-batch (a cancelled batch is sent again when its lease runs out).
                await ring(self.redis, queue)
                return counts

    async def deliver_batch(self, queue: str, now: datetime) -> list[Result] | None:
        """Claim one batch, send it and record it; None when nothing was due."""
        lease = now + timedelta(seconds=self.lease_seconds())
        rows = await self.pool.fetch(Q.claim_emails, queue, now, self.batch_size, lease)
        if not rows:
            return None

        async def write(results: Sequence[Result]) -> None:
            await self._record(results, rows, now, lease)

        recorder = _Recorder(write, self.record_interval)
        stop = asyncio.Event()
        sending = asyncio.ensure_future(self._send_rows(rows, now, recorder, stop))
        try:
            try:
                results = await asyncio.shield(sending)
            except asyncio.CancelledError:
                # Stopping (SIGTERM on a deploy, Redis lost, a job timeout): no lane starts
                # another message; those on the wire are finished, within the SMTP timeout, so
                # that their answers are recorded below and they are not sent again when the
                # lease runs out. The rest stay claimed until then.
                stop.set()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(sending, self.settings.smtp_timeout)
                raise
        except BaseException:
            # Stopped or broken: record what the server already answered.
            try:
                await asyncio.shield(recorder.close())
            except Exception:
                log.exception("recording the answered part of a stopped batch failed")
            raise
        await asyncio.shield(recorder.close(results))
        retry_at = [r.next_attempt_at for r in results if r.next_attempt_at is not None]
        if retry_at and self.redis is not None:
            await ring(self.redis, queue, at=min(retry_at))
        return results

    async def _send_rows(
        self,
        rows: Sequence[asyncpg.Record],
        now: datetime,
        recorder: _Recorder | None = None,
        stop: asyncio.Event | None = None,
    ) -> list[Result]:
        """Send one claimed batch; each SMTP answer goes to `recorder` as it comes in. Returns
        every row's result (those decided before sending included, which the caller records)."""
        emails = [
            OutgoingEmail(
                id=r["id"],
                kind=r["kind"],
                account_id=r["account_id"],
                to_address=r["to_address"],
                template=r["template"],
                subject=r["subject"],
                context=r["context"] or {},
                digest_id=r["digest_id"],
                newsletter_id=r["newsletter_id"],
            )
            for r in rows
        ]
        attempts = {r["id"]: r["attempts"] for r in rows}
        known_ids = {r["id"]: r["message_id"] for r in rows}
        suppressed = await suppression.lookup(self.pool, [e.to_address for e in emails])
        results: dict[int, Result] = {}
        to_send: list[OutgoingEmail] = []
        for email in emails:
            reason = self._suppressed(email, suppressed.get(suppression.normalise(email.to_address), []))
            if attempts[email.id] > MAX_ATTEMPTS:
                # Claimed again and again without a result (a worker dies on it): give up.
                results[email.id] = Result(
                    email.id,
                    "failed",
                    "failed",
                    error=f"abandoned after {attempts[email.id] - 1} claims without a result",
                    detail={"attempts": attempts[email.id] - 1},
                )
            elif reason:
                list_name, why = reason
                results[email.id] = Result(
                    email.id,
                    "suppressed",
                    "suppressed",
                    error=f"suppressed ({why}, list {list_name})",
                    detail={"reason": why, "list": list_name},
                )
            else:
                to_send.append(email)

        by_kind: dict[str, list[OutgoingEmail]] = {}
        for email in to_send:
            by_kind.setdefault(email.kind, []).append(email)
        for kind, group in by_kind.items():
            await self.renderers.for_kind(kind).prepare(self.pool, group)

        date = mail.format_date(now)
        envelopes: list[tuple[OutgoingEmail, str, Envelope]] = []
        loop = asyncio.get_running_loop()
        turn = loop.time()
        for email in to_send:
            if loop.time() - turn > BUILD_TURN_SECONDS:
                # Building is CPU work (tens of ms for a batch of digests): give the loop a turn so
                # the other batch in this process reads its answers and records them as they come,
                # instead of holding them until this batch is built (a kill then would re-send them).
                await asyncio.sleep(0)
                turn = loop.time()
            try:
                mid, envelope = self.build_message(email, date, known_ids[email.id])
            except (TemplateError, mail.HeaderError) as exc:
                results[email.id] = Result(
                    email.id,
                    "failed",
                    "failed",
                    error=f"cannot build the message: {exc}",
                    detail={"error": str(exc)},
                )
                continue
            except Exception as exc:
                # A renderer's bug must fail this e-mail, not the batch around it (which would
                # be claimed again and again when its lease runs out).
                log.exception("building e-mail %s (%s) failed", email.id, email.kind)
                results[email.id] = Result(
                    email.id,
                    "failed",
                    "failed",
                    error=f"building the message failed: {type(exc).__name__}",
                    detail={"error": type(exc).__name__},
                )
                continue
            envelopes.append((email, mid, envelope))

        def answered(i: int, outcome: str | Exception) -> None:
            email, mid, _ = envelopes[i]
            result = self._result(email.id, mid, attempts[email.id], outcome, now)
            results[email.id] = result
            if recorder is not None:
                recorder.add(result)

        outcomes = await self._send_all([envelope for _, _, envelope in envelopes], answered, stop)
        for (email, mid, _), outcome in zip(envelopes, outcomes, strict=True):
            if email.id not in results:
                results[email.id] = self._result(email.id, mid, attempts[email.id], outcome, now)
        return [results[e.id] for e in emails]

    def _suppressed(self, email: OutgoingEmail, entries: list[tuple[str, str]]) -> tuple[str, str] | None:
        policy = POLICIES[email.kind]
        for list_name, reason in entries:
            if policy.list_name is None:
                if list_name == "all" and reason in suppression.SERVICE_BLOCKING_REASONS:
                    return list_name, reason
            elif list_name in ("all", policy.list_name):
                return list_name, reason
        return None

    def build_message(self, email: OutgoingEmail, date: str, known_id: str | None) -> tuple[str, Envelope]:
        """Render and build one e-mail (DKIM-signed when configured): its Message-ID and envelope.
        Raises TemplateError or HeaderError."""
        context, headers = context_for(self.settings, email)
        rendered = self.renderers.for_kind(email.kind).render(email, context)
        sender_kind = POLICIES[email.kind].sender
        _, from_address = self._from[sender_kind]
        mid = known_id or mail.message_id(email.id, from_address.rpartition("@")[2], self.settings.secret)
        message = mail.build(
            from_=self._from_header[sender_kind],
            to=mail.mailbox(None, email.to_address),
            subject=rendered.subject,
            date=date,
            message_id=mid,
            text=rendered.text,
            html=rendered.html,
            headers=headers,
        )
        if self.signer is not None:
            message = self.signer.sign(message)
        return mid, Envelope(from_address, (email.to_address,), message)

    async def _pace(self, n: int) -> list[float]:
        """Delays (seconds from now) at which to start each of `n` sends under the global rate."""
        if self.limiter is None or n == 0:
            return [0.0] * n
        first = await self.limiter.reserve(n)
        interval = 1.0 / self.settings.send_rate
        return [first + i * interval for i in range(n)]

    async def _send_all(
        self,
        envelopes: Sequence[Envelope],
        answered: Callable[[int, str | Exception], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> list[str | Exception]:
        """Send a batch over as many lanes as the SMTP pool has connections; each lane takes the
        next message when its previous one is done (no task per message, no pile-up on the
        pool). Under a send-rate limit each message waits for its reserved slot. `answered`, when
        given, is called with each message's index and outcome as its answer arrives. Once `stop`
        is set no lane starts another message (the unsent count as "not sent")."""
        outcomes: list[str | Exception | None] = [None] * len(envelopes)
        delays = await self._pace(len(envelopes))
        loop = asyncio.get_running_loop()
        start = loop.time()
        order = iter(range(len(envelopes)))

        async def lane() -> None:
            for i in order:
                if stop is not None and stop.is_set():
                    return
                wait = start + delays[i] - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    if stop is not None and stop.is_set():
                        return
                outcome: str | Exception
                try:
                    outcome = await self.sender.send(envelopes[i])
                except (TemporaryFailure, PermanentFailure) as exc:
                    outcome = exc
                outcomes[i] = outcome
                if answered is not None:
                    answered(i, outcome)

        # A TaskGroup, not gather: when a lane fails, gather returns at once while the others may
        # still wait for answers, which would then come after the batch recorded.
        async with asyncio.TaskGroup() as lanes:
            for _ in range(min(len(envelopes), self.settings.smtp_pool_size)):
                lanes.create_task(lane())
        return [o if o is not None else TemporaryFailure("not sent") for o in outcomes]

    def _result(
        self, email_id: int, mid: str, attempt: int, outcome: str | Exception, now: datetime
    ) -> Result:
        if isinstance(outcome, str):
            return Result(email_id, "sent", "sent", message_id=mid, detail={"reply": outcome[:200]})
        error = str(outcome)[:500]
        if isinstance(outcome, PermanentFailure):
            event = "bounced" if outcome.unknown_mailbox else "failed"
            return Result(email_id, "failed", event, message_id=mid, error=error, detail={"error": error})
        if attempt <= len(RETRY_DELAYS):
            at = now + timedelta(seconds=RETRY_DELAYS[attempt - 1])
            return Result(
                email_id,
                "queued",
                "deferred",
                message_id=mid,
                error=error,
                next_attempt_at=at,
                detail={"error": error, "attempt": attempt, "retry_at": at.isoformat()},
            )
        return Result(
            email_id,
            "failed",
            "failed",
            message_id=mid,
            error=f"gave up after {attempt} attempts: {error}",
            detail={"error": error, "attempts": attempt},
        )

    async def _record(
        self, results: Sequence[Result], rows: Sequence[asyncpg.Record], now: datetime, lease: datetime
    ) -> None:
        args = (
            Q.record_results,
            [r.id for r in results],
            [r.status for r in results],
            [r.message_id for r in results],
            [r.error for r in results],
            [r.next_attempt_at for r in results],
            [r.event for r in results],
            [r.detail for r in results],
            now,
            lease,
            str(int(lease.timestamp() * 1_000_000)),
        )
        # `record_results` commits without waiting for the WAL flush (0.3-6 ms a commit on the
        # shared VM, and a write per few answers): a killed worker cannot lose what PostgreSQL
        # committed; only a crash of PostgreSQL itself can lose the last few hundred ms of
        # results, and those rows are then sent again (same Message-ID) when their lease runs
        # out, never lost. One statement, one round trip, unless a hard bounce adds suppressions.
        bounced = [r for r in results if r.event == "bounced"]
        if not bounced:
            await self.pool.execute(*args)
            return
        address = {r["id"]: r["to_address"] for r in rows}
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(*args)
            await conn.execute(
                Q.add_suppressions,
                [suppression.address_hash(address[r.id]) for r in bounced],
                ["all"] * len(bounced),
                ["hard_bounce"] * len(bounced),
                [(r.error or "")[:200] for r in bounced],
            )


async def deliver_job(ctx: dict[str, Any]) -> dict[str, int]:
    """arq job (the doorbell): deliver everything due on this worker's queue."""
    # arq copies ctx per job; the process-wide dict `deliveries` (from open_context) keeps one
    # Delivery (templates, renderers, DKIM key) per queue.
    cache: dict[str, Delivery] = ctx.get("deliveries", {})
    queue = ctx.get("queue", queues.SERVICE)
    delivery = cache.get(queue)
    if delivery is None:
        delivery = Delivery(ctx["settings"], ctx["pool"], ctx["sender"], redis=ctx.get("redis"))
        cache[queue] = delivery
    counts = await delivery.run(queue)
    return counts.__dict__


async def sweep_job(ctx: dict[str, Any]) -> dict[str, int]:
    """arq cron: re-ring queues whose due rows have no job."""
    return await sweep(ctx["pool"], ctx["redis"])
