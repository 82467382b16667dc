"""Counters in Redis shared by every web process, for limits that must hold across processes and
machines (test-sends per API key, failed console sign-ins per client); the per-process token
bucket of `auth.RateLimiter` is for the hot path where a round trip would cost too much.

A window opens at the first count and lasts `seconds`; counting is one atomic script, so parallel
requests cannot both squeeze under the limit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from redis.asyncio import Redis

# Count `amount` unless the window would pass `limit`; the seconds left in the window when refused.
_TAKE = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
if n > tonumber(ARGV[2]) then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return math.max(redis.call('TTL', KEYS[1]), 1)
end
return 0
"""


def client_key(address: str | None) -> str:
    """A counter name for a client address that does not store the address itself."""
    return hashlib.sha256((address or "-").encode("utf-8", "surrogateescape")).hexdigest()[:32]


@dataclass(frozen=True)
class Window:
    """At most `limit` per `seconds` for each `who`, counted under `name`."""

    name: str
    limit: int
    seconds: int

    def _key(self, who: str) -> str:
        return f"notifier:limit:{self.name}:{who}"

    async def take(self, redis: Redis, who: str, amount: int = 1) -> int:
        """Count `amount` for `who` when it fits in the window: 0. Otherwise nothing is counted
        and the answer is the seconds until the window ends (at least 1)."""
        args = (self._key(who), str(amount), str(self.limit), str(self.seconds))
        waited = await redis.eval(_TAKE, 1, *args)  # type: ignore[misc]
        return int(waited)

    async def used_up(self, redis: Redis, who: str) -> int:
        """The seconds until the window ends when `who` has reached the limit, else 0 (counts
        nothing; with `add` for limits on outcomes known only afterwards, such as failures)."""
        key = self._key(who)
        count, ttl = await redis.get(key), await redis.ttl(key)
        if count is None or int(count) < self.limit:
            return 0
        return max(int(ttl), 1)

    async def add(self, redis: Redis, who: str) -> None:
        """Count one for `who` (opening the window when it is the first)."""
        key = self._key(who)
        # The window opens with the first count: SET NX EX, then INCR (EXPIRE ... NX needs Redis 7,
        # and the embedded server of `notifier dev` and the tests is 6.2).
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=self.seconds, nx=True)
            pipe.incr(key)
            await pipe.execute()
