"""A newsletter's figures over time, from its events, drawn as an inline SVG line chart on the
server (no JavaScript, no external library), with the same numbers as a table for screen readers.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from notifier.db import Q

# Series of the chart: label, the event kinds counted, colour, dash pattern (so that the lines
# differ by more than colour).
SERIES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("Delivered", ("sent",), "#1b6e3a", ""),
    ("Failed", ("failed",), "#b3261e", "6 3"),
    ("Bounced", ("bounced", "hard_bounce"), "#8a4b00", "2 3"),
    ("Unsubscribed", ("unsubscribed",), "#2649a6", "10 3 2 3"),
)
BUCKETS = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(days=1),
)
MAX_POINTS = 60

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 40


@dataclass(frozen=True)
class Timeline:
    """Cumulative counts per series at the end of each bucket."""

    bucket: timedelta
    starts: list[datetime]
    series: dict[str, list[int]]

    @property
    def empty(self) -> bool:
        return not self.starts


def bucket_for(span: timedelta) -> timedelta:
    """The smallest bucket that draws `span` in at most MAX_POINTS points."""
    for size in BUCKETS:
        if span <= size * MAX_POINTS:
            return size
    return BUCKETS[-1]


async def timeline(pool: asyncpg.Pool, newsletter_id: int, now: datetime | None = None) -> Timeline:
    """The newsletter's delivered, failed, bounced and unsubscribed counts, cumulated over time."""
    span_row = await pool.fetchrow(Q.console_newsletter_event_span, newsletter_id)
    if span_row is None or span_row["first"] is None:
        return Timeline(BUCKETS[0], [], {label: [] for label, *_ in SERIES})
    first: datetime = span_row["first"]
    last: datetime = max(span_row["last"], now or span_row["last"])
    size = bucket_for(last - first)
    origin = datetime.fromtimestamp(first.timestamp() // size.total_seconds() * size.total_seconds(), UTC)
    kinds = [kind for _, ks, _, _ in SERIES for kind in ks]
    rows = await pool.fetch(Q.console_newsletter_timeline, newsletter_id, size, origin, kinds)
    count = int((last - origin) / size) + 1
    starts = [origin + size * i for i in range(count)]
    per_kind: dict[str, list[int]] = {label: [0] * count for label, *_ in SERIES}
    label_of = {kind: label for label, ks, _, _ in SERIES for kind in ks}
    for row in rows:
        index = int((row["bucket"] - origin) / size)
        if 0 <= index < count:
            per_kind[label_of[row["kind"]]][index] += row["n"]
    cumulative = {}
    for label, values in per_kind.items():
        total, out = 0, []
        for value in values:
            total += value
            out.append(total)
        cumulative[label] = out
    return Timeline(size, starts, cumulative)


_NICE: list[int] = sorted(
    {
        n
        for k in (4, 6, 8, 10, 12, 16, 20, 30, 40, 60, 80)
        for e in range(12)
        if (n := k * int(10**e)) % 4 == 0
    }
)


def _nice_max(value: int) -> int:
    """The smallest round number >= value that splits into four whole gridline steps."""
    for candidate in _NICE:
        if value <= candidate:
            return candidate
    return value + (-value % 4)


def _label(when: datetime, bucket: timedelta) -> str:
    return when.astimezone(UTC).strftime("%d %b %H:%M" if bucket < timedelta(days=1) else "%d %b")


def svg(line: Timeline, title: str) -> str:
    """The chart as an `<svg>` element (role=img, titled and described)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _nice_max(max((v[-1] for v in line.series.values() if v), default=0))
    # One point at the start (nothing yet) and one at the end of each bucket.
    points = len(line.starts) + 1

    def x(i: int) -> float:
        return LEFT + plot_w * (i / (points - 1))

    def y(v: int) -> float:
        return TOP + plot_h * (1 - v / top)

    totals = ", ".join(f"{label} {values[-1] if values else 0}" for label, values in line.series.items())
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">{html.escape(title)}</title>',
        f'<desc id="chart-desc">Cumulative counts per {html.escape(_bucket_name(line.bucket))}: '
        f"{html.escape(totals)}.</desc>",
    ]
    for i in range(5):
        value = top * i // 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:,}</text>'
        )
    if line.starts:
        parts.append(
            f'<text x="{LEFT}" y="{HEIGHT - 12}" text-anchor="start">'
            f"{html.escape(_label(line.starts[0], line.bucket))}</text>"
            f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 12}" text-anchor="end">'
            f"{html.escape(_label(line.starts[-1] + line.bucket, line.bucket))} UTC</text>"
        )
    for label, _, colour, dash in SERIES:
        values = line.series.get(label, [])
        if not values:
            continue
        values = [0, *values]
        coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2.5"{dash_attr}>'
            f"<title>{html.escape(label)}: {values[-1]:,}</title></polyline>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _bucket_name(bucket: timedelta) -> str:
    minutes = int(bucket.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} minute{'s' if minutes > 1 else ''}"
    hours = minutes // 60
    if hours < 24:
        return f"{hours} hour{'s' if hours > 1 else ''}"
    return "day"


def legend() -> list[dict[str, str]]:
    """Label, colour and dash of each series, for the legend under the chart."""
    return [{"label": label, "colour": colour, "dash": dash} for label, _, colour, dash in SERIES]
