"""Runs code-node jobs in separate, resource-limited worker processes.

The server process never executes user code. Each job gets a fresh worker
(``code_worker.py`` under ``python -I`` with an empty environment, so no
secret of the server's environment is inherited); a few workers are started
ahead of time so a trivial job costs a pipe round trip, not an interpreter
start. A worker is used once and then discarded, so jobs never share state.
Wall-clock time is enforced here (the worker is killed); memory, CPU and file
size are enforced by the worker on itself with ``setrlimit``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from flowrun.errors import NodeFailure

logger = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("code_worker.py")
_WORKER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


@dataclass(frozen=True)
class CodeLimits:
    timeout_s: float = 30.0
    memory_bytes: int = 512 * 1024 * 1024
    cpu_seconds: int = 30
    file_bytes: int = 16 * 1024 * 1024
    output_chars: int = 64 * 1024
    result_bytes: int = 8 * 1024 * 1024


@dataclass
class CodeResult:
    outputs: dict[str, Any]
    stdout: str
    stderr: str


async def _start_worker() -> anyio.abc.Process:
    return await anyio.open_process([sys.executable, "-I", "-B", str(WORKER)],
                                    env=_WORKER_ENV, cwd="/", start_new_session=True)


class CodeRunner:
    """A pool of warm worker processes; ``run`` executes one job in one of them."""

    def __init__(self, size: int, limits: CodeLimits) -> None:
        """Without ``open`` (or with size 0) every job starts its own worker."""
        self.size = size
        self.limits = limits
        self._ready: MemoryObjectReceiveStream[anyio.abc.Process] | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, size: int = 2, limits: CodeLimits | None = None
                   ) -> AsyncIterator[CodeRunner]:
        """A runner that keeps ``size`` workers warm while the block lasts."""
        runner = cls(size, limits or CodeLimits())
        if size <= 0:
            yield runner
            return
        send, ready = anyio.create_memory_object_stream[anyio.abc.Process](size)
        runner._ready = ready
        with send, ready:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runner._keep_warm, send)
                try:
                    yield runner
                finally:
                    runner._ready = None
                    tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                while True:
                    try:
                        await _discard(ready.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                        break

    async def _keep_warm(self, send: MemoryObjectSendStream[anyio.abc.Process]) -> None:
        while True:
            try:
                process = await _start_worker()
            except OSError:
                logger.exception("cannot start a code worker")
                await anyio.sleep(1)
                continue
            try:
                await send.send(process)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _discard(process)
                raise

    async def _take(self) -> anyio.abc.Process:
        if self._ready is not None:
            try:
                return self._ready.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                pass
        return await _start_worker()

    async def run(self, code: str, inputs: dict[str, Any],
                  timeout_s: float | None = None) -> CodeResult:
        """Run ``main(**inputs)`` from ``code``; NodeFailure says clearly what went wrong."""
        limits = self.limits
        wall = timeout_s if timeout_s is not None else limits.timeout_s
        job = json.dumps({"code": code, "inputs": inputs,
                          "memory_bytes": limits.memory_bytes, "cpu_seconds": limits.cpu_seconds,
                          "file_bytes": limits.file_bytes,
                          "output_chars": limits.output_chars}).encode() + b"\n"
        process = await self._take()
        try:
            assert process.stdin is not None and process.stdout is not None
            reader = BufferedByteReceiveStream(process.stdout)
            try:
                with anyio.fail_after(wall):
                    await process.stdin.send(job)
                    line = await reader.receive_until(b"\n", limits.result_bytes)
            except TimeoutError:
                raise NodeFailure(f"code ran longer than {wall:g}s and was killed",
                                  code="code_timeout") from None
            except anyio.DelimiterNotFound:
                raise NodeFailure(f"code result is larger than {limits.result_bytes} bytes",
                                  code="code_error") from None
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
                with anyio.move_on_after(2, shield=True):
                    await process.wait()
                raise NodeFailure(_death(process.returncode), code="code_crashed") from None
        finally:
            with anyio.CancelScope(shield=True):
                await _discard(process)
        answer = json.loads(line)
        if not answer.get("ok"):
            raise NodeFailure(str(answer.get("error")), code="code_error", process_data={
                "stdout": answer.get("stdout", ""), "stderr": answer.get("stderr", ""),
                "traceback": answer.get("traceback")})
        return CodeResult(answer["result"], answer.get("stdout", ""), answer.get("stderr", ""))


def _death(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        sig = signal.Signals(-returncode)
        why = {signal.SIGXCPU: "it used up its CPU time limit",
               signal.SIGKILL: "it was killed (out of memory or over a limit)",
               signal.SIGSEGV: "it crashed (segmentation fault)",
               signal.SIGXFSZ: "it wrote a file over the size limit"}.get(sig, "")
        return f"code process died from {sig.name}" + (f": {why}" if why else "")
    return f"code process exited with status {returncode} before returning a result"


async def _discard(process: anyio.abc.Process) -> None:
    """Kill a worker (whatever it is doing) and reap it."""
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass
    with anyio.move_on_after(5):
        await process.wait()
    await process.aclose()
