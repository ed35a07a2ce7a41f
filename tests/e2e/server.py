"""A real ``flowrun serve`` process on a free port with a temp database, for tests."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psycopg

from tests.eventually import NotYet, eventually
from tests.local_server import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TEST_WORKFLOWS = Path(__file__).parent / "workflows"
TERMINAL = {"succeeded", "failed", "stopped", "timed_out"}


class Server:
    """Start, kill and restart one flowrun server process bound to one database."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None,
                 database: str | None = None) -> None:
        self.tmp = tmp
        self.db = tmp / "flowrun.db"
        # a postgresql:// URL, or None: the SQLite file ``db``
        self.database = database
        self.workflows = tmp / "workflows"
        if not self.workflows.exists():
            shutil.copytree(EXAMPLES, self.workflows)
            for f in TEST_WORKFLOWS.iterdir():
                shutil.copy(f, self.workflows / f.name)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "server.log"
        self.clients: list[httpx.Client] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flowrun", *args], env=self.env,
                              capture_output=True, text=True, timeout=60, check=False)

    def create_key(self, *options: str) -> str:
        """A new run-scope key (``--scope admin`` or ``--workflow X`` among ``options``)."""
        return self.create_key_with_id(*options)[1]

    def admin_key(self) -> str:
        return self.create_key("--scope", "admin")

    def create_key_with_id(self, *options: str) -> tuple[str, str]:
        """(key id, secret) of a new API key."""
        done = self.cli("keys", "--db", self.target, "create", *options)
        assert done.returncode == 0, done.stderr
        return done.stderr.split()[-1], done.stdout.strip()

    def command(self, host: str = "127.0.0.1") -> list[str]:
        return [sys.executable, "-m", "flowrun", "serve", "--host", host,
                "--port", str(self.port), "--db", self.target, "--workflows",
                str(self.workflows), "--plugin", "tests.e2e.plugin", "--log-level", "warning"]

    @property
    def target(self) -> str:
        """What ``--db`` gets: the PostgreSQL URL, else the SQLite file."""
        return self.database or str(self.db)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the server's database, whichever it is
        (``?`` placeholders)."""
        if self.database is not None:
            with psycopg.connect(self.database) as pg:
                return list(pg.execute(sql.replace("?", "%s"), params).fetchall())
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return list(conn.execute(sql, params).fetchall())

    def start(self, *extra: str) -> None:
        for _ in range(2):  # a port taken meanwhile by something else: take another
            logged = self.log.stat().st_size if self.log.exists() else 0
            try:
                return self._start(*extra)
            except RuntimeError:
                with self.log.open("rb") as log:
                    log.seek(logged)
                    if b"address already in use" not in log.read():
                        raise
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        self._start(*extra)

    def _start(self, *extra: str) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*self.command(), *extra], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        proc = self.proc

        def answering() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        try:
            eventually(answering, timeout=20, interval=0.05, what="the server answering")
        except AssertionError as late:
            raise RuntimeError(f"server did not start: {self.log.read_text()}") from late

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    def close(self) -> None:
        """Close the clients and kill the process if it is still running."""
        for client in self.clients:
            client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@dataclass(frozen=True)
class Dialect:
    """What differs between the APIs a test module talks to: where its client points,
    how that client sends its key, and which workflow (if any) the key is bound to."""

    prefix: str = ""  # the API's base path under the server's URL
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer "  # written before the key in ``auth_header``
    timeout: float = 30
    workflow: str | None = None  # bind the key to this workflow (a Dify app key)


class Started(NamedTuple):
    """A started server, its run-scope key, and a client of the module's dialect."""

    server: Server
    key: str
    client: httpx.Client


def wait_for(client: httpx.Client, run_id: str, predicate: Any, timeout: float = 15) -> Any:
    """Poll a run until ``predicate(run)`` holds; fail after ``timeout`` seconds."""
    def reached() -> Any:
        run = client.get(f"/runs/{run_id}").json()
        return run if predicate(run) else NotYet(run)

    return eventually(reached, timeout=timeout, what=f"run {run_id} in the expected state")


def finished(client: httpx.Client, run_id: str, timeout: float = 15) -> Any:
    return wait_for(client, run_id, lambda r: r["status"] in TERMINAL, timeout)


def node_status(run: dict[str, Any], node_id: str) -> str | None:
    for n in run["nodes"]:
        if n["id"] == node_id:
            return str(n["status"])
    return None
