"""Completion callbacks through a real server and a real receiver: signed delivery of the
run's JSON, retries until a 2xx, a workflow's default URL, refused URLs, the SSRF guard,
and a restart in the middle (the callback is delivered once, after it)."""

from __future__ import annotations

import json
import selectors
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, cast

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flowrun.client import Client, ClientError, SignatureError, verify_callback
from flowrun.features.webhooks import signing
from tests.e2e.server import Server, Started, finished
from tests.eventually import eventually
from tests.local_server import serve

FAST = {"FLOWRUN_ALLOW_PRIVATE_HOSTS": "true", "FLOWRUN_CALLBACK_BACKOFF_S": "0.1",
        "FLOWRUN_CALLBACK_MAX_BACKOFF_S": "0.3"}
WORKFLOW: dict[str, Any] = {
    "inputs": {"name": {"type": "string", "default": "you"}},
    "nodes": [{"id": "greet", "type": "template", "template": "Hello, {{ inputs.name }}!"}]}


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int


class Receiver:
    """A callback receiver under uvicorn in a thread: records every request and answers
    ``status`` (or the next of ``script``, while it lasts)."""

    def __init__(self) -> None:
        self.status = 200
        self.script: list[int] = []
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.url = ""

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            status = self.script.pop(0) if self.script else self.status
            self.requests.append(Received(request.url.path, dict(request.headers), body,
                                          status))
        return Response(status_code=status)

    def got(self, count: int = 1, answered: int | None = None) -> list[Received]:
        """Wait (up to 15 s) for ``count`` requests (answered ``answered``, if given)."""
        def found() -> list[Received]:
            with self.lock:
                hits = [r for r in self.requests if answered in (None, r.answered)]
            return hits if len(hits) >= count else []
        hits: list[Received] = eventually(found, what=f"{count} callback requests")
        return hits


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    app = Starlette(routes=[Route("/{path:path}", found.hook, methods=["POST"])])
    with ExitStack() as stack:
        found.url = stack.enter_context(serve(app))
        yield found


def callback_state(client: httpx.Client, run_id: str, state: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/runs/{run_id}/callbacks").json()
        return body if body.get("state") == state else None
    found: dict[str, Any] = eventually(check, what=f"callback of {run_id} {state}")
    return found


def setup(start_server: Callable[..., Started], env: dict[str, str] | None = None,
          definition: dict[str, Any] | None = None) -> tuple[Started, httpx.Client]:
    started = start_server(FAST if env is None else env)
    admin = started.server.client(started.server.admin_key())
    registered = admin.put("/workflows/greet", json=definition or WORKFLOW)
    assert registered.status_code == 201, registered.text
    return started, admin


def test_a_finished_run_is_posted_signed(start_server: Callable[..., Started],
                                         receiver: Receiver) -> None:
    started, admin = setup(start_server)
    client = started.client
    accepted = client.post("/workflows/greet/run", json={
        "inputs": {"name": "Ada"}, "callback_url": f"{receiver.url}/hook?x=1"})
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["id"]

    [hit] = receiver.got()
    secret = admin.get("/callbacks/secret").json()["secret"]
    assert secret.startswith("whsec_")
    signing.verify(secret, hit.headers["flowrun-signature"], hit.body,
                   url=f"{receiver.url}/hook?x=1")
    assert hit.path == "/hook"
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["flowrun-attempt"] == "1"
    assert json.loads(hit.body) == client.get(f"/runs/{run_id}").json()
    assert json.loads(hit.body)["outputs"] == {"greet": {"text": "Hello, Ada!"}}

    shown = callback_state(client, run_id, "delivered")
    assert shown["url"] == f"{receiver.url}/hook?x=1"
    assert shown["delivery_id"] == hit.headers["flowrun-delivery"]
    assert shown["next_attempt_at"] is None
    [attempt] = shown["attempts"]
    assert attempt["attempt"] == 1 and attempt["status_code"] == 200
    assert attempt["error"] is None and attempt["duration_ms"] >= 0

    # run-sync takes one too; another run key sees neither the run nor its callback
    synced = client.post("/workflows/greet/run-sync",
                         json={"callback_url": f"{receiver.url}/sync"})
    assert synced.status_code == 200
    assert receiver.got(2)[1].path == "/sync"
    other = started.server.client(started.server.create_key())
    assert other.get(f"/runs/{run_id}/callbacks").status_code == 404
    plain = client.post("/workflows/greet/run", json={}).json()["id"]
    missing = client.get(f"/runs/{plain}/callbacks")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"

    # the secret is the admin's; rotating it signs with both for a while
    assert client.get("/callbacks/secret").status_code == 403
    assert client.post("/callbacks/secret/rotate").status_code == 403
    rotated = admin.post("/callbacks/secret/rotate").json()
    assert rotated["secret"] != secret and rotated["previous_valid_until"]
    client.post("/workflows/greet/run", json={"callback_url": f"{receiver.url}/rotated"})
    hit = receiver.got(3)[2]
    for key in (secret, rotated["secret"]):
        signing.verify(key, hit.headers["flowrun-signature"], hit.body,
                       url=f"{receiver.url}/rotated")

    # the Python client
    with Client(started.server.url, started.key) as sdk:
        run = sdk.submit("greet", {"name": "Sdk"}, callback_url=f"{receiver.url}/sdk")
        receiver.got(4)
        assert eventually(lambda: sdk.callbacks(run["id"])["state"] == "delivered")
        with pytest.raises(ClientError) as missing_callback:
            sdk.callbacks(plain)
        assert missing_callback.value.status == 404


def test_a_callback_verifies_only_at_the_receiver_it_was_sent_to(
        start_server: Callable[..., Started], receiver: Receiver) -> None:
    """A run key's callback to its own receiver A carries a body it chose: replayed to
    receiver B of the same server, it does not verify there, because B checks it with
    its own URL; B's own callbacks do."""
    started, admin = setup(start_server)
    secret = admin.get("/callbacks/secret").json()["secret"]
    url_a, url_b = f"{receiver.url}/a", f"{receiver.url}/b?tenant=b"
    mine = started.client.post("/workflows/greet/run", json={
        "inputs": {"name": "forged"}, "correlation_id": "order-42",
        "callback_url": url_a}).json()["id"]
    [hit] = receiver.got(1)
    assert "v1=" not in hit.headers["flowrun-signature"]  # no signature bound to no URL
    assert verify_callback(secret, hit.headers, hit.body, url=url_a)["id"] == mine
    with pytest.raises(SignatureError, match="no signature matches the body and URL"):
        verify_callback(secret, hit.headers, hit.body, url=url_b)
    with pytest.raises(SignatureError):  # nor as the older scheme, bound to nothing
        signing.verify(secret, hit.headers["flowrun-signature"], hit.body)

    theirs = started.server.client(started.server.create_key())
    run_b = theirs.post("/workflows/greet/run", json={"callback_url": url_b}).json()["id"]
    hit_b = receiver.got(2)[1]
    assert hit_b.path == "/b"
    assert verify_callback(secret, hit_b.headers, hit_b.body, url=url_b)["id"] == run_b
    with pytest.raises(SignatureError):
        verify_callback(secret, hit_b.headers, hit_b.body, url=url_a)


def test_failed_attempts_are_retried_until_one_succeeds(
        start_server: Callable[..., Started], receiver: Receiver) -> None:
    started, _ = setup(start_server)
    receiver.script = [500, 503]
    run_id = started.client.post("/workflows/greet/run",
                                 json={"callback_url": f"{receiver.url}/hook"}).json()["id"]
    hits = receiver.got(3)
    assert [h.answered for h in hits] == [500, 503, 200]
    assert [h.headers["flowrun-attempt"] for h in hits] == ["1", "2", "3"]
    assert len({h.headers["flowrun-delivery"] for h in hits}) == 1
    assert len({h.body for h in hits}) == 1
    shown = callback_state(started.client, run_id, "delivered")
    assert [(a["attempt"], a["status_code"]) for a in shown["attempts"]] == \
        [(1, 500), (2, 503), (3, 200)]
    assert all(a["error"] is None for a in shown["attempts"])


def test_a_workflow_names_a_default_callback(start_server: Callable[..., Started],
                                             receiver: Receiver) -> None:
    started, admin = setup(start_server, definition={
        **WORKFLOW, "callback_url": f"{receiver.url}/default"})
    assert admin.get("/workflows/greet").json()["definition"]["callback_url"] == \
        f"{receiver.url}/default"
    started.client.post("/workflows/greet/run", json={})
    assert receiver.got()[0].path == "/default"
    started.client.post("/workflows/greet/run", json={"callback_url": f"{receiver.url}/mine"})
    assert receiver.got(2)[1].path == "/mine"  # the request's URL wins


BAD_URLS = ["ftp://127.0.0.1/hook", "http://user:secret@127.0.0.1/hook",
            "127.0.0.1/hook", "http:///hook", "http://127.0.0.1/a b",
            "http://127.0.0.1:port/", "https://127.0.0.1/" + "a" * 2048, 42,
            # hosts that pass a URL parser but no request can be built for
            "http://xn--/", "http://\u0660\u0661/", "http://xn--a/", "https://a..localhost/"]


def test_a_bad_callback_url_is_refused(start_server: Callable[..., Started]) -> None:
    started, admin = setup(start_server, env={})
    for url in BAD_URLS:
        refused = started.client.post("/workflows/greet/run", json={"callback_url": url})
        assert refused.status_code == 400, (url, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in refused.json()["errors"]] == ["callback_url"], url
        bad = admin.put("/workflows/other", json={**WORKFLOW, "callback_url": url})
        assert bad.status_code == 400, (url, bad.text)
        assert "callback_url" in bad.json()["detail"]


def test_a_private_receiver_is_blocked_by_default(start_server: Callable[..., Started],
                                                  receiver: Receiver) -> None:
    started, _ = setup(start_server, env={"FLOWRUN_CALLBACK_BACKOFF_S": "0.1",
                                          "FLOWRUN_CALLBACK_MAX_AGE_S": "0.5"})
    run_id = started.client.post("/workflows/greet/run",
                                 json={"callback_url": f"{receiver.url}/hook"}).json()["id"]
    shown = callback_state(started.client, run_id, "failed")
    assert shown["attempts"] and shown["next_attempt_at"] is None
    for attempt in shown["attempts"]:
        assert attempt["status_code"] is None
        assert attempt["error"].startswith("blocked"), attempt
    assert not receiver.requests


def test_a_pending_callback_survives_a_restart(start_server: Callable[..., Started],
                                               receiver: Receiver) -> None:
    """The receiver fails while the run ends; the server is killed with the callback
    pending and started again; the receiver is fixed: one delivery, by the new process.
    (Fixed only once the new server is up, so a POST the killed process had on the
    wire cannot be the one answered 200.)"""
    started, _ = setup(start_server)
    server, client = started.server, started.client
    receiver.status = 500
    run_id = client.post("/workflows/greet/run",
                         json={"callback_url": f"{receiver.url}/hook"}).json()["id"]
    finished(client, run_id)
    receiver.got(2, answered=500)
    server.kill()
    with receiver.lock:
        before = len(receiver.requests)
    server.start()  # on the same port: the same client reaches it
    receiver.got(before + 1)  # the new process tries it, and fails too
    with receiver.lock:
        receiver.status = 200

    shown = callback_state(client, run_id, "delivered")
    with receiver.lock:
        answered = [h.answered for h in receiver.requests]
    assert answered.count(200) == 1 and answered[-1] == 200  # delivered exactly once
    numbers = [a["attempt"] for a in shown["attempts"]]
    assert numbers == list(range(1, len(numbers) + 1))
    assert [a["status_code"] for a in shown["attempts"]][-1] == 200
    assert receiver.requests[-1].headers["flowrun-attempt"] == str(numbers[-1])


def rewrite(server: Server, sql: str, params: tuple[Any, ...]) -> None:
    """Change the database of a stopped server (SQLite or PostgreSQL)."""
    if server.database is not None:
        with psycopg.connect(server.database) as pg:
            pg.execute(sql.replace("?", "%s"), params)
        return
    with sqlite3.connect(server.db) as conn:
        conn.execute(sql, params)


def test_a_stored_url_no_request_can_be_built_fails_and_holds_back_nothing(
        start_server: Callable[..., Started], receiver: Receiver) -> None:
    """Callbacks stored with URLs no request can be built for (accepted by an older
    version), more of them than attempts may be in flight: each fails after one
    recorded attempt, without a traceback, and another run's callback still arrives."""
    started, _ = setup(start_server)
    server, client = started.server, started.client
    receiver.status = 500
    runs = [client.post("/workflows/greet/run",
                        json={"callback_url": f"{receiver.url}/old"}).json()["id"]
            for _ in range(10)]
    for run_id in runs:
        finished(client, run_id)
    receiver.got(10, answered=500)
    server.kill()
    bad = ["http://xn--/", "http://\u0660\u0661/"]
    for n, run_id in enumerate(runs):
        rewrite(server, "UPDATE runs SET callback_url = ? WHERE id = ?", (bad[n % 2], run_id))
        rewrite(server, "UPDATE callbacks SET next_attempt_at = NULL WHERE run_id = ?",
                (run_id,))
    receiver.status = 200
    server.start()

    good = client.post("/workflows/greet/run",
                       json={"callback_url": f"{receiver.url}/new"}).json()["id"]
    assert receiver.got(1, answered=200)[0].path == "/new"
    callback_state(client, good, "delivered")
    for run_id in runs:
        shown = callback_state(client, run_id, "failed")
        last = shown["attempts"][-1]
        assert last["status_code"] is None
        assert last["error"].startswith("invalid callback_url"), last
        assert shown["next_attempt_at"] is None
    assert "Traceback" not in server.log.read_text()


class Tarpit:
    """A receiver on 127.0.0.1 that accepts connections, reads what comes and never
    answers; counts the connections it accepted and the most open at once."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.lock = threading.Lock()
        self.accepted = 0
        self.open = 0
        self.most_open = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            for key, _ in self.selector.select(timeout=0.05):
                sock = cast(socket.socket, key.fileobj)
                if sock is self.listener:
                    conn, _ = sock.accept()
                    self.selector.register(conn, selectors.EVENT_READ)
                    with self.lock:
                        self.accepted += 1
                        self.open += 1
                        self.most_open = max(self.most_open, self.open)
                elif not sock.recv(65536):  # the sender gave up and closed it
                    self.selector.unregister(sock)
                    sock.close()
                    with self.lock:
                        self.open -= 1

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        for key in list(self.selector.get_map().values()):
            cast(socket.socket, key.fileobj).close()
        self.selector.close()


@pytest.fixture
def tarpit() -> Iterator[Tarpit]:
    found = Tarpit()
    yield found
    found.close()


@dataclass(frozen=True)
class Flooded:
    waited: float  # from the end of key B's run to its callback's arrival
    accepted: int  # connections the tarpit had accepted by then
    most_open: int  # the most it held open at once by then


def flood(started: Started, tarpit: Tarpit, receiver: Receiver, *, busy: int) -> Flooded:
    """Forty runs of the started key A call back to the tarpit; once ``busy`` of their
    attempts hang there, one run of a new key B calls back to ``receiver``."""
    key_a = started.client
    for _ in range(40):
        accepted = key_a.post("/workflows/greet/run", json={"callback_url": f"{tarpit.url}/a"})
        assert accepted.status_code == 202, accepted.text
    eventually(lambda: tarpit.open >= busy, what="key A's attempts in flight")

    key_b = started.server.client(started.server.create_key())
    run_b = key_b.post("/workflows/greet/run",
                       json={"callback_url": f"{receiver.url}/b"}).json()["id"]
    finished(key_b, run_b)
    ended = time.monotonic()
    [hit] = receiver.got(1)
    waited = time.monotonic() - ended
    with tarpit.lock:
        flooded = Flooded(waited, tarpit.accepted, tarpit.most_open)
    assert hit.path == "/b"
    assert callback_state(key_b, run_b, "delivered")["attempts"][0]["status_code"] == 200
    return flooded


def flood_env(timeout_s: float, in_flight: int, per_key: int) -> dict[str, str]:
    return {**FAST, "FLOWRUN_CALLBACK_TIMEOUT_S": str(timeout_s),
            "FLOWRUN_CALLBACK_MAX_IN_FLIGHT": str(in_flight),
            "FLOWRUN_CALLBACK_MAX_IN_FLIGHT_PER_KEY": str(per_key)}


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_a_key_whose_receiver_never_answers_delays_no_other_key(
        start_server: Callable[..., Started], receiver: Receiver, tarpit: Tarpit) -> None:
    """Key A holds at most its share of the attempts in flight, so key B's callback
    arrives at once, not after A's attempts time out."""
    timeout_s = 5.0
    started, _ = setup(start_server, env=flood_env(timeout_s, 8, 3))
    flooded = flood(started, tarpit, receiver, busy=3)
    # well before the first of A's attempts could time out and free a slot
    assert flooded.waited < timeout_s, flooded
    assert flooded.accepted <= 8, flooded
    assert flooded.most_open <= 3, flooded  # A never held more than its share


def test_keys_take_turns_for_the_slots_a_dead_receiver_frees(
        start_server: Callable[..., Started], receiver: Receiver, tarpit: Tarpit) -> None:
    """With a key allowed every slot, key A fills them all; the first one its attempts
    free goes to key B, ahead of A's other thirty-six: B waits one attempt's timeout."""
    timeout_s = 2.0
    started, _ = setup(start_server, env=flood_env(timeout_s, 4, 4))
    flooded = flood(started, tarpit, receiver, busy=4)
    assert flooded.waited < 2 * timeout_s + 1, flooded
    assert flooded.accepted <= 8, flooded  # A's first four, and at most three more
