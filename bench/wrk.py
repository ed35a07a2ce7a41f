"""Drive a server with wrk: a load generator far faster than the servers it measures.

``run`` writes a small Lua script (method, body, headers, and an optional
request count after which wrk stops) and parses wrk's summary: requests/s,
latency percentiles, and non-2xx answers. wrk itself always waits out its
duration, even once every thread has stopped at its count; so with a count,
each thread notes in a file when it is done, and ``run`` then interrupts wrk
(SIGINT: wrk prints its summary, timed to that moment).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


class WrkMissing(RuntimeError):
    """Raised when wrk is not installed and cannot be installed here."""


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx answers and socket errors

    def row(self) -> str:
        return f"{self.requests_per_s:,.0f} req/s, p50 {self.p50_ms:.2f} ms, " \
               f"p99 {self.p99_ms:.2f} ms"


def ensure_wrk() -> str:
    """The wrk binary; installs Debian's package if it is missing and apt is usable."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False,
                       capture_output=True, timeout=600)
        found = shutil.which("wrk")
        if found:
            return found
    raise WrkMissing("wrk is not installed and could not be installed (apt-get install wrk); "
                     "the bench does not fall back to a slower load generator")


_SCRIPT = """
wrk.method = {method}
wrk.body = {body}
{headers}
local limit = {limit}
local done = 0
function response(status, headers, body)
  done = done + 1
  if limit > 0 and done == limit then
    local marker = io.open({marker}, "a")
    marker:write("done\\n")
    marker:close()
    wrk.thread:stop()
  end
end
"""


def run(url: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
        connections: int = 64, threads: int = 1, duration_s: float = 8,
        limit_per_thread: int = 0) -> WrkResult:
    """Load ``url`` with wrk and return its figures."""
    binary = ensure_wrk()
    all_headers = dict(headers or {})
    if body is not None:
        all_headers.setdefault("Content-Type", "application/json")
    work = Path(tempfile.mkdtemp(prefix="flowrun-wrk-"))
    path, marker = work / "script.lua", work / "done"
    path.write_text(_SCRIPT.format(
        method=json.dumps(method), body=json.dumps(json.dumps(body)) if body is not None
        else "nil", limit=limit_per_thread, marker=json.dumps(str(marker)),
        headers="\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
                          for k, v in all_headers.items())))
    try:
        with subprocess.Popen(
                [binary, "-t", str(threads), "-c", str(connections), "-d", f"{duration_s:g}s",
                 "--latency", "-s", str(path), url],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            if limit_per_thread > 0:
                deadline = time.monotonic() + duration_s
                while proc.poll() is None and time.monotonic() < deadline:
                    if marker.exists() and \
                            len(marker.read_text().splitlines()) >= threads:
                        proc.send_signal(signal.SIGINT)  # every thread is done
                        break
                    time.sleep(0.005)
            try:
                out, err = proc.communicate(timeout=duration_s + 120)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            if proc.returncode != 0:
                raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return parse(out)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(output: str) -> WrkResult:
    """Figures from wrk's summary (with ``--latency``)."""
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                          r"timeout (\d+)", output):
        errors += sum(int(g) for g in match.groups())
    return WrkResult(rate, p50, p99, total, errors)
