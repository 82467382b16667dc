"""Scenarios that break delivery: workers killed or stopped, Redis lost, an SMTP server that
refuses, rejects or hangs. Each counts what arrives at the sink against the outbox."""

from __future__ import annotations

import asyncio
import random
import signal
import time

from chaos.stage import (
    Outcome,
    Stage,
    add_digest_members,
    add_members,
    build_digests,
    say,
    send_newsletter,
    stage,
    tally,
    wait_drained,
    wait_sent,
)
from notifier import newsletter
from notifier.embedded import EmbeddedRedis


async def newsletter_and_digests(s: Stage, members: int) -> tuple[int, int]:
    """The load of `kill`, `term` and `redis`: a newsletter to `members` and a digest each for a
    tenth as many, workers started; (e-mails expected, of which digests)."""
    await add_members(s.pool, members)
    await add_digest_members(s.pool, members // 10)
    s.workers.start_all()
    await send_newsletter(s)
    digests = await build_digests(s)
    return members + digests, digests


async def scenario_kill(
    admin_url: str, members: int, kills: int, sig: signal.Signals = signal.SIGKILL
) -> Outcome:
    """Workers SIGKILLed (`term`: SIGTERMed, as a deploy does) at random moments while a newsletter
    and a batch of digests send."""
    outcome = Outcome("kill" if sig == signal.SIGKILL else "term")
    async with stage(admin_url) as s:
        expected, digests = await newsletter_and_digests(s, members)
        done = 0
        while done < kills and s.sink.total < expected:
            await asyncio.sleep(random.uniform(0.3, 3.0))
            which = await s.workers.stop_one(sig)
            done += 1
            say(f"{done}/{kills}: worker {which} got {sig.name} and was restarted; {s.sink.total} received")
        await wait_drained(s, expected, limit=600)
        await tally(s, outcome)
        outcome.notes["digests"] = digests
        outcome.notes["sigterms"] = s.workers.stops
    return outcome


async def scenario_redis(admin_url: str, members: int) -> Outcome:
    """Redis FLUSHALL at a third of the send, Redis restarted empty at two thirds."""
    outcome = Outcome("redis")
    async with stage(admin_url) as s:
        expected, digests = await newsletter_and_digests(s, members)
        await wait_sent(s, expected // 3)
        await s.redis.flushall()
        s.workers.disrupted_at.append(time.monotonic())
        say(f"redis: FLUSHALL at {s.sink.total} received")
        await wait_sent(s, 2 * expected // 3)
        port, directory = s.embedded_redis.port, s.embedded_redis.directory
        s.workers.disrupted_at.append(time.monotonic())
        s.embedded_redis.stop()
        await asyncio.sleep(2)
        s.embedded_redis = EmbeddedRedis.start(directory, persistent=False, port=port)
        say(f"redis: restarted empty at {s.sink.total} received")
        await wait_drained(s, expected, limit=600)
        await tally(s, outcome)
        outcome.notes["digests"] = digests
    return outcome


async def scenario_tempfail(admin_url: str, members: int) -> Outcome:
    """Connections refused with 421 for 10 s, then every DATA answered 451 for 10 s more, then
    the server recovers: all delivered after retries."""
    outcome = Outcome("tempfail")
    async with stage(admin_url) as s:
        await add_members(s.pool, members)
        s.sink.busy_until = time.monotonic() + 10
        s.sink.tempfail_until = time.monotonic() + 20
        s.workers.start_all()
        await send_newsletter(s)
        await wait_drained(s, members, limit=600)
        await tally(s, outcome)
        outcome.notes["answered_421"] = s.sink.busy
        outcome.notes["answered_451"] = s.sink.tempfailed
        outcome.notes["deferred_events"] = await s.pool.fetchval(
            "SELECT count(*) FROM events WHERE kind = 'deferred'"
        )
    return outcome


async def scenario_reject(admin_url: str, members: int) -> Outcome:
    """550 5.1.1 for every 20th recipient: those failed and suppressed, the rest delivered once."""
    outcome = Outcome("reject")
    async with stage(admin_url) as s:
        await add_members(s.pool, members)
        refused = frozenset(f"reader{i}@example.com" for i in range(20, members + 1, 20))
        s.sink.reject = refused
        s.workers.start_all()
        newsletter_id = await send_newsletter(s)
        await wait_drained(s, members, limit=600)
        await tally(s, outcome, refused=refused)
        figures = await newsletter.figures(s.pool, newsletter_id)
        suppressed = await s.pool.fetchval("SELECT count(*) FROM suppressions")
        failed = await s.pool.fetchval("SELECT count(*) FROM emails WHERE status = 'failed'")
        got_refused = sum(s.sink.received[a] for a in refused)
        outcome.notes.update(
            refused=len(refused), figures=figures, suppressions=suppressed, failed_rows=failed
        )
        checks = {
            "failed rows == refused": failed == len(refused),
            "suppressions == refused": suppressed == len(refused),
            "figures.sent == members - refused": figures["sent"] == members - len(refused),
            "figures.bounced == refused": figures["bounced"] == len(refused),
            "refused got nothing": got_refused == 0,
        }
        outcome.notes["failed_checks"] = [k for k, v in checks.items() if not v]
    return outcome


async def scenario_hang(admin_url: str, members: int) -> Outcome:
    """A server that accepts connections and never answers for 20 s (SMTP timeout 3 s)."""
    outcome = Outcome("hang")
    async with stage(admin_url, smtp_timeout=3.0) as s:
        await add_members(s.pool, members)
        s.sink.hang = True
        s.workers.start_all()
        await send_newsletter(s)
        await asyncio.sleep(20)
        s.sink.hang = False
        s.sink.drop_connections()
        recovered = time.monotonic()
        say(f"hang: server answers again ({s.sink.hung} connections were left hanging)")
        await wait_drained(s, members, limit=600)
        await tally(s, outcome)
        outcome.notes["hung_connections"] = s.sink.hung
        outcome.notes["drained_seconds_after_recovery"] = round(time.monotonic() - recovered, 1)
        outcome.notes["workers_never_exited"] = s.workers.restarts == 0
        if s.workers.restarts:
            outcome.notes["failed_checks"] = ["a worker exited"]
    return outcome
