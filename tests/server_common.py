"""Shared by the server tests: a real uvicorn server (as the CLI builds it) in a thread on loopback."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx

from inference.server_http import HttpLimits, make_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str) -> None:
    for _ in range(200):
        try:
            httpx.get(url + "/health", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def serving(app, limits: HttpLimits):
    """Serve `app` on a free loopback port -> its base URL; stopped on exit."""
    port = free_port()
    srv = make_server(app, "127.0.0.1", port, limits, log_level="warning")
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    wait_up(url)
    try:
        yield url
    finally:
        srv.should_exit = True
        th.join(timeout=10)
