"""A webhook receiver on loopback for tests and the benchmark: an aiohttp server that verifies
every call's signature with `standardwebhooks` and records what arrived."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifier.embedded import free_port


@dataclass
class Call:
    msg_id: str
    payload: dict[str, Any]
    status: int
    at: float


@dataclass
class Receiver:
    """Answers 204 to a verified call; `fail_next` calls get 500 first; `delay` seconds per call.
    A call whose signature does not verify is 401 and counted in `forged`."""

    secret: str = ""
    fail_next: int = 0
    delay: float = 0.0
    calls: list[Call] = field(default_factory=list)
    forged: int = 0
    in_flight: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered(self) -> list[Call]:
        return [c for c in self.calls if c.status == 204]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.forged += 1
            return web.Response(status=401)
        self.in_flight += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            status = 204
            if self.fail_next > 0:
                self.fail_next -= 1
                status = 500
            self.calls.append(Call(request.headers["webhook-id"], payload, status, time.monotonic()))
            return web.Response(status=status)
        finally:
            self.in_flight -= 1

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
