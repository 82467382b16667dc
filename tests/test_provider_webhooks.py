"""Provider webhooks: each provider's documented payloads, signed the provider's way with keys the
tests make; unsigned or wrongly signed calls are 401 and change nothing; repeats count once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from notifier import suppression
from notifier.mail import compose
from notifier.settings import Settings
from tests.factory import Factory

CERT_URL = (
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-6aad65c2f9911b05cd53efda11f913f9.pem"
)
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-events"
SNS_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"


@pytest.fixture(autouse=True)
def _providers(settings: Settings, tmp_path: Path) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(SNS_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(SNS_KEY, hashes.SHA256())
    )
    path = tmp_path / "sns.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    settings.ses_topic_arns = [TOPIC]
    settings.sns_certificate_file = path
    der = SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings.sendgrid_verification_key = base64.b64encode(der).decode()
    settings.mailgun_signing_key = SecretStr(MAILGUN_KEY)
    settings.postmark_webhook_username = "postmark"
    settings.postmark_webhook_password = SecretStr("hook-password-1")


Mails = dict[str, tuple[asyncpg.Record, str]]


@pytest.fixture
async def mails(factory: Factory, settings: Settings) -> Mails:
    """For members gone, angry, fine and leaver (subscribed, digests daily): a sent newsletter
    e-mail each, as {name: (member, its Message-ID as delivery makes it)}."""
    found: Mails = {}
    for name in ("gone", "angry", "fine", "leaver"):
        member = await factory.account(email=f"{name}@example.com", newsletter=True, digest_frequency="daily")
        row = await factory.email(member, status="sent", kind="newsletter", queue="notifier:bulk")
        found[name] = (member, compose.message_id(row["id"], "example.org", settings.secret))
    return found


async def _state(pool: asyncpg.Pool) -> tuple[int, int]:
    return (
        await pool.fetchval("SELECT count(*) FROM events"),
        await pool.fetchval("SELECT count(*) FROM suppressions"),
    )


async def _kinds(pool: asyncpg.Pool, account_id: int) -> list[str]:
    rows = await pool.fetch("SELECT kind FROM events WHERE account_id = $1 ORDER BY id", account_id)
    return [r["kind"] for r in rows]


# --- Amazon SES through SNS -------------------------------------------------------------------


def sns(
    message: dict[str, Any], version: str = "1", cert_url: str = CERT_URL, n: int = 1, topic: str = TOPIC
) -> dict[str, Any]:
    """An SNS Notification carrying `message`, signed as SNS signs (SignatureVersion 1: SHA1)."""
    body = {
        "Type": "Notification",
        "MessageId": f"22b80b92-fdea-4c2c-8f9d-bdfb0c7bf32{n}",
        "TopicArn": topic,
        "Message": json.dumps(message),
        "Timestamp": "2026-12-01T10:00:00.000Z",
        "SignatureVersion": version,
        "SigningCertURL": cert_url,
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
    }
    text = "".join(f"{k}\n{body[k]}\n" for k in ("Message", "MessageId", "Timestamp", "TopicArn", "Type"))
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
    body["Signature"] = base64.b64encode(SNS_KEY.sign(text.encode(), padding.PKCS1v15(), algorithm)).decode()
    return body


def ses_bounce(
    address: str, message_id: str, bounce_type: str = "Permanent", status: str = "5.1.1"
) -> dict[str, Any]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": address,
                    "action": "failed",
                    "status": status,
                    "diagnosticCode": f"smtp; 550 {status} user unknown",
                }
            ],
            "timestamp": "2026-12-01T10:00:00.000Z",
            "feedbackId": "0100018c-bounce-feedback",
            "reportingMTA": "dsn; a8-52.smtp-out.amazonses.com",
        },
        "mail": {
            "timestamp": "2026-12-01T09:59:59.000Z",
            "source": "news@example.org",
            "messageId": "0100018c2f0a1b2c-ses-id",
            "destination": [address],
            "commonHeaders": {"from": ["news@example.org"], "to": [address], "messageId": message_id},
        },
    }


async def test_ses_bounce_complaint_delivery_through_signed_sns(
    client: TestClient[Any, Any], pool: asyncpg.Pool, mails: Mails
) -> None:
    gone, gone_mid = mails["gone"]
    angry, angry_mid = mails["angry"]
    fine, fine_mid = mails["fine"]
    bounce = sns(ses_bounce("gone@example.com", gone_mid))
    resp = await client.post("/webhooks/ses", data=json.dumps(bounce), headers={"Content-Type": "text/plain"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["events"][0]["suppressed"] == ["all"]
    assert await suppression.check(pool, "gone@example.com") == "hard_bounce"
    assert await _kinds(pool, gone["id"]) == ["bounced"]

    complaint = {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": "angry@example.com"}],
            "timestamp": "2026-12-01T10:01:00.000Z",
            "feedbackId": "0100018c-complaint",
            "complaintFeedbackType": "abuse",
        },
        "mail": {"messageId": "x", "commonHeaders": {"messageId": angry_mid}},
    }
    resp = await client.post("/webhooks/ses", json=sns(complaint, version="2", n=2))
    assert resp.status == 200, await resp.text()
    assert await suppression.check(pool, "angry@example.com", ["newsletter"]) == "complaint"
    assert await suppression.check(pool, "angry@example.com", ["all"]) is None
    delivery = {
        "notificationType": "Delivery",
        "delivery": {"recipients": ["fine@example.com"], "smtpResponse": "250 ok"},
        "mail": {"messageId": "y", "commonHeaders": {"messageId": fine_mid}},
    }
    assert (await client.post("/webhooks/ses", json=sns(delivery, n=3))).status == 200
    assert await _kinds(pool, fine["id"]) == ["delivered"]
    assert await _kinds(pool, angry["id"]) == ["complained"]

    # The same notification again is recorded once.
    before = await _state(pool)
    resp = await client.post("/webhooks/ses", json=bounce)
    assert resp.status == 200 and (await resp.json())["events"][0]["recorded"] is False
    assert await _state(pool) == before

    # Forged: altered message, certificate from elsewhere, no signature.
    other = sns(ses_bounce("fine@example.com", fine_mid), n=4)
    tampered = {**other, "Message": json.dumps(ses_bounce("angry@example.com", angry_mid))}
    elsewhere = sns(ses_bounce("fine@example.com", fine_mid), cert_url="https://evil.example/sns.pem", n=5)
    lookalike = sns(ses_bounce("fine@example.com", fine_mid), cert_url="https://sns.evil.com/x.pem", n=6)
    plain_http = sns(
        ses_bounce("fine@example.com", fine_mid), cert_url=CERT_URL.replace("https", "http"), n=7
    )
    unsigned = {k: v for k, v in other.items() if k != "Signature"}
    # Genuinely signed by SNS, but for someone else's topic.
    stranger = sns(
        ses_bounce("fine@example.com", fine_mid), topic="arn:aws:sns:eu-west-1:999999999999:x", n=8
    )
    for forged in (tampered, elsewhere, lookalike, plain_http, stranger):
        resp = await client.post("/webhooks/ses", json=forged)
        assert resp.status == 401, await resp.text()
        assert resp.content_type == "application/problem+json"
    assert (await client.post("/webhooks/ses", json=unsigned)).status == 400
    assert await _state(pool) == before
    assert await suppression.check(pool, "fine@example.com") is None


# --- SendGrid ---------------------------------------------------------------------------------


def sendgrid_headers(body: bytes, timestamp: str | None = None) -> dict[str, str]:
    timestamp = timestamp or str(int(time.time()))
    signature = SENDGRID_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


async def test_sendgrid_signed_event_webhook(
    client: TestClient[Any, Any], pool: asyncpg.Pool, mails: Mails
) -> None:
    (gone, gone_mid), (angry, angry_mid), (leaver, leaver_mid) = (
        mails[n] for n in ("gone", "angry", "leaver")
    )
    base = {
        "timestamp": 1764583200,
        "category": ["newsletter"],
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001",
    }
    events = [
        {**base, "email": "gone@example.com", "smtp-id": gone_mid, "event": "bounce", "sg_event_id": "ev-b1",
         "reason": "550 5.1.1 The email account that you tried to reach does not exist", "status": "5.1.1", "type": "bounce"},
        {**base, "email": "angry@example.com", "smtp-id": angry_mid, "event": "spamreport", "sg_event_id": "ev-s1"},
        {**base, "email": "leaver@example.com", "smtp-id": leaver_mid, "event": "unsubscribe", "sg_event_id": "ev-u1"},
        {**base, "email": "leaver@example.com", "smtp-id": leaver_mid, "event": "delivered", "sg_event_id": "ev-d1",
         "response": "250 OK"},
        {**base, "email": "leaver@example.com", "smtp-id": leaver_mid, "event": "open", "sg_event_id": "ev-o1"},
    ]  # fmt: skip
    body = json.dumps(events).encode()
    resp = await client.post("/webhooks/sendgrid", data=body, headers=sendgrid_headers(body))
    assert resp.status == 200, await resp.text()
    assert [e["action"] for e in (await resp.json())["events"]] == [
        "bounced",
        "complained",
        "unsubscribed",
        "delivered",
    ]
    assert await suppression.check(pool, "gone@example.com") == "hard_bounce"
    assert await suppression.check(pool, "angry@example.com", ["digest"]) == "complaint"
    assert not await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", leaver["id"])
    assert await _kinds(pool, leaver["id"]) == ["unsubscribed", "delivered"]
    assert await _kinds(pool, gone["id"]) == ["bounced"] and await _kinds(pool, angry["id"]) == ["complained"]

    before = await _state(pool)
    resp = await client.post("/webhooks/sendgrid", data=body, headers=sendgrid_headers(body))
    assert resp.status == 200
    assert await _state(pool) == before

    wrong = json.dumps([{**events[0], "email": "leaver@example.com", "sg_event_id": "ev-x"}]).encode()
    stale = sendgrid_headers(body, timestamp=str(int(time.time()) - 3600))
    for headers, payload in (
        (sendgrid_headers(body), wrong),  # signature of another body
        (stale, body),
        ({"Content-Type": "application/json"}, body),
        ({**sendgrid_headers(body), "X-Twilio-Email-Event-Webhook-Signature": "bm90IGEgc2lnbmF0dXJl"}, body),
    ):
        resp = await client.post("/webhooks/sendgrid", data=payload, headers=headers)
        assert resp.status == 401, await resp.text()
    assert await _state(pool) == before


# --- Mailgun ----------------------------------------------------------------------------------


def mailgun(
    event_data: dict[str, Any], key: str = MAILGUN_KEY, timestamp: str | None = None
) -> dict[str, Any]:
    timestamp = timestamp or str(int(time.time()))
    token = hashlib.sha256(json.dumps(event_data).encode()).hexdigest()[:50]
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": event_data,
    }


async def test_mailgun_signed_webhooks(
    client: TestClient[Any, Any], pool: asyncpg.Pool, mails: Mails
) -> None:
    (gone, gone_mid), (later, later_mid) = mails["gone"], mails["fine"]

    def failed(address: str, mid: str, severity: str, code: str, event_id: str) -> dict[str, Any]:
        return {
            "event": "failed",
            "id": event_id,
            "timestamp": 1764583200.25,
            "severity": severity,
            "reason": "bounce" if severity == "permanent" else "generic",
            "recipient": address,
            "message": {"headers": {"message-id": mid.strip("<>"), "to": address, "subject": "News"}},
            "delivery-status": {"code": 550, "enhanced-code": code, "message": "mailbox unavailable",
                                "description": "", "attempt-no": 1},
        }  # fmt: skip

    resp = await client.post(
        "/webhooks/mailgun", json=mailgun(failed("gone@example.com", gone_mid, "permanent", "5.1.1", "mg-1"))
    )
    assert resp.status == 200, await resp.text()
    assert await suppression.check(pool, "gone@example.com") == "hard_bounce"
    resp = await client.post(
        "/webhooks/mailgun",
        json=mailgun(failed("fine@example.com", later_mid, "temporary", "4.2.2", "mg-2")),
    )
    assert (await resp.json())["events"][0]["action"] == "deferred"
    assert await suppression.check(pool, "fine@example.com", ["all", "newsletter"]) is None
    assert await _kinds(pool, gone["id"]) == ["bounced"] and await _kinds(pool, later["id"]) == ["deferred"]

    before = await _state(pool)
    forged = mailgun(failed("fine@example.com", later_mid, "permanent", "5.1.1", "mg-3"), key="key-guessed")
    stale = mailgun(
        failed("fine@example.com", later_mid, "permanent", "5.1.1", "mg-4"), timestamp="1500000000"
    )
    unsigned = {"event-data": failed("fine@example.com", later_mid, "permanent", "5.1.1", "mg-5")}
    for payload in (forged, stale, unsigned):
        assert (await client.post("/webhooks/mailgun", json=payload)).status == 401
    assert await _state(pool) == before


# --- Postmark ---------------------------------------------------------------------------------


async def test_postmark_basic_auth_webhooks(
    client: TestClient[Any, Any], pool: asyncpg.Pool, settings: Settings, factory: Factory
) -> None:
    gone = await factory.account(email="gone@example.com", newsletter=True)
    leaver = await factory.account(email="Leaver@Example.com", newsletter=True)
    auth = {"Authorization": "Basic " + base64.b64encode(b"postmark:hook-password-1").decode()}
    bounce = {
        "RecordType": "Bounce", "ID": 4323372036854775807, "Type": "HardBounce", "TypeCode": 1,
        "Name": "Hard bounce", "Tag": "newsletter", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": "gone@example.com", "From": "news@example.org", "BouncedAt": "2026-12-01T10:00:00Z",
        "Inactive": True, "CanActivate": True, "Subject": "News", "MessageStream": "broadcast",
    }  # fmt: skip
    auto = {**bounce, "ID": 4323372036854775808, "Type": "AutoResponder", "Email": "away@example.com"}
    complaint = {
        **bounce,
        "RecordType": "SpamComplaint",
        "ID": 42,
        "Type": "SpamComplaint",
        "Email": "angry@example.com",
    }
    for payload in (bounce, auto, complaint):
        resp = await client.post("/webhooks/postmark", json=payload, headers=auth)
        assert resp.status == 200, await resp.text()
    assert await suppression.check(pool, "gone@example.com") == "hard_bounce"
    assert await suppression.check(pool, "away@example.com", ["all", "newsletter", "digest"]) is None
    assert await suppression.check(pool, "angry@example.com", ["newsletter"]) == "complaint"
    assert await _kinds(pool, gone["id"]) == ["bounced"]  # tied to the member by address
    change = {
        "RecordType": "SubscriptionChange", "MessageID": "a4909a96-73d6-4c59-a6ca-3cbd5e6f0ce1",
        "ServerID": 23, "MessageStream": "broadcast", "ChangedAt": "2026-12-01T10:02:00Z",
        "Recipient": "leaver@example.com", "Origin": "Recipient", "SuppressSending": True,
        "SuppressionReason": "ManualSuppression", "Tag": "newsletter", "Metadata": {},
    }  # fmt: skip
    assert (await client.post("/webhooks/postmark", json=change, headers=auth)).status == 200
    assert not await pool.fetchval("SELECT newsletter FROM accounts WHERE id = $1", leaver["id"])
    assert await _kinds(pool, leaver["id"]) == ["unsubscribed"]
    before = await _state(pool)
    assert (await client.post("/webhooks/postmark", json=bounce, headers=auth)).status == 200
    assert await _state(pool) == before
    wrong = {"Authorization": "Basic " + base64.b64encode(b"postmark:guess").decode()}
    other = {**bounce, "ID": 7, "Email": "someone@example.com"}
    for headers in (wrong, {}, {"Authorization": "Basic !!!"}):
        assert (await client.post("/webhooks/postmark", json=other, headers=headers)).status == 401
    assert await _state(pool) == before


async def test_bodies_that_are_not_the_providers_shape_are_400(
    client: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(b"postmark:hook-password-1").decode()}
    for body in (b"not json", b"[" * 100_000 + b"]" * 100_000, b'{"RecordType": "Bounce"}', b"[]"):
        resp = await client.post(
            "/webhooks/postmark", data=body, headers={**auth, "Content-Type": "application/json"}
        )
        assert resp.status == 400, (body[:20], await resp.text())
        assert resp.content_type == "application/problem+json"
    assert (
        await client.post("/webhooks/ses", data=b"{}", headers={"Content-Type": "text/plain"})
    ).status == 400
    assert await _state(pool) == (0, 0)


async def test_unknown_or_unconfigured_providers_are_404(
    client: TestClient[Any, Any], settings: Settings
) -> None:
    assert (await client.post("/webhooks/sparkpost", json={})).status == 404
    settings.mailgun_signing_key = None
    resp = await client.post("/webhooks/mailgun", json={})
    assert resp.status == 404 and resp.content_type == "application/problem+json"
