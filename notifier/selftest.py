"""A self-test e-mail: proves that a worker can render and hand a message to the mail server,
through the same outbox as every other e-mail."""

from __future__ import annotations

import asyncpg

from notifier import queues
from notifier.mail import outbox


async def send_selftest(pool: asyncpg.Pool, redis: outbox.Doorbell, to: str) -> int:
    """Queue the self-test e-mail (template `service/selftest`) to `to` and ring the service
    queue; returns the outbox id. The e-mail is sent by the `deliver` job like any other."""
    async with pool.acquire() as conn:
        email_id = await outbox.add(conn, kind="service", to_address=to, template="service/selftest")
    assert email_id is not None  # no unique key applies to service mail
    await outbox.ring(redis, queues.SERVICE)
    return email_id
