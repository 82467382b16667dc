"""The webhooks API in the OpenAPI document (`/openapi.json`): what each operation does, its
parameters and statuses; schemas come from the models of notifier.api.webhooks."""

from __future__ import annotations

from collections.abc import Sequence

from notifier.api import webhooks as api
from notifier.api.openapi import LOCATION, PAGE, Answer, Body, Operation, Param, answer, problem

ENDPOINT_ID = Param("id", "path", {"type": "string"}, "the endpoint's id", example="4")
DELIVERY_ID = Param("delivery_id", "path", {"type": "string"}, "the delivery's id", example="1031")
_TIME = "2026-12-01T09:30:00+00:00"
_IN = {
    "url": "https://crm.example.org/hooks/notifier",
    "events": ["email.bounced", "member.unsubscribed", "account.erased"],
    "description": "CRM sync",
}
ENDPOINT_EXAMPLE = {
    "id": 4,
    **_IN,
    "status": "enabled",
    "disabled_reason": None,
    "failing_since": None,
    "created_at": _TIME,
    "updated_at": _TIME,
}
DELIVERY_EXAMPLE = {
    "id": 1031,
    "event_type": "member.unsubscribed",
    "payload": {
        "type": "member.unsubscribed",
        "timestamp": _TIME,
        "data": {"account": "u-1842", "list": "newsletter", "method": "one-click"},
    },
    "status": "delivered",
    "attempts": 1,
    "next_attempt_at": _TIME,
    "last_status": 204,
    "last_error": None,
    "occurred_at": _TIME,
    "created_at": _TIME,
    "delivered_at": _TIME,
}
_INVALID = problem(
    "invalid fields: a URL that is not http(s), or whose host is or resolves to a private, loopback "
    "or link-local address (field `url`); an unknown event type (field `events.N`)"
)
_MISSING = problem("no webhook endpoint with that id")


def _op(
    method: str,
    path: str,
    summary: str,
    description: str,
    answers_: dict[int | str, Answer],
    parameters: Sequence[Param] = (ENDPOINT_ID,),
    request: Body | None = None,
) -> Operation:
    """Every webhook route is for `admin` keys, under the `webhooks` tag."""
    return Operation(
        method,
        path,
        tag="webhooks",
        summary=summary,
        answers=answers_,
        scope="admin",
        description=description,
        parameters=parameters,
        request=request,
    )


def operations() -> list[Operation]:
    """The webhook routes described."""
    one = "/v1/webhooks/{id}"
    return [
        _op(
            "POST",
            "/v1/webhooks",
            "Register an endpoint",
            "Events are POSTed to `url` signed by the Standard Webhooks specification "
            "(`webhook-id`, `webhook-timestamp`, `webhook-signature`). The answer holds the "
            "signing secret, shown only here. See docs/webhooks.md.",
            {
                201: answer(
                    api.WebhookCreated,
                    "the endpoint and its secret",
                    LOCATION,
                    example={**ENDPOINT_EXAMPLE, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
                ),
                422: _INVALID,
            },
            parameters=[],
            request=Body(api.WebhookIn, example=_IN),
        ),
        _op(
            "GET",
            "/v1/webhooks",
            "List endpoints",
            "Newest first, keyset-paginated: pass `next_cursor` as `cursor` until it is null.",
            {
                200: answer(
                    api.WebhookEndpointPage,
                    "a page",
                    example={"items": [ENDPOINT_EXAMPLE], "next_cursor": None},
                ),
                422: problem("bad limit or cursor"),
            },
            parameters=PAGE,
        ),
        _op(
            "GET",
            one,
            "An endpoint",
            "Never its secret.",
            {200: answer(api.WebhookEndpoint, "the endpoint"), 404: _MISSING},
        ),
        _op(
            "PATCH",
            one,
            "Edit an endpoint",
            "Fields left out keep their value. `status: enabled` turns an endpoint disabled after "
            "persistent failure back on; its pending deliveries follow, in order.",
            {200: answer(api.WebhookEndpoint, "the endpoint"), 404: _MISSING, 422: _INVALID},
            request=Body(api.WebhookPatch, example={"status": "enabled"}),
        ),
        _op(
            "DELETE",
            one,
            "Delete an endpoint",
            "With its deliveries, delivered or not.",
            {204: Answer("deleted"), 404: _MISSING},
        ),
        _op(
            "GET",
            f"{one}/deliveries",
            "An endpoint's deliveries",
            "Newest first, with their state, attempts and the receiver's last answer.",
            {
                200: answer(
                    api.WebhookDeliveryPage,
                    "a page",
                    example={"items": [DELIVERY_EXAMPLE], "next_cursor": None},
                ),
                404: _MISSING,
                422: problem("bad limit or cursor"),
            },
            parameters=[ENDPOINT_ID, *PAGE],
        ),
        _op(
            "POST",
            f"{one}/deliveries/{{delivery_id}}/redeliver",
            "Deliver an event again",
            "Queues the delivery again at once, whatever its state, with the same `webhook-id`.",
            {
                202: answer(api.WebhookDelivery, "queued again"),
                404: problem("no such endpoint, or no such delivery of it"),
            },
            parameters=[ENDPOINT_ID, DELIVERY_ID],
        ),
    ]
