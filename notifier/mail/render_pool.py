"""Rendering marketing templates away from the web process's event loop.

A newsletter's templates are marketing's code. The web process (create, edit, preview, test-send,
send, the console's live preview) never runs them itself: `RenderPool.render` hands the draft to a
small pool of child processes and awaits the answer, so `/healthz` and every other request keep
being served while a template runs. Inside the child the sandbox's budget (notifier.sandbox:
steps, characters, CPU time) stops a runaway template with a TemplateProblem; should a child still
not answer within `timeout` seconds (a construct the budget missed), its processes are killed,
the pool is replaced and the draft is a TemplateProblem too. The children run at a lower CPU
priority (nice 10), so the web process's event loop wins the CPU when both want it. Either way the caller gets an answer
within `timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

from notifier.brand import BrandCache
from notifier.mail.newsletter_render import Draft, Rendered, TemplateProblem, field_problems, prepare
from notifier.settings import Settings

log = logging.getLogger("notifier.render_pool")

PROCESSES = 2
TIMEOUT_SECONDS = 10.0
# The children start from a fork server that has imported the renderer once: a new child costs
# a fork, not a Python start-up (and forking the web process itself, with its threads and
# sockets, is avoided).
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["notifier.newsletter_render"])


def _lower_priority() -> None:
    """In each child: yield the CPU to the web process, whose event loop answers requests."""
    os.nice(10)


def _render(settings: Settings, draft: Draft, personal: Mapping[str, Any]) -> Rendered:
    """In the child: the draft rendered for `personal` (raises TemplateProblem)."""
    return prepare(settings, draft).render(personal)


def _problems(settings: Settings, draft: Draft) -> dict[str, str]:
    """In the child: every field of the draft that does not render, as field -> message."""
    return field_problems(settings, draft)


class RenderPool:
    """Child processes that render newsletters; one per web process (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        processes: int = PROCESSES,
        timeout: float = TIMEOUT_SECONDS,
        brand: BrandCache | None = None,
    ) -> None:
        self.settings = settings
        self.brand = brand or BrandCache(settings)
        self.processes = processes
        self.timeout = timeout
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.processes, mp_context=_CONTEXT, initializer=_lower_priority
            )
        return self._executor

    async def render(self, draft: Draft, personal: Mapping[str, Any]) -> Rendered:
        """The draft rendered for `personal`, off the event loop. Raises TemplateProblem when it
        does not render, or does not within its budget."""
        rendered: Rendered = await self._call(_render, self.settings, self._branded(draft), dict(personal))
        return rendered

    async def problems(self, draft: Draft) -> dict[str, str]:
        """Every field of the draft that does not render for the sample member (subject and body
        at once, within the budget), off the event loop; empty when it renders."""
        found: dict[str, str] = await self._call(_problems, self.settings, self._branded(draft))
        return found

    def _branded(self, draft: Draft) -> Draft:
        """The draft in the house style in force (a preview shows what members will get)."""
        return draft if draft.brand is not None else replace(draft, brand=self.brand.current)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        for attempt in (1, 2):
            executor = self._pool()
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(executor, fn, *args)
            try:
                return await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                log.warning("a newsletter render took over %.1f s; its process is killed", self.timeout)
                self._kill(executor)
                raise TemplateProblem(
                    "body", f"the template takes more than {self.timeout:g} s to render"
                ) from None
            except BrokenProcessPool:
                # Another render's timeout killed this pool under us: the draft is not to blame.
                self._kill(executor)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _kill(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
        # ProcessPoolExecutor cannot cancel a running call: end its processes (the pool is then
        # broken and replaced on the next render).
        processes = getattr(executor, "_processes", None) or {}
        for process in list(processes.values()):
            process.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the child processes (idempotent)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)
