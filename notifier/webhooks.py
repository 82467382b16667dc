"""Webhooks out: endpoints, the fan-out of what happened into a delivery outbox, and delivery
with retries, per-member order and signatures by the Standard Webhooks specification.

What happened is already written, in the same transactions as the changes, as append-only rows:
`events` (sent, failed, bounced, complained, unsubscribed, resubscribed), `audit_log`
(preferences changed) and `erasures`; newsletters record when they finished. `fan_out` reads
new rows of each source after a cursor and inserts one `webhook_deliveries` row per subscribed
endpoint (unique per endpoint and source row, so a second pass adds nothing). `run` claims due
deliveries with `FOR UPDATE SKIP LOCKED` under a lease, posts them through a `Poster` and
records the outcome: a worker that dies leaves its rows to come back when the lease ends.

Framework-free: the HTTP client is notifier.webhook_client, the job is workers.jobs.webhooks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, get_args

import asyncpg
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from standardwebhooks.webhooks import Webhook

from notifier.db import Q
from notifier.settings import Settings

log = logging.getLogger("notifier.webhooks")

EventType = Literal[
    "email.sent",
    "email.bounced",
    "email.complained",
    "email.failed",
    "member.unsubscribed",
    "member.resubscribed",
    "member.preferences_changed",
    "account.erased",
    "newsletter.sent",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

# Seconds to wait after each failed attempt: about 35 hours in all before a delivery is given
# up (status `failed`). The endpoint itself is disabled once it has failed for DISABLE_AFTER
# with no success in between.
RETRY_DELAYS = (5, 30, 120, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 12 * 3600)
DISABLE_AFTER = timedelta(hours=24)
LEASE = timedelta(seconds=60)  # at least; see `lease_for`
FAN_OUT_BATCH = 1000
CLAIM_BATCH = 100
# A cursor per source: (source name, query of its next rows, query that fans them out).
_SOURCES = (
    ("event", "webhook_events_batch", "webhook_fanout_events"),
    ("audit", "webhook_audit_batch", "webhook_fanout_audit"),
    ("erasure", "webhook_erasures_batch", "webhook_fanout_erasures"),
)
_FAN_OUT_LOCK = 0x77686F6B  # "whok": one fan-out at a time (a second would only wait, then find nothing)


# --- secrets ---------------------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _fernet(settings: Settings) -> MultiFernet:
    """Fernet keys derived from the keyring: encrypts with the current key, decrypts with any
    (so NOTIFIER_SECRET_KEY can be rotated with NOTIFIER_OLD_SECRET_KEYS)."""
    return MultiFernet(
        [
            Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"notifier webhook secret\0" + key).digest()))
            for key in settings.keyring
        ]
    )


def seal_secret(settings: Settings, secret: str) -> bytes:
    """The secret encrypted for the database."""
    return _fernet(settings).encrypt(secret.encode())


def open_secret(settings: Settings, sealed: bytes) -> str:
    """The secret of `seal_secret`; ValueError when no key of the keyring opens it."""
    try:
        return _fernet(settings).decrypt(bytes(sealed)).decode()
    except InvalidToken:
        raise ValueError("the webhook secret cannot be decrypted with NOTIFIER_SECRET_KEY") from None


# --- endpoints -------------------------------------------------------------------------------


async def create_endpoint(
    pool: asyncpg.Pool, settings: Settings, url: str, events: Sequence[str], description: str, actor: str
) -> tuple[asyncpg.Record, str]:
    """A new enabled endpoint and its signing secret (shown once; stored encrypted)."""
    secret = new_secret()
    row = await pool.fetchrow(
        Q.webhook_insert_endpoint, url, description, list(events), seal_secret(settings, secret), actor
    )
    assert row is not None
    return row, secret


# --- fan-out ---------------------------------------------------------------------------------


async def fan_out(pool: asyncpg.Pool, now: datetime | None = None, batch: int = FAN_OUT_BATCH) -> int:
    """Insert deliveries for the source rows written since the last pass, up to `batch` rows per
    source; returns the deliveries inserted. Idempotent, and safe beside another process doing
    the same (they take turns on an advisory lock)."""
    now = now or datetime.now(UTC)
    inserted = 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _FAN_OUT_LOCK)
        for source, batch_query, fan_query in _SOURCES:
            cursor = await conn.fetchrow(Q.webhook_cursor_for_update, source)
            txid, last_id = (cursor["txid"], cursor["last_id"]) if cursor else (0, 0)
            rows = await conn.fetch(Q[batch_query], txid, last_id, batch)
            if not rows:
                continue
            end = rows[-1]
            status = await conn.execute(Q[fan_query], txid, last_id, end["txid"], end["id"])
            inserted += int(status.split()[-1])
            await conn.execute(Q.webhook_cursor_set, source, end["txid"], end["id"])
        status = await conn.execute(Q.webhook_fanout_newsletters, now)
        inserted += int(status.split()[-1])
    return inserted


# --- delivery --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    """What the receiver answered: its HTTP status, or None and an error when there was no answer."""

    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Poster(Protocol):
    """Sends one signed POST (notifier.webhook_client.HTTPPoster; tests use the same one)."""

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Posted: ...


@dataclass(frozen=True)
class Claimed:
    id: int
    endpoint_id: int
    event_type: str
    payload: dict[str, Any]
    attempts: int
    lease: datetime
    url: str
    sealed_secret: bytes


def message_id(delivery_id: int) -> str:
    """The `webhook-id`: the same on every attempt, so a receiver can drop a repeat."""
    return f"msg_{delivery_id}"


def signed_request(
    secret: str, delivery_id: int, payload: dict[str, Any], at: datetime
) -> tuple[bytes, dict[str, str]]:
    """The body and the Standard Webhooks headers (id, timestamp, v1 signature) of one attempt."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    msg_id = message_id(delivery_id)
    signature = Webhook(secret).sign(msg_id, at, body)
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "user-agent": "notifier-webhooks/1",
    }
    return body.encode(), headers


def retry_at(attempts: int, now: datetime) -> datetime | None:
    """When attempt number `attempts + 1` is due, or None when the attempts are used up."""
    if attempts > len(RETRY_DELAYS):
        return None
    return now + timedelta(seconds=RETRY_DELAYS[attempts - 1])


@dataclass
class Counts:
    fanned_out: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    disabled: list[int] = field(default_factory=list)


def lease_for(settings: Settings, concurrency: int) -> timedelta:
    """How long a round's claim holds its rows: longer than the round can take when every POST
    uses its whole timeout, so no other worker takes a row that is still being delivered."""
    waves = -(-CLAIM_BATCH // concurrency)
    return max(LEASE, timedelta(seconds=waves * settings.webhooks_timeout + 30))


async def _claim(pool: asyncpg.Pool, now: datetime, limit: int, held: timedelta) -> list[Claimed]:
    lease = now + held
    rows = await pool.fetch(Q.webhook_claim, now, limit, lease)
    return [
        Claimed(
            r["id"],
            r["endpoint_id"],
            r["event_type"],
            r["payload"],
            r["attempts"],
            r["locked_until"],
            r["url"],
            r["secret"],
        )
        for r in rows
    ]


async def _record_delivered(pool: asyncpg.Pool, done: list[tuple[Claimed, Posted]], now: datetime) -> None:
    """One transaction for a round's successes: the deliveries (still under their lease) and
    the end of their endpoints' failure streaks."""
    if not done:
        return
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            Q.webhook_record_delivered,
            [item.id for item, _ in done],
            [posted.status for _, posted in done],
            done[0][0].lease,
            now,
        )
        await conn.execute(Q.webhook_endpoint_succeeded, list({item.endpoint_id for item, _ in done}))


async def _record_failure(
    pool: asyncpg.Pool, item: Claimed, posted: Posted, now: datetime, counts: Counts
) -> None:
    """A failed attempt: retry later, or give up once RETRY_DELAYS are used; disable the
    endpoint when it has failed for DISABLE_AFTER without a success."""
    error = (posted.error or f"HTTP {posted.status}")[:500]
    due = retry_at(item.attempts, now)
    async with pool.acquire() as conn, conn.transaction():
        if due is None:
            await conn.execute(Q.webhook_record_failed, item.id, item.lease, posted.status, error)
            counts.failed += 1
        else:
            await conn.execute(Q.webhook_record_retry, item.id, item.lease, due, posted.status, error)
            counts.retried += 1
        since = await conn.fetchval(Q.webhook_endpoint_failed, item.endpoint_id, now)
        if since is not None and now - since >= DISABLE_AFTER:
            reason = f"no successful delivery since {since.isoformat(timespec='seconds')}; last: {error}"
            await conn.execute(Q.webhook_endpoint_disable, item.endpoint_id, reason[:500], now)
            if item.endpoint_id not in counts.disabled:
                counts.disabled.append(item.endpoint_id)
                log.warning("webhook endpoint %d disabled after failing since %s", item.endpoint_id, since)


async def run(
    pool: asyncpg.Pool,
    settings: Settings,
    poster: Poster,
    *,
    now: datetime | None = None,
    budget: float = 50.0,
    concurrency: int = 20,
) -> Counts:
    """Fan out, then deliver everything due, round after round (a member's next event becomes
    due once the one before it is delivered), until nothing is due or `budget` seconds passed.

    `now` fixes the clock (tests); by default each round reads the time. Safe to run in any
    number of processes at once. A cancelled run leaves its claimed rows leased: they are
    delivered again (same `webhook-id`) when the lease ends."""
    counts = Counts()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    limit = asyncio.Semaphore(concurrency)
    held = lease_for(settings, concurrency)
    opened: dict[bytes, str | ValueError] = {}  # sealed secret -> secret, decrypted once per run

    def secret_of(item: Claimed) -> str:
        sealed = bytes(item.sealed_secret)
        if sealed not in opened:
            try:
                opened[sealed] = open_secret(settings, sealed)
            except ValueError as exc:
                opened[sealed] = exc
        found = opened[sealed]
        if isinstance(found, ValueError):
            raise found
        return found

    async def one(item: Claimed) -> Posted:
        try:
            secret = secret_of(item)
        except ValueError as exc:
            return Posted(None, str(exc))
        async with limit:
            body, headers = signed_request(secret, item.id, item.payload, datetime.now(UTC))
            return await poster.post(item.url, body, headers)

    while loop.time() < deadline:
        at = now or datetime.now(UTC)
        counts.fanned_out += await fan_out(pool, at)
        claimed = await _claim(pool, at, CLAIM_BATCH, held)
        if not claimed:
            break
        answers = await asyncio.gather(*(one(item) for item in claimed))
        recorded = now or datetime.now(UTC)
        done = [(item, posted) for item, posted in zip(claimed, answers, strict=True) if posted.ok]
        await _record_delivered(pool, done, recorded)
        counts.delivered += len(done)
        for item, posted in zip(claimed, answers, strict=True):
            if not posted.ok:
                await _record_failure(pool, item, posted, recorded, counts)
    return counts
