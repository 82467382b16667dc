"""arq workers: which job runs on which queue, with its timeout and tries, and the resources
each worker process opens once (pool, Redis, SMTP sender).

Job bodies (workers/jobs.py) are thin: they call a named function of a domain module. `notifier worker` runs one
arq `Worker` per queue in one process; the Procfile runs service/digest and bulk apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from typing import Any

from arq import cron
from arq.connections import ArqRedis
from arq.cron import CronJob
from arq.worker import Function, Worker, func
from redis.exceptions import RedisError

from notifier import lists, newsletter, queues
from notifier.mail import outbox
from notifier.mail.smtp import Sender, SMTPSender
from notifier.resources import open_pool, open_redis, redis_settings
from notifier.settings import Settings
from notifier.webhook_client import HTTPPoster
from workers import jobs
from workers.jobs import worker_name

log = logging.getLogger("notifier.worker")

# What runs where. Each entry: the queue and its arq functions, with explicit timeouts and tries.
FUNCTIONS: dict[str, list[Function]] = {
    queues.SERVICE: [
        func(jobs.send_selftest, name=queues.SELFTEST_JOB, timeout=60, max_tries=3),
        func(jobs.deliver, name=queues.DELIVER_JOB, timeout=600, max_tries=1),
        func(jobs.deliver_webhooks, name=queues.WEBHOOKS_JOB, timeout=300, max_tries=1),
    ],
    queues.DIGEST: [
        func(jobs.deliver, name=queues.DELIVER_JOB, timeout=600, max_tries=1),
    ],
    queues.BULK: [
        func(jobs.deliver, name=queues.DELIVER_JOB, timeout=3600, max_tries=1),
        func(jobs.newsletter_start, name=queues.NEWSLETTER_START_JOB, timeout=600, max_tries=3),
    ],
}

CRON_JOBS: dict[str, list[CronJob]] = {
    queues.SERVICE: [
        cron(jobs.beat, name="heartbeat", second=0, run_at_startup=True, timeout=30, max_tries=1),
        cron(
            jobs.deliver_webhooks,
            name="webhooks-pass",
            second=set(range(0, 60, 5)),
            timeout=300,
            max_tries=1,
        ),
        cron(jobs.outbox_sweep, name="outbox-sweep", second={15, 45}, timeout=30, max_tries=1),
        cron(jobs.idempotency_purge, name="idempotency-purge", minute=17, second=0, timeout=300, max_tries=1),
        cron(jobs.inbox_retention, name="inbox-retention", hour=3, minute=41, second=0, timeout=3600),
        cron(
            jobs.inbox_partitions,
            name="inbox-partitions",
            hour=3,
            minute=11,
            second=0,
            run_at_startup=True,
            timeout=600,
        ),
    ],
    queues.DIGEST: [
        cron(jobs.digest_pass, name="digest-pass", second=0, timeout=300, max_tries=1),
    ],
    queues.BULK: [
        cron(jobs.newsletter_tick, name="newsletter-tick", second=newsletter.TICK_SECONDS, timeout=120),
    ],
}


async def open_context(settings: Settings, sender: Sender | None = None) -> dict[str, Any]:
    """Resources shared by all of a process's workers; close with `close_context`."""
    pool = await open_pool(settings)
    await lists.follow_setting(pool, settings.newsletter_double_opt_in)
    return {
        "settings": settings,
        "pool": pool,
        "sender": sender or SMTPSender(settings),
        "owns_sender": sender is None,
        "webhook_poster": HTTPPoster(settings),  # jobs.deliver_webhooks: one HTTP session per process
        "deliveries": {},  # jobs.deliver: one Delivery per queue, kept for the process
    }


async def close_context(ctx: dict[str, Any]) -> None:
    if ctx.get("owns_sender"):
        await ctx["sender"].close()
    await ctx["webhook_poster"].close()
    await ctx["pool"].close()


def build_worker(
    settings: Settings,
    queue: str,
    ctx: dict[str, Any],
    redis: ArqRedis,
    *,
    burst: bool = False,
    crons: bool = True,
) -> Worker:
    """One arq Worker for `queue`, sharing `ctx` (pool, sender) and the Redis connection."""
    ctx = {**ctx, "queue": queue}
    functions: list[Function] = list(FUNCTIONS[queue])
    cron_jobs = CRON_JOBS[queue] if crons else []
    if not crons:
        # Without the schedule, cron jobs stay callable by name (tests, `notifier ... run`).
        functions += [
            func(cj.coroutine, name=cj.name, timeout=cj.timeout_s, max_tries=cj.max_tries)
            for cj in CRON_JOBS[queue]
        ]
    if not functions and not cron_jobs:
        # arq refuses a worker with nothing to do; keep the queue served with the heartbeat.
        functions = [func(jobs.beat, name=f"heartbeat:{queue}", timeout=30, max_tries=1)]
    return Worker(
        functions=list(functions),
        cron_jobs=list(cron_jobs),
        queue_name=queue,
        redis_pool=redis,
        redis_settings=redis_settings(settings),
        burst=burst,
        handle_signals=False,
        max_jobs=settings.worker_max_jobs,
        keep_result=60,
        poll_delay=0.1,
        ctx=ctx,
    )


async def _announce(redis: ArqRedis, served: Sequence[str]) -> None:
    """Say every `outbox.PRESENCE_SECONDS` that this process serves `served`: a ring starts deliver
    jobs for each live process (`outbox.ring`)."""
    while True:
        try:
            await outbox.present(redis, served, worker_name())
        except (RedisError, OSError) as exc:
            log.warning("could not announce this worker (%s); rings count it again when Redis is back", exc)
        await asyncio.sleep(outbox.PRESENCE_SECONDS)


async def run_workers(
    settings: Settings, queue_names: Sequence[str], *, burst: bool = False, handle_signals: bool = True
) -> None:
    """Run one worker per queue in this process until SIGINT/SIGTERM or cancellation (in burst
    mode, until the queues are empty). Closes everything it opened."""
    ctx = await open_context(settings)
    redis = await open_redis(settings)
    workers = [build_worker(settings, queues.ALL[name], ctx, redis, burst=burst) for name in queue_names]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(w.async_run()) for w in workers]
    log.info("worker %s serving %s", worker_name(), ", ".join(queue_names))
    waiter = asyncio.create_task(stop.wait())
    served = [queues.ALL[name] for name in queue_names]
    presence = asyncio.create_task(_announce(redis, served))
    try:
        if burst:  # every worker runs until its queue is empty
            await asyncio.gather(*tasks)
        else:  # until a signal, or until one worker stops (an error), which ends all
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        presence.cancel()
        with contextlib.suppress(RedisError, OSError):
            await outbox.present(redis, served, worker_name(), leaving=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Cancelling a Worker's main task leaves the jobs it runs to themselves (asyncio.run would
        # cancel them later, after the pool is closed): cancel them now, so a delivery cut short
        # records what the server already accepted instead of sending it again.
        jobs = [job for w in workers for job in w.tasks.values() if not job.done()]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        # arq's Worker.close() uses a Redis call deprecated in redis-py 5; closing the shared
        # connection ourselves does the same work.
        await close_context(ctx)
        with contextlib.suppress(Exception):
            await redis.aclose()


class WorkerSettings:
    """For `arq workers.WorkerSettings`: the service queue with its crons, settings from the environment."""

    functions = FUNCTIONS[queues.SERVICE]
    cron_jobs = CRON_JOBS[queues.SERVICE]
    queue_name = queues.SERVICE

    @staticmethod
    async def on_startup(ctx: dict[str, Any]) -> None:
        settings = Settings()
        settings.require_secret()
        ctx.update(await open_context(settings))

    @staticmethod
    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await close_context(ctx)
