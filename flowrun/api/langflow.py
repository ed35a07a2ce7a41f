"""The Langflow Workflow API v2 (``/api/v2/workflows``) over flowrun runs.

Mounted at ``/langflow``. A flow is a workflow (``flow_id``: its name or numeric
id) and a job is a run (``job_id``: the run id). Both request shapes are taken:
the v2 beta one (``background``/``stream``, ``inputs`` with ``"ComponentId.param"``
keys that become node param overrides) and the newer one (``mode``, ``tweaks``,
``input_value``, ``data`` with nodes/edges, ``idempotency_key``).

Status vocabulary: queued → queued, running/paused/waiting → in_progress, succeeded →
completed, failed → failed, stopped → cancelled, timed_out → timed_out.
Streams use Langflow's frame ``{"event", "data"}`` and 0-based ``id:`` values
(event N of the run is id N-1); ``Last-Event-ID`` resumes after it.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from flowrun.api.common import (
    MAX_NUMBER,
    JSONResponse,
    encoded,
    error_handlers,
    instance_of,
    parse_model,
    principal_of,
    read_json,
    sse_response,
)
from flowrun.api.routes import ApiRoute
from flowrun.errors import BadRequest, FlowrunError, RunNotFound, WorkflowNotFound
from flowrun.records import (
    RUN_TERMINAL,
    Event,
    NodeStatus,
    OnConflict,
    RunRecord,
    RunStatus,
    rfc3339,
)
from flowrun.runs.access import Principal
from flowrun.runs.service import RunRequest, RunService

_STATUS = {RunStatus.QUEUED: "queued", RunStatus.RUNNING: "in_progress",
           RunStatus.PAUSED: "in_progress", RunStatus.WAITING: "in_progress",
           RunStatus.SUCCEEDED: "completed",
           RunStatus.FAILED: "failed", RunStatus.STOPPED: "cancelled",
           RunStatus.TIMED_OUT: "timed_out"}
_CODES = {"workflow_not_found": "FLOW_NOT_FOUND", "version_not_found": "FLOW_NOT_FOUND",
          "run_not_found": "JOB_NOT_FOUND", "invalid_definition": "INVALID_FLOW_DATA",
          "invalid_param": "INVALID_REQUEST", "idempotency_conflict": "DUPLICATE_REQUEST",
          "idempotency_key_reused": "DUPLICATE_REQUEST", "unauthorized": "UNAUTHORIZED",
          "queue_full": "SERVICE_BUSY", "unavailable": "SERVICE_BUSY",
          "payload_too_large": "INVALID_REQUEST", "unsupported_media_type": "INVALID_REQUEST",
          "internal_error": "INTERNAL_SERVER_ERROR"}
_EVENT_NAMES = {"workflow_started": "start", "workflow_resumed": "start",
                "node_started": "vertex_start", "node_finished": "end_vertex",
                "node_retry": "vertex_retry", "text_chunk": "token",
                "workflow_finished": "end", "error": "error"}


class MissingParameter(BadRequest):
    code = "missing_parameter"


class WorkflowsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flow_id: str = Field(min_length=1)
    background: bool = False
    stream: bool = False
    mode: Literal["sync", "stream", "background"] | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    input_value: str | None = None
    tweaks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    data: dict[str, Any] | None = None
    session_id: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=255)
    globals: dict[str, Any] | None = None
    stream_protocol: Literal["langflow"] = "langflow"
    files: list[Any] | None = None
    output_ids: list[str] | None = None


def render_error(exc: FlowrunError, request: Request | None = None) -> Response:
    """FastAPI's shape with Langflow's payload: ``{"detail": {error, code, message}}``."""
    code = "MISSING_PARAMETER" if isinstance(exc, MissingParameter) else \
        _CODES.get(exc.code, exc.code.upper())
    detail = {"error": exc.title, "code": code, "message": exc.message, **exc.extra}
    if exc.errors:
        detail["errors"] = exc.errors
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


async def _flow(request: Request, principal: Principal, flow_id: str) -> str:
    try:
        return await instance_of(request).workflows.resolve(principal, flow_id)
    except WorkflowNotFound:
        raise WorkflowNotFound(f"Flow '{flow_id}' does not exist. Verify the flow_id and "
                               f"try again.") from None


def _links(request: Request, run_id: str) -> dict[str, str]:
    root = f"{request.scope.get('root_path', '')}/api/v2/workflows"
    return {"status": f"{root}?job_id={run_id}", "events": f"{root}/{run_id}/events",
            "stop": f"{root}/stop"}


def job_object(request: Request, run: RunRecord) -> dict[str, Any]:
    return {"job_id": run.id, "flow_id": run.workflow, "object": "job",
            "created_timestamp": rfc3339(run.created_at), "status": _STATUS[run.status],
            "links": _links(request, run.id), "errors": []}


def response_object(run: RunRecord, sinks: set[str]) -> dict[str, Any]:
    """The ``object: "response"`` of a finished job: outputs keyed by component (node) id."""
    outputs: dict[str, Any] = {}
    for node in run.nodes:
        if node.node_id not in sinks or node.status is NodeStatus.SKIPPED:
            continue
        text = node.outputs.get("text") if isinstance(node.outputs, dict) else None
        outputs[node.node_id] = {
            "type": "message" if isinstance(text, str) else "data",
            "component_id": node.node_id,
            "status": "completed" if node.status is NodeStatus.SUCCEEDED else "failed",
            "content": text if isinstance(text, str) else node.outputs,
            "metadata": {"node_type": node.type, "elapsed_s": node.elapsed_s}}
    errors = []
    if run.status is not RunStatus.SUCCEEDED:
        error = run.error or {"message": run.status.value}
        errors.append({"error": error.get("message"), "code": "EXECUTION_ERROR",
                       "details": {"flow_id": run.workflow, "error_type": error.get("code"),
                                   "component_id": error.get("node_id")}})
    flat_inputs = {**run.inputs, **{f"{node_id}.{param}": value
                                    for node_id, params in run.overrides.items()
                                    for param, value in params.items()}}
    return {"flow_id": run.workflow, "job_id": run.id, "object": "response",
            "created_timestamp": rfc3339(run.created_at), "created_at": int(run.created_at),
            "status": _STATUS[run.status], "errors": errors, "inputs": flat_inputs,
            "outputs": outputs, "session_id": run.correlation_id, "has_errors": bool(errors)}


async def _sinks(service: RunService, run: RunRecord) -> set[str]:
    definition = await service.definition_of(run)
    sources = {e.source for e in definition.edges}
    return {n.id for n in definition.nodes if n.id not in sources}


def encode_event(event: Event) -> ServerSentEvent:
    name = _EVENT_NAMES.get(event.name, event.name)
    data = dict(event.data)
    if event.name == "text_chunk":
        data = {"chunk": data.get("text", ""),
                "component_id": (data.get("from_variable_selector") or [None])[0]}
    frame = {"event": name, "data": data}
    return ServerSentEvent(data=json.dumps(frame, separators=(",", ":")), event=name,
                           id=str(event.seq - 1))


def event_stream(request: Request, service: RunService, principal: Principal, run_id: str,
                 after: int) -> Response:
    return sse_response(request, encoded(service.follow(principal, run_id, after),
                                         encode_event))


async def run_workflow(request: Request) -> Response:
    """Langflow: run a flow (sync, stream or background)."""
    began = time.monotonic()
    principal = await principal_of(request)
    service = instance_of(request).service
    body = parse_model(WorkflowsRequest, await read_json(request,
                                                         service.settings.max_body_bytes))
    if body.background and body.stream:
        raise BadRequest("Both 'background' and 'stream' cannot be True")
    mode = body.mode or ("background" if body.background else
                         "stream" if body.stream else "sync")
    name = await _flow(request, principal, body.flow_id)
    _, definition = await instance_of(request).workflows.read(principal, name)
    graph = body.data if isinstance(body.data, dict) else {}
    # "Component.param" input keys and {"Component": {...}} inputs become tweaks in the
    # service (RunService.submit), after any graph in ``data`` has replaced the flow's.
    inputs = dict(body.inputs)
    if body.input_value is not None:
        text_inputs = [k for k, spec in definition.inputs.items() if spec.type == "string"]
        target = "input_value" if "input_value" in definition.inputs else \
            text_inputs[0] if len(text_inputs) == 1 else None
        if target is None:
            raise BadRequest(f"input_value needs a string input on flow {name!r}; send "
                             f"inputs by name instead",
                             errors=[{"field": "input_value", "message": "no target input"}])
        inputs.setdefault(target, body.input_value)
    run_request = RunRequest(
        workflow=name, inputs=inputs, overrides=body.tweaks or None, nodes=graph.get("nodes"),
        edges=graph.get("edges"), correlation_id=body.session_id,
        idempotency_key=body.idempotency_key if mode == "background" else None,
        on_conflict=OnConflict.RETURN_EXISTING)
    if mode == "sync":
        outcome = await service.run_sync(principal, run_request, started=began)
        if not outcome.finished:
            return JSONResponse({"detail": {"error": "Execution timed out",
                                            "code": "EXECUTION_TIMEOUT",
                                            "message": f"the flow is still running after "
                                                       f"{outcome.timeout_s:g}s",
                                            "job_id": outcome.run.id, "flow_id": name,
                                            "timeout_seconds": outcome.timeout_s}},
                                status_code=408)
        return JSONResponse(response_object(outcome.run, await _sinks(service, outcome.run)))
    if mode == "stream":
        service.ensure_stream_room(principal)
    run = (await service.submit(principal, run_request)).run
    if mode == "background":
        return JSONResponse(job_object(request, run))
    return event_stream(request, service, principal, run.id, 0)


async def _job(request: Request, job_id: str | None) -> tuple[RunService, RunRecord]:
    if not job_id:
        raise MissingParameter("job_id is required",
                               errors=[{"field": "job_id", "message": "required"}])
    principal = await principal_of(request)
    service = instance_of(request).service
    try:
        return service, await service.get_run(principal, job_id)
    except RunNotFound:
        raise RunNotFound(f"Job '{job_id}' not found") from None


def _sequence(raw: str | None, field: str) -> int:
    """Langflow's 0-based event id → the flowrun sequence number to replay after."""
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw) if len(raw) < 19 else -2
    except ValueError:
        value = -2
    if not -1 <= value <= MAX_NUMBER:
        raise BadRequest(f"{field} must be an event id (an integer >= 0)",
                         errors=[{"field": field, "message": "invalid"}])
    return value + 1


async def get_status(request: Request) -> Response:
    """Langflow: a job's status or result."""
    service, run = await _job(request, request.query_params.get("job_id"))
    if request.query_params.get("stream", "").lower() == "true":
        return event_stream(request, service, await principal_of(request), run.id,
                            _sequence(request.query_params.get("sequence_id"), "sequence_id"))
    if run.status is RunStatus.SUCCEEDED:
        return JSONResponse(response_object(run, await _sinks(service, run)))
    if run.status is RunStatus.FAILED:
        error = run.error or {}
        return JSONResponse({"detail": {"error": "Job failed", "code": "JOB_FAILED",
                                        "message": error.get("message"), "job_id": run.id,
                                        "error_detail": error}}, status_code=500)
    if run.status is RunStatus.TIMED_OUT:
        return JSONResponse({"detail": {"error": "Job timed out", "code": "EXECUTION_TIMEOUT",
                                        "message": (run.error or {}).get("message"),
                                        "job_id": run.id}}, status_code=408)
    return JSONResponse(job_object(request, run))


async def job_events(request: Request) -> Response:
    """Langflow: a job's events."""
    service, run = await _job(request, request.path_params["job_id"])
    return event_stream(request, service, await principal_of(request), run.id,
                        _sequence(request.headers.get("last-event-id"), "Last-Event-ID"))


async def stop(request: Request) -> Response:
    """Langflow: stop a job."""
    service = instance_of(request).service
    data = await read_json(request, service.settings.max_body_bytes)
    job_id = data.get("job_id") if isinstance(data, dict) else None
    service, run = await _job(request, job_id if isinstance(job_id, str) else None)
    if run.status is RunStatus.STOPPED:
        message = f"Job {run.id} is already cancelled."
    elif run.status in RUN_TERMINAL:
        message = f"Job {run.id} already finished ({_STATUS[run.status]})."
    else:
        await service.stop(await principal_of(request), run.id)
        message = f"Job {run.id} cancelled successfully."
    return JSONResponse({"job_id": run.id, "message": message})


route = partial(ApiRoute, error="LangflowError")

routes = [
    route("/api/v2/workflows", run_workflow, "POST", body=WorkflowsRequest, also=("408",)),
    route("/api/v2/workflows", get_status, "GET", query=("job_id", "stream", "sequence_id"),
          also=("408", "500")),
    route("/api/v2/workflows/stop", stop, "POST",
          body={"type": "object", "properties": {"job_id": {"type": "string"}}}),
    route("/api/v2/workflows/{job_id}/events", job_events, "GET", stream=True),
]
exception_handlers = error_handlers(render_error)

__all__ = ("encode_event", "exception_handlers", "render_error", "routes")
