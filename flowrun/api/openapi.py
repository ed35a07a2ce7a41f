"""The OpenAPI document of every route the app serves, read from its router.

Nothing here lists routes: the document walks the app's real routing table
(mounts and their prefixes, the root dialect's mode) and describes each
``ApiRoute`` (``flowrun/api/routes.py``) that a request for its path and method
would reach, so a route added, moved or shadowed changes the document with it.
A route that is no ``ApiRoute`` is not API (the web UI) and is left out.

Request bodies come from the pydantic models the routes validate with; each
dialect's error responses carry that dialect's own error shape, so a client
(or a fuzzer) can check every 4xx against it. Path and query parameters are
typed as the strings they arrive as: the server must answer any string with a
clear 4xx.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

from flowrun import __version__
from flowrun.api.routes import ApiRoute
from flowrun.instance import Served

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

    def op(self, path: str, route: ApiRoute) -> None:
        """Add ``route``'s operation at ``path`` (its path under every mount above it)."""
        self.paths.setdefault(path, {})[route.method] = self._operation(path, route)

    def _operation(self, path: str, route: ApiRoute) -> dict[str, Any]:
        media = _MEDIA.get(route.error, "application/json")
        problem = {"description": f"{route.error}: the error shape of this API",
                   "content": {media: {"schema": {"$ref": f"#/components/schemas/{route.error}"}}}}
        responses: dict[str, Any] = {route.ok: {"description": "OK"}}
        for extra in route.also:
            responses[extra] = {"description": "see the summary"}
        for code in _ERROR_CODES:
            responses.setdefault(str(code), problem)
        if route.stream:
            responses[route.ok] = {"description": "Server-Sent Events",
                                   "content": {"text/event-stream": {}}}
        operation: dict[str, Any] = {"summary": route.summary, "responses": responses}
        if route.public:
            operation["security"] = []
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _path_params(path)]
        params += [{"name": name, "in": "query", "required": False,
                    "schema": {"type": "string"}} for name in route.query]
        params += [{"name": name, "in": "header", "required": False,
                    "schema": {"type": "string"}} for name in route.headers]
        if params:
            operation["parameters"] = params
        if route.body is not None:
            body = route.body
            schema = {"$ref": self.model(body)} if isinstance(body, type) else body
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema}}}
            if route.yaml:  # the same document, written as YAML
                operation["requestBody"]["content"]["application/yaml"] = {"schema": schema}
        return operation


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/")
            if part.startswith("{") and part.endswith("}")]


def app_routes(request: Request) -> Sequence[BaseRoute]:
    """The routing table of the flowrun app serving ``request``.

    The whole app's, also when the request came through a mount (``/native`` under a
    root dialect): the app leaves its router in the state its sub-apps share. An app
    built from the route tables alone has only its own.
    """
    served: Served | None = getattr(request.app.state, "flowrun", None)
    router = served.router if served is not None and served.router is not None \
        else request.app.router
    routes: Sequence[BaseRoute] = router.routes
    return routes


def operations(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, ApiRoute]]:
    """Every ``ApiRoute`` under ``routes`` with its full path, through every mount."""
    for route in routes:
        if isinstance(route, Mount):
            yield from operations(route.routes, prefix + route.path)
        elif isinstance(route, ApiRoute):
            yield prefix + route.path, route


_PARAM = re.compile(r"{[^}]*}")


def reaches(routes: Sequence[BaseRoute], path: str, route: ApiRoute) -> bool:
    """Whether a request for ``route`` at ``path`` gets to it, as the router picks.

    Another route matching first (a mount at a prefix, or the same path and method
    declared before) shadows it: it is not served there, so it is not described.
    Path parameters take a value no literal segment has.
    """
    scope: Scope = {"type": "http", "method": route.method.upper(), "root_path": "",
                    "path": _PARAM.sub("~1", path), "path_params": {}}
    return _handler(routes, scope) is route


def _handler(routes: Sequence[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route serving ``scope``: the first that matches fully, through mounts
    (Starlette's router, which never goes back once a mount matched)."""
    for candidate in routes:
        match, child = candidate.matches(scope)
        if match is Match.FULL:
            if isinstance(candidate, Mount):
                return _handler(candidate.routes, {**scope, **child})
            return candidate
    return None


def build_spec(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The spec served at /openapi.json: every API route that ``routes`` serve."""
    spec = _Spec()
    for path, route in operations(routes):
        if reaches(routes, path, route):
            spec.op(path, route)
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
