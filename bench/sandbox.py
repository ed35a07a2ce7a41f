"""``make bench``, part 2: what the code-node sandbox costs.

The same trivial code node is run through run-sync on three servers, one after
the other on this machine: bubblewrap with a warm pool (the default),
bubblewrap with no pool (every job starts its sandbox), and the weaker process
mode with a warm pool. Each job gets a fresh worker in every mode.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench.run import HERE, free_port, latencies, pct, start, throughput

CONCURRENCY = 8
MODES = [("bwrap, 2 warm workers", {"FLOWRUN_CODE_SANDBOX": "bwrap"}),
         ("bwrap, no warm workers", {"FLOWRUN_CODE_SANDBOX": "bwrap",
                                     "FLOWRUN_CODE_POOL_SIZE": "0"}),
         ("process (weaker), 2 warm", {"FLOWRUN_CODE_SANDBOX": "process"})]


async def measure(url: str) -> tuple[list[float], float]:
    async def call(c: httpx.AsyncClient) -> None:
        resp = await c.post("/workflows/code/run-sync", json={})
        resp.raise_for_status()
        if resp.json()["status"] != "succeeded":
            raise RuntimeError(resp.text)

    samples = await latencies(call, url, n=100)
    return samples, await throughput(call, url, CONCURRENCY)


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="flowrun-bench-code-"))
    flows = work / "workflows"
    flows.mkdir()
    shutil.copy(HERE / "code.yaml", flows)
    rows = []
    try:
        for name, env in MODES:
            port = free_port()
            server: subprocess.Popen[bytes] = start(
                [sys.executable, "-m", "flowrun", "serve", "--no-auth", "--port", str(port),
                 "--db", str(work / f"{port}.db"), "--workflows", str(flows),
                 "--log-level", "warning"], port, work / f"{port}.log", env)
            try:
                samples, rate = await measure(f"http://127.0.0.1:{port}")
                rows.append((name, pct(samples, .5), pct(samples, .99), rate))
            finally:
                server.kill()
                server.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[-1]
    print(f"code-node sandbox ({CONCURRENCY} concurrent clients for throughput, "
          f"{os.cpu_count()} cores)")
    print(f"{'mode':26}  {'p50 ms':>8}  {'p99 ms':>8}  {'runs/s':>8}  p50 vs process")
    for name, p50, p99, rate in rows:
        print(f"{name:26}  {p50:8.1f}  {p99:8.1f}  {rate:8.1f}  {p50 / base[1]:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
