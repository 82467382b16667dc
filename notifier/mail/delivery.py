"""Sending what the outbox holds: a `deliver` job claims a batch of due rows, renders and builds
each e-mail, sends them over several SMTP connections at once and records each result as it
comes in (group commit: one statement per write, with an append-only event per result; answers
that arrive during a write go in the next, at most one write per batch every 5 ms). A worker
killed mid-batch sends again only what was in flight or answered in the last few milliseconds,
not the whole batch; a stopped one (SIGTERM, Redis lost) finishes what is on the wire, records it
and sends nothing again. Retries follow `outbox.RETRY_DELAYS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from arq import ArqRedis

from notifier import queues, suppression, tokens, verp
from notifier.brand import Brand
from notifier.db import Q
from notifier.mail import compose, outbox, smtp_reply
from notifier.mail.render import NothingToSend, OutgoingEmail, Renderers, TemplateError
from notifier.mail.send_rate import SendRate
from notifier.mail.smtp import (
    DeliveryError,
    Envelope,
    PermanentFailure,
    Sender,
    TemporaryFailure,
)
from notifier.settings import Settings

log = logging.getLogger("notifier.delivery")

# A batch writes its results at most this often (see `_Recorder`): the bound on what a SIGKILL can
# leave unrecorded, against one statement per answer (a third of the throughput on the 2-core VM).
RECORD_INTERVAL = 0.005
BUILD_TURN_SECONDS = 0.002  # building a batch lets other tasks of the loop run this often
# How the error of an e-mail the receiving server refused by policy (5.7.x) begins.
POLICY_PREFIX = "refused by the receiving server's policy (the sender, not the address; nobody suppressed): "


@dataclass
class Result:
    id: int
    status: Literal["sent", "failed", "suppressed", "queued", "cancelled"]
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
    cancelled: int = 0

    def add(self, result: Result) -> None:
        attribute = {
            "queued": "deferred",
            "sent": "sent",
            "suppressed": "suppressed",
            "cancelled": "cancelled",
        }.get(result.status)
        if attribute is None:
            attribute = "bounced" if result.event == "bounced" else "failed"
        setattr(self, attribute, getattr(self, attribute) + 1)


def context_for(
    settings: Settings, email: OutgoingEmail, brand: Brand | None = None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The render context of an e-mail (its own context plus `public_url`, `postal_address`,
    `to_address`, `brand` (the settings' when not given) and, for kinds a member may leave,
    `unsubscribe_url` and `preferences_url`) and the list headers it gets (List-Id;
    List-Unsubscribe and List-Unsubscribe-Post)."""
    s = settings
    policy = outbox.POLICIES[email.kind]
    context: dict[str, Any] = {
        **email.context,
        "public_url": s.public_url,
        "postal_address": s.postal_address,
        "to_address": email.to_address,
        "brand": brand or Brand.from_settings(s),
    }
    # A newsletter names the list the member gets it through (notifier/audience.py): its own
    # List-Id, and links that leave that list only. The default list stays `newsletter`.
    list_id = email.context.get("list_id") if email.kind == "newsletter" else None
    list_key = email.context.get("list") if list_id is not None else email.kind
    headers = [("List-Id", f"<{list_key}.{s.list_id_domain}>")]
    if policy.list_name is not None and email.account_id is not None:
        list_name: tokens.ListName = "list" if list_id is not None else policy.list_name
        unsubscribe = tokens.sign(s.secret, "unsubscribe", email.account_id, list_name, list_id)
        preferences = tokens.sign(s.secret, "preferences", email.account_id, list_name, list_id)
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
    running = 0  # deliver jobs of this process running `run` (workers.jobs.deliver counts them)

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        sender: Sender,
        *,
        redis: ArqRedis | None = None,
        renderers: Renderers | None = None,
        batch_size: int = outbox.BATCH_SIZE,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.sender = sender
        self.redis = redis
        self.renderers = renderers or Renderers(settings)
        self.batch_size = batch_size
        self.signer = compose.Signer.from_settings(settings)
        self.limiter = (
            SendRate(redis, settings.send_rate) if redis is not None and settings.send_rate else None
        )
        self._from = {
            "service": compose.parse_mailbox(settings.service_from),
            "newsletter": compose.parse_mailbox(settings.newsletter_from),
        }
        self._from_header = {k: compose.mailbox(*v) for k, v in self._from.items()}

    def lease_seconds(self) -> float:
        rate = self.settings.send_rate
        return outbox.LEASE_SECONDS + (2 * self.batch_size / rate if rate else 0)

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
            if time.monotonic() - started > outbox.RUN_SECONDS and self.redis is not None:
                # Hand over to a fresh job well before arq's timeout could cancel this one
                # mid-batch (a cancelled batch is sent again when its lease runs out).
                await outbox.ring(self.redis, queue)
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
        lanes_done = False
        # Under a send rate, more urgent mail may hold this batch back: start no send so late that
        # its answer could come after the lease ran out (and another worker claimed the row).
        deadline = asyncio.get_running_loop().time() + self.lease_seconds() - self.settings.smtp_timeout
        sending = asyncio.ensure_future(
            self._send_rows(rows, now, recorder, stop, queue=queue, deadline=deadline)
        )
        try:
            try:
                results = await asyncio.shield(sending)
            except asyncio.CancelledError:
                # Stopping (SIGTERM on a deploy, Redis lost, a job timeout): no lane starts
                # another message; those on the wire are finished, within the SMTP timeout, so
                # that their answers are recorded below and they are not sent again when the
                # lease runs out. Once every lane has returned, the rows never started are
                # handed back at once; if the wait runs out, they stay claimed until the lease.
                stop.set()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(sending, self.settings.smtp_timeout)
                    lanes_done = True
                raise
        except BaseException:
            # Stopped or broken: record what the server already answered.
            try:
                await asyncio.shield(recorder.close())
                if lanes_done:
                    await asyncio.shield(self.pool.execute(Q.release_unsent, [r["id"] for r in rows], lease))
            except Exception:
                log.exception("recording the answered part of a stopped batch failed")
            raise
        await asyncio.shield(recorder.close(results))
        retry_at = [r.next_attempt_at for r in results if r.next_attempt_at is not None]
        if retry_at and self.redis is not None:
            await outbox.ring(self.redis, queue, at=min(retry_at))
        return results

    async def _send_rows(
        self,
        rows: Sequence[asyncpg.Record],
        now: datetime,
        recorder: _Recorder | None = None,
        stop: asyncio.Event | None = None,
        *,
        queue: str = queues.SERVICE,
        deadline: float | None = None,
    ) -> list[Result]:
        """Send one claimed batch of `queue`; each SMTP answer goes to `recorder` as it comes in.
        Returns every row's result (those decided before sending included, which the caller
        records). No send starts after `deadline` (event loop time)."""
        emails = [OutgoingEmail.from_row(r) for r in rows]
        attempts = {r["id"]: r["attempts"] for r in rows}
        known_ids = {r["id"]: r["message_id"] for r in rows}
        suppressed = await suppression.lookup(self.pool, [e.to_address for e in emails])
        results: dict[int, Result] = {}
        to_send: list[OutgoingEmail] = []
        for email in emails:
            reason = self._suppressed(email, suppressed.get(suppression.normalise(email.to_address), []))
            if attempts[email.id] > outbox.MAX_ATTEMPTS:
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

        if to_send:
            await self.renderers.brand.refresh(self.pool)
        by_kind: dict[str, list[OutgoingEmail]] = {}
        for email in to_send:
            by_kind.setdefault(email.kind, []).append(email)
        for kind, group in by_kind.items():
            await self.renderers.for_kind(kind).prepare(self.pool, group)

        date = compose.format_date(now)
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
            except NothingToSend as exc:
                results[email.id] = Result(email.id, "cancelled", "cancelled", error=str(exc))
                continue
            except (TemplateError, compose.HeaderError) as exc:
                why = smtp_reply.redact(str(exc))
                results[email.id] = Result(
                    email.id,
                    "failed",
                    "failed",
                    error=f"cannot build the message: {why}",
                    detail={"error": why},
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
            result = self._result(email, mid, attempts[email.id], outcome, now)
            results[email.id] = result
            if recorder is not None:
                recorder.add(result)

        outcomes = await self._send_all(
            [envelope for _, _, envelope in envelopes], answered, stop, queue=queue, deadline=deadline
        )
        for (email, mid, _), outcome in zip(envelopes, outcomes, strict=True):
            if email.id not in results:
                results[email.id] = self._result(email, mid, attempts[email.id], outcome, now)
        return [results[e.id] for e in emails]

    def _suppressed(self, email: OutgoingEmail, entries: list[tuple[str, str]]) -> tuple[str, str] | None:
        policy = outbox.POLICIES[email.kind]
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
        context, headers = context_for(self.settings, email, self.renderers.brand.current)
        rendered = self.renderers.for_kind(email.kind).render(email, context)
        sender_kind = outbox.POLICIES[email.kind].sender
        _, from_address = self._from[sender_kind]
        mid = known_id or compose.message_id(email.id, from_address.rpartition("@")[2], self.settings.secret)
        message = compose.build(
            from_=self._from_header[sender_kind],
            to=compose.mailbox(None, email.to_address),
            subject=rendered.subject,
            date=date,
            message_id=mid,
            text=rendered.text,
            html=rendered.html,
            headers=headers,
        )
        if self.signer is not None:
            message = self.signer.sign(message)
        domain = self.settings.bounce_domain  # VERP: the envelope sender names this e-mail, signed
        sender = verp.return_path(self.settings.secret, email.id, domain) if domain else from_address
        return mid, Envelope(sender, (email.to_address,), message)

    async def _send_all(
        self,
        envelopes: Sequence[Envelope],
        answered: Callable[[int, str | Exception], None] | None = None,
        stop: asyncio.Event | None = None,
        *,
        queue: str = queues.SERVICE,
        deadline: float | None = None,
    ) -> list[str | Exception]:
        """Send a batch over as many lanes as the SMTP pool has connections; each lane takes the
        next message when its previous one is done (no task per message, no pile-up on the
        pool). Under a send rate each message waits for a slot of the shared schedule, booked a
        few at a time with `queue`'s priority (`notifier.send_rate`). `answered`, when given, is
        called with each message's index and outcome as its answer arrives. Once `stop` is set, or
        when a slot would start after `deadline` (event loop time), no lane starts another message
        (the unsent count as "not sent" and are retried)."""
        outcomes: list[str | Exception | None] = [None] * len(envelopes)
        pacer = self.limiter.pacer(queue, len(envelopes), deadline) if self.limiter and envelopes else None
        order = iter(range(len(envelopes)))

        async def lane() -> None:
            for i in order:
                if stop is not None and stop.is_set():
                    return
                if pacer is not None and (not await pacer.wait() or (stop is not None and stop.is_set())):
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
        try:
            async with asyncio.TaskGroup() as lanes:
                for _ in range(min(len(envelopes), self.settings.smtp_pool_size)):
                    lanes.create_task(lane())
        finally:
            if pacer is not None:
                pacer.close()
        return [o if o is not None else TemporaryFailure("not sent") for o in outcomes]

    def _result(
        self, email: OutgoingEmail, mid: str, attempt: int, outcome: str | Exception, now: datetime
    ) -> Result:
        email_id = email.id
        if isinstance(outcome, str):
            return Result(
                email_id, "sent", "sent", message_id=mid, detail={"reply": smtp_reply.redact(outcome)[:200]}
            )
        error = smtp_reply.redact(str(outcome))[:500]
        if (
            email.account_id is None
            and email.kind == "service"
            and isinstance(outcome, DeliveryError)
            and outcome.code is not None
        ):
            # The notice of an erasure: a reply may quote the name too, so keep only its codes.
            error = smtp_reply.summary(outcome.code, error, outcome.category)
        if isinstance(outcome, PermanentFailure):
            event = "bounced" if outcome.unknown_mailbox else "failed"
            if outcome.policy:
                # About the sender (DMARC, SPF, reputation), not the address: nobody is suppressed,
                # and the console's deliverability page shows these (`POLICY_PREFIX`).
                error = f"{POLICY_PREFIX}{error}"[:500]
            detail = {"error": error, "category": outcome.category}
            return Result(email_id, "failed", event, message_id=mid, error=error, detail=detail)
        if attempt <= len(outbox.RETRY_DELAYS):
            at = now + timedelta(seconds=outbox.RETRY_DELAYS[attempt - 1])
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
        digest_of = {r["id"]: r["digest_id"] for r in rows if r["digest_id"] is not None}
        undelivered = [digest_of[r.id] for r in results if r.status == "failed" and r.id in digest_of]
        if not bounced and not undelivered:
            await self.pool.execute(*args)
            return
        address = {r["id"]: r["to_address"] for r in rows}
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(*args)
            if bounced:
                await conn.execute(
                    Q.add_suppressions,
                    [suppression.address_hash(address[r.id]) for r in bounced],
                    ["all"] * len(bounced),
                    ["hard_bounce"] * len(bounced),
                    [(r.error or "")[:200] for r in bounced],
                )
            if undelivered:
                await conn.execute(Q.release_digest_messages, undelivered)
