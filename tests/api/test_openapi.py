"""/openapi.json describes every route the app serves, with each dialect's error shape."""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from flowrun import Settings, __version__, create_app


def served_routes(app: Starlette) -> set[tuple[str, str]]:
    """Every (path, method) of an API route. The spec documents the APIs; the web UI's
    page and files are not API and say so with ``include_in_schema=False`` (its files
    are a StaticFiles mount, which has no routes to walk)."""
    found = set()

    def walk(routes: Sequence[BaseRoute], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(route.routes, prefix + route.path)
            elif isinstance(route, Route) and route.include_in_schema:
                for method in route.methods or ():
                    if method != "HEAD":
                        found.add((prefix + route.path, method.lower()))

    walk(app.router.routes, "")
    return found


def test_every_route_is_described(tmp_path: Path) -> None:
    app = create_app(Settings(db_path=tmp_path / "t.db", auth_enabled=False))
    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()
    assert spec["info"]["version"] == __version__
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert described == served_routes(app)
    assert not any(path.startswith("/ui") for path in spec["paths"])
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            error = op["responses"]["404"]["content"]
            assert error, (path, method)
    schemas = spec["components"]["schemas"]
    assert {"Problem", "DifyError", "ConductorError", "LangflowError", "JobsError",
            "RunBody", "DifyRunBody", "StartWorkflowRequest", "WorkflowsRequest",
            "JobBody"} <= set(schemas)


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
