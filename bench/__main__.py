"""`python -m bench [NAME…] [--scale 0.1] [--write docs/benchmarks.md]`: run benchmarks, print figures.

With no NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL, embedded servers are started (as in tests).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import pkgutil
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import bench
from bench.common import BenchEnv, Figure, table
from notifier.embedded import EmbeddedPostgres, EmbeddedRedis


def available() -> list[str]:
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(bench.__path__)
        if m.name.startswith("bench_")
    )


async def run_all(names: list[str], env: BenchEnv) -> list[Figure]:
    figures: list[Figure] = []
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"running {name}…", flush=True)
        figures.extend(await module.run(env))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(available())}"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply workload sizes (e.g. 0.1 for a quick look)"
    )
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    names = args.names or available()
    unknown = set(names) - set(available())
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")

    work = Path(tempfile.mkdtemp(prefix="notifier-bench-"))
    stoppers = []
    db_url = os.environ.get("NOTIFIER_DATABASE_URL")
    redis_url = os.environ.get("NOTIFIER_REDIS_URL")
    if not db_url:
        pg = EmbeddedPostgres.start(work / "postgres", persistent=False)
        stoppers.append(pg.stop)
        db_url = pg.url()
    if not redis_url:
        rd = EmbeddedRedis.start(work / "redis", persistent=False)
        stoppers.append(rd.stop)
        redis_url = rd.url()
    env = BenchEnv(db_url, redis_url, work, args.scale)
    try:
        figures = asyncio.run(run_all(names, env))
    finally:
        for stop in stoppers:
            stop()
    out = table(figures)
    if env.notes:  # what the figures alone do not say (errors seen, how the servers ran)
        out += "\n\n" + "\n".join(f"- {note}" for note in env.notes)
    print(out)
    if args.write:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        header = f"\n### {', '.join(names)} — {stamp}, {platform.node()}, {os.cpu_count()} cores, scale {args.scale}\n\n"
        with args.write.open("a") as fh:
            fh.write(header + out + "\n")


if __name__ == "__main__":
    main()
