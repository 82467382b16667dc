"""More than two worker processes share a send (issue 16): a ring starts deliver jobs for each
live worker process of the queue, and a process already running its share passes a further job
on, so that the first process to poll does not take them all."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from arq import ArqRedis
from arq.jobs import Job

from notifier import queues
from notifier.mail import outbox
from notifier.mail.delivery import Delivery
from notifier.mail.smtp import SMTPSender
from notifier.settings import Settings
from tests.conftest import MailSink
from workers import jobs

MANY = 100 * outbox.BATCH_SIZE  # e-mails enough for any number of jobs


async def _deliver_jobs(redis: ArqRedis, queue: str) -> list[Job]:
    ids = [i.decode() for i in await redis.zrange(queue, 0, -1)]
    return [Job(i, redis, _queue_name=queue) for i in ids if i.startswith("deliver:")]


async def test_a_ring_starts_deliver_jobs_for_each_live_worker_process(redis: ArqRedis) -> None:
    assert await outbox.ring(redis, queues.BULK, MANY)
    assert len(await _deliver_jobs(redis, queues.BULK)) == outbox.BELLS_PER_WORKER  # nobody said

    await redis.flushdb()
    for worker in ("host:1", "host:2", "host:3"):
        await outbox.present(redis, [queues.BULK, queues.DIGEST], worker)
    assert await outbox.live_workers(redis, queues.BULK) == 3
    await outbox.ring(redis, queues.BULK, MANY)
    assert len(await _deliver_jobs(redis, queues.BULK)) == 3 * outbox.BELLS_PER_WORKER

    # Only as many as the e-mails need, and none for a queue nobody else serves.
    await outbox.ring(redis, queues.DIGEST, outbox.BATCH_SIZE + 1)
    assert len(await _deliver_jobs(redis, queues.DIGEST)) == 2
    assert await outbox.live_workers(redis, queues.SERVICE) == 0


async def test_a_worker_that_left_or_went_silent_is_not_counted(redis: ArqRedis) -> None:
    await outbox.present(redis, [queues.BULK], "host:1")
    await outbox.present(redis, [queues.BULK], "host:2")
    await outbox.present(redis, [queues.BULK], "host:2", leaving=True)
    # Killed: its last word is older than three announcements.
    await redis.zadd("notifier:workers:" + queues.BULK, {"host:3": time.time() - 4 * outbox.PRESENCE_SECONDS})
    assert await outbox.live_workers(redis, queues.BULK) == 1


def _ctx(settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, delivery: Delivery) -> dict[str, Any]:
    return {
        "settings": settings,
        "pool": pool,
        "redis": redis,
        "queue": queues.BULK,
        "deliveries": {queues.BULK: delivery},
    }


async def test_a_process_running_its_share_passes_the_job_on(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, smtp: MailSink
) -> None:
    delivery = Delivery(settings, pool, SMTPSender(settings), redis=redis)
    ctx = _ctx(settings, pool, redis, delivery)
    delivery.running = outbox.BELLS_PER_WORKER
    assert await jobs.deliver(ctx) == {"passed_on": 1}
    (passed,) = await _deliver_jobs(redis, queues.BULK)
    info = await passed.info()
    assert info is not None and info.args == (1,)
    assert (info.score or 0) > time.time() * 1000  # deferred: another process may take it first

    # After MAX_HOPS it runs where it is; and a process below its share runs it at once.
    assert "sent" in await jobs.deliver(ctx, outbox.MAX_HOPS)
    delivery.running = outbox.BELLS_PER_WORKER - 1
    assert "sent" in await jobs.deliver(ctx)
    assert delivery.running == outbox.BELLS_PER_WORKER - 1
