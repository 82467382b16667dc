"""`GET /member/v1/stream`: the member's inbox as Server-Sent Events (aiohttp-sse), across any
number of web processes.

Events: `message` (a new message, `id:` its message id), `counts` (`{unread, unseen, by_category}`,
sent on connect and whenever they change), and heartbeat comments. The browser's `EventSource`
reconnects by itself and sends the id of the last `message` it got as `Last-Event-ID`; the stream
then first sends every message after that id, so nothing that arrived while it was away is lost.

Each web process holds one Redis pub/sub subscription (`Hub`) to `inbox_rings.inbox_channel`
while it holds a stream (and a minute after), and wakes only the streams of the account a ring
names. A ring of a message posted alone carries the message
(`inbox_rings.announce_created`): the stream sends it and adds it to its counts without a statement.
Any other ring (a batch, a long message, a change of counts) makes the stream read what is new
from PostgreSQL (the source of truth) after the last id it delivered, so a ring missed while Redis
was away is caught up at the next read, and every stream reads again when a subscription is
confirmed (the process's first stream waits for that before its first read).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from notifier import inbox, inbox_rings
from notifier.db import Q
from notifier.member.auth import member_of
from notifier.member.heap import HeapFreezer
from notifier.resources import POOL, REDIS, SETTINGS

log = logging.getLogger("notifier.member.stream")
_SSE_LINES = re.compile(r"\r\n|\r|\n")

CATCH_UP_LIMIT = 100  # messages sent per catch-up query; a longer gap is sent in several
RECENT_IDS = 32  # ids a stream remembers having sent, so a late carried message is not sent twice
RETRY_MS = 2000  # how soon EventSource reconnects after a drop
SEND_TIMEOUT = 120.0  # seconds a client may take to accept an event before it is cut off
NO_PING = 10.0**9  # aiohttp-sse's own ping interval: never (the stream sends its heartbeats)
RESUBSCRIBE_DELAYS = (0.1, 0.5, 1, 2, 5)
UNSUBSCRIBE_AFTER = 60.0  # seconds a process without streams stays subscribed (streams come and go)
SUBSCRIBE_WAIT = 1.0  # seconds a stream opening waits at most for the subscription before its first read


class Listener:
    """One open stream: what it has been told since it last looked."""

    __slots__ = ("account_id", "carried", "closing", "counts", "messages", "wake")

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id
        self.wake = asyncio.Event()
        self.messages = False  # something new may be after the last id delivered: read it back
        self.counts = False  # counts changed: read them back
        self.carried: list[inbox_rings.Carried] = []  # new messages the rings carried, in arrival order
        self.closing = False

    def close(self) -> None:
        """End the stream at its next look (the client went away, or the server stops)."""
        self.closing = True
        self.wake.set()

    def ring(self, message: bool, carried: inbox_rings.Carried | None = None) -> None:
        if carried is not None and len(self.carried) < CATCH_UP_LIMIT:
            self.carried.append(carried)
        elif message:  # (or more carried than a stream holds: read back instead)
            self.messages = True
            self.counts = True
        else:
            self.counts = True
        self.wake.set()


class Hub:
    """The process's subscription to the inbox channel, dispatching rings to its streams. It is
    subscribed only while the process holds a stream, and for `linger` seconds after the last one
    ended: a process without streams (most of intake's) would otherwise receive and parse every
    ring of every web process (12-15 µs of CPU each)."""

    def __init__(self, linger: float | None = None) -> None:
        self._listeners: dict[int, set[Listener]] = {}
        self.subscribed = asyncio.Event()  # set once Redis confirmed the subscription
        self._wanted = asyncio.Event()  # set while the process holds a stream
        self._idle: asyncio.Timeout | None = None  # ends the subscription `linger` s after the last stream
        self._linger = UNSUBSCRIBE_AFTER if linger is None else linger
        self._failures = 0

    def add(self, listener: Listener) -> None:
        if not self._listeners:
            self._wanted.set()
            self._keep_subscribed(True)
        self._listeners.setdefault(listener.account_id, set()).add(listener)

    def remove(self, listener: Listener) -> None:
        group = self._listeners.get(listener.account_id)
        if group is not None:
            group.discard(listener)
            if not group:
                del self._listeners[listener.account_id]
                if not self._listeners:
                    self._wanted.clear()
                    self._keep_subscribed(False)

    def _keep_subscribed(self, keep: bool) -> None:
        idle = self._idle
        if idle is not None and not idle.expired():  # (once expired, `run` subscribes afresh if wanted)
            idle.reschedule(None if keep else asyncio.get_running_loop().time() + self._linger)

    def __len__(self) -> int:
        return sum(len(g) for g in self._listeners.values())

    def dispatch(self, raw: bytes | str) -> None:
        ring = inbox_rings.parse_announcement(raw)
        if ring is None:
            return
        for listener in self._listeners.get(ring.account_id, ()):
            listener.ring(ring.arrived, ring.message)

    def everyone(self, *, closing: bool = False) -> None:
        """Wake every stream: to catch up (rings may have gone unheard before the subscription was
        confirmed) or to close."""
        for group in self._listeners.values():
            for listener in group:
                if closing:
                    listener.close()
                else:
                    listener.ring(True)

    async def ready(self) -> None:
        """Wait until the subscription is confirmed, at most SUBSCRIBE_WAIT seconds (Redis may be
        away: the streams then catch up once it is confirmed)."""
        if not self.subscribed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUBSCRIBE_WAIT):
                    await self.subscribed.wait()

    async def run(self, redis: object) -> None:
        """Until cancelled: subscribe whenever the process holds a stream, leave the channel
        `linger` seconds after the last one ended, and resubscribe after a lost connection. Each
        time Redis confirms the subscription every stream held is told to read what is new from
        PostgreSQL (a ring before that went unheard); a stream whose first read has not begun
        yet reads only once (`Listener.ring` only sets what it was going to read anyway)."""
        while True:
            await self._wanted.wait()
            try:
                await self._listen(redis)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = RESUBSCRIBE_DELAYS[min(self._failures, len(RESUBSCRIBE_DELAYS) - 1)]
                self._failures += 1
                log.warning("inbox subscription lost (%s); again in %ss", type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _listen(self, redis: object) -> None:
        """One subscription, until the process has held no stream for `linger` seconds."""
        pubsub = redis.pubsub()  # type: ignore[attr-defined]
        try:
            async with asyncio.timeout(None) as idle:
                self._idle = idle
                if not self._listeners:  # the last stream ended already
                    self._keep_subscribed(False)
                await pubsub.subscribe(inbox_rings.inbox_channel(redis))
                async for item in pubsub.listen():
                    kind = item.get("type")
                    if kind == "message":
                        self.dispatch(item["data"])
                    elif kind == "subscribe":  # confirmed: every ring from now on is heard
                        self._failures = 0
                        self.subscribed.set()
                        self.everyone()
        except TimeoutError:
            if not idle.expired():
                raise
        finally:
            # First, before any await: `add`/`remove` reschedule `_idle` while it is set, and
            # rescheduling a timeout that has exited raises (a 500 on opening a stream).
            self._idle = None
            self.subscribed.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()


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
    # aiohttp-sse's own ping (a task writing to every stream on a timer) is put out of the way: the
    # stream itself sends a heartbeat when it has been quiet for the interval (`_serve`).
    response = EventSourceResponse(headers={"Cache-Control": "no-store"}, ping_interval=NO_PING)
    hub.add(listener)  # before reading anything: no ring can fall between the read and the wait
    try:
        # The first stream of a process subscribes it; a ring before that goes unheard. Inside the
        # `try`: a handler cancelled while it waits still leaves the hub.
        await hub.ready()
        last_id = _last_event_id(request)
        if last_id is None:
            last_id = await pool.fetchval(Q.member_last_message_id, member.account_id)
        else:
            listener.messages = True
        listener.counts = True  # the first event: the counts now
        await response.prepare(request)
        sender = _Sender(request, response)
        heartbeat = app[SETTINGS].inbox_heartbeat_seconds
        await _serve(sender, listener, member.account_id, member.expires, heartbeat, last_id, pool)
    except (ConnectionResetError, TimeoutError):
        if not response.prepared:
            raise
        # the client went away or stalled: nothing more reaches it
    finally:
        hub.remove(listener)
        if response.prepared:
            response.stop_streaming()
    return response


class _Sender:
    """Writes a stream's events, several in one write; a client that does not take them within
    SEND_TIMEOUT is cut off."""

    __slots__ = ("_request", "_response", "out")

    def __init__(self, request: web.Request, response: EventSourceResponse) -> None:
        self._request = request
        self._response = response
        self.out: list[str] = []

    def event(self, data: str, event: str, id: int | None = None, retry: int | None = None) -> None:
        if id is not None:
            self.out.append(f"id: {id}\n")
        self.out.append(f"event: {event}\n")
        # Server-sent events end lines only at CR, LF or CRLF; str.splitlines also breaks at
        # U+2028, U+2029 and others, which JSON leaves raw in a message's text.
        self.out.extend(f"data: {line}\n" for line in _SSE_LINES.split(data))
        if retry is not None:
            self.out.append(f"retry: {retry}\n")
        self.out.append("\n")

    async def flush(self) -> None:
        if not self.out:
            return
        text, self.out = "".join(self.out), []
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await self._response.write(text.encode())
        except TimeoutError:
            if (transport := self._request.transport) is not None:
                transport.abort()
            raise

    def connected(self) -> bool:
        transport = self._request.transport
        return transport is not None and not transport.is_closing()


async def _serve(
    sender: _Sender,
    listener: Listener,
    account_id: int,
    expires: int,
    heartbeat: float,
    last_id: int,
    pool: asyncpg.Pool,
) -> None:
    """Send what is new until the stream ends. A read from PostgreSQL (at the start, after a ring
    that carries no message, after a change of counts, to catch up) sends the messages after
    `last_id` and the counts. A ring that carries a message after `last_id` is sent as it came and
    counted into the counts of the last read (it was not committed when that read ran, or the read
    would have sent it). A carried message at or below `last_id` that this stream did not send
    (committed before a later one that was sent first) is sent without an `id:` so the resume
    point stays, and the counts are read again. The events of one wake go out in one write; a
    stream quiet for `heartbeat` seconds gets a comment (a failed write ends the stream)."""
    floor = last_id  # older messages are not news to this stream
    recent: deque[int] = deque(maxlen=RECENT_IDS)  # the last ids sent
    counts: dict[str, Any] | None = None
    counts_text = ""  # set by the first read, which the stream always starts with (listener.counts)
    first = True
    async for _ in _wakes(listener, expires, heartbeat):
        if listener.closing or not sender.connected():
            return
        carried, listener.carried = listener.carried, []
        if listener.messages or listener.counts:
            listener.messages = listener.counts = False
            read_from = last_id
            news = await inbox.member_news(pool, account_id, last_id, CATCH_UP_LIMIT)
            for message_id, item in news.messages:
                sender.event(item, "message", id=message_id)
                last_id = message_id
                recent.append(message_id)
            if len(news.messages) == CATCH_UP_LIMIT:
                listener.messages = True
            carried = [m for m in carried if m.id <= read_from]  # the read sent the later ones
            counts_text, counts = news.counts, None
        elif not carried:
            sender.out.append(": ping\n\n")  # quiet for the heartbeat interval
            await sender.flush()
            continue
        for message in carried:
            if message.id > last_id and not listener.messages:
                sender.event(message.item, "message", id=message.id)
                last_id = message.id
                recent.append(message.id)
                counts = _counted(counts if counts is not None else json.loads(counts_text), message)
            elif floor < message.id <= last_id and message.id not in recent:
                sender.event(message.item, "message")
                recent.append(message.id)
                listener.counts = True
            # else: sent already, older than the stream, or a pending catch-up read sends it
        if counts is not None:  # encoded once for every message this wake counted
            counts_text = json.dumps(counts)
        if not listener.counts:  # else a read follows at once, with the counts
            sender.event(counts_text, "counts", retry=RETRY_MS if first else None)
            first = False
        await sender.flush()


def _counted(counts: dict[str, Any], message: inbox_rings.Carried) -> dict[str, Any]:
    """The counts with one more new message (unread, unseen, not archived)."""
    counts["unread"] += 1
    counts["unseen"] += 1
    by_category = counts["by_category"]
    by_category[message.category] = by_category.get(message.category, 0) + 1
    return counts


async def _wakes(listener: Listener, expires: int, heartbeat: float) -> AsyncIterator[None]:
    """Yield whenever the listener has something to do, or after `heartbeat` seconds of nothing,
    until its token expires."""
    while True:
        if listener.messages or listener.counts or listener.carried or listener.closing:
            yield
            if listener.closing:
                return
            continue
        remaining = expires - time.time()
        if remaining <= 0:
            return
        listener.wake.clear()
        try:
            async with asyncio.timeout(min(remaining, heartbeat)):
                await listener.wake.wait()
        except TimeoutError:
            if remaining <= heartbeat:
                return
        yield


async def _hub(app: web.Application) -> AsyncIterator[None]:
    hub = app[HUB] = Hub()
    tasks = [
        asyncio.create_task(hub.run(app[REDIS]), name="inbox-hub"),
        asyncio.create_task(HeapFreezer(hub.__len__).run(), name="inbox-heap"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _close_streams(app: web.Application) -> None:
    if HUB in app:
        app[HUB].everyone(closing=True)


def setup(app: web.Application) -> None:
    """The hub starts after the resources (it needs Redis), with the collector policy of a process
    holding many streams (notifier.member.heap), and streams end at shutdown."""
    app.cleanup_ctx.append(_hub)
    app.on_shutdown.append(_close_streams)
