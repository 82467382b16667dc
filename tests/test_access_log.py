"""The access log: one preformatted line per request, written in batches, looking exactly as
`logging` would write it; any other logging set-up still gets its lines through `logging`."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Iterator

import pytest

from notifier import access_log
from notifier.access_log import LOG_FORMAT, AccessLog

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO notifier\.test\.access: (.*)$")


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, CountingStream]]:
    """A logger set up as `notifier` sets up logging (one plain stream handler, LOG_FORMAT)."""
    stream = CountingStream()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log = logging.Logger("notifier.test.access", logging.INFO)  # out of pytest's reach (its capture)
    log.addHandler(handler)
    yield log, stream


async def test_lines_are_buffered_and_written_in_one_go(logger) -> None:
    log, stream = logger
    access = AccessLog(log)
    for i in range(50):
        access.write(f'127.0.0.1 "POST /v1/accounts/a{i}/messages" 201 312 1.{i}ms')
    assert stream.getvalue() == ""  # nothing on the hot path
    await asyncio.sleep(access_log.FLUSH_SECONDS * 2)
    lines = stream.getvalue().splitlines()
    assert stream.writes == 1 and len(lines) == 50
    assert [LINE.match(line)[1] for line in lines] == [  # type: ignore[index]
        f'127.0.0.1 "POST /v1/accounts/a{i}/messages" 201 312 1.{i}ms' for i in range(50)
    ]


async def test_a_line_looks_as_logging_writes_it(logger) -> None:
    log, stream = logger
    log.info("%s", "the same message")
    access = AccessLog(log)
    access.write("the same message")
    access.flush()
    by_logging, by_access_log = stream.getvalue().splitlines()
    assert LINE.match(by_logging) and LINE.match(by_access_log)
    assert by_logging[23:] == by_access_log[23:]  # all but the milliseconds


async def test_many_lines_are_written_before_the_timer(logger, monkeypatch) -> None:
    log, stream = logger
    monkeypatch.setattr(access_log, "MAX_PENDING", 10)
    access = AccessLog(log)
    for i in range(25):
        access.write(f"line {i}")
    assert stream.writes == 2 and len(stream.getvalue().splitlines()) == 20
    access.flush()
    assert len(stream.getvalue().splitlines()) == 25


async def test_any_other_logging_set_up_gets_its_lines_through_logging(logger) -> None:
    log, stream = logger
    seen: list[str] = []

    class Keep(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record.getMessage())
            return True

    log.addFilter(Keep())
    try:
        access = AccessLog(log)
        access.write("through logging")
        assert seen == ["through logging"] and "through logging" in stream.getvalue()  # at once
    finally:
        log.filters.clear()
    log.handlers[0].setFormatter(logging.Formatter("%(message)s"))  # another format
    access = AccessLog(log)
    access.write("plain")
    assert stream.getvalue().endswith("\nplain\n")
