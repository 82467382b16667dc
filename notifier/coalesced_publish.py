"""Redis PUBLISH with the round trips of concurrent callers shared.

Intake rings the inbox doorbell once per message posted (notifier.inbox_rings). One PUBLISH per
request was a write and a read on the Redis socket each time, about a sixth of the web process's
CPU per single-message request at 64 connections. Here the messages of every caller that publishes
while a round trip is in flight wait and go together in the next one (a pipeline), so under load
one round trip serves many requests; a caller alone sends at once, as a plain PUBLISH.

Each caller still waits until its own messages were sent (or the round trip failed), so what a
caller sees is unchanged: when `publish` returns, Redis has its messages, in the order given.

The round trips go over one connection of the client's pool that the line keeps between them,
the commands packed here and the replies read by the connection's parser: a pipeline object (or a
PUBLISH through the client) costs a pool checkout, a health poll of the socket and redis-py's
command machinery on every round trip, and at the rates of intake most round trips carry one
message.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

# One line per Redis client (one connection pool), kept as long as the client is.
_LINES: weakref.WeakKeyDictionary[Any, _Line] = weakref.WeakKeyDictionary()


class _Line:
    """Messages waiting for the next round trip on one client, and who waits for them."""

    __slots__ = ("_conn", "_flushing", "_messages", "_redis", "_task", "_waiters", "loop")

    def __init__(self, redis: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._redis = weakref.ref(redis)
        self.loop = loop  # the futures and the task below belong to it
        self._messages: list[bytes] = []  # PUBLISH commands, packed
        self._waiters: list[asyncio.Future[None]] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None  # the pool's connection this line sends on, kept between round trips

    async def publish(self, channel: str, messages: Sequence[str], trip_seconds: float) -> None:
        commands = [_publish_command(channel, message) for message in messages]
        # One timeout per caller (each costs several µs): around its round trip, or its wait.
        async with asyncio.timeout(trip_seconds):
            if self._flushing:  # a round trip is in flight: wait for the next one, shared
                waiter = self.loop.create_future()
                self._messages.extend(commands)
                self._waiters.append(waiter)
                await waiter
                return
            # None in flight: this caller's messages go at once, and whoever comes meanwhile waits.
            self._flushing = True
            try:
                await self._send(commands)
            finally:
                if self._waiters:
                    self._task = asyncio.create_task(self._flush(trip_seconds))
                else:
                    self._flushing = False

    async def _flush(self, trip_seconds: float) -> None:
        """Send what is waiting, then what arrived meanwhile, until nothing waits."""
        try:
            while self._waiters:
                messages, waiters = self._messages, self._waiters
                self._messages, self._waiters = [], []
                error: BaseException | None = None
                try:
                    async with asyncio.timeout(trip_seconds):
                        await self._send(messages)
                except Exception as exc:  # every caller of this round trip hears of it
                    error = exc
                for waiter in waiters:
                    if waiter.done():  # its caller gave up waiting (cancelled)
                        continue
                    if error is None:
                        waiter.set_result(None)
                    else:
                        waiter.set_exception(error)
        finally:
            self._flushing = False
            self._task = None

    async def _send(self, commands: list[bytes]) -> None:
        """One round trip: every PUBLISH written at once, then each reply read (an error reply
        raises). A connection kept from an earlier round trip that turns out to be broken (Redis
        restarted, an idle timeout) is replaced once, as the pool's checkout would have done."""
        redis = self._redis()
        if redis is None:
            raise ConnectionError("the Redis client was closed")
        kept = self._conn is not None
        try:
            await self._trip(redis, commands)
        except (RedisConnectionError, OSError):
            if not kept:  # a fresh connection failed: Redis is away
                raise
            await self._trip(redis, commands)

    async def _trip(self, redis: Any, commands: list[bytes]) -> None:
        conn, self._conn = self._conn, None  # the round trip's until it ends well
        if conn is None:
            conn = await redis.connection_pool.get_connection()
        try:
            await conn.send_packed_command(commands, check_health=False)
            for _ in commands:
                await conn.read_response()
        except BaseException:
            # Failed or cancelled mid-way: replies left unread would answer the next round trip.
            try:
                await conn.disconnect(nowait=True)
            finally:
                await redis.connection_pool.release(conn)  # back to the pool even if that failed
            raise
        self._conn = conn


def _publish_command(channel: str, message: str) -> bytes:
    """`PUBLISH channel message` in the Redis protocol (RESP), UTF-8 as the client encodes."""
    name, data = channel.encode(), message.encode()
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(name), name, len(data), data)


async def publish(redis: Any, channel: str, messages: Sequence[str], *, trip_seconds: float) -> None:
    """PUBLISH each of `messages` to `channel`, in order, in a round trip shared with the other
    callers on this client; returns once Redis has them. Raises what the round trip raised (a
    connection error), for every caller whose messages it carried, or TimeoutError when the
    caller waited longer than `trip_seconds` (for a round trip in flight and its own)."""
    if not messages:
        return
    loop = asyncio.get_running_loop()
    line = _LINES.get(redis)
    if line is None or line.loop is not loop:  # a client used from another loop starts afresh
        line = _LINES[redis] = _Line(redis, loop)
    await line.publish(channel, messages, trip_seconds)
