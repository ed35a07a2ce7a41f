"""RunService through its public methods: submit, ownership, idempotency, queue limits,
drain, wait budgets, stop.

The service is built by the composition root itself (``create_app`` and its
lifespan, in-process, no HTTP), so the tests do not depend on how RunService,
the dispatcher or the runner are constructed; only ``open_service`` knows.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowrun import Settings, create_app, flowrun_lifespan
from flowrun.errors import (
    IdempotencyConflict,
    IdempotencyKeyReused,
    QueueFull,
    RunNotFound,
    TooManyRequests,
    Unavailable,
)
from flowrun.language.definitions import WorkflowDefinition
from flowrun.language.graph import concurrency_of, split_dotted_inputs
from flowrun.records import (
    IdempotencyClaim,
    KeyHolder,
    NodeStatus,
    OnConflict,
    RunRecord,
    RunStatus,
)
from flowrun.runs.access import Principal, Scope
from flowrun.runs.service import (
    RunRequest,
    RunService,
    reuses,
)
from tests.eventually import NotYet, eventually_async

ADMIN = Principal("admin", Scope.ADMIN)
ANN = Principal("key-ann")
BOB = Principal("key-bob")
QUICK = {"name": "quick", "inputs": {"name": {"type": "string", "default": "x"}},
         "nodes": [{"id": "greet", "type": "template", "template": "hi {{ inputs.name }}"}]}
# never finishes by itself within a test: it is stopped, or cancelled at shutdown
SLOW = {"name": "slow", "inputs": {"seconds": {"type": "number", "default": 60}},
        "nodes": [{"id": "wait", "type": "sleep", "seconds": "{{ inputs.seconds }}"}]}
OpenService = Callable[..., AbstractAsyncContextManager[RunService]]


@pytest.fixture
def open_service(db_target: Path | str) -> OpenService:
    """Start flowrun in-process as the app does (on SQLite, then on PostgreSQL), with
    QUICK and SLOW registered; settings as keyword arguments. Runs still going at the
    end are cancelled after a short grace."""

    @asynccontextmanager
    async def open_(**settings: Any) -> AsyncIterator[RunService]:
        app = create_app(Settings(db=str(db_target), shutdown_grace_s=0.1,
                                  code_pool_size=0, **settings))
        async with flowrun_lifespan(app):
            service: RunService = app.state.flowrun.instance.service
            for definition in (QUICK, SLOW):
                await service.workflows.register(ADMIN, definition)
            yield service

    return open_


async def until_status(service: RunService, run_id: str, *wanted: RunStatus) -> RunRecord:
    """Poll a run until it has one of the ``wanted`` statuses (5 s at most)."""
    async def reached() -> RunRecord | NotYet:
        run = await service.get_run(ADMIN, run_id)
        return run if run.status in wanted else NotYet(run.status)

    found: RunRecord = await eventually_async(reached, timeout=5, interval=0.01,
                                              what=f"run {run_id} in {wanted}")
    return found


async def test_submit_commits_the_run_before_it_returns(open_service: OpenService) -> None:
    async with open_service() as service:
        submission = await service.submit(ANN, RunRequest("quick", {"name": "Ada"}))
        assert submission.created and submission.run.status is RunStatus.QUEUED
        stored = await service.store.get_run(submission.run.id)  # already durable
        assert stored is not None and stored.api_key_id == "key-ann"
        done = await service.wait(ANN, submission.run.id, within_s=5)
        assert done.status is RunStatus.SUCCEEDED
        assert done.outputs == {"greet": {"text": "hi Ada"}}


async def test_another_keys_run_is_not_found(open_service: OpenService) -> None:
    async with open_service() as service:
        run = (await service.submit(ANN, RunRequest("quick"))).run
        await service.wait(ANN, run.id, within_s=5)
        with pytest.raises(RunNotFound):
            await service.get_run(BOB, run.id)
        with pytest.raises(RunNotFound):
            await service.stop(BOB, run.id)
        with pytest.raises(RunNotFound):
            await service.wait(BOB, run.id, within_s=1)
        assert (await service.list_runs(BOB, "quick"))[0] == []
        assert [r.id for r in (await service.list_runs(ANN, "quick"))[0]] == [run.id]
        assert (await service.get_run(ADMIN, run.id)).id == run.id  # admin sees all runs
        with pytest.raises(RunNotFound):
            await service.get_run(ANN, "no-such-run")


async def test_an_idempotency_key_returns_the_same_run(open_service: OpenService) -> None:
    async with open_service() as service:
        request = RunRequest("quick", {"name": "a"}, idempotency_key="k-1")
        first = await service.submit(ANN, request)
        again = await service.submit(ANN, request)
        assert first.created and not again.created
        assert again.run.id == first.run.id
        with pytest.raises(IdempotencyKeyReused):
            await service.submit(ANN, RunRequest("quick", {"name": "b"}, idempotency_key="k-1"))
        other_key = await service.submit(BOB, request)  # keys are scoped per API key
        assert other_key.created and other_key.run.id != first.run.id
        with pytest.raises(IdempotencyConflict):
            await service.submit(ANN, RunRequest("quick", {"name": "a"}, idempotency_key="k-1",
                                                 on_conflict=OnConflict.FAIL))


async def test_fail_on_running_refuses_while_running_then_starts_a_new_run(
        open_service: OpenService) -> None:
    async with open_service() as service:
        request = RunRequest("slow", idempotency_key="job-7",
                             on_conflict=OnConflict.FAIL_ON_RUNNING)
        first = (await service.submit(ANN, request)).run
        await until_status(service, first.id, RunStatus.RUNNING)
        with pytest.raises(IdempotencyConflict):
            await service.submit(ANN, request)
        assert (await service.stop(ANN, first.id)).status is RunStatus.STOPPED
        second = await service.submit(ANN, request)
        assert second.created and second.run.id != first.id
        # the key now names the new run
        again = await service.submit(ANN, RunRequest("slow", idempotency_key="job-7"))
        assert not again.created and again.run.id == second.run.id
        await service.stop(ANN, second.run.id)


async def test_a_full_queue_refuses_runs_and_writes_nothing(open_service: OpenService) -> None:
    async with open_service(max_concurrent_runs=1, max_queued=1) as service:
        running = (await service.submit(ANN, RunRequest("slow"))).run
        await until_status(service, running.id, RunStatus.RUNNING)
        queued = (await service.submit(ANN, RunRequest("slow"))).run
        with pytest.raises(QueueFull):
            await service.submit(ANN, RunRequest("slow"))
        with pytest.raises(QueueFull):  # checked again inside the accept's transaction
            await service.submit(ANN, RunRequest("slow", idempotency_key="k"))
        runs, _ = await service.list_runs(ANN, "slow")
        assert {r.id for r in runs} == {running.id, queued.id}
        await service.stop(ANN, queued.id)
        await service.stop(ANN, running.id)


async def test_a_key_past_its_run_rate_is_refused_and_nothing_is_written(
        open_service: OpenService) -> None:
    async with open_service(run_rate_per_key=0.5, run_burst_per_key=2) as service:
        first = (await service.submit(ANN, RunRequest("quick"))).run
        await service.submit(ANN, RunRequest("quick"))
        with pytest.raises(TooManyRequests) as refused:
            await service.submit(ANN, RunRequest("quick", idempotency_key="k"))
        assert refused.value.headers["Retry-After"] == "2"  # 1 token / 0.5 per s
        assert len((await service.list_runs(ANN, "quick"))[0]) == 2
        await service.submit(BOB, RunRequest("quick"))  # another key has its own bucket
        keyless = Principal(None, Scope.ADMIN)  # auth off, or the schedule loop
        for _ in range(3):
            await service.submit(keyless, RunRequest("quick"))
        # a child run is part of its root run, which was counted when it started
        child = await service.submit(ANN, RunRequest("quick", parent_run_id=first.id,
                                                     depth=1, root_run_id=first.id))
        assert child.created


async def test_a_draining_service_accepts_and_starts_nothing(open_service: OpenService) -> None:
    async with open_service(max_concurrent_runs=1) as service:
        running = (await service.submit(ANN, RunRequest("slow"))).run
        await until_status(service, running.id, RunStatus.RUNNING)
        queued = (await service.submit(ANN, RunRequest("quick"))).run
        service.lifecycle.begin_drain()
        assert service.health()["status"] == "draining"
        with pytest.raises(Unavailable):
            await service.submit(ANN, RunRequest("quick"))
        with pytest.raises(Unavailable):  # a run that will not finish before shutdown
            await service.wait(ANN, running.id, within_s=0.05)
        await service.stop(ANN, running.id)  # frees the slot...
        await anyio.wait_all_tasks_blocked()  # (the dispatcher had its turn)
        # ...unused (on PostgreSQL the queued run is the cluster's: no process claims it)
        queued_here = 0 if service.cluster is not None else 1
        assert (service.health()["queued"], service.health()["running"]) == (queued_here, 0)
        assert (await service.get_run(ANN, queued.id)).status is RunStatus.QUEUED


async def test_wait_answers_within_its_budget_for_a_run_that_goes_on(
        open_service: OpenService) -> None:
    async with open_service() as service:
        run = (await service.submit(ANN, RunRequest("slow"))).run
        began = time.monotonic()
        waited = await service.wait(ANN, run.id, within_s=0.3)
        elapsed = time.monotonic() - began
        assert waited.status in {RunStatus.QUEUED, RunStatus.RUNNING}
        assert 0.3 <= elapsed < 2
        await service.stop(ANN, run.id)


async def test_stop_a_running_a_queued_and_a_finished_run(open_service: OpenService) -> None:
    async with open_service(max_concurrent_runs=1) as service:
        finished = (await service.submit(ANN, RunRequest("quick"))).run
        assert (await service.wait(ANN, finished.id, 5)).status is RunStatus.SUCCEEDED
        running = (await service.submit(ANN, RunRequest("slow"))).run
        await until_status(service, running.id, RunStatus.RUNNING)
        queued = (await service.submit(ANN, RunRequest("quick"))).run
        stopped_queued = await service.stop(ANN, queued.id, "not needed")
        assert stopped_queued.status is RunStatus.STOPPED and stopped_queued.nodes == []
        stopped = await service.stop(ANN, running.id)  # returns once the stop is recorded
        assert stopped.status is RunStatus.STOPPED
        assert [(n.node_id, n.status) for n in stopped.nodes] == [("wait", NodeStatus.STOPPED)]
        unchanged = await service.stop(ANN, finished.id)
        assert unchanged.status is RunStatus.SUCCEEDED
        assert unchanged.finished_at == (await service.get_run(ANN, finished.id)).finished_at


# --- the rules the service applies (no store) -------------------------------------

def _claim(on_conflict: OnConflict, fingerprint: str = "same") -> IdempotencyClaim:
    return IdempotencyClaim("key-ann", "quick", "k", fingerprint, on_conflict)


def test_a_key_holder_is_reused_or_refused_per_strategy() -> None:
    live = KeyHolder("run-1", RunStatus.RUNNING, "same")
    done = KeyHolder("run-1", RunStatus.SUCCEEDED, "same")
    assert reuses(_claim(OnConflict.RETURN_EXISTING), live)
    with pytest.raises(IdempotencyKeyReused):  # same key, another request
        reuses(_claim(OnConflict.RETURN_EXISTING, "other"), live)
    with pytest.raises(IdempotencyConflict):
        reuses(_claim(OnConflict.FAIL), done)
    with pytest.raises(IdempotencyConflict):
        reuses(_claim(OnConflict.FAIL_ON_RUNNING), live)
    assert not reuses(_claim(OnConflict.FAIL_ON_RUNNING), done)  # a new run takes the key


def test_inputs_that_name_a_node_become_its_param_overrides() -> None:
    definition = WorkflowDefinition.model_validate({
        "name": "x", "inputs": {"text": {"type": "string"}, "t.fixed": {"type": "string"}},
        "nodes": [{"id": "t", "type": "template", "template": "{{ inputs.text }}"}]})
    plain, overrides = split_dotted_inputs(definition, {
        "text": "a", "t.template": "b", "t": {"title": "c"}, "t.fixed": "d", "u.x": "e"})
    assert plain == {"text": "a", "t.fixed": "d", "u.x": "e"}  # declared, or no such node
    assert overrides == {"t": {"template": "b", "title": "c"}}


async def test_run_sync_counts_its_budget_from_the_request(open_service: OpenService) -> None:
    async with open_service(run_sync_max_timeout_s=30) as service:
        assert service.sync_timeout(None) == service.settings.run_sync_default_timeout_s
        assert service.sync_timeout(300) == 30  # capped
        done = await service.run_sync(ANN, RunRequest("quick"), 5)
        assert done.finished and done.submission.created and done.timeout_s == 5
        began = time.monotonic() - 0.3  # the request arrived 0.3 s ago
        late = await service.run_sync(ANN, RunRequest("slow"), 0.5, started=began)
        assert not late.finished and late.run.status is RunStatus.RUNNING
        assert 0.45 <= late.elapsed_s < 1.5  # the 0.3 s before the call counted
        await service.stop(ANN, late.run.id)


def test_a_concurrency_key_is_scoped_to_its_workflow_and_defaults_to_a_limit_of_one() -> None:
    def definition(**flow: Any) -> WorkflowDefinition:
        return WorkflowDefinition.model_validate({**QUICK, **flow})

    assert concurrency_of(definition(), {"name": "x"}) is None
    keyed = definition(concurrency_key="{{ inputs.name }}")
    assert concurrency_of(keyed, {"name": "x"}) == ("quick\x00x", 1)
    assert concurrency_of(definition(concurrency_limit=3), {}) == ("quick\x00", 3)
    keyed = definition(concurrency_key="{{ inputs.name }}", concurrency_limit=2)
    assert concurrency_of(keyed, {"name": [1, 2]}) == ("quick\x00[1, 2]", 2)
    with pytest.raises(ValueError, match="syntax"):
        definition(concurrency_key="{{ inputs.name")
    with pytest.raises(ValueError):
        definition(concurrency_limit=0)
