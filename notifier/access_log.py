"""The web access log, cheap on the hot path (issue 16: with the defaults it cost intake a quarter
of its throughput).

Through `logging`, each request built a LogRecord, took the handler's lock, formatted the time and
wrote and flushed the stream: one system call per request. Here a request appends one line,
formatted once, to a buffer, and the buffer goes out in one write about every FLUSH_SECONDS (and at
exit). The lines look exactly as `logging` would write them with `notifier`'s format. That holds
while the access logger ends in the plain stream handler `notifier` sets up; with any other
logging set-up (a file or JSON handler, a filter, pytest's capture) lines go through `logging`
as before, so a configuration is never bypassed.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from typing import IO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # every notifier command's
FLUSH_SECONDS = 0.1  # at most this long between a request and its line reaching the stream
MAX_PENDING = 1000  # lines: written at once beyond this many
CHECK_SECONDS = 1.0  # how often the logging set-up is looked at again

LOGGER = logging.getLogger("aiohttp.access")


def _plain_stream(logger: logging.Logger) -> IO[str] | None:
    """The stream of the one handler `logger`'s lines end in, if that handler is a plain stream
    handler with `LOG_FORMAT`, passes INFO, and nothing on the way filters; else None."""
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        handlers.extend(current.handlers)
        current = current.parent if current.propagate else None
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    formatter = handler.formatter
    if (
        not isinstance(handler, logging.StreamHandler)
        or handler.filters
        or handler.level > logging.INFO
        or type(formatter) is not logging.Formatter
        or formatter._fmt != LOG_FORMAT
        or formatter.datefmt is not None
    ):
        return None
    stream: IO[str] = handler.stream
    return stream


class AccessLog:
    """Buffered access lines for one process (the event loop's thread)."""

    def __init__(self, logger: logging.Logger = LOGGER) -> None:
        self.logger = logger
        self.pending: list[str] = []
        self.flush_handle: asyncio.TimerHandle | None = None
        self.checked = -CHECK_SECONDS
        self.stream: IO[str] | None = None
        self.second = -1
        self.stamp = ""

    def write(self, message: str) -> None:
        """Log `message` at INFO, as `logger.info(message)` would show it."""
        now = time.time()
        if now - self.checked >= CHECK_SECONDS:
            self.checked = now
            stream = _plain_stream(self.logger)
            if stream is not self.stream:
                self.flush()
                self.stream = stream
        if self.stream is None:
            self.logger.info("%s", message)
            return
        second = int(now)
        if second != self.second:
            self.second = second
            self.stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self.pending.append(
            f"{self.stamp},{int((now - second) * 1000):03d} INFO {self.logger.name}: {message}\n"
        )
        if len(self.pending) >= MAX_PENDING:
            self.flush()
        elif self.flush_handle is None:
            try:
                self.flush_handle = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop: write now
                self.flush()

    def flush(self) -> None:
        """Write the pending lines in one go."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if not self.pending or self.stream is None:
            return
        text, self.pending = "".join(self.pending), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: as logging, never fail a request
            pass


ACCESS = AccessLog()
atexit.register(ACCESS.flush)
