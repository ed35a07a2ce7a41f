"""The OpenAPI document of the native API, built from the request models."""

from __future__ import annotations

from typing import Any

from flowrun import __name__ as _package

_PROBLEM = {"description": "Problem (RFC 9457) with a machine `code`",
            "content": {"application/problem+json": {"schema": {"$ref":
                                                                "#/components/schemas/Problem"}}}}


def _op(summary: str, ok: str, *, body: str | None = None, codes: tuple[int, ...] = (401,),
        params: tuple[str, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {ok: {"description": "OK"}}}
    for code in codes:
        op["responses"][str(code)] = _PROBLEM
    if body:
        op["requestBody"] = {"required": False, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}}
    if params:
        op["parameters"] = [{"name": p, "in": "query", "required": False,
                             "schema": {"type": "string"}} for p in params]
    return op


def build_spec(run_body_schema: dict[str, Any]) -> dict[str, Any]:
    """The spec served at /openapi.json."""
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    run_param = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
    run_errors = (400, 401, 404, 413, 415, 429, 503)
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("Health and queue depth", "200", codes=())},
        "/metrics": {"get": _op("Prometheus metrics", "200")},
        "/workflows": {"get": _op("Registered workflows", "200")},
        "/workflows/{name}": {
            "parameters": [name_param],
            "get": _op("A workflow definition", "200", codes=(401, 404), params=("version",)),
            "put": _op("Register a new version", "201", codes=(400, 401, 413, 415))},
        "/workflows/{name}/run": {"parameters": [name_param], "post": _op(
            "Accept a run (202, Location: /runs/{id})", "202", body="RunBody", codes=run_errors)},
        "/workflows/{name}/run-sync": {"parameters": [name_param], "post": _op(
            "Run and wait; 408 when `timeout` passes first", "200", body="RunBody",
            codes=(*run_errors, 408), params=("timeout",))},
        "/workflows/{name}/runs": {"parameters": [name_param], "get": _op(
            "Runs of a workflow, newest first", "200", codes=(400, 401, 404),
            params=("status", "correlation_id", "limit", "cursor"))},
        "/workflows/{name}/runs/latest": {"parameters": [name_param], "get": _op(
            "The newest run", "200", codes=(401, 404))},
        "/runs/{run_id}": {"parameters": [run_param], "get": _op(
            "A run with its nodes", "200", codes=(401, 404))},
        "/runs/{run_id}/stop": {"parameters": [run_param], "post": _op(
            "Stop a queued or running run", "200", codes=(401, 404))},
        "/runs/{run_id}/events": {"parameters": [run_param], "get": {
            **_op("The run's events as Server-Sent Events: replay after Last-Event-ID (or "
                  "`after`), then live, closing after workflow_finished", "200",
                  codes=(400, 401, 404), params=("after",)),
            "responses": {"200": {"description": "text/event-stream",
                                  "content": {"text/event-stream": {}}},
                          "400": _PROBLEM, "401": _PROBLEM, "404": _PROBLEM}}},
    }
    problem = {"type": "object", "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "code": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": _package, "version": "1"},
        "components": {"schemas": {"RunBody": run_body_schema, "Problem": problem},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
