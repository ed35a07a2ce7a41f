"""Schedules through a real server: firing, pause/resume/delete, re-registration, errors,
and a restart in the middle (no slot twice; missed slots follow catch_up)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.server import Started
from tests.eventually import NotYet, eventually

EVERY_SECOND = "* * * * * *"


def workflow(*schedules: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": {"n": {"type": "integer", "default": 0}},
        "nodes": [{"id": "say", "type": "template", "template": "n={{ inputs.n }}"}]}
    if schedules:
        body["schedules"] = list(schedules)
    return body


def ts(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def scheduled(admin: httpx.Client, name: str, schedule_id: str) -> list[dict[str, Any]]:
    """The runs a schedule started, oldest slot first."""
    runs = admin.get(f"/workflows/{name}/runs", params={"limit": 1000}).json()["runs"]
    found = [r for r in runs if (r.get("schedule") or {}).get("id") == schedule_id]
    return sorted(found, key=lambda r: ts(r["schedule"]["slot"]))


def slots(runs: list[dict[str, Any]]) -> list[float]:
    return [ts(r["schedule"]["slot"]) for r in runs]


def fired_after(admin: httpx.Client, name: str, schedule_id: str, after: float,
                count: int = 1) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | NotYet:
        runs = [r for r in scheduled(admin, name, schedule_id) if ts(r["schedule"]["slot"]) > after]
        return runs if len(runs) >= count else NotYet(runs)

    runs: list[dict[str, Any]] = eventually(
        found, interval=0.05, what=f"{count} runs of {schedule_id} after {after}")
    return runs


def pass_time(seconds: float) -> None:
    """Let wall-clock time go by (slots are wall-clock moments; nothing to poll for)."""
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.05)


def test_schedules_fire_pause_resume_and_delete(start_server: Callable[..., Started]) -> None:
    started = start_server()
    admin = started.server.client(started.server.admin_key())
    every = {"id": "every", "cron": EVERY_SECOND, "inputs": {"n": 1}}
    assert admin.put("/workflows/tick", json=workflow(every)).status_code == 201

    runs = fired_after(admin, "tick", "every", 0, count=2)
    assert runs[0]["idempotency_key"].startswith("schedule:tick:every:")
    assert runs[0]["inputs"] == {"n": 1}
    assert len(set(slots(runs))) == len(runs)
    listed = admin.get("/workflows/tick/schedules").json()["schedules"]
    assert [(s["id"], s["source"], s["paused"]) for s in listed] == [("every", "definition",
                                                                      False)]
    assert listed[0]["last_slot"] is not None
    # a run-scope key does not see the operator's runs
    assert started.client.get(f"/runs/{runs[0]['id']}").status_code in (403, 404)

    # pause: at most a slot already being fired lands after it
    assert admin.post("/workflows/tick/schedules/every/pause").json()["paused"] is True
    paused_at = time.time()
    pass_time(2.5)
    assert not [s for s in slots(scheduled(admin, "tick", "every")) if s > paused_at + 1]
    resumed = admin.post("/workflows/tick/schedules/every/resume").json()
    assert resumed["paused"] is False
    resumed_at = time.time()
    fired_after(admin, "tick", "every", resumed_at)
    # the slots that went by while paused are not owed
    assert not [s for s in slots(scheduled(admin, "tick", "every"))
                if paused_at + 1 < s < resumed_at - 1]

    # an API schedule, then deleted
    made = admin.post("/workflows/tick/schedules", json={"id": "api", "cron": EVERY_SECOND})
    assert made.status_code == 201, made.text
    assert made.json()["source"] == "api"
    again = admin.post("/workflows/tick/schedules", json={"id": "api", "cron": EVERY_SECOND})
    assert again.status_code == 409
    fired_after(admin, "tick", "api", 0)
    assert admin.delete("/workflows/tick/schedules/api").status_code == 204
    deleted_at = time.time()
    assert admin.delete("/workflows/tick/schedules/api").status_code == 404
    pass_time(2.5)
    assert not [s for s in slots(scheduled(admin, "tick", "api")) if s > deleted_at + 1]

    # re-registering without the block removes its schedules; API ones stay
    keep = admin.post("/workflows/tick/schedules",
                      json={"id": "kept", "cron": "0 0 1 1 *", "timezone": "Europe/Paris"})
    assert keep.status_code == 201
    assert admin.put("/workflows/tick", json=workflow()).status_code == 201
    listed = admin.get("/workflows/tick/schedules").json()["schedules"]
    assert [(s["id"], s["source"]) for s in listed] == [("kept", "api")]

    # deleting the workflow deletes its schedules
    eventually(lambda: admin.delete("/workflows/tick").status_code == 204, interval=0.05,
               what="tick deleted")
    assert admin.put("/workflows/tick", json=workflow()).status_code == 201
    assert admin.get("/workflows/tick/schedules").json()["schedules"] == []


def test_bad_schedules_are_400s_naming_them(start_server: Callable[..., Started]) -> None:
    started = start_server()
    admin = started.server.client(started.server.admin_key())
    bad = admin.put("/workflows/tock", json=workflow({"id": "nightly", "cron": "61 * * * *"}))
    assert bad.status_code == 400
    assert "schedule 'nightly'" in bad.json()["detail"]
    assert bad.json()["errors"][0]["schedule"] == "nightly"
    bad = admin.put("/workflows/tock", json=workflow(
        {"id": "a", "cron": EVERY_SECOND, "timezone": "Nowhere/Land"},
        {"id": "a", "cron": EVERY_SECOND, "inputs": {"n": "x"}}))
    assert bad.status_code == 400
    detail = bad.json()["detail"]
    assert "timezone 'Nowhere/Land'" in detail and "duplicate id" in detail
    assert "inputs.n" in detail
    assert admin.put("/workflows/tock", json=workflow()).status_code == 201
    bad = admin.post("/workflows/tock/schedules", json={"id": "hourly", "cron": "nope"})
    assert bad.status_code == 400
    assert "schedule 'hourly'" in bad.json()["detail"]
    assert admin.post("/workflows/tock/schedules",
                      json={"id": "x", "cron": EVERY_SECOND, "catch_up": "never"}
                      ).status_code == 400
    # a run-scope key may not make one
    assert started.client.post("/workflows/tock/schedules",
                               json={"id": "y", "cron": EVERY_SECOND}).status_code == 403
    # nor pause or resume one: a schedule runs for every user of the workflow
    assert admin.post("/workflows/tock/schedules",
                      json={"id": "z", "cron": "0 3 * * *"}).status_code == 201
    for action in ("pause", "resume"):
        assert started.client.post(f"/workflows/tock/schedules/z/{action}").status_code == 403
    assert admin.post("/workflows/nope/schedules",
                      json={"id": "y", "cron": EVERY_SECOND}).status_code == 404


def test_restart_fires_no_slot_twice_and_catches_up(start_server: Callable[..., Started]
                                                    ) -> None:
    started = start_server()
    server = started.server
    admin = server.client(server.admin_key())
    assert admin.put("/workflows/tick", json=workflow(
        {"id": "latest", "cron": EVERY_SECOND},
        {"id": "all", "cron": EVERY_SECOND, "catch_up": "all"})).status_code == 201
    fired_after(admin, "tick", "all", 0, count=2)
    # one slot a minute, falling while the server is down: latest fires it late, skip not
    once = int(time.time()) + 2
    second = once % 60
    for schedule_id, policy in (("once-latest", "latest"), ("once-skip", "skip")):
        assert admin.post("/workflows/tick/schedules", json={
            "id": schedule_id, "cron": f"{second} * * * * *", "catch_up": policy,
        }).status_code == 201
    server.kill()
    killed_at = time.time()
    pass_time(max(once + 1.5, killed_at + 3) - time.time())
    server.start()
    restarted_at = time.time()
    fired_after(admin, "tick", "all", restarted_at, count=2)

    late = scheduled(admin, "tick", "once-latest")
    assert slots(late) == [float(once)]
    assert ts(late[0]["created_at"]) > once + 1  # fired after the downtime, not on time
    assert scheduled(admin, "tick", "once-skip") == []

    every = slots(scheduled(admin, "tick", "all"))
    assert len(every) == len(set(every)), "a slot fired twice"
    # catch_up all: no slot missing from the first to the last, downtime included
    assert every == [every[0] + i for i in range(len(every))]
    latest = slots(scheduled(admin, "tick", "latest"))
    assert len(latest) == len(set(latest)), "a slot fired twice"
    # catch_up latest: the slots of the downtime are not all fired
    down = [s for s in latest if killed_at < s < restarted_at - 1]
    assert len(down) <= 1


def test_a_draining_server_fires_nothing(start_server: Callable[..., Started]) -> None:
    started = start_server()
    server = started.server
    admin = server.client(server.admin_key())
    slow = workflow({"id": "drain", "cron": EVERY_SECOND, "catch_up": "skip"})
    slow["nodes"] = [{"id": "nap", "type": "sleep", "seconds": 3}]
    assert admin.put("/workflows/nap", json=slow).status_code == 201
    fired_after(admin, "nap", "drain", 0, count=2)
    term_at = time.time()
    server.stop()  # SIGTERM: the drain waits for the sleeping runs
    stopped_at = time.time()
    assert stopped_at - term_at > 1.5, "the drain had running runs to wait for"
    server.start()
    fired_after(admin, "nap", "drain", time.time())
    during = [s for s in slots(scheduled(admin, "nap", "drain"))
              if term_at + 1 < s < stopped_at - 1]
    assert during == []
