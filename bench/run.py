"""``make bench``: flowrun's throughput and latency, beside a bare Starlette endpoint.

Everything runs on this machine in one go. A bare Starlette app and a flowrun
server (each a real uvicorn process on loopback, same defaults) are driven by
wrk, which is far faster than either. wrk's own ceiling, measured on a static
response, is printed first, so a reader can see the generator was not the
limit. Latencies at one connection come from wrk too; SSE first-event latency
from a minimal asyncio client (a raw request on a fresh connection, read up to
the first ``data:`` line; httpx alone costs ~2 ms a request here), measured
against a bare SSE endpoint first so its own floor shows.
Then ``bench/cluster.py`` runs the same burst on a fresh SQLite server and on 1, 2
and 3 processes sharing one PostgreSQL database, and says what bounds each figure.
The table and its notes are printed and written to ``bench/results.md``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path

import httpx

from bench import wrk

HERE = Path(__file__).parent
ROOT = HERE.parent
CONCURRENCY = 64
DURATION_S = 8.0
BURST = 3000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# How the bench runs a flowrun server: no auth (loopback), and limits far above what it
# sends, so the server's speed is measured rather than its refusals.
FLOWRUN_ENV = {"FLOWRUN_MAX_CONCURRENT_RUNS": "20000", "FLOWRUN_MAX_QUEUED": "200000",
               "FLOWRUN_MAX_CONNECTIONS": "20000"}


def flowrun_args(port: int, db: str, flows: Path) -> list[str]:
    return [sys.executable, "-m", "flowrun", "serve", "--no-auth", "--port", str(port),
            "--db", db, "--workflows", str(flows), "--log-level", "warning"]


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{proc.args!r} did not start (exit code {proc.wait()})")


def start(args: list[str], port: int, log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    proc = spawn(args, log, env)
    wait_listening(proc, port)
    return proc


async def throughput(call: Callable[[httpx.AsyncClient], Awaitable[None]], url: str,
                     concurrency: int = 8) -> float:
    """Completed calls per second with ``concurrency`` Python callers for DURATION_S (for
    work far slower than the generator, such as code-node runs)."""
    done = 0
    deadline = time.monotonic() + DURATION_S
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await call(client)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


async def latencies(call: Callable[[httpx.AsyncClient], Awaitable[None]], url: str,
                    n: int = 300) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await call(client)
        samples = []
        for _ in range(n):
            began = time.perf_counter()
            await call(client)
            samples.append(time.perf_counter() - began)
        return samples


async def first_event_s(port: int, path: str, body: dict[str, object]) -> float:
    """Seconds from sending a POST to reading the first ``data:`` line of its SSE answer,
    on a fresh connection. The client does nothing else, so the server is measured."""
    payload = json.dumps(body).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
               "Connection: close\r\n\r\n").encode() + payload
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # (TCP_NODELAY)
    try:
        began = time.perf_counter()
        writer.write(request)
        seen = b""
        while b"\ndata:" not in seen:  # after the headers, the first event's data line
            chunk = await asyncio.wait_for(reader.read(65536), timeout=60)
            if not chunk:
                raise RuntimeError(f"{path}: the stream ended before an event: {seen[:200]!r}")
            seen += chunk
        elapsed = time.perf_counter() - began
        if not seen.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{path}: {seen[:200]!r}")
        return elapsed
    finally:
        writer.close()


async def first_events(port: int, path: str, body: dict[str, object], n: int = 300
                       ) -> list[float]:
    await first_event_s(port, path, body)  # warm-up
    return [await first_event_s(port, path, body) for _ in range(n)]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def settle(url: str, timeout: float = 300) -> None:
    """Wait until the server has no queued or running run (the last test's backlog)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        if not health["queued"] and not health["running"]:
            return
        time.sleep(0.2)
    raise RuntimeError("the server never caught up with its backlog")


def burst(url: str, db: Path) -> tuple[float, float]:
    """Accept BURST runs of the 3-node chain as fast as wrk sends them; (seconds from the
    first accept to the last finish, completed runs/s), read from the run records."""
    since = time.time()
    wrk.run(f"{url}/workflows/three/run", method="POST", body={}, connections=CONCURRENCY,
            duration_s=120, limit_per_thread=BURST)
    settle(url)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        first, last, count = conn.execute(
            "SELECT MIN(created_at), MAX(finished_at), COUNT(*) FROM runs "
            "WHERE workflow = 'three' AND status = 'succeeded' AND created_at >= ?",
            (since,)).fetchone()
    span = last - first
    return span, count / span


def commit() -> str:
    """The checkout's commit, marked when files differ from it (bench/results.md aside)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "-"
    changed = [line for line in git("status", "--porcelain").splitlines()
               if not line.endswith("bench/results.md")]
    return f"{sha} + uncommitted changes" if changed else sha


def versions() -> str:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    wrk_version = subprocess.run([wrk.ensure_wrk(), "--version"], capture_output=True,
                                 text=True, check=False).stdout.split()[:2]
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{dt.date.today().isoformat()}, commit {commit()}, {cpu}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"starlette {version('starlette')}, uvicorn {version('uvicorn')}, "
            f"{' '.join(wrk_version)}")


async def main() -> None:
    try:
        wrk.ensure_wrk()
    except wrk.WrkMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    work = Path(tempfile.mkdtemp(prefix="flowrun-bench-"))
    flows = work / "workflows"
    flows.mkdir()
    for f in (HERE / "three.yaml", HERE / "wait.yaml", ROOT / "examples" / "hello.yaml"):
        shutil.copy(f, flows)
    bare_port, flow_port = free_port(), free_port()
    db = work / "bench.db"
    bare = start([sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port",
                  str(bare_port), "--log-level", "warning"], bare_port, work / "bare.log",
                 {"PYTHONPATH": str(ROOT)})
    flow = start(flowrun_args(flow_port, str(db), flows), flow_port, work / "flowrun.log",
                 FLOWRUN_ENV)
    bare_url, flow_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{flow_port}"
    rows: list[tuple[str, str, str]] = []
    try:
        ceiling = wrk.run(f"{bare_url}/static", duration_s=DURATION_S)
        rows.append(("ceiling: GET of a static text, bare (wrk is not the limit)",
                     f"{ceiling.requests_per_s:,.0f} req/s", "-"))
        base = wrk.run(f"{bare_url}/echo", method="POST", body={"inputs": {"name": "x"}},
                       duration_s=DURATION_S)
        rows.append(("bare Starlette POST JSON → 202", base.row(), "1.00"))
        accept = wrk.run(f"{flow_url}/workflows/hello/run", method="POST",
                         body={"inputs": {"name": "x"}}, duration_s=DURATION_S)
        rows.append(("accept: POST /workflows/hello/run → 202", accept.row(),
                     f"{accept.requests_per_s / base.requests_per_s:.3f}"))
        settle(flow_url)
        sync64 = wrk.run(f"{flow_url}/workflows/three/run-sync", method="POST", body={},
                         duration_s=DURATION_S)
        rows.append(("run-sync 3-node chain, 64 connections", sync64.row(),
                     f"{sync64.requests_per_s / base.requests_per_s:.3f}"))
        settle(flow_url)
        sync1 = wrk.run(f"{flow_url}/workflows/three/run-sync", method="POST", body={},
                        connections=1, duration_s=DURATION_S)
        rows.append(("run-sync 3-node chain, 1 connection", sync1.row(), "-"))
        settle(flow_url)
        span, rate = burst(flow_url, db)
        rows.append((f"burst on SQLite, the server above: {BURST} runs accepted, last "
                     "finished after",
                     f"{span:.1f} s = {rate:,.0f} completed runs/s", "-"))
        for name, result in (("accept", accept), ("run-sync 64", sync64),
                             ("run-sync 1", sync1)):
            if result.errors:
                rows.append((f"  ({name}: {result.errors} errors or non-2xx)", "", ""))
        settle(flow_url)
        floor = await first_events(bare_port, "/events", {"stream": True})
        rows.append(("SSE: POST to first event, bare SSE endpoint (the client's floor)",
                     f"p50 {pct(floor, .5):.2f} ms, p99 {pct(floor, .99):.2f} ms", "-"))
        sse = await first_events(flow_port, "/workflows/three/run", {"stream": True})
        rows.append(("SSE: POST to first event (1 client, a fresh connection each)",
                     f"p50 {pct(sse, .5):.2f} ms, p99 {pct(sse, .99):.2f} ms", "-"))
        settle(flow_url)
        before = rss_kb(flow.pid)
        wrk.run(f"{flow_url}/workflows/wait/run", method="POST", body={},
                connections=CONCURRENCY, duration_s=120, limit_per_thread=10_000)
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient(base_url=flow_url, timeout=10) as client:
            while (await client.get("/healthz")).json()["running"] < 10_000:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        after = rss_kb(flow.pid)
        rows.append(("RSS of the server with 10,000 waiting runs",
                     f"{after / 1024:,.0f} MiB (+{(after - before) / 1024:,.0f} MiB, "
                     f"{(after - before) / 10_000:,.1f} KiB/run)", "-"))
    except Exception:
        print("bench failed; the server's log ends with:", file=sys.stderr)
        print((work / "flowrun.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        for proc in (bare, flow):
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    # The same burst on a fresh SQLite server and on 1, 2 and 3 processes sharing one
    # PostgreSQL database, each with what bounds it (bench/cluster.py imports this module).
    from bench import cluster

    more, notes = cluster.bursts()
    report(rows + more, notes)


def report(rows: list[tuple[str, str, str]], notes: list[str]) -> None:
    header = (f"wrk -t1 -c{CONCURRENCY} -d{DURATION_S:g}s unless noted; flowrun and the bare "
              f"app each one uvicorn process with its defaults; {versions()}")
    width = max(len(r[0]) for r in rows)
    print(header)
    print(f"{'measure'.ljust(width)}  {'value':>44}  ratio to bare")
    for name, value, ratio in rows:
        print(f"{name.ljust(width)}  {value:>44}  {ratio}")
    for note in notes:
        print(f"- {note}")
    lines = ["# `make bench` results", "", header, "",
             "| measure | value | ratio to bare |", "|---|---|---|",
             *(f"| {n} | {v} | {r} |" for n, v, r in rows), "",
             *(f"- {note}" for note in notes), ""]
    (HERE / "results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
