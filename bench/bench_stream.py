"""Connected members and the member API: `python -m bench stream [--scale S]`.

1. Event streams. One `notifier web` process (uvloop, as in production) holds STREAMS member
   event streams (`GET /member/v1/stream`, one member each), opened over loopback and read by
   READERS processes of their own (2). Messages are then posted from this process through the
   API (`POST /v1/accounts/{id}/messages`) at RATE a second for SECONDS, each to a random connected member; the figure is the time from
   sending the POST to the `message` event arriving on that member's stream (p50, p99), and the
   web process's resident memory per stream (RSS after opening them all, less RSS before, / N).
   Goal: 10,000 streams, < 50 KB a stream, p99 < 250 ms at 500 messages/s. Nothing is counted
   until every stream got its first `counts` event.
2. `GET /member/v1/messages` (first page, 20 items) by wrk at 64 connections (a random member's
   token each request) over a messages table of ROWS rows spread over 10,000 members, beside, in
   the same run: the same page from a bare aiohttp handler that runs only the keyset query
   (bench_large's: no auth, rows as JSON) over HTTP, rounds alternating, best of two, with both
   servers' CPU per request; and that query straight from asyncpg (64 tasks over a pool of the
   web process's size, no HTTP). Goal: p99 < 20 ms on 5 million rows (`--scale 10`).

BENCH_STREAM_RATE sets RATE (default 500). `--scale` multiplies STREAMS, ROWS and the durations (0.1 for a quick look; CI runs none of this).
Everything is loopback, bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.bench_intake import DONE_LUA, _measure, _server, _wrk
from bench.bench_large import BARE_PAGE, GET_LUA
from bench.common import BenchEnv, Figure, note_wrk_errors, web_env
from notifier.db import create_pool, scratch_database
from notifier.embedded import free_port
from notifier.member import tokens

STREAMS = 10_000
# Messages per second; BENCH_STREAM_RATE=100 measures below the point where intake saturates.
RATE = float(os.environ.get("BENCH_STREAM_RATE", "500"))
SECONDS = 20.0
ROWS = 500_000
LIST_ACCOUNTS = 10_000
LIST_CONNECTIONS = 64
LIST_SECONDS = 10.0
POOL_SIZE = 10
PREPARE_SLICE = 500_000  # messages inserted per statement while preparing
PREPARE_TIMEOUT = 600.0
OPEN_CONCURRENCY = 200
OPEN_TIMEOUT = 180.0  # seconds to open every stream, at most
# The streams are read by processes of their own, apart from the poster: one Python process
# reading 10,000 streams and posting 500 messages/s was itself the bottleneck.
READERS = int(os.environ.get("BENCH_STREAM_READERS", "2"))
SETTLE = 5.0  # seconds after the last post before arrivals are collected
# The posts come from processes of their own too: one process reached only ~200 POSTs a second.
POSTERS = int(os.environ.get("BENCH_STREAM_POSTERS", "2"))
POST_CONNECTIONS = 32  # per poster process
# BENCH_STREAM_PROFILE=FILE: py-spy samples the web process while the posts run (collapsed stacks).
PROFILE = os.environ.get("BENCH_STREAM_PROFILE", "")
# BENCH_STREAM_LISTING=0 measures only the streams, BENCH_STREAM_STREAMS=0 only the listing.
LISTING = os.environ.get("BENCH_STREAM_LISTING", "1") != "0"
STREAMING = os.environ.get("BENCH_STREAM_STREAMS", "1") != "0"
# BENCH_STREAM_WEB_TREE=DIR runs the web process from another checkout's source (`git archive` of
# an older commit, say), to measure its code beside this one with the same bench.
WEB_TREE = os.environ.get("BENCH_STREAM_WEB_TREE", "")
# BENCH_STREAM_TRACE=FILE writes every message's send time, answer and event latency (CSV).
TRACE = os.environ.get("BENCH_STREAM_TRACE", "")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _schedstat(pid: int) -> tuple[float, float]:
    """Seconds a process has run on a CPU and waited for one (runnable, other processes running)
    so far (Linux /proc/PID/schedstat): the wait tells a loaded machine from a busy process."""
    ran, waited, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(ran) / 1e9, int(waited) / 1e9


def _trace(
    path: Path, t0: float, sent: dict[str, float], answered: dict[str, float], arrived: dict[str, float]
) -> None:
    """BENCH_STREAM_TRACE: one line a message, in the order sent: seconds since the schedule began
    when it was sent, then milliseconds from sending to the POST's answer and to the event (empty
    when it did not come)."""

    def ms(at: dict[str, float], subject: str) -> str:
        return f"{(at[subject] - sent[subject]) * 1000:.1f}" if subject in at else ""

    lines = [f"# t0 {t0:.4f} (CLOCK_MONOTONIC)", "sent_s,answered_ms,arrived_ms"]
    for subject in sorted(sent, key=sent.__getitem__):
        lines.append(f"{sent[subject] - t0:.4f},{ms(answered, subject)},{ms(arrived, subject)}")
    path.write_text("\n".join(lines) + "\n")


async def _full_collections(base: str) -> int:
    """How many generation-2 (full) garbage collections the web process has run, from its
    /metrics (prometheus_client's GC collector): each pauses every stream of the process."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith('python_gc_collections_total{generation="2"}'):
            return round(float(line.split()[-1]))
    raise RuntimeError("no python_gc_collections_total in /metrics")


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _prepare(pool: asyncpg.Pool, streams: int, rows: int) -> str:
    """Accounts `s-1..s-N` (streams) and `l-1..l-M` with ROWS messages (listing); an API key."""
    from notifier.api import auth

    await pool.execute(
        "INSERT INTO accounts (external_id, email, name, digest_frequency, created_at) "
        "SELECT 's-' || i, 's' || i || '@example.com', 'Member ' || i, 'off', now() - interval '1 hour' "
        "FROM generate_series(1, $1) AS i",
        streams,
    )
    await pool.execute(
        "INSERT INTO accounts (external_id, email, name, digest_frequency, created_at) "
        "SELECT 'l-' || i, 'l' || i || '@example.com', 'Lister ' || i, 'off', now() - interval '1 hour' "
        "FROM generate_series(1, $1) AS i",
        LIST_ACCOUNTS,
    )
    for start in range(1, rows + 1, PREPARE_SLICE):  # in slices: each statement stays bounded
        await pool.execute(
            "INSERT INTO messages (account_id, category, subject, body, url, created_at, read_at) "
            "SELECT a.id, (ARRAY['news', 'events', 'account'])[1 + g % 3], 'Subject ' || g, "
            "       'A body of a typical length for an inbox message, about one line long.', "
            "       'https://example.org/m/' || g, now() - make_interval(secs => $1 - g), "
            "       CASE WHEN g % 4 = 0 THEN now() END "
            "FROM generate_series($3::int, $4::int) AS g "
            "JOIN accounts a ON a.external_id = 'l-' || (1 + g % $2)",
            rows,
            LIST_ACCOUNTS,
            start,
            min(rows, start + PREPARE_SLICE - 1),
            timeout=PREPARE_TIMEOUT,
        )
    await pool.execute("ANALYZE", timeout=PREPARE_TIMEOUT)
    _, key = await auth.create_key(pool, "bench", ["messages", "accounts"])
    return key


async def _open_stream(
    session: aiohttp.ClientSession, base: str, token: str, ready: asyncio.Event, arrived: dict[str, float]
) -> None:
    async with session.get(f"{base}/member/v1/stream", params={"token": token}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"stream answered {resp.status}")
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "counts":
                    ready.set()
                elif event == "message":
                    subject = json.loads(line[6:])["subject"]
                    arrived[subject] = time.monotonic()  # CLOCK_MONOTONIC: the same in every process


async def _hold_streams(base: str, member_tokens: list[str], pipe: Connection) -> None:
    """A reader process: open the streams, say "ready", record arrivals until told to stop, send
    them back."""
    arrived: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY // READERS)
        tasks: list[asyncio.Task[None]] = []

        async def opened(token: str) -> None:
            ready = asyncio.Event()
            async with gate:
                tasks.append(asyncio.create_task(_open_stream(session, base, token, ready, arrived)))
                await ready.wait()

        async with asyncio.timeout(OPEN_TIMEOUT):
            await asyncio.gather(*(opened(t) for t in member_tokens))
        pipe.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "stop"
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send(arrived)


def _reader_main(base: str, member_tokens: list[str], pipe: Connection) -> None:
    _raise_fd_limit()
    asyncio.run(_hold_streams(base, member_tokens, pipe))


async def _post_schedule(
    base: str, key: str, n: int, seqs: range, t0: float, run: str
) -> tuple[dict[str, float], dict[str, float], int, float, float]:
    """A poster process: message `seq` is sent at t0 + seq / RATE, to a random connected member,
    one message per POST; its send times and answer times (CLOCK_MONOTONIC), its errors, when it
    finished and the CPU seconds it spent."""
    cpu = time.process_time()
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    errors = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POST_CONNECTIONS)) as poster:

        async def post(seq: int) -> None:
            nonlocal errors
            subject = f"bench {run} {seq}"  # the run's own: another run's events are not counted
            body = {"category": "news", "subject": subject, "body": "A message for a connected member."}
            account = f"s-{random.randint(1, n)}"
            sent[subject] = time.monotonic()
            try:
                async with poster.post(
                    f"{base}/v1/accounts/{account}/messages", json=body, headers=headers
                ) as r:
                    await r.read()
                    answered[subject] = time.monotonic()
                    if r.status != 201:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1

        pending: set[asyncio.Task[None]] = set()
        for seq in seqs:
            delay = t0 + seq / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(post(seq))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=30)
    return sent, answered, errors, time.monotonic(), time.process_time() - cpu


def _profile(pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """With BENCH_STREAM_PROFILE=FILE, py-spy samples the web process while the posts run and
    writes collapsed stacks to FILE (the sampling costs the web process: such a run's figures are
    not the ones to quote)."""
    if not PROFILE:
        return None
    argv = [
        str(Path(sys.executable).parent / "py-spy"),
        "record",
        "-p",
        str(pid),
        "-d",
        str(round(seconds) + 2),
        "-r",
        "50",
        "--nonblocking",
    ]
    return subprocess.Popen(
        [*argv, "-o", PROFILE, "-f", "raw"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )


def _poster_main(base: str, key: str, n: int, seqs: range, run: str, pipe: Connection) -> None:
    pipe.send("ready")
    t0 = pipe.recv()
    pipe.send(asyncio.run(_post_schedule(base, key, n, seqs, t0, run)))


async def _streams(env: BenchEnv, base: str, pid: int, secret: str, key: str) -> list[Figure]:
    n = max(10, round(STREAMS * env.scale))
    seconds = max(5.0, SECONDS * min(env.scale, 1.0))
    now = int(time.time())
    member_tokens = [tokens.mint(secret, f"s-{i}", now + 3600, issued=now) for i in range(1, n + 1)]
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    rss_before = _rss_kib(pid)
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    pipes, readers = [], []
    watched = {"web": pid}  # processes whose CPU is measured while posting
    started = time.monotonic()
    for r in range(READERS):
        mine, theirs = context.Pipe()
        reader = context.Process(
            target=_reader_main, args=(base, member_tokens[r::READERS], theirs), daemon=True
        )
        reader.start()
        assert reader.pid is not None  # started
        watched[f"reader {r + 1}"] = reader.pid
        pipes.append(mine)
        readers.append(reader)
    try:
        for pipe in pipes:
            if not await loop.run_in_executor(None, pipe.poll, OPEN_TIMEOUT + 30):
                raise RuntimeError("a reader did not open its streams in time")
            pipe.recv()
        open_seconds = time.monotonic() - started
        await asyncio.sleep(1)
        rss_after = _rss_kib(pid)

        total = round(RATE * seconds)
        run = secrets.token_hex(4)
        poster_pipes = []
        for p in range(POSTERS):
            mine, theirs = context.Pipe()
            poster = context.Process(
                target=_poster_main,
                args=(base, key, n, range(p, total, POSTERS), run, theirs),
                daemon=True,
            )
            poster.start()
            poster_pipes.append(mine)
            readers.append(poster)
        for pipe in poster_pipes:
            if not await loop.run_in_executor(None, pipe.poll, 60):
                raise RuntimeError("a poster did not start")
            pipe.recv()  # "ready"
        t0 = time.monotonic() + 0.5  # every poster's schedule starts here (CLOCK_MONOTONIC)
        for pipe in poster_pipes:
            pipe.send(t0)
        profile = _profile(pid, seconds)
        full_before = await _full_collections(base)
        sched_before, sched_since = {who: _schedstat(p) for who, p in watched.items()}, time.monotonic()
        post_errors, last_done, poster_cpu = 0, t0, []
        for pipe in poster_pipes:
            if not await loop.run_in_executor(None, pipe.poll, seconds + 120):
                raise RuntimeError("a poster did not finish in time")
            mine_sent, mine_answered, errors, done, cpu = pipe.recv()
            poster_cpu.append(cpu)
            sent.update(mine_sent)
            answered.update(mine_answered)
            post_errors += errors
            last_done = max(last_done, done)
        achieved = total / (max(sent.values()) - t0 + 1 / RATE)
        window = last_done - sched_since
        sched = {who: _schedstat(p) for who, p in watched.items()}
        busy = {who: (sched[who][0] - sched_before[who][0]) / window for who in watched}
        busy |= {f"poster {i + 1}": cpu / (last_done - t0) for i, cpu in enumerate(poster_cpu)}
        web_waited = (sched["web"][1] - sched_before["web"][1]) / window
        full_collections = await _full_collections(base) - full_before
        rss_posted = _rss_kib(pid)
        if profile is not None:
            profile.wait(30)
        await asyncio.sleep(SETTLE)  # the last events on their way
        arrived: dict[str, float] = {}
        for pipe in pipes:
            pipe.send("stop")
        for pipe in pipes:
            if await loop.run_in_executor(None, pipe.poll, 60):
                arrived.update(pipe.recv())
    finally:
        for reader in readers:
            reader.join(10)
            if reader.is_alive():
                reader.kill()

    if TRACE:
        _trace(Path(TRACE), t0, sent, answered, arrived)
    latencies = [(arrived[s] - sent[s]) * 1000 for s in sent if s in arrived]
    lost = len(sent) - len(latencies)
    per_stream = (rss_after - rss_before) / n
    env.notes.append(
        f"stream: {n} streams held by {READERS} reader processes, opened in {open_seconds:.1f} s; "
        f"{len(sent)} messages posted at {achieved:.0f}/s (asked {RATE:.0f}/s), {post_errors} post errors, "
        f"{lost} events not arrived {SETTLE:.0f} s after the last post; "
        f"web RSS {rss_before / 1024:.0f} MiB before, {rss_after / 1024:.0f} MiB with the streams, "
        f"{rss_posted / 1024:.0f} MiB after the posts; "
        "CPU while posting (share of one core): "
        + ", ".join(f"{who} {share:.0%}" for who, share in busy.items())
        + f"; the web process waited for a CPU {web_waited:.0%} of that time and ran {full_collections} "
        "generation-2 garbage collections; load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    if not latencies:
        raise RuntimeError("no event arrived")
    return [
        Figure(
            "stream",
            f"post-to-event p50 ({n} streams, {RATE:.0f} msg/s)",
            _percentile(latencies, 50),
            "ms",
            goal="-",
        ),
        Figure(
            "stream",
            f"post-to-event p99 ({n} streams, {RATE:.0f} msg/s)",
            _percentile(latencies, 99),
            "ms",
            goal="< 250 ms",
        ),
        Figure("stream", "web process memory per stream", per_stream, "KiB", goal="< 50 KB"),
    ]


async def _listing(env: BenchEnv, base: str, pid: int, dsn: str, secret: str, rows: int) -> list[Figure]:
    """The member's first page (`limit=20`) under wrk at LIST_CONNECTIONS, beside the same page
    served by a bare aiohttp handler that runs only the keyset query (bench_large's, no auth,
    rows as JSON) over HTTP, rounds alternating, best of two; and beside that query run straight
    from asyncpg (no HTTP). CPU per request of each server from /proc."""
    seconds = max(3.0, LIST_SECONDS * min(env.scale, 1.0))
    now = int(time.time())
    work = env.workdir / "stream"
    member_tokens = ", ".join(
        f'"{tokens.mint(secret, f"l-{i}", now + 3600, issued=now)}"' for i in range(1, LIST_ACCOUNTS + 1)
    )
    scripts = {"notifier": work / "list.lua", "bare": work / "list-bare.lua"}
    scripts["notifier"].write_text(
        GET_LUA % {"tokens": member_tokens, "path": "/member/v1/messages?limit=20"} + DONE_LUA
    )
    pool = await create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        ids = [r["id"] for r in await pool.fetch("SELECT id FROM accounts WHERE external_id LIKE 'l-%'")]
    finally:
        await pool.close()
    # The bare handler takes the account's id in the path (bench_large's BARE_LUA numbers 1..N).
    scripts["bare"].write_text(
        "math.randomseed(os.time())\n"
        f"local ids = {{{', '.join(map(str, ids))}}}\n"
        "request = function()\n"
        '  return wrk.format("GET", "/bare/messages/" .. ids[math.random(1, #ids)])\n'
        "end\n" + DONE_LUA
    )
    port = free_port()
    bare_argv = [sys.executable, "-m", "bench.bench_large", "bare", str(port), dsn]
    results: dict[str, list[dict[str, Any]]] = {"notifier": [], "bare": []}
    with _server(bare_argv, port, {**os.environ, "PYTHONUNBUFFERED": "1"}, work / "bare.log") as bare_pid:
        servers = {"notifier": (pid, int(base.rsplit(":", 1)[1])), "bare": (bare_pid, port)}
        for who, (_, p) in servers.items():
            _wrk(p, scripts[who], LIST_CONNECTIONS, 1)
        for _ in range(2):
            for who, (server_pid, p) in servers.items():
                results[who].append(_measure(server_pid, p, scripts[who], LIST_CONNECTIONS, seconds / 2))

    bare: list[float] = []
    pool = await create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:

        async def keyset(until: float) -> None:
            while time.perf_counter() < until:
                t = time.perf_counter()
                await pool.fetch(BARE_PAGE, random.choice(ids))
                bare.append((time.perf_counter() - t) * 1000)

        await asyncio.gather(*(keyset(time.perf_counter() + 1) for _ in range(LIST_CONNECTIONS)))
        bare.clear()
        until = time.perf_counter() + seconds
        await asyncio.gather(*(keyset(until) for _ in range(LIST_CONNECTIONS)))
    finally:
        await pool.close()
    note_wrk_errors(env, "stream listing", results)
    best = {who: min(rs, key=lambda r: r["p99_us"]) for who, rs in results.items()}
    cpu = {who: sum(r["cpu_us"] for r in rs) / len(rs) for who, rs in results.items()}
    env.notes.append(
        f"stream: GET /member/v1/messages over {rows:,} rows, wrk at {LIST_CONNECTIONS} connections, "
        f"{seconds / 2:.1f} s rounds: notifier {best['notifier']['rps']:,.0f} req/s, p50 "
        f"{best['notifier']['p50_us'] / 1000:.1f} ms, {cpu['notifier']:.0f} µs CPU a request; bare aiohttp "
        f"keyset handler {best['bare']['rps']:,.0f} req/s, p50 {best['bare']['p50_us'] / 1000:.1f} ms, "
        f"{cpu['bare']:.0f} µs; bare keyset query from asyncpg {len(bare)} runs, p50 "
        f"{statistics.median(bare):.1f} ms (64 tasks, pool of {POOL_SIZE}); load average "
        + " ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    metric = f"GET /member/v1/messages ({rows:,} rows, {LIST_CONNECTIONS} conns)"
    over_http = "bare aiohttp + keyset query, over HTTP"
    return [
        Figure("stream", f"{metric} p99", best["notifier"]["p99_us"] / 1000, "ms",
               best["bare"]["p99_us"] / 1000, f"{over_http}, p99", "< 20 ms (5M rows)"),
        Figure("stream", f"{metric} p99", best["notifier"]["p99_us"] / 1000, "ms",
               _percentile(bare, 99), "bare keyset query from asyncpg (no HTTP), p99"),
        Figure("stream", f"{metric} req/s", max(r["rps"] for r in results["notifier"]), "req/s",
               max(r["rps"] for r in results["bare"]), over_http),
        Figure("stream", f"{metric} server CPU per request", cpu["notifier"], "µs", cpu["bare"], over_http),
    ]  # fmt: skip


async def run(env: BenchEnv) -> list[Figure]:
    _raise_fd_limit()
    streams = max(10, round(STREAMS * env.scale)) if STREAMING else 0
    rows = max(10_000, round(ROWS * env.scale)) if LISTING else 0
    async with scratch_database(env.database_url, "notifier_bench_stream") as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=4)
        try:
            key = await _prepare(pool, streams, rows)
        finally:
            await pool.close()
        secret_key = secrets.token_urlsafe(32)
        secret = tokens.inbox_secret(secret_key.encode())
        work = env.workdir / "stream"
        work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server_env = {
            **web_env(dsn, env.redis_url, secret_key, work, POOL_SIZE),
            "NOTIFIER_HOST": "127.0.0.1",  # loopback only
        }
        if WEB_TREE:
            server_env["PYTHONPATH"] = WEB_TREE
        argv = [sys.executable, "-c", "from notifier.cli import main; main()", "web", "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        with _server(argv, port, server_env, work / "web.log") as pid:
            figures = await _listing(env, base, pid, dsn, secret, rows) if LISTING else []
            if STREAMING:
                figures = await _streams(env, base, pid, secret, key) + figures
        with contextlib.suppress(OSError):
            (work / "web.log").unlink()
        return figures
