"""Native API request/response rules, in process: bad input is a clear 4xx, writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from flowrun import Settings, create_app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(db_path=tmp_path / "t.db", workflows_dir=EXAMPLES, auth_enabled=False,
                        max_body_bytes=4096)
    with TestClient(create_app(settings)) as c:
        yield c


def runs_of(client: TestClient, workflow: str) -> list[Any]:
    return list(client.get(f"/workflows/{workflow}/runs").json()["runs"])


def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    return dict(body)


def fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


@pytest.mark.parametrize(("body", "field"), [
    ({"inputs": {"name": 5}}, "inputs.name"),
    ({"inputs": {"name": "a", "extra": 1}}, "inputs.extra"),
    ({"inputs": {}}, "inputs.name"),
    ({"inputs": {"name": "a"}, "priority": 100}, "priority"),
    ({"inputs": {"name": "a"}, "priority": -1}, "priority"),
    ({"inputs": {"name": "a"}, "priority": "5"}, "priority"),
    ({"inputs": {"name": "a"}, "timeout": -1}, "timeout"),
    ({"inputs": {"name": "a"}, "timeout": 601}, "timeout"),
    ({"inputs": {"name": "a"}, "surprise": True}, "surprise"),
    ({"inputs": "name=a"}, "inputs"),
    ({"inputs": {"name": "a"}, "overrides": {"ghost": {"template": "x"}}}, "overrides.ghost"),
])
def test_bad_run_bodies_name_the_field(client: TestClient, body: dict[str, Any],
                                       field: str) -> None:
    for path in ("/workflows/hello/run", "/workflows/hello/run-sync"):
        resp = client.post(path, json=body)
        assert field in fields(problem(resp, 400, resp.json()["code"])), resp.json()
    assert runs_of(client, "hello") == []


def test_run_sync_timeout_query_out_of_range(client: TestClient) -> None:
    for value in ("-1", "0", "601", "soon"):
        resp = client.post(f"/workflows/hello/run-sync?timeout={value}",
                           json={"inputs": {"name": "a"}})
        assert fields(problem(resp, 400, "invalid_param")) == {"timeout"}
    assert runs_of(client, "hello") == []


def test_malformed_json(client: TestClient) -> None:
    resp = client.post("/workflows/hello/run", content=b'{"inputs": ',
                       headers={"content-type": "application/json"})
    assert "malformed JSON" in problem(resp, 400, "invalid_param")["detail"]
    assert runs_of(client, "hello") == []


def test_body_must_be_an_object(client: TestClient) -> None:
    resp = client.post("/workflows/hello/run", json=[1, 2])
    assert fields(problem(resp, 400, "invalid_param")) == {"body"}


def test_wrong_content_type(client: TestClient) -> None:
    resp = client.post("/workflows/hello/run", content=b"inputs=1",
                       headers={"content-type": "application/x-www-form-urlencoded"})
    problem(resp, 415, "unsupported_media_type")
    assert runs_of(client, "hello") == []


def test_huge_body_is_413(client: TestClient) -> None:
    resp = client.post("/workflows/hello/run", json={"inputs": {"name": "x" * 10_000}})
    problem(resp, 413, "payload_too_large")
    chunked = client.post("/workflows/hello/run", content=iter([b"{" + b" " * 5000 + b"}"]),
                          headers={"content-type": "application/json"})
    problem(chunked, 413, "payload_too_large")
    assert runs_of(client, "hello") == []


def test_unknown_workflow_and_version(client: TestClient) -> None:
    problem(client.post("/workflows/nope/run", json={}), 404, "workflow_not_found")
    resp = client.post("/workflows/hello/run", json={"inputs": {"name": "a"}, "version": 7})
    assert fields(problem(resp, 404, "version_not_found")) == {"version"}
    problem(client.get("/workflows/hello?version=7"), 404, "version_not_found")
    problem(client.get("/workflows/nope/runs"), 404, "workflow_not_found")
    problem(client.get("/runs/nope"), 404, "run_not_found")
    problem(client.get("/no/such/path"), 404, "not_found")
    assert runs_of(client, "hello") == []


def test_invalid_graph_override_names_the_node(client: TestClient) -> None:
    body = {"inputs": {"name": "a"},
            "nodes": [{"id": "a", "type": "template", "template": "x"},
                      {"id": "b", "type": "template", "template": "y"}],
            "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}]}
    resp = problem(client.post("/workflows/hello/run", json=body), 400, "invalid_definition")
    assert "cycle: a -> b -> a" in resp["detail"]
    bad_type = {"inputs": {"name": "a"}, "nodes": [{"id": "z", "type": "nope"}]}
    resp = problem(client.post("/workflows/hello/run", json=bad_type), 400, "invalid_definition")
    assert resp["errors"][0]["node"] == "z"
    assert runs_of(client, "hello") == []


def test_graph_override_runs_only_for_that_run(client: TestClient) -> None:
    body = {"inputs": {"name": "Ann"},
            "nodes": [{"id": "greet", "type": "template", "template": "Bye, {{ inputs.name }}"}]}
    run = client.post("/workflows/hello/run-sync", json=body).json()
    assert run["outputs"] == {"greeting": "Bye, Ann"}
    again = client.post("/workflows/hello/run-sync", json={"inputs": {"name": "Ann"}}).json()
    assert again["outputs"] == {"greeting": "Hello, Ann!"}
    over = client.post("/workflows/hello/run-sync", json={
        "inputs": {"name": "Ann"}, "overrides": {"greet": {"template": "Yo {{ inputs.name }}"}}})
    assert over.json()["outputs"] == {"greeting": "Yo Ann"}


def test_register_versions_and_read_them(client: TestClient) -> None:
    definition = {"nodes": [{"id": "t", "type": "template", "template": "v1"}]}
    resp = client.put("/workflows/mine", json=definition)
    assert resp.status_code == 201 and resp.json()["version"] == 1
    assert client.put("/workflows/mine", json=definition).status_code == 200
    definition["nodes"][0]["template"] = "v2"
    assert client.put("/workflows/mine", json=definition).json()["version"] == 2
    assert client.get("/workflows/mine").json()["version"] == 2
    old = client.get("/workflows/mine?version=1").json()
    assert old["definition"]["nodes"][0]["template"] == "v1"
    run = client.post("/workflows/mine/run-sync", json={"version": 1}).json()
    assert run["version"] == 1 and run["outputs"] == {"t": {"text": "v1"}}
    names = {w["name"]: w["version"] for w in client.get("/workflows").json()["workflows"]}
    assert names["mine"] == 2 and names["hello"] == 1


def test_register_invalid_names_the_node(client: TestClient) -> None:
    resp = client.put("/workflows/bad", json={"nodes": [{"id": "s", "type": "sleep"}]})
    body = problem(resp, 400, "invalid_definition")
    assert body["errors"] == [{"node": "s", "field": "seconds",
                               "message": "node 's': missing required param 'seconds'"}]
    resp = client.put("/workflows/bad", json={"name": "other", "nodes": []})
    problem(resp, 400, "invalid_definition")
    problem(client.get("/workflows/bad"), 404, "workflow_not_found")


def test_list_filters_and_cursor(client: TestClient) -> None:
    ids = [client.post("/workflows/hello/run-sync",
                       json={"inputs": {"name": str(i)}, "correlation_id": f"c{i % 2}"}
                       ).json()["id"] for i in range(5)]
    page1 = client.get("/workflows/hello/runs?limit=2").json()
    page2 = client.get(f"/workflows/hello/runs?limit=2&cursor={page1['next_cursor']}").json()
    page3 = client.get(f"/workflows/hello/runs?limit=2&cursor={page2['next_cursor']}").json()
    listed = [r["id"] for r in page1["runs"] + page2["runs"] + page3["runs"]]
    assert listed == list(reversed(ids)) and page3["next_cursor"] is None
    c0 = client.get("/workflows/hello/runs?correlation_id=c0").json()["runs"]
    assert {r["id"] for r in c0} == {ids[0], ids[2], ids[4]}
    assert len(client.get("/workflows/hello/runs?status=succeeded").json()["runs"]) == 5
    assert client.get("/workflows/hello/runs?status=failed").json()["runs"] == []
    assert client.get("/workflows/hello/runs/latest").json()["id"] == ids[-1]
    problem(client.get("/workflows/hello/runs?status=bogus"), 400, "invalid_param")
    problem(client.get("/workflows/hello/runs?limit=0"), 400, "invalid_param")
    problem(client.get("/workflows/hello/runs?cursor=abc"), 400, "invalid_param")
    problem(client.get("/workflows/slow/runs/latest"), 404, "not_found")


def test_trace_id_header_wins(client: TestClient) -> None:
    run = client.post("/workflows/hello/run", json={"inputs": {"name": "a"}, "trace_id": "body"},
                      headers={"X-Trace-Id": "hdr-1"}).json()
    assert run["trace_id"] == "hdr-1"


def test_failed_run_reports_the_node(client: TestClient) -> None:
    body = {"nodes": [{"id": "t", "type": "template", "template": "{{ [][1] }}"}],
            "inputs": {"name": "a"}}
    run = client.post("/workflows/hello/run-sync", json=body).json()
    assert run["status"] == "failed"
    assert run["error"]["node_id"] == "t" and run["error"]["code"] == "expression_error"
    assert run["nodes"][0]["status"] == "failed"


def test_metrics_and_openapi(client: TestClient) -> None:
    client.post("/workflows/hello/run-sync", json={"inputs": {"name": "m"}})
    text = client.get("/metrics").text
    assert 'flowrun_runs_accepted_total{workflow="hello"} 1.0' in text
    assert 'flowrun_runs_finished_total{status="succeeded",workflow="hello"} 1.0' in text
    assert "flowrun_runs_queued 0.0" in text
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "/workflows/{name}/run-sync" in spec["paths"]
    assert "text/event-stream" in spec["paths"]["/runs/{run_id}/events"]["get"]["responses"][
        "200"]["content"]
    assert "priority" in spec["components"]["schemas"]["RunBody"]["properties"]


def test_deeply_nested_json_is_a_clear_400(client: TestClient) -> None:
    body = b'{"inputs": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    resp = client.post("/workflows/hello/run", content=body,
                       headers={"content-type": "application/json"})
    assert "nested too deeply" in problem(resp, 400, "invalid_param")["detail"]
    assert runs_of(client, "hello") == []


def test_the_wait_limit_is_the_setting_for_the_query_and_the_body(tmp_path: Path) -> None:
    settings = Settings(db_path=tmp_path / "t.db", workflows_dir=EXAMPLES, auth_enabled=False,
                        run_sync_max_timeout_s=900)
    with TestClient(create_app(settings)) as client:
        for asked in ({"params": {"timeout": "800"}}, {"json_timeout": 800}):
            body: dict[str, Any] = {"inputs": {"name": "a"}}
            if "json_timeout" in asked:
                body["timeout"] = asked["json_timeout"]
            resp = client.post("/workflows/hello/run-sync", json=body,
                               params=asked.get("params"))
            assert resp.status_code == 200, resp.text
        resp = client.post("/workflows/hello/run-sync",
                           json={"inputs": {"name": "a"}, "timeout": 901})
        assert fields(problem(resp, 400, resp.json()["code"])) == {"timeout"}
