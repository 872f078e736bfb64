"""BackgroundLoop: an asyncio event loop on its own daemon thread, so that synchronous code (a
PyTorch training loop, TRL's reward functions, a notebook cell) can drive the async transports.

One loop per Rollouts object, for its whole life: engines bind their scheduler and HTTP
clients their connection pool to the loop they first run on, so everything of one transport
must run on the same loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self, name: str = "temper-rollouts"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for its result (Ctrl-C cancels it)."""
        if self._closed:
            coro.close()
            raise RuntimeError("this Rollouts object is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("called from inside the rollouts loop: await the transport's coroutine instead")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
