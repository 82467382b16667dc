"""`python -m chaos.worker QUEUES`: `notifier worker` with the chaos suite's short clocks.

The outbox's lease (120 s) and retry delays (30 s and up) are right for production and make a
chaos run wait minutes for each recovery; this process shortens them (CHAOS_LEASE_SECONDS,
CHAOS_RETRY_DELAYS), and changes nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from notifier.mail import outbox
from notifier.settings import Settings
from workers import run_workers


def main() -> None:
    outbox.LEASE_SECONDS = float(os.environ.get("CHAOS_LEASE_SECONDS", "10"))
    delays = os.environ.get("CHAOS_RETRY_DELAYS", "2,4,8,15,30,60")
    outbox.RETRY_DELAYS = tuple(int(d) for d in delays.split(","))
    settings = Settings()
    settings.require_secret()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run_workers(settings, sys.argv[1].split(",")))


if __name__ == "__main__":
    main()
