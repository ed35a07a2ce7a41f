"""A real uvicorn server in a background thread, for nodes to talk to in tests."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn

from tests.eventually import eventually


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it).

    Under pytest-xdist each worker takes only the ports of its own residue, so a port
    one worker picked and has not bound yet is never handed to another. (Linux gives
    ``bind`` odd ports, leaving even ones to ``connect``: the residue is of port // 2.)
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    mine = int(worker[2:]) % count if worker[2:].isdigit() else 0
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port // 2 % count == mine:
            return port


@contextmanager
def serve(app: Any, lifespan: Literal["on", "off"] = "off") -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1:<free port> while the block lasts; yields its URL.
    ``lifespan="on"`` runs the app's lifespan (an app that embeds flowrun needs it)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           lifespan=lifespan, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started, timeout=10, interval=0.01, what="the test server started")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
