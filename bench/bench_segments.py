"""Segments: freeze the audience of a newsletter to one list and a segment on an attribute
(`country = DE`): 100,000 members out of 1,000,000 at scale 1, all on the list.

Timed: `newsletter.start` (the one transaction that moves the newsletter to `sending` and
freezes its audience: the compiled segment, list membership, suppressions, one outbox row per
member), and `audience.count` (the console's and API's count before sending).

Baseline, same run: a hand-written INSERT … SELECT of the same members' rows by the same
attribute test alone (no list, consent or suppression checks) into another newsletter, the
least work any freeze of that audience has to do; once before and once after the freeze (the
machine is shared), the mean compared.
"""

from __future__ import annotations

import time

import asyncpg

from bench.bench_delivery import bench_settings, fresh_database
from bench.common import BenchEnv, Figure
from notifier import audience, newsletter, queues
from notifier.db import Q, create_pool
from notifier.mail.newsletter_render import Draft

NAME = "segments"
COUNTRIES = ["DE", "FR", "NL", "AT", "BE", "DK", "ES", "IT", "PL", "SE"]  # DE: one member in ten
GERMANY = {
    "all": [
        {"attr": "country", "op": "eq", "value": "DE"},
        {"field": "locale", "op": "in", "value": ["en", "de"]},
    ]
}
BASELINE = """
INSERT INTO emails (kind, queue, account_id, to_address, template, subject, context, newsletter_id)
SELECT 'newsletter', $2, a.id, a.email, 'newsletter', 'x', jsonb_build_object('name', a.name), $1
FROM accounts a
WHERE a.attributes -> 'country' = '"DE"'::jsonb
"""


async def bare_insert(pool: asyncpg.Pool, draft: Draft) -> tuple[float, int]:
    """Seconds for the baseline INSERT … SELECT into a new newsletter, and the rows it wrote."""
    other = await newsletter.create_draft(pool, draft, "bench")
    start = time.perf_counter()
    await pool.execute(BASELINE, other["id"], queues.BULK)
    elapsed = time.perf_counter() - start
    rows: int = await pool.fetchval("SELECT count(*) FROM emails WHERE newsletter_id = $1", other["id"])
    return elapsed, rows


async def run(env: BenchEnv) -> list[Figure]:
    n = max(10_000, int(1_000_000 * env.scale))
    async with fresh_database(env.database_url) as dsn:
        settings = bench_settings(dsn, env.redis_url, 25)
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            await pool.execute(
                """INSERT INTO accounts (external_id, email, name, attributes)
                   SELECT 'm-' || i, 'reader' || i || '@example.com', 'Reader ' || i,
                          jsonb_build_object('country', ($2::text[])[i % 10 + 1], 'score', i % 100)
                   FROM generate_series(1, $1) AS i""",
                n,
                COUNTRIES,
            )
            list_row = await pool.fetchrow(Q.insert_list, "alpha", "Alpha", "", False)
            await pool.execute(
                "INSERT INTO list_members (list_id, account_id, subscribed) SELECT $1, id, true FROM accounts",
                list_row["id"],
            )
            await pool.execute("VACUUM ANALYZE")
            target = newsletter.Target(("alpha",), GERMANY, None)
            draft = Draft(0, "News", "", "Hello {{ first_name }}", "markdown")
            row = await newsletter.create_draft(pool, draft, "bench", target)

            start = time.perf_counter()
            count = await audience.count(pool, [list_row["id"]], GERMANY)
            counted = time.perf_counter() - start

            # The machine is shared: the baseline runs once before and once after the freeze,
            # and their mean is the figure compared against.
            before, baseline_rows = await bare_insert(pool, draft)
            start = time.perf_counter()
            recipients = await newsletter.start(pool, settings, row["id"])
            frozen = time.perf_counter() - start
            after, _ = await bare_insert(pool, draft)
            bare = (before + after) / 2
        finally:
            await pool.close()
    print(
        f"segments: {recipients:,} of {n:,} frozen in {frozen:.2f} s (count {count:,} in {counted:.2f} s); "
        f"bare INSERT … SELECT of {baseline_rows:,} in {before:.2f} s before and {after:.2f} s after",
        flush=True,
    )
    assert recipients == count == baseline_rows == n // 10
    return [
        Figure(
            NAME,
            f"freeze a segment of {recipients:,} of {n:,} members (list + attribute + locale)",
            frozen,
            "s",
            bare,
            "bare INSERT … SELECT by the attribute, mean of before and after",
            "< 5 s at scale 1",
        ),
        Figure(NAME, f"count the same audience of {n:,} members", counted, "s"),
    ]
