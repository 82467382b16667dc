"""Who a newsletter test-send may go to, and how many: one policy for the API and the console.

A test-send shows the newsletter as it stands to the people who prepare it; it must not become a
way to mail anyone, again and again, or to reach someone who left:

- recipients are addresses at the test-send domains (`Settings.test_send_allowed_domains`: the
  organisation's own, by default the domain of NEWSLETTER_FROM) or members the newsletter would
  reach now (`audience.reachable`: on one of its lists, confirmed where the list asks for it,
  matching its segment);
- an address on the suppression list for newsletters or for everything (unsubscribed, bounced,
  complained, erased) is refused, also at an allowed domain;
- at most `Settings.test_send_per_hour` recipients an hour per sender: an API key (`key:ID`,
  also a development console session opened with that key) or a console user (`user:ID`),
  counted in Redis so every web process shares the count.

A refusal never tells whether an address belongs to a member: outside the allowed domains an
unknown address, an unsubscribed member and a suppressed member get the same sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from notifier import audience, queues, suppression
from notifier.db import Q
from notifier.mail import compose, outbox
from notifier.ratelimit import Window
from notifier.settings import Settings

HOUR = 3600


@dataclass(frozen=True)
class Refusal:
    """Why the address at `index` of the request may not get a test-send."""

    index: int
    message: str


class RecipientsRefused(Exception):
    """Some addresses may not get a test-send; nothing was queued."""

    def __init__(self, refusals: Sequence[Refusal]) -> None:
        super().__init__("; ".join(r.message for r in refusals))
        self.refusals = list(refusals)


class QuotaUsed(Exception):
    """The key's test-sends for this hour are used up; nothing was queued."""

    def __init__(self, retry_after: int, limit: int) -> None:
        super().__init__(
            f"at most {limit} test-send recipients an hour per key; try again in {retry_after} s"
        )
        self.retry_after = retry_after


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _ascii_domain(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


async def refusals(
    pool: asyncpg.Pool, settings: Settings, newsletter_id: int, addresses: Sequence[str]
) -> list[Refusal]:
    """The addresses of `addresses` that may not get a test-send of the newsletter, with the
    reason (see the module)."""
    allowed = settings.test_send_allowed_domains
    normalised = [suppression.normalise(a) for a in addresses]
    row = await pool.fetchrow(Q.get_newsletter, newsletter_id)
    members = await audience.reachable(pool, row, normalised) if row else set()
    suppressed = await suppression.lookup(pool, addresses)
    out: list[Refusal] = []
    for i, address in enumerate(addresses):
        try:
            compose.check_address(address)
        except compose.HeaderError as exc:
            out.append(Refusal(i, str(exc)))
            continue
        domain = _domain(address)
        at_allowed_domain = domain in allowed or _ascii_domain(domain) in allowed
        blocked = [entry for entry in suppressed.get(normalised[i], []) if entry[0] in ("all", "newsletter")]
        if at_allowed_domain and blocked:
            list_name, reason = blocked[0]
            out.append(
                Refusal(i, f"is on the suppression list ({reason}, list {list_name}); it gets no test-sends")
            )
        elif not (at_allowed_domain or (normalised[i] in members and not blocked)):
            where = ", ".join(sorted(allowed)) or "none configured"
            out.append(
                Refusal(
                    i,
                    "test-sends go to members the newsletter reaches or to addresses at the "
                    f"test-send domains (NOTIFIER_TEST_SEND_DOMAINS: {where})",
                )
            )
    return out


def quota(settings: Settings) -> Window:
    """The hourly count of test-send recipients per sender (an API key or a console user)."""
    return Window("test-send", settings.test_send_per_hour, HOUR)


async def queue(
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
    newsletter_id: int,
    addresses: Sequence[str],
    sender: str,
) -> list[int]:
    """Queue a test-send of the newsletter to `addresses` (distinct, in order) on behalf of
    `sender` (`key:ID` or `user:ID`, whom the hourly quota counts against); the new outbox ids. Ring `queues.SERVICE` afterwards. Raises RecipientsRefused or
    QuotaUsed, and then nothing is queued or counted."""
    refused = await refusals(pool, settings, newsletter_id, addresses)
    if refused:
        raise RecipientsRefused(refused)
    window = quota(settings)
    wait = await window.take(redis, sender, len(addresses))
    if wait:
        raise QuotaUsed(wait, window.limit)
    ids: list[int] = []
    async with pool.acquire() as conn, conn.transaction():
        for address in addresses:
            email_id = await outbox.add(
                conn,
                kind="test",
                to_address=address,
                template=None,
                newsletter_id=newsletter_id,
                context={"name": ""},
                queue=queues.SERVICE,
            )
            assert email_id is not None  # a test row has no account: never a duplicate
            ids.append(email_id)
    return ids
