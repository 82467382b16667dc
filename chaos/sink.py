"""A counting SMTP sink in the chaos process's event loop: it counts every accepted message per
recipient, and can be told to misbehave (answer 451 for a while, reject some recipients with 550,
accept connections and never answer)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

from notifier.embedded import free_port


@dataclass
class CountingSink:
    port: int = field(default_factory=free_port)
    received: Counter[str] = field(default_factory=Counter)
    message_ids: dict[str, set[bytes]] = field(default_factory=dict)  # distinct Message-IDs per recipient
    accepted_at: dict[str, list[float]] = field(
        default_factory=dict
    )  # monotonic time of each 250 per recipient
    cut_short: int = 0  # DATA whose connection closed before the final "." (not delivered)
    # Misbehaviour, changed by scenarios while the sink runs.
    busy_until: float = 0.0  # monotonic time until which connections get 421 and are closed
    tempfail_until: float = 0.0  # monotonic time until which DATA answers 451
    busy: int = 0
    reject: frozenset[str] = frozenset()  # recipients refused with 550 5.1.1
    hang: bool = False  # accept connections and never answer
    tempfailed: int = 0
    rejected: int = 0
    hung: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=512)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def drop_connections(self) -> None:
        """Close every open connection (hung ones included), as a restarted server would."""
        for writer in list(self._writers):
            writer.close()

    @property
    def total(self) -> int:
        return sum(self.received.values())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.hang:
                self.hung += 1
                await reader.read()  # until the client gives up and closes
                return
            if time.monotonic() < self.busy_until:
                self.busy += 1
                writer.write(b"421 4.3.2 too busy, try again later\r\n")
                await writer.drain()
                return
            writer.write(b"220 chaos-sink ESMTP\r\n")
            rcpts: list[str] = []
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-chaos-sink\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n")
                elif verb == b"MAIL":
                    rcpts = []
                    writer.write(b"250 OK\r\n")
                elif verb == b"RCPT":
                    address = line.split(b":", 1)[1].strip().split(b" ")[0].strip(b"<>").decode()
                    if address in self.reject:
                        self.rejected += 1
                        writer.write(b"550 5.1.1 <" + address.encode() + b">: no such user here\r\n")
                    else:
                        rcpts.append(address)
                        writer.write(b"250 OK\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    message_id = b""
                    while (data := await reader.readline()) not in (b".\r\n", b""):
                        if not message_id and data[:11].lower() == b"message-id:":
                            message_id = data[11:].strip()
                    if not data:
                        # The client went away before the final ".": like any real server, the
                        # sink drops the unterminated message (a worker killed mid-DATA).
                        self.cut_short += 1
                        return
                    if time.monotonic() < self.tempfail_until:
                        self.tempfailed += 1
                        writer.write(b"451 4.3.0 try again later\r\n")
                    else:
                        now = time.monotonic()
                        for address in rcpts:
                            self.received[address] += 1
                            self.message_ids.setdefault(address, set()).add(message_id)
                            self.accepted_at.setdefault(address, []).append(now)
                        writer.write(b"250 OK queued\r\n")
                    rcpts = []
                elif verb == b"RSET":
                    rcpts = []
                    writer.write(b"250 OK\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"250 OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
