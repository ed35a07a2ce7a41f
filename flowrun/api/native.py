"""The native HTTP API: workflows, runs, run-sync, stop, signals, health.

Errors are RFC 9457 problem+json documents with an extra ``code``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from flowrun.api import webhooks
from flowrun.api.common import (
    JSONResponse,
    checked_wait,
    encoded,
    error_handlers,
    idempotency_of,
    instance_of,
    last_event_id,
    parse_model,
    principal_of,
    query_int,
    read_json,
    read_json_or_yaml,
    sse_response,
)
from flowrun.api.openapi import app_routes, build_spec
from flowrun.api.routes import ApiRoute
from flowrun.api.signal_page import signal_page
from flowrun.errors import BadRequest, FlowrunError, NotFound
from flowrun.language import urls
from flowrun.language.definitions import NAME_PATTERN, SIGNAL_PATTERN, ScheduleSpec
from flowrun.metrics import CONTENT_TYPE_LATEST
from flowrun.records import Event, RunStatus
from flowrun.runs.access import Scope, require_admin
from flowrun.runs.service import RunRequest, Submission

PROBLEM_TYPE = "application/problem+json"


class RunBody(BaseModel):
    """The native run request body (strict: "5" is not a priority)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1)
    priority: int = 0  # 0-99: checked by the service, for every API
    correlation_id: str | None = Field(default=None, max_length=256)
    user: str | None = Field(default=None, max_length=256)
    trace_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9\-_]{1,128}$")
    overrides: dict[str, dict[str, Any]] | None = None
    nodes: list[Any] | None = None
    edges: list[Any] | None = None
    stream: bool = False
    timeout: float | None = None  # checked against the setting: checked_wait
    callback_url: str | None = Field(default=None, max_length=urls.MAX_URL_LENGTH)

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        return None if value is None else urls.check_url(value)


def problem(exc: FlowrunError, instance: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": exc.title,
                            "status": exc.status_code, "detail": exc.message, "code": exc.code}
    if exc.errors:
        body["errors"] = exc.errors
    body.update(exc.extra)
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers,
                        media_type=PROBLEM_TYPE)


def render_error(exc: FlowrunError, request: Request | None = None) -> JSONResponse:
    return problem(exc, request.url.path if request is not None else None)


def _max_body(request: Request) -> int:
    return instance_of(request).service.settings.max_body_bytes


async def _run_request(request: Request) -> tuple[RunRequest, RunBody]:
    data = await read_json(request, _max_body(request), empty={})
    body = parse_model(RunBody, data)
    header_trace = request.headers.get("x-trace-id")
    key, on_conflict = idempotency_of(request)
    run_request = RunRequest(
        workflow=request.path_params["name"], inputs=body.inputs, version=body.version,
        priority=body.priority, correlation_id=body.correlation_id, user=body.user,
        trace_id=header_trace or body.trace_id, overrides=body.overrides, nodes=body.nodes,
        edges=body.edges, idempotency_key=key, on_conflict=on_conflict,
        callback_url=body.callback_url)
    return run_request, body


# --- workflows ---------------------------------------------------------------------

async def list_workflows(request: Request) -> Response:
    """Workflows this key may use."""
    principal = await principal_of(request)
    items = [{"name": name, "version": version, "description": d.description,
              "inputs": {k: v.model_dump(exclude_none=True) for k, v in d.inputs.items()}}
             for name, version, d in await instance_of(request).workflows.list(principal)]
    return JSONResponse({"workflows": items})


async def get_workflow(request: Request) -> Response:
    """A definition."""
    principal = await principal_of(request)
    version = query_int(request, "version", None, minimum=1, maximum=2**31)
    found_version, definition = await instance_of(request).workflows.read(
        principal, request.path_params["name"], version)
    return JSONResponse({"name": definition.name, "version": found_version,
                         "definition": definition.to_json()})


async def put_workflow(request: Request) -> Response:
    """Register a new version (admin); JSON or YAML."""
    principal = await principal_of(request)
    require_admin(principal, "registering workflows")  # before reading the body
    data = await read_json_or_yaml(request, _max_body(request))
    version, created = await instance_of(request).workflows.register(principal, data,
                                                             name=request.path_params["name"])
    return JSONResponse({"name": request.path_params["name"], "version": version,
                         "created": created}, status_code=201 if created else 200)


async def workflow_versions(request: Request) -> Response:
    """A workflow's versions."""
    principal = await principal_of(request)
    name = request.path_params["name"]
    found = await instance_of(request).workflows.versions(principal, name)
    return JSONResponse({"name": name, "versions": [
        {"version": version, "created_at": int(created)} for version, created in found]})


async def delete_workflow(request: Request) -> Response:
    """Delete a version, or every version (admin); 409 while runs of it are live."""
    principal = await principal_of(request)
    version = query_int(request, "version", None, minimum=1, maximum=2**31)
    await instance_of(request).workflows.delete(principal, request.path_params["name"], version)
    return Response(status_code=204)


# --- schedules ---------------------------------------------------------------------

async def list_schedules(request: Request) -> Response:
    """A workflow's schedules."""
    principal = await principal_of(request)
    found = await instance_of(request).schedules.list(principal, request.path_params["name"])
    return JSONResponse({"schedules": [s.to_json() for s in found]})


async def create_schedule(request: Request) -> Response:
    """Add a schedule (admin): id, cron (5 fields, or 6 with seconds first), timezone,
    inputs, catch_up, paused; 400 naming it when invalid, 409 when its id is taken.

    The body is an entry of a definition's schedules block.
    """
    principal = await principal_of(request)
    require_admin(principal, "creating schedules")  # before reading the body
    data = await read_json(request, _max_body(request))
    schedules = instance_of(request).schedules
    record = await schedules.create(principal, request.path_params["name"], data)
    return JSONResponse(record.to_json(), status_code=201)


async def pause_schedule(request: Request) -> Response:
    """Pause a schedule."""
    principal = await principal_of(request)
    record = await instance_of(request).schedules.set_paused(
        principal, request.path_params["name"], request.path_params["schedule_id"], True)
    return JSONResponse(record.to_json())


async def resume_schedule(request: Request) -> Response:
    """Resume a schedule from now (slots that went by while paused do not fire)."""
    principal = await principal_of(request)
    record = await instance_of(request).schedules.set_paused(
        principal, request.path_params["name"], request.path_params["schedule_id"], False)
    return JSONResponse(record.to_json())


async def delete_schedule(request: Request) -> Response:
    """Delete a schedule (admin)."""
    principal = await principal_of(request)
    await instance_of(request).schedules.delete(principal, request.path_params["name"],
                                       request.path_params["schedule_id"])
    return Response(status_code=204)


# --- runs --------------------------------------------------------------------------

async def run_async(request: Request) -> Response:
    """Accept a run (202, Location: /runs/{id})."""
    principal = await principal_of(request)
    run_request, body = await _run_request(request)
    if body.timeout is not None:
        raise BadRequest("timeout applies to POST /workflows/{name}/run-sync; a run accepted "
                         "here has no caller waiting for it (a workflow's own deadline is "
                         "its definition's timeout)",
                         errors=[{"field": "timeout", "message": "not valid on /run"}])
    service = instance_of(request).service
    if body.stream:
        service.ensure_stream_room(principal)
    submission = await service.submit(principal, run_request)
    run = submission.run
    headers = _run_headers(request, submission)
    if body.stream:
        # The run belongs to the app's task group: the client leaving ends only the stream.
        return event_stream(request, service.follow(principal, run.id), headers=headers)
    return JSONResponse(run.to_json(), status_code=202 if submission.created else 200,
                        headers=headers)


def _run_headers(request: Request, submission: Submission) -> dict[str, str]:
    """Where the run is (under the prefix the app is mounted at), and whether it is new."""
    location = f"{request.scope.get('root_path', '')}/runs/{submission.run.id}"
    headers = {"Location": location, "X-Run-Id": submission.run.id}
    if not submission.created:
        headers["Idempotent-Replayed"] = "true"
    return headers


def encode_event(event: Event) -> ServerSentEvent:
    """The native SSE frame: ``id: seq``, ``event: name``, ``data: envelope``."""
    return ServerSentEvent(id=str(event.seq), event=event.name,
                           data=json.dumps(event.to_json(), separators=(",", ":")))


def event_stream(request: Request, events: AsyncGenerator[Event, None],
                 headers: dict[str, str] | None = None) -> EventSourceResponse:
    return sse_response(request, encoded(events, encode_event), headers=headers)


async def run_events(request: Request) -> Response:
    """The run's events: replay after Last-Event-ID (or `after`), then live."""
    principal = await principal_of(request)
    service = instance_of(request).service
    run = await service.get_run(principal, request.path_params["run_id"])
    return event_stream(request, service.follow(principal, run.id, last_event_id(request)))


def _timeout_param(request: Request, body: RunBody) -> float | None:
    """The wait a caller asked for: ``?timeout=`` (400 outside the allowed range), else
    the body's ``timeout``; None for the default."""
    limit = instance_of(request).service.settings.run_sync_max_timeout_s
    raw = request.query_params.get("timeout")
    if raw is None:
        return checked_wait(body.timeout, limit)
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"timeout must be a number of seconds, not {raw[:40]!r}",
                         errors=[{"field": "timeout", "message": "not a number"}]) from None
    return checked_wait(value, limit)


async def run_sync(request: Request) -> Response:
    """Run and wait; 408 when `timeout` passes."""
    principal = await principal_of(request)
    started = time.monotonic()
    run_request, body = await _run_request(request)
    if body.stream:
        raise BadRequest("stream applies to POST /workflows/{name}/run",
                         errors=[{"field": "stream", "message": "not valid on run-sync"}])
    outcome = await instance_of(request).service.run_sync(principal, run_request,
                                                 _timeout_param(request, body), started=started)
    headers = _run_headers(request, outcome.submission)
    if outcome.finished:
        return JSONResponse(outcome.run.to_json(), headers=headers)
    return JSONResponse({"run_id": outcome.run.id, "status": outcome.run.status.value,
                         "timeout": outcome.timeout_s, "elapsed_s": round(outcome.elapsed_s, 3)},
                        status_code=408, headers=headers)


async def list_runs(request: Request) -> Response:
    """Runs of the workflow in the path, or (``GET /runs``) of every workflow or of
    ``?workflow=``."""
    principal = await principal_of(request)
    status = request.query_params.get("status")
    if status is not None and status not in {s.value for s in RunStatus}:
        raise BadRequest(f"status must be one of {', '.join(s.value for s in RunStatus)}",
                         errors=[{"field": "status", "message": "unknown status"}])
    limit = query_int(request, "limit", 20, minimum=1, maximum=1000) or 20
    workflow = request.path_params.get("name") or request.query_params.get("workflow") or None
    runs, cursor = await instance_of(request).service.list_runs(
        principal, workflow, status=status,
        correlation_id=request.query_params.get("correlation_id"), limit=limit,
        cursor=request.query_params.get("cursor"))
    return JSONResponse({"runs": [r.to_json(with_nodes=False) for r in runs],
                         "next_cursor": cursor})


async def latest_run(request: Request) -> Response:
    """The newest run."""
    principal = await principal_of(request)
    service = instance_of(request).service
    runs, _ = await service.list_runs(principal, request.path_params["name"], limit=1)
    if not runs:
        raise NotFound(f"workflow {request.path_params['name']!r} has no runs yet")
    run = await service.get_run(principal, runs[0].id)
    return JSONResponse(run.to_json())


async def get_run(request: Request) -> Response:
    """A run with its nodes."""
    principal = await principal_of(request)
    run = await instance_of(request).service.get_run(principal, request.path_params["run_id"])
    return JSONResponse(run.to_json())


async def stop_run(request: Request) -> Response:
    """Stop a queued or running run."""
    principal = await principal_of(request)
    run = await instance_of(request).service.stop(principal, request.path_params["run_id"])
    return JSONResponse(run.to_json())


class SignalBody(BaseModel):
    """A signal for a run's wait node; ``data`` becomes the node's outputs."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=SIGNAL_PATTERN)
    data: dict[str, Any] = Field(default_factory=dict)


class SignalUrlBody(BaseModel):
    """What a one-time signal URL takes: the data only (the URL names the signal)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    data: dict[str, Any] = Field(default_factory=dict)


async def signal_run(request: Request) -> Response:
    """Send a signal to the run's wait node of that name (`data` becomes its outputs); a
    parked run goes on."""
    principal = await principal_of(request)
    body = parse_model(SignalBody, await read_json(request, _max_body(request)))
    run = await instance_of(request).waits.signal(principal, request.path_params["run_id"],
                                         body.name, body.data)
    return JSONResponse(run.to_json())


async def describe_signal_url(request: Request) -> Response:
    """What a one-time signal URL is for (no key: the URL is the credential); HTML for a
    browser.

    The page is a small form that sends the signal.
    """
    found = await instance_of(request).waits.describe_token(request.path_params["token"])
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(signal_page(found))
    return JSONResponse(found)


async def send_signal_url(request: Request) -> Response:
    """Send the signal of a one-time signal URL (no key).

    The body is ``{"data": {...}}``, or nothing.
    """
    body = parse_model(SignalUrlBody, await read_json(request, _max_body(request), empty={}))
    run = await instance_of(request).waits.signal_by_token(request.path_params["token"], body.data)
    return JSONResponse({"run_id": run.id, "status": run.status.value, "received": True})


async def delete_run(request: Request) -> Response:
    """Delete a finished run (admin)."""
    principal = await principal_of(request)
    await instance_of(request).service.delete_run(principal, request.path_params["run_id"])
    return Response(status_code=204)


async def pause_run(request: Request) -> Response:
    """Hold a live run before its next node."""
    principal = await principal_of(request)
    run = await instance_of(request).service.pause(principal, request.path_params["run_id"])
    return JSONResponse(run.to_json())


async def resume_run(request: Request) -> Response:
    """Let a paused run go on."""
    principal = await principal_of(request)
    run = await instance_of(request).service.resume(principal, request.path_params["run_id"])
    return JSONResponse(run.to_json())


class RetryBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    from_node: str | None = Field(default=None, min_length=1, max_length=200)


async def retry_run(request: Request) -> Response:
    """Run a finished run again from its failed nodes, or from `from_node`, keeping the
    outputs of the nodes before."""
    principal = await principal_of(request)
    body = parse_model(RetryBody, await read_json(request, _max_body(request), empty={}))
    run = await instance_of(request).service.rerun(principal, request.path_params["run_id"],
                                          from_failure=True, from_node=body.from_node)
    return JSONResponse(run.to_json(), status_code=202)


class RerunBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    from_node: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any] | None = None


async def rerun_run(request: Request) -> Response:
    """A new run (`rerun_of` this one) from `from_node`, reusing the outputs of the nodes
    before it."""
    principal = await principal_of(request)
    body = parse_model(RerunBody, await read_json(request, _max_body(request)))
    submission = await instance_of(request).service.rerun_from(
        principal, request.path_params["run_id"], body.from_node, inputs=body.inputs)
    return JSONResponse(submission.run.to_json(), status_code=202,
                        headers=_run_headers(request, submission))


async def restart_run(request: Request) -> Response:
    """Run a finished run again from scratch.

    It keeps its id.
    """
    principal = await principal_of(request)
    run = await instance_of(request).service.rerun(principal, request.path_params["run_id"],
                                          from_failure=False)
    return JSONResponse(run.to_json(), status_code=202)


async def run_callbacks(request: Request) -> Response:
    """The run's completion callback: url, state (pending, delivered, failed),
    next_attempt_at and every attempt; 404 when the run has none."""
    principal = await principal_of(request)
    found = await instance_of(request).callbacks.get(principal, request.path_params["run_id"])
    return JSONResponse(found.to_json())


# --- callback signing secret (admin) -----------------------------------------------

async def callback_secret(request: Request) -> Response:
    """The secret callbacks are signed with (admin)."""
    principal = await principal_of(request)
    return JSONResponse(await instance_of(request).callbacks.secret(principal))


async def rotate_callback_secret(request: Request) -> Response:
    """A new callback signing secret; the old one signs alongside it for a day (admin)."""
    principal = await principal_of(request)
    return JSONResponse(await instance_of(request).callbacks.rotate(principal))


# --- keys (admin) ------------------------------------------------------------------

class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(default=None, max_length=200)
    scope: Literal["admin", "run"] = "run"
    workflows: list[Annotated[str, Field(pattern=NAME_PATTERN)]] | None = \
        Field(default=None, max_length=1000)
    # bind to workflows not registered (yet), as the CLI's --allow-unknown-workflow
    allow_unknown_workflows: bool = False


async def create_key(request: Request) -> Response:
    """Create an API key; its secret is shown once (admin)."""
    principal = await principal_of(request)
    require_admin(principal, "creating API keys")
    body = parse_model(KeyBody, await read_json(request, _max_body(request)))
    record, secret = await instance_of(request).keys.create(principal, name=body.name,
                                                   scope=Scope(body.scope),
                                                   workflows=body.workflows,
                                                   allow_unknown=body.allow_unknown_workflows)
    return JSONResponse({**record.to_json(), "key": secret}, status_code=201)


async def list_keys(request: Request) -> Response:
    """API keys, never their secrets (admin)."""
    principal = await principal_of(request)
    keys = await instance_of(request).keys.list(principal)
    return JSONResponse({"keys": [k.to_json() for k in keys]})


async def revoke_key(request: Request) -> Response:
    """Revoke a key (admin)."""
    principal = await principal_of(request)
    await instance_of(request).keys.revoke(principal, request.path_params["key_id"])
    return Response(status_code=204)


# --- secrets (admin) ---------------------------------------------------------------

class SecretBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    value: str = Field(min_length=1, max_length=65536)
    allowed_urls: list[str] = Field(min_length=1, max_length=32)


async def list_secrets(request: Request) -> Response:
    """Secrets by name, never their values (admin)."""
    principal = await principal_of(request)
    found = await instance_of(request).vault.list(principal)
    return JSONResponse({"secrets": [s.to_json() for s in found]})


async def put_secret(request: Request) -> Response:
    """Store a secret and where it may be sent (admin)."""
    principal = await principal_of(request)
    require_admin(principal, "managing secrets")
    body = parse_model(SecretBody, await read_json(request, _max_body(request)))
    name = request.path_params["name"]
    created = await instance_of(request).vault.put(principal, name, body.value, body.allowed_urls)
    return JSONResponse({"name": name, "allowed_urls": body.allowed_urls, "created": created},
                        status_code=201 if created else 200)


async def delete_secret(request: Request) -> Response:
    """Delete a secret (admin)."""
    principal = await principal_of(request)
    await instance_of(request).vault.delete(principal, request.path_params["name"])
    return Response(status_code=204)


async def healthz(request: Request) -> Response:
    """Health and queue depth.

    503 while draining, so a load balancer stops sending new work here.
    """
    health = instance_of(request).service.health()
    if health["status"] == "draining":
        return JSONResponse(health, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(health)


async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    await principal_of(request)
    registry = instance_of(request).metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    """This document."""
    return JSONResponse(build_spec(app_routes(request)))


route = partial(ApiRoute, error="Problem")
_OBJECT = {"type": "object"}

ops_routes = [
    route("/healthz", healthz, "GET", public=True),
    route("/metrics", metrics, "GET"),
    route("/openapi.json", openapi, "GET", public=True),
]

routes = [
    *ops_routes,
    route("/workflows", list_workflows, "GET"),
    route("/workflows/{name}", get_workflow, "GET", query=("version",)),
    route("/workflows/{name}", put_workflow, "PUT", ok="201", body=_OBJECT, also=("200",),
          yaml=True),
    route("/workflows/{name}", delete_workflow, "DELETE", ok="204", query=("version",)),
    route("/workflows/{name}/versions", workflow_versions, "GET"),
    route("/workflows/{name}/schedules", list_schedules, "GET"),
    route("/workflows/{name}/schedules", create_schedule, "POST", ok="201", body=ScheduleSpec),
    route("/workflows/{name}/schedules/{schedule_id}", delete_schedule, "DELETE", ok="204"),
    route("/workflows/{name}/schedules/{schedule_id}/pause", pause_schedule, "POST"),
    route("/workflows/{name}/schedules/{schedule_id}/resume", resume_schedule, "POST"),
    route("/workflows/{name}/run", run_async, "POST", ok="202", body=RunBody, also=("200",)),
    route("/workflows/{name}/run-sync", run_sync, "POST", body=RunBody, query=("timeout",),
          also=("408",)),
    route("/workflows/{name}/runs", list_runs, "GET",
          summary="Runs of a workflow, newest first",
          query=("status", "correlation_id", "limit", "cursor")),
    route("/workflows/{name}/runs/latest", latest_run, "GET"),
    route("/runs", list_runs, "GET", summary="Runs of every workflow, newest first",
          query=("workflow", "status", "correlation_id", "limit", "cursor")),
    route("/runs/{run_id}", get_run, "GET"),
    route("/runs/{run_id}", delete_run, "DELETE", ok="204"),
    route("/runs/{run_id}/stop", stop_run, "POST"),
    route("/runs/{run_id}/pause", pause_run, "POST"),
    route("/runs/{run_id}/resume", resume_run, "POST"),
    route("/runs/{run_id}/retry", retry_run, "POST", ok="202", body=RetryBody),
    route("/runs/{run_id}/restart", restart_run, "POST", ok="202"),
    route("/runs/{run_id}/rerun", rerun_run, "POST", ok="202", body=RerunBody),
    route("/runs/{run_id}/signal", signal_run, "POST", body=SignalBody),
    route("/signals/{token}", describe_signal_url, "GET", public=True),
    route("/signals/{token}", send_signal_url, "POST", public=True, body=SignalUrlBody),
    route("/runs/{run_id}/events", run_events, "GET", query=("after",), stream=True),
    route("/runs/{run_id}/callbacks", run_callbacks, "GET"),
    route("/callbacks/secret", callback_secret, "GET"),
    route("/callbacks/secret/rotate", rotate_callback_secret, "POST"),
    route("/keys", list_keys, "GET"),
    route("/keys", create_key, "POST", ok="201", body=KeyBody),
    route("/keys/{key_id}", revoke_key, "DELETE", ok="204"),
    route("/secrets", list_secrets, "GET"),
    route("/secrets/{name}", put_secret, "PUT", ok="201", body=SecretBody, also=("200",)),
    route("/secrets/{name}", delete_secret, "DELETE", ok="204"),
    *webhooks.routes,
]

exception_handlers = error_handlers(render_error)
handle_error = exception_handlers[FlowrunError]

__all__ = ("exception_handlers", "ops_routes", "routes")
