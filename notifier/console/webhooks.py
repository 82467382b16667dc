"""Console page: webhook endpoints, their recent deliveries and failures, and why an endpoint
was disabled (notifier.webhooks disables one after a day of failures)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from notifier.console.ui import pool_of, render
from notifier.db import Q

RECENT = 10  # deliveries shown per endpoint


async def endpoints(request: web.Request) -> web.Response:
    """GET /console/webhooks: every endpoint with its figures and its latest deliveries."""
    pool = pool_of(request)
    rows = await pool.fetch(Q.webhook_console_endpoints, datetime.now(UTC) - timedelta(days=1))
    recent: dict[int, list[object]] = {}
    for delivery in await pool.fetch(Q.webhook_console_recent, RECENT):
        recent.setdefault(delivery["endpoint_id"], []).append(delivery)
    return render(request, "webhooks.html", endpoints=rows, recent=recent, per_endpoint=RECENT)
