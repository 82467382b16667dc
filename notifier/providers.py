"""Provider webhooks: verify each provider's signature, map its events onto `bounces.Finding`s.

| provider | authenticity | events read |
|---|---|---|
| Amazon SES through SNS | SNS message signature (RSA, SignatureVersion 1: SHA1, 2: SHA256) with the certificate at SigningCertURL, which must be an https `sns.<region>.amazonaws.com` URL of a `.pem` | Bounce, Complaint, Delivery (`notificationType` or `eventType`) |
| SendGrid | signed event webhook: ECDSA P-256/SHA-256 over timestamp + body, the account's verification key | delivered, bounce, dropped, deferred, spamreport, unsubscribe, group_unsubscribe |
| Mailgun | HMAC-SHA256 of timestamp + token under the webhook signing key, timestamp within 15 minutes | delivered, failed (permanent / temporary), complained, unsubscribed |
| Postmark | HTTP basic auth on the webhook URL | Delivery, Bounce, SpamComplaint, SubscriptionChange |

Every function here raises `Unauthorized` for a missing or wrong signature and `BadPayload` for a
body it cannot read, before anything is recorded. An event names the e-mail through our signed
Message-ID when the provider passes it on (SES `commonHeaders.messageId`, SendGrid `smtp-id`,
Mailgun `message.headers.message-id`); otherwise by the address the (authenticated) provider gives.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import time
from collections.abc import Sequence
from hashlib import sha256
from typing import Any
from urllib.parse import urlsplit

import pydantic_core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from notifier.bounces import BounceType, Finding, Kind, classify, email_of_message_id, scrub

PROVIDERS = ("ses", "sendgrid", "mailgun", "postmark")
MAILGUN_MAX_AGE = 15 * 60
SENDGRID_MAX_AGE = 15 * 60
_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?", re.ASCII)


class Unauthorized(Exception):
    """The call is not from the provider: unsigned, wrongly signed, too old."""


class BadPayload(Exception):
    """The body is not the provider's documented shape."""


def read_json(body: bytes) -> Any:
    """The body as JSON, or BadPayload. pydantic-core's parser refuses deep nesting without
    recursing in Python (a RecursionError would leave CPython 3.11's parser state broken)."""
    try:
        return pydantic_core.from_json(body)
    except ValueError as exc:
        raise BadPayload(f"the body is not JSON: {str(exc)[:100]}") from None


def _obj(parent: dict[str, Any], name: str) -> dict[str, Any]:
    value = parent.get(name)
    return value if isinstance(value, dict) else {}


def _mid(keys: Sequence[bytes], value: object) -> int | None:
    if not isinstance(value, str) or len(value) > 400:
        return None
    return email_of_message_id(keys, value if value.startswith("<") else f"<{value}>")


def _address(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and "@" in value and len(value) <= 320 else None


# --- Amazon SES via SNS -----------------------------------------------------------------------

_SNS_CONFIRMATION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
# The fields each SNS message type signs, in the order they are signed.
_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _SNS_CONFIRMATION,
    "UnsubscribeConfirmation": _SNS_CONFIRMATION,
}


def sns_cert_url(url: object) -> str:
    """SigningCertURL if it is an https SNS host of amazonaws.com naming a .pem; else Unauthorized."""
    if not isinstance(url, str):
        raise Unauthorized("SigningCertURL is missing")
    parts = urlsplit(url)
    if (
        parts.scheme != "https"
        or not _SNS_HOST.fullmatch(parts.hostname or "")
        or parts.port not in (None, 443)
    ):
        raise Unauthorized("SigningCertURL is not an https SNS host of amazonaws.com")
    if not parts.path.endswith(".pem"):
        raise Unauthorized("SigningCertURL does not name a .pem certificate")
    return url


def sns_subscribe_url(url: object) -> str:
    """SubscribeURL of a confirmation, if it is an https SNS host of amazonaws.com."""
    if not isinstance(url, str):
        raise BadPayload("SubscribeURL is missing")
    parts = urlsplit(url)
    if parts.scheme != "https" or not _SNS_HOST.fullmatch(parts.hostname or ""):
        raise Unauthorized("SubscribeURL is not an https SNS host of amazonaws.com")
    return url


def sns_envelope(body: bytes) -> dict[str, Any]:
    """The SNS message as a dict with the fields the signature needs (BadPayload otherwise)."""
    message = read_json(body)
    if not isinstance(message, dict) or message.get("Type") not in _SNS_FIELDS:
        raise BadPayload("not an SNS message (Type is Notification or a subscription confirmation)")
    for name in ("Message", "MessageId", "Timestamp", "TopicArn", "Signature", "SigningCertURL"):
        if not isinstance(message.get(name), str):
            raise BadPayload(f"the SNS message lacks {name}")
    return message


def verify_sns(message: dict[str, Any], certificate_pem: bytes) -> None:
    """Check the SNS signature with the certificate (PEM) SigningCertURL named; Unauthorized if
    it does not hold."""
    lines = []
    for name in _SNS_FIELDS[message["Type"]]:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise Unauthorized(f"the SNS message lacks the signed field {name}")
        lines.append(f"{name}\n{value}\n")
    algorithm: hashes.HashAlgorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(  # noqa: S303
        str(message.get("SignatureVersion")), hashes.SHA256()
    )
    if str(message.get("SignatureVersion")) not in ("1", "2"):
        raise Unauthorized("unknown SignatureVersion")
    try:
        signature = base64.b64decode(message["Signature"], validate=True)
        key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    except (binascii.Error, ValueError):
        raise Unauthorized("the SNS signature or certificate cannot be read") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise Unauthorized("the SNS certificate is not an RSA key")
    try:
        key.verify(signature, "".join(lines).encode(), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise Unauthorized("the SNS signature does not match") from None


def ses_findings(keys: Sequence[bytes], message: dict[str, Any]) -> list[Finding]:
    """The findings of a verified SNS Notification carrying an SES event."""
    inner = read_json(message["Message"].encode())
    if not isinstance(inner, dict):
        raise BadPayload("the SNS Message is not an SES event")
    kind = inner.get("notificationType") or inner.get("eventType")
    mail = _obj(inner, "mail")
    headers = _obj(mail, "commonHeaders")
    email_id = _mid(keys, headers.get("messageId"))
    key = f"{message['MessageId']}"
    findings: list[Finding] = []

    def each(section: str, field: str) -> list[dict[str, Any]]:
        part = inner.get(section)
        items = part.get(field) if isinstance(part, dict) else None
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    if kind == "Bounce":
        bounce = _obj(inner, "bounce")
        permanent = bounce.get("bounceType") == "Permanent"
        for i, r in enumerate(each("bounce", "bouncedRecipients")):
            status = r.get("status") if isinstance(r.get("status"), str) else None
            diagnostic = str(r.get("diagnosticCode") or bounce.get("bounceSubType") or "")
            kind_of = classify(status, diagnostic) if permanent else "soft"
            if permanent and kind_of == "soft" and bounce.get("bounceSubType") in ("General", "NoEmail"):
                kind_of = "hard"
            findings.append(
                Finding(
                    "bounced",
                    "ses",
                    f"{key}:{i}",
                    email_id=email_id,
                    bounce=kind_of,
                    status=status,
                    diagnostic=scrub(diagnostic),
                    address=_address(r.get("emailAddress")),
                )
            )
    elif kind == "Complaint":
        complaint = _obj(inner, "complaint")
        for i, r in enumerate(each("complaint", "complainedRecipients")):
            findings.append(
                Finding(
                    "complained",
                    "ses",
                    f"{key}:{i}",
                    email_id=email_id,
                    feedback_type=str(complaint.get("complaintFeedbackType") or "abuse")[:40],
                    address=_address(r.get("emailAddress")),
                )
            )
    elif kind == "Delivery":
        delivery = _obj(inner, "delivery")
        recipients = delivery.get("recipients")
        recipients = recipients if isinstance(recipients, list) else []
        for i, r in enumerate(recipients):
            findings.append(Finding("delivered", "ses", f"{key}:{i}", email_id=email_id, address=_address(r)))
    return findings


# --- SendGrid ---------------------------------------------------------------------------------


def sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER), or PEM."""
    raw = text.strip().encode()
    try:
        key = (
            serialization.load_pem_public_key(raw)
            if raw.startswith(b"-----")
            else serialization.load_der_public_key(base64.b64decode(raw))
        )
    except (binascii.Error, ValueError):
        raise ValueError(
            "NOTIFIER_SENDGRID_VERIFICATION_KEY is not a public key (base64 DER or PEM)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("NOTIFIER_SENDGRID_VERIFICATION_KEY is not an ECDSA key")
    return key


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    now: float | None = None,
) -> None:
    """Check `X-Twilio-Email-Event-Webhook-Signature` over timestamp + body."""
    if not signature or not timestamp:
        raise Unauthorized("the event webhook signature headers are missing")
    if not timestamp.isdigit() or abs((now or time.time()) - int(timestamp)) > SENDGRID_MAX_AGE:
        raise Unauthorized("the signature timestamp is not recent")
    try:
        key.verify(
            base64.b64decode(signature, validate=True), timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
        )
    except (binascii.Error, ValueError, InvalidSignature):
        raise Unauthorized("the event webhook signature does not match") from None


_SENDGRID: dict[str, Kind] = {
    "delivered": "delivered",
    "bounce": "bounced",
    "dropped": "bounced",
    "deferred": "deferred",
    "spamreport": "complained",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
}


def sendgrid_findings(keys: Sequence[bytes], body: bytes) -> list[Finding]:
    events = read_json(body)
    if not isinstance(events, list):
        raise BadPayload("the event webhook posts a JSON array of events")
    findings = []
    for event in events:
        if not isinstance(event, dict):
            raise BadPayload("each event is a JSON object")
        kind = _SENDGRID.get(str(event.get("event")))
        event_id = event.get("sg_event_id")
        if kind is None or not isinstance(event_id, str):
            continue
        status = event.get("status") if isinstance(event.get("status"), str) else None
        reason = str(event.get("reason") or "")
        bounce: BounceType | None = None
        if kind == "bounced":
            bounce = "policy" if event.get("type") == "blocked" else classify(status, reason)
            if event.get("event") == "dropped":
                bounce = (
                    "hard" if "bounced address" in reason.lower() or "invalid" in reason.lower() else "policy"
                )
        findings.append(
            Finding(
                kind,
                "sendgrid",
                event_id[:100],
                email_id=_mid(keys, event.get("smtp-id")),
                bounce=bounce,
                status=status,
                diagnostic=scrub(reason) or None,
                feedback_type="abuse" if kind == "complained" else None,
                address=_address(event.get("email")),
            )
        )
    return findings


# --- Mailgun ----------------------------------------------------------------------------------


def verify_mailgun(signing_key: bytes, payload: Any, now: float | None = None) -> None:
    """Check `signature`: HMAC-SHA256(signing key, timestamp + token), timestamp recent."""
    sig = payload.get("signature") if isinstance(payload, dict) else None
    if not isinstance(sig, dict):
        raise Unauthorized("the payload carries no signature")
    timestamp, token, signature = (sig.get(k) for k in ("timestamp", "token", "signature"))
    if not (isinstance(timestamp, str) and isinstance(token, str) and isinstance(signature, str)):
        raise Unauthorized("the signature lacks timestamp, token or signature")
    if not timestamp.isdigit() or abs((now or time.time()) - int(timestamp)) > MAILGUN_MAX_AGE:
        raise Unauthorized("the signature timestamp is not recent")
    expected = hmac.new(signing_key, (timestamp + token).encode(), sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise Unauthorized("the signature does not match")


def mailgun_findings(keys: Sequence[bytes], payload: dict[str, Any]) -> list[Finding]:
    data = payload.get("event-data")
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise BadPayload("the payload lacks event-data with an id")
    event = data.get("event")
    message = _obj(data, "message")
    headers = _obj(message, "headers")
    email_id = _mid(keys, headers.get("message-id"))
    address = _address(data.get("recipient"))
    key = data["id"][:100]
    if event == "delivered":
        return [Finding("delivered", "mailgun", key, email_id=email_id, address=address)]
    if event == "complained":
        return [
            Finding("complained", "mailgun", key, email_id=email_id, feedback_type="abuse", address=address)
        ]
    if event == "unsubscribed":
        return [Finding("unsubscribe", "mailgun", key, email_id=email_id, address=address)]
    if event == "failed":
        status_block = _obj(data, "delivery-status")
        status = (
            status_block.get("enhanced-code") if isinstance(status_block.get("enhanced-code"), str) else None
        )
        text = str(status_block.get("description") or status_block.get("message") or data.get("reason") or "")
        temporary = data.get("severity") == "temporary"
        return [
            Finding(
                "deferred" if temporary else "bounced",
                "mailgun",
                key,
                email_id=email_id,
                bounce=None if temporary else classify(status, text),
                status=status,
                diagnostic=scrub(text) or None,
                address=address,
            )
        ]
    return []


# --- Postmark ---------------------------------------------------------------------------------


def verify_basic(header: str | None, username: str, password: str) -> None:
    """HTTP basic auth as set on the Postmark webhook URL."""
    kind, _, value = (header or "").partition(" ")
    if kind.lower() != "basic":
        raise Unauthorized("basic authentication is required")
    try:
        user, _, secret = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("malformed basic credentials") from None
    ok_user = hmac.compare_digest(user.encode(), username.encode())
    if not (hmac.compare_digest(secret.encode(), password.encode()) and ok_user):
        raise Unauthorized("wrong credentials")


_POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "AddressChange"}
_POSTMARK_POLICY = {"Blocked", "ContentRelated", "SpamNotification", "SMTPApiError", "VirusNotification"}
_POSTMARK_IGNORED = {"AutoResponder", "OpenRelayTest", "ChallengeVerification", "Subscribe", "Unknown"}


def postmark_findings(body: bytes) -> list[Finding]:
    event = read_json(body)
    if not isinstance(event, dict) or not isinstance(event.get("RecordType"), str):
        raise BadPayload("the payload lacks RecordType")
    record = event["RecordType"]
    ref = event.get("ID") or event.get("MessageID")
    if not isinstance(ref, (str, int)) or isinstance(ref, bool):
        raise BadPayload("the payload lacks ID or MessageID")
    key = f"{record}:{ref}"[:120]
    address = _address(event.get("Email") or event.get("Recipient"))
    if record == "Delivery":
        return [Finding("delivered", "postmark", key, address=address)]
    if record == "SpamComplaint":
        return [Finding("complained", "postmark", key, feedback_type="abuse", address=address)]
    if record == "SubscriptionChange":
        if event.get("SuppressSending") is True:
            return [Finding("unsubscribe", "postmark", key, address=address)]
        return []
    if record == "Bounce":
        bounce_type = str(event.get("Type") or "")
        if bounce_type in _POSTMARK_IGNORED:
            return []
        bounce = (
            "hard"
            if bounce_type in _POSTMARK_HARD
            else "policy"
            if bounce_type in _POSTMARK_POLICY
            else "soft"
        )
        return [
            Finding(
                "bounced",
                "postmark",
                key,
                bounce=bounce,  # type: ignore[arg-type]
                diagnostic=scrub(f"{bounce_type}: {event.get('Description') or ''}"),
                address=address,
            )
        ]
    return []
