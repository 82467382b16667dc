"""Console page: bounces and complaints per day, and the complaint rate against the lines the
mailbox providers draw (Gmail and Yahoo: keep it under 0.3 %, aim under 0.1 %)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from notifier.console.ui import pool_of, render
from notifier.db import Q

DAYS = 30
AIM = 0.001  # 0.1 %: what the providers recommend staying under
LIMIT = 0.003  # 0.3 %: above it, Gmail and Yahoo filter or reject a bulk sender's mail


def judge(sent: int, complained: int) -> tuple[float | None, str]:
    """The complaint rate (None without sent mail) and what it means against the two lines."""
    if not sent:
        return None, "no mail sent" if not complained else "complaints without sent mail"
    rate = complained / sent
    if rate >= LIMIT:
        return rate, "over 0.3 %: providers filter or reject"
    if rate >= AIM:
        return rate, "over 0.1 %: act now"
    return rate, "under 0.1 %"


async def complaints(request: web.Request) -> web.Response:
    """GET /console/complaints: the last 30 days, newest first, with totals."""
    rows = await pool_of(request).fetch(Q.console_feedback_per_day, datetime.now(UTC), DAYS)
    days: list[dict[str, Any]] = []
    for row in rows:
        rate, verdict = judge(row["sent"], row["complained"])
        days.append({**dict(row), "rate": rate, "verdict": verdict})
    sent = sum(d["sent"] for d in days)
    complained = sum(d["complained"] for d in days)
    rate, verdict = judge(sent, complained)
    totals = {"sent": sent, "bounced": sum(d["bounced"] for d in days), "complained": complained}
    return render(request, "complaints.html", days=days, totals=totals, rate=rate, verdict=verdict, span=DAYS)
