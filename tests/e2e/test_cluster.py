"""Several ``flowrun serve`` processes on one PostgreSQL database.

Events of a run executing on one process followed from another, stop and run-sync
across processes, one run for 100 concurrent submits of one key spread over three
processes, and the cluster soak: 600 runs round-robin over three processes while
one of them is SIGKILLed twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.server import Server, finished, node_status, wait_for
from tests.e2e.soak import (
    check_counted_ran_whole,
    check_every_run_once,
    mixed_requests,
    start_submitting,
    wait_all_terminal,
)
from tests.e2e.test_postgres import stream
from tests.eventually import NotYet, eventually
from tests.pg import PostgresServer

# quick leases, so a killed process's runs are taken over in a test's time
CLUSTER_ENV = {"FLOWRUN_HEARTBEAT_S": "0.3", "FLOWRUN_LEASE_S": "2",
               # the soaks submit as fast as the servers answer: not a rate-limit test
               "FLOWRUN_RUN_RATE_PER_KEY": "10000", "FLOWRUN_RUN_BURST_PER_KEY": "10000"}

Cluster = Callable[..., list[Server]]


@pytest.fixture
def cluster(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    """Make ``count`` servers on one new database (not started); all killed at the end."""
    made: list[Server] = []
    database = postgres_server.database()

    def make(count: int, env: dict[str, str] | None = None) -> list[Server]:
        for i in range(count):
            made.append(Server(tmp_path / f"p{i}", {**CLUSTER_ENV, **(env or {})}, database))
            (tmp_path / f"p{i}").mkdir(exist_ok=True)
        return made

    yield make
    for server in made:
        server.close()
    postgres_server.drop(database)


def worker_of(server: Server) -> str:
    worker: str = httpx.get(f"{server.url}/healthz").json()["cluster"]["worker"]
    return worker


def owner_of(server: Server, run_id: str) -> str | None:
    [(owner,)] = server.query("SELECT owner FROM runs WHERE id = ?", (run_id,))
    return owner  # type: ignore[no-any-return]


def test_events_stop_run_sync_and_keys_work_across_processes(cluster: Cluster) -> None:
    a, b, c = cluster(3, {"FLOWRUN_MAX_CONCURRENT_RUNS": "2"})
    key = a.create_key()
    for server in (a, b, c):
        server.start()
    ca, cb, cc = (server.client(key) for server in (a, b, c))

    # A run accepted by a process with room runs there; another process follows it live.
    wide = ca.post("/workflows/wide/run", json={"inputs": {"gate": 0.5}}).json()["id"]
    assert owner_of(a, wide) == worker_of(a)
    followed = stream(cb, wide)
    assert [e["seq"] for e in followed] == list(range(1, len(followed) + 1))
    assert len(followed) == 42 and followed[-1]["data"]["status"] == "succeeded"
    assert stream(cc, wide, after=10) == followed[10:]

    # A stop sent to another process stops the run within a second.
    slow = ca.post("/workflows/slow/run", json={"inputs": {"seconds": 30}}).json()["id"]
    wait_for(ca, slow, lambda r: node_status(r, "wait") == "running")
    assert owner_of(a, slow) == worker_of(a)
    began = time.monotonic()
    stopped = cb.post(f"/runs/{slow}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert time.monotonic() - began < 1.0

    # Pause through one process and resume through another, of a run on a third.
    log = Path(a.tmp) / "count.log"
    counted = ca.post("/workflows/counted/run", json={
        "inputs": {"file": str(log), "label": "p", "seconds": 0.6}}).json()["id"]
    wait_for(cb, counted, lambda r: node_status(r, "wait") == "running")
    assert cb.post(f"/runs/{counted}/pause").json()["status"] == "paused"
    wait_for(cc, counted, lambda r: node_status(r, "wait") == "succeeded")
    time.sleep(0.3)  # (a run that was not held would start its last node now)
    assert node_status(cc.get(f"/runs/{counted}").json(), "last") is None
    assert cc.post(f"/runs/{counted}/resume").status_code == 200
    assert finished(cb, counted)["status"] == "succeeded"
    assert log.read_text().split() == ["p-first", "p-last"]

    # A full process queues a run-sync for the cluster; another runs it; the answer
    # comes back through the first.
    hold = [ca.post("/workflows/slow/run", json={"inputs": {"seconds": 30}}).json()["id"]
            for _ in range(2)]
    for run_id in hold:
        wait_for(ca, run_id, lambda r: r["status"] == "running")
    done = ca.post("/workflows/hello/run-sync", json={"inputs": {"name": "far"}})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded"
    assert done.json()["outputs"] == {"greeting": "Hello, far!"}
    assert owner_of(a, done.json()["id"]) in {worker_of(b), worker_of(c)}

    # 100 concurrent submits of one key over three processes: one run.
    clients = [ca, cb, cc]

    def submit(i: int) -> tuple[int, str]:
        resp = clients[i % 3].post("/workflows/hello/run", json={"inputs": {"name": "k"}},
                                   headers={"Idempotency-Key": "one-key"})
        assert resp.status_code in (200, 202), resp.text
        return resp.status_code, resp.json()["id"]

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(submit, range(100)))
    assert len({run_id for _, run_id in answers}) == 1
    assert [code for code, _ in answers].count(202) == 1
    assert a.query("SELECT COUNT(*) FROM runs WHERE idempotency_key = ?",
                   ("one-key",)) == [(1,)]
    for run_id in hold:
        cc.post(f"/runs/{run_id}/stop")


def test_workflows_and_keys_changed_on_one_process_change_on_all(cluster: Cluster) -> None:
    a, b = cluster(2)
    admin = a.admin_key()
    key_id, key = a.create_key_with_id()
    a.start()
    b.start()
    ca, cb = a.client(admin), b.client(admin)
    before = cb.post("/workflows/hello/run-sync", json={"inputs": {"name": "x"}}).json()
    assert before["outputs"] == {"greeting": "Hello, x!"}  # b knows version 1 as latest
    changed = {"name": "hello", "inputs": {"name": {"type": "string", "required": True}},
               "nodes": [{"id": "greet", "type": "template", "template": "Hi, {{ inputs.name }}"}],
               "outputs": {"greeting": "{{ nodes.greet.text }}"}}
    put = ca.put("/workflows/hello", json=changed)
    assert put.status_code in (200, 201), put.text

    def changed_on_b() -> dict[str, Any] | NotYet:
        after: dict[str, Any] = cb.post("/workflows/hello/run-sync",
                                        json={"inputs": {"name": "x"}}).json()
        return after if after["outputs"] == {"greeting": "Hi, x"} else NotYet(after)

    # told by notification: at once, not at a poll
    after = eventually(changed_on_b, timeout=5, interval=0.05, what="b runs the new version")
    assert after["version"] == before["version"] + 1

    # A key revoked (here with the CLI, beside the servers) stops working on every
    # process at once, not when each one's cache of valid keys expires (5 s).
    user = b.client(key)
    assert user.get("/runs").status_code == 200  # b has found it valid
    done = a.cli("keys", "--db", a.target, "revoke", key_id)
    assert done.returncode == 0, done.stderr
    eventually(lambda: user.get("/runs").status_code == 401, timeout=2, interval=0.05,
               what="b refusing the revoked key")


def test_a_killed_process_runs_are_taken_over(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster(2)
    key = a.create_key()
    a.start()
    b.start()
    ca, cb = a.client(key), b.client(key)
    log = tmp_path / "count.log"
    run_id = ca.post("/workflows/counted/run", json={
        "inputs": {"file": str(log), "label": "c", "seconds": 1}}).json()["id"]
    wait_for(cb, run_id, lambda r: node_status(r, "wait") == "running")
    a.kill()
    run = finished(cb, run_id)  # b claims it once a's lease lapsed, and finishes it
    assert run["status"] == "succeeded"
    assert log.read_text().split() == ["c-first", "c-last"]  # first did not run again
    assert owner_of(b, run_id) == worker_of(b)
    names = [e["event"] for e in stream(cb, run_id)]
    assert names.count("workflow_resumed") == 1 and names[-1] == "workflow_finished"


RUNS = 600
KINDS = ("hello", "counted", "ticker", "wide", "branching")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_processes_two_sigkills_600_runs_each_once(cluster: Cluster,
                                                         tmp_path: Path) -> None:
    servers = cluster(3, {"FLOWRUN_MAX_CONCURRENT_RUNS": "16"})
    key = servers[0].create_key()
    for server in servers:
        server.start()
    log = tmp_path / "count.log"
    todo = mixed_requests(log, RUNS, seed=11, prefix="soak", kinds=KINDS, pace=2 / 3)
    accepted, errors, submitters = start_submitting(servers, key, todo)
    victim = servers[1]
    for _ in range(2):
        # mid-run: once the victim runs some runs (so the kill interrupts them)
        worker = worker_of(victim)

        def busy(owner: str = worker) -> bool:
            return int(victim.query("SELECT COUNT(*) FROM runs WHERE owner = ? AND status = ?",
                                    (owner, "running"))[0][0]) >= 3

        eventually(busy, timeout=30, what="the victim running three runs")
        victim.kill()
        time.sleep(0.5)  # down a moment, as a crashed process is, before it comes back
        victim.start()
    for thread in submitters:
        thread.join(timeout=150)
    assert not errors, errors
    assert len(accepted) == RUNS

    wait_all_terminal(servers[0], RUNS)
    check_every_run_once(servers[0], set(accepted.values()))
    owners = {owner for (owner,) in servers[0].query("SELECT DISTINCT owner FROM runs")}
    # the work was spread (the victim's runs may all have been taken over: its three
    # lives may have finished none)
    assert len(owners) >= 2
    check_counted_ran_whole(log, todo)


def database_outage(postgres: PostgresServer, url: str, seconds: float) -> None:
    """The database refuses every connection for ``seconds`` (its sessions ended), as
    a failover or a restart would: longer than a lease, so every process loses its."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(postgres.admin_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s", (name,))
        time.sleep(seconds)
        admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_database_outage_longer_than_the_lease_loses_and_repeats_nothing(
        cluster: Cluster, postgres_server: PostgresServer, tmp_path: Path) -> None:
    servers = cluster(2, {"FLOWRUN_MAX_CONCURRENT_RUNS": "16"})
    key = servers[0].create_key()
    for server in servers:
        server.start()
    todo = mixed_requests(tmp_path / "count.log", 150, seed=11, prefix="soak", kinds=KINDS,
                          pace=2 / 3)
    accepted, errors, submitters = start_submitting(servers, key, todo, threads=2)
    # mid-run: so the outage interrupts running runs
    eventually(lambda: servers[0].query("SELECT COUNT(*) FROM runs WHERE status = ?",
                                        ("running",))[0][0] >= 4,
               timeout=30, what="four runs under way at once")
    assert servers[0].database is not None
    database_outage(postgres_server, servers[0].database, 3.0)  # the lease is 2 s
    for thread in submitters:
        thread.join(timeout=150)
    assert not errors, errors
    assert len(accepted) == len(todo)
    wait_all_terminal(servers[0], len(todo))
    check_every_run_once(servers[0], set(accepted.values()))
    for server in servers:  # each gave its runs up and came back as a new worker
        assert "lease lost" in server.log.read_text()
