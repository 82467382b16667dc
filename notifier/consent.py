"""Newsletter consent: the wording members agree to, and double opt-in.

Every opt-in and opt-out is a `consents` row written by `preferences.apply_preferences` with its
source and the wording (and its version) shown. On a list whose `double_opt_in` is set (the
default list's follows NOTIFIER_NEWSLETTER_DOUBLE_OPT_IN, `lists.follow_setting`) an opt-in
counts only once confirmed: `send_confirmations` (run by the bulk queue's tick) writes one
confirmation e-mail per unconfirmed opt-in, whatever its source (API, preference centre,
resubscribe link, import); the page `/confirm/{token}` (notifier/pages/confirm.py) shows a
button (link scanners change nothing) and its POST stamps the opt-in confirmed. Only confirmed
members are in the audience.
"""

from __future__ import annotations

import logging

import asyncpg

from notifier import i18n, queues, tokens
from notifier.db import Q
from notifier.settings import Settings

log = logging.getLogger("notifier.consent")

# In English; the preference centre shows it in the member's language and records what it showed.
WORDING = i18n.N_(
    "Send me the newsletter: news and information about the organisation, about once a month. "
    "I can unsubscribe at any time with the link in every issue."
)
WORDING_VERSION = "newsletter-2026-11"
CONFIRM_TEMPLATE = "newsletter/confirm"


async def send_confirmations(pool: asyncpg.Pool, settings: Settings, limit: int = 500) -> int:
    """Queue a confirmation e-mail, at most `limit` in all, for each opt-in to a list with
    `double_opt_in` that is neither confirmed nor already asked about. The default list's token
    names the newsletter, as before lists. Idempotent; returns how many e-mails it queued."""
    rows = await pool.fetch(Q.unconfirmed_opt_ins, limit)
    for row in rows:
        if row["is_default"]:
            token = tokens.sign(settings.secret, "confirm", row["account_id"], "newsletter")
        else:
            token = tokens.sign(settings.secret, "confirm", row["account_id"], "list", row["list_id"])
        context = {
            "name": row["name"],
            "confirm_url": f"{settings.public_url}/confirm/{token}",
            "list_name": row["list_name"],
        }
        await pool.execute(
            Q.insert_confirmation_email,
            row["account_id"],
            queues.SERVICE,
            row["email"],
            CONFIRM_TEMPLATE,
            context,
            f"confirm:{row['consent_id']}",
        )
    return len(rows)


async def confirm(conn: asyncpg.Connection, account_id: int, list_id: int | None = None) -> bool:
    """Confirm the member's latest opt-in to the list `list_id` (None: the default list, the
    newsletter); False when there is none to confirm."""
    return await conn.fetchval(Q.confirm_opt_in, account_id, list_id) is not None
