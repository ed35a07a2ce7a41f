"""The OpenAPI document of every route: the native API and each dialect at its prefix.

Request bodies come from the pydantic models the routes validate with; each
dialect's error responses carry that dialect's own error shape, so a client
(or a fuzzer) can check every 4xx against it. Path and query parameters are
typed as the strings they arrive as: the server must answer any string with a
clear 4xx.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from flowrun import __version__
from flowrun.api import conductor, dify, jobs, langflow
from flowrun.features.webhooks import signing

_ERRORS: dict[str, dict[str, Any]] = {
    "Problem": {"type": "object", "required": ["status", "code", "detail"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "detail": {"type": "string"},
        "code": {"type": "string"}, "errors": {"type": "array", "items": {"type": "object"}}}},
    "DifyError": {"type": "object", "required": ["status", "code", "message"], "properties": {
        "status": {"type": "integer"}, "code": {"type": "string"},
        "message": {"type": "string"}}},
    "ConductorError": {"type": "object", "required": ["status", "code", "message"],
                       "properties": {"status": {"type": "integer"}, "code": {"type": "string"},
                                      "message": {"type": "string"},
                                      "retryable": {"type": "boolean"},
                                      "validationErrors": {"type": "array"}}},
    "LangflowError": {"type": "object", "required": ["detail"], "properties": {
        "detail": {"type": "object", "required": ["code", "message"], "properties": {
            "error": {"type": "string"}, "code": {"type": "string"},
            "message": {"type": ["string", "null"]}}}}},
    "JobsError": {"type": "object", "required": ["success", "message"], "properties": {
        "success": {"const": False}, "message": {"type": "string"},
        "code": {"type": "string"}}},
}
_MEDIA = {"Problem": "application/problem+json"}
_ERROR_CODES = (400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 503)


class _Spec:
    """Collects paths and component schemas."""

    def __init__(self) -> None:
        self.paths: dict[str, dict[str, Any]] = {}
        self.schemas: dict[str, Any] = dict(_ERRORS)

    def model(self, model: type[BaseModel]) -> str:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas[name] = sub
        self.schemas[model.__name__] = schema
        return f"#/components/schemas/{model.__name__}"

    def op(self, path: str, method: str, summary: str, *, error: str, ok: str = "200",
           body: type[BaseModel] | dict[str, Any] | None = None,
           query: tuple[str, ...] = (), stream: bool = False, public: bool = False,
           also: tuple[str, ...] = (), yaml: bool = False,
           headers: tuple[str, ...] = ()) -> None:
        media = _MEDIA.get(error, "application/json")
        problem = {"description": f"{error}: the error shape of this API",
                   "content": {media: {"schema": {"$ref": f"#/components/schemas/{error}"}}}}
        responses: dict[str, Any] = {ok: {"description": "OK"}}
        for extra in also:
            responses[extra] = {"description": "see the summary"}
        for code in _ERROR_CODES:
            responses.setdefault(str(code), problem)
        if stream:
            responses[ok] = {"description": "Server-Sent Events",
                             "content": {"text/event-stream": {}}}
        operation: dict[str, Any] = {"summary": summary, "responses": responses}
        if public:
            operation["security"] = []
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _path_params(path)]
        params += [{"name": name, "in": "query", "required": False,
                    "schema": {"type": "string"}} for name in query]
        params += [{"name": name, "in": "header", "required": False,
                    "schema": {"type": "string"}} for name in headers]
        if params:
            operation["parameters"] = params
        if body is not None:
            schema = {"$ref": self.model(body)} if isinstance(body, type) else body
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema}}}
            if yaml:  # the same document, written as YAML
                operation["requestBody"]["content"]["application/yaml"] = {"schema": schema}
        self.paths.setdefault(path, {})[method] = operation


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/")
            if part.startswith("{") and part.endswith("}")]


_OBJECT = {"type": "object"}


def build_spec(native_models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """The spec served at /openapi.json (native models passed in: they live in native.py)."""
    spec = _Spec()
    run_body = native_models["RunBody"]
    p = "Problem"
    spec.op("/healthz", "get", "Health and queue depth", error=p, public=True)
    spec.op("/openapi.json", "get", "This document", error=p, public=True)
    spec.op("/metrics", "get", "Prometheus metrics", error=p)
    spec.op("/workflows", "get", "Workflows this key may use", error=p)
    spec.op("/workflows/{name}", "get", "A definition", error=p, query=("version",))
    spec.op("/workflows/{name}", "put", "Register a new version (admin); JSON or YAML",
            error=p, ok="201", body=_OBJECT, also=("200",), yaml=True)
    spec.op("/workflows/{name}", "delete", "Delete a version, or every version (admin); "
            "409 while runs of it are live", error=p, ok="204", query=("version",))
    spec.op("/workflows/{name}/versions", "get", "A workflow's versions", error=p)
    spec.op("/workflows/{name}/schedules", "get", "A workflow's schedules", error=p)
    spec.op("/workflows/{name}/schedules", "post", "Add a schedule (admin): id, cron (5 "
            "fields, or 6 with seconds first), timezone, inputs, catch_up, paused; 400 naming "
            "it when invalid, 409 when its id is taken", error=p, ok="201",
            body=native_models["ScheduleSpec"])
    spec.op("/workflows/{name}/schedules/{schedule_id}", "delete", "Delete a schedule (admin)",
            error=p, ok="204")
    spec.op("/workflows/{name}/schedules/{schedule_id}/pause", "post", "Pause a schedule",
            error=p)
    spec.op("/workflows/{name}/schedules/{schedule_id}/resume", "post", "Resume a schedule "
            "from now (slots that went by while paused do not fire)", error=p)
    spec.op("/workflows/{name}/run", "post", "Accept a run (202, Location: /runs/{id})",
            error=p, ok="202", body=run_body, also=("200",))
    spec.op("/workflows/{name}/run-sync", "post", "Run and wait; 408 when `timeout` passes",
            error=p, body=run_body, query=("timeout",), also=("408",))
    spec.op("/workflows/{name}/runs", "get", "Runs of a workflow, newest first", error=p,
            query=("status", "correlation_id", "limit", "cursor"))
    spec.op("/workflows/{name}/runs/latest", "get", "The newest run", error=p)
    spec.op("/runs", "get", "Runs of every workflow, newest first", error=p,
            query=("workflow", "status", "correlation_id", "limit", "cursor"))
    spec.op("/runs/{run_id}", "get", "A run with its nodes", error=p)
    spec.op("/runs/{run_id}", "delete", "Delete a finished run (admin)", error=p, ok="204")
    spec.op("/runs/{run_id}/stop", "post", "Stop a queued or running run", error=p)
    spec.op("/runs/{run_id}/pause", "post", "Hold a live run before its next node",
            error=p)
    spec.op("/runs/{run_id}/resume", "post", "Let a paused run go on", error=p)
    spec.op("/runs/{run_id}/retry", "post", "Run a finished run again from its failed "
            "nodes, or from `from_node`, keeping the outputs of the nodes before",
            error=p, ok="202", body=native_models["RetryBody"])
    spec.op("/runs/{run_id}/restart", "post", "Run a finished run again from scratch",
            error=p, ok="202")
    spec.op("/runs/{run_id}/rerun", "post", "A new run (`rerun_of` this one) from "
            "`from_node`, reusing the outputs of the nodes before it", error=p, ok="202",
            body=native_models["RerunBody"])
    spec.op("/runs/{run_id}/signal", "post", "Send a signal to the run's wait node of that "
            "name (`data` becomes its outputs); a parked run goes on", error=p,
            body=native_models["SignalBody"])
    spec.op("/signals/{token}", "get", "What a one-time signal URL is for (no key: the URL "
            "is the credential); HTML for a browser", error=p, public=True)
    spec.op("/signals/{token}", "post", "Send the signal of a one-time signal URL (no key)",
            error=p, public=True, body=native_models["SignalUrlBody"])
    spec.op("/runs/{run_id}/events", "get", "The run's events: replay after Last-Event-ID "
            "(or `after`), then live", error=p, query=("after",), stream=True)
    spec.op("/runs/{run_id}/callbacks", "get", "The run's completion callback: url, state "
            "(pending, delivered, failed), next_attempt_at and every attempt; 404 when the "
            "run has none", error=p)
    spec.op("/callbacks/secret", "get", "The secret callbacks are signed with (admin)",
            error=p)
    spec.op("/callbacks/secret/rotate", "post", "A new callback signing secret; the old one "
            "signs alongside it for a day (admin)", error=p)
    spec.op("/keys", "get", "API keys, never their secrets (admin)", error=p)
    spec.op("/keys", "post", "Create an API key; its secret is shown once (admin)", error=p,
            ok="201", body=native_models["KeyBody"])
    spec.op("/keys/{key_id}", "delete", "Revoke a key (admin)", error=p, ok="204")
    spec.op("/secrets", "get", "Secrets by name, never their values (admin)", error=p)
    spec.op("/secrets/{name}", "put", "Store a secret and where it may be sent (admin)",
            error=p, ok="201", body=native_models["SecretBody"], also=("200",))
    spec.op("/secrets/{name}", "delete", "Delete a secret (admin)", error=p, ok="204")
    spec.op("/workflows/{name}/hook", "get", "The workflow's inbound webhook, never its "
            "secret (admin)", error=p)
    spec.op("/workflows/{name}/hook", "put", "Create the workflow's webhook (201, its secret "
            "shown once) or change how a delivery's body maps to inputs (200) (admin)",
            error=p, ok="201", body=native_models["HookBody"], also=("200",))
    spec.op("/workflows/{name}/hook", "delete", "Delete the workflow's webhook (admin)",
            error=p, ok="204")
    spec.op("/workflows/{name}/hook/rotate", "post", "A new webhook secret, shown once; the "
            "old one stops working (admin)", error=p)
    spec.op("/hooks/{workflow}", "post", "A signed delivery (`Flowrun-Signature: t=<unix "
            "seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">`; no API key): starts a run "
            "with the body as inputs (202, Location: /runs/{id}); 401 when the signature is "
            "missing, malformed, stale or wrong, 409 for a replay", error=p, ok="202",
            body={}, public=True, headers=(signing.HEADER,))

    d, base = "DifyError", "/dify/v1"
    spec.op(f"{base}/workflows/run", "post", "Dify: run the key's workflow app", error=d,
            body=dify.DifyRunBody, also=("202",), stream=False)
    spec.op(f"{base}/workflows/{{workflow_id}}/run", "post", "Dify: run a version", error=d,
            body=dify.DifyRunBody, also=("202",))
    spec.op(f"{base}/workflows/run/{{workflow_run_id}}", "get", "Dify: run detail", error=d,
            query=("user",))
    spec.op(f"{base}/workflows/tasks/{{task_id}}/stop", "post", "Dify: stop", error=d,
            body={"type": "object", "properties": {"user": {"type": "string"}}})
    spec.op(f"{base}/workflow/{{workflow_run_id}}/events", "get", "Dify: events (resumable)",
            error=d, query=("user",), stream=True)

    c, base = "ConductorError", "/conductor/api"
    spec.op(f"{base}/token", "post", "Orkes: a token for a key", error=c, body={
        "type": "object", "properties": {"keyId": {"type": "string"},
                                         "keySecret": {"type": "string"}}})
    spec.op(f"{base}/workflow", "post", "Conductor: start (StartWorkflowRequest)", error=c,
            body=conductor.StartWorkflowRequest)
    spec.op(f"{base}/workflow/{{name}}", "post", "Conductor: start by name", error=c,
            body=_OBJECT, query=("version", "correlationId", "priority"))
    spec.op(f"{base}/workflow/execute/{{name}}/{{version}}", "post", "Conductor: start and "
            "wait", error=c, body=conductor.StartWorkflowRequest,
            query=("waitForSeconds", "requestId"))
    spec.op(f"{base}/workflow/{{workflow_id}}", "get", "Conductor: an execution", error=c,
            query=("includeTasks",))
    spec.op(f"{base}/workflow/{{workflow_id}}", "delete", "Conductor: terminate", error=c,
            query=("reason",))
    spec.op(f"{base}/workflow/{{workflow_id}}/status", "get", "Conductor: status", error=c,
            query=("includeOutput", "includeVariables"))
    for action in ("pause", "resume"):
        spec.op(f"{base}/workflow/{{workflow_id}}/{action}", "put", f"Conductor: {action}",
                error=c)
    for action in ("restart", "retry"):
        spec.op(f"{base}/workflow/{{workflow_id}}/{action}", "post", f"Conductor: {action}",
                error=c, ok="204")

    lf, base = "LangflowError", "/langflow/api/v2/workflows"
    spec.op(base, "post", "Langflow: run a flow (sync, stream or background)", error=lf,
            body=langflow.WorkflowsRequest, also=("408",))
    spec.op(base, "get", "Langflow: a job's status or result", error=lf,
            query=("job_id", "stream", "sequence_id"), also=("408", "500"))
    spec.op(f"{base}/stop", "post", "Langflow: stop a job", error=lf,
            body={"type": "object", "properties": {"job_id": {"type": "string"}}})
    spec.op(f"{base}/{{job_id}}/events", "get", "Langflow: a job's events", error=lf,
            stream=True)

    j, base = "JobsError", "/jobs"
    for action, summary in (("run", "start a job"), ("run-sync", "run a job and wait")):
        spec.op(f"{base}/workflows/{{id}}/{action}", "post", f"Jobs: {summary}", error=j,
                body=jobs.JobBody, also=("408",))
    spec.op(f"{base}/workflows/{{id}}/latest-job", "get", "Jobs: the newest job", error=j)
    spec.op(f"{base}/workflows/{{id}}/jobs", "get", "Jobs: recent jobs", error=j,
            query=("limit",))
    spec.op(f"{base}/jobs/{{job_id}}/stream", "get", "Jobs: a job's events", error=j,
            stream=True)

    return {
        "openapi": "3.1.0",
        "info": {"title": "flowrun", "version": __version__,
                 "description": "The native run API and the Dify, Conductor, Langflow and "
                                "jobs dialects, each under its prefix."},
        "components": {"schemas": spec.schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": spec.paths,
    }
