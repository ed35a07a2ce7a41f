"""API routes that describe themselves: each carries what /openapi.json says of it.

An ``ApiRoute`` is a Starlette ``Route`` of one method with the facts of its
OpenAPI operation that the handler cannot tell: the status of success, the
request body (a pydantic model or a JSON schema), query parameters and headers,
the other statuses it answers, whether it answers an event stream or needs no
key, and the name of its API's error shape. The summary is the first paragraph
of the handler's docstring, so a handler without one is refused here, when the
table is built; a handler that serves two routes gives each its own ``summary``.
Each API binds its error shape once::

    route = partial(ApiRoute, error="DifyError")
    routes = [route("/workflows/run", run_bound, "POST", body=DifyRunBody)]
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]
Body = type[BaseModel] | dict[str, Any]


class ApiRoute(Route):
    """A route of an API and the facts of its OpenAPI operation."""

    def __init__(self, path: str, endpoint: Endpoint, method: str, *, error: str,
                 ok: str = "200", body: Body | None = None, query: tuple[str, ...] = (),
                 also: tuple[str, ...] = (), stream: bool = False, public: bool = False,
                 yaml: bool = False, headers: tuple[str, ...] = (),
                 summary: str | None = None) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.method = method.lower()
        self.summary = summary or summary_of(endpoint)
        self.error = error  # a schema of the spec's components: this API's error body
        self.ok = ok
        self.body = body
        self.query = query
        self.also = also  # statuses beside ``ok`` and the errors, told in the summary
        self.stream = stream  # ``ok`` answers Server-Sent Events
        self.public = public  # no API key: the path or a signature is the credential
        self.yaml = yaml  # the body may be sent as YAML too
        self.headers = headers


def summary_of(endpoint: Endpoint) -> str:
    """The first paragraph of the handler's docstring, on one line."""
    doc = inspect.getdoc(endpoint)
    if not doc:
        raise ValueError(f"{endpoint.__qualname__} needs a docstring: its first paragraph "
                         f"is the summary of its operation in /openapi.json")
    return " ".join(doc.split("\n\n", 1)[0].split()).removesuffix(".")
