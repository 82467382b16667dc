"""The HTTP side of webhooks out: one aiohttp client session per worker process that posts a
signed delivery with a timeout, never follows a redirect, and connects only to addresses
notifier.netguard allows (checked on every address a name resolves to, at connection time).
"""

from __future__ import annotations

import errno
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from notifier import netguard
from notifier.settings import Settings
from notifier.webhooks import Posted


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, and refuses (OSError) a name with any address that is
    not public: a connection never reaches a private, loopback or link-local address."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            why = netguard.address_refused(result["host"])
            if why is not None:
                # errno and text, so aiohttp's connection error carries the reason.
                raise OSError(errno.EACCES, f"{host}: {why}; webhooks go only to public addresses")
        return results

    async def close(self) -> None:
        await self._inner.close()


class HTTPPoster:
    """`webhooks.Poster` over aiohttp: opened lazily, closed with `close()`."""

    def __init__(self, settings: Settings) -> None:
        self.timeout = aiohttp.ClientTimeout(total=settings.webhooks_timeout)
        self.allow_private = settings.webhooks_allow_private
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            kw: dict[str, Any] = {"limit": 100}
            if not self.allow_private:
                kw["resolver"] = GuardedResolver()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(**kw), timeout=self.timeout, trust_env=False
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Posted:
        """POST `body`; the receiver's status, or None and a one-line error (timeout, refused
        destination, connection error). A redirect is an answer like any non-2xx: not followed."""
        host = urlsplit(url).hostname or ""
        if not self.allow_private:
            # aiohttp does not resolve (so does not ask the resolver about) an IP literal.
            why = netguard.address_refused(host)
            if why is not None and "not an IP address" not in why:
                return Posted(None, f"refused: {why}")
        try:
            async with self._open().post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                return Posted(resp.status)
        except TimeoutError:
            return Posted(None, f"no answer within {self.timeout.total:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return Posted(None, f"{type(exc).__name__}: {exc}"[:300])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
