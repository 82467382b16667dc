"""The webhooks API (scope `admin`): endpoints that receive signed events, their deliveries and
redelivery. The domain lives in notifier.webhooks; see docs/webhooks.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from notifier import netguard, queues, webhooks
from notifier.answers import Answer, Page, Timestamp
from notifier.api.auth import api_key_of, requires
from notifier.api.pagination import decode_cursor, next_cursor, page_limit
from notifier.api.problems import Problem, path_id, read_model
from notifier.api.responses import json_response
from notifier.db import Q
from notifier.resources import POOL, REDIS, SETTINGS
from notifier.validation import check_one_line

MAX_URL = 2000

EndpointStatus = Literal["enabled", "disabled"]
DeliveryStatus = Literal["pending", "delivered", "failed"]


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold a user name or password (the signature authenticates the call)")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value


def _unique(events: list[webhooks.EventType]) -> list[webhooks.EventType]:
    return list(dict.fromkeys(events))


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL, description="where events are POSTed (http or https)")
    events: list[webhooks.EventType] = Field(min_length=1, max_length=len(webhooks.EVENT_TYPES))
    description: str = Field(default="", max_length=300)

    _url = field_validator("url")(_check_url)
    _events = field_validator("events")(_unique)
    _line = field_validator("description")(check_one_line)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=MAX_URL)
    events: list[webhooks.EventType] | None = Field(
        default=None, min_length=1, max_length=len(webhooks.EVENT_TYPES)
    )
    description: str | None = Field(default=None, max_length=300)
    status: EndpointStatus | None = Field(
        default=None, description="`enabled` turns a disabled endpoint back on (its pending events follow)"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[webhooks.EventType] | None) -> list[webhooks.EventType] | None:
        return None if value is None else _unique(value)

    @field_validator("description")
    @classmethod
    def _line(cls, value: str | None) -> str | None:
        return None if value is None else check_one_line(value)


class WebhookEndpoint(Answer):
    id: int
    url: str
    description: str
    events: list[webhooks.EventType]
    status: EndpointStatus
    disabled_reason: str | None = Field(description="why it was disabled (after persistent failure)")
    failing_since: Timestamp | None = Field(description="first failed attempt since the last success")
    created_at: Timestamp
    updated_at: Timestamp


class WebhookCreated(WebhookEndpoint):
    secret: str = Field(
        description="the signing secret (`whsec_...`), shown only in this answer; verify with any "
        "Standard Webhooks library"
    )


class WebhookEndpointPage(Page[WebhookEndpoint]):
    pass


class WebhookDelivery(Answer):
    id: int
    event_type: webhooks.EventType
    payload: dict[str, Any] = Field(description="the JSON body POSTed: `{type, timestamp, data}`")
    status: DeliveryStatus
    attempts: int
    next_attempt_at: Timestamp
    last_status: int | None = Field(description="the receiver's HTTP status at the last attempt")
    last_error: str | None
    occurred_at: Timestamp
    created_at: Timestamp
    delivered_at: Timestamp | None


class WebhookDeliveryPage(Page[WebhookDelivery]):
    pass


async def _endpoint(request: web.Request) -> Any:
    row = await request.app[POOL].fetchrow(Q.webhook_get_endpoint, path_id(request, "webhook endpoint"))
    if row is None:
        raise Problem(404, "no webhook endpoint with that id")
    return row


async def _check_destination(request: web.Request, url: str) -> None:
    try:
        await netguard.check_destination(url, allow_private=request.app[SETTINGS].webhooks_allow_private)
    except netguard.DestinationRefused as exc:
        raise Problem(
            422, "the webhook URL is not allowed", errors=[{"field": "url", "message": str(exc)}]
        ) from None


async def _page(request: web.Request, kind: str, query: str, *args: Any) -> tuple[list[Any], int, str | None]:
    """One page of `query` (its last two parameters: the cursor's id and the row count), the
    page size, and the next page's cursor."""
    limit = page_limit(request)
    before = decode_cursor(kind, request.query.get("cursor"))
    rows = await request.app[POOL].fetch(query, *args, before, limit + 1)
    return rows, limit, next_cursor(kind, rows, limit)


@requires("admin")
async def create_webhook(request: web.Request) -> web.Response:
    """A new endpoint; the answer holds its signing secret, shown this once. 422 names a bad URL
    (or one whose host resolves to a private address) and unknown event types."""
    body = await read_model(request, WebhookIn)
    await _check_destination(request, body.url)
    row, secret = await webhooks.create_endpoint(
        request.app[POOL],
        request.app[SETTINGS],
        body.url,
        body.events,
        body.description,
        str(api_key_of(request).actor),
    )
    return json_response(
        201, WebhookCreated.of_row(row, secret=secret), {"Location": f"/v1/webhooks/{row['id']}"}
    )


@requires("admin")
async def list_webhooks(request: web.Request) -> web.Response:
    """Newest first, keyset-paginated."""
    rows, limit, cursor = await _page(request, "webhooks", Q.webhook_list_endpoints)
    items = [WebhookEndpoint.of_row(r) for r in rows[:limit]]
    return json_response(200, WebhookEndpointPage(items=items, next_cursor=cursor))


@requires("admin")
async def get_webhook(request: web.Request) -> web.Response:
    """One endpoint (never its secret)."""
    return json_response(200, WebhookEndpoint.of_row(await _endpoint(request)))


@requires("admin")
async def edit_webhook(request: web.Request) -> web.Response:
    """Change the URL, events or description, or enable a disabled endpoint again."""
    row = await _endpoint(request)
    patch = await read_model(request, WebhookPatch)
    if patch.url is not None:
        await _check_destination(request, patch.url)
    updated = await request.app[POOL].fetchrow(
        Q.webhook_update_endpoint, row["id"], patch.url, patch.description, patch.events, patch.status
    )
    if updated is None:
        raise Problem(404, "no webhook endpoint with that id")
    if patch.status == "enabled":
        await request.app[REDIS].enqueue_job(queues.WEBHOOKS_JOB, _queue_name=queues.SERVICE)
    return json_response(200, WebhookEndpoint.of_row(updated))


@requires("admin")
async def delete_webhook(request: web.Request) -> web.Response:
    """Delete the endpoint and its deliveries; 204."""
    deleted = await request.app[POOL].fetchval(
        Q.webhook_delete_endpoint, path_id(request, "webhook endpoint")
    )
    if deleted is None:
        raise Problem(404, "no webhook endpoint with that id")
    return web.Response(status=204)


@requires("admin")
async def list_deliveries(request: web.Request) -> web.Response:
    """The endpoint's deliveries, newest first, keyset-paginated."""
    row = await _endpoint(request)
    rows, limit, cursor = await _page(request, "deliveries", Q.webhook_list_deliveries, row["id"])
    items = [WebhookDelivery.of_row(r) for r in rows[:limit]]
    return json_response(200, WebhookDeliveryPage(items=items, next_cursor=cursor))


@requires("admin")
async def redeliver(request: web.Request) -> web.Response:
    """Deliver one event again now, whatever its state; 202 with the delivery."""
    row = await _endpoint(request)
    delivery_id = path_id(request, "delivery", "delivery_id")
    updated = await request.app[POOL].fetchrow(Q.webhook_redeliver, row["id"], delivery_id, datetime.now(UTC))
    if updated is None:
        raise Problem(404, "no delivery with that id for this endpoint")
    await request.app[REDIS].enqueue_job(queues.WEBHOOKS_JOB, _queue_name=queues.SERVICE)
    return json_response(202, WebhookDelivery.of_row(updated))


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/webhooks", create_webhook)
    app.router.add_get("/v1/webhooks", list_webhooks)
    app.router.add_get("/v1/webhooks/{id}", get_webhook)
    app.router.add_patch("/v1/webhooks/{id}", edit_webhook)
    app.router.add_delete("/v1/webhooks/{id}", delete_webhook)
    app.router.add_get("/v1/webhooks/{id}/deliveries", list_deliveries)
    app.router.add_post("/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", redeliver)
