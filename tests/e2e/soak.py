"""What the kill soaks share: a mix of runs to submit, submitters that retry through
kills with the same idempotency keys, and the checks that nothing was lost, run twice
or left with a gap in its event log.

Used by ``test_crash.py`` (one SQLite server, killed six times) and
``test_cluster.py`` (three processes on PostgreSQL, one killed twice; a database
outage).
"""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.server import TERMINAL, Server
from tests.eventually import NotYet, eventually

# (idempotency key, workflow, body)
Request = tuple[str, str, dict[str, Any]]

KINDS = ("hello", "fanout", "counted", "ticker", "wide", "branching")


def mixed_requests(log: Path, count: int, *, seed: int, prefix: str,
                   kinds: tuple[str, ...] = KINDS, pace: float = 1.0) -> list[Request]:
    """``count`` runs of the test workflows in a seeded random mix. ``counted`` runs
    append to ``log`` before and after a sleep (so a lost or repeated one shows);
    ``pace`` scales how long the slow kinds take."""
    rng = random.Random(seed)
    made = []
    for i in range(count):
        kind = rng.choice(kinds)
        by_kind: dict[str, dict[str, Any]] = {
            "hello": {"name": f"n{i}"},
            "fanout": {"topic": f"t{i}"},
            "counted": {"file": str(log), "label": f"c{i}", "seconds": 0.3 * pace},
            "ticker": {"tick": 0.03 * pace},
            "wide": {"gate": 0.1 * pace},
            "branching": {"n": i, "mode": "careful"},
        }
        made.append((f"{prefix}-{i}", kind, {"inputs": by_kind[kind]}))
    return made


def start_submitting(servers: list[Server], key: str, todo: list[Request],
                     threads: int = 4
                     ) -> tuple[dict[str, str], list[BaseException], list[threading.Thread]]:
    """Submit ``todo`` round-robin over ``servers`` from ``threads`` threads, each
    request retried (same idempotency key) on the next server until accepted: (run id
    by key, errors, the threads to join)."""
    accepted: dict[str, str] = {}
    errors: list[BaseException] = []

    def send(turns: Iterator[httpx.Client], idem: str, workflow: str,
             body: dict[str, Any]) -> str | None:
        """The run's id once a process accepts it; None to try again."""
        try:
            resp = next(turns).post(f"/workflows/{workflow}/run", json=body,
                                    headers={"Idempotency-Key": idem})
        except httpx.TransportError:  # killed, or not up again yet
            return None
        if resp.status_code in (429, 503):  # starting, or shutting down
            return None
        assert resp.status_code in (200, 202), resp.text
        return str(resp.json()["id"])

    def submit(share: list[tuple[int, Request]]) -> None:
        clients = [httpx.Client(base_url=s.url, timeout=10,
                                headers={"Authorization": f"Bearer {key}"}) for s in servers]
        try:
            for i, (idem, workflow, body) in share:
                # round-robin; a retry (same key) goes to the next process
                turns = (clients[n % len(clients)] for n in itertools.count(i))
                accepted[idem] = eventually(partial(send, turns, idem, workflow, body),
                                            timeout=90, interval=0.05, what=f"{idem} accepted")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            for client in clients:
                client.close()

    indexed = list(enumerate(todo))
    started = [threading.Thread(target=submit, args=(indexed[n::threads],))
               for n in range(threads)]
    for thread in started:
        thread.start()
    return accepted, errors, started


def wait_all_terminal(server: Server, count: int, timeout: float = 120) -> None:
    """Until ``count`` runs in the database are terminal."""
    terminal = tuple(TERMINAL)

    def all_done() -> bool | NotYet:
        [(done,)] = server.query(
            f"SELECT COUNT(*) FROM runs WHERE status IN ({', '.join('?' * len(terminal))})",
            terminal)
        return done == count or NotYet(f"{count - done} runs not finished")

    eventually(all_done, timeout=timeout, interval=0.2, what=f"{count} runs terminal")


def check_every_run_once(server: Server, accepted: set[str]) -> None:
    """Every accepted run, and no other, succeeded, with a gap-free event log that ends
    once, in which no node started again after it succeeded; some runs were resumed
    (the faults did interrupt running runs)."""
    statuses = dict(server.query("SELECT id, status FROM runs"))
    assert set(statuses) == accepted  # none lost, none twice
    assert set(statuses.values()) == {"succeeded"}
    by_run: dict[str, list[tuple[Any, ...]]] = {run_id: [] for run_id in statuses}
    for row in server.query("SELECT run_id, seq, name, data FROM events "
                            "ORDER BY run_id, seq"):
        by_run[row[0]].append(row[1:])
    resumed = 0
    for run_id, events in by_run.items():
        assert [e[0] for e in events] == list(range(1, len(events) + 1)), run_id
        names = [e[1] for e in events]
        assert names[-1] == "workflow_finished" and \
            names.count("workflow_finished") == 1, (run_id, names)
        resumed += names.count("workflow_resumed")
        succeeded: set[str] = set()
        for _, name, data in events:
            node = json.loads(data).get("node_id")
            if name == "node_started":
                assert node not in succeeded, f"{run_id}: {node} ran again after succeeding"
            elif name == "node_finished" and json.loads(data)["status"] == "succeeded":
                succeeded.add(node)
    assert resumed > 0


def check_counted_ran_whole(log: Path, todo: list[Request]) -> None:
    """Each ``counted`` run reached both ends of its sleep (its last node ran)."""
    lines = log.read_text().split()
    for _, workflow, body in todo:
        if workflow == "counted":
            label = body["inputs"]["label"]
            assert f"{label}-first" in lines and f"{label}-last" in lines
