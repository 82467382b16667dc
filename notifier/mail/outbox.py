"""The outbox: every e-mail is a row before any job is enqueued; Redis only rings the doorbell.

Producers (service messages, digests, newsletters) call `add` / `add_many` inside their own
transaction, then `ring` after it commits. A `deliver` job on the row's queue (`notifier.mail.delivery`)
claims due rows in batches (`FOR UPDATE SKIP LOCKED`, a lease in `locked_until`), sends them and
records each result; a result is only recorded for a row still held under the lease that claimed
it, so a job that runs twice sends once. `sweep` (cron) re-rings queues whose rows are due and have
no job (Redis flushed, a worker killed mid-send: its lease runs out and the row is due again).

States: queued -> sending -> sent | failed | suppressed, and sending -> queued for a retry.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from arq import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.exceptions import RedisError

from notifier import queues
from notifier.db import Q
from notifier.mail import compose

log = logging.getLogger("notifier.outbox")

# The doorbell: the Redis connection jobs are enqueued on. Callers above the mail layer name it
# by this alias and never import arq themselves.
Doorbell = ArqRedis

Kind = Literal["service", "digest", "newsletter", "test", "confirmation"]

# Seconds to wait after the 1st, 2nd, ... temporary failure. After the last, the e-mail fails.
RETRY_DELAYS: tuple[int, ...] = (30, 120, 600, 1800, 3600, 4 * 3600)

MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
# Rows per claim. Between two batches a deliver job claims, looks up suppressions and prepares
# (database round trips while its SMTP connections idle): 300 instead of 100 gave +12-15 % on the
# delivery bench (docs/benchmarks.md).
BATCH_SIZE = 300
# Deliver jobs a ring starts for each worker process serving the queue (`live_workers`; one when
# none has said so); each loops until nothing is due. Two in a process overlap one batch's
# database work with the other's sending; more only queue up on the same SMTP connections, so a
# process already running this many passes a further one on to another process (`pass_on`).
BELLS_PER_WORKER = 2
PRESENCE_SECONDS = 10.0  # each worker process says which queues it serves this often
PASS_ON_SECONDS = 0.2  # a deliver job passed on waits this long for another process to take it
MAX_HOPS = 8  # ... at most this many times; then the process that holds it lets it go
LEASE_SECONDS = 120.0  # a claimed row becomes due again if not recorded by then
RUN_SECONDS = 240.0  # a deliver job hands over to a new one after this long (job timeouts: 600 s+)


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
    compose.check_address(to_address)
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


def _presence_key(queue: str) -> str:
    return f"notifier:workers:{queue}"


async def present(
    redis: ArqRedis, queues_served: Sequence[str], worker: str, *, leaving: bool = False
) -> None:
    """Say that process `worker` serves `queues_served` (a worker process does every
    PRESENCE_SECONDS), or, `leaving`, that it no longer does. Forgets processes silent for three
    times that (killed)."""
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for queue in queues_served:
            key = _presence_key(queue)
            if leaving:
                pipe.zrem(key, worker)
            else:
                pipe.zadd(key, {worker: now})
                pipe.zremrangebyscore(key, "-inf", now - 3 * PRESENCE_SECONDS)
                pipe.expire(key, int(6 * PRESENCE_SECONDS))
        await pipe.execute()


async def live_workers(redis: ArqRedis, queue: str) -> int:
    """How many worker processes said within the last 3 × PRESENCE_SECONDS that they serve `queue`."""
    count: int = await redis.zcount(_presence_key(queue), time.time() - 3 * PRESENCE_SECONDS, "+inf")
    return count


async def pass_on(redis: ArqRedis, queue: str, hops: int) -> None:
    """Hand a deliver job over: the same job again in PASS_ON_SECONDS, for a process with room."""
    await redis.enqueue_job(
        queues.DELIVER_JOB,
        hops,
        _queue_name=queue,
        _job_id=f"deliver:{queue}:{uuid.uuid4().hex}",
        _defer_by=PASS_ON_SECONDS,
    )


async def ring(redis: ArqRedis, queue: str, count: int = 1, *, at: datetime | None = None) -> bool:
    """Ring the doorbell of `queue` after the rows are committed: enqueue enough `deliver` jobs for
    `count` e-mails (one per BATCH_SIZE, at most BELLS_PER_WORKER for each live worker process of
    the queue; each loops until nothing is due). With `at`, one job then (rings for the same
    second are merged).

    Never raises for Redis trouble: the rows are committed, so a lost ring only delays them until
    the sweep (within 30 s) — a producer's request must not fail after its e-mail was stored.
    Returns False (and logs) when the ring did not get through."""
    try:
        if at is not None:
            stamp = int(at.timestamp())
            await redis.enqueue_job(
                queues.DELIVER_JOB,
                _queue_name=queue,
                _job_id=f"deliver:{queue}:{stamp}",
                _defer_until=datetime.fromtimestamp(stamp + 1, UTC),
            )
            return True
        bells = max(1, math.ceil(count / BATCH_SIZE))
        if bells > 1:
            bells = min(bells, BELLS_PER_WORKER * max(1, await live_workers(redis, queue)))
        for _ in range(bells):
            await redis.enqueue_job(
                queues.DELIVER_JOB, _queue_name=queue, _job_id=f"deliver:{queue}:{uuid.uuid4().hex}"
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
