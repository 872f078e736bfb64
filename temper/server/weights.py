"""Weight updates while serving, without a response that mixes old and new weights.

Every request that runs a model (generation, scoring) holds that model's WeightGate shared for
as long as it runs; a weight update holds it exclusively: it waits for the running requests to
finish and holds new ones back until the new weights are in, so each response comes from one
weight version (the one it reports). /pause holds every new request back until /resume (vLLM's
`keep`), optionally after waiting for the running ones (`wait`) or aborting them (`abort`).

Not the loading itself (the engines' load_weights) and not the HTTP routes (routes_rl.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class WeightGate:
    """A readers-writer lock over one model's weights, writers first (an update is not starved
    by a steady stream of requests). Releasing never waits, so a request's cleanup can release
    its hold from any `finally`, cancelled or not."""

    def __init__(self, frozen: bool = False):
        self.frozen = frozen
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self._changed = asyncio.Event()

    @property
    def in_use(self) -> int:
        return self._readers

    async def _until(self, free) -> None:
        # Check and clear run in one step of the event loop: a release between them is seen.
        while not free():
            self._changed.clear()
            await self._changed.wait()

    async def acquire_shared(self, holder) -> None:
        """Hold the weights shared; `holder.holding` turns True in the same step as the hold
        is taken, so a caller cancelled at any point knows whether it must release."""
        await self._until(lambda: not self._writing and not self._writers_waiting)
        self._readers += 1
        holder.holding = True

    def release_shared(self, holder) -> None:
        if holder.holding:
            holder.holding = False
            self._readers -= 1
            self._changed.set()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._writers_waiting += 1
        try:
            await self._until(lambda: not self._writing and self._readers == 0)
        finally:
            self._writers_waiting -= 1
            self._changed.set()
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
            self._changed.set()


class Pause:
    """The server-wide pause of /pause and /resume: while paused, requests wait to start."""

    def __init__(self) -> None:
        self._running = asyncio.Event()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def wait_running(self) -> None:
        await self._running.wait()
