"""Service messages: an e-mail about a member's account from a named template in
`templates/mail/service/`, sent at once on the service queue (the route,
`POST /v1/service-messages {account, template, data}`, is in notifier/api/service.py).

The request validates by rendering the template (StrictUndefined), so an unknown template or a
missing variable is a 422 that names it; then it stores the outbox row (honouring
`Idempotency-Key`) and rings the service queue. The worker renders again at send time, in the
member's language: the template's texts from the catalogues, or its variant for that language
when there is one (`templates/mail/service/de/welcome.*`; others fall back to the shared
template). The variant is checked with the request too.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from notifier import i18n, queues
from notifier.db import Q
from notifier.errors import Problem
from notifier.mail import delivery, outbox
from notifier.mail.compose import HeaderError
from notifier.mail.render import OutgoingEmail, TemplateError, Templates
from notifier.settings import Settings

# Variables delivery provides; `data` may not override them.
RESERVED = frozenset(
    {"account", "locale", "public_url", "postal_address", "to_address", "unsubscribe_url", "preferences_url"}
)
# Stored without the account, so that erasing the account (which deletes its e-mails) does not
# take the notice of the erasure with it.
DETACHED = frozenset({"account_erased"})


class ServiceMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: str = Field(min_length=1, max_length=255, description="the account's external_id")
    template: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9_]+$")
    data: dict[str, Any] = Field(default_factory=dict)


def template_names(templates: Templates) -> list[str]:
    """The templates a producer may send: not the self-test's, nor the console's own (an
    invitation or a sign-in link sent through the API would be our phishing kit)."""
    return [
        n.removeprefix("service/")
        for n in templates.names("service")
        if n != "service/selftest" and not n.startswith("service/console_")
    ]


def check_request(templates: Templates, body: ServiceMessageIn) -> None:
    """Refuse, before any database work, an unknown template or data that uses a name delivery
    provides (422 Problem naming the field)."""
    known = template_names(templates)
    if body.template not in known:
        raise Problem(
            422,
            f"unknown template {body.template!r}",
            errors=[{"field": "template", "message": f"unknown template; known: {', '.join(known)}"}],
        )
    clashes = sorted(RESERVED & body.data.keys())
    if clashes:
        raise Problem(
            422,
            "data uses names reserved for delivery",
            errors=[{"field": f"data.{k}", "message": "reserved name"} for k in clashes],
        )


async def queue(
    conn: asyncpg.Connection,
    settings: Settings,
    templates: Templates,
    body: ServiceMessageIn,
    idempotency_key: str | None = None,
) -> tuple[int, asyncpg.Record, bool]:
    """Store the outbox row of a service e-mail (call inside a transaction, after
    `check_request`); the caller rings the service queue after commit. Validates by rendering the
    template for the account (a missing variable is a 422 naming it); 404 for an unknown account.
    Returns (e-mail id, account row, whether the e-mail is detached from the account)."""
    name = f"service/{body.template}"
    account = await conn.fetchrow(Q.service_account, body.account)
    if account is None:
        raise Problem(404, f"no account with external_id {body.account!r}")
    locale = i18n.normalise(account["locale"])
    context = {
        **body.data,
        "account": {
            "name": account["name"],
            "external_id": account["external_id"],
            "email": account["email"],
        },
        # For an e-mail that outlives its account (the erasure notice): the language to write in.
        "locale": locale,
    }
    detached = body.template in DETACHED
    account_id = None if detached else account["id"]
    probe = OutgoingEmail(0, "service", account_id, account["email"], name, None, context)
    try:
        templates.render(name, delivery.context_for(settings, probe)[0], locale)
    except TemplateError as exc:
        variable = exc.variable or "?"
        raise Problem(
            422,
            str(exc),
            errors=[{"field": f"data.{variable}", "message": f"template {body.template!r} needs it"}],
        ) from None
    try:
        email_id = await outbox.add(
            conn,
            kind="service",
            account_id=account_id,
            to_address=account["email"],
            template=name,
            context=context,
            queue=queues.SERVICE,
            idempotency_key=idempotency_key,
        )
    except HeaderError:
        raise Problem(422, "the account's e-mail address cannot be used in a message") from None
    assert email_id is not None  # no unique key applies to service mail
    return email_id, account, detached
