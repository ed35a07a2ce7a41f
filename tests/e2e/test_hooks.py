"""Inbound webhooks through a real server: signed deliveries start runs; bad, stale and
replayed signatures are refused, also across a restart; an admin manages hooks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest

from flowrun.client import AsyncClient, Client, ClientError
from flowrun.features.webhooks import signing
from tests.e2e.server import Started, finished

PROBLEM = "application/problem+json"


def send(client: httpx.Client, workflow: str, secret: str | None, payload: Any, *,
         raw: bytes | None = None, timestamp: int | None = None,
         header: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST a delivery signed with ``secret`` (unsigned without one, or with ``header``)."""
    body = raw if raw is not None else json.dumps(payload).encode()
    sent = [(b"Content-Type", b"application/json"),
            *((k.encode(), v.encode()) for k, v in (headers or {}).items())]
    if header is None and secret is not None:
        header = signing.sign(secret, body, timestamp=timestamp)
    if header is not None:
        sent.append((signing.HEADER.encode(), header.encode("latin-1")))  # any byte may come
    return client.post(f"/hooks/{workflow}", content=body, headers=sent)


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def hook_runs(admin: httpx.Client, workflow: str) -> list[dict[str, Any]]:
    runs = admin.get(f"/workflows/{workflow}/runs", params={"limit": 100}).json()["runs"]
    return [r for r in runs if r.get("source") == "hook"]


def test_a_signed_delivery_starts_a_run_and_everything_else_is_refused(
        start_server: Callable[..., Started]) -> None:
    started = start_server()
    server = started.server
    admin = server.client(server.admin_key())
    sender = server.client(None)  # no API key: the signature is the credential

    created = admin.put("/workflows/hello/hook", json={})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert secret.startswith("whsec_") and created.json()["path"] == "/hooks/hello"
    shown = admin.get("/workflows/hello/hook").json()
    assert "secret" not in shown and secret not in json.dumps(shown)
    assert shown["inputs"] is None and shown["last_delivery"] is None

    payload = {"name": "Ada"}
    body = json.dumps(payload).encode()
    header = signing.sign(secret, body)
    accepted = send(sender, "hello", None, None, raw=body, header=header)
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]
    assert accepted.json()["status"] in {"queued", "running", "succeeded"}
    assert accepted.headers["location"] == f"/runs/{run_id}"
    run = finished(admin, run_id)
    assert run["status"] == "succeeded" and run["outputs"] == {"greeting": "Hello, Ada!"}
    assert run["source"] == "hook" and run["inputs"] == payload
    assert run["idempotency_key"] == f"hook:{header.split('v1=')[1]}"
    last = admin.get("/workflows/hello/hook").json()["last_delivery"]
    assert last["run_id"] == run_id and last["at"]
    # the run belongs to no key: the run key does not see it, as with scheduled runs
    assert started.client.get(f"/runs/{run_id}").status_code == 404

    # the same delivery again is a replay: refused, naming its run, and no second run
    replay = refused(send(sender, "hello", None, None, raw=body, header=header), 409,
                     "delivery_replayed")
    assert replay["run_id"] == run_id and run_id in replay["detail"]
    assert [r["id"] for r in hook_runs(admin, "hello")] == [run_id]

    # signatures: missing, malformed, stale, wrong secret, another body
    why = refused(send(sender, "hello", None, payload), 401, "invalid_signature")
    assert "missing" in why["detail"]
    why = refused(send(sender, "hello", None, payload, header="v1=abc"), 401,
                  "invalid_signature")
    assert "timestamp" in why["detail"]
    why = refused(send(sender, "hello", None, payload, header=f"t={int(time.time())},v1=ÿ"),
                  401, "invalid_signature")
    assert "malformed" in why["detail"]
    why = refused(send(sender, "hello", secret, payload, timestamp=int(time.time()) - 301),
                  401, "invalid_signature")
    assert "300s" in why["detail"]
    why = refused(send(sender, "hello", signing.new_secret(), payload), 401,
                  "invalid_signature")
    assert "no signature matches" in why["detail"]
    other = json.dumps({"name": "Eve"}).encode()
    refused(send(sender, "hello", None, None, raw=other, header=header), 401,
            "invalid_signature")

    # signed, but not usable: not JSON, not an object, inputs that do not fit
    refused(send(sender, "hello", secret, None, raw=b"name=Ada"), 400, "invalid_param")
    refused(send(sender, "hello", secret, ["Ada"]), 422, "unprocessable")
    misfit = refused(send(sender, "hello", secret, {"name": 5, "extra": 1}), 422,
                     "unprocessable")
    assert {e["field"] for e in misfit["errors"]} >= {"inputs.name", "inputs.extra"}
    # a body key naming a node is an input like any other, not a param override
    refused(send(sender, "hello", secret, {"name": "Ada", "greet.template": "x"}), 422,
            "unprocessable")
    assert len(hook_runs(admin, "hello")) == 1

    # no hook there: the same 404 for an unknown workflow and one without a hook
    refused(send(sender, "nope", secret, payload), 404, "not_found")
    refused(send(sender, "branching", secret, payload), 404, "not_found")
    too_big = send(sender, "hello", secret, None, raw=b"[" + b" " * (1024 * 1024) + b"]")
    refused(too_big, 413, "payload_too_large")

    # only an admin key manages hooks
    run_key = started.client
    assert run_key.put("/workflows/hello/hook", json={}).status_code == 403
    assert run_key.get("/workflows/hello/hook").status_code == 403
    assert run_key.post("/workflows/hello/hook/rotate").status_code == 403
    assert run_key.delete("/workflows/hello/hook").status_code == 403
    refused(admin.put("/workflows/nope/hook", json={}), 404, "workflow_not_found")
    refused(admin.get("/workflows/branching/hook"), 404, "not_found")
    refused(admin.post("/workflows/nope/hook/rotate"), 404, "workflow_not_found")
    refused(admin.put("/workflows/hello/hook", json={"inputs": "not an expression"}), 400,
            "invalid_param")
    refused(admin.put("/workflows/hello/hook", json={"inputs": {"a": "{{ body. }}"}}), 400,
            "invalid_param")
    refused(admin.put("/workflows/hello/hook", json={"mapping": {}}), 400, "invalid_param")


def test_mapping_rotation_races_and_delete(start_server: Callable[..., Started]) -> None:
    started = start_server()
    server = started.server
    admin = server.client(server.admin_key())
    sender = server.client(None)
    secret = admin.put("/workflows/hello/hook", json={}).json()["secret"]

    mapping = {"inputs": {"name": "{{ body.sender.login }} ({{ headers['x-event'] }})"}}
    changed = admin.put("/workflows/hello/hook", json=mapping)
    assert changed.status_code == 200 and "secret" not in changed.json()
    assert changed.json()["inputs"] == mapping["inputs"]
    accepted = send(sender, "hello", secret, {"sender": {"login": "ada"}, "noise": [1, 2]},
                    headers={"X-Event": "push"})
    assert accepted.status_code == 202, accepted.text
    run = finished(admin, accepted.json()["run_id"])
    assert run["outputs"] == {"greeting": "Hello, ada (push)!"}
    refused(send(sender, "hello", secret, {"no_sender": True}), 422, "unprocessable")

    # identical deliveries at once: one run, the others are told it was accepted before
    body = json.dumps({"sender": {"login": "bo"}}).encode()
    header = signing.sign(secret, body)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: send(sender, "hello", None, None, raw=body,
                                               header=header,
                                               headers={"X-Event": "race"}), range(4)))
    assert sorted(a.status_code for a in answers) == [202, 409, 409, 409], \
        [a.text for a in answers]
    winner = next(a for a in answers if a.status_code == 202).json()["run_id"]
    assert all(a.json()["run_id"] == winner for a in answers if a.status_code == 409)

    rotated = admin.post("/workflows/hello/hook/rotate")
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret != secret and rotated.json()["rotated_at"]
    refused(send(sender, "hello", secret, {"sender": {"login": "old"}}), 401,
            "invalid_signature")
    assert send(sender, "hello", new_secret, {"sender": {"login": "new"}},
                headers={"X-Event": "push"}).status_code == 202

    assert admin.delete("/workflows/hello/hook").status_code == 204
    refused(send(sender, "hello", new_secret, {"sender": {"login": "gone"}}), 404, "not_found")
    refused(admin.get("/workflows/hello/hook"), 404, "not_found")
    refused(admin.delete("/workflows/hello/hook"), 404, "not_found")


def test_a_replay_is_refused_after_a_restart_and_the_secret_still_works(
        start_server: Callable[..., Started]) -> None:
    started = start_server()
    server = started.server
    admin = server.client(server.admin_key())
    sender = server.client(None)
    secret = admin.put("/workflows/hello/hook", json={}).json()["secret"]
    body = json.dumps({"name": "before"}).encode()
    header = signing.sign(secret, body)
    accepted = send(sender, "hello", None, None, raw=body, header=header)
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]
    finished(admin, run_id)

    server.kill()  # no goodbye: what was accepted is on disk
    server.start()
    replay = refused(send(sender, "hello", None, None, raw=body, header=header), 409,
                     "delivery_replayed")
    assert replay["run_id"] == run_id
    after = send(sender, "hello", secret, {"name": "after"})
    assert after.status_code == 202, after.text
    assert finished(admin, after.json()["run_id"])["outputs"] == {"greeting": "Hello, after!"}
    assert len(hook_runs(admin, "hello")) == 2


def test_the_python_client_manages_hooks(start_server: Callable[..., Started]) -> None:
    started = start_server()
    server = started.server
    sender = server.client(None)
    with Client(server.url, server.admin_key()) as client:
        secret = client.put_hook("hello")["secret"]
        assert client.put_hook("hello", {"name": "{{ body.who }}"})["inputs"] == \
            {"name": "{{ body.who }}"}
        assert send(sender, "hello", secret, {"who": "Ada"}).status_code == 202
        assert client.get_hook("hello")["last_delivery"]["run_id"]
        new_secret = client.rotate_hook_secret("hello")["secret"]
        assert send(sender, "hello", new_secret, {"who": "Bo"}).status_code == 202
        client.delete_hook("hello")
        with pytest.raises(ClientError) as caught:
            client.get_hook("hello")
        assert caught.value.status == 404

    async def managed() -> None:
        async with AsyncClient(server.url, server.admin_key()) as client:
            assert "secret" in await client.put_hook("hello")
            assert (await client.get_hook("hello"))["inputs"] is None
            assert "secret" in await client.rotate_hook_secret("hello")
            await client.delete_hook("hello")
            with pytest.raises(ClientError):
                await client.delete_hook("hello")

    anyio.run(managed)
