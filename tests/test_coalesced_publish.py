"""PUBLISH with shared round trips: concurrent callers' messages all reach Redis, each caller's in
order, in fewer round trips than callers; a failed round trip reaches every caller it carried."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from arq import ArqRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from notifier import coalesced_publish

CHANNEL = "test:coalesced"


async def test_concurrent_callers_share_round_trips_and_every_message_arrives(
    redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Redis(connection_pool=redis.connection_pool)
    trips = 0
    send = coalesced_publish._Line._send

    async def counted(line: Any, messages: Any) -> None:
        nonlocal trips
        trips += 1
        await send(line, messages)

    monkeypatch.setattr(coalesced_publish._Line, "_send", counted)
    pubsub = redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    try:
        callers = 50
        await asyncio.gather(
            *(
                coalesced_publish.publish(client, CHANNEL, [f"{n} a", f"{n} b"], trip_seconds=5)
                for n in range(callers)
            )
        )
        received: list[str] = []
        async with asyncio.timeout(5):
            while len(received) < 2 * callers:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:  # None: the subscription's confirmation, or nothing yet
                    received.append(message["data"].decode())
        assert sorted(received) == sorted(f"{n} {x}" for n in range(callers) for x in "ab")
        for n in range(callers):  # each caller's messages in the order given
            assert received.index(f"{n} a") < received.index(f"{n} b")
        assert trips < callers
        assert trips >= 2  # the first caller alone, then the others together
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


async def test_a_failed_round_trip_reaches_every_caller_it_carried() -> None:
    client = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)  # nothing listens there
    try:
        results = await asyncio.gather(
            *(coalesced_publish.publish(client, CHANNEL, ["x"], trip_seconds=5) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        # The line is free again afterwards: the next caller makes its own round trip (no hang).
        async with asyncio.timeout(5):
            with pytest.raises(RedisConnectionError):
                await coalesced_publish.publish(client, CHANNEL, ["y"], trip_seconds=5)
    finally:
        await client.aclose()


async def test_a_kept_connection_that_broke_is_replaced(redis: ArqRedis) -> None:
    """The line keeps its connection between round trips; when Redis has closed it meanwhile (a
    restart, an idle timeout), the next round trip goes out on a new one, and fails no caller."""
    client = Redis(connection_pool=redis.connection_pool)
    pubsub = redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    try:
        await coalesced_publish.publish(client, CHANNEL, ["before"], trip_seconds=5)
        kept = coalesced_publish._LINES[client]._conn
        assert kept is not None and kept.is_connected
        host, port = kept._writer.get_extra_info("sockname")[:2]
        assert await redis.client_kill(f"{host}:{port}")  # only this connection
        await coalesced_publish.publish(client, CHANNEL, ["after"], trip_seconds=5)
        now = coalesced_publish._LINES[client]._conn  # (the pool may hand out the same object)
        assert now._writer.get_extra_info("sockname")[:2] != (host, port)
        received: list[str] = []
        async with asyncio.timeout(5):
            while len(received) < 2:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    received.append(message["data"].decode())
        assert received == ["before", "after"]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


async def test_every_caller_waits_at_most_trip_seconds() -> None:
    """Against a Redis that never answers, the caller whose round trip is in flight and the callers
    waiting behind it all give up within `trip_seconds` of calling (one bound per caller, not one
    per round trip)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    client = Redis(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
    try:
        started = time.monotonic()
        first = asyncio.create_task(coalesced_publish.publish(client, CHANNEL, ["a"], trip_seconds=0.4))
        await asyncio.sleep(0.2)  # the first round trip hangs; the others wait behind it
        results = await asyncio.gather(
            first,
            *(coalesced_publish.publish(client, CHANNEL, ["b"], trip_seconds=0.4) for _ in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert time.monotonic() - started < 0.2 + 0.4 + 0.15
    finally:
        await client.aclose()
        server.close()
