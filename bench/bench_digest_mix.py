"""Digests with issue 14's realistic mix: the accounts of `bench digest` (20 unread messages in 4
categories each, all due) under declared categories on different frequencies: `news` on the
member's daily, `events` weekly by default, `comments` hourly for every third member, `groups`
turned off by every fourth, every fifth member with quiet hours (22:00-07:00, not holding
at the due time), and the members spread over four languages (en, de, fr, es: each digest
rendered with its own catalogue and babel's dates). Every daily, weekly and hourly window ends at the same moment, so each member
gets one digest (what exactly-once per moment promises); the pass decides per member and per
category which messages go.

Figures, each beside a same-run baseline: end to end (pass start to the last digest accepted by
Postfix's smtp-sink) against aiosmtplib sending pre-built bytes, and against the plain
single-frequency digest run measured in the same run; the pass alone at 10,000 and 100,000
accounts (times `--scale`), linear growth being a ratio of 1.

`python -m bench digest_mix [--scale 0.1]`.
"""

from __future__ import annotations

import time
from datetime import timedelta

import asyncpg

from bench import bench_digest as plain
from bench.common import BenchEnv, Figure, smtp_sink
from notifier.db import create_pool
from notifier.digest import run_pass
from notifier.settings import Settings

NAME = "digest_mix"
DUE = plain.DUE  # a Tuesday, 08:00 UTC


async def seed_mix(pool: asyncpg.Pool, accounts: int) -> int:
    """`bench digest`'s accounts and messages with the mix; how many messages the pass must send."""
    await plain.seed(pool, accounts)
    await pool.execute("TRUNCATE categories")
    await pool.execute(
        "INSERT INTO categories (key, default_frequency) VALUES "
        "('news', NULL), ('events', 'weekly'), ('comments', NULL), ('groups', NULL)"
    )
    await pool.execute(
        """
        UPDATE accounts SET
            digest_weekday = 2,
            locale = (ARRAY['en', 'de', 'fr', 'es'])[1 + id % 4],
            digest_categories =
                CASE WHEN id % 3 = 0 THEN '{"comments": {"frequency": "hourly"}}'::jsonb ELSE '{}' END
                || CASE WHEN id % 4 = 1 THEN '{"groups": {"frequency": "off"}}'::jsonb ELSE '{}' END,
            quiet_hours = CASE WHEN id % 5 = 2 THEN '{"start": "22:00", "end": "07:00", "weekends": false}'::jsonb END,
            digest_clocks = jsonb_build_object(
                'daily', jsonb_build_object('start', $1::timestamptz, 'end', $3::timestamptz),
                'weekly', jsonb_build_object('start', $2::timestamptz, 'end', $3::timestamptz))
                || CASE WHEN id % 3 = 0 THEN jsonb_build_object(
                       'hourly', jsonb_build_object('start', $4::timestamptz, 'end', $3::timestamptz))
                   ELSE '{}' END
        """,
        DUE - timedelta(days=1),
        DUE - timedelta(days=7),
        DUE,
        DUE - timedelta(hours=1),
    )
    await pool.execute("ANALYZE accounts")
    off = await pool.fetchval("SELECT count(*) FROM accounts WHERE id % 4 = 1")
    return int(accounts * plain.MESSAGES_PER_ACCOUNT - off * plain.MESSAGES_PER_ACCOUNT // 4)


async def mix_pass_only(settings: Settings, pool: asyncpg.Pool, accounts: int) -> float:
    expected = await seed_mix(pool, accounts)
    start = time.perf_counter()
    result = await run_pass(pool, None, settings, DUE)
    seconds = time.perf_counter() - start
    assert result.digests == accounts and result.messages == expected, (result, expected)
    return seconds


async def run(env: BenchEnv) -> list[Figure]:
    figures: list[Figure] = []
    n = max(100, int(10_000 * env.scale))
    async with plain.fresh_database(env.database_url) as dsn:
        pool = await create_pool(dsn, min_size=2, max_size=8)
        try:
            with smtp_sink() as port:
                settings = plain.bench_settings(dsn, env.redis_url, port)
                await plain.seed(pool, 10)
                await run_pass(pool, None, settings, DUE)
                message = await plain.sample_message(pool, settings)
                bases: list[float] = []
                loop_cpus: list[float] = []
                mix_runs: list[plain.EndToEnd] = []
                plain_runs: list[plain.EndToEnd] = []
                ceilings: list[tuple[float, float]] = []
                for _ in range(plain.ROUNDS):
                    rate, loop_cpu = await plain.plain_loop(port, message, n)
                    bases.append(rate)
                    loop_cpus.append(loop_cpu)
                    await plain.seed(pool, n)
                    await pool.execute("TRUNCATE categories")
                    plain_runs.append(await plain.end_to_end(settings, pool, n))
                    await seed_mix(pool, n)
                    mix_runs.append(await plain.end_to_end(settings, pool, n))
                    ceilings.append(await plain.render_send_ceiling(settings, pool, n))
                rate, loop_cpu = await plain.plain_loop(port, message, n)
                bases.append(rate)
                loop_cpus.append(loop_cpu)
                mixes = [r.total for r in mix_runs]
                plains = [r.total for r in plain_runs]
                mix_passes = [r.pass_seconds for r in mix_runs]
                plain_passes = [r.pass_seconds for r in plain_runs]
                base = max(bases)
                env.notes.append(
                    "digest_mix: baselines "
                    + ", ".join(f"{b:,.0f}" for b in bases)
                    + " msg/s; mix end to end "
                    + ", ".join(f"{t:.1f}" for t in mixes)
                    + " s; plain "
                    + ", ".join(f"{t:.1f}" for t in plains)
                    + " s"
                )
                base_name = f"aiosmtplib pre-built bytes, {plain.PLAIN_CONNECTIONS} connections, no DB"
                figures.append(
                    Figure(
                        NAME,
                        f"{n:,} accounts, the mix: pass start to last digest accepted, digests/s",
                        n / min(mixes),
                        "msg/s",
                        base,
                        base_name,
                        ">= 0.5",
                    )
                )
                figures.append(
                    Figure(
                        NAME,
                        f"{n:,} accounts, the mix against plain daily digests (same run), digests/s",
                        n / min(mixes),
                        "msg/s",
                        n / min(plains),
                        "plain daily digests, end to end",
                    )
                )
                figures.append(
                    Figure(
                        NAME,
                        f"{n:,} accounts: the mix's pass alone while delivery runs, s (plain: {min(plain_passes):.2f} s)",
                        min(mix_passes),
                        "s",
                    )
                )
                figures += plain.cpu_figures(NAME, f"{n:,} accounts, the mix", mix_runs, n, min(loop_cpus))
                figures += plain.cpu_figures(
                    NAME, f"{n:,} accounts, plain daily", plain_runs, n, min(loop_cpus)
                )
                figures += plain.ceiling_figures(
                    NAME, f"{n:,} digests of the mix", ceilings, base, base_name, min(loop_cpus)
                )
            sizes = [max(100, int(s * env.scale)) for s in (10_000, 100_000)]
            figures += await plain.pass_rates(
                NAME, "the mix's pass alone", sizes, lambda size: mix_pass_only(settings, pool, size)
            )
        finally:
            await pool.close()
    return figures
