"""A real temper server for tests: uvicorn on a free loopback port, in a background thread.

The socket is bound here (port 0) and handed to uvicorn, so there is no race for the port.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from temper.server.app import create_app
from temper.server.config import ServerConfig


class ServerThread:
    def __init__(self, config: ServerConfig, engines):
        self.app = create_app(config, engines)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        uv = uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(uv)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def state(self):
        """The app's ServerState (engines, runner, metrics...)."""
        return self.app.state.temper

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        ok = predicate()
        if ok or time.monotonic() > deadline:
            return bool(ok)
        time.sleep(interval)
