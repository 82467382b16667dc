"""`notifier inbound`: an SMTP server (aiosmtpd) for bounces, complaints and mailto unsubscribes.

It accepts mail only for the bounce domain (`NOTIFIER_BOUNCE_DOMAIN`, where VERP return paths
point) and the unsubscribe mailto (`NOTIFIER_UNSUBSCRIBE_MAILTO`); any other recipient is refused
with 550 5.1.1 (it is no open relay and no mailbox). Each message is read and applied by the same
domain function as `POST /v1/inbound/mime` (`bounces.read_report`, `bounces.apply`) before the
250: a message the database could not take gets a 451 and the sending MTA tries again later.
Listens on loopback (`NOTIFIER_INBOUND_SMTP_HOST`) unless configured: put the organisation's MX in
front of it (docs/deliverability.md).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session

from notifier import bounces, reports, verp
from notifier.api.inbound import unsubscribe_member
from notifier.settings import Settings

log = logging.getLogger("notifier.inbound")


class Handler:
    """The aiosmtpd handler: which recipients are ours, and what to do with a message."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool

    def accepts(self, address: str) -> bool:
        s = self.settings
        if s.bounce_domain and verp.is_ours(address, s.bounce_domain):
            return True
        mailto = (s.unsubscribe_mailto or "").lower()
        if not mailto:
            return False
        local, _, domain = address.strip().strip("<>").lower().partition("@")
        m_local, _, m_domain = mailto.partition("@")
        return domain == m_domain and local.partition("+")[0] == m_local

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.accepts(address):
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            finding = reports.read_report(self.settings, raw, list(envelope.rcpt_tos))
            outcome = await bounces.apply(self.pool, self.settings, finding, unsubscribe_member)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.exception("an inbound message could not be recorded; the sender will retry")
            return "451 4.3.0 cannot record this message now, try again later"
        log.info("inbound %s: %s %s", finding.source, outcome.action, outcome.why)
        return "250 OK"


async def serve(settings: Settings, pool: asyncpg.Pool, host: str, port: int) -> asyncio.Server:
    """Start the SMTP server on `host`:`port` (0: a free port); the caller closes it."""
    handler = Handler(settings, pool)
    loop = asyncio.get_running_loop()
    limit = settings.inbound_max_bytes
    return await loop.create_server(
        lambda: SMTP(handler, hostname="notifier-inbound", data_size_limit=limit, decode_data=False),
        host=host,
        port=port,
    )


async def run(settings: Settings) -> None:
    """The `notifier inbound` process: serve until stopped."""
    from notifier.resources import open_pool

    pool = await open_pool(settings)
    try:
        server = await serve(settings, pool, settings.inbound_smtp_host, settings.inbound_smtp_port)
        log.info("inbound SMTP on %s:%d", settings.inbound_smtp_host, settings.inbound_smtp_port)
        async with server:
            await server.serve_forever()
    finally:
        await pool.close()
