"""Service messages: `POST /v1/service-messages {account, template, data}` — an e-mail about a
member's account from a named template in `templates/service/`, sent at once on the service queue.

The request validates by rendering the template (StrictUndefined), so an unknown template or a
missing variable is a 422 that names it; then it stores the outbox row (honouring
`Idempotency-Key`) and rings the service queue. The worker renders again at send time.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from notifier import queues
from notifier.api.answers import ServiceMessage, ServiceMessageQueued
from notifier.api.auth import requires
from notifier.api.idempotency import idempotent
from notifier.api.problems import Problem, parse_model, read_json
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.mail import delivery, outbox
from notifier.mail.compose import HeaderError
from notifier.mail.render import OutgoingEmail, TemplateError, Templates
from notifier.resources import POOL, REDIS, SETTINGS

TEMPLATES = web.AppKey("service_templates", Templates)

# Variables delivery provides; `data` may not override them.
RESERVED = frozenset(
    {"account", "public_url", "postal_address", "to_address", "unsubscribe_url", "preferences_url"}
)
# Stored without the account, so that erasing the account (which deletes its e-mails) does not
# take the notice of the erasure with it.
DETACHED = frozenset({"account_erased"})


class ServiceMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: str = Field(min_length=1, max_length=255, description="the account's external_id")
    template: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9_]+$")
    data: dict[str, Any] = Field(default_factory=dict)


def _template_names(templates: Templates) -> list[str]:
    return [n.removeprefix("service/") for n in templates.names("service") if n != "service/selftest"]


@requires("service")
async def post_service_message(request: web.Request) -> web.StreamResponse:
    """Queue a service e-mail; 202 with its id. 404 unknown account, 422 unknown template or
    missing variable."""
    settings = request.app[SETTINGS]
    templates = request.app[TEMPLATES]
    payload = await read_json(request)
    body = parse_model(ServiceMessageIn, payload)
    known = _template_names(templates)
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
    name = f"service/{body.template}"
    async with idempotent(request, payload) as idem:
        if idem.replayed:
            return idem.response
        account = await idem.conn.fetchrow(Q.service_account, body.account)
        if account is None:
            raise Problem(404, f"no account with external_id {body.account!r}")
        context = {
            **body.data,
            "account": {
                "name": account["name"],
                "external_id": account["external_id"],
                "email": account["email"],
            },
        }
        account_id = None if body.template in DETACHED else account["id"]
        probe = OutgoingEmail(0, "service", account_id, account["email"], name, None, context)
        try:
            templates.render(name, delivery.context_for(settings, probe)[0])
        except TemplateError as exc:
            variable = exc.variable or "?"
            raise Problem(
                422,
                str(exc),
                errors=[{"field": f"data.{variable}", "message": f"template {body.template!r} needs it"}],
            ) from None
        try:
            email_id = await outbox.add(
                idem.conn,
                kind="service",
                account_id=account_id,
                to_address=account["email"],
                template=name,
                context=context,
                queue=queues.SERVICE,
                idempotency_key=idem.key,
            )
        except HeaderError:
            raise Problem(422, "the account's e-mail address cannot be used in a message") from None
        idem.respond(
            202,
            ServiceMessageQueued(id=email_id, status="queued", template=body.template),
            headers={"Location": f"/v1/service-messages/{email_id}"},
            account_id=account["id"] if account_id is not None else None,
        )
    if not idem.replayed:
        await outbox.ring(request.app[REDIS], queues.SERVICE)
    return idem.response


@requires("service")
async def get_service_message(request: web.Request) -> web.StreamResponse:
    """Where a service e-mail is: queued, sending, sent, failed or suppressed."""
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise Problem(404, "no such service message")
    email_id = int(raw)
    pool = request.app[POOL]
    row = await pool.fetchrow(Q.service_email, email_id)
    if row is None:
        raise Problem(404, "no such service message")
    return json_response(
        200,
        ServiceMessage.of_row(row, template=(row["template"] or "").removeprefix("service/")),
    )


def setup_routes(app: web.Application) -> None:
    app[TEMPLATES] = Templates()
    app.router.add_post("/v1/service-messages", post_service_message)
    app.router.add_get("/v1/service-messages/{id}", get_service_message)
