"""`python -m chaos [SCENARIO...] [--members N] [--kills K]`: run the chaos scenarios and print
one line of figures per scenario (runs, kills, messages, lost, duplicated, 5xx seen).

Scenarios: kill (workers SIGKILLed while a newsletter and digests send), term (the same with
SIGTERM, as a deploy stops them), redis (Redis flushed,
then restarted empty, mid-send), tempfail (421 then 451 for a while), reject (550 for some
recipients), hang (a server that never answers), postgres (PostgreSQL restarted during intake),
fuzz (schemathesis, `--fuzz-examples` per operation), soak (mixed load at 70% of measured intake
capacity for `--soak-seconds`). Default: all but fuzz and soak.

Each scenario gets a fresh database on NOTIFIER_DATABASE_URL's server (or an embedded pgserver
for `postgres`), its own embedded Redis, and the counting sink of chaos/sink.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time

from chaos.delivery import scenario_hang, scenario_kill, scenario_redis, scenario_reject, scenario_tempfail
from chaos.load import scenario_fuzz, scenario_postgres, scenario_soak
from chaos.stage import Outcome, say

SCENARIOS = ("kill", "term", "redis", "tempfail", "reject", "hang", "postgres")


def report(outcomes: list[Outcome]) -> None:
    print()
    print("| scenario | runs | kills | restarts | messages | delivered | lost | duplicated | 5xx | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        print(
            f"| {o.scenario} | 1 | {o.kills} | {o.restarts} | {o.messages} | {o.delivered} | {o.lost} "
            f"| {o.duplicated}{f' ({o.unavoidable} at a kill)' if o.kills else ''} | {o.server_errors} "
            f"| {o.seconds:.0f} |"
        )
    for o in outcomes:
        print(f"{o.scenario}: {'OK' if o.ok else 'FAILED'} {json.dumps(o.notes, default=str)}")


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=", ".join(SCENARIOS))
    parser.add_argument("--members", type=int, default=20_000, help="newsletter recipients (kill, redis)")
    parser.add_argument("--small", type=int, default=3_000, help="recipients for the SMTP scenarios")
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--fuzz-examples", type=int, default=100, help="schemathesis cases per operation")
    parser.add_argument("--soak-seconds", type=float, default=600, help="duration of `soak` (default 10 min)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    admin_url = os.environ.get("NOTIFIER_DATABASE_URL")
    if not admin_url:
        parser.error("set NOTIFIER_DATABASE_URL to a PostgreSQL server where databases may be created")
    say(f"chaos: scenarios {', '.join(args.scenarios)}; seed {seed}")
    outcomes = []
    for name in args.scenarios:
        say(f"--- {name}")
        started = time.monotonic()
        if name == "kill":
            outcome = await scenario_kill(admin_url, args.members, args.kills)
        elif name == "term":
            outcome = await scenario_kill(admin_url, args.members, args.kills, signal.SIGTERM)
        elif name == "redis":
            outcome = await scenario_redis(admin_url, args.members)
        elif name == "tempfail":
            outcome = await scenario_tempfail(admin_url, args.small)
        elif name == "reject":
            outcome = await scenario_reject(admin_url, args.small)
        elif name == "hang":
            outcome = await scenario_hang(admin_url, args.small)
        elif name == "fuzz":
            outcome = scenario_fuzz(args.fuzz_examples)
        elif name == "soak":
            outcome = await scenario_soak(admin_url, args.soak_seconds, args.small)
        elif name == "postgres":
            outcome = await scenario_postgres(clients=20, seconds=30, down=5)
        else:
            parser.error(f"unknown scenario {name}")
        outcome.seconds = time.monotonic() - started
        say(f"{name}: lost {outcome.lost}, duplicated {outcome.duplicated}, {outcome.seconds:.0f} s")
        outcomes.append(outcome)
    report(outcomes)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
