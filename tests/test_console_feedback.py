"""Console: bounces and complaints per day against the 0.1 % and 0.3 % lines; webhook endpoints
with their recent deliveries, failures and why one was disabled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from notifier.console.complaints import judge
from tests.factory import Factory
from tests.test_console import Client, settings, sign_in

__all__ = ["settings"]  # the fixture (plain http, so the session cookie comes back)


def test_the_rate_is_judged_against_both_lines() -> None:
    assert judge(10_000, 5) == (0.0005, "under 0.1 %")
    assert judge(10_000, 10)[1] == "over 0.1 %: act now"
    assert judge(10_000, 30)[1] == "over 0.3 %: providers filter or reject"
    assert judge(0, 0) == (None, "no mail sent")


async def test_complaints_page_counts_per_day(client: Client, pool: asyncpg.Pool, factory: Factory) -> None:
    member = await factory.account()
    yesterday = datetime.now(UTC) - timedelta(days=1)
    for _ in range(250):
        await factory.event("sent", account_id=member["id"], created_at=yesterday)
    await factory.event("complained", account_id=member["id"], created_at=yesterday)
    await factory.event("bounced", account_id=member["id"], created_at=yesterday)
    await factory.event("sent", account_id=member["id"])
    await sign_in(client, pool, ["admin"])
    resp = await client.get("/console/complaints")
    text = await resp.text()
    assert resp.status == 200
    day = yesterday.date().isoformat()
    row = text[text.index(f'<th scope="row">{day}</th>') :].split("</tr>")[0]
    assert [cell.split(">")[-1] for cell in row.split("</td>")[:-1]] == [
        "250", "1", "1", "0.400 %", "over 0.3 %: providers filter or reject"
    ]  # fmt: skip
    assert "Complaint rate" in text and "0.398 %" in text  # 1 in 251 over the 30 days


async def test_webhooks_page_shows_failures_and_a_disabled_endpoint(
    client: Client, pool: asyncpg.Pool, factory: Factory
) -> None:
    endpoint = await pool.fetchval(
        "INSERT INTO webhook_endpoints (url, events, secret, created_by, status, disabled_reason) "
        "VALUES ('https://crm.example.org/hook', '{email.sent}', '\\x00', 'test', 'disabled', "
        "'no successful delivery since 2026-12-01T09:00:00+00:00; last: HTTP 503') RETURNING id"
    )
    for n, (status, last) in enumerate([("delivered", 204), ("pending", 503), ("failed", 503)]):
        await pool.execute(
            "INSERT INTO webhook_deliveries (endpoint_id, source, source_id, event_type, payload, occurred_at, "
            "status, attempts, last_status, delivered_at) VALUES ($1, 'event', $2, 'email.sent', '{}', now(), "
            "$3, 2, $4, CASE WHEN $3 = 'delivered' THEN now() END)",
            endpoint,
            n,
            status,
            last,
        )
    await sign_in(client, pool, ["admin"])
    text = await (await client.get("/console/webhooks")).text()
    assert "https://crm.example.org/hook" in text
    assert "<strong>Disabled:</strong> no successful delivery since 2026-12-01" in text
    assert "<dt>Failed for good</dt><dd>1</dd>" in text and "<dt>Retrying</dt><dd>1</dd>" in text
    assert "<dt>Delivered, last 24 hours</dt><dd>1</dd>" in text
    assert text.count("HTTP 503") >= 2
