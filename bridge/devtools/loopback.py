"""Serve an ASGI app on a real loopback port in a background thread: for the simulator and tests.

The port is bound before the app is built, so an app whose config must name
its own public URL (the bridge) can be given it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import uvicorn
from starlette.types import ASGIApp


@contextmanager
def serve_on_loopback(
    make_app: Callable[[str], ASGIApp],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    lifespan: Literal["on", "off"] = "off",
    start_seconds: float = 10,
) -> Iterator[str]:
    """Bind ``host:port`` (0: any free port), build the app for its base URL, serve it; yields the URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        url = f"http://{host}:{sock.getsockname()[1]}"
        server = uvicorn.Server(uvicorn.Config(make_app(url), log_config=None, access_log=False, lifespan=lifespan))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + start_seconds
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            if not server.started:
                raise RuntimeError(f"the server on {url} did not start (see the log above)")
            yield url
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    finally:
        sock.close()
