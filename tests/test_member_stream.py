"""The event stream's doorbell rings that carry the new message: a woken stream sends it and counts
it without reading PostgreSQL back, and still never loses or repeats a message."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from notifier import inbox, inbox_rings
from notifier.app import create_app
from notifier.settings import Settings
from notifier.validation import MAX_BODY
from tests.api_helpers import bearer
from tests.factory import Factory
from tests.test_member_inbox import member_token, open_stream, post_message


def created(row: asyncpg.Record) -> inbox.CreatedMessage:
    return inbox.CreatedMessage(
        row["id"], row["account_id"], False, inbox.new_member_item(row), row["category"]
    )


def test_rings_carry_the_message_and_old_rings_still_parse() -> None:
    item = '{"id": 7, "subject": "a b c"}'
    assert inbox_rings.parse_announcement(f"12 new 7 news {item}".encode()) == inbox_rings.Ring(
        12, True, inbox_rings.Carried(7, "news", item)
    )
    assert inbox_rings.parse_announcement(b"12 new") == inbox_rings.Ring(12, True, None)
    assert inbox_rings.parse_announcement("12 counts") == inbox_rings.Ring(12, False, None)
    for bad in ("12 new x news {}", "12 new 7 news", "12 new 7 news []", "x new", "12 old", "12 new 7  {}"):
        assert inbox_rings.parse_announcement(bad) is None, bad


def test_a_long_message_or_a_batch_rings_without_its_item() -> None:
    short = inbox.CreatedMessage(1, 10, False, '{"id": 1}', "news")
    long = inbox.CreatedMessage(
        2, 10, False, '{"id": 2, "body": "' + "x" * inbox_rings.RING_ITEM_MAX + '"}', "news"
    )
    batch = [inbox.CreatedMessage(3, 11, False), inbox.CreatedMessage(4, 11, False)]
    assert inbox_rings._rings([short, long, *batch]) == ['10 new 1 news {"id": 1}', "10 new", "11 new"]


async def test_a_carried_message_is_sent_and_counted_without_a_read(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = await factory.account(external_id="ann")
    await factory.message(ann, category="events")
    token = await member_token(client, pool, "ann")
    headers = await bearer(pool, "messages")
    reads = 0
    member_news = inbox.member_news

    async def counted_read(*args: Any) -> inbox.MemberNews:
        nonlocal reads
        reads += 1
        return await member_news(*args)

    monkeypatch.setattr(inbox, "member_news", counted_read)
    async with open_stream(client, token) as events:
        event, counts, _ = await events.next()
        assert (event, counts["unread"], counts["by_category"]) == ("counts", 1, {"events": 1})
        for n, category in enumerate(("news", "news", "events"), start=2):
            sent = await post_message(
                client, headers, "ann", category=category, subject=f"S{n}", url="https://e.org/"
            )
            event, data, ident = await events.next()
            assert (event, data["id"], ident, data["subject"], data["url"], data["read_at"]) == (
                "message",
                sent,
                str(sent),
                f"S{n}",
                "https://e.org/",
                None,
            )
            event, counts, _ = await events.next()
            assert event == "counts" and counts["unread"] == counts["unseen"] == n
        assert counts["by_category"] == {"events": 2, "news": 2}
        assert reads == 1  # the first counts; every message came with its ring
        # The item the ring carried is the one a read gives.
        listed = await client.get(
            "/member/v1/messages", params={"limit": "1"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert (await listed.json())["items"][0] == data


async def test_a_late_ring_is_sent_once_without_moving_the_resume_point(
    client: TestClient[Any, Any], pool: asyncpg.Pool, redis: Any, factory: Factory
) -> None:
    """Two messages committed in one order and announced in the other: the later ring's message is
    sent without an id (a reconnect resumes after the newest), its ring once more changes nothing,
    and the counts are read again."""
    ann = await factory.account(external_id="ann")
    token = await member_token(client, pool, "ann")
    async with open_stream(client, token) as events:
        assert (await events.next())[0] == "counts"
        older = await factory.message(ann, subject="Older")
        newer = await factory.message(ann, subject="Newer")
        await inbox_rings.announce_created(redis, [created(newer)])
        event, data, ident = await events.next()
        assert (event, data["subject"], ident) == ("message", "Newer", str(newer["id"]))
        event, counts, _ = await events.next()
        assert (event, counts["unread"]) == ("counts", 1)  # the newer one, counted from its ring
        await inbox_rings.announce_created(redis, [created(older)])
        event, data, ident = await events.next()
        assert (event, data["subject"], ident) == ("message", "Older", None)
        event, counts, _ = await events.next()
        assert (event, counts["unread"]) == ("counts", 2)  # read back
        await inbox_rings.announce_created(redis, [created(older), created(newer)])
        event, counts, _ = await events.next()
        assert (event, counts["unread"]) == ("counts", 2)  # nothing sent twice


async def test_a_message_too_long_to_carry_is_read_back(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory
) -> None:
    await factory.account(external_id="ann")
    token = await member_token(client, pool, "ann")
    headers = await bearer(pool, "messages")
    assert MAX_BODY > inbox_rings.RING_ITEM_MAX
    body = "y" * (inbox_rings.RING_ITEM_MAX + 1)
    async with open_stream(client, token) as events:
        assert (await events.next())[0] == "counts"
        sent = await post_message(client, headers, "ann", body=body)
        event, data, ident = await events.next()
        assert (event, data["id"], data["body"], ident) == ("message", sent, body, str(sent))
        event, counts, _ = await events.next()
        assert (event, counts["unread"]) == ("counts", 1)


async def test_a_page_and_its_account_are_one_statement(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The member's listing and the API's resolve the account inside the page's statement; an
    unknown or erased account is still a 401 (member) or a 404 (API)."""
    ann = await factory.account(external_id="ann")
    for n in range(3):
        await factory.message(ann, subject=f"S{n}")
    token = await member_token(client, pool, "ann")
    headers = await bearer(pool, "messages")
    statements = 0
    for name in ("fetch", "fetchrow", "fetchval", "execute"):
        original = getattr(asyncpg.Pool, name)

        def counting(original: Any) -> Any:
            async def call(self: asyncpg.Pool, *args: Any, **kwargs: Any) -> Any:
                nonlocal statements
                statements += 1
                return await original(self, *args, **kwargs)

            return call

        monkeypatch.setattr(asyncpg.Pool, name, counting(original))
    member = {"Authorization": f"Bearer {token}"}
    for url, auth_headers in (("/member/v1/messages", member), ("/v1/accounts/ann/messages", headers)):
        before = statements
        resp = await client.get(url, params={"limit": "2"}, headers=auth_headers)
        assert resp.status == 200
        page = await resp.json()
        assert [m["subject"] for m in page["items"]] == ["S2", "S1"] and page["next_cursor"]
        if url.startswith("/member"):
            assert statements - before == 1, url
    resp = await client.get("/v1/accounts/bob/messages", headers=headers)
    assert resp.status == 404
    monkeypatch.undo()
    await pool.execute("DELETE FROM accounts WHERE external_id = 'ann'")
    assert (await client.get("/member/v1/messages", headers=member)).status == 401
    # A new account of the same external id, registered after the token (beyond the clock skew).
    await factory.account(external_id="ann", created_at=datetime.now(UTC) + timedelta(minutes=10))
    assert (await client.get("/member/v1/messages", headers=member)).status == 401


async def test_heartbeats_go_only_to_quiet_streams(
    settings: Settings, pool: asyncpg.Pool, redis: Any, factory: Factory
) -> None:
    """A stream that had an event within the heartbeat interval gets no heartbeat; a quiet one
    gets one each interval. A message and its counts come in one write."""
    await factory.account(external_id="ann")
    app = create_app(settings.model_copy(update={"inbox_heartbeat_seconds": 0.5}))
    async with TestClient(TestServer(app)) as client:
        token = await member_token(client, pool, "ann")
        headers = await bearer(pool, "messages")
        async with open_stream(client, token) as events:
            assert (await events.next())[0] == "counts"
            chunks: list[bytes] = []

            async def read() -> None:
                async for chunk in events.resp.content.iter_any():
                    chunks.append(chunk)

            reader = asyncio.create_task(read())
            for n in range(8):  # busy: an event every 0.2 s for 1.6 s
                await post_message(client, headers, "ann", subject=f"S{n}")
                await asyncio.sleep(0.2)
            busy = b"".join(chunks)
            await asyncio.sleep(1.3)  # then quiet
            reader.cancel()
            quiet = b"".join(chunks)[len(busy) :]
    assert busy.count(b"event: message") == 8 and b": ping" not in busy
    assert quiet.count(b": ping") >= 2
    assert any(b"event: message" in c and b"event: counts" in c for c in chunks)


def test_a_stream_holds_a_bounded_number_of_carried_messages() -> None:
    """A stream that is not reading (a slow client) keeps at most CATCH_UP_LIMIT carried messages;
    past that it reads what is new from PostgreSQL."""
    from notifier.member.stream import CATCH_UP_LIMIT, Listener

    listener = Listener(1)
    for n in range(CATCH_UP_LIMIT + 5):
        listener.ring(True, inbox_rings.Carried(n + 1, "news", "{}"))
    assert len(listener.carried) == CATCH_UP_LIMIT and listener.messages and listener.counts


class _Cycle:
    """Garbage only the cyclic collector frees: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


def test_a_process_holding_many_streams_keeps_them_out_of_full_collections() -> None:
    """From `from_streams` open streams on, what is alive is frozen (the collector's passes skip
    it, frozen cycles are not freed); the full collection due `full_every` later frees them, and
    one runs too when the process holds fewer than half as many streams again."""
    import gc
    import weakref

    from notifier.member.heap import HeapFreezer

    streams = 9
    freezer = HeapFreezer(lambda: streams, from_streams=10, full_every=600)
    frozen_at_start = gc.get_freeze_count()
    try:
        cycle = _Cycle()
        alive = weakref.ref(cycle)
        freezer.step(0)  # few streams: nothing frozen
        del cycle
        gc.collect()
        assert alive() is None and gc.get_freeze_count() == frozen_at_start

        streams = 10
        cycle = _Cycle()
        alive = weakref.ref(cycle)
        freezer.step(1)  # many: frozen
        del cycle
        gc.collect()
        assert alive() is not None and gc.get_freeze_count() > frozen_at_start
        freezer.step(600)  # not yet due
        gc.collect()
        assert alive() is not None
        freezer.step(601)  # due: the full collection frees the frozen cycle, freezing goes on
        assert alive() is None

        streams = 7  # between half and all of from_streams: still freezing, after the next full pass too
        freezer.step(1201)
        cycle = _Cycle()
        alive = weakref.ref(cycle)
        freezer.step(1202)
        del cycle
        gc.collect()
        assert alive() is not None

        freezer.step(1203)
        streams = 4  # fewer than half: a full collection, and no more freezing
        freezer.step(1204)
        assert alive() is None
        cycle = _Cycle()
        alive = weakref.ref(cycle)
        streams = 9
        freezer.step(1205)
        del cycle
        gc.collect()
        assert alive() is None
    finally:
        gc.unfreeze()


async def test_the_doorbell_rings_only_in_its_redis_database(redis: Any) -> None:
    """Redis pub/sub ignores database numbers: the channel carries the database's, so another
    deployment on another database of the same server hears none of this one's rings."""
    from redis.asyncio import Redis

    kwargs = redis.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    other = Redis(host=kwargs["host"], port=kwargs["port"], db=(db + 1) % 16)
    here, there = redis.pubsub(), other.pubsub()
    try:
        assert inbox_rings.inbox_channel(redis) != inbox_rings.inbox_channel(other)
        for pubsub, client in ((here, redis), (there, other)):
            await pubsub.subscribe(inbox_rings.inbox_channel(client))
            assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # subscribed
        await inbox_rings.announce_created(redis, [inbox.CreatedMessage(7, 12, False, '{"id": 7}', "news")])
        async with asyncio.timeout(5):
            while (heard := await here.get_message(ignore_subscribe_messages=True, timeout=1)) is None:
                pass
        assert heard["data"] == b'12 new 7 news {"id": 7}'
        assert await there.get_message(ignore_subscribe_messages=True, timeout=0.5) is None
    finally:
        for pubsub in (here, there):
            await pubsub.aclose()
        await other.aclose()


async def _subscribers(redis: Any) -> int:
    """How many connections (any process's) are subscribed to this database's doorbell channel."""
    [(_, count)] = await redis.pubsub_numsub(inbox_rings.inbox_channel(redis))
    return int(count)


async def _until(check: Any, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.05)


async def test_a_process_subscribes_only_while_it_holds_a_stream(
    settings: Settings, pool: asyncpg.Pool, redis: Any, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A web process without streams does not hear the doorbell (intake's processes would parse
    every ring); its first stream subscribes it, and still gets every message posted after it
    opened; `UNSUBSCRIBE_AFTER` seconds after its last stream it leaves the channel again."""
    from notifier.member import stream

    monkeypatch.setattr(stream, "UNSUBSCRIBE_AFTER", 0.5)
    await factory.account(external_id="ann")
    async with TestClient(TestServer(create_app(settings))) as client:
        token = await member_token(client, pool, "ann")
        headers = await bearer(pool, "messages")
        await post_message(client, headers, "ann", subject="Before")  # rings, heard by no one
        await asyncio.sleep(0.3)
        assert await _subscribers(redis) == 0
        for n in range(2):  # the second time after the process left the channel
            async with open_stream(client, token) as events:
                event, counts, _ = await events.next()
                assert (event, counts["unread"]) == ("counts", n + 1)
                assert await _subscribers(redis) == 1
                sent = await post_message(client, headers, "ann", subject=f"S{n}")
                event, data, ident = await events.next()
                assert (event, data["subject"], ident) == ("message", f"S{n}", str(sent))
            await _until(lambda: _no_subscribers(redis))


async def _no_subscribers(redis: Any) -> bool:
    return await _subscribers(redis) == 0


async def test_a_stream_that_read_before_the_subscription_reads_again(redis: Any) -> None:
    """A stream that read PostgreSQL before Redis confirmed the subscription may have missed a
    ring meanwhile: the confirmation tells it to read again; rings after it reach it."""
    from notifier.member.stream import Hub, Listener

    hub = Hub(linger=0.2)
    runner = asyncio.create_task(hub.run(redis))
    try:
        listener = Listener(12)
        hub.add(listener)  # as a stream does; its first read then clears what it had to read
        assert not (listener.messages or listener.counts or hub.subscribed.is_set())
        async with asyncio.timeout(5):
            await hub.subscribed.wait()
        assert hub.subscribed.is_set() and listener.messages and listener.counts
        listener.messages = listener.counts = False
        await inbox_rings.announce_created(redis, [inbox.CreatedMessage(7, 12, False, '{"id": 7}', "news")])
        async with asyncio.timeout(5):
            while not listener.carried:
                await asyncio.sleep(0.01)
        assert listener.carried == [inbox_rings.Carried(7, "news", '{"id": 7}')]
        hub.remove(listener)
        await _until(lambda: _no_subscribers(redis))
        assert not hub.subscribed.is_set()
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_a_stream_catches_up_after_the_subscription_was_lost(
    client: TestClient[Any, Any], pool: asyncpg.Pool, redis: Any, factory: Factory
) -> None:
    """Redis drops the process's subscription (a restart, say) while it holds a stream: a message
    posted before the subscription is back (its ring heard by no one) still reaches the stream,
    read from PostgreSQL once the new subscription is confirmed."""
    await factory.account(external_id="ann")
    token = await member_token(client, pool, "ann")
    headers = await bearer(pool, "messages")
    db = str(redis.connection_pool.connection_kwargs.get("db", 0))
    async with open_stream(client, token) as events:
        assert (await events.next())[0] == "counts"
        ours = [c for c in await redis.client_list(_type="pubsub") if str(c.get("db")) == db]
        assert len(ours) == 1  # the hub's, subscribed for this stream
        await redis.client_kill(ours[0]["addr"])
        sent = await post_message(client, headers, "ann", subject="While away")
        async with asyncio.timeout(10):
            event, data, ident = await events.next()
        assert (event, data["subject"], ident) == ("message", "While away", str(sent))
        await _until(lambda: _subscribed_again(redis))


async def _subscribed_again(redis: Any) -> bool:
    return await _subscribers(redis) == 1


async def test_a_message_with_unicode_line_separators_reaches_the_stream_whole(
    client: TestClient[Any, Any], pool: asyncpg.Pool, factory: Factory
) -> None:
    """U+2028 and U+2029 stay raw in JSON, and server-sent events break lines only at CR
    and LF: an event's data must not be cut at them (str.splitlines would, and the member's page
    would get broken JSON for that message)."""
    await factory.account(external_id="ann")
    token = await member_token(client, pool, "ann")
    headers = await bearer(pool, "messages")
    body = "one\u2028two\u2029three"
    async with open_stream(client, token) as events:
        event, _, _ = await events.next()
        assert event == "counts"
        sent = await post_message(client, headers, "ann", body=body)
        event, data, _ = await events.next()
        assert (event, data["id"], data["body"]) == ("message", sent, body)
