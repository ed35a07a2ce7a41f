"""The Dify workflow API (Service API, workflow apps) over flowrun runs.

Mounted at ``/dify/v1``. An app key (``flowrun keys create --workflow NAME``)
names the workflow for ``POST /workflows/run``; ``{workflow_id}`` is
``name:version`` (or a bare version number of the key's workflow). Dify's
``workflow_id`` in every answer is ``name:version``. Beyond Dify: SSE frames carry
``id:`` and reconnects honour ``Last-Event-ID``; ``response_mode: async`` (the
proposed 202 mode) is supported with ``Idempotency-Key``.

Status vocabulary: queued → ``scheduled``, running, succeeded, failed, stopped;
timed_out → ``failed`` (with the deadline in ``error``); paused and waiting (a
wait node's signal) → ``paused``. A run that parks on a wait node sends Dify's
``workflow_paused`` and, as in Dify, that ends the stream.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from flowrun.api.common import (
    JSONResponse,
    encoded,
    error_handlers,
    id_number,
    idempotency_of,
    instance_of,
    last_event_id,
    parse_model,
    principal_of,
    read_json,
    run_tokens,
    sse_response,
    unix,
)
from flowrun.api.routes import ApiRoute
from flowrun.errors import BadRequest, FlowrunError, NotFound, RunNotFound
from flowrun.records import RUN_TERMINAL, Event, RunRecord, RunStatus
from flowrun.runs.access import Principal
from flowrun.runs.service import RunRequest, RunService

_TRACE = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_STATUS = {RunStatus.QUEUED: "scheduled", RunStatus.RUNNING: "running",
           RunStatus.PAUSED: "paused", RunStatus.WAITING: "paused",
           RunStatus.SUCCEEDED: "succeeded", RunStatus.FAILED: "failed",
           RunStatus.STOPPED: "stopped", RunStatus.TIMED_OUT: "failed"}
_CODES = {"invalid_definition": "invalid_param", "workflow_not_found": "not_found",
          "version_not_found": "not_found", "run_not_found": "not_found",
          "queue_full": "too_many_requests", "unavailable": "service_unavailable",
          "internal_error": "internal_server_error"}


class DifyRunBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: dict[str, Any]
    response_mode: Literal["blocking", "streaming", "async"] = "blocking"
    user: str = Field(min_length=1, max_length=255)
    files: list[dict[str, Any]] | None = None
    trace_id: str | None = None


def render_error(exc: FlowrunError, request: Request | None = None) -> Response:
    """Dify's error envelope: ``{status, code, message}``."""
    code = _CODES.get(exc.code, exc.code)
    return JSONResponse({"status": exc.status_code, "code": code, "message": exc.message},
                        status_code=exc.status_code, headers=exc.headers)


def workflow_id(run: RunRecord) -> str:
    return f"{run.workflow}:{run.version}"


def _error_text(run: RunRecord) -> str | None:
    if run.error:
        return str(run.error.get("message"))
    if run.status is RunStatus.STOPPED:
        return "stopped by the user"
    return None


def run_detail(run: RunRecord) -> dict[str, Any]:
    """``GET /workflows/run/{id}``; ``inputs`` is a JSON string, as Dify documents it."""
    return {"id": run.id, "workflow_id": workflow_id(run), "status": _STATUS[run.status],
            "inputs": json.dumps(run.inputs), "outputs": run.outputs or {},
            "error": _error_text(run), "total_steps": run.steps,
            "total_tokens": run_tokens(run), "created_at": unix(run.created_at),
            "finished_at": unix(run.finished_at), "elapsed_time": run.elapsed_s or 0.0}


def blocking_body(run: RunRecord) -> dict[str, Any]:
    data = run_detail(run)
    del data["inputs"]
    return {"task_id": run.id, "workflow_run_id": run.id, "data": data}


def async_body(run: RunRecord) -> dict[str, Any]:
    return {"task_id": run.id, "workflow_run_id": run.id,
            "data": {"id": run.id, "workflow_id": workflow_id(run), "status": "scheduled",
                     "created_at": unix(run.created_at)}}


def encode_event(event: Event, run: RunRecord) -> ServerSentEvent:
    """Dify's frame: ``data: {event, task_id, workflow_run_id, data}`` (plus ``id:``)."""
    name, data = event.name, dict(event.data)
    if name == "workflow_resumed":
        name = "workflow_started"
    if name in {"workflow_started", "workflow_finished"}:
        data["workflow_id"] = workflow_id(run)
    if name == "workflow_waiting":  # Dify's pause for human input
        name = "workflow_paused"
        waiting = data.get("waiting") or []
        data = {"workflow_run_id": run.id, "workflow_id": workflow_id(run),
                "paused_nodes": [w.get("node_id") for w in waiting],
                "reasons": [{"type": "signal", **w} for w in waiting], "outputs": {},
                "status": "paused", "created_at": data.get("created_at")}
    if name == "workflow_finished":
        data.pop("error_detail", None)
        data["status"] = "failed" if data.get("status") == "timed_out" else data.get("status")
    frame = {"event": name, "task_id": run.id, "workflow_run_id": run.id, "data": data}
    return ServerSentEvent(data=json.dumps(frame, separators=(",", ":")), id=str(event.seq))


def event_stream(request: Request, service: RunService, principal: Principal, run: RunRecord,
                 after: int = 0) -> EventSourceResponse:
    events = _until_paused(service, principal, run.id,
                           service.follow(principal, run.id, after))
    return sse_response(request, encoded(events, lambda event: encode_event(event, run)),
                        ping_event=True)


async def _until_paused(service: RunService, principal: Principal, run_id: str,
                        events: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
    """The run's events, ending (as Dify's stream does) at ``workflow_paused`` when the
    run is waiting now; a replayed pause the run has since left does not end it."""
    async with aclosing(events):
        async for event in events:
            yield event
            if event.name == "workflow_waiting":
                now = await service.get_run(principal, run_id)
                if now.status is RunStatus.WAITING:
                    return


def _trace_id(request: Request, body: DifyRunBody) -> str | None:
    for candidate in (request.headers.get("x-trace-id"), request.query_params.get("trace_id"),
                      body.trace_id):
        if candidate and _TRACE.match(candidate):
            return candidate
    return None  # invalid values are dropped silently, as Dify does


def _target(principal: Principal, workflow_id: str | None) -> tuple[str, int | None]:
    """(workflow, version) for a run request."""
    if workflow_id is None:
        if principal.workflow is None:
            raise BadRequest("this API key is not bound to one workflow app; create one with "
                             "`flowrun keys create --scope run --workflow NAME`")
        return principal.workflow, None
    name, _, version_text = workflow_id.rpartition(":")
    if not name and id_number(workflow_id) is not None and principal.workflow is not None:
        name, version_text = principal.workflow, workflow_id
    elif not name:
        name, version_text = workflow_id, ""
    if not principal.may_use(name):
        raise NotFound("Workflow not found.")  # Dify hides other apps' existence
    if version_text and id_number(version_text) is None:
        raise BadRequest(f"workflow_id {workflow_id!r} is not name:version")
    return name, int(version_text) if version_text else None


async def _run(request: Request, workflow_id: str | None) -> Response:
    started = time.monotonic()
    principal = await principal_of(request)
    service = instance_of(request).service
    body = parse_model(DifyRunBody, await read_json(request, service.settings.max_body_bytes))
    name, version = _target(principal, workflow_id)
    key, on_conflict = idempotency_of(request, max_length=64)
    run_request = RunRequest(
        workflow=name, version=version, inputs=body.inputs, user=body.user,
        trace_id=_trace_id(request, body), idempotency_key=key, on_conflict=on_conflict)
    if body.response_mode == "blocking":
        outcome = await service.run_sync(principal, run_request, started=started)
        return JSONResponse(blocking_body(outcome.run))
    if body.response_mode == "streaming":
        service.ensure_stream_room(principal)
    submission = await service.submit(principal, run_request)
    run = submission.run
    if body.response_mode == "async":
        return JSONResponse(async_body(run), status_code=202 if submission.created else 200)
    return event_stream(request, service, principal, run)


async def run_bound(request: Request) -> Response:
    """Dify: run the key's workflow app."""
    return await _run(request, None)


async def run_version(request: Request) -> Response:
    """Dify: run a version."""
    return await _run(request, request.path_params["workflow_id"])


async def _owned(request: Request, run_id: str, user: str | None) -> RunRecord:
    principal = await principal_of(request)
    run = await instance_of(request).service.get_run(principal, run_id)
    if not principal.may_use(run.workflow):
        raise RunNotFound("Workflow run not found.")
    if user is not None and run.user is not None and user != run.user:
        raise RunNotFound("Workflow run not found.")
    return run


async def get_run(request: Request) -> Response:
    """Dify: run detail."""
    run = await _owned(request, request.path_params["workflow_run_id"],
                       request.query_params.get("user"))
    return JSONResponse(run_detail(run))


async def stop(request: Request) -> Response:
    """Dify: stop."""
    service = instance_of(request).service
    data = await read_json(request, service.settings.max_body_bytes)
    if not isinstance(data, dict) or not isinstance(data.get("user"), str) or not data["user"]:
        raise BadRequest("Arg user must be provided.",
                         errors=[{"field": "user", "message": "required"}])
    run = await _owned(request, request.path_params["task_id"], None)
    if run.status not in RUN_TERMINAL:
        await service.stop(await principal_of(request), run.id)
    return JSONResponse({"result": "success"})


async def events(request: Request) -> Response:
    """Dify: events (resumable)."""
    run = await _owned(request, request.path_params["workflow_run_id"],
                       request.query_params.get("user"))
    return event_stream(request, instance_of(request).service, await principal_of(request), run,
                        last_event_id(request))


route = partial(ApiRoute, error="DifyError")

routes = [
    route("/workflows/run", run_bound, "POST", body=DifyRunBody, also=("202",)),
    route("/workflows/run/{workflow_run_id}", get_run, "GET", query=("user",)),
    route("/workflows/tasks/{task_id}/stop", stop, "POST",
          body={"type": "object", "properties": {"user": {"type": "string"}}}),
    route("/workflows/{workflow_id}/run", run_version, "POST", body=DifyRunBody,
          also=("202",)),
    route("/workflow/{workflow_run_id}/events", events, "GET", query=("user",), stream=True),
]
exception_handlers = error_handlers(render_error)

__all__ = ("encode_event", "exception_handlers", "render_error", "routes")
