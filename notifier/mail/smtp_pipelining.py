"""SMTP command pipelining (RFC 2920) on top of aiosmtplib: the small part aiosmtplib lacks.

aiosmtplib reads one reply per command: its protocol parses the first complete reply of what
arrived and ignores data that arrives while that reply waits to be picked up, so several replies
in one read (or a second read before the first reply was taken) lose replies. `ReplyQueue` is its
protocol with that one thing changed: every complete reply that arrives is parsed and queued in
order, whether the replies come split across reads, byte by byte, or many in one read; each
`read_response` takes the next. Everything else (connecting, EHLO, STARTTLS, AUTH, RSET, QUIT) is
aiosmtplib's own, and a command sent alone still reads its one reply.

`PipeliningSMTP` is aiosmtplib's client that puts a `ReplyQueue` on its connection once it is
established, and adds `pipeline(data, count)`: write a group of commands at once, then read
`count` replies.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import aiosmtplib
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.response import SMTPResponse


class ReplyQueue(SMTPProtocol):
    """aiosmtplib's protocol keeping every reply that arrives, in order (see the module)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: aiosmtplib.SMTP) -> None:
        super().__init__(loop=loop, connection_lost_callback=client._on_connection_lost)
        self._replies: deque[SMTPResponse] = deque()
        self._failure: aiosmtplib.SMTPException | None = None
        self._arrived: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._buffer.extend(data)
        try:
            while (reply := self._read_response_from_buffer()) is not None:
                self._replies.append(reply)
        except aiosmtplib.SMTPResponseException as exc:  # a garbled line: nothing after it can be trusted
            self._fail(exc)
        if len(self._buffer) > MAX_RESPONSE_LENGTH:
            self._fail(aiosmtplib.SMTPResponseException(-1, "Response too long"))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected("Connection lost"))
        self._wake()
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        self._wake()
        return False  # close the transport

    def _fail(self, exc: aiosmtplib.SMTPException) -> None:
        if self._failure is None:
            self._failure = exc
            del self._buffer[:]

    def _wake(self) -> None:
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    def drop_unsolicited(self) -> None:
        """Forget replies nobody asked for (every command's replies are read before the next is
        written, so what is queued now came unasked, such as a 421 before the server hangs up):
        they must not be taken for the next command's."""
        self._replies.clear()

    async def execute_command(self, *args: bytes, timeout: float | None = None) -> SMTPResponse:  # noqa: ASYNC109 (its signature)
        """aiosmtplib's, after `drop_unsolicited`."""
        self.drop_unsolicited()
        return await super().execute_command(*args, timeout=timeout)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:  # noqa: ASYNC109 (its signature)
        """The next reply, in the order the server sent them. Raises SMTPServerDisconnected
        (after QUIT: a 221 instead), SMTPReadTimeoutError, or SMTPResponseException for a garbled
        reply; replies queued before the failure are still returned first."""
        while not self._replies:
            if self._failure is not None:
                if self._quit_sent:
                    return SMTPResponse(221, "")
                raise type(self._failure)(*self._failure.args)
            self._arrived = self._loop.create_future()
            try:
                await asyncio.wait_for(self._arrived, timeout)
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc
            finally:
                self._arrived = None
        return self._replies.popleft()


class PipeliningSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client with a `ReplyQueue` on its connection and `pipeline`."""

    async def connect(self, **kwargs: Any) -> SMTPResponse:
        """Connect (greeting, EHLO, STARTTLS and AUTH as configured, all aiosmtplib's), then
        read the connection's replies through a `ReplyQueue`."""
        response = await super().connect(**kwargs)
        old, transport = self.protocol, self.transport
        if old is None or transport is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost while connecting")
        queue = ReplyQueue(asyncio.get_running_loop(), self)
        queue.connection_made(transport)
        queue._buffer = old._buffer  # nothing is expected there between commands; keep it anyway
        transport.set_protocol(queue)
        self.protocol = queue
        return response

    async def pipeline(self, data: bytes, count: int) -> list[SMTPResponse]:
        """Write `data` (a group of commands, or a message's content followed by commands, each
        CRLF-terminated and checked by the caller) in one write, then read `count` replies in
        order. Raises SMTPServerDisconnected, SMTPReadTimeoutError or SMTPResponseException like
        a single command; the replies read before a failure are lost with the connection."""
        protocol = self.protocol
        if not isinstance(protocol, ReplyQueue) or protocol._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        async with protocol._command_lock:
            protocol.drop_unsolicited()
            protocol.write(data)
            return [await protocol.read_response(timeout=self.timeout) for _ in range(count)]
