"""Embedding: flowrun mounted in another Starlette app, and in-process runs."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urljoin

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

import flowrun
from flowrun.engine.nodes import Registry
from flowrun.engine.nodes import registry as default_registry
from tests.imports import SERVER_STACK, modules_after

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_public_api_is_guarded() -> None:
    assert flowrun.__all__ == (
        "FlowrunError", "NodeContext", "NodeFailure", "NodeStatus", "RunOutcome", "RunStatus",
        "Settings", "WorkflowDefinition", "create_app", "flowrun_lifespan", "load_file", "node",
        "parse_definition", "run_workflow")
    for name in flowrun.__all__:
        assert getattr(flowrun, name) is not None


def test_import_flowrun_loads_nothing_until_asked() -> None:
    loaded = modules_after("import flowrun")
    assert {m for m in loaded if m.startswith("flowrun")} == {"flowrun"}
    assert not loaded & {"pydantic", "httpx", *SERVER_STACK}
    # A public name loads its own module, not the server.
    loaded = modules_after("import flowrun; flowrun.parse_definition; flowrun.RunStatus")
    assert not loaded & {"flowrun.app", "flowrun.engine", *SERVER_STACK}


def test_version_comes_from_the_package_metadata() -> None:
    assert flowrun.__version__ == importlib.metadata.version("flowrun")
    assert "__version__" in dir(flowrun) and "create_app" in dir(flowrun)


def test_parse_and_load_default_to_the_registered_node_types() -> None:
    data = {"name": "x", "nodes": [{"id": "t", "type": "template", "template": "hi"}]}
    assert flowrun.parse_definition(data).nodes[0].type == "template"
    assert flowrun.load_file(str(EXAMPLES / "hello.yaml")).name == "hello"
    with pytest.raises(flowrun.FlowrunError, match="unknown node type 'template'"):
        flowrun.parse_definition(data, registry=Registry())


def ui_files(client: TestClient, page_path: str, page: str) -> set[str]:
    """Every file the UI page loads, following its modules' imports (each must be
    relative, so that the whole graph follows the page wherever it is mounted)."""
    todo = [urljoin(page_path, link) for link in re.findall(r'(?:src|href)="([^"]+)"', page)]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        asset = client.get(path)
        assert asset.status_code == 200, path
        if path.endswith(".js") and "/vendor/" not in path:
            assert asset.headers["content-type"].startswith("text/javascript"), path
            for name in re.findall(r'^import\b[^;"]*"([^"]+)"', asset.text, re.M):
                assert name.startswith(("./", "../")), (path, name)
                todo.append(urljoin(path, name))
    return seen


def test_mounted_in_a_host_app(tmp_path: Path) -> None:
    runs = flowrun.create_app(flowrun.Settings(db_path=tmp_path / "e.db", auth_enabled=False,
                                               workflows_dir=EXAMPLES))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with flowrun.flowrun_lifespan(runs):
            yield

    async def home(request: object) -> PlainTextResponse:
        return PlainTextResponse("host")

    host = Starlette(routes=[Route("/", home), Mount("/flows", app=runs)], lifespan=lifespan)
    with TestClient(host) as client:
        assert client.get("/").text == "host"
        resp = client.post("/flows/workflows/hello/run-sync", json={"inputs": {"name": "h"}})
        assert resp.status_code == 200 and resp.json()["outputs"] == {"greeting": "Hello, h!"}
        accepted = client.post("/flows/workflows/hello/run", json={"inputs": {"name": "l"}})
        location = accepted.headers["location"]
        assert location == f"/flows/runs/{accepted.json()['id']}"  # under the mount
        assert client.get(location).status_code == 200
        # the UI too: its API and its assets are under the mount
        page = client.get("/flows/ui")
        assert '<meta name="flowrun-api" content="/flows">' in page.text
        loaded = ui_files(client, "/flows/ui", page.text)
        assert {"/flows/ui/main.js", "/flows/ui/pages/run.js", "/flows/ui/sse.js",
                "/flows/ui/vendor/dagre.min.js", "/flows/ui/style.css"} <= loaded
        assert client.get("/flows/ui/", follow_redirects=False).headers["location"] == \
            "/flows/ui"


async def test_run_workflow_of_a_file_calls_its_folders_workflows() -> None:
    outcome = await flowrun.run_workflow(EXAMPLES / "report-pipeline.yaml",
                                         {"text": "one two three"})
    assert outcome.status is flowrun.RunStatus.SUCCEEDED, outcome.error
    assert outcome.outputs is not None and "short" in str(outcome.outputs)


async def test_run_workflow_in_process() -> None:
    outcome = await flowrun.run_workflow(EXAMPLES / "hello.yaml", {"name": "Ada"})
    assert outcome.status is flowrun.RunStatus.SUCCEEDED
    assert outcome.outputs == {"greeting": "Hello, Ada!"}
    inline = await flowrun.run_workflow(
        {"name": "x", "nodes": [{"id": "t", "type": "template", "template": "{{ 1 + 1 }}"}]})
    assert inline.outputs == {"t": {"text": "2"}}


@pytest.fixture
def global_registry() -> Iterator[Registry]:
    """The global node registry, put back as it was after the test.

    ``@flowrun.node`` can only register into the global registry (the one
    ``run_workflow`` and ``create_app`` use by default), so a test of the decorator
    must undo its registration itself or the type leaks into every later test.
    """
    saved = dict(default_registry._types)
    try:
        yield default_registry
    finally:
        default_registry._types = saved


async def test_custom_node_via_decorator(global_registry: Registry) -> None:
    @flowrun.node("test_shout")
    async def shout(ctx: flowrun.NodeContext, *, text: str) -> dict[str, str]:
        return {"text": text.upper()}

    outcome = await flowrun.run_workflow(
        {"name": "x", "nodes": [{"id": "s", "type": "test_shout", "text": "hey"}]})
    assert outcome.outputs == {"s": {"text": "HEY"}}
    assert "test_shout" in global_registry


async def test_custom_node_in_a_private_registry() -> None:
    async def whisper(ctx: flowrun.NodeContext, *, text: str) -> dict[str, str]:
        return {"text": text.lower()}

    private = default_registry.copy()  # the built-in types, and room for more
    private.register("test_whisper", whisper)
    outcome = await flowrun.run_workflow(
        {"name": "x", "nodes": [{"id": "w", "type": "test_whisper", "text": "HEY"}]},
        registry=private)
    assert outcome.outputs == {"w": {"text": "hey"}}
    assert "test_whisper" not in default_registry
    with pytest.raises(flowrun.FlowrunError, match="test_whisper"):
        await flowrun.run_workflow(
            {"name": "x", "nodes": [{"id": "w", "type": "test_whisper", "text": "HEY"}]})
