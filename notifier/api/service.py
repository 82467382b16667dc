"""`POST /v1/service-messages` and `GET /v1/service-messages/{id}` (scope `service`): thin over
`notifier.service`."""

from __future__ import annotations

from aiohttp import web

from notifier import queues, service
from notifier.answers import ServiceMessage, ServiceMessageQueued
from notifier.api.auth import requires
from notifier.api.idempotency import idempotent
from notifier.api.problems import Problem, parse_model, path_id, read_json
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.mail import outbox
from notifier.mail.render import Templates
from notifier.resources import POOL, REDIS, SETTINGS

TEMPLATES = web.AppKey("service_templates", Templates)


@requires("service")
async def post_service_message(request: web.Request) -> web.StreamResponse:
    """Queue a service e-mail; 202 with its id. 404 unknown account, 422 unknown template or
    missing variable."""
    templates = request.app[TEMPLATES]
    payload = await read_json(request)
    body = parse_model(service.ServiceMessageIn, payload)
    service.check_request(templates, body)
    async with idempotent(request, payload) as idem:
        if idem.replayed:
            return idem.response
        email_id, account, detached = await service.queue(
            idem.conn, request.app[SETTINGS], templates, body, idem.key
        )
        idem.respond(
            202,
            ServiceMessageQueued(id=email_id, status="queued", template=body.template),
            headers={"Location": f"/v1/service-messages/{email_id}"},
            account_id=None if detached else account["id"],
        )
    if not idem.replayed:
        await outbox.ring(request.app[REDIS], queues.SERVICE)
    return idem.response


@requires("service")
async def get_service_message(request: web.Request) -> web.StreamResponse:
    """Where a service e-mail is: queued, sending, sent, failed or suppressed."""
    email_id = path_id(request, "service message")
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
