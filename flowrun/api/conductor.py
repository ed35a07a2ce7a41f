"""The Conductor (OSS / Orkes) workflow API over flowrun runs.

Mounted at ``/conductor/api``. A run is a Conductor workflow execution and each
node execution a task. Starts answer the bare run id as ``text/plain``.

Status vocabulary: queued/running/waiting → RUNNING, paused → PAUSED, succeeded →
COMPLETED, failed → FAILED, timed_out → TIMED_OUT, stopped → TERMINATED. Task
status: pending → SCHEDULED, running → IN_PROGRESS, succeeded → COMPLETED,
failed → FAILED, skipped → SKIPPED, stopped → CANCELED, waiting → IN_PROGRESS
(as Conductor's WAIT task). Priority orders runs
higher-first, FIFO within one priority, as Conductor's own queues do (its
Postgres queue reads ``ORDER BY priority DESC, deliver_on, created_on``).
"""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from flowrun.api.common import (
    JSONResponse,
    error_handlers,
    id_number,
    instance_of,
    on_conflict_of,
    parse_model,
    principal_of,
    query_int,
    read_json,
)
from flowrun.api.routes import ApiRoute
from flowrun.errors import BadRequest, Conflict, FlowrunError, NotFound, Unauthorized
from flowrun.records import RUN_TERMINAL, NodeRecord, NodeStatus, OnConflict, RunRecord, RunStatus
from flowrun.runs import access
from flowrun.runs.service import RunRequest

_STATUS = {RunStatus.QUEUED: "RUNNING", RunStatus.RUNNING: "RUNNING",
           RunStatus.PAUSED: "PAUSED", RunStatus.SUCCEEDED: "COMPLETED",
           # a WAIT task keeps its workflow RUNNING, the task IN_PROGRESS
           RunStatus.WAITING: "RUNNING",
           RunStatus.FAILED: "FAILED", RunStatus.TIMED_OUT: "TIMED_OUT",
           RunStatus.STOPPED: "TERMINATED"}
_TASK_STATUS = {NodeStatus.PENDING: "SCHEDULED", NodeStatus.RUNNING: "IN_PROGRESS",
                NodeStatus.SUCCEEDED: "COMPLETED", NodeStatus.FAILED: "FAILED",
                NodeStatus.SKIPPED: "SKIPPED", NodeStatus.STOPPED: "CANCELED",
                NodeStatus.WAITING: "IN_PROGRESS"}
_CODES = {400: "INVALID_INPUT", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
          409: "CONFLICT", 413: "INVALID_INPUT", 415: "INVALID_INPUT", 422: "CONFLICT",
          429: "TOO_MANY_REQUESTS", 503: "BACKEND_ERROR"}


class StartWorkflowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str
    version: int | None = None
    correlationId: str | None = None  # camelCase: Conductor's field names
    input: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0  # 0-99: checked by the service, for every API
    idempotencyKey: str | None = None
    idempotencyStrategy: str | None = None
    workflowDef: dict[str, Any] | None = None


def render_error(exc: FlowrunError, request: Request | None = None) -> Response:
    """Conductor's ErrorResponse: ``{status, code, message, instance, retryable, ...}``."""
    body = {"status": exc.status_code, "code": _CODES.get(exc.status_code, "INTERNAL_ERROR"),
            "message": exc.message, "instance": "flowrun", "retryable": exc.status_code in
            {429, 503}, "validationErrors": [{"path": e.get("field"), "message": e["message"]}
                                             for e in exc.errors],
            "metadata": {"flowrun_code": exc.code, **exc.extra}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _ms(ts: float | None) -> int:
    return 0 if ts is None else int(ts * 1000)


def task_json(run: RunRecord, node: NodeRecord) -> dict[str, Any]:
    return {"taskId": f"{run.id}:{node.node_id}", "taskType": node.type.upper(),
            "taskDefName": node.type, "referenceTaskName": node.node_id,
            "status": _TASK_STATUS[node.status], "inputData": node.inputs,
            "outputData": node.outputs, "seq": node.index,
            "retryCount": max(node.attempts - 1, 0), "pollCount": 0,
            "scheduledTime": _ms(node.started_at), "startTime": _ms(node.started_at),
            "endTime": _ms(node.finished_at), "updateTime": _ms(node.finished_at or
                                                                 node.started_at),
            "workflowInstanceId": run.id, "workflowType": run.workflow,
            "correlationId": run.correlation_id, "workflowPriority": run.priority,
            "reasonForIncompletion": (node.error or {}).get("message")}


def _reason(run: RunRecord) -> str | None:
    if run.error:
        return str(run.error.get("message"))
    return "terminated" if run.status is RunStatus.STOPPED else None


def workflow_json(run: RunRecord, include_tasks: bool = True) -> dict[str, Any]:
    failed = [n for n in run.nodes if n.status is NodeStatus.FAILED]
    return {
        "workflowId": run.id, "workflowName": run.workflow, "workflowVersion": run.version,
        "correlationId": run.correlation_id, "status": _STATUS[run.status],
        "createTime": _ms(run.created_at), "startTime": _ms(run.started_at or run.created_at),
        "endTime": _ms(run.finished_at),
        "updateTime": _ms(run.finished_at or run.started_at or run.created_at),
        "input": run.inputs, "output": run.outputs or {}, "priority": run.priority,
        "reasonForIncompletion": _reason(run), "idempotencyKey": run.idempotency_key,
        "parentWorkflowId": run.parent_run_id, "variables": {}, "ownerApp": "",
        "createdBy": run.user or "",
        "failedReferenceTaskNames": [n.node_id for n in failed],
        "failedTaskNames": sorted({n.type for n in failed}),
        "tasks": [task_json(run, n) for n in run.nodes] if include_tasks else [],
    }


def _int_query(request: Request, name: str, default: int | None) -> int | None:
    return query_int(request, name, default, minimum=-2**31, maximum=2**31)


def _strategy(key: str | None, raw: str | None, *, required: bool) -> OnConflict:
    """Conductor's idempotency strategy: FAIL by default; by-name starts must say it."""
    if key is None:
        return OnConflict.RETURN_EXISTING
    strategy = on_conflict_of(raw, "X-on-conflict")
    if strategy is None and required:
        raise BadRequest("X-on-conflict is required with X-Idempotency-key "
                         "(RETURN_EXISTING, FAIL or FAIL_ON_RUNNING)",
                         errors=[{"field": "X-on-conflict", "message": "required"}])
    return strategy or OnConflict.FAIL


def _run_request(request: Request, start: StartWorkflowRequest, key: str | None,
                 strategy: OnConflict) -> RunRequest:
    if start.workflowDef is not None:
        raise BadRequest("inline workflowDef is not supported; register the workflow first")
    return RunRequest(
        workflow=start.name, version=start.version or None, inputs=start.input,
        priority=start.priority, correlation_id=start.correlationId,
        trace_id=request.headers.get("x-trace-id"), idempotency_key=key,
        on_conflict=strategy)


async def _start(request: Request, start: StartWorkflowRequest, key: str | None,
                 strategy: OnConflict) -> RunRecord:
    run_request = _run_request(request, start, key, strategy)
    principal = await principal_of(request)
    return (await instance_of(request).service.submit(principal, run_request)).run


async def start_by_name(request: Request) -> Response:
    """Conductor: start by name."""
    service = instance_of(request).service
    data = await read_json(request, service.settings.max_body_bytes, empty={})
    if not isinstance(data, dict):
        raise BadRequest("the body must be the workflow's input as a JSON object")
    priority = _int_query(request, "priority", 0) or 0  # 0-99: checked by the service
    key = request.headers.get("x-idempotency-key")
    start = StartWorkflowRequest(name=request.path_params["name"],
                                 version=_int_query(request, "version", None),
                                 correlationId=request.query_params.get("correlationId"),
                                 input=data, priority=priority)
    run = await _start(request, start, key,
                       _strategy(key, request.headers.get("x-on-conflict"), required=True))
    return PlainTextResponse(run.id)


async def start_with_request(request: Request) -> Response:
    """Conductor: start (StartWorkflowRequest)."""
    service = instance_of(request).service
    start = parse_model(StartWorkflowRequest,
                        await read_json(request, service.settings.max_body_bytes))
    key = start.idempotencyKey or request.headers.get("x-idempotency-key")
    strategy = _strategy(key, start.idempotencyStrategy or request.headers.get("x-on-conflict"),
                         required=False)
    run = await _start(request, start, key, strategy)
    return PlainTextResponse(run.id)


async def _run(request: Request) -> tuple[access.Principal, RunRecord]:
    principal = await principal_of(request)
    try:
        run = await instance_of(request).service.get_run(principal,
                                                         request.path_params["workflow_id"])
    except NotFound:
        raise NotFound(f"No such workflow found by id: "
                       f"{request.path_params['workflow_id']}") from None
    return principal, run


def _flag(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name)
    return default if raw is None else raw.lower() in {"true", "1", "yes"}


async def get_workflow(request: Request) -> Response:
    """Conductor: an execution."""
    _, run = await _run(request)
    return JSONResponse(workflow_json(run, _flag(request, "includeTasks", True)))


async def get_status(request: Request) -> Response:
    """Conductor: status."""
    _, run = await _run(request)
    body: dict[str, Any] = {"workflowId": run.id, "correlationId": run.correlation_id,
                            "status": _STATUS[run.status]}
    if _flag(request, "includeOutput", False):
        body["output"] = run.outputs or {}
    if _flag(request, "includeVariables", False):
        body["variables"] = {}
    return JSONResponse(body)


async def terminate(request: Request) -> Response:
    """Conductor: terminate."""
    principal, run = await _run(request)
    if run.status is RunStatus.SUCCEEDED:
        raise Conflict("Cannot terminate a COMPLETED workflow.")
    if run.status not in RUN_TERMINAL:
        await instance_of(request).service.stop(principal, run.id,
                                       request.query_params.get("reason") or "terminated")
    return Response(status_code=200)


async def pause(request: Request) -> Response:
    """Conductor: pause."""
    principal, run = await _run(request)
    await instance_of(request).service.pause(principal, run.id)
    return Response(status_code=200)


async def resume(request: Request) -> Response:
    """Conductor: resume."""
    principal, run = await _run(request)
    await instance_of(request).service.resume(principal, run.id)
    return Response(status_code=200)


async def restart(request: Request) -> Response:
    """Conductor: restart."""
    principal, run = await _run(request)
    await instance_of(request).service.rerun(principal, run.id, from_failure=False)
    return Response(status_code=204)


async def retry(request: Request) -> Response:
    """Conductor: retry."""
    principal, run = await _run(request)
    await instance_of(request).service.rerun(principal, run.id, from_failure=True)
    return Response(status_code=204)


async def execute(request: Request) -> Response:
    """Conductor: start and wait.

    Waits up to ``waitForSeconds`` (0 means 10) and answers a SignalResponse.
    """
    began = time.monotonic()
    service = instance_of(request).service
    data = await read_json(request, service.settings.max_body_bytes, empty={})
    if not isinstance(data, dict):
        raise BadRequest("the body must be a StartWorkflowRequest object")
    data = {**data, "name": request.path_params["name"]}
    version = request.path_params["version"]
    if id_number(version) is None:
        raise BadRequest(f"version must be a number (0 for the latest), not {version!r}",
                         errors=[{"field": "version", "message": "not a number"}])
    data["version"] = int(version) or None
    start = parse_model(StartWorkflowRequest, data)
    wait_s = _int_query(request, "waitForSeconds", 10) or 10
    key = start.idempotencyKey or request.headers.get("x-idempotency-key")
    strategy = _strategy(key, start.idempotencyStrategy or request.headers.get("x-on-conflict"),
                         required=False)
    run_request = _run_request(request, start, key, strategy)
    outcome = await service.run_sync(await principal_of(request), run_request,
                                     max(wait_s, 1), started=began)
    run, finished = outcome.submission.run, outcome.run
    body = workflow_json(finished)
    request_id = request.query_params.get("requestId") or str(uuid.uuid4())
    return JSONResponse({
        "responseType": "TARGET_WORKFLOW", "targetWorkflowId": run.id,
        "targetWorkflowStatus": body["status"], "requestId": request_id,
        "workflowId": run.id, "correlationId": run.correlation_id, "input": body["input"],
        "output": body["output"], "priority": run.priority, "variables": {},
        "tasks": body["tasks"], "createdBy": body["createdBy"],
        "createTime": body["createTime"], "updateTime": body["updateTime"],
        "status": body["status"], "signalTimeout": not outcome.finished})


async def token(request: Request) -> Response:
    """Orkes: a token for a key.

    An API key id and secret in, a token (the key) out.
    """
    service = instance_of(request).service
    if not service.settings.auth_enabled:
        raise NotFound("authentication is off")  # Conductor clients read 404 as open mode
    data = await read_json(request, service.settings.max_body_bytes)
    if not isinstance(data, dict) or not data.get("keySecret"):
        raise BadRequest("keyId and keySecret are required")
    principal = await instance_of(request).keys.authenticate(str(data["keySecret"]))
    if data.get("keyId") not in (None, "", principal.key_id):
        raise Unauthorized("keyId does not match the key")
    return JSONResponse({"token": str(data["keySecret"])})


route = partial(ApiRoute, error="ConductorError")

routes = [
    route("/token", token, "POST", body={"type": "object", "properties": {
        "keyId": {"type": "string"}, "keySecret": {"type": "string"}}}),
    route("/workflow", start_with_request, "POST", body=StartWorkflowRequest),
    route("/workflow/execute/{name}/{version}", execute, "POST", body=StartWorkflowRequest,
          query=("waitForSeconds", "requestId")),
    route("/workflow/{name}", start_by_name, "POST", body={"type": "object"},
          query=("version", "correlationId", "priority")),
    route("/workflow/{workflow_id}", get_workflow, "GET", query=("includeTasks",)),
    route("/workflow/{workflow_id}", terminate, "DELETE", query=("reason",)),
    route("/workflow/{workflow_id}/status", get_status, "GET",
          query=("includeOutput", "includeVariables")),
    route("/workflow/{workflow_id}/pause", pause, "PUT"),
    route("/workflow/{workflow_id}/resume", resume, "PUT"),
    route("/workflow/{workflow_id}/restart", restart, "POST", ok="204"),
    route("/workflow/{workflow_id}/retry", retry, "POST", ok="204"),
]
exception_handlers = error_handlers(render_error)

__all__ = ("exception_handlers", "render_error", "routes")

