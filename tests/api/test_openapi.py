"""/openapi.json describes every route the app serves, in every mode, with each dialect's
error shape, and nothing else."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from flowrun import Settings, __version__, create_app
from flowrun.api.routes import ApiRoute, summary_of

MODES = [None, "dify", "conductor", "langflow", "jobs"]  # the native API or a dialect at /


def app_of(tmp_path: Path, root: str | None = None) -> Starlette:
    return create_app(Settings(db_path=tmp_path / "t.db", auth_enabled=False,
                               root_dialect=root))


def leaves(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Route]]:
    """Every route of the app with its full path, through every mount. The spec
    documents the APIs; the web UI's page and files are not API and say so with
    ``include_in_schema=False`` (its files are a StaticFiles mount, with no routes)."""
    for route in routes:
        if isinstance(route, Mount):
            yield from leaves(route.routes, prefix + route.path)
        elif isinstance(route, Route) and route.include_in_schema:
            yield prefix + route.path, route


def sample(path: str) -> str:
    """A concrete path for a template: each parameter a value no literal segment has."""
    return re.sub(r"{[^}]*}", "~1", path)


def described(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, ops in spec["paths"].items() for method in ops}


def marked(monkeypatch: pytest.MonkeyPatch, routes: list[tuple[str, Route]]) -> None:
    """Each route answers with its own id instead of running its handler, so a request
    tells which route the real router gave it to."""
    for _, route in routes:
        async def mark(scope: Scope, receive: Receive, send: Send, name: str = str(id(route))
                       ) -> None:
            await PlainTextResponse("", headers={"x-route": name})(scope, receive, send)
        monkeypatch.setattr(route, "app", mark)


@pytest.mark.parametrize("root", MODES)
def test_every_served_route_is_described_and_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: str | None) -> None:
    """Real dispatch decides what is served: a route a request reaches is described at
    that path and method; one that a mount or an earlier route shadows is not; and
    every described operation reaches a route of its path and method."""
    app = app_of(tmp_path, root)
    client = TestClient(app)  # the spec needs no lifespan
    spec = client.get("/openapi.json").json()
    ops = described(spec)
    routes = list(leaves(app.router.routes))
    assert all(isinstance(route, ApiRoute) for _, route in routes)  # each can describe itself
    marked(monkeypatch, routes)
    for path, route in routes:
        for method in sorted((route.methods or set()) - {"HEAD"}):
            answer = client.request(method, sample(path))
            reached = answer.headers.get("x-route") == str(id(route))
            assert reached == ((path, method.lower()) in ops), (path, method)
    for path, method in ops:
        answer = client.request(method, sample(path))
        assert answer.headers.get("x-route") in {
            str(id(route)) for at, route in routes
            if at == path and method.upper() in (route.methods or ())}, (path, method)


def test_the_default_spec(tmp_path: Path) -> None:
    with TestClient(app_of(tmp_path)) as client:
        spec = client.get("/openapi.json").json()
    assert spec["info"]["version"] == __version__
    assert not any(path.startswith(("/ui", "/native")) for path in spec["paths"])
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert error_of(op) in spec["components"]["schemas"], (path, method)
    schemas = spec["components"]["schemas"]
    assert {"Problem", "DifyError", "ConductorError", "LangflowError", "JobsError",
            "RunBody", "DifyRunBody", "StartWorkflowRequest", "WorkflowsRequest",
            "JobBody"} <= set(schemas)
    # summaries are the handlers' docstrings; one handler serving two routes names each
    assert spec["paths"]["/runs/{run_id}"]["get"]["summary"] == "A run with its nodes"
    assert spec["paths"]["/runs"]["get"]["summary"] == "Runs of every workflow, newest first"
    assert spec["paths"]["/workflows/{name}/runs"]["get"]["summary"] == \
        "Runs of a workflow, newest first"


def error_of(op: dict[str, Any]) -> str:
    ref = op["responses"]["404"]["content"]
    return str(next(iter(ref.values()))["schema"]["$ref"]).rsplit("/", 1)[-1]


def test_a_root_dialect_is_described_at_the_root_and_the_native_api_under_native(
        tmp_path: Path) -> None:
    with TestClient(app_of(tmp_path, "dify")) as client:
        spec = client.get("/openapi.json").json()
        assert client.get("/native/openapi.json").json() == spec  # the whole app's, too
    paths = spec["paths"]
    assert "/workflows" not in paths  # Dify answers there, not the native API
    assert error_of(paths["/native/workflows"]["get"]) == "Problem"
    for at in ("/workflows/run", "/dify/v1/workflows/run"):
        assert error_of(paths[at]["post"]) == "DifyError"
        assert paths[at]["post"]["summary"] == "Dify: run the key's workflow app"
    for ops in ("/healthz", "/metrics", "/openapi.json"):  # stay at the root
        assert "get" in paths[ops] and "get" in paths[f"/native{ops}"]
    assert "/conductor/api/workflow" in paths


def test_a_route_a_mount_shadows_is_not_described(tmp_path: Path) -> None:
    """With the jobs API at the root, its ``/jobs/{job_id}/stream`` falls under the
    ``/jobs`` mount, which has no such route: it is served only under the prefix."""
    with TestClient(app_of(tmp_path, "jobs")) as client:
        paths = client.get("/openapi.json").json()["paths"]
        assert "/jobs/{job_id}/stream" not in paths
        assert "/jobs/jobs/{job_id}/stream" in paths and "/workflows/{id}/run" in paths
        answer = client.get("/jobs/1/stream")
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"


def test_a_route_without_a_summary_is_refused() -> None:
    async def undocumented(request: Request) -> Response:
        return Response()

    with pytest.raises(ValueError, match="needs a docstring"):
        ApiRoute("/x", undocumented, "GET", error="Problem")
    named = ApiRoute("/x", undocumented, "GET", error="Problem", summary="Named here")
    assert named.summary == "Named here"


def test_a_summary_is_the_docstrings_first_paragraph_on_one_line() -> None:
    async def documented(request: Request) -> Response:
        """Do a thing across
        two lines (admin).

        Why it is done so, which the spec leaves out.
        """
        return Response()

    assert summary_of(documented) == "Do a thing across two lines (admin)"


def test_the_ui_is_served_but_not_described(tmp_path: Path) -> None:
    app = create_app(Settings(db_path=tmp_path / "t.db", auth_enabled=False))
    hidden = [r for r in app.router.routes if isinstance(r, Route) and not r.include_in_schema]
    assert {r.path for r in hidden} == {"/ui", "/ui/"}  # nothing else hides from the spec
    with TestClient(app) as client:
        page = client.get("/ui")
        assert page.status_code == 200
        assert '<meta name="flowrun-api" content="">' in page.text  # the API at the root
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("main.js", "pages/run.js", "vendor/dagre.min.js"):
            script = client.get(f"/ui/{asset}")
            assert script.status_code == 200
            assert script.headers["content-type"] == "text/javascript; charset=utf-8"


def test_the_ui_modules_are_javascript_whatever_the_host_mimetypes_say(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A browser runs a module script only with a JavaScript type; some hosts' tables
    give .js another (text/plain), and the UI must not depend on them."""
    monkeypatch.setitem(mimetypes.types_map, ".js", "text/plain")
    monkeypatch.setitem(mimetypes.types_map, ".css", "text/plain")
    app = create_app(Settings(db_path=tmp_path / "t.db", auth_enabled=False))
    with TestClient(app) as client:
        assert client.get("/ui/sse.js").headers["content-type"] == \
            "text/javascript; charset=utf-8"
        assert client.get("/ui/style.css").headers["content-type"] == "text/css; charset=utf-8"


def test_the_ui_finds_the_native_api_under_a_root_dialect(tmp_path: Path) -> None:
    app = create_app(Settings(db_path=tmp_path / "t.db", auth_enabled=False,
                              root_dialect="dify"))
    with TestClient(app) as client:
        page = client.get("/ui")
        assert page.status_code == 200
        assert '<meta name="flowrun-api" content="/native">' in page.text
