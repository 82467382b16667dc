"""The global send rate (`NOTIFIER_SEND_RATE`, messages/s over every worker process), with priority
by urgency: service mail never waits behind a newsletter's booked slots.

One schedule in Redis, shared by all processes: a GCRA whose "theoretical arrival time" (`tat`) is
the start of the next free slot. Every booking, whatever its queue, takes consecutive slots at the
end of that schedule, so two sends anywhere are always at least `1 / rate` apart: the rate holds
across processes and queues.

Priority comes from who may book, and how far ahead:

- Service mail (level 0) may always book, at the end of the schedule.
- Digests (level 1) and newsletters (level 2) book only while no more urgent level has a slot
  ahead in the schedule (but for one ending within `LEAD`), and only up to `HORIZON` seconds
  ahead of now, never a batch's worth up front.

So a service message waits at most `HORIZON` (or one interval, when the rate is below 1/HORIZON)
behind slots already booked for bulk, however many bulk workers run and however large the
newsletter; during a burst of service mail the lower levels book nothing and the burst gets the
whole rate; when service mail is quiet, bulk gets the whole rate.

Each process books for each level a few slots at a time (`BOOK_AHEAD` seconds of sending per
round trip, the next few before the last is used, so the schedule never runs dry between two
round trips) and hands each slot, at its time, to a free lane of its oldest batch (`_Supply`). A
slot that passes with no lane free is used up to `BOOK_AHEAD` late, then dropped: the rate is a
ceiling, never made up for later in a burst.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections import deque

from redis.asyncio import Redis

from notifier import queues

log = logging.getLogger("notifier.send_rate")
KEY = "notifier:send-rate"
# Lower levels book at most this far ahead of now: the longest a service message waits behind them.
HORIZON = 0.25
# A process books about this much sending time per round trip (at least one slot).
BOOK_AHEAD = 0.1
# A lower level may book behind a more urgent one's last slot when it ends within this, so that
# its slots follow on without a gap however late its worker wakes up (less than the half chunk a
# burst of urgent mail keeps booked ahead, so such a burst still keeps the whole rate).
LEAD = BOOK_AHEAD / 4
# Who books first when the rate is the limit, by queue: service mail, digests, newsletters.
PRIORITY = {queues.SERVICE: 0, queues.DIGEST: 1, queues.BULK: 2}
LOWEST = max(PRIORITY.values())

# KEYS[1]: a hash with `tat` (the end of the schedule) and `end<level>` (the end of the last slot
# booked by each level). ARGV: interval (1/rate), slots wanted, level, horizon and lead (levels
# above 0).
# Answers {granted, at, now} in Redis's clock: with granted > 0, `at` is the start of the first
# granted slot (the others follow one interval apart); with granted = 0, when to ask again.
_BOOK = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local interval = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local level = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local lead = tonumber(ARGV[5])
local function answer(granted, at)
  return {granted, string.format('%.6f', at), string.format('%.6f', t)}
end
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat < t then tat = t end
if level > 0 then
  for above = 0, level - 1 do
    local e = tonumber(redis.call('HGET', KEYS[1], 'end' .. above) or '0')
    if e > t + lead then return answer(0, e - lead) end
  end
  local room = math.floor((t + horizon - tat) / interval + 1e-6)
  if room < 1 then return answer(0, tat + interval - horizon) end
  if n > room then n = room end
end
local e = tat + interval * n
redis.call('HSET', KEYS[1], 'tat', string.format('%.6f', e), 'end' .. level, string.format('%.6f', e))
redis.call('EXPIRE', KEYS[1], math.ceil(e - t) + 60)
return answer(n, tat)
"""
# How far the estimate of Redis's clock against this process's may rise per booking (it falls at
# once to any fresher reading): follows a stepped or slewed wall clock within seconds.
CLOCK_DRIFT = 0.001


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
        self._supplies: dict[int, _Supply] = {}
        self._offset = math.inf  # this process's clock minus Redis's (see `book`)

    async def book(self, n: int, level: int) -> tuple[int, float]:
        """Try to book `n` consecutive slots for mail of priority `level`, in one round trip.
        Returns (granted, at): `granted` slots (level 0 always gets all `n`; other levels get as
        many as fit within the horizon, possibly none), the first starting at `at` (the event
        loop's clock) and the rest one interval apart; with nothing granted, `at` is when to ask
        again."""
        if n < 1:
            raise ValueError("book at least one slot")
        loop = asyncio.get_running_loop()
        asked = loop.time()
        granted, at, redis_now = await self.redis.eval(  # type: ignore[misc]
            _BOOK, 1, self.key, repr(self.interval), str(n), str(level), repr(self.horizon), repr(LEAD)
        )
        # Slots are Redis times; place them on this process's clock with the smallest offset seen
        # (the reading least delayed by the round trip), so that two bookings that are
        # consecutive in Redis stay consecutive here and no slot is lost between them.
        offset = (asked + loop.time()) / 2 - float(redis_now)
        self._offset = min(offset, self._offset + CLOCK_DRIFT)
        return int(granted), float(at) + self._offset

    def pacer(self, queue: str, count: int, deadline: float | None = None) -> Pacer:
        """Slots for one batch of `count` messages of `queue` (see `Pacer`)."""
        level = level_of(queue)
        supply = self._supplies.get(level)
        if supply is None:
            supply = self._supplies[level] = _Supply(self, level)
        return Pacer(supply, count, deadline)


class _Supply:
    """This process's slots for one level: booked a few at a time (about `BOOK_AHEAD` seconds of
    sending per Redis round trip, never more than its batches still need), and each handed out at
    its time to a free lane, the oldest batch's first. So two batches of a process send one after
    the other, not side by side: the younger is built and ready when the older ends, and takes over
    without a gap (side by side, both would end at once and the rate would idle while the next two
    are claimed and built), yet it takes any slot the older batch's lanes are too busy to use."""

    def __init__(self, limiter: SendRate, level: int) -> None:
        self.limiter = limiter
        self.level = level
        self.chunk = max(1, math.ceil(limiter.rate * BOOK_AHEAD))
        self.wanted = 0  # slots the batches of this process still need
        self._slots: deque[float] = deque()  # booked, not yet handed out (event loop times)
        self._waiting: list[tuple[int, int, asyncio.Future[float]]] = []  # (batch, arrival, lane)
        self._arrivals = itertools.count()
        self._batches = itertools.count()
        self._dispatcher: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    def batch_number(self) -> int:
        return next(self._batches)

    async def take(self, batch: int, deadline: float | None) -> bool:
        """Wait until a slot is due and this lane is the first free one of the oldest batch; False
        when none came before `deadline`."""
        lane = self._loop.create_future()
        heapq.heappush(self._waiting, (batch, next(self._arrivals), lane))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch())
        timeout = None if deadline is None else max(0.0, deadline - self._loop.time())
        try:
            slot = await asyncio.wait_for(lane, timeout)
        except TimeoutError:
            return False
        finally:
            if not lane.done() or lane.cancelled():
                lane.cancel()
                if self._next_lane() is None and self._dispatcher is not None:
                    self._dispatcher.cancel()  # nobody waits: do not leave it sleeping
                    self._dispatcher = None
        return not math.isnan(slot)

    def _next_lane(self) -> asyncio.Future[float] | None:
        while self._waiting:
            if not self._waiting[0][2].done():
                return self._waiting[0][2]
            heapq.heappop(self._waiting)
        return None

    async def _dispatch(self) -> None:
        try:
            await self._hand_out()
        except Exception as exc:
            # Redis unreachable (or a bug): no lane waits forever; each gets no slot, so its batch
            # starts nothing more and its unsent e-mails are retried.
            log.warning("send rate: booking slots failed (%s); unsent e-mails will be retried", exc)
            while self._waiting:
                _, _, lane = heapq.heappop(self._waiting)
                if not lane.done():
                    lane.set_result(math.nan)

    async def _hand_out(self) -> None:
        interval = self.limiter.interval
        ask_again_at = -math.inf  # after a refused booking
        while self._next_lane() is not None:
            now = self._loop.time()
            # A slot nobody took in time is gone: a lane late by more than `BOOK_AHEAD` (a busy
            # event loop) would send its backlog of slots at once.
            while self._slots and self._slots[0] < now - max(BOOK_AHEAD, interval):
                self._slots.popleft()
            # Book the next few while half a chunk is left, so that the schedule never runs dry
            # between two round trips (a slot passed unbooked is lost to every process).
            wanted = min(self.chunk, self.wanted - len(self._slots))
            if not self._slots:
                wanted = max(1, wanted)
            if wanted > 0 and len(self._slots) <= self.chunk // 2 and now >= ask_again_at:
                granted, at = await self.limiter.book(wanted, self.level)
                if granted:
                    self._slots.extend(at + i * interval for i in range(granted))
                else:
                    ask_again_at = at
            if not self._slots:
                # Never spin: a refused booking asks again no sooner than 1 ms later.
                await asyncio.sleep(max(ask_again_at - self._loop.time(), 0.001))
                continue
            wait = self._slots[0] - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            lane = self._next_lane()  # the oldest batch's free lane at the slot's time
            if lane is not None:
                heapq.heappop(self._waiting)
                lane.set_result(self._slots.popleft())


class Pacer:
    """Hands out send slots to the lanes of one batch. `deadline` (the event loop's clock) is the
    last moment a send may start: the batch's rows are claimed until their lease runs out, so a
    batch held back by more urgent mail stops rather than outlive its claim. `close` when done."""

    def __init__(self, supply: _Supply, count: int, deadline: float | None = None) -> None:
        self.supply = supply
        self.deadline = deadline
        self.batch = supply.batch_number()
        self._left = count
        supply.wanted += count

    async def wait(self) -> bool:
        """Wait for the next slot; True when the send may start now, False when none is to be had
        before the deadline (or every message of the batch had its slot)."""
        if self._left <= 0:
            return False
        self._left -= 1  # before waiting: the batch's other lanes wait for the other messages
        if not await self.supply.take(self.batch, self.deadline):
            self._left += 1
            return False
        self.supply.wanted -= 1
        return True

    def close(self) -> None:
        """The batch is done (or stopped): its unused slots are no longer wanted."""
        self.supply.wanted -= self._left
        self._left = 0
