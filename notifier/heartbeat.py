"""Worker liveness: each worker process records a beat, readable in `worker_heartbeats`."""

from __future__ import annotations

import asyncpg


async def beat(pool: asyncpg.Pool, worker: str) -> int:
    """Record one beat for `worker`; returns how many it has recorded in all."""
    beats: int = await pool.fetchval(
        """
        INSERT INTO worker_heartbeats (worker) VALUES ($1)
        ON CONFLICT (worker) DO UPDATE SET beat_at = now(), beats = worker_heartbeats.beats + 1
        RETURNING beats
        """,
        worker,
    )
    return beats
