"""Expressions over values that share their parts, sent by one key to a real server.

Such a value costs nothing to hold (``[x] * 100000`` is a hundred thousand references
to one list) and a lot to walk, print, sort or compare. Each of these runs must fail its
node with ``expression_error`` while ``/healthz`` keeps answering at once: the measuring
is charged to the expression's ~50 ms budget, not done on the loop outside it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import httpx

from tests.e2e.server import Started, finished

NESTED = "[[[[[[[[[[1]]]]]]]]]]"
# ten million ones in 61 small lists (each level is ten references to the one below),
# and y, equal to it but made of other lists
SHARED = "{% set x = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1] %}" + \
    "{% set x = [x, x, x, x, x, x, x, x, x, x] %}" * 6
SHARED += SHARED.replace("x", "y")
ATTACKS = [
    f"{{{{ ({NESTED} * 100000) | tojson }}}}",
    f"{{{{ ({NESTED} * 100000) | string }}}}",
    f"{{{{ ({NESTED} * 100000) | pprint }}}}",
    f"{{{{ ({NESTED} * 100000) | sort }}}}",
    f"{{{{ ({NESTED} * 100000) | unique | list }}}}",
    f"{{{{ ({NESTED} * 100000) | max }}}}",
    f"{{{{ ({NESTED} * 100000) | join }}}}",
    "{{ ([[1] * 10] * 100000) | tojson }}",
    f"{{{{ {NESTED} * 100000 }}}}",
    SHARED + "{{ x | tojson | length }}",
    SHARED + "{{ x == y }}",
    SHARED + "{{ x }}",
]
ROUNDS = 3  # each attack this many times: about four seconds at ten runs a second
HEALTHY_S = 0.3  # a health answer's bound while the attack runs (each took ~0.5 s before)


def test_expressions_on_shared_values_fail_while_health_answers_at_once(
        start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    ids: list[str] = []
    problems: list[str] = []

    def attack() -> None:
        pace = threading.Event()  # never set: paces the runs at about ten a second
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as attacker:
            for text in ATTACKS * ROUNDS:
                graph = {"inputs": {"name": "x"},
                         "nodes": [{"id": "greet", "type": "template", "template": text}]}
                resp = attacker.post("/workflows/hello/run", json=graph)
                if resp.status_code != 202:
                    problems.append(f"{resp.status_code}: {resp.text}")
                    return
                ids.append(resp.json()["id"])
                pace.wait(0.1)

    thread = threading.Thread(target=attack, daemon=True)
    latencies: list[float] = []
    with httpx.Client(base_url=server.url, timeout=10) as probe:
        thread.start()
        while thread.is_alive():
            started = time.perf_counter()
            assert probe.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
            thread.join(0.02)
    assert not problems, problems
    assert len(ids) == len(ATTACKS) * ROUNDS

    slowest = max(latencies)
    assert slowest < HEALTHY_S, \
        f"/healthz took {slowest:.2f}s while the expressions ran ({len(latencies)} answers)"
    client = server.client(key)
    for run_id in ids:
        run = finished(client, run_id)
        assert run["status"] == "failed", run
        assert run["error"]["code"] == "expression_error", run["error"]
        assert run["error"]["node_id"] == "greet"
        assert len(json.dumps(run)) < 100_000  # nothing huge was stored
