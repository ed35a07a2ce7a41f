"""Kill -9 at random moments under load: nothing accepted is lost, duplicated or re-run."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.server import Server
from tests.e2e.soak import (
    check_counted_ran_whole,
    check_every_run_once,
    mixed_requests,
    start_submitting,
    wait_all_terminal,
)
from tests.eventually import eventually

RUNS = 200
KILLS = 6


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
    todo = mixed_requests(log, RUNS, seed=3, prefix="req")
    # one client, as fast as the server answers, retrying through kills with the same key
    accepted, errors, [submitter] = start_submitting([server], key, todo, threads=1)
    rng = random.Random(5)
    for kill in range(KILLS):
        if kill == 0:  # the first mid-run, once runs are running (the others at random)
            eventually(lambda: server.query(
                "SELECT COUNT(*) FROM runs WHERE status = 'running'")[0][0] >= 3,
                timeout=30, what="three runs running at once")
        else:
            time.sleep(rng.uniform(0.3, 1.2))
        server.kill()
        server.start()
    submitter.join(timeout=120)
    assert not errors, errors
    assert len(accepted) == RUNS
    wait_all_terminal(server, RUNS, timeout=90)
    check_every_run_once(server, set(accepted.values()))
    check_counted_ran_whole(log, todo)
