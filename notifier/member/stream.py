"""`GET /member/v1/stream`: the member's inbox as Server-Sent Events (aiohttp-sse), across any
number of web processes.

Events: `message` (a new message, `id:` its message id), `counts` (`{unread, unseen, by_category}`,
sent on connect and whenever they change), and heartbeat comments. The browser's `EventSource`
reconnects by itself and sends the id of the last `message` it got as `Last-Event-ID`; the stream
then first sends every message after that id, so nothing that arrived while it was away is lost.

Each web process holds one Redis pub/sub subscription (`Hub`) to `inbox.INBOX_CHANNEL` and wakes
only the streams of the account a ring names. A ring carries ids, never content: the stream reads
what is new from PostgreSQL (the source of truth), after the last id it delivered, so a ring
missed while Redis was away is caught up at the next one, and every stream catches up when the
subscription comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from notifier import inbox
from notifier.db import Q
from notifier.member.auth import member_of
from notifier.resources import POOL, REDIS, SETTINGS

log = logging.getLogger("notifier.member.stream")

CATCH_UP_LIMIT = 100  # messages sent per catch-up query; a longer gap is sent in several
RETRY_MS = 2000  # how soon EventSource reconnects after a drop
RESUBSCRIBE_DELAYS = (0.1, 0.5, 1, 2, 5)


class Listener:
    """One open stream: what it has been told since it last looked."""

    __slots__ = ("account_id", "closing", "counts", "messages", "wake")

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id
        self.wake = asyncio.Event()
        self.messages = False  # something new may be after the last id delivered
        self.counts = False  # counts changed
        self.closing = False

    def close(self) -> None:
        """End the stream at its next look (the client went away, or the server stops)."""
        self.closing = True
        self.wake.set()

    def ring(self, message: bool) -> None:
        if message:
            self.messages = True
        self.counts = True
        self.wake.set()


class Hub:
    """The process's one subscription to the inbox channel, dispatching rings to its streams."""

    def __init__(self) -> None:
        self._listeners: dict[int, set[Listener]] = {}
        self.subscribed = asyncio.Event()

    def add(self, listener: Listener) -> None:
        self._listeners.setdefault(listener.account_id, set()).add(listener)

    def remove(self, listener: Listener) -> None:
        group = self._listeners.get(listener.account_id)
        if group is not None:
            group.discard(listener)
            if not group:
                del self._listeners[listener.account_id]

    def __len__(self) -> int:
        return sum(len(g) for g in self._listeners.values())

    def dispatch(self, raw: bytes | str) -> None:
        parsed = inbox.parse_announcement(raw)
        if parsed is None:
            return
        account_id, arrived = parsed
        for listener in self._listeners.get(account_id, ()):
            listener.ring(arrived)

    def everyone(self, *, closing: bool = False) -> None:
        """Wake every stream: to catch up (after the subscription was lost) or to close."""
        for group in self._listeners.values():
            for listener in group:
                if closing:
                    listener.close()
                else:
                    listener.ring(True)

    async def run(self, redis: object) -> None:
        """Listen until cancelled; resubscribe after a lost connection and let every stream catch
        up from PostgreSQL (it may have missed rings meanwhile)."""
        failures = 0
        while True:
            try:
                pubsub = redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[attr-defined]
                try:
                    await pubsub.subscribe(inbox.INBOX_CHANNEL)
                    if failures:
                        self.everyone()
                    failures = 0
                    self.subscribed.set()
                    async for item in pubsub.listen():
                        if item.get("type") == "message":
                            self.dispatch(item["data"])
                finally:
                    self.subscribed.clear()
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = RESUBSCRIBE_DELAYS[min(failures, len(RESUBSCRIBE_DELAYS) - 1)]
                failures += 1
                log.warning("inbox subscription lost (%s); again in %ss", type(exc).__name__, delay)
                await asyncio.sleep(delay)


HUB = web.AppKey("inbox_hub", Hub)


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw and raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw)
    return None


async def stream(request: web.Request) -> web.StreamResponse:
    """The member's event stream; `?token=` is accepted here (EventSource sends no headers). The
    stream ends when the token does, so a reconnect must bring a current one."""
    member = await member_of(request, query_allowed=True)
    app = request.app
    pool, hub = app[POOL], app[HUB]
    listener = Listener(member.account_id)
    hub.add(listener)  # before reading anything: no ring can fall between the read and the wait
    response = EventSourceResponse(
        headers={"Cache-Control": "no-store"}, ping_interval=app[SETTINGS].inbox_heartbeat_seconds
    )
    try:
        last_id = _last_event_id(request)
        if last_id is None:
            last_id = await pool.fetchval(Q.member_last_message_id, member.account_id)
        else:
            listener.messages = True
        listener.counts = True  # the first event: the counts now
        await response.prepare(request)
        await _serve(response, listener, member.account_id, member.expires, last_id, pool)
    except (ConnectionResetError, TimeoutError):
        if not response.prepared:
            raise
        # the client went away or stalled: nothing more reaches it
    finally:
        hub.remove(listener)
        if response.prepared:
            response.stop_streaming()
    return response


async def _serve(
    response: EventSourceResponse,
    listener: Listener,
    account_id: int,
    expires: int,
    last_id: int,
    pool: asyncpg.Pool,
) -> None:
    ping = response._ping_task
    if ping is not None:  # when the client goes away its pings fail: end the loop
        ping.add_done_callback(lambda _: listener.close())
    first = True
    async for _ in _wakes(listener, expires):
        if not response.is_connected() or listener.closing:
            return
        if not (listener.messages or listener.counts):
            continue  # woken only to look at the connection
        wanted = CATCH_UP_LIMIT if listener.messages else 0
        listener.messages = listener.counts = False
        news = await inbox.member_news(pool, account_id, last_id, wanted)
        for message_id, item in news.messages:
            await response.send(item, id=str(message_id), event="message")
            last_id = message_id
        if len(news.messages) == CATCH_UP_LIMIT:
            listener.messages = True
        await response.send(news.counts, event="counts", retry=RETRY_MS if first else None)
        first = False


async def _wakes(listener: Listener, expires: int) -> AsyncIterator[None]:
    """Yield whenever the listener has something to do, until its token expires."""
    while True:
        if listener.messages or listener.counts or listener.closing:
            yield
            if listener.closing:
                return
            continue
        remaining = expires - time.time()
        if remaining <= 0:
            return
        listener.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(remaining, 60)):
                await listener.wake.wait()
        yield


async def _hub(app: web.Application) -> AsyncIterator[None]:
    hub = app[HUB] = Hub()
    task = asyncio.create_task(hub.run(app[REDIS]), name="inbox-hub")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _close_streams(app: web.Application) -> None:
    if HUB in app:
        app[HUB].everyone(closing=True)


def setup(app: web.Application) -> None:
    """The hub starts after the resources (it needs Redis) and streams end at shutdown."""
    app.cleanup_ctx.append(_hub)
    app.on_shutdown.append(_close_streams)
