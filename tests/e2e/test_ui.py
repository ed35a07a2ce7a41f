"""The web UI at /ui in a real browser: Debian's headless chromium driven by Playwright.

Each test starts a real ``flowrun serve`` and signs in with a run key. Screenshots go
to ``tests/artifacts/`` (ignored by git) for a reviewer to open, or to
``FLOWRUN_UI_SCREENSHOTS`` when set (``docs/ui`` to refresh the committed ones).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from starlette.applications import Starlette
from starlette.routing import Mount

from flowrun import Settings, create_app, flowrun_lifespan
from tests.e2e.chromium import WAIT, console_errors, launch
from tests.e2e.server import EXAMPLES, Server, finished
from tests.local_server import serve

expect.set_options(timeout=WAIT)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as launched:
        yield launched


ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture
def shots() -> Callable[[Page, str], None]:
    folder = Path(os.environ.get("FLOWRUN_UI_SCREENSHOTS") or ARTIFACTS)
    folder.mkdir(parents=True, exist_ok=True)

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(folder / f"{name}.png"))

    return shot


class UI(NamedTuple):
    server: Server
    key: str
    api: httpx.Client  # the same key, for setting up runs
    page: Page


@pytest.fixture
def ui(server_factory: Callable[..., Server], browser: Browser) -> Iterator[UI]:
    """A server, a run key, and a browser page (not yet signed in)."""
    server = server_factory()
    key = server.create_key()
    server.start()
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    context.set_default_timeout(WAIT)
    page = context.new_page()
    errors = console_errors(page)
    yield UI(server, key, server.client(key), page)
    context.close()
    assert not errors


def sign_in(ui: UI, hash: str = "") -> None:
    ui.page.goto(f"{ui.server.url}/ui{hash}")
    expect(ui.page.locator("#signin")).to_be_visible()
    ui.page.fill("#signin-key", ui.key)
    ui.page.click("#signin button[type=submit]")
    expect(ui.page.locator("#signin")).to_be_hidden()


def start(ui: UI, workflow: str, inputs: dict[str, Any]) -> str:
    response = ui.api.post(f"/workflows/{workflow}/run", json={"inputs": inputs})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def node(page: Page, node_id: str) -> Any:
    return page.locator(f'#graph g.node[data-node-id="{node_id}"]')


def test_sign_in_then_workflows_and_a_drawn_graph(ui: UI, shots: Callable[[Page, str], None]) \
        -> None:
    page = ui.page
    page.goto(f"{ui.server.url}/ui")
    page.fill("#signin-key", "not-a-key")
    page.click("#signin button[type=submit]")
    expect(page.locator("#signin-error")).to_contain_text("refused")
    shots(page, "signin")
    sign_in(ui)
    assert page.evaluate("sessionStorage.getItem('flowrun.key')") == ui.key
    assert ui.key not in page.url
    expect(page.locator('#workflows tr[data-workflow="branching"]')).to_be_visible()
    shots(page, "workflows")
    page.click('#workflows a:text-is("branching")')
    expect(page.locator("#graph g.node")).to_have_count(8)
    expect(page.locator("#graph g.edge")).to_have_count(7)
    labels = page.locator("#graph .edge-label text")
    expect(labels).to_have_count(5)
    expect(labels.filter(has_text=re.compile("^true$"))).to_have_count(1)
    expect(labels.filter(has_text=re.compile("^default$"))).to_have_count(1)
    expect(page.locator("#version option")).to_have_count(1)
    expect(page.locator("#inputs-schema tbody tr")).to_have_count(2)
    shots(page, "workflow")


def test_no_auth_opens_directly(server_factory: Callable[..., Server], browser: Browser) -> None:
    server = server_factory()
    server.start("--no-auth")
    page = browser.new_page()
    errors = console_errors(page)
    try:
        page.goto(f"{server.url}/ui")
        expect(page.locator('#workflows tr[data-workflow="hello"]')).to_be_visible(timeout=WAIT)
        expect(page.locator("#signin")).to_be_hidden()
    finally:
        page.close()
    assert not errors


def test_form_errors_then_a_run_turns_green_and_the_runs_table(
        ui: UI, shots: Callable[[Page, str], None]) -> None:
    page = ui.page
    sign_in(ui, "#/workflows/branching")
    page.fill("#input-n", "1.5")
    page.click("#run-form button[type=submit]")
    expect(page.locator('[data-error-for="n"]')).to_contain_text("expected integer")
    shots(page, "form-error")
    page.fill("#input-n", "42")
    page.select_option("#input-mode", label="careful")
    page.click("#run-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/runs/[0-9a-f-]+$"))
    run_id = page.url.rsplit("/", 1)[1]
    for green in ("check", "big", "route", "careful", "done"):
        expect(node(page, green)).to_have_class(re.compile(r"\bsucceeded\b"))
    expect(node(page, "small")).to_have_class(re.compile(r"\bskipped\b"))
    expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")
    expect(page.locator("#timeline .bar-row")).to_have_count(5)
    node(page, "big").click()
    expect(page.locator("#node-detail")).to_contain_text("42 is big")
    shots(page, "run")

    failed = start(ui, "hello", {"name": "x" * 10})  # another workflow, also succeeded
    page.goto(f"{ui.server.url}/ui#/runs")
    expect(page.locator(f'#runs tr[data-run-id="{run_id}"]')).to_be_visible()
    expect(page.locator(f'#runs tr[data-run-id="{failed}"]')).to_be_visible()
    page.select_option("#filter-workflow", "branching")
    expect(page.locator(f'#runs tr[data-run-id="{failed}"]')).to_have_count(0)
    page.select_option("#filter-status", "failed")
    expect(page.locator(f'#runs tr[data-run-id="{run_id}"]')).to_have_count(0)
    page.select_option("#filter-status", "succeeded")
    expect(page.locator(f'#runs tr[data-run-id="{run_id}"]')).to_be_visible()
    assert "status=succeeded" in page.url
    # a run started elsewhere appears without a reload
    page.select_option("#filter-status", "")
    fresh = start(ui, "branching", {"n": 1})
    expect(page.locator(f'#runs tr[data-run-id="{fresh}"]')).to_be_visible()
    shots(page, "runs")


def test_runs_table_pages_with_the_cursor(ui: UI) -> None:
    ids = [start(ui, "hello", {"name": str(i)}) for i in range(23)]
    page = ui.page
    sign_in(ui, "#/runs")
    expect(page.locator("#runs tbody tr")).to_have_count(20)
    expect(page.locator(f'#runs tr[data-run-id="{ids[-1]}"]')).to_be_visible()
    page.click("#runs-next")
    expect(page.locator("#runs tbody tr")).to_have_count(3)
    expect(page.locator(f'#runs tr[data-run-id="{ids[0]}"]')).to_be_visible()
    expect(page.locator("#runs-next")).to_be_disabled()
    page.click("#runs-prev")
    expect(page.locator(f'#runs tr[data-run-id="{ids[-1]}"]')).to_be_visible()


def test_a_slow_run_is_live_then_stopped(ui: UI, shots: Callable[[Page, str], None]) -> None:
    run_id = start(ui, "slow", {"seconds": 60})
    page = ui.page
    sign_in(ui, f"#/runs/{run_id}")
    expect(node(page, "begin")).to_have_class(re.compile(r"\bsucceeded\b"))
    expect(node(page, "wait")).to_have_class(re.compile(r"\brunning\b"))
    expect(page.locator("#run-head [data-status]")).to_have_text("running")
    shots(page, "run-running")
    page.click("#stop")
    expect(page.locator("#run-head [data-status]")).to_have_text("stopped")
    expect(node(page, "end")).not_to_have_class(re.compile(r"\bsucceeded\b"))
    assert finished(ui.api, run_id)["status"] == "stopped"


def test_rerun_from_a_node_and_with_the_same_inputs(ui: UI,
                                                     shots: Callable[[Page, str], None]) -> None:
    run_id = start(ui, "slow", {"seconds": 0.05})
    before = {n["id"]: n for n in finished(ui.api, run_id)["nodes"]}
    page = ui.page
    sign_in(ui, f"#/runs/{run_id}")
    expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")
    node(page, "wait").click()
    expect(node(page, "wait")).to_have_class(re.compile(r"\bselected\b"))
    page.click("#rerun-from")
    # A new run, linked to this one, that keeps what came before the chosen node.
    expect(page).not_to_have_url(re.compile(re.escape(run_id)))
    expect(page.locator("#rerun-of")).to_contain_text(run_id)
    rerun_id = page.url.rsplit("/", 1)[1]
    after = finished(ui.api, rerun_id)
    assert after["status"] == "succeeded" and after["rerun_of"] == run_id
    nodes = {n["id"]: n for n in after["nodes"]}
    assert nodes["begin"]["finished_at"] == before["begin"]["finished_at"]  # reused
    assert nodes["begin"]["process_data"]["reused_from"] == run_id
    assert nodes["end"]["finished_at"] != before["end"]["finished_at"]  # ran again
    expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")
    expect(node(page, "begin")).to_have_class(re.compile(r"\breused\b"))
    expect(node(page, "end")).not_to_have_class(re.compile(r"\breused\b"))
    node(page, "begin").click()
    expect(page.locator("#reused")).to_have_text("reused")
    # the nodes after the one re-run from ran again, live and in the timeline
    expect(node(page, "end")).to_have_class(re.compile(r"\bsucceeded\b"))
    expect(page.locator("#timeline [data-node-id='end']")).to_be_visible()
    shots(page, "rerun")
    assert finished(ui.api, run_id)["status"] == "succeeded"  # the original is untouched
    page.goto(page.url.rsplit("#", 1)[0] + f"#/runs/{run_id}")
    expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")
    page.click("#rerun")
    expect(page).not_to_have_url(re.compile(re.escape(run_id)))
    expect(page).to_have_url(re.compile(r"#/runs/[0-9a-f-]+$"))
    other = page.url.rsplit("/", 1)[1]
    assert finished(ui.api, other)["inputs"] == {"seconds": 0.05}
    expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")


def test_child_runs_are_linked_both_ways(ui: UI, tmp_path: Path) -> None:
    run_id = start(ui, "parent", {"file": str(tmp_path / "count.txt")})
    child_id = finished(ui.api, run_id)["nodes"][0]["process_data"]["child_run_id"]
    page = ui.page
    sign_in(ui, f"#/runs/{run_id}")
    node(page, "child").click()
    page.click("#child-run a")
    expect(page).to_have_url(re.compile(re.escape(child_id)))
    page.click("#parent a")
    expect(page).to_have_url(re.compile(re.escape(run_id) + "$"))


def test_outputs_are_shown_as_text_never_markup(ui: UI) -> None:
    evil = '<img src=x id=pwned onerror="document.title=1">'
    run_id = start(ui, "hello", {"name": evil})
    finished(ui.api, run_id)
    page = ui.page
    sign_in(ui, f"#/runs/{run_id}")
    node(page, "greet").click()
    expect(page.locator("#node-detail")).to_contain_text("Hello, <img src=x id=pwned")
    expect(page.locator("#pwned")).to_have_count(0)


def test_the_run_page_follows_a_run_across_a_server_restart(ui: UI) -> None:
    run_id = start(ui, "slow", {"seconds": 2})
    page = ui.page
    sign_in(ui, f"#/runs/{run_id}")
    expect(node(page, "wait")).to_have_class(re.compile(r"\brunning\b"))
    ui.server.kill()  # the stream drops; the page reconnects with Last-Event-ID
    expect(page.locator("#live")).to_have_text(re.compile("reconnecting"))
    ui.server.start()
    expect(page.locator("#live")).to_have_text("finished")
    expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")
    expect(node(page, "end")).to_have_class(re.compile(r"\bsucceeded\b"))


def test_a_failed_node_shows_its_error(ui: UI, tmp_path: Path,
                                       shots: Callable[[Page, str], None]) -> None:
    run_id = start(ui, "fail-once", {"file": str(tmp_path / "count.log"),
                                     "marker": str(tmp_path / "missing")})
    assert finished(ui.api, run_id)["status"] == "failed"
    page = ui.page
    sign_in(ui, f"#/runs/{run_id}")
    expect(node(page, "gate")).to_have_class(re.compile(r"\bfailed\b"))
    expect(node(page, "last")).not_to_have_class(re.compile(r"\bsucceeded\b"))
    node(page, "gate").click()
    expect(page.locator("#node-detail")).to_contain_text("marker missing")
    expect(page.locator("#run-head")).to_contain_text("node gate")
    shots(page, "failed-node")


def test_the_run_page_keeps_up_with_a_busy_run(ui: UI) -> None:
    """A map of 300 short naps, four at a time: some 400 events a second for the page."""
    busy = {"inputs": {"seconds": 0}, "edges": [], "nodes": [
        {"id": "each", "type": "map", "items": list(range(300)), "concurrency": 4,
         "nodes": [{"id": "nap", "type": "sleep", "seconds": 0.02}],
         "output": "{{ nodes.nap.slept }}"}]}
    response = ui.api.post("/workflows/slow/run", json=busy)
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    page = ui.page
    sign_in(ui, f"#/runs/{run_id}")
    expect(node(page, "each")).to_have_class(re.compile(r"\b(running|succeeded)\b"))
    expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")
    expect(node(page, "each")).to_have_class(re.compile(r"\bsucceeded\b"))
    events = ui.api.get(f"/runs/{run_id}/events", headers={"Accept": "text/event-stream"})
    assert events.text.count("event: ") > 300  # the stream the page followed was busy


def test_a_waiting_run_is_shown_and_signalled_from_the_page(
        ui: UI, shots: Callable[[Page, str], None]) -> None:
    run_id = start(ui, "approval", {"item": "the budget"})
    page = ui.page
    sign_in(ui, f"#/runs/{run_id}")
    expect(page.locator("#run-head [data-status]")).to_have_text("waiting")
    expect(node(page, "decision")).to_have_class(re.compile(r"\bwaiting\b"))
    expect(page.locator("#signal-form")).to_be_visible()
    expect(page.locator("#signal-name")).to_have_value("decision")
    page.fill("#signal-data", "{not json")
    page.click("#send-signal")
    expect(page.locator("#run-message")).to_contain_text("not JSON")
    page.fill("#signal-data", '{"approved": true, "note": "fine"}')
    shots(page, "run-waiting")
    page.click("#send-signal")
    expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")
    expect(page.locator("#signal-form")).to_be_hidden()
    assert finished(ui.api, run_id)["outputs"]["approved"] is True


def test_runs_start_without_a_secure_context_and_a_double_click_reruns_once(ui: UI) -> None:
    """Over plain http on a network (not https, not localhost) a browser has no
    crypto.randomUUID: the form and the re-run button still make their keys. A double
    click on re-run makes one run, like the first (priority, correlation id)."""
    page = ui.page
    page.add_init_script("delete Crypto.prototype.randomUUID")
    sign_in(ui, "#/workflows/hello")
    assert page.evaluate("typeof crypto.randomUUID") == "undefined"
    page.fill("#input-name", "plain")
    page.click("#run-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/runs/[0-9a-f-]+$"))
    expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")

    started = ui.api.post("/workflows/hello/run", json={
        "inputs": {"name": "again"}, "priority": 7, "correlation_id": "order-7"})
    first = started.json()["id"]
    finished(ui.api, first)
    page.goto(f"{ui.server.url}/ui#/runs/{first}")
    expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")
    page.locator("#rerun").dblclick()
    expect(page).not_to_have_url(re.compile(re.escape(first) + "$"))
    again = page.url.rsplit("/", 1)[1]
    ours = ui.api.get("/runs", params={"correlation_id": "order-7"}).json()["runs"]
    assert sorted(run["id"] for run in ours) == sorted([first, again])
    rerun = ui.api.get(f"/runs/{again}").json()
    assert (rerun["priority"], rerun["inputs"]) == (7, {"name": "again"})


def test_the_ui_finds_the_api_at_native_under_a_dialect_at_the_root(
        server_factory: Callable[..., Server], browser: Browser) -> None:
    server = server_factory({"FLOWRUN_ROOT_DIALECT": "dify"})
    key = server.create_key()
    server.start()
    api = httpx.Client(base_url=f"{server.url}/native", headers={"Authorization": f"Bearer {key}"})
    server.clients.append(api)
    context = browser.new_context()
    context.set_default_timeout(WAIT)
    page = context.new_page()
    errors = console_errors(page)
    try:
        sign_in(UI(server, key, api, page))
        expect(page.locator('#workflows tr[data-workflow="hello"]')).to_be_visible()
        run_id = api.post("/workflows/hello/run", json={"inputs": {"name": "root"}}).json()["id"]
        page.goto(f"{server.url}/ui#/runs/{run_id}")
        expect(page.locator("#live")).to_have_text("finished")
        expect(node(page, "greet")).to_have_class(re.compile(r"\bsucceeded\b"))
    finally:
        context.close()
    assert not errors


def test_the_ui_mounted_in_a_host_app(browser: Browser, tmp_path: Path) -> None:
    """Under another app's mount (root_path) the page, its modules and the API it calls
    are all under the mount: a form, a run and its live events work there."""
    runs = create_app(Settings(db_path=tmp_path / "m.db", auth_enabled=False,
                               workflows_dir=EXAMPLES))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with flowrun_lifespan(runs):
            yield

    host = Starlette(routes=[Mount("/flows", app=runs)], lifespan=lifespan)
    with serve(host, lifespan="on") as url:
        page = browser.new_page()
        errors = console_errors(page)
        try:
            page.goto(f"{url}/flows/ui")
            page.click('#workflows a:text-is("hello")')
            expect(page.locator("#graph g.node")).to_have_count(1)
            page.fill("#input-name", "mounted")
            page.click("#run-form button[type=submit]")
            expect(page.locator("#live")).to_have_text("finished")
            expect(page.locator("#run-head [data-status]")).to_have_text("succeeded")
            assert page.url.startswith(f"{url}/flows/ui#/runs/")
        finally:
            page.close()
    assert not errors
