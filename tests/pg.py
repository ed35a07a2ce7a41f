"""A real PostgreSQL for the tests: Debian's binaries, one server per test session.

``postgres_server`` runs ``initdb`` and ``pg_ctl`` from /usr/lib/postgresql/<v>/bin
(``make test`` installs the ``postgresql`` package when they are missing; without
them the PostgreSQL tests skip, saying so) in a temp folder, listening on 127.0.0.1
on a free port with fsync off, and stops it at the end. ``initdb`` refuses to run as
root, so as root the server runs as the unprivileged user ``flowrun-pg`` (created with
``useradd`` if missing). ``postgres_url`` gives each test a fresh database, dropped
after it. ``db_target`` parametrizes a test over both stores.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.local_server import free_port

PG_USER = "flowrun-pg"  # the OS user the server runs as when the tests run as root


def _bindir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian's layout), if any."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


class PostgresServer:
    """One PostgreSQL server in a temp folder; ``database()`` makes a fresh database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="flowrun-pg-"))
        self.data = self.root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                                       "/usr/sbin/nologin", PG_USER], check=False,
                                      capture_output=True, text=True)
                if made.returncode != 0:  # 9: another test worker made it meanwhile
                    pwd.getpwnam(PG_USER)
            shutil.chown(self.root, PG_USER, PG_USER)
            self._as = ["runuser", "-u", PG_USER, "--"]
        self.admin_url = self.url("postgres")

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=300")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database's URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb); "
                    "make test installs Debian's postgresql package")
    server = PostgresServer(bindir)
    started = time.monotonic()
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    print(f"PostgreSQL started in {time.monotonic() - started:.1f}s")  # (with -s)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database of the session's server, dropped after the test."""
    url = postgres_server.database()
    yield url
    postgres_server.drop(url)


@pytest.fixture(params=["sqlite", "postgres"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a store test keeps its data: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "f.db"
    url: str = request.getfixturevalue("postgres_url")
    return url
