"""Chaos: mixed load with child runs and maps, idempotent retries, reconnecting followers,
random stops, two SIGKILLs and a SIGTERM; then every promise checked from the API and
the database."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.e2e.server import TERMINAL, Server
from tests.eventually import NotYet, eventually

SUBMITTERS = 3
PER_SUBMITTER = 150
FOLLOWERS = 4


class Record:
    """What the clients saw, shared by the load threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, set[str]] = {}
        self.statuses: list[tuple[int, str]] = []
        self.seen: dict[tuple[int, str], list[tuple[int, str]]] = {}  # (follower, run)
        self.stopped: set[str] = set()
        self.errors: list[BaseException] = []

    def status(self, code: int, where: str) -> None:
        with self.lock:
            self.statuses.append((code, where))


def request_for(rng: random.Random, tmp: Path, i: int) -> tuple[str, dict[str, Any]]:
    kind = rng.choice(["parent", "parent", "mapped", "hello", "slow", "wide"])
    by_kind: dict[str, dict[str, Any]] = {
        "parent": {"file": str(tmp / f"p{i}.log"), "seconds": rng.uniform(0.05, 0.4)},
        "mapped": {"words": [f"w{j}" for j in range(rng.randint(1, 12))]},
        "hello": {"name": f"n{i}"},
        "slow": {"seconds": rng.uniform(0.05, 0.6)},
        "wide": {"gate": 0.05},
    }
    return kind, {"inputs": by_kind[kind]}


def accept(client: httpx.Client, record: Record, workflow: str, body: dict[str, Any],
           idem: str) -> str | None:
    """The run's id once the server accepts the request; None to send it again."""
    try:
        resp = client.post(f"/workflows/{workflow}/run", json=body,
                           headers={"Idempotency-Key": idem})
    except httpx.TransportError:
        return None
    record.status(resp.status_code, f"POST {workflow}")
    if resp.status_code in (429, 503):
        return None
    assert resp.status_code in (200, 202), resp.text
    return str(resp.json()["id"])


def submitter(server: Server, key: str, record: Record, n: int, tmp: Path,
              seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=server.url, timeout=10,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        for i in range(PER_SUBMITTER):
            workflow, body = request_for(rng, tmp, seed * 1000 + i)
            idem = f"s{seed}-{i}"
            for _ in range(rng.choice([1, 1, 2])):  # sometimes send the same request twice
                run_id = eventually(partial(accept, client, record, workflow, body, idem),
                                    timeout=90, interval=0.05, what=f"{idem} accepted")
                with record.lock:
                    record.by_key.setdefault(idem, set()).add(run_id)
                if rng.random() < 0.15:  # a random stop, now or a moment later
                    time.sleep(rng.uniform(0, 0.05))
                    try:
                        stop = client.post(f"/runs/{run_id}/stop")
                        record.status(stop.status_code, "POST stop")
                        if stop.status_code == 200 and stop.json()["status"] == "stopped":
                            with record.lock:
                                record.stopped.add(run_id)
                    except httpx.TransportError:
                        pass


def follower(server: Server, key: str, record: Record, done: threading.Event,
             seed: int) -> None:
    """Follow runs over SSE, reconnecting with Last-Event-ID whenever the stream breaks."""
    rng = random.Random(seed)
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=30),
                      headers={"Authorization": f"Bearer {key}"}) as client:
        while not done.is_set():
            with record.lock:
                candidates = sorted(r for ids in record.by_key.values() for r in ids)
            if not candidates:
                time.sleep(0.05)
                continue
            run_id = rng.choice(candidates)
            seen = record.seen.setdefault((seed, run_id), [])
            finished = bool(seen) and seen[-1][1] == "workflow_finished"
            deadline = time.monotonic() + 60
            while not finished and time.monotonic() < deadline and not done.is_set():
                last = seen[-1][0] if seen else 0
                try:
                    with connect_sse(client, "GET", f"/runs/{run_id}/events",
                                     headers={"Last-Event-ID": str(last)}) as source:
                        if source.response.status_code != 200:
                            record.status(source.response.status_code, "GET events")
                            time.sleep(0.05)
                            continue
                        for sse in source.iter_sse():
                            with record.lock:
                                seen.append((int(sse.id), sse.event))
                            if sse.event == "workflow_finished":
                                finished = True
                                break
                            if rng.random() < 0.05:
                                break  # drop the connection on purpose; resume later
                except (httpx.TransportError, httpx_sse_errors()):
                    time.sleep(0.05)


def httpx_sse_errors() -> type[Exception]:
    from httpx_sse import SSEError

    return SSEError


def guarded(record: Record, fn: Callable[..., None], *args: Any) -> threading.Thread:
    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # reported by the main thread
            record.errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_chaos_keeps_every_promise(server_factory: Callable[..., Server],
                                   tmp_path: Path) -> None:
    server = server_factory({"FLOWRUN_MAX_CONCURRENT_RUNS": "24",
                             "FLOWRUN_SHUTDOWN_GRACE_S": "2"})
    key = server.create_key()
    server.start()
    record = Record()
    done = threading.Event()
    load = [guarded(record, submitter, server, key, record, PER_SUBMITTER, tmp_path, s)
            for s in range(SUBMITTERS)]
    follow = [guarded(record, follower, server, key, record, done, 100 + s)
              for s in range(FOLLOWERS)]
    rng = random.Random(11)
    for fault in ("kill", "term", "kill"):
        time.sleep(rng.uniform(2.0, 5.0))  # a random moment under load
        if fault == "kill":
            server.kill()
        else:
            assert server.stop() == 0  # SIGTERM: drain, then exit 0
        server.start()
    for thread in load:
        thread.join(timeout=150)
    assert not record.errors, record.errors[:3]

    client = server.client(key)
    accepted = {run for ids in record.by_key.values() for run in ids}
    pending = set(accepted)

    def all_finished() -> bool | NotYet:
        for run_id in list(pending):
            if client.get(f"/runs/{run_id}").json()["status"] in TERMINAL:
                pending.discard(run_id)
        return not pending or NotYet(f"{len(pending)} runs not finished")

    eventually(all_finished, timeout=90, interval=0.1, what="every accepted run finished")
    done.set()
    for thread in follow:
        thread.join(timeout=30)
    assert not record.errors, record.errors[:3]

    # every key named exactly one run
    assert all(len(ids) == 1 for ids in record.by_key.values()), \
        [k for k, ids in record.by_key.items() if len(ids) > 1]
    # no 5xx but 503
    assert not [s for s in record.statuses if s[0] >= 500 and s[0] != 503], \
        [s for s in record.statuses if s[0] >= 500][:5]
    with sqlite3.connect(f"file:{server.db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT id, status, parent_run_id FROM runs").fetchall()
        status = {r[0]: r[1] for r in rows}
        assert accepted <= set(status)  # nothing accepted was lost
        assert set(status.values()) <= TERMINAL, \
            [r for r in rows if r[1] not in TERMINAL][:3]
        for run_id, state, parent in rows:  # no child of a stopped parent left behind
            if parent is not None and status.get(parent) == "stopped":
                assert state in TERMINAL, (run_id, state)
        for run_id in status:
            stored = conn.execute("SELECT seq, name FROM events WHERE run_id = ? ORDER BY seq",
                                  (run_id,)).fetchall()
            assert [s for s, _ in stored] == list(range(1, len(stored) + 1)), run_id
            assert stored and stored[-1][1] == "workflow_finished", run_id
            by_seq = dict(stored)
            for (_, followed_run), seen in record.seen.items():
                if followed_run != run_id or not seen:
                    continue
                seqs = [s for s, _ in seen]
                assert seqs == list(range(1, len(seqs) + 1)), \
                    f"{run_id}: a follower saw a gap, a duplicate or a reorder: {seqs}"
                for seq, name in seen:  # what followers saw is exactly what is stored
                    assert by_seq.get(seq) == name, (run_id, seq, name)
                if seen[-1][1] == "workflow_finished":
                    assert len(seen) == len(stored), run_id
    followed = [r for (_, r), seen in record.seen.items() if seen]
    assert len(followed) > 20 and len(accepted) >= SUBMITTERS * PER_SUBMITTER * 0.9
    assert any(record.stopped)
    assert json.dumps(sorted(status.values()))  # the statuses are plain JSON
