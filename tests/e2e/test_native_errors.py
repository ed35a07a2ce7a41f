"""Requests a newcomer gets wrong get an error that says what to do, through a real server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from flowrun.client import Client, RunSyncTimeout, WaitTimeout
from tests.e2e.server import Started


def problem(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    return str(resp.json()["detail"])


def test_key_headers_that_cannot_work_say_why(start_server: Callable[..., Started]) -> None:
    server, key, _ = start_server()
    other = server.create_key()

    def post(headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{server.url}/workflows/hello/run", headers=headers,
                          json={"inputs": {"name": "x"}})

    assert "Bearer" in problem(post({"Authorization": f"Token {key}"}), 401)
    assert "holds no API key" in problem(post({"x-api-key": ""}), 401)
    assert "different API keys" in problem(
        post({"Authorization": f"Bearer {key}", "x-api-key": other}), 401)
    assert "missing API key" in problem(post({}), 401)
    # A proxy's own Authorization scheme does not hide a key sent the dialect's way.
    assert post({"Authorization": "Basic cHJveHk=", "x-api-key": key}).status_code == 202


def test_request_mistakes_are_named(start_server: Callable[..., Started]) -> None:
    client = start_server().client
    typo = client.post("/workflows/hello/run", json={"input": {"name": "x"}})
    assert "did you mean 'inputs'?" in problem(typo, 400)
    assert "must be a number of seconds, not 'abc'" in problem(
        client.post("/workflows/hello/run-sync?timeout=abc", json={}), 400)
    assert "run-sync" in problem(
        client.post("/workflows/hello/run", json={"inputs": {"name": "x"}, "timeout": 5}), 400)
    empty = client.post("/workflows/hello/run", json={"inputs": {"name": "x"}},
                        headers={"Idempotency-Key": ""})
    assert "Idempotency-Key" in problem(empty, 400)
    keyless = client.post("/workflows/hello/run", json={"inputs": {"name": "x"}},
                          headers={"X-On-Conflict": "FAIL"})
    assert "needs" in keyless.json()["errors"][0]["message"] and keyless.status_code == 400
    twice = client.post("/workflows/hello/run", json={"inputs": {"name": "x"}},
                        headers={"Idempotency-Key": "a", "X-Idempotency-key": "b"})
    assert "differ" in problem(twice, 400)
    same = client.post("/workflows/hello/run", json={"inputs": {"name": "x"}},
                       headers={"Idempotency-Key": "a", "X-Idempotency-key": "a"})
    assert same.status_code == 202
    runs = client.get("/workflows/hello/runs").json()["runs"]
    assert [r["id"] for r in runs] == [same.json()["id"]]  # the refused ones made nothing


def test_the_client_waits_and_explains_a_408(start_server: Callable[..., Started]) -> None:
    started = start_server()
    with Client(started.server.url, api_key=started.key) as client:
        with pytest.raises(RunSyncTimeout) as late:
            client.run_sync("slow", {"seconds": 2}, timeout=0.2)
        assert late.value.run_id in str(late.value) and "None" not in str(late.value)
        with pytest.raises(WaitTimeout) as waited:
            client.wait(late.value.run_id, timeout=0.2)
        assert waited.value.run["status"] == "running"
        assert client.wait(late.value.run_id, timeout=20)["status"] == "succeeded"
        assert [r["workflow"] for r in client.list()["runs"]] == ["slow"]
