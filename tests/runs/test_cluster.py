"""Several processes on one PostgreSQL database (cluster.py), in one test process:
claims in priority-then-age order that skip each other's rows, leases that lapse,
a process that loses its lease giving its runs up, and the cluster-wide queue limit.

Each "process" is a Store (its own writer and connections) or a whole service built
by the composition root (``create_app`` and its lifespan); the processes of one test
share one event loop but nothing else.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from flowrun import Settings, create_app, flowrun_lifespan
from flowrun.errors import QueueFull, Unavailable
from flowrun.records import Event, RunStatus
from flowrun.runs.cluster import Cluster
from flowrun.runs.service import RunRequest, RunService
from flowrun.store import Store
from tests.eventually import NotYet, eventually_async
from tests.runs.test_service import ADMIN, ANN, QUICK, SLOW, until_status
from tests.store.test_sqlite import make_run


async def test_claims_take_priority_then_age_and_skip_each_others_runs(
        postgres_url: str) -> None:
    async with Store.open(postgres_url) as one, Store.open(postgres_url) as two:
        await one.register_worker("w1", "h", 1)
        await two.register_worker("w2", "h", 2)
        runs = [make_run(f"r{i}", priority=p) for i, p in enumerate([0, 5, 0, 9, 5])]
        for run in runs:
            await one.insert_run(run).wait()
        first = await one.claim_runs("w1", 3, lease_s=10)
        assert [r.id for r, _ in first] == ["r3", "r1", "r4"]  # priority, then age
        rest = await two.claim_runs("w2", 10, lease_s=10)
        assert [r.id for r, _ in rest] == ["r0", "r2"]  # not the ones w1 holds
        assert await one.claim_runs("w1", 10, lease_s=10) == []
        assert {(await one.get_run(r.id, with_nodes=False)).owner for r in runs  # type: ignore[union-attr]
                } == {"w1", "w2"}


async def test_a_claim_skips_the_runs_of_keys_at_their_cap_here(postgres_url: str) -> None:
    async with Store.open(postgres_url) as store:
        await store.register_worker("w1", "h", 1)
        runs = [make_run(f"r{i}", priority=p) for i, p in enumerate([99, 99, 0, 0])]
        for run, key in zip(runs, ["A", "A", "B", None], strict=True):
            run.api_key_id = key
            await store.insert_run(run).wait()
        claimed = await store.claim_runs("w1", 10, lease_s=10, skip_keys=["A"])
        assert [r.id for r, _ in claimed] == ["r2", "r3"]  # B's and the keyless one


async def test_a_stop_is_kept_on_a_live_or_waiting_row_only(postgres_url: str) -> None:
    async with Store.open(postgres_url) as store:
        queued, done = make_run("q"), make_run("d")
        for run in (queued, done):
            await store.insert_run(run).wait()
        await store.set_status("d", RunStatus.SUCCEEDED, only_from=(RunStatus.QUEUED,))
        assert await store.request_stop("q", "enough") is RunStatus.QUEUED
        assert await store.request_stop("d", "enough") is None
        assert await store.requested_stops() == {"q": "enough"}


async def test_a_lapsed_lease_lets_another_process_take_the_runs(postgres_url: str) -> None:
    async with Store.open(postgres_url) as one, Store.open(postgres_url) as two:
        await one.register_worker("w1", "h", 1)
        await two.register_worker("w2", "h", 2)
        run = make_run("held")
        run.owner = "w1"
        await one.insert_run(run).wait()
        assert await two.claim_runs("w2", 10, lease_s=10) == []  # w1 is alive
        await one.request_stop("held", "asked elsewhere")
        await one.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 60 "
                          "WHERE id = 'w1'")  # w1 went silent a minute ago
        [(taken, reason)] = await two.claim_runs("w2", 10, lease_s=10)
        assert (taken.id, taken.owner, reason) == ("held", "w2", "asked elsewhere")
        assert await one.heartbeat("w1", lease_s=10) is False  # too late: it must fence
        assert await two.heartbeat("w2", lease_s=10) is True
        assert [w["id"] for w in await one.workers(10) if w["alive"]] == ["w2"]


async def test_a_process_past_its_lease_lands_no_write(postgres_url: str) -> None:
    async with Store.open(postgres_url) as mine, Store.open(postgres_url) as other:
        lost: list[bool] = []
        mine.owner = "w1"
        mine.guard_lease(10, lambda: lost.append(True))
        await mine.register_worker("w1", "h", 1)
        await mine.insert_run(make_run("r1")).wait()  # holding its lease: lands
        await other.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 60 "
                            "WHERE id = 'w1'")  # as others see it: w1 went silent
        with pytest.raises(Unavailable, match="lost its lease"):
            await mine.insert_run(make_run("r2")).wait()
        assert lost == [True]
        assert await other.get_run("r2") is None
        # It gives its runs up: what it had queued is dropped, and as a new worker
        # (not yet registered) it writes again.
        late = mine.record(event=Event("r1", 1, "node_started", {}, time.time()))
        mine.drop_queued_writes()
        mine.owner = "w2"
        with pytest.raises(Unavailable):
            await late.wait()
        await mine.register_worker("w2", "h", 1)
        assert await other.events("r1") == []


@asynccontextmanager
async def process(url: str, **settings: Any) -> AsyncIterator[RunService]:
    """One flowrun process's service on ``url`` with quick leases."""
    chosen: dict[str, Any] = {"heartbeat_s": 0.2, "lease_s": 3.0, **settings}
    app = create_app(Settings(db=url, shutdown_grace_s=0.1, code_pool_size=0, **chosen))
    async with flowrun_lifespan(app):
        service: RunService = app.state.flowrun.instance.service
        for definition in (QUICK, SLOW):
            await service.workflows.register(ADMIN, definition)
        yield service


async def test_a_process_that_loses_its_lease_gives_its_runs_up(postgres_url: str) -> None:
    async with process(postgres_url) as service:
        cluster = service.cluster
        assert isinstance(cluster, Cluster)
        old_worker = cluster.worker_id
        run = (await service.submit(ANN, RunRequest("slow", {"seconds": 1.5}))).run
        await until_status(service, run.id, RunStatus.RUNNING)
        # As if this process had stalled past its lease: the others may claim its runs.
        await service.store.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 60 "
                                    "WHERE id = ?", (old_worker,))
        await eventually_async(lambda: cluster.fenced, timeout=5,
                               what="the process giving its runs up")
        assert cluster.worker_id != old_worker  # it came back as a new worker...
        done = await until_status(service, run.id, RunStatus.SUCCEEDED)  # ...and took it
        assert done.owner == cluster.worker_id
        events = await service.store.events(run.id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.name for e in events].count("workflow_resumed") == 1


async def test_max_queued_holds_for_the_whole_cluster(postgres_url: str) -> None:
    async with process(postgres_url, max_concurrent_runs=1, max_queued=2) as a, \
            process(postgres_url, max_concurrent_runs=1, max_queued=2) as b:
        assert a.cluster is not None
        for service in (a, b):  # each process's one slot taken
            run = (await service.submit(ANN, RunRequest("slow"))).run
            # counted while the run may still be queued on the process that took it
            # (for its free slot): that is not the cluster's queue
            await a.cluster.recount()
            assert a.cluster.queued_estimate == 0
            await until_status(service, run.id, RunStatus.RUNNING)
        for _ in range(2):  # queued for the cluster, through a
            queued = (await a.submit(ANN, RunRequest("quick"))).run
            assert queued.owner is None
        assert b.cluster is not None
        counting = b.cluster  # b counts the cluster's queue each heartbeat
        await eventually_async(lambda: counting.queued_estimate >= 2, timeout=5,
                               what="b counting the cluster's two queued runs")
        with pytest.raises(QueueFull):
            await b.submit(ANN, RunRequest("quick"))


async def test_a_run_counted_while_its_accept_was_in_flight_is_not_counted_twice(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with process(postgres_url, max_concurrent_runs=1, max_queued=2) as a:
        cluster = a.cluster
        assert cluster is not None
        run = (await a.submit(ANN, RunRequest("slow"))).run  # the one slot taken
        await until_status(a, run.id, RunStatus.RUNNING)
        accept = a.store.accept_run

        async def accept_then_count(*args: Any, **kwargs: Any) -> Any:
            accepted = await accept(*args, **kwargs)
            await cluster.recount()  # a heartbeat's count, after the commit: it sees the run
            return accepted

        monkeypatch.setattr(a.store, "accept_run", accept_then_count)
        assert (await a.submit(ANN, RunRequest("quick"))).run.owner is None
        assert cluster.queued_estimate == 1
        assert (await a.submit(ANN, RunRequest("quick"))).run.owner is None  # room for it
        assert cluster.queued_estimate == 2
        with pytest.raises(QueueFull):
            await a.submit(ANN, RunRequest("quick"))


async def test_wake_ups_count_the_cluster_s_queue_once_a_heartbeat(postgres_url: str) -> None:
    async with process(postgres_url, heartbeat_s=5.0, lease_s=20.0) as a:
        cluster = a.cluster
        assert cluster is not None
        await cluster.recount()
        counted = cluster.counts
        for _ in range(20):  # as a burst of runs queued for the cluster would wake it
            await cluster.tick()
        assert cluster.counts == counted  # the count walks the whole queue: not each time


TWO_STEPS = {"name": "two-steps",
             "nodes": [{"id": "wait", "type": "sleep", "seconds": 0.5},
                       {"id": "after", "type": "template", "template": "done"}],
             "edges": [{"source": "wait", "target": "after"}]}


async def test_a_pause_or_resume_whose_notification_was_missed_is_applied_from_the_store(
        postgres_url: str) -> None:
    # (a long heartbeat: the test makes each look itself)
    async with process(postgres_url, heartbeat_s=30.0, lease_s=60.0) as service:
        cluster = service.cluster
        assert cluster is not None
        await service.workflows.register(ADMIN, TWO_STEPS)
        run = (await service.submit(ANN, RunRequest("two-steps"))).run
        await until_status(service, run.id, RunStatus.RUNNING)
        handle = service.dispatcher.get(run.id)
        assert handle is not None
        # paused elsewhere, its notification lost: only the row says so
        assert await service.store.set_status(run.id, RunStatus.PAUSED,
                                              only_from=(RunStatus.RUNNING,))
        await cluster.sync_pauses()
        assert not handle.paused  # one look may fall inside a pause: a second decides
        await cluster.sync_pauses()
        assert handle.paused
        async def first_done() -> dict[str, Any] | NotYet:
            nodes = {n.node_id: n for n in (await service.get_run(ANN, run.id)).nodes}
            done = "wait" in nodes and nodes["wait"].status.value == "succeeded"
            return nodes if done else NotYet(nodes)

        # the first node ends; the second does not start while paused
        nodes = await eventually_async(first_done, timeout=10, what="the first node finished")
        assert "after" not in nodes
        assert (await service.get_run(ANN, run.id)).status is RunStatus.PAUSED
        # a disagreement seen once, gone by the next look, is not acted on
        await service.store.set_status(run.id, RunStatus.RUNNING, only_from=(RunStatus.PAUSED,))
        await cluster.sync_pauses()
        await service.store.set_status(run.id, RunStatus.PAUSED, only_from=(RunStatus.RUNNING,))
        await cluster.sync_pauses()
        await cluster.sync_pauses()
        assert handle.paused
        # resumed elsewhere, its notification lost
        await service.store.set_status(run.id, RunStatus.RUNNING, only_from=(RunStatus.PAUSED,))
        await cluster.sync_pauses()
        await cluster.sync_pauses()
        assert not handle.paused
        done = await until_status(service, run.id, RunStatus.SUCCEEDED)
        assert [n.node_id for n in done.nodes] == ["wait", "after"]
