"""Fast regression tests for what the chaos suite (chaos/, docs/reliability.md) found: a worker
killed mid-send must not leave its queue without a deliver job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from arq import ArqRedis
from arq.constants import in_progress_key_prefix

from notifier import queues
from notifier.db import Q
from notifier.mail import outbox
from tests.factory import Factory


async def _killed_job(redis: ArqRedis, queue: str, enqueued: datetime) -> str:
    """What a SIGKILLed worker leaves in Redis: its deliver job still in the queue and marked in
    progress (arq keeps the mark for the job's timeout plus 10 s)."""
    job_id = f"deliver:{queue}:killed"
    await redis.enqueue_job(queues.DELIVER_JOB, _queue_name=queue, _job_id=job_id, _defer_until=enqueued)
    await redis.psetex(in_progress_key_prefix + job_id, 3_610_000, b"1")
    return job_id


async def _bells(redis: ArqRedis, queue: str) -> list[str]:
    members = await redis.zrange(queue, 0, -1)
    return [m.decode() for m in members if m.decode().startswith("deliver:") and not m.endswith(b"killed")]


async def test_sweep_rings_when_leases_of_a_killed_worker_ran_out(
    pool: asyncpg.Pool, redis: ArqRedis, factory: Factory
) -> None:
    now = datetime.now(UTC)
    email = await factory.email()
    await pool.execute(
        "UPDATE emails SET status = 'sending', attempts = 1, locked_until = $2 WHERE id = $1",
        email["id"],
        now - timedelta(seconds=1),
    )
    await _killed_job(redis, queues.SERVICE, now - timedelta(seconds=5))  # "in progress", recent
    assert await outbox._has_bell(redis, queues.SERVICE)  # arq alone says a job is on it
    rang = await outbox.sweep(pool, redis, now + timedelta(seconds=2))
    assert rang == {queues.SERVICE: 1}
    assert len(await _bells(redis, queues.SERVICE)) == 1


async def test_sweep_rings_past_a_job_in_progress_longer_than_a_live_one_runs(
    pool: asyncpg.Pool, redis: ArqRedis, factory: Factory
) -> None:
    now = datetime.now(UTC)
    await factory.email()  # queued and due; the worker died between batches
    old = now - timedelta(seconds=outbox.RUN_SECONDS + outbox.LEASE_SECONDS + 5)
    await _killed_job(redis, queues.SERVICE, old)
    assert not await outbox._has_bell(redis, queues.SERVICE)
    assert await outbox.sweep(pool, redis, now + timedelta(seconds=2)) == {queues.SERVICE: 1}


async def test_sweep_leaves_a_live_or_waiting_job_alone(
    pool: asyncpg.Pool, redis: ArqRedis, factory: Factory
) -> None:
    now = datetime.now(UTC)
    await factory.email()
    await _killed_job(redis, queues.SERVICE, now - timedelta(seconds=5))  # running, recently
    assert await outbox.sweep(pool, redis, now + timedelta(seconds=2)) == {}
    await redis.flushdb()
    await redis.enqueue_job(queues.DELIVER_JOB, _queue_name=queues.SERVICE, _job_id="deliver:x:waiting")
    assert await outbox.sweep(pool, redis, now + timedelta(seconds=2)) == {}


async def test_a_message_sent_again_after_a_killed_worker_keeps_its_message_id(
    settings, pool: asyncpg.Pool, smtp, factory: Factory
) -> None:
    """The worker was SIGKILLed after the server accepted the message and before the result was
    recorded: the lease runs out, the row is sent again, with the same Message-ID."""
    from notifier.mail.delivery import Delivery
    from notifier.mail.smtp import SMTPSender

    email = await factory.email(template="service/selftest")
    delivery = Delivery(settings, pool, SMTPSender(settings))
    first = datetime.now(UTC) + timedelta(seconds=1)
    rows = await pool.fetch(
        Q.claim_emails, queues.SERVICE, first, 100, first + timedelta(seconds=outbox.LEASE_SECONDS)
    )
    await delivery._send_rows(rows, first)  # sent; the worker "dies" before _record
    later = first + timedelta(seconds=outbox.LEASE_SECONDS + 1)
    assert (await delivery.run(queues.SERVICE, now=later)).sent == 1
    await delivery.sender.close()
    ids = [r.message["Message-ID"] for r in smtp.received]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert await pool.fetchval("SELECT message_id FROM emails WHERE id = $1", email["id"]) == ids[0]


async def test_a_worker_stopped_mid_batch_records_what_the_server_accepted(
    settings, pool: asyncpg.Pool, smtp, factory: Factory
) -> None:
    """SIGTERM (a deploy) or a lost Redis cancels the deliver job mid-batch: the e-mails the server
    already accepted are recorded as sent, so they are not sent again when the lease runs out."""
    import asyncio

    import pytest

    from notifier.mail.delivery import Delivery
    from notifier.mail.smtp import Envelope, SMTPSender

    for i in range(6):
        await factory.email(template="service/selftest", to_address=f"stop{i}@example.com")
    real = SMTPSender(settings)
    three_sent = asyncio.Event()

    class StopsAfterThree:
        """The real sender for three messages; the fourth never answers (the stopping job waits
        for it as long as the SMTP timeout, then gives it up: it is sent again later)."""

        sent = 0

        async def send(self, envelope: Envelope) -> str:
            if self.sent == 3:
                three_sent.set()
                await asyncio.Event().wait()
            self.sent += 1
            return await real.send(envelope)

        async def close(self) -> None:
            await real.close()

    single_lane = settings.model_copy(update={"smtp_pool_size": 1, "smtp_timeout": 0.5})
    now = datetime.now(UTC) + timedelta(seconds=1)
    job = asyncio.create_task(Delivery(single_lane, pool, StopsAfterThree()).run(queues.SERVICE, now=now))
    await three_sent.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    statuses = await pool.fetch("SELECT status, count(*) FROM emails GROUP BY 1 ORDER BY 1")
    assert [tuple(r) for r in statuses] == [("sending", 3), ("sent", 3)]
    later = now + timedelta(seconds=outbox.LEASE_SECONDS + 1)
    assert (await Delivery(settings, pool, real).run(queues.SERVICE, now=later)).sent == 3
    await real.close()
    recipients = sorted(r for m in smtp.received for r in m.recipients)
    assert recipients == [f"stop{i}@example.com" for i in range(6)]


async def test_a_stopped_batch_hands_back_the_rows_it_never_started(
    settings, pool: asyncpg.Pool, smtp, factory: Factory
) -> None:
    """When every lane has returned after a stop, the unstarted rows are due again at once (for a
    worker restarted after a Redis failover, say), not after the lease, and the claim that never
    sent them is not counted as an attempt."""
    import asyncio

    import pytest

    from notifier.mail.delivery import Delivery
    from notifier.mail.smtp import Envelope, SMTPSender

    for i in range(6):
        await factory.email(template="service/selftest", to_address=f"back{i}@example.com")
    real = SMTPSender(settings)
    three_sent = asyncio.Event()

    class SlowFourth:
        sent = 0

        async def send(self, envelope: Envelope) -> str:
            if self.sent == 3:
                three_sent.set()
                await asyncio.sleep(0.2)  # on the wire when the stop comes; answers in time
            self.sent += 1
            return await real.send(envelope)

        async def close(self) -> None:
            await real.close()

    single_lane = settings.model_copy(update={"smtp_pool_size": 1, "smtp_timeout": 2})
    now = datetime.now(UTC) + timedelta(seconds=1)
    job = asyncio.create_task(Delivery(single_lane, pool, SlowFourth()).run(queues.SERVICE, now=now))
    await three_sent.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    rows = await pool.fetch("SELECT status, attempts, locked_until FROM emails ORDER BY id")
    assert [r["status"] for r in rows] == ["sent"] * 4 + ["queued"] * 2
    assert [(r["attempts"], r["locked_until"]) for r in rows[4:]] == [(0, None), (0, None)]
    assert (await Delivery(settings, pool, real).run(queues.SERVICE, now=now)).sent == 2
    await real.close()
    assert sorted(r for m in smtp.received for r in m.recipients) == [
        f"back{i}@example.com" for i in range(6)
    ]


async def test_stopping_a_worker_process_cancels_its_jobs_while_the_pool_is_open(
    settings, pool: asyncpg.Pool, redis: ArqRedis, monkeypatch
) -> None:
    """SIGTERM or a lost Redis stops `run_workers`: the jobs in flight are cancelled while the pool
    is still open, so a delivery can record what it sent (see the test above)."""
    import asyncio

    from workers import run_workers

    running = asyncio.Event()
    seen: list[object] = []

    from notifier.mail.delivery import Counts, Delivery

    async def stalls(self: Delivery, queue: str, *, now: object = None) -> Counts:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            seen.append(await self.pool.fetchval("SELECT 1"))  # the pool still answers
        return Counts()

    monkeypatch.setattr(Delivery, "run", stalls)
    await outbox.ring(redis, queues.SERVICE)
    process = asyncio.create_task(run_workers(settings, ["service"], handle_signals=False))
    await running.wait()
    process.cancel()
    await asyncio.gather(process, return_exceptions=True)
    assert seen == [1]
