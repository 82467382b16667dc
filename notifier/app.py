"""The aiohttp application: `create_app(settings)` builds it with its resources and routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_log import AccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from notifier import lists
from notifier.access_log import ACCESS
from notifier.answers import Liveness, Readiness
from notifier.api import (
    auth,
    inbound,
    mailbox,
    openapi,
    openapi_categories,
    openapi_lists,
    openapi_newsletters,
    openapi_routes,
    openapi_webhooks,
    provider_webhooks,
)
from notifier.api.problems import MAX_BODY, Handler, problem_middleware
from notifier.api.problems import redact_path as redact_path  # re-exported: the access logger's helper
from notifier.api.responses import json_response
from notifier.resources import POOL, REDIS, SETTINGS, brand_ctx, open_pool, open_redis, render_pool_ctx
from notifier.settings import Settings

log = logging.getLogger("notifier.web")

REQUESTS = Counter("notifier_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("notifier_http_request_seconds", "HTTP request latency", ["route"])


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log without secrets: tokens in paths are masked, query strings and headers omitted."""

    @property
    def enabled(self) -> bool:
        # aiohttp skips log() (and its timing) on connections opened while this is False: the
        # line is at INFO, so below that level there is nothing to format per request.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # One preformatted line into a buffer written about every 0.1 s (notifier.access_log).
        ACCESS.write(
            f'{request.remote or "-"} "{request.method} {redact_path(request.path_qs)}" '
            f"{response.status} {response.body_length} {time * 1000:.1f}ms"
        )


assert issubclass(AccessLogger, AbstractAccessLogger)


# The labelled children, looked up once per (method, route, status) and route rather than per
# request (`labels()` builds a tuple and takes a lock each time). Bounded: odd methods sent by
# clients are counted the slow way once the cache is full.
_COUNTERS: dict[tuple[str, str, int], Counter] = {}
_HISTOGRAMS: dict[str, Histogram] = {}
_MAX_CACHED = 1000


def _count(method: str, route: str, status: int, seconds: float) -> None:
    counter = _COUNTERS.get((method, route, status))
    if counter is None:
        counter = REQUESTS.labels(method, route, str(status))
        if len(_COUNTERS) < _MAX_CACHED:
            _COUNTERS[method, route, status] = counter
    counter.inc()
    histogram = _HISTOGRAMS.get(route)
    if histogram is None:
        histogram = LATENCY.labels(route)
        if len(_HISTOGRAMS) < _MAX_CACHED:
            _HISTOGRAMS[route] = histogram
    histogram.observe(seconds)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    loop = asyncio.get_running_loop()
    start = loop.time()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        _count(request.method, route, status, loop.time() - start)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response(200, Liveness(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    """Readiness: PostgreSQL and Redis both answer within two seconds."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            await request.app[POOL].fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        async with asyncio.timeout(2):
            await request.app[REDIS].ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return json_response(
        200 if ready else 503, Readiness(status="ready" if ready else "unavailable", checks=checks)
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of this process."""
    resp = web.Response(body=generate_latest())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[POOL] = await open_pool(settings)
    try:
        await lists.follow_setting(app[POOL], settings.newsletter_double_opt_in)
        app[REDIS] = await open_redis(settings)
        try:
            yield
        finally:
            await app[REDIS].aclose()
    finally:
        await app[POOL].close()


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.content_type == "text/html":
        response.headers.setdefault("X-Frame-Options", "DENY")


def create_app(settings: Settings) -> web.Application:
    """Build the web application. Resources open on start-up and close on clean-up."""
    settings.require_secret()
    settings.check_capture()
    settings.check_console_keys()
    app = web.Application(
        middlewares=[metrics_middleware, problem_middleware, auth.auth_middleware],
        client_max_size=max(settings.max_body_bytes, settings.max_batch_body_bytes),
    )
    app[SETTINGS] = settings
    app[MAX_BODY] = settings.max_body_bytes
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(brand_ctx)
    app.cleanup_ctx.append(render_pool_ctx)
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    auth.setup(app, settings)
    # Each feature module adds its routes here. The inbox's first: aiohttp tries the resources
    # under one path prefix (`/v1/accounts`) in the order they were added, and single-message
    # intake is the busiest of them (tried sixth it took 5.6 µs to resolve, first 2.3 µs).
    from notifier.api import messages

    messages.setup_routes(app)
    from notifier.console import app as console_app

    console_app.setup(app)
    from notifier.api import service

    service.setup_routes(app)
    from notifier.api import preferences

    preferences.setup_routes(app)
    from notifier.api import accounts

    accounts.setup_routes(app)
    from notifier.api import newsletters
    from notifier.pages import clicks, confirm, preference_centre, unsubscribe

    newsletters.setup_routes(app)
    clicks.setup_routes(app)
    from notifier.api import categories, lists, webhooks

    lists.setup_routes(app)

    webhooks.setup_routes(app)
    categories.setup_routes(app)
    unsubscribe.setup_routes(app)
    preference_centre.setup_routes(app)
    # The member's inbox: the member API and its stream, the token route, the hosted page and the
    # component's script.
    from notifier.member import api as member_api
    from notifier.pages import inbox as inbox_page

    member_api.setup(app)
    inbox_page.setup_routes(app)
    confirm.setup_routes(app)
    inbound.setup_routes(app)
    provider_webhooks.setup_routes(app, settings)
    if settings.capture_mail:
        mailbox.setup_routes(app)
    # `/openapi.json` and `/docs`: the public routes above, described by these operations.
    openapi.setup_routes(
        app,
        [
            *openapi_routes.operations(),
            *openapi_newsletters.operations(),
            *openapi_lists.operations(),
            *openapi_webhooks.operations(),
            *openapi_categories.operations(),
        ],
    )
    return app
