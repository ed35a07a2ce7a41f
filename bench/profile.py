"""``make profile``: where a flowrun server's time goes during the burst of ``make bench``.

``make bench`` says the burst is bound by one core: the flowrun process's Python
threads share one GIL and keep it busy. This says what that core does. It starts
a fresh ``flowrun serve`` (as the bench does), samples it with py-spy at 250 Hz
(``--nonblocking``, so the sampler does not pause it; idle samples included)
while wrk sends the burst, and splits the samples of each thread by what its
stack is doing. A sample counts once, for the first kind on this list its stack
matches, so the shares add up to 100%. anyio's and asyncio's own bookkeeping
(cancel scopes, task handles, events: the leaf frame is inside them) is counted
across every kind and shown apart.

The result is printed and written to ``bench/profile.md``.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import wrk
from bench.run import (
    BURST,
    CONCURRENCY,
    FLOWRUN_ENV,
    HERE,
    ROOT,
    flowrun_args,
    free_port,
    settle,
    start,
    versions,
)

RATE_HZ = 250
# (kind, any of these in a frame of the stack), first match wins: the request's own
# work, then the run's parts from the most to the least specific, then the loop.
LOOP_KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("accept: the submit (validate, idempotency, the accept's write and wait)",
     ("RunService.submit ",)),
    ("HTTP: uvicorn, Starlette, auth, parsing the body, the response",
     ("httptools_impl.py", "starlette/", "flowrun/api/", "flowrun/features/keys.py")),
    ("run: node params, rendered by the Jinja sandbox", ("flowrun/language/expressions.py",)),
    ("run: node events and rows (payloads, queued writes)", ("RunRecorder.",)),
    ("run: the final write and its wait", ("Runner.finish ",)),
    ("run: the executor, nodes and the run's task",
     ("flowrun/engine/", "flowrun/runs/runner.py", "flowrun/runs/dispatch.py")),
    ("writer task: batching, results, publishing events", ("flowrun/store/writer.py",)),
    ("loop waiting for work (select)", ("select (selectors.py",)),
]
BOOKKEEPING = ("anyio/", "asyncio/tasks.py", "asyncio/locks.py", "asyncio/events.py",
               "asyncio/base_events.py", "asyncio/futures.py")


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or \
        shutil.which("py-spy")
    if found is None:
        raise SystemExit("profile: py-spy is missing (make profile installs it: "
                         "pip install -e '.[bench]')")
    return found


def thread_of(stack: list[str]) -> str:
    """Which of the server's threads a sample is from (and for a database thread,
    whether it was at work or waiting for its next call), by its stack."""
    joined = ";".join(stack)
    if "flowrun/store/thread.py" in joined:
        if "flowrun/store/writer.py" in joined:
            return "writer"
        return "reader" if "flowrun/store/sqlite.py" in joined else "waiting"
    if "run_forever" in joined:
        return "loop"
    return "other"


def kind_of(stack: list[str]) -> str:
    for kind, marks in LOOP_KINDS:
        if any(mark in frame for frame in stack for mark in marks):
            return kind
    return "other (the loop's own callbacks, logging, metrics)"


def analyse(raw: Path) -> tuple[dict[str, int], collections.Counter[str], int]:
    """Samples per thread; the loop's samples per kind; the loop's bookkeeping samples."""
    threads: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    bookkeeping = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        stack = stack_text.split(";")
        count = int(count_text)
        thread = thread_of(stack)
        threads[thread] += count
        if thread != "loop":
            continue
        kinds[kind_of(stack)] += count
        if any(mark in stack[-1] for mark in BOOKKEEPING):
            bookkeeping += count
    return dict(threads), kinds, bookkeeping


def main() -> None:
    try:
        wrk.ensure_wrk()
    except wrk.WrkMissing as exc:
        raise SystemExit(f"profile: {exc}") from None
    spy = py_spy()
    work = Path(tempfile.mkdtemp(prefix="flowrun-profile-"))
    flows = work / "workflows"
    flows.mkdir()
    shutil.copy(HERE / "three.yaml", flows)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start(flowrun_args(port, str(work / "p.db"), flows), port, work / "f.log",
                   FLOWRUN_ENV)
    raw = work / "samples.txt"
    try:
        wrk.run(f"{url}/workflows/three/run", method="POST", body={}, duration_s=2,
                limit_per_thread=300)  # warm-up: imports, caches, the first runs
        settle(url)
        sampler = subprocess.Popen(
            [spy, "record", "--pid", str(server.pid), "--rate", str(RATE_HZ), "--format",
             "raw", "--output", str(raw), "--duration", "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy attached
        began = time.monotonic()
        wrk.run(f"{url}/workflows/three/run", method="POST", body={},
                connections=CONCURRENCY, duration_s=120, limit_per_thread=BURST)
        settle(url)
        span = time.monotonic() - began
        sampler.send_signal(2)  # SIGINT: py-spy writes what it has and exits
        _, err = sampler.communicate(timeout=60)
        if not raw.exists():
            raise SystemExit(f"profile: py-spy wrote nothing: {err.decode()[-2000:]}")
    finally:
        server.kill()
        server.wait()
    threads, kinds, bookkeeping = analyse(raw)
    shutil.rmtree(work, ignore_errors=True)
    report(threads, kinds, bookkeeping, span)


def report(threads: dict[str, int], kinds: collections.Counter[str], bookkeeping: int,
           span: float) -> None:
    loop = threads.get("loop", 0) or 1
    waiting = kinds.get("loop waiting for work (select)", 0)
    ticks = span * RATE_HZ  # (a thread busy all the time has a sample at every tick)
    lines = [
        "# `make profile`: where the time goes in the burst",
        "",
        f"{BURST:,} runs of the 3-node chain (bench/three.yaml) sent by wrk at {CONCURRENCY} "
        f"connections to one `flowrun serve`, sampled by py-spy at {RATE_HZ} Hz over the "
        f"{span:.1f} s until the last run finished (the sampling slows it down); "
        f"{versions()}.",
        "",
        f"Samples at work: the event loop's thread {loop - waiting:,} (about "
        f"{min((loop - waiting) / ticks, 1):.0%} of the time), the writer's thread "
        f"{threads.get('writer', 0):,} (about {threads.get('writer', 0) / ticks:.0%}), the "
        f"reader's {threads.get('reader', 0):,}. The loop's samples, by what its stack was "
        "doing:",
        "",
        "| the event loop's thread | share of its samples |",
        "|---|---|",
        *(f"| {kind} | {count * 100 / loop:.1f}% |" for kind, count in kinds.most_common()),
        "",
        f"Of all those, {bookkeeping * 100 / loop:.1f}% had their leaf frame in anyio's or "
        "asyncio's own code (cancel scopes, task handles, events, the loop's callbacks), "
        "whatever the kind.",
        "",
        "Python threads share one GIL, so the loop and the database threads together "
        "cannot use more than one core: the burst is bound by the sum of these.",
        "",
    ]
    print("\n".join(lines))
    (HERE / "profile.md").write_text("\n".join(lines))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
