"""What one client can hold of a real server: slow or absent bodies, connections,
pipelined requests it never reads the answers to."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.e2e.server import Server

POST_HEAD = ("POST /workflows/hello/run HTTP/1.1\r\nHost: x\r\n{auth}"
             "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")


def post_head(key: str | None) -> bytes:
    """Complete headers of a run request that announce a 1 MB body (none of it sent)."""
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return POST_HEAD.format(auth=auth).encode()


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took; fails if it
    is still open after ``within`` seconds."""
    began = time.monotonic()
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {within} s, got {data[:200]!r}") from None
    except ConnectionResetError:
        pass
    return data, time.monotonic() - began


@contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def connect(server: Server, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                    source_address=(source, 0))


def test_a_body_that_never_comes_is_cut_off_and_the_others_are_served_again(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory({"FLOWRUN_MAX_CONNECTIONS": "12",
                             "FLOWRUN_MAX_CONNECTIONS_PER_CLIENT": "12",
                             "FLOWRUN_BODY_TIMEOUT_S": "1.5"})
    key = server.create_key()
    server.start()
    with sockets() as held:
        for _ in range(11):  # every connection but the victim's, each silent after its head
            sock = connect(server)
            sock.sendall(post_head(key))
            held.append(sock)
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 503
        for sock in held:  # the header timeout (10 s) does not apply: they sent theirs
            answer, took = read_until_closed(sock, within=10)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"request_timeout" in answer and b"connection: close" in answer.lower()
        assert took < 8
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        ok = server.client(key).post("/workflows/hello/run", json={"inputs": {"name": "x"}})
        assert ok.status_code == 202


def test_a_dripping_body_does_not_extend_its_time(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory({"FLOWRUN_BODY_TIMEOUT_S": "2"})
    key = server.create_key()
    server.start()
    with sockets() as held:
        sock = connect(server)
        held.append(sock)
        began = time.monotonic()
        sock.sendall(post_head(key))
        answer = b""
        sock.settimeout(0.3)
        while time.monotonic() - began < 12:  # a byte every 0.3 s, reading as it goes
            try:
                sock.sendall(b" ")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            answer += chunk
            if not chunk:
                break
        took = time.monotonic() - began
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 1.5 < took < 8, took  # about the body timeout, however many bytes came


def test_an_answer_sent_before_the_body_closes_the_connection(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory({"FLOWRUN_BODY_TIMEOUT_S": "30"})
    key = server.create_key()
    server.start()
    with sockets() as held:
        sock = connect(server)  # no key: refused at once, its body never read
        held.append(sock)
        sock.sendall(post_head(None) + b"{")
        answer, took = read_until_closed(sock, within=10)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b"connection: close" in answer.lower()
        assert took < 8  # closed after the answer, not kept waiting for the rest (30 s)
    # a request whose body was read is answered and kept alive as before
    client = server.client(key)
    accepted = client.post("/workflows/hello/run", json={"inputs": {"name": "x"}})
    assert accepted.status_code == 202
    assert "close" not in accepted.headers.get("connection", "")


def test_a_client_past_its_connection_cap_is_refused_and_another_is_not(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory({"FLOWRUN_MAX_CONNECTIONS_PER_CLIENT": "5",
                             "FLOWRUN_KEEP_ALIVE_S": "60"})
    server.start()
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with sockets() as held:
        for _ in range(5):  # five kept-alive connections of 127.0.0.1, each answered
            sock = connect(server)
            held.append(sock)
            sock.sendall(health)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sixth = connect(server)
        held.append(sixth)
        answer, took = read_until_closed(sixth, within=5)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in answer
        assert took < 3
        other = httpx.HTTPTransport(local_address="127.0.0.2")  # another client
        with httpx.Client(transport=other, base_url=server.url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
        held.pop(0).close()  # a connection closed gives its place back
        deadline = time.monotonic() + 10
        while True:
            again = connect(server)
            held.append(again)
            again.sendall(health)
            if again.recv(65536).startswith(b"HTTP/1.1 200 "):
                break
            assert time.monotonic() < deadline, "the closed connection's place never came back"
            time.sleep(0.05)


def memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) for line in status
            if line.startswith(("VmRSS:", "VmHWM:"))}


def test_pipelined_requests_never_read_keep_the_server_small(
        server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    server.start()
    assert server.proc is not None
    for _ in range(20):  # warm: what serving itself takes is not counted
        httpx.get(f"{server.url}/healthz", timeout=10)
    before = memory_kib(server.proc.pid)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    burst = request * (65536 // len(request))
    sent = 0
    with sockets() as held:
        while sent < 10 * 1024 * 1024:  # 10 MB of requests, never reading an answer
            sock = connect(server)
            held.append(sock)
            sock.settimeout(5)
            try:
                while sent < 10 * 1024 * 1024:
                    sock.sendall(burst)
                    sent += len(burst)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # closed (or no longer read): the rest goes on another connection
        after = memory_kib(server.proc.pid)
        grown = max(after["VmHWM"] - before["VmHWM"], after["VmRSS"] - before["VmRSS"])
        assert grown < 100 * 1024, f"the server grew by {grown} KiB for {sent} bytes"
        began = time.monotonic()
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert time.monotonic() - began < 2
