"""Reports that arrive after sending: bounces, delays, complaints, mailto unsubscribes.

`notifier.reports.read_report` turns one inbound message (from `notifier inbound` or
`POST /v1/inbound/mime`) into a `Finding`; provider webhooks (`notifier.providers`) build one
directly; `apply` records it. What a finding may do:

| finding | event | suppression |
|---|---|---|
| permanent failure, bad mailbox (5.1.x) | `bounced` (type `hard`) | `all`, `hard_bounce` |
| permanent failure, policy (5.7.x) | `bounced` (type `policy`) | none: the e-mail failed, not the address |
| temporary failure (4.x.x, 5.2.x mailbox full, other 5.x) | `bounced` (type `soft`) | `all`, `soft_bounce` once the address has `soft_bounce_limit` of them within `soft_bounce_days` |
| delayed (RFC 3464 `Action: delayed`) | `deferred` | none |
| feedback report (RFC 5965) | `complained` | `newsletter` and `digest`, `complaint` (service mail still goes) |
| mail to the unsubscribe mailto | `unsubscribed` (through the unsubscribe path) | as an unsubscribe |
| auto-reply (RFC 3834), anything not tied to an e-mail of ours | nothing | nothing |

A report ties to an e-mail only through what we signed: its VERP return path (`notifier.verp`)
or its Message-ID; the address suppressed is the one of our outbox row, never one read from the
report, so a forged report suppresses no one. Events are append-only and deduplicated (the same
report twice is recorded once); they and the suppressions hold the address only as its sha256.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg

from notifier import suppression, tokens
from notifier.db import Q
from notifier.mail import compose, outbox, smtp_reply
from notifier.settings import Settings

Kind = Literal["bounced", "deferred", "complained", "delivered", "unsubscribe", "ignored"]
BounceType = Literal["hard", "soft", "policy"]

# Unsubscribe one member from a list, attributed to an e-mail: the front door passes the unsubscribe
# path (`notifier.pages.unsubscribe.unsubscribe`) so that this module needs no web framework.
# Arguments: connection, account id, list, e-mail id, newsletter id, method.
Unsubscribe = Callable[[asyncpg.Connection, int, str, int | None, int | None, str], Awaitable[bool]]

_MESSAGE_ID = re.compile(r"<?([0-9]{1,18})\.([0-9a-f]{16})@([^>\s]+)>?", re.ASCII)
_STATUS = re.compile(r"\b([245])\.([0-9]{1,3})\.([0-9]{1,3})\b", re.ASCII)
_BULK_LISTS: tuple[suppression.ListName, ...] = ("newsletter", "digest")


@dataclass(frozen=True)
class Finding:
    """What one report or provider event says, before it is applied."""

    kind: Kind
    source: str  # dsn, arf, flufl, mailto, or a provider's name
    dedupe: str  # the same report (or provider event) has the same key
    email_id: int | None = None
    bounce: BounceType | None = None
    status: str | None = None
    diagnostic: str | None = None
    feedback_type: str | None = None
    token: str | None = None
    why: str = ""
    # A provider's signed event names the address; an inbound report's address is never trusted.
    address: str | None = None
    # flufl.bounce's verdicts: which addresses failed, checked against our outbox row.
    permanent: frozenset[str] = field(default_factory=frozenset)
    temporary: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Outcome:
    """What `apply` did: `action` is the finding's kind (or `ignored`), `recorded` whether an
    event was written (False for a repeat), `suppressed` the lists added."""

    action: str
    why: str = ""
    email_id: int | None = None
    recorded: bool = False
    suppressed: tuple[str, ...] = ()


def classify(status: str | None, diagnostic: str = "") -> BounceType:
    """A permanent failure's type, read as delivery reads an SMTP refusal
    (`smtp_reply.classify_status`): a bad mailbox (5.1.1, 5.1.6, 5.1.10, or the plain "no such
    user" wording without a code) is hard, a 5.7.x policy refusal is policy, everything else (a
    full mailbox, system and network trouble) is soft."""
    code = status if status and _STATUS.fullmatch(status) else None
    if code is None:
        found = _STATUS.search(diagnostic)
        code = found.group(0) if found else None
    category = smtp_reply.classify_status(code, diagnostic)
    if category == "bad_mailbox":
        return "hard"
    if category == "policy":
        return "policy"
    return "soft"


def scrub(text: str | None, limit: int = 300) -> str | None:
    """A diagnostic without any address in it (events and suppressions keep none), shortened."""
    if text is None:
        return None
    return smtp_reply.redact(" ".join(text.split()))[:limit]


def email_of_message_id(keys: Sequence[bytes], message_id: str) -> int | None:
    """The outbox row a Message-ID we made names (`compose.message_id`), if its tag is genuine."""
    match = _MESSAGE_ID.fullmatch(message_id.strip())
    if match is None:
        return None
    found = int(match[1])
    for key in keys:
        if hmac.compare_digest(compose.message_id(found, match[3], key), f"<{match[0].strip('<>')}>"):
            return found
    return None


# --- applying ---------------------------------------------------------------------------------


async def apply(
    pool: asyncpg.Pool, settings: Settings, finding: Finding, unsubscribe: Unsubscribe
) -> Outcome:
    """Record `finding`: its event (once, however often it arrives) and the suppressions it calls
    for, in one transaction. Idempotent."""
    if finding.kind == "ignored":
        return Outcome("ignored", finding.why, finding.email_id)
    async with pool.acquire() as conn, conn.transaction():
        if finding.kind == "unsubscribe" and finding.token is not None:
            return await _unsubscribe(conn, settings, finding, unsubscribe)
        row = await conn.fetchrow(Q.report_email, finding.email_id) if finding.email_id is not None else None
        address = row["to_address"] if row is not None else finding.address
        if not address or address == "[erased]":
            return Outcome("ignored", "the e-mail is no longer held (erased or unknown)", finding.email_id)
        if row is not None:
            target = _Target(row["id"], row["account_id"], row["newsletter_id"], row["kind"])
        else:  # a provider's signed event that names no e-mail of ours: the member by address
            target = _Target(None, await conn.fetchval(Q.account_by_address, address), None, None)
        if finding.kind == "unsubscribe":
            return await _provider_unsubscribe(conn, finding, target, address, unsubscribe)
        if finding.source == "flufl" and not _flufl_names(finding, address):
            return Outcome("ignored", "the report is about another address", finding.email_id)
        return await _record(conn, settings, finding, target, address)


@dataclass(frozen=True)
class _Target:
    """What a finding is recorded against: the e-mail (when tied) and the member."""

    email_id: int | None
    account_id: int | None
    newsletter_id: int | None
    kind: str | None


def _flufl_names(finding: Finding, address: str) -> bool:
    wanted = suppression.normalise(address)
    return wanted in finding.permanent or wanted in finding.temporary


async def _unsubscribe(
    conn: asyncpg.Connection, settings: Settings, finding: Finding, unsubscribe: Unsubscribe
) -> Outcome:
    found = tokens.verify(settings.keyring, finding.token or "", "unsubscribe")
    if found is None:
        return Outcome("ignored", "no valid unsubscribe token")
    if await conn.fetchval(Q.member, found.account_id) is None:
        return Outcome("ignored", "the member no longer exists")
    row = await conn.fetchrow(Q.report_email, finding.email_id) if finding.email_id is not None else None
    if row is None or row["account_id"] != found.account_id:
        row = None  # the e-mail named is not this member's: the unsubscribe stands, unattributed
    email_id, newsletter_id = (row["id"], row["newsletter_id"]) if row is not None else (None, None)
    # A list token names its list by id (`list:ID`), which the unsubscribe path takes.
    list_name = found.list if found.list_id is None else f"list:{found.list_id}"
    changed = await unsubscribe(conn, found.account_id, list_name, email_id, newsletter_id, "mailto")
    return Outcome("unsubscribed", f"list {list_name}", recorded=changed)


async def _provider_unsubscribe(
    conn: asyncpg.Connection,
    finding: Finding,
    target: _Target,
    address: str,
    unsubscribe: Unsubscribe,
) -> Outcome:
    """A provider says the member unsubscribed (its own link or list): the member leaves the list
    of that e-mail (the newsletter when the e-mail was not list mail, or is not known); an address
    we cannot tie to a member is suppressed for newsletters and digests."""
    if target.account_id is not None:
        policy = outbox.POLICIES.get(target.kind or "")
        list_name = (policy.list_name if policy else None) or "newsletter"
        changed = await unsubscribe(
            conn, target.account_id, list_name, target.email_id, target.newsletter_id, finding.source
        )
        return Outcome("unsubscribed", f"list {list_name}", target.email_id, recorded=changed)
    added = [
        name
        for name in _BULK_LISTS
        if await suppression.add(conn, address, "unsubscribed", name, f"{finding.source} unsubscribe")
    ]
    return Outcome(
        "unsubscribed", "not tied to a member: suppressed", recorded=bool(added), suppressed=tuple(added)
    )


async def _record(
    conn: asyncpg.Connection, settings: Settings, finding: Finding, target: _Target, address: str
) -> Outcome:
    digest = suppression.address_hash(address).hex()
    detail: dict[str, Any] = {"source": finding.source, "recipient_hash": digest}
    for name in ("bounce", "status", "diagnostic", "feedback_type"):
        value = getattr(finding, name)
        if value:
            detail["type" if name == "bounce" else name] = value
    kind = finding.kind
    email_id = target.email_id
    event_id = await conn.fetchval(
        Q.insert_report_event,
        kind,
        target.account_id,
        email_id,
        target.newsletter_id,
        finding.source,
        detail,
        f"{kind}:{finding.source}:{finding.dedupe}:{email_id or digest[:16]}",
    )
    outcome = Outcome(kind, email_id=email_id, recorded=event_id is not None)
    if event_id is None:
        return outcome
    where = f"{finding.source} {finding.status or finding.feedback_type or ''}".strip()
    note = f"{where}, e-mail {email_id}" if email_id is not None else where
    lists: list[tuple[suppression.ListName, suppression.Reason]] = []
    if kind == "bounced" and finding.bounce == "hard":
        lists = [("all", "hard_bounce")]
    elif kind == "bounced" and finding.bounce == "soft":
        since = datetime.now(UTC) - timedelta(days=settings.soft_bounce_days)
        if await conn.fetchval(Q.count_soft_bounces, digest, since) >= settings.soft_bounce_limit:
            lists = [("all", "soft_bounce")]
            note = f"{settings.soft_bounce_limit} temporary failures in {settings.soft_bounce_days} days"
    elif kind == "complained":
        lists = [("newsletter", "complaint"), ("digest", "complaint")]
    added = [name for name, reason in lists if await suppression.add(conn, address, reason, name, note)]
    return Outcome(kind, email_id=email_id, recorded=True, suppressed=tuple(added))
