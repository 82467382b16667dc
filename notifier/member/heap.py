"""Keeping open event streams out of the cyclic garbage collector's full passes.

Every open stream holds some 60 objects the collector tracks (the request, its middlewares'
coroutines, the task, the listener, buffers), 600,000 at 10,000 streams. CPython 3.11 runs a full
(generation-2) collection whenever the objects that survived the young generations since the last
one reach a quarter of the old ones, and every stream wake leaves a few such survivors (the wait's
future and timer, its buffers live until the next wake). At 10,000 streams and 500 messages a
second that was a full collection every 20 to 30 s, each one 0.8 s of CPU with the event loop
stopped: every message posted meanwhile waited for it (docs/benchmarks.md, "Member inbox").

While a process holds many streams, `HeapFreezer` therefore moves everything alive into the
permanent generation (`gc.freeze()`, a list splice) every FREEZE_EVERY seconds, so the collector's
passes only look at what is younger. Objects that die by reference counting, frozen or not, are
freed as always; only reference cycles that become garbage after being frozen (a closed stream
leaves some) wait for the full collection that `HeapFreezer` runs every FULL_COLLECTION_EVERY
seconds, and at once when the process holds few streams again: one pause of the old length in that
interval instead of dozens, and memory bounded by what the cycles of that interval hold.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

FREEZE_FROM_STREAMS = 1_000  # open streams from which the heap is kept out of the full passes (to half)
FREEZE_EVERY = 1.0  # seconds between freezes while it is
FULL_COLLECTION_EVERY = 600.0  # seconds between full collections of frozen garbage, at least


class HeapFreezer:
    """The collector policy of a process holding `streams()` open streams (see the module)."""

    def __init__(
        self,
        streams: Callable[[], int],
        *,
        from_streams: int = FREEZE_FROM_STREAMS,
        full_every: float = FULL_COLLECTION_EVERY,
    ) -> None:
        self._streams = streams
        self._from_streams = from_streams
        self._full_every = full_every
        self._frozen_since: float | None = None  # when this began freezing, since the last full pass

    def step(self, now: float) -> None:
        """Freeze what is alive while the process holds many streams (from `from_streams` on,
        until fewer than half as many). Run the full collection that frees frozen garbage when it
        is due (`full_every` seconds after freezing began) or when the process holds few streams
        again; it pauses the process as long as the collector's own full passes did, and ends
        frozen as start-up left the process (notifier.cli): everything alive then."""
        streams = self._streams()
        if self._frozen_since is None:
            if streams >= self._from_streams:
                gc.freeze()
                self._frozen_since = now
            return
        if streams < self._from_streams // 2 or now - self._frozen_since >= self._full_every:
            gc.unfreeze()  # back into the oldest generation, with what start-up froze
            gc.collect()
            gc.freeze()
            self._frozen_since = None if streams < self._from_streams // 2 else now
            return
        gc.freeze()

    async def run(self) -> None:
        """`step` every FREEZE_EVERY seconds until cancelled."""
        while True:
            await asyncio.sleep(FREEZE_EVERY)
            self.step(time.monotonic())
