"""NOTIFIER_SEND_RATE: one rate over every worker process, with priority by urgency — service mail
never waits behind a newsletter's booked slots, and the total never exceeds the rate."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from arq import ArqRedis

from notifier import newsletter, queues
from notifier.mail import outbox
from notifier.mail.delivery import Delivery
from notifier.mail.send_rate import BOOK_AHEAD, SendRate
from notifier.mail.smtp import SMTPSender
from notifier.settings import Settings
from tests.api_helpers import bearer, create_newsletter
from tests.conftest import MailSink
from tests.factory import Factory
from workers import run_workers

SERVICE, DIGEST, BULK = 0, 1, 2


async def book(limiter: SendRate, n: int, level: int) -> tuple[int, float]:
    """`limiter.book`, with the time of its answer as seconds from now."""
    granted, at = await limiter.book(n, level)
    return granted, at - asyncio.get_running_loop().time()


async def test_every_booking_takes_the_next_slots_of_one_schedule(redis: ArqRedis) -> None:
    one = SendRate(redis, rate=100, key="test:rate")
    two = SendRate(redis, rate=100, key="test:rate")  # another worker process: state is in Redis
    granted, wait = await book(one, 50, SERVICE)
    assert granted == 50 and wait < 0.05
    granted, wait = await book(two, 50, SERVICE)  # waits for the first one's 50 slots
    assert granted == 50 and 0.4 < wait <= 0.51


async def test_lower_levels_book_only_a_short_horizon_ahead(redis: ArqRedis) -> None:
    limiter = SendRate(redis, rate=20, key="test:rate", horizon=0.25)
    granted, wait = await book(limiter, 300, BULK)  # a whole batch asked for: a quarter second given
    assert granted == 5 and wait < 0.05
    granted, retry = await book(limiter, 5, BULK)  # another bulk worker: no room yet, ask again soon
    assert granted == 0 and retry <= 0.051
    granted, wait = await book(limiter, 1, SERVICE)  # service mail: the slot after the booked bulk
    assert granted == 1 and 0.15 < wait <= 0.251
    # While a service slot is still ahead, no lower level books anything.
    for level in (DIGEST, BULK):
        granted, retry = await book(limiter, 5, level)
        assert granted == 0 and 0.2 < retry <= 0.301


async def test_a_digest_goes_before_a_newsletter(redis: ArqRedis) -> None:
    limiter = SendRate(redis, rate=100, key="test:rate", horizon=0.25)
    assert (await book(limiter, 10, DIGEST))[0] == 10
    assert (await book(limiter, 10, BULK))[0] == 0  # digest slots are ahead: newsletters wait
    assert (await book(limiter, 10, DIGEST))[0] == 10  # digests still book, within the horizon


async def test_below_one_slot_per_horizon_a_lower_level_books_one_interval_ahead(redis: ArqRedis) -> None:
    limiter = SendRate(redis, rate=2, key="test:rate", horizon=0.25)
    assert (await book(limiter, 5, BULK))[0] == 1  # never starved by a horizon shorter than a slot
    assert (await book(limiter, 5, BULK))[0] == 0


async def test_a_batch_held_back_past_its_deadline_stops(redis: ArqRedis) -> None:
    """Service mail booked for the next second: a bulk batch whose claim ends before that starts
    nothing (its rows are retried) instead of sending after another worker may have claimed them."""
    limiter = SendRate(redis, rate=100, key="test:rate")
    await book(limiter, 100, SERVICE)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert not await limiter.pacer(queues.BULK, 10, deadline=start + 0.3).wait()
    assert 0.25 < loop.time() - start < 0.5
    assert await limiter.pacer(queues.BULK, 10, deadline=start + 2).wait()
    assert loop.time() - start > 0.9


async def test_without_redis_a_batch_starts_nothing_more_and_does_not_hang() -> None:
    from redis.asyncio import Redis

    from notifier.embedded import free_port

    nobody = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        pacer = SendRate(nobody, rate=100).pacer(queues.BULK, 10)
        assert not await asyncio.wait_for(pacer.wait(), 5)  # its e-mails go back to the queue
    finally:
        await nobody.aclose()


async def test_pacers_of_every_level_share_the_rate_without_losing_slots(redis: ArqRedis) -> None:
    """Two bulk batches, a digest batch and a service batch pacing at once (as several worker
    processes would): N sends take (N - 1) / R at least (the rate holds) and not much more (bulk,
    booking a few slots at a time, leaves no slot unused)."""
    rate, sizes = 200.0, {BULK: 120, DIGEST: 40, SERVICE: 40}
    limiter = SendRate(redis, rate, key="test:rate")
    loop = asyncio.get_running_loop()
    started: list[float] = []

    async def batch(queue: str, n: int) -> None:
        pacer = limiter.pacer(queue, n)

        async def lane() -> None:
            while await pacer.wait():
                started.append(loop.time())

        await asyncio.gather(*(lane() for _ in range(4)))

    begin = loop.time()
    await asyncio.gather(
        batch(queues.BULK, sizes[BULK] // 2),
        batch(queues.BULK, sizes[BULK] // 2),
        batch(queues.DIGEST, sizes[DIGEST]),
        batch(queues.SERVICE, sizes[SERVICE]),
    )
    n = sum(sizes.values())
    assert len(started) == n
    span = max(started) - begin
    assert (n - 1) / rate - 0.01 <= span <= n / rate * 1.15 + 0.05, span


async def test_n_sends_under_rate_r_take_about_n_over_r(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, smtp: MailSink
) -> None:
    """Through the real delivery code and SMTP server: newsletters and service mail delivered at
    once by two deliveries (as by two worker processes) take about N / R together."""
    settings.send_rate = 100
    async with pool.acquire() as conn:
        for queue, count in ((queues.BULK, 150), (queues.SERVICE, 50)):
            await outbox.add_many(
                conn,
                [
                    outbox.NewEmail(
                        kind="service",
                        to_address=f"{queue.partition(':')[2]}{i}@example.com",
                        template="service/selftest",
                        queue=queue,
                    )
                    for i in range(count)
                ],
            )
    bulk = Delivery(settings, pool, SMTPSender(settings), redis=redis)
    service = Delivery(settings, pool, SMTPSender(settings), redis=redis)
    counts = await asyncio.gather(bulk.run(queues.BULK), service.run(queues.SERVICE))
    await asyncio.gather(bulk.sender.close(), service.sender.close())
    assert (counts[0].sent, counts[1].sent, len(smtp.received)) == (150, 50, 200)
    # Never faster than the rate: from the server's first answer to its last, the rate's 199
    # intervals (less BOOK_AHEAD: a send may start that late after its slot, the first opens its
    # connection, for one).
    at = [r.at for r in smtp.received]
    assert at[-1] - at[0] >= 199 / 100 - BOOK_AHEAD, at[-1] - at[0]
    # And no slower while mail waits: from the newsletter's first answer (its batch built; the
    # service batch, smaller, is usually built and sending before), one interval per message.
    first_bulk = next(i for i, r in enumerate(smtp.received) if r.recipients[0].startswith("bulk"))
    waiting = len(at) - 1 - first_bulk
    assert at[-1] - at[first_bulk] <= waiting / 100 * 1.15 + 0.05, (at[-1] - at[first_bulk], waiting)
    # Service mail went first: all of it before most of the newsletter.
    last_service = max(i for i, r in enumerate(smtp.received) if r.recipients[0].startswith("service"))
    assert last_service < 80, last_service


async def test_service_mail_does_not_wait_behind_a_newsletter_under_a_send_rate(
    client: TestClient[Any, Any],
    settings: Settings,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    factory: Factory,
    smtp: MailSink,
) -> None:
    """A newsletter of 3,000 members sending at 50/s through the real bulk and service workers:
    a service message posted meanwhile is sent within 1.5 s (it waited 6-12 s when each bulk
    batch booked its 300 slots up front), and the total stays at the rate."""
    settings.send_rate = 50
    await factory.members(3000, newsletter=True)
    await factory.account(external_id="ada", email="ada@example.com", name="Ada")
    marketing = await bearer(pool, "newsletters", name="marketing")
    created = await create_newsletter(client, marketing, subject="News", body="Hello {{ first_name }}")
    assert await newsletter.start(pool, settings, created["id"]) == 3000
    workers = asyncio.create_task(
        run_workers(settings, ["service", "bulk"], handle_signals=False)  # both Procfile workers
    )
    try:
        await outbox.ring(redis, queues.BULK, count=3000)
        for _ in range(500):  # until both bulk batches are claimed and sending
            if len(smtp.received) >= 20:
                break
            await asyncio.sleep(0.02)
        assert len(smtp.received) >= 20, "the newsletter did not start"

        service = await bearer(pool, "service")
        latencies = []
        for _ in range(3):
            start = time.perf_counter()
            resp = await client.post(
                "/v1/service-messages", json={"account": "ada", "template": "welcome"}, headers=service
            )
            assert resp.status == 202, await resp.text()
            email_id = (await resp.json())["id"]
            while await pool.fetchval("SELECT status FROM emails WHERE id = $1", email_id) != "sent":
                assert time.perf_counter() - start < 15, "the service message was not sent within 15 s"
                await asyncio.sleep(0.01)
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.3)
        window_start, sent_before = time.perf_counter(), len(smtp.received)
        await asyncio.sleep(1.0)
        sent_in_window = len(smtp.received) - sent_before
        window = time.perf_counter() - window_start
    finally:
        workers.cancel()
        await asyncio.gather(workers, return_exceptions=True)
    assert max(latencies) < 1.5, latencies
    pending = await pool.fetchval(
        "SELECT count(*) FROM emails WHERE newsletter_id = $1 AND status <> 'sent'", created["id"]
    )
    assert pending > 1000, "the newsletter was still sending"
    # Service mail went first, yet the whole stays at the rate: about 50 a second, never more.
    assert 35 <= sent_in_window <= 50 * window + 2, (sent_in_window, window)


def test_the_priority_of_a_queue() -> None:
    from notifier.mail.send_rate import level_of

    assert level_of(queues.SERVICE) < level_of(queues.DIGEST) < level_of(queues.BULK)
    assert level_of("notifier:unknown") == level_of(queues.BULK)
    with pytest.raises(ValueError, match="positive"):
        SendRate(None, 0)  # type: ignore[arg-type]
