"""The arq jobs: thin wrappers that take what a job needs from the worker's context and call one
named function of the domain or the mail layer. Their names (`queues.*_JOB`) are shared with the
code that enqueues them; `workers.FUNCTIONS` / `workers.CRON_JOBS` say which queue runs which.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from notifier import digest, digest_email, heartbeat, inbox, newsletter, queues, selftest, webhooks
from notifier.api import idempotency
from notifier.mail import outbox
from notifier.mail.delivery import Delivery
from notifier.mail.render import Renderers
from notifier.settings import Settings

log = logging.getLogger("notifier.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def renderers(settings: Settings) -> Renderers:
    """Which renderer each kind of e-mail uses in a worker process; other kinds render the
    template their row names (`TemplateRenderer`)."""
    return Renderers(
        settings,
        {
            "digest": digest_email.DigestRenderer,
            "newsletter": newsletter.NewsletterRenderer,
            "test": newsletter.NewsletterRenderer,
        },
    )


async def deliver(ctx: dict[str, Any], hops: int = 0) -> dict[str, int]:
    """The doorbell (`queues.DELIVER_JOB`): deliver everything due on this worker's queue. A
    process already running `outbox.BELLS_PER_WORKER` of them for the queue passes this one on to
    another process (`outbox.pass_on`; `hops` counts how often it was), so that the jobs of one
    ring spread over the processes instead of the first one to poll taking them all."""
    # arq copies ctx per job; the process-wide dict `deliveries` (from open_context) keeps one
    # Delivery (templates, renderers, DKIM key) per queue.
    cache: dict[str, Delivery] = ctx["deliveries"]
    queue = ctx.get("queue", queues.SERVICE)
    delivery = cache.get(queue)
    if delivery is None:
        settings = ctx["settings"]
        delivery = Delivery(
            settings, ctx["pool"], ctx["sender"], redis=ctx.get("redis"), renderers=renderers(settings)
        )
        cache[queue] = delivery
    if delivery.running >= outbox.BELLS_PER_WORKER and hops < outbox.MAX_HOPS and "redis" in ctx:
        await outbox.pass_on(ctx["redis"], queue, hops + 1)
        return {"passed_on": 1}
    delivery.running += 1
    try:
        counts = await delivery.run(queue)
    finally:
        delivery.running -= 1
    return counts.__dict__


async def newsletter_start(ctx: dict[str, Any], newsletter_id: int) -> int | None:
    """Start one newsletter now (enqueued by `POST /v1/newsletters/{id}/send` and the console)."""
    recipients = await newsletter.start(ctx["pool"], ctx["settings"], newsletter_id)
    if recipients:
        await outbox.ring(ctx["redis"], queues.BULK, recipients)
    return recipients


async def newsletter_tick(ctx: dict[str, Any]) -> dict[str, Any]:
    """Cron on the bulk queue, every 10 seconds: `newsletter.tick`."""
    return await newsletter.tick(ctx["pool"], ctx["redis"], ctx["settings"])


async def digest_pass(ctx: dict[str, Any]) -> int:
    """Cron on the digest queue, every minute: one pass as of now; returns e-mails written."""
    result = await digest.run_pass(ctx["pool"], ctx["redis"], ctx["settings"])
    return result.emails


async def deliver_webhooks(ctx: dict[str, Any]) -> dict[str, Any]:
    """`queues.WEBHOOKS_JOB`, and a cron every five seconds: fan out what happened since the
    last pass and deliver every due webhook (notifier.webhooks.run)."""
    counts = await webhooks.run(ctx["pool"], ctx["settings"], ctx["webhook_poster"])
    return counts.__dict__


async def outbox_sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron: re-ring queues whose due rows have no job (Redis lost them)."""
    return await outbox.sweep(ctx["pool"], ctx["redis"])


async def idempotency_purge(ctx: dict[str, Any]) -> int:
    """Cron: delete expired Idempotency-Key records."""
    return await idempotency.purge_expired(ctx["pool"])


async def inbox_retention(ctx: dict[str, Any]) -> int:
    """Cron: purge inbox messages older than NOTIFIER_RETENTION_DAYS (the privacy policy's purge):
    whole month partitions dropped, the boundary month's rows deleted. Returns the rows deleted."""
    settings = ctx["settings"]
    before = datetime.now(UTC) - timedelta(days=settings.retention_days)
    purged = await inbox.purge_messages_before(ctx["pool"], before)
    if purged.partitions or purged.rows:
        log.info(
            "retention purge dropped %d month partition(s) (%s) and deleted %d inbox messages older than %d days",
            len(purged.partitions),
            ", ".join(purged.partitions) or "none",
            purged.rows,
            settings.retention_days,
        )
    return purged.rows


async def inbox_partitions(ctx: dict[str, Any]) -> list[str]:
    """Cron: create the inbox's month partitions ahead and seal the months that ended."""
    changed = await inbox.maintain_partitions(ctx["pool"])
    if changed:
        log.info("inbox partitions created or sealed: %s", ", ".join(changed))
    return changed


async def beat(ctx: dict[str, Any]) -> int:
    """Cron: record that this worker process is alive (every minute)."""
    return await heartbeat.beat(ctx["pool"], worker_name())


async def send_selftest(ctx: dict[str, Any], to: str) -> int:
    """Queue a short e-mail proving the worker can reach the mail server (used by `notifier dev`)."""
    return await selftest.send_selftest(ctx["pool"], ctx["redis"], to)
