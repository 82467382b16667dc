"""Clicks without tracking people: which links of a newsletter were followed, per day, and never
by whom.

A newsletter with `track_clicks` gets its links numbered when it starts sending (`number_links`,
the table `newsletter_links`); the worker's renderer rewrites each to
`{PUBLIC_URL}/c/{newsletter}/{link}` (`newsletter_render`, the same for every recipient), and
`GET /c/{newsletter}/{link}` (`notifier.pages.clicks`) redirects to that newsletter's own stored
address and adds one to the counter of (newsletter, link, day). The URL holds no member, and the
database keeps no account, address, IP address, cookie or per-recipient token: a click cannot be
tied to a person, by design. An unknown newsletter or link is a 404 page: the address is never
taken from the request, so this is no open redirect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import asyncpg

from notifier.db import Q
from notifier.mail.newsletter_render import Draft, trackable_links
from notifier.mail.newsletter_source import MAX_TRACKED_LINKS


async def number_links(conn: asyncpg.Connection, newsletter: Mapping[str, Any]) -> int:
    """Number the newsletter's countable links (`trackable_links`, 0, 1, …) in the transaction
    that starts it, those of every language variant too, so a German reader's click counts as
    well; idempotent. Returns how many links it has."""
    draft = Draft(
        newsletter["id"],
        newsletter["subject"],
        newsletter["preheader"],
        newsletter["body"],
        newsletter["body_format"],
    )
    links = dict.fromkeys(trackable_links(draft))
    for variant in (newsletter.get("variants") or {}).values():
        links.update(dict.fromkeys(trackable_links(replace(draft, body=variant["body"]))))
    urls = list(links)[:MAX_TRACKED_LINKS]
    await conn.execute(Q.insert_newsletter_links, newsletter["id"], list(range(len(urls))), urls)
    return len(urls)


async def follow(pool: asyncpg.Pool, newsletter_id: int, link: int, *, count: bool) -> str | None:
    """The address of link `link` of newsletter `newsletter_id`, or None when the newsletter has
    no such link; with `count`, one more click on it today (UTC), in the same statement."""
    url: str | None = await pool.fetchval(Q.follow_link, newsletter_id, link, count)
    return url


async def per_link(conn: asyncpg.Connection | asyncpg.Pool, newsletter_id: int) -> list[dict[str, Any]]:
    """Every link with its total and its clicks per day: `[{link, url, clicks, days: [{day,
    clicks}]}]`, in link order (empty unless the newsletter counts clicks)."""
    links: dict[int, dict[str, Any]] = {}
    for row in await conn.fetch(Q.newsletter_clicks, newsletter_id):
        entry = links.setdefault(
            row["link"], {"link": row["link"], "url": row["url"], "clicks": 0, "days": []}
        )
        if row["day"] is not None:
            entry["clicks"] += row["clicks"]
            entry["days"].append({"day": row["day"], "clicks": row["clicks"]})
    return list(links.values())
