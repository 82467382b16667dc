"""Reading one inbound message into a `bounces.Finding`: RFC 3464 delivery-status reports, RFC 5965
feedback reports, mail to the unsubscribe mailto, RFC 3834 auto-replies, and non-standard bounces
through `flufl.bounce`'s detectors. See `notifier.bounces` for what each finding then does.

A report ties to an e-mail only through what we signed (`bounces.email_of_message_id`,
`notifier.verp`); `read_report` never raises on hostile input: what it cannot read is an
`ignored` finding saying why.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from collections.abc import Sequence
from email.message import Message
from email.utils import getaddresses, parseaddr

import flufl.bounce

from notifier import suppression, tokens, verp
from notifier.bounces import Finding, classify, email_of_message_id, scrub
from notifier.settings import Settings

MAX_PARTS = 50  # multipart boundaries in one message; reports have three to five
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response)|out of (the )?office|abwesenheit|autoreply|vacation)",
    re.IGNORECASE,
)


def _header(msg: Message, name: str) -> str:
    value = msg.get(name)
    return "" if value is None else str(value).strip()


def _tie(settings: Settings, addresses: Sequence[str], original: Message | None) -> int | None:
    """The e-mail a report is about: the signed VERP address it was sent to, or, when it was not
    sent to one (a feedback loop's own address, a pipe that does not pass the recipient), the
    signed return path or Message-ID of the original message it quotes."""
    keys = settings.keyring
    domain = settings.bounce_domain
    if domain:
        # A report sent to a return path of ours is about that e-mail or nothing: one whose
        # signature fails is forged, whatever original it quotes.
        ours = [a for a in addresses if verp.looks_signed(a, domain)]
        for address in ours:
            found = verp.email_id(keys, address, domain)
            if found is not None:
                return found
        if ours:
            return None
        if original is not None:
            found = verp.email_id(keys, parseaddr(_header(original, "Return-Path"))[1], domain)
            if found is not None:
                return found
    if original is not None:
        return email_of_message_id(keys, _header(original, "Message-ID"))
    return None


def _original(msg: Message) -> Message | None:
    """The quoted original of a report: a message/rfc822 part, or text/rfc822-headers."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if ctype == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return email.message_from_bytes(raw, policy=email.policy.compat32)
    return None


def _report_key(msg: Message, raw: bytes) -> str:
    """The report's own identity: its Message-ID, else a hash of its bytes."""
    basis = _header(msg, "Message-ID").encode() or raw
    return hashlib.sha256(basis).hexdigest()[:32]


def _recipients(msg: Message, envelope: Sequence[str]) -> list[str]:
    headers = [_header(msg, h) for h in ("Delivered-To", "X-Original-To", "Envelope-To", "To")]
    return [*envelope, *(a for _, a in getaddresses([h for h in headers if h]) if a)]


def _is_auto_reply(msg: Message) -> bool:
    """RFC 3834 and the common non-standard markers (Exchange, vacation programs)."""
    if _header(msg, "Auto-Submitted").lower() not in ("", "no"):
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Autoresponder"):
        return True
    if _header(msg, "Precedence").lower() in ("auto_reply", "auto-reply"):
        return True
    return bool(_AUTO_SUBJECT.match(_header(msg, "Subject")))


def _mailto_token(settings: Settings, msg: Message, recipients: Sequence[str]) -> tuple[bool, str | None]:
    """Whether the message went to the unsubscribe mailto, and the token it carries (in the
    subject, as List-Unsubscribe puts it, or as `+TOKEN` in the address)."""
    mailto = (settings.unsubscribe_mailto or "").strip().lower()
    if not mailto:
        return False, None
    local, _, domain = mailto.partition("@")
    hit = False
    candidates: list[str] = []
    for address in recipients:
        a_local, _, a_domain = address.strip().lower().partition("@")
        base, _, tag = a_local.partition("+")
        if a_domain == domain and base == local:
            hit = True
            if tag:
                candidates.append(address.strip().partition("@")[0].partition("+")[2])
    if not hit:
        return False, None
    for word in _header(msg, "Subject").split()[:20]:
        candidates.append(re.sub(r"^unsubscribe-", "", word, flags=re.IGNORECASE))
    for candidate in candidates:
        if tokens.verify(settings.keyring, candidate, "unsubscribe") is not None:
            return True, candidate
    return True, None


def _delivery_status(msg: Message) -> list[Message] | None:
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            blocks = part.get_payload()
            if isinstance(blocks, list):
                return [b for b in blocks if isinstance(b, Message)]
    return None


def _feedback(msg: Message) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            if isinstance(payload, str):
                return email.message_from_string(payload.lstrip(), policy=email.policy.compat32)
    return None


def read_report(settings: Settings, raw: bytes, envelope_recipients: Sequence[str] = ()) -> Finding:
    """What one inbound message says. Never raises on hostile input: anything not understood is
    an `ignored` finding saying why."""
    if raw.lower().count(b"boundary=") > MAX_PARTS:
        # The parser recurses per nested multipart; a real report has a handful.
        key = hashlib.sha256(raw).hexdigest()[:32]
        return Finding("ignored", "mime", key, why=f"more than {MAX_PARTS} multipart boundaries")
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    key = _report_key(msg, raw)
    recipients = _recipients(msg, envelope_recipients)

    to_mailto, token = _mailto_token(settings, msg, recipients)
    if to_mailto:
        if token is None:
            return Finding("ignored", "mailto", key, why="no valid unsubscribe token in the message")
        # A reply (rather than a new message) names the e-mail it answers: attribute it to that one.
        answered = _header(msg, "In-Reply-To") or _header(msg, "References").split(" ")[0]
        replied = email_of_message_id(settings.keyring, answered) if answered else None
        return Finding("unsubscribe", "mailto", f"mailto:{token}", email_id=replied, token=token)

    original = _original(msg)
    if msg.get_content_type() == "multipart/report":
        report_type = msg.get_param("report-type")
        report_type = report_type.lower() if isinstance(report_type, str) else ""
        if report_type == "feedback-report":
            return _read_feedback(settings, msg, key, recipients, original)
        blocks = _delivery_status(msg)
        if report_type == "delivery-status" and blocks:
            return _read_dsn(settings, blocks, key, recipients, original)

    if _is_auto_reply(msg):
        return Finding("ignored", "auto-reply", key, why="an automatic reply (RFC 3834)")

    try:
        temporary, permanent = flufl.bounce.all_failures(msg)
    except Exception:
        # A detector that trips over a malformed message (flufl.bounce 6.0's Yale detector
        # raises IndexError on some): not a report we can read, not a server error.
        return Finding("ignored", "flufl", key, why="a malformed message no bounce detector could read")
    if not temporary and not permanent:
        return Finding("ignored", "flufl", key, why="not a bounce, complaint or unsubscribe")
    email_id = _tie(settings, recipients, original)
    if email_id is None:
        return Finding("ignored", "flufl", key, why="not tied to an e-mail of ours (no valid return path)")
    return Finding(
        "bounced",
        "flufl",
        key,
        email_id=email_id,
        bounce="hard" if permanent else "soft",
        permanent=_decoded(permanent),
        temporary=_decoded(temporary),
    )


def _decoded(addresses: frozenset[bytes]) -> frozenset[str]:
    return frozenset(suppression.normalise(a.decode("utf-8", "replace")) for a in addresses)


def _read_dsn(
    settings: Settings, blocks: list[Message], key: str, recipients: Sequence[str], original: Message | None
) -> Finding:
    """RFC 3464: the per-recipient blocks' Action and Status; a failure outweighs a delay."""
    per_recipient = [b for b in blocks if b.get("Action")]
    failed = [b for b in per_recipient if _header(b, "Action").lower() == "failed"]
    delayed = [b for b in per_recipient if _header(b, "Action").lower() == "delayed"]
    email_id = _tie(settings, recipients, original)
    if email_id is None:
        return Finding("ignored", "dsn", key, why="not tied to an e-mail of ours (no valid return path)")
    chosen = failed or delayed
    if not chosen:
        return Finding("ignored", "dsn", key, email_id=email_id, why="the report says delivered or relayed")
    block = chosen[0]
    status = _header(block, "Status").split(" ")[0]
    diagnostic = _header(block, "Diagnostic-Code")
    if not failed:
        return Finding("deferred", "dsn", key, email_id=email_id, status=status, diagnostic=scrub(diagnostic))
    return Finding(
        "bounced",
        "dsn",
        key,
        email_id=email_id,
        bounce=classify(status, diagnostic),
        status=status or None,
        diagnostic=scrub(diagnostic),
    )


def _read_feedback(
    settings: Settings, msg: Message, key: str, recipients: Sequence[str], original: Message | None
) -> Finding:
    """RFC 5965: a complaint about the quoted original."""
    report = _feedback(msg)
    feedback_type = _header(report, "Feedback-Type").lower() if report is not None else ""
    email_id = _tie(settings, recipients, original)
    if email_id is None:
        return Finding("ignored", "arf", key, why="not tied to an e-mail of ours")
    return Finding("complained", "arf", key, email_id=email_id, feedback_type=feedback_type or "abuse")
