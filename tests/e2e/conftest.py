from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.server import Server


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers (killed at the end) with extra FLOWRUN_* environment."""
    servers: list[Server] = []

    def make(env: dict[str, str] | None = None, name: str = "s") -> Server:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        server = Server(folder, env)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
