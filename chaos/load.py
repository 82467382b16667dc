"""Scenarios under intake load: PostgreSQL restarted during intake, the soak, and schemathesis
with many cases per operation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

from chaos.stage import ROOT, Outcome, add_members, say, send_newsletter, stage, tally, wait_drained
from notifier.db import migrate
from notifier.embedded import EmbeddedRedis, free_port


async def wait_healthy(http: aiohttp.ClientSession, base: str, limit: float = 20) -> None:
    """Until the web process at `base` answers /healthz (at most `limit` seconds)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{base}/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)


async def scenario_postgres(clients: int, seconds: float, down: float) -> Outcome:
    """Intake under load (`clients` concurrent producers posting inbox messages to a `notifier web`
    process) while an embedded PostgreSQL is stopped for `down` seconds and started again:
    answers are 2xx or 503 with Retry-After, never another 5xx, and every message that got a 2xx
    is in the database afterwards."""
    from notifier.api import auth
    from notifier.embedded import EmbeddedPostgres

    outcome = Outcome("postgres")
    tmp = Path(tempfile.mkdtemp(prefix="notifier-chaos-pg-"))
    pg = EmbeddedPostgres.start(tmp / "postgres", persistent=True)
    embedded_redis = EmbeddedRedis.start(tmp / "redis", persistent=False)
    port = free_port()
    web: subprocess.Popen[bytes] | None = None
    try:
        conn = await asyncpg.connect(pg.url())
        try:
            await migrate(conn)
            await conn.execute(
                """INSERT INTO accounts (external_id, email, name)
                   SELECT 'p-' || i, 'p' || i || '@example.com', 'P ' || i FROM generate_series(1, 50) i"""
            )
            _, key = await auth.create_key(conn, "chaos", ["messages"])
        finally:
            await conn.close()
        env = {
            **os.environ,
            "NOTIFIER_ENV": "test",
            "NOTIFIER_DATABASE_URL": pg.url(),
            "NOTIFIER_REDIS_URL": embedded_redis.url(),
            "NOTIFIER_SECRET_KEY": "chaos-secret-key-not-for-production",
            "NOTIFIER_PORT": str(port),
            "NOTIFIER_HOST": "127.0.0.1",
            "NOTIFIER_API_RATE_LIMIT": "0",
            "NOTIFIER_LOG_LEVEL": os.environ.get("CHAOS_WORKER_LOG_LEVEL", "WARNING"),
            "PYTHONPATH": str(ROOT),
        }
        log = tempfile.NamedTemporaryFile(prefix="chaos-web-", suffix=".log", delete=False)  # noqa: SIM115
        web = subprocess.Popen(  # noqa: ASYNC220  (started once, before the load)
            [sys.executable, "-m", "notifier.cli", "web"], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        base = f"http://127.0.0.1:{port}"
        statuses: dict[str, int] = {}
        accepted: list[str] = []
        no_retry_after = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await wait_healthy(http, base)
            headers = {"Authorization": f"Bearer {key}"}
            stop_at = time.monotonic() + seconds
            counter = 0

            async def producer(n: int) -> None:
                nonlocal counter, no_retry_after
                while time.monotonic() < stop_at:
                    counter += 1
                    subject = f"chaos {n}-{counter}"
                    body = {"category": "news", "subject": subject, "body": "x"}
                    try:
                        async with http.post(
                            f"{base}/v1/accounts/p-{n % 50 + 1}/messages", json=body, headers=headers
                        ) as resp:
                            await resp.read()
                            key_ = str(resp.status)
                            if resp.status == 503 and "Retry-After" not in resp.headers:
                                no_retry_after += 1
                            if 200 <= resp.status < 300:
                                accepted.append(subject)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        key_ = type(exc).__name__
                    statuses[key_] = statuses.get(key_, 0) + 1
                    if key_ == "503":
                        await asyncio.sleep(0.2)

            tasks = [asyncio.create_task(producer(n)) for n in range(clients)]
            await asyncio.sleep(seconds / 3)
            say(f"postgres: stopping the server ({len(accepted)} accepted so far)")
            pg.stop()
            await asyncio.sleep(down)
            pg = EmbeddedPostgres.start(tmp / "postgres", persistent=True)
            say(f"postgres: started again ({len(accepted)} accepted so far)")
            await asyncio.gather(*tasks)
        conn = await asyncpg.connect(pg.url())
        try:
            stored = set(
                await conn.fetchval("SELECT array_agg(subject) FROM messages WHERE subject LIKE 'chaos %'")
                or []
            )
        finally:
            await conn.close()
        outcome.messages = len(accepted)
        outcome.delivered = sum(1 for subject in accepted if subject in stored)
        outcome.lost = outcome.messages - outcome.delivered
        outcome.server_errors = sum(v for k, v in statuses.items() if k.startswith("5"))
        outcome.notes.update(
            answers=statuses,
            stored=len(stored),
            stored_without_2xx=len(stored - set(accepted)),
            down_seconds=down,
            clients=clients,
        )
        bad = [k for k in statuses if k.startswith("5") and k != "503"]
        failed = [f"answered {k}" for k in bad]
        if no_retry_after:
            failed.append(f"{no_retry_after} answers 503 without Retry-After")
        if "503" not in statuses:
            failed.append("no 503 seen: the restart did not bite")
        outcome.notes["failed_checks"] = failed
    finally:
        if web is not None:
            web.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                web.wait(10)
        pg.stop()
        embedded_redis.stop()
    return outcome


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def scenario_soak(admin_url: str, seconds: float, members: int) -> Outcome:
    """Mixed load for `seconds`: intake at 70% of the rate measured first (20 producers, members
    on immediate digests, so the digest pass runs all along), and a newsletter to `members`.
    Memory of web and workers sampled every 10 s must stay flat; no error answers; the queues
    drain afterwards."""
    from notifier.api import auth

    outcome = Outcome("soak")
    async with stage(admin_url) as s:
        await add_members(s.pool, members)
        await s.pool.execute(
            """INSERT INTO accounts (external_id, email, name, digest_frequency, next_digest_at)
               SELECT 'soak-' || i, 'soak' || i || '@example.com', 'Soak ' || i, 'immediate', NULL
               FROM generate_series(1, 500) AS i"""
        )
        _, key = await auth.create_key(s.pool, "soak", ["messages"])
        # Immediate digests coalesce 10 s instead of 120 s, so the digest pass has work every minute.
        s.workers.extra_env["NOTIFIER_IMMEDIATE_COALESCE_SECONDS"] = "10"
        port = free_port()
        env = {**s.workers.env(), "NOTIFIER_PORT": str(port), "NOTIFIER_HOST": "127.0.0.1"}
        env["NOTIFIER_API_RATE_LIMIT"] = "0"
        web = subprocess.Popen(  # noqa: ASYNC220  (started once, before the load)
            [sys.executable, "-m", "notifier.cli", "web"],
            env=env,
            cwd=ROOT,
            stdout=s.workers.log,
            stderr=s.workers.log,
        )
        s.workers.start_all()
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        statuses: dict[str, int] = {}
        counter = 0
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                await wait_healthy(http, base)

                async def post_one() -> None:
                    nonlocal counter
                    counter += 1
                    body = {"category": "news", "subject": f"soak {counter}", "body": "x"}
                    try:
                        path = f"{base}/v1/accounts/soak-{counter % 500 + 1}/messages"
                        async with http.post(path, json=body, headers=headers) as resp:
                            await resp.read()
                            key_ = str(resp.status)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        key_ = type(exc).__name__
                    statuses[key_] = statuses.get(key_, 0) + 1

                async def flat_out(until: float) -> None:
                    while time.monotonic() < until:
                        await post_one()

                until = time.monotonic() + 10
                await asyncio.gather(*(flat_out(until) for _ in range(20)))
                capacity = sum(statuses.values()) / 10
                rate = 0.7 * capacity
                say(
                    f"soak: intake capacity {capacity:.0f} requests/s; running at {rate:.0f}/s for {seconds:.0f} s"
                )
                statuses.clear()
                await send_newsletter(s)
                samples: list[tuple[float, float]] = []
                soak_end = time.monotonic() + seconds
                next_sample = time.monotonic()
                interval = 20 / rate  # 20 producers, each paced

                async def paced() -> None:
                    while time.monotonic() < soak_end:
                        t = time.monotonic()
                        await post_one()
                        await asyncio.sleep(max(0.0, interval - (time.monotonic() - t)))

                producers = [asyncio.create_task(paced()) for _ in range(20)]
                while time.monotonic() < soak_end:
                    if time.monotonic() >= next_sample:
                        web_mb = rss_mb(web.pid)
                        worker_mb = sum(rss_mb(p.pid) for p in s.workers.procs.values() if p.poll() is None)
                        samples.append((web_mb, worker_mb))
                        next_sample += 10
                    s.workers.supervise()
                    await asyncio.sleep(0.5)
                await asyncio.gather(*producers)
            drain_start = time.monotonic()
            # Drained: no digest due but unbuilt (the pass runs each minute), no e-mail pending.
            while await s.pool.fetchval("SELECT count(*) FROM accounts WHERE next_digest_at <= now()"):
                if time.monotonic() - drain_start > 300:
                    raise TimeoutError("digests still due 300 s after the soak")
                await asyncio.sleep(1)
            expected = await s.pool.fetchval("SELECT count(*) FROM emails")
            await wait_drained(s, expected, limit=300)
            outcome.notes["drain_seconds"] = round(time.monotonic() - drain_start, 1)
            await tally(s, outcome)
            outcome.notes["digest_emails"] = await s.pool.fetchval(
                "SELECT count(*) FROM emails WHERE kind = 'digest'"
            )
            outcome.notes["intake_stored"] = await s.pool.fetchval("SELECT count(*) FROM messages")
        finally:
            web.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                web.wait(10)
        third = max(1, len(samples) // 3)
        first = [sum(x) for x in samples[:third]]
        last = [sum(x) for x in samples[-third:]]
        growth = (sum(last) / len(last)) / (sum(first) / len(first)) if first and last else 0.0
        outcome.server_errors = sum(v for k, v in statuses.items() if k.startswith("5"))
        outcome.notes.update(
            capacity_per_s=round(capacity),
            rate_per_s=round(rate),
            answers=statuses,
            rss_mb_first_last=[[round(x, 1) for x in samples[0]], [round(x, 1) for x in samples[-1]]]
            if samples
            else [],
            rss_growth_last_third_vs_first=round(growth, 3),
        )
        failed = [k for k in statuses if k != "201"]
        if growth > 1.2:
            failed.append(f"memory grew {growth:.2f}x")
        outcome.notes["failed_checks"] = failed
    return outcome


def scenario_fuzz(examples: int) -> Outcome:
    """tests/test_schemathesis.py with `examples` generated requests per operation (the normal
    suite runs 10), against its own embedded Redis."""
    outcome = Outcome("fuzz")
    env = {k: v for k, v in os.environ.items() if k != "NOTIFIER_REDIS_URL"}
    env["NOTIFIER_FUZZ_EXAMPLES"] = str(examples)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_schemathesis.py"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    outcome.notes["examples_per_operation"] = examples
    outcome.notes["pytest"] = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    outcome.notes["cases"] = next(
        (line for line in result.stdout.splitlines() if line.startswith("schemathesis:")), "not reported"
    )
    if result.returncode != 0:
        outcome.notes["failed_checks"] = [result.stdout[-3000:]]
    return outcome
