"""A real uvicorn server for an ASGI app on a free loopback port, in a background thread.

For the serving tests and ``scripts/serve_screenshot.py``: the app runs exactly as ``sparkvision
serve`` runs it, and the block starts only once ``/readyz`` answers 200.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, alive: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll ``url/readyz`` until it answers 200; fail at once if ``alive()`` turns false, or after ``timeout``."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not alive():
            raise RuntimeError("the server died during startup")
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not become ready")
        time.sleep(0.1)


class LiveServer:
    def __init__(self, url: str, server) -> None:
        self.url = url
        self.server = server


@contextmanager
def live_server(app, timeout: float = 120.0) -> Iterator[LiveServer]:
    """Run ``app`` under uvicorn on a free loopback port until the block ends."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, thread.is_alive, timeout)
        yield LiveServer(url, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
