"""Kill -9 at random moments under load: nothing accepted is lost, duplicated or re-run."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import TERMINAL, Server

RUNS = 200
KILLS = 6


def requests_to_make(log: Path) -> list[tuple[str, str, dict[str, Any]]]:
    rng = random.Random(3)
    made = []
    for i in range(RUNS):
        kind = rng.choice(["hello", "fanout", "counted", "ticker", "wide", "branching"])
        by_kind: dict[str, dict[str, Any]] = {
            "hello": {"name": f"n{i}"},
            "fanout": {"topic": f"t{i}"},
            "counted": {"file": str(log), "label": f"c{i}", "seconds": 0.3},
            "ticker": {"tick": 0.03},
            "wide": {"gate": 0.1},
            "branching": {"n": i, "mode": "careful"},
        }
        made.append((f"req-{i}", kind, {"inputs": by_kind[kind]}))
    return made


@pytest.mark.slow
# (on PostgreSQL: test_cluster.py's soak, with three processes and two kills)
def test_sigkill_under_load_loses_and_repeats_nothing(
        server_factory: Callable[..., Server], tmp_path: Path) -> None:
    # (kills are under test, not the key's rate limit: one client submits 200 runs as
    # fast as the server answers)
    server = server_factory({"FLOWRUN_MAX_CONCURRENT_RUNS": "16",
                             "FLOWRUN_RUN_RATE_PER_KEY": "10000",
                             "FLOWRUN_RUN_BURST_PER_KEY": "10000"})
    key = server.create_key()
    server.start()
    log = tmp_path / "count.log"
    todo = requests_to_make(log)
    accepted: dict[str, str] = {}
    errors: list[BaseException] = []

    def submit_all() -> None:
        with httpx.Client(base_url=server.url, timeout=10,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            for idem, workflow, body in todo:
                deadline = time.monotonic() + 60
                while True:  # retry through kills with the same key: never a duplicate
                    assert time.monotonic() < deadline, f"{idem} never accepted"
                    try:
                        resp = client.post(f"/workflows/{workflow}/run", json=body,
                                           headers={"Idempotency-Key": idem})
                    except httpx.TransportError:
                        time.sleep(0.05)
                        continue
                    if resp.status_code in (429, 503):  # shutting down or starting
                        time.sleep(0.05)
                        continue
                    assert resp.status_code in (200, 202), resp.text
                    accepted[idem] = resp.json()["id"]
                    break

    def guarded() -> None:
        try:
            submit_all()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    submitter = threading.Thread(target=guarded)
    submitter.start()
    rng = random.Random(5)
    for kill in range(KILLS):
        if kill == 0:  # the first mid-run, once runs are running (the others at random)
            deadline = time.monotonic() + 30
            while server.query("SELECT COUNT(*) FROM runs WHERE status = 'running'"
                               )[0][0] < 3:
                assert time.monotonic() < deadline, "never three runs running at once"
                time.sleep(0.02)
        else:
            time.sleep(rng.uniform(0.3, 1.2))
        server.kill()
        server.start()
    submitter.join(timeout=120)
    assert not errors, errors
    assert len(accepted) == RUNS

    client = server.client(key)
    deadline = time.monotonic() + 90
    pending = set(accepted.values())
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} runs never finished"
        for run_id in list(pending):
            if client.get(f"/runs/{run_id}").json()["status"] in TERMINAL:
                pending.discard(run_id)
        time.sleep(0.1)

    statuses = dict(server.query("SELECT id, status FROM runs"))
    assert len(statuses) == RUNS  # no lost run, no duplicate
    assert set(statuses) == set(accepted.values())
    assert set(statuses.values()) == {"succeeded"}
    by_run: dict[str, list[tuple[Any, ...]]] = {run_id: [] for run_id in statuses}
    for row in server.query("SELECT run_id, seq, name, data FROM events "
                            "ORDER BY run_id, seq"):
        by_run[row[0]].append(row[1:])
    resumed = 0
    for run_id, events in by_run.items():
        assert [e[0] for e in events] == list(range(1, len(events) + 1)), run_id
        names = [e[1] for e in events]
        assert names[-1] == "workflow_finished" and names.count("workflow_finished") == 1
        resumed += names.count("workflow_resumed")
        succeeded: set[str] = set()
        for _, name, data in events:
            node = json.loads(data).get("node_id")
            if name == "node_started":
                assert node not in succeeded, f"{run_id}: {node} ran again after succeeding"
            elif name == "node_finished" and '"status":"succeeded"' in data:
                succeeded.add(node)
    assert resumed > 0  # the kills did interrupt running runs
    lines = log.read_text().split()
    for _, workflow, body in todo:
        if workflow == "counted":
            label = body["inputs"]["label"]
            assert f"{label}-first" in lines and f"{label}-last" in lines
