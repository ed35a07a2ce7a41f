from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Dialect, Server, Started
from tests.pg import PostgresServer


@pytest.fixture
def store_kind() -> str:
    """The database servers use: SQLite, unless $FLOWRUN_TEST_STORE says ``postgres``
    (to run every e2e test on PostgreSQL); a test parametrizes it to run on both
    (``@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])``)."""
    return os.environ.get("FLOWRUN_TEST_STORE", "sqlite")


@pytest.fixture
def server_factory(tmp_path: Path, store_kind: str,
                   request: pytest.FixtureRequest) -> Iterator[Callable[..., Server]]:
    """Start servers (killed at the end) with extra FLOWRUN_* environment, on the
    database ``store_kind`` names (each server its own)."""
    servers: list[Server] = []
    postgres: PostgresServer | None = None
    if store_kind == "postgres":
        postgres = request.getfixturevalue("postgres_server")

    def make(env: dict[str, str] | None = None, name: str = "s") -> Server:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        if postgres is not None:
            # quick leases: a restarted process takes its killed self's runs over in
            # about a second, not the default ten
            env = {"FLOWRUN_HEARTBEAT_S": "0.3", "FLOWRUN_LEASE_S": "1.5", **(env or {})}
        server = Server(folder, env, postgres.database() if postgres else None)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
        if postgres is not None and server.database is not None:
            postgres.drop(server.database)


@pytest.fixture
def dialect() -> Dialect:
    """The native API; a dialect's test module overrides this fixture with its own."""
    return Dialect()


@pytest.fixture
def start_server(server_factory: Callable[..., Server],
                 dialect: Dialect) -> Callable[..., Started]:
    """Start a server with a new key and give a client of ``dialect`` (closed at the end).

    ``env``: extra FLOWRUN_* environment; ``serve_args``: extra ``flowrun serve``
    arguments; ``workflow``: bind the key to this workflow instead of the dialect's.
    """

    def start(env: dict[str, str] | None = None, *serve_args: str,
              workflow: str | None = None) -> Started:
        server = server_factory(env)
        bound = workflow or dialect.workflow
        key = server.create_key(*(("--workflow", bound) if bound else ()))
        server.start(*serve_args)
        client = httpx.Client(base_url=f"{server.url}{dialect.prefix}", timeout=dialect.timeout,
                              headers={dialect.auth_header: f"{dialect.auth_scheme}{key}"})
        server.clients.append(client)  # closed with the server
        return Started(server, key, client)

    return start
