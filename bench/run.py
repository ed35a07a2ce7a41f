"""``make bench``: flowrun's throughput and latency, as ratios to a bare Starlette endpoint.

Everything runs on this machine in one go: a bare Starlette app and a flowrun
server (each a real uvicorn process on loopback) are driven by the same async
HTTP load generator, so the ratios compare like with like.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

HERE = Path(__file__).parent
ROOT = HERE.parent
CONCURRENCY = 32
DURATION_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], port: int, log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{args} did not start")


async def throughput(call: Callable[[httpx.AsyncClient], Awaitable[None]], url: str,
                     concurrency: int = CONCURRENCY) -> float:
    """Completed calls per second with ``concurrency`` callers for DURATION_S."""
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


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="flowrun-bench-"))
    flows = work / "workflows"
    flows.mkdir()
    for f in (HERE / "three.yaml", HERE / "wait.yaml", ROOT / "examples" / "hello.yaml"):
        shutil.copy(f, flows)
    bare_port, flow_port = free_port(), free_port()
    bare = start([sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port",
                  str(bare_port), "--log-level", "warning"], bare_port, work / "bare.log",
                 {"PYTHONPATH": str(ROOT)})
    flow = start([sys.executable, "-m", "flowrun", "serve", "--no-auth", "--port",
                  str(flow_port), "--db", str(work / "bench.db"), "--workflows", str(flows),
                  "--log-level", "warning"], flow_port, work / "flowrun.log",
                 {"FLOWRUN_MAX_CONCURRENT_RUNS": "20000", "FLOWRUN_MAX_QUEUED": "200000"})
    bare_url, flow_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{flow_port}"
    results: list[tuple[str, str, str]] = []
    try:
        async def bare_call(c: httpx.AsyncClient) -> None:
            (await c.post("/echo", json={"inputs": {"name": "x"}})).raise_for_status()

        async def accept(c: httpx.AsyncClient) -> None:
            (await c.post("/workflows/hello/run", json={"inputs": {"name": "x"}})
             ).raise_for_status()

        async def complete(c: httpx.AsyncClient) -> None:
            (await c.post("/workflows/three/run-sync", json={})).raise_for_status()

        base = await throughput(bare_call, bare_url)
        results.append(("bare Starlette JSON endpoint", f"{base:,.0f} req/s", "1.00"))
        accepted = await throughput(accept, flow_url)
        results.append(("accepted runs (202, committed)", f"{accepted:,.0f} runs/s",
                        f"{accepted / base:.2f}"))
        completed = await throughput(complete, flow_url)
        results.append(("completed 3-node runs (run-sync)", f"{completed:,.0f} runs/s",
                        f"{completed / base:.2f}"))
        bare_lat = await latencies(bare_call, bare_url)
        sync_lat = await latencies(complete, flow_url)
        results.append(("latency p50 bare / run-sync", f"{pct(bare_lat, .5):.2f} / "
                        f"{pct(sync_lat, .5):.2f} ms",
                        f"{pct(sync_lat, .5) / pct(bare_lat, .5):.2f}"))
        results.append(("latency p99 bare / run-sync", f"{pct(bare_lat, .99):.2f} / "
                        f"{pct(sync_lat, .99):.2f} ms",
                        f"{pct(sync_lat, .99) / pct(bare_lat, .99):.2f}"))

        async def first_event(c: httpx.AsyncClient) -> None:
            async with c.stream("POST", "/workflows/three/run",
                                json={"stream": True}) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        json.loads(line[5:])
                        break

        sse = await latencies(first_event, flow_url, n=200)
        results.append(("SSE: POST to first event p50 / p99",
                        f"{pct(sse, .5):.2f} / {pct(sse, .99):.2f} ms",
                        f"{pct(sse, .5) / pct(bare_lat, .5):.2f}"))
        before = rss_kb(flow.pid)
        async with httpx.AsyncClient(base_url=flow_url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as c:
            sem = asyncio.Semaphore(64)

            async def one() -> None:
                async with sem:
                    (await c.post("/workflows/wait/run", json={})).raise_for_status()

            await asyncio.gather(*(one() for _ in range(10_000)))
            deadline = time.monotonic() + 120
            while (await c.get("/healthz")).json()["running"] < 10_000:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        after = rss_kb(flow.pid)
        results.append(("memory of 10,000 waiting runs", f"{(after - before) / 1024:,.0f} MiB "
                        f"({(after - before) / 10_000:,.1f} KiB/run)", "-"))
    except Exception:
        print("bench failed; the server's log ends with:", file=sys.stderr)
        print((work / "flowrun.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        for proc in (bare, flow):
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in results)
    print(f"flowrun bench ({CONCURRENCY} concurrent clients, {DURATION_S:g}s per throughput "
          f"figure, {os.cpu_count()} cores)")
    print(f"{'measure'.ljust(width)}  {'value':>28}  ratio to bare")
    for name, value, ratio in results:
        print(f"{name.ljust(width)}  {value:>28}  {ratio}")


if __name__ == "__main__":
    asyncio.run(main())
