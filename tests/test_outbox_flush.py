"""A batch's results are recorded in small groups while it is still sending (not once at its end),
so a worker killed mid-batch re-sends only what was in flight or not yet recorded. Real
PostgreSQL and the in-process SMTP server; the sender below is the real SMTPSender, except that one
message waits for the test."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from notifier import outbox, queues
from notifier.outbox import Delivery
from notifier.settings import Settings
from notifier.smtp import Envelope, SMTPSender
from tests.conftest import MailSink

BATCH = 100
HOLD = 60  # the 60th message of the batch waits until the test releases it


class HoldsOne:
    """The real SMTP sender; its `hold`th message waits for `release` before it is sent."""

    def __init__(self, real: SMTPSender, hold: int) -> None:
        self.real = real
        self.hold = hold
        self.count = 0
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, envelope: Envelope) -> str:
        self.count += 1
        if self.count == self.hold:
            self.holding.set()
            await self.release.wait()
        return await self.real.send(envelope)

    async def close(self) -> None:
        await self.real.close()


async def queue_batch(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        ids = await outbox.add_many(
            conn,
            [
                outbox.NewEmail(
                    kind="service", to_address=f"flush{i}@example.com", template="service/selftest"
                )
                for i in range(BATCH)
            ],
        )
    assert len(ids) == BATCH


async def statuses(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM emails GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def until_sent(pool: asyncpg.Pool, n: int) -> int:
    """Until at least `n` rows are recorded sent (each query gives the recorder's task its turn);
    how many are."""
    async with asyncio.timeout(10):
        while (sent := await pool.fetchval("SELECT count(*) FROM emails WHERE status = 'sent'")) < n:
            pass
    return int(sent)


async def start(
    settings: Settings, pool: asyncpg.Pool, flush_seconds: float | None = None
) -> tuple[HoldsOne, asyncio.Task[outbox.Counts], datetime]:
    await queue_batch(pool)
    sender = HoldsOne(SMTPSender(settings), HOLD)
    one_lane = settings.model_copy(update={"smtp_pool_size": 1})  # messages go out in claim order
    delivery = Delivery(one_lane, pool, sender)
    if flush_seconds is not None:
        delivery.flush_seconds = flush_seconds
    now = datetime.now(UTC) + timedelta(seconds=1)
    job = asyncio.create_task(delivery.run(queues.SERVICE, now=now))
    await sender.holding.wait()
    return sender, job, now


async def test_results_are_recorded_in_groups_while_the_batch_is_still_sending(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    # Groups by size only: a group is written once 10 answers wait (more when they came in while
    # the previous group was being written), so of the 59 answers fewer than 10 stay unrecorded.
    sender, job, _ = await start(settings, pool, flush_seconds=3600)
    sent = await until_sent(pool, HOLD - outbox.FLUSH_SIZE)
    assert HOLD - outbox.FLUSH_SIZE <= sent < HOLD
    assert await statuses(pool) == {"sent": sent, "sending": BATCH - sent}
    assert await pool.fetchval("SELECT count(*) FROM events WHERE kind = 'sent'") == sent
    # One lane sends in claim order (by id): the recorded ones are the first answered.
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM emails ORDER BY id")]
    recorded = await pool.fetch("SELECT id FROM emails WHERE status = 'sent' ORDER BY id")
    assert [r["id"] for r in recorded] == ids[:sent]
    assert len(smtp.received) == HOLD - 1

    sender.release.set()
    assert (await job).sent == BATCH
    await sender.close()
    assert await statuses(pool) == {"sent": BATCH}
    assert await pool.fetchval("SELECT count(*) FROM events WHERE kind = 'sent'") == BATCH
    assert sorted(r.recipients[0] for r in smtp.received) == sorted(
        f"flush{i}@example.com" for i in range(BATCH)
    )


async def test_a_short_group_is_recorded_soon_after_its_first_answer(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    # The default delay: the nine answers after the last full group are written too, while the
    # 60th message still waits, without waiting for the batch to end.
    assert outbox.FLUSH_SECONDS < 1
    sender, job, _ = await start(settings, pool)
    await until_sent(pool, HOLD - 1)
    assert await statuses(pool) == {"sent": HOLD - 1, "sending": BATCH - HOLD + 1}
    sender.release.set()
    assert (await job).sent == BATCH
    await sender.close()
    assert await statuses(pool) == {"sent": BATCH}
    assert len(smtp.received) == BATCH


async def test_no_group_is_recorded_for_a_lease_that_was_lost(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    """The lease runs out while the 60th message hangs and another worker claims the rest: the
    first worker's later groups record nothing over the other worker's lease."""
    sender, job, now = await start(settings, pool, flush_seconds=3600)
    sent = await until_sent(pool, HOLD - outbox.FLUSH_SIZE)
    other = now + timedelta(seconds=outbox.LEASE_SECONDS * 2)
    await pool.execute("UPDATE emails SET locked_until = $1 WHERE status = 'sending'", other)
    sender.release.set()
    await job
    await sender.close()
    assert len(smtp.received) == BATCH
    assert await statuses(pool) == {"sent": sent, "sending": BATCH - sent}
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE locked_until = $1", other) == BATCH - sent
    assert await pool.fetchval("SELECT count(*) FROM events") == sent
