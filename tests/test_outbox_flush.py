"""A batch's results are recorded as they come in, while it is still sending (not once at its end,
nor in groups of a fixed size), so a worker killed mid-batch re-sends only what was in flight or
answered during the last write. Real
PostgreSQL and the in-process SMTP server; the sender below is the real SMTPSender, except that one
message waits for the test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from notifier import queues
from notifier.db import Q
from notifier.mail import outbox
from notifier.mail.delivery import Counts, Delivery, Result, _Recorder
from notifier.mail.smtp import Envelope, SMTPSender
from notifier.settings import Settings
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


async def start(settings: Settings, pool: asyncpg.Pool) -> tuple[HoldsOne, asyncio.Task[Counts], datetime]:
    await queue_batch(pool)
    sender = HoldsOne(SMTPSender(settings), HOLD)
    one_lane = settings.model_copy(update={"smtp_pool_size": 1})  # messages go out in claim order
    delivery = Delivery(one_lane, pool, sender)
    now = datetime.now(UTC) + timedelta(seconds=1)
    job = asyncio.create_task(delivery.run(queues.SERVICE, now=now))
    await sender.holding.wait()
    return sender, job, now


async def test_every_answer_is_recorded_while_the_batch_is_still_sending(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    # The 60th message waits: all 59 answers before it are recorded without waiting for a group
    # to fill or for the batch to end.
    sender, job, _ = await start(settings, pool)
    sent = await until_sent(pool, HOLD - 1)
    assert sent == HOLD - 1
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


async def test_answers_that_arrive_during_a_write_go_together_in_the_next() -> None:
    writes: list[list[int]] = []
    first_started, finish_first = asyncio.Event(), asyncio.Event()

    async def write(results: Sequence[Result]) -> None:
        writes.append([r.id for r in results])
        if len(writes) == 1:
            first_started.set()
            await finish_first.wait()

    recorder = _Recorder(write, 0)
    recorder.add(Result(1, "sent", "sent"))
    await first_started.wait()
    for i in (2, 3, 4):
        recorder.add(Result(i, "sent", "sent"))
    finish_first.set()
    while len(writes) < 2:
        await asyncio.sleep(0)
    # `close` records what was never added (decided before sending) and nothing twice.
    await recorder.close([Result(i, "sent", "sent") for i in (1, 2, 5)])
    assert writes == [[1], [2, 3, 4], [5]]


async def test_recording_skips_the_wal_flush_for_its_own_transaction_only(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    lease = now + timedelta(minutes=1)
    async with pool.acquire() as conn:
        email_id = await outbox.add(
            conn, kind="service", to_address="wal@example.com", template="service/selftest"
        )
        await conn.execute(
            "UPDATE emails SET status = 'sending', locked_until = $2 WHERE id = $1", email_id, lease
        )

        def record(status: str) -> tuple[object, ...]:
            return (
                Q.record_results,
                [email_id],
                [status],
                [None],
                [None],
                [None],
                [status],
                [None],
                now,
                lease,
                "x",
            )

        async with conn.transaction():
            await conn.execute(*record("sent"))
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
            await conn.execute(
                "UPDATE emails SET status = 'sending', locked_until = $2 WHERE id = $1", email_id, lease
            )
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        await conn.execute(*record("failed"))
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await conn.fetchval("SELECT status FROM emails WHERE id = $1", email_id) == "failed"


async def test_no_result_is_recorded_for_a_lease_that_was_lost(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    """The lease runs out while the 60th message hangs and another worker claims the rest: the
    first worker's later answers record nothing over the other worker's lease."""
    sender, job, now = await start(settings, pool)
    sent = await until_sent(pool, HOLD - 1)
    other = now + timedelta(seconds=outbox.LEASE_SECONDS * 2)
    await pool.execute("UPDATE emails SET locked_until = $1 WHERE status = 'sending'", other)
    sender.release.set()
    await job
    await sender.close()
    assert len(smtp.received) == BATCH
    assert await statuses(pool) == {"sent": sent, "sending": BATCH - sent}
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE locked_until = $1", other) == BATCH - sent
    assert await pool.fetchval("SELECT count(*) FROM events") == sent


async def test_a_stopped_delivery_finishes_and_records_the_messages_on_the_wire(
    settings: Settings, pool: asyncpg.Pool, smtp: MailSink
) -> None:
    """Cancelled (SIGTERM on a deploy, Redis lost) while the 60th message is being sent on one of
    two lanes: the batch waits for every lane's message on the wire, records each, starts no new
    one, and leaves nothing to be sent twice: what the server got is exactly what is recorded, and
    the rows it never started are handed back, due at once."""
    await queue_batch(pool)
    sender = HoldsOne(SMTPSender(settings), HOLD)
    two_lanes = settings.model_copy(update={"smtp_pool_size": 2})
    now = datetime.now(UTC) + timedelta(seconds=1)
    job = asyncio.create_task(Delivery(two_lanes, pool, sender).run(queues.SERVICE, now=now))
    await sender.holding.wait()
    job.cancel()
    await asyncio.sleep(0.05)
    assert not job.done()  # waits for the held message
    sender.release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await job
    await sender.close()
    # (A sent service e-mail without an account keeps no address: compare counts.)
    received = len(smtp.received)
    assert HOLD <= received < BATCH
    assert len({r.recipients[0] for r in smtp.received}) == received
    assert await statuses(pool) == {"sent": received, "queued": BATCH - received}
    assert await pool.fetchval("SELECT count(*) FROM emails WHERE locked_until IS NOT NULL") == 0
    assert await pool.fetchval("SELECT count(*) FROM events WHERE kind = 'sent'") == received
