"""Worker liveness: each worker process records a beat, readable in `worker_heartbeats`."""

from __future__ import annotations

import asyncpg

from notifier.db import Q


async def beat(pool: asyncpg.Pool, worker: str) -> int:
    """Record one beat for `worker`; returns how many it has recorded in all."""
    beats: int = await pool.fetchval(Q.worker_beat, worker)
    return beats
