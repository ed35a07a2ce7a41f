"""The jobs API (``/workflows/{id}/run``, ``run-sync``, ``latest-job``, ``/jobs/{id}/stream``).

Mounted at ``/jobs``. A job is a run: its ``id`` is the run's row number (an
integer, as in the original) and ``runId`` its flowrun id; a workflow is named by
its name or its numeric id (``workflowId``). ``nodes``/``edges`` in a body replace
the graph for that run, in flowrun's node format. Inputs go in ``input`` (or
``inputs``).

Status vocabulary: queued → pending, running/paused/waiting → running, succeeded →
completed, failed/timed_out → failed, stopped → cancelled.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict
from sse_starlette import ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from flowrun.api.common import (
    JSONResponse,
    checked_wait,
    error_handlers,
    id_number,
    instance_of,
    last_event_id,
    parse_model,
    principal_of,
    query_int,
    read_json,
    sse_response,
)
from flowrun.api.routes import ApiRoute
from flowrun.errors import DefinitionError, FlowrunError, RunNotFound, WorkflowNotFound
from flowrun.records import Event, NodeStatus, RunRecord, RunStatus, rfc3339
from flowrun.runs.access import Principal
from flowrun.runs.service import RunRequest, RunService

TIMEOUT_MESSAGE = "Job execution timeout: the job is still running but exceeded the wait time."
_STATUS = {RunStatus.QUEUED: "pending", RunStatus.RUNNING: "running",
           RunStatus.PAUSED: "running", RunStatus.WAITING: "running",
           RunStatus.SUCCEEDED: "completed",
           RunStatus.FAILED: "failed", RunStatus.TIMED_OUT: "failed",
           RunStatus.STOPPED: "cancelled"}


class JobBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    nodes: list[Any] | None = None
    edges: list[Any] | None = None
    timeout: float | None = None  # checked against the setting: checked_wait


def render_error(exc: FlowrunError, request: Request | None = None) -> Response:
    return JSONResponse({"success": False, "message": exc.message, "code": exc.code,
                         "errors": exc.errors}, status_code=exc.status_code,
                        headers=exc.headers)


async def _workflow_name(request: Request, principal: Principal, raw: str) -> str:
    try:
        return await instance_of(request).workflows.resolve(principal, raw)
    except WorkflowNotFound:
        raise WorkflowNotFound(f"workflow {raw} does not exist") from None


async def job_json(service: RunService, run: RunRecord) -> dict[str, Any]:
    """The job object, with every node of the graph and what became of it."""
    by_id = {n.node_id: n for n in run.nodes}
    try:
        graph = [(n.id, n.type) for n in (await service.definition_of(run)).nodes]
    except (DefinitionError, FlowrunError):
        graph = [(n.node_id, n.type) for n in run.nodes]
    nodes = []
    for node_id, node_type in graph:
        record = by_id.get(node_id)
        executed = record is not None and record.status not in {NodeStatus.SKIPPED,
                                                                NodeStatus.PENDING}
        errors = [record.error["message"]] if record is not None and record.error else []
        nodes.append({"id": node_id, "type": node_type,
                      "data": {"isExecuted": executed,
                               "outputs": record.outputs if record is not None else None,
                               "errors": errors,
                               "status": record.status.value if record else "pending"}})
    return {"id": run.num, "slug": f"job-{run.workflow}-{int(run.created_at * 1000)}",
            "status": _STATUS[run.status],
            "workflowId": await service.workflows.number(run.workflow),
            "workflowName": run.workflow, "runId": run.id, "createdAt": rfc3339(run.created_at),
            "updatedAt": rfc3339(run.finished_at or run.started_at or run.created_at),
            "startedAt": rfc3339(run.started_at), "finishedAt": rfc3339(run.finished_at),
            "result": run.outputs, "error": (run.error or {}).get("message"), "nodes": nodes}


def _run_request(request: Request, name: str, body: JobBody) -> RunRequest:
    return RunRequest(workflow=name, inputs=body.input or body.inputs or {}, nodes=body.nodes,
                      edges=body.edges, trace_id=request.headers.get("x-trace-id"))


async def _body(request: Request) -> tuple[Principal, RunService, str, JobBody]:
    principal = await principal_of(request)
    service = instance_of(request).service
    body = parse_model(JobBody, await read_json(request, service.settings.max_body_bytes,
                                                empty={}))
    name = await _workflow_name(request, principal, request.path_params["id"])
    return principal, service, name, body


async def run(request: Request) -> Response:
    """Jobs: start a job."""
    principal, service, name, body = await _body(request)
    accepted = (await service.submit(principal, _run_request(request, name, body))).run
    job = await service.get_run(principal, accepted.id)  # with its number
    return JSONResponse({"success": True, "data": await job_json(service, job)})


async def run_sync(request: Request) -> Response:
    """Jobs: run a job and wait."""
    started = time.monotonic()
    principal, service, name, body = await _body(request)
    wait = checked_wait(body.timeout, service.settings.run_sync_max_timeout_s)
    outcome = await service.run_sync(principal, _run_request(request, name, body), wait,
                                     started=started)
    finished = outcome.run
    if outcome.finished:
        return JSONResponse({"success": finished.status is RunStatus.SUCCEEDED,
                             "data": await job_json(service, finished)})
    return JSONResponse({"success": False, "message": TIMEOUT_MESSAGE, "data": {
        "job_id": finished.num, "slug": f"job-{finished.workflow}-"
                                        f"{int(finished.created_at * 1000)}",
        "status": _STATUS[finished.status], "timeout": outcome.timeout_s,
        "elapsed_seconds": round(outcome.elapsed_s, 3)}}, status_code=408)


async def _jobs(request: Request, limit: int) -> tuple[RunService, list[RunRecord]]:
    principal = await principal_of(request)
    service = instance_of(request).service
    name = await _workflow_name(request, principal, request.path_params["id"])
    runs, _ = await service.list_runs(principal, name, limit=limit)
    return service, [await service.get_run(principal, r.id) for r in runs]


async def latest_job(request: Request) -> Response:
    """Jobs: the newest job."""
    service, runs = await _jobs(request, 1)
    if not runs:
        raise RunNotFound(f"workflow {request.path_params['id']} has no jobs yet")
    return JSONResponse({"success": True, "data": await job_json(service, runs[0])})


async def list_jobs(request: Request) -> Response:
    """Jobs: recent jobs."""
    limit = query_int(request, "limit", 20, minimum=1, maximum=200) or 20
    service, runs = await _jobs(request, limit)
    return JSONResponse({"success": True,
                         "data": [await job_json(service, r) for r in runs]})


def _frame(kind: str, run: RunRecord, event: Event | None, extra: dict[str, Any]
           ) -> ServerSentEvent:
    payload = {"type": kind, "status": _STATUS[run.status], "job_id": run.num, **extra}
    return ServerSentEvent(data=json.dumps(payload, separators=(",", ":")),
                           id=str(event.seq) if event is not None else None)


async def stream(request: Request) -> Response:
    """Jobs: a job's events.

    SSE: ``init`` (the job now), ``update`` per node event, ``done`` with the result.
    """
    principal = await principal_of(request)
    service = instance_of(request).service
    raw = request.path_params["job_id"]
    number = id_number(raw)
    try:
        run = await service.get_run_by_number(principal, number) if number is not None \
            else await service.get_run(principal, raw)
    except RunNotFound:
        raise RunNotFound(f"job {raw} not found") from None  # never another key's run id
    events = service.follow(principal, run.id, last_event_id(request))

    async def frames() -> AsyncGenerator[ServerSentEvent, None]:
        yield _frame("init", run, None, {"job": await job_json(service, run)})
        async with aclosing(events):
            async for event in events:
                if event.name == "workflow_finished":
                    final = await service.get_run(principal, run.id)
                    yield _frame("done", final, event, {"result": final.outputs,
                                                        "error": event.data.get("error")})
                    return
                if event.name in {"node_started", "node_finished", "text_chunk"}:
                    run.status = RunStatus.RUNNING
                    yield _frame("update", run, event, {"event": event.name,
                                                        "node_id": event.data.get("node_id"),
                                                        "data": event.data})

    return sse_response(request, frames())


route = partial(ApiRoute, error="JobsError")

routes = [
    route("/workflows/{id}/run", run, "POST", body=JobBody, also=("408",)),
    route("/workflows/{id}/run-sync", run_sync, "POST", body=JobBody, also=("408",)),
    route("/workflows/{id}/latest-job", latest_job, "GET"),
    route("/workflows/{id}/jobs", list_jobs, "GET", query=("limit",)),
    route("/jobs/{job_id}/stream", stream, "GET", stream=True),
]
exception_handlers = error_handlers(render_error)

__all__ = ("exception_handlers", "render_error", "routes")
