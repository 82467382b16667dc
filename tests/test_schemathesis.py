"""Schemathesis over `/openapi.json`: every operation gets generated requests, valid and not;
no answer is a 5xx, and every answer matches the document (status, content type, headers,
schema). The normal suite runs ten cases per operation; the chaos suite runs thousands
(`NOTIFIER_FUZZ_EXAMPLES`, see docs/reliability.md). Left out: schemathesis's "schema-valid data
is accepted" check, because the document describes shapes, not rules such as "an e-mail address"
or "an account that exists", so a schema-valid request may rightly get a 422 or 404.

Schemathesis calls the API synchronously (requests), so the application runs on a real port in
a thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.specs.openapi.checks import positive_data_acceptance

from notifier.api import auth
from notifier.app import create_app
from notifier.embedded import free_port
from notifier.settings import Settings

EXAMPLES = int(os.environ.get("NOTIFIER_FUZZ_EXAMPLES", "10"))
# `POST /v1/inbound/mime` takes a raw message: fuzz it with text bodies.
schemathesis.serializer.alias("message/rfc822", "text/plain")


@dataclass
class LiveApp:
    """The application served on 127.0.0.1 from a thread; `stop()` closes it."""

    settings: Settings
    port: int = field(default_factory=free_port)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    headers: dict[str, str] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.run(self._start())

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self._runner = web.AppRunner(create_app(self.settings))
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            _, key = await auth.create_key(conn, "fuzz", ["admin"])
            await conn.execute(
                "INSERT INTO accounts (external_id, email, name) VALUES ('m-1', 'm1@example.com', 'M')"
                " ON CONFLICT DO NOTHING"
            )
        finally:
            await conn.close()
        self.headers = {"Authorization": f"Bearer {key}"}

    def stop(self) -> None:
        if self._runner is not None:
            self.run(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def live(database: str, services: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    app = LiveApp(
        Settings(
            env="test",
            database_url=database,
            redis_url=services.redis_url,
            secret_key=SecretStr("fuzz-secret-key-not-for-production"),
            public_url="https://notifier.test",
            data_dir=tmp_path_factory.mktemp("fuzz"),
            api_rate_limit=0,
            db_pool_min=1,
            db_pool_max=4,
            smtp_port=free_port(),  # nothing listens: test sends fail in the worker, not here
        )
    )
    app.start()
    yield app
    app.stop()


def test_no_5xx_and_answers_match_the_document(live: LiveApp) -> None:
    api = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    failures: list[str] = []
    operations = 0
    cases = 0
    for result in api.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err raises, as it should
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def run(case: Any) -> None:
            nonlocal cases
            cases += 1
            case.call_and_validate(
                base_url=live.url, headers=live.headers, excluded_checks=[positive_data_acceptance]
            )

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # every operation runs; failures reported together
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:1500]}")
    print(f"schemathesis: {cases} cases over {operations} operations")
    assert operations >= 30
    assert not failures, "\n\n".join(failures)
