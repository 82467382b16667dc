"""`POST /webhooks/{provider}`: delivery events from Amazon SES (SNS), SendGrid, Mailgun, Postmark.

Authenticity is the provider's own (see `notifier.providers`): a call that is unsigned or wrongly
signed is a 401 and changes nothing; a provider without its setting is a 404. Each event becomes a
`bounces.Finding` applied like an inbound report, so the same event twice is recorded once.
SNS subscription confirmations are confirmed by fetching their SubscribeURL (an SNS host only).
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from aiohttp import web

from notifier import bounces, providers
from notifier.api.inbound import answer, unsubscribe_member
from notifier.api.problems import Problem
from notifier.api.responses import json_response
from notifier.resources import POOL, SETTINGS
from notifier.settings import ConfigError, Settings

log = logging.getLogger("notifier.webhooks")

MAX_BODY = 1024 * 1024
SNS_CERTS = web.AppKey("sns_certificates", dict[str, bytes])


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail)


async def _fetch(url: str) -> bytes:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        if resp.status != 200:
            raise Problem(502, f"fetching {url} answered {resp.status}")
        return await resp.read()


async def _sns_certificate(request: web.Request, url: str) -> bytes:
    """The certificate SigningCertURL names: the configured file (tests, offline machines) or
    fetched once per process from the SNS host."""
    settings = request.app[SETTINGS]
    if settings.sns_certificate_file is not None:
        return settings.sns_certificate_file.read_bytes()
    cache = request.app[SNS_CERTS]
    if url not in cache:
        try:
            cache[url] = await _fetch(url)
        except (aiohttp.ClientError, TimeoutError):
            raise Problem(502, "the SNS signing certificate could not be fetched") from None
    return cache[url]


async def _findings(request: web.Request, provider: str, body: bytes) -> list[bounces.Finding]:
    settings: Settings = request.app[SETTINGS]
    keys = settings.keyring
    if provider == "ses" and settings.ses_topic_arns:
        message = providers.sns_envelope(body)
        url = providers.sns_cert_url(message.get("SigningCertURL"))
        providers.verify_sns(message, await _sns_certificate(request, url))
        if message["TopicArn"] not in settings.ses_topic_arns:
            raise providers.Unauthorized("the SNS topic is not one of NOTIFIER_SES_TOPIC_ARNS")
        if message["Type"] == "SubscriptionConfirmation":
            confirm = providers.sns_subscribe_url(message.get("SubscribeURL"))
            try:
                await _fetch(confirm)
            except (aiohttp.ClientError, TimeoutError):
                raise Problem(502, "the SNS subscription could not be confirmed") from None
            log.info("SNS subscription to %s confirmed", message["TopicArn"])
            return []
        if message["Type"] != "Notification":
            return []
        return providers.ses_findings(keys, message)
    if provider == "sendgrid" and settings.sendgrid_verification_key:
        key = providers.sendgrid_key(settings.sendgrid_verification_key)
        providers.verify_sendgrid(
            key,
            body,
            request.headers.get("X-Twilio-Email-Event-Webhook-Signature"),
            request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp"),
        )
        return providers.sendgrid_findings(keys, body)
    if provider == "mailgun" and settings.mailgun_signing_key is not None:
        payload: Any = providers.read_json(body)
        providers.verify_mailgun(settings.mailgun_signing_key.get_secret_value().encode(), payload)
        return providers.mailgun_findings(keys, payload)
    if provider == "postmark" and settings.postmark_webhook_username and settings.postmark_webhook_password:
        providers.verify_basic(
            request.headers.get("Authorization"),
            settings.postmark_webhook_username,
            settings.postmark_webhook_password.get_secret_value(),
        )
        return providers.postmark_findings(body)
    raise Problem(404, f"no webhook for provider {provider!r} is configured")


async def post_webhook(request: web.Request) -> web.Response:
    """One provider call: 200 with what each event did; 401 unsigned or wrongly signed; 400 for
    a body that is not the provider's shape; 404 for a provider not configured."""
    provider = request.match_info["provider"]
    if provider not in providers.PROVIDERS:
        raise Problem(404, f"unknown provider {provider!r}: one of {', '.join(providers.PROVIDERS)}")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Problem(413, f"the body is larger than {MAX_BODY} bytes")
    body = await request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise Problem(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        findings = await _findings(request, provider, body)
    except providers.Unauthorized as exc:
        raise _unauthorized(str(exc)) from None
    except providers.BadPayload as exc:
        raise Problem(400, str(exc)) from None
    pool = request.app[POOL]
    settings = request.app[SETTINGS]
    outcomes = []
    for finding in findings:
        outcome = await bounces.apply(pool, settings, finding, unsubscribe_member)
        outcomes.append(answer(outcome).model_dump(mode="json"))
    return json_response(200, {"events": outcomes})


def setup_routes(app: web.Application, settings: Settings) -> None:
    """The webhook route; a SendGrid key that cannot be read stops start-up (ConfigError)."""
    if settings.sendgrid_verification_key:
        try:
            providers.sendgrid_key(settings.sendgrid_verification_key)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    app[SNS_CERTS] = {}
    app.router.add_post("/webhooks/{provider}", post_webhook)
