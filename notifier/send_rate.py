"""The global send rate (`NOTIFIER_SEND_RATE`, messages/s over every worker process), with priority
by urgency: service mail never waits behind a newsletter's booked slots.

One schedule in Redis, shared by all processes: a GCRA whose "theoretical arrival time" (`tat`) is
the start of the next free slot. Every booking, whatever its queue, takes consecutive slots at the
end of that schedule, so two sends anywhere are always at least `1 / rate` apart: the rate holds
across processes and queues.

Priority comes from who may book, and how far ahead:

- Service mail (level 0) may always book, at the end of the schedule.
- Digests (level 1) and newsletters (level 2) book only while no more urgent level has a slot still
  ahead in the schedule, and only up to `HORIZON` seconds ahead of now, a few slots at a time just
  before they are needed (`Pacer`), never a batch's worth up front.

So a service message waits at most `HORIZON` (or one interval, when the rate is below 1/HORIZON)
behind slots already booked for bulk, however many bulk workers run and however large the
newsletter; during a burst of service mail the lower levels book nothing and the burst gets the
whole rate; when service mail is quiet, bulk gets the whole rate (the scheme wastes no slot).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from redis.asyncio import Redis

from notifier import queues

KEY = "notifier:send-rate"
# Lower levels book at most this far ahead of now: the longest a service message waits behind them.
HORIZON = 0.25
# A pacer books about this much sending time per round trip (at least one slot).
BOOK_AHEAD = 0.1
# Who books first when the rate is the limit, by queue: service mail, digests, newsletters.
PRIORITY = {queues.SERVICE: 0, queues.DIGEST: 1, queues.BULK: 2}
LOWEST = max(PRIORITY.values())

# KEYS[1]: a hash with `tat` (the end of the schedule) and `end<level>` (the end of the last slot
# booked by each level). ARGV: interval (1/rate), slots wanted, level, horizon (levels above 0).
# Answers {granted, seconds}: with granted > 0, seconds until the first granted slot (the others
# follow one interval apart); with granted = 0, seconds until a booking may be admitted.
_BOOK = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local interval = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local level = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat < t then tat = t end
if level > 0 then
  for above = 0, level - 1 do
    local e = tonumber(redis.call('HGET', KEYS[1], 'end' .. above) or '0')
    if e > t then return {0, string.format('%.6f', e - t)} end
  end
  local room = math.floor((t + horizon - tat) / interval + 1e-6)
  if room < 1 then return {0, string.format('%.6f', tat + interval - horizon - t)} end
  if n > room then n = room end
end
local e = tat + interval * n
redis.call('HSET', KEYS[1], 'tat', string.format('%.6f', e), 'end' .. level, string.format('%.6f', e))
redis.call('EXPIRE', KEYS[1], math.ceil(e - t) + 60)
return {n, string.format('%.6f', tat - t)}
"""


def level_of(queue: str) -> int:
    """The priority level of a queue's mail (0 = most urgent); unknown queues get the lowest."""
    return PRIORITY.get(queue, LOWEST)


class SendRate:
    """The shared send-rate schedule. One per worker process and queue is fine: all state is in
    Redis, so any number of processes on any number of machines share one rate."""

    def __init__(self, redis: Redis, rate: float, *, key: str = KEY, horizon: float = HORIZON) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.redis = redis
        self.rate = rate
        self.interval = 1.0 / rate
        self.key = key
        # Below one slot the lower levels could never book: they may then book one interval ahead.
        self.horizon = max(horizon, self.interval)

    async def book(self, n: int, level: int) -> tuple[int, float]:
        """Try to book `n` consecutive slots for mail of priority `level`, in one round trip.
        Returns (granted, seconds): `granted` slots (level 0 always gets all `n`; other levels get
        as many as fit within the horizon, possibly none), the first starting in `seconds` and the
        rest one interval apart; with nothing granted, `seconds` is when to ask again."""
        if n < 1:
            raise ValueError("book at least one slot")
        granted, seconds = await self.redis.eval(  # type: ignore[misc]
            _BOOK, 1, self.key, repr(self.interval), str(n), str(level), repr(self.horizon)
        )
        return int(granted), max(0.0, float(seconds))

    def pacer(self, queue: str, count: int, deadline: float | None = None) -> Pacer:
        """Slots for one batch of `count` messages of `queue` (see `Pacer`)."""
        return Pacer(self, level_of(queue), count, deadline)


class Pacer:
    """Hands out send slots to the lanes of one batch, booking a few at a time just ahead of need
    (about `BOOK_AHEAD` seconds of sending per Redis round trip). `deadline` (the event loop's
    clock) is the last moment a send may start: the batch's rows are claimed until their lease
    runs out, so a batch held back by more urgent mail stops rather than outlive its claim."""

    def __init__(self, limiter: SendRate, level: int, count: int, deadline: float | None = None) -> None:
        self.limiter = limiter
        self.level = level
        self.deadline = deadline
        self.chunk = max(1, math.ceil(limiter.rate * BOOK_AHEAD))
        self._unbooked = count
        self._slots: deque[float] = deque()
        self._booking = asyncio.Lock()
        self._loop = asyncio.get_running_loop()

    async def wait(self) -> bool:
        """Wait for this process's next slot; True when the send may start now, False when none
        is to be had before the deadline (or every message of the batch had its slot)."""
        while not self._slots:
            if self._unbooked == 0:
                return False
            async with self._booking:
                if self._slots or self._unbooked == 0:
                    continue
                granted, seconds = await self.limiter.book(min(self.chunk, self._unbooked), self.level)
                now = self._loop.time()
                if granted == 0:
                    if self.deadline is not None and now + seconds > self.deadline:
                        return False
                    # Never spin: a refused booking asks again no sooner than 1 ms later.
                    await asyncio.sleep(max(seconds, 0.001))
                    continue
                self._unbooked -= granted
                first = now + seconds
                self._slots.extend(first + i * self.limiter.interval for i in range(granted))
        at = self._slots.popleft()
        if self.deadline is not None and at > self.deadline:
            return False
        wait = at - self._loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        return True
