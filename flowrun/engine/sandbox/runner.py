"""Runs code-node jobs in separate, confined, resource-limited worker processes.

The server process never executes user code. Each job gets a fresh worker
(``code_worker.py`` under ``python -I`` with an empty environment) started by
a ``Jail`` (bubblewrap namespaces, see ``jail.py``); a few workers are started
ahead of time so a trivial job costs a pipe round trip, not a sandbox start.
A worker is used for one job and then discarded: no worker ever serves two
jobs, so no two keys (or runs) ever share one. Wall-clock time is enforced here
(the worker is killed, and its namespace with it); memory, CPU, file size and
process count are enforced by the worker on itself with ``setrlimit``; at most
``max_workers`` jobs run at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from flowrun.engine.sandbox.cgroups import detect as cgroups_detect
from flowrun.engine.sandbox.jail import (
    BwrapJail,
    Jail,
    ProcessJail,
    find_bwrap,
    kill_group,
    python_executable,
    sweep_orphans,
)
from flowrun.engine.sandbox.runtime import runtime_paths
from flowrun.errors import NodeFailure

if TYPE_CHECKING:  # egress -> netguard -> node_services -> here
    from flowrun.engine.net.egress import EgressProxy

logger = logging.getLogger(__name__)

SANDBOX_MODES = ("bwrap", "process")


@dataclass(frozen=True)
class CodeLimits:
    timeout_s: float = 30.0
    memory_bytes: int = 512 * 1024 * 1024
    cpu_seconds: int = 30
    file_bytes: int = 16 * 1024 * 1024
    output_chars: int = 64 * 1024
    result_bytes: int = 8 * 1024 * 1024
    max_processes: int = 32  # RLIMIT_NPROC inside one sandbox (threads count too)
    max_workers: int = 16  # code jobs running at once, server-wide


@dataclass
class CodeResult:
    outputs: dict[str, Any]
    stdout: str
    stderr: str


async def choose_jail(mode: str, tmp_mb: int = 64, egress: EgressProxy | None = None,
                      limits: CodeLimits | None = None) -> tuple[Jail | None, str]:
    """The jail for a sandbox mode, probed with a real job: (jail or None, description).

    ``bwrap`` that does not work on this host gives no jail (code nodes then fail
    with the reason); ``process`` is the weaker mode, chosen only explicitly.
    """
    if mode == "process":
        jail: Jail = ProcessJail()
        return jail, jail.describe()
    if mode != "bwrap":
        raise ValueError(f"code sandbox must be one of {', '.join(SANDBOX_MODES)}, not {mode!r}")
    bwrap = find_bwrap()
    if bwrap is None:
        return None, "no bubblewrap binary (install the bubblewrap package)"
    orphans = await anyio.to_thread.run_sync(sweep_orphans, bwrap)
    if orphans:
        logger.warning("code sandbox: killed %d sandboxes left by a server that was killed "
                       "while starting them", orphans)
    limits = limits or CodeLimits()
    # the worker itself and bubblewrap's init count too
    cgroups = await anyio.to_thread.run_sync(cgroups_detect, limits.memory_bytes,
                                             limits.max_processes + 2)
    try:
        files = await anyio.to_thread.run_sync(runtime_paths, python_executable())
    except OSError as exc:
        return None, f"cannot tell which files the Python runtime needs: {exc}"
    jail = BwrapJail(bwrap, tmp_bytes=tmp_mb * 1024 * 1024, egress=egress, cgroups=cgroups,
                     runtime_files=files)
    problem = await probe(jail)
    if problem is not None:
        return None, f"bubblewrap does not work on this host: {problem}"
    return jail, jail.describe()


async def probe(jail: Jail) -> str | None:
    """Run one trivial job in a fresh worker; None when it works, else what went wrong."""
    runner = CodeRunner(0, CodeLimits(timeout_s=20), jail=jail)
    try:
        result = await runner.run("def main():\n    return {'ok': 1}", {})
    except NodeFailure as exc:
        return exc.message
    except OSError as exc:
        return str(exc)
    return None if result.outputs == {"ok": 1} else f"unexpected answer {result.outputs}"


class CodeRunner:
    """A pool of warm worker processes; ``run`` executes one job in one of them."""

    def __init__(self, size: int, limits: CodeLimits, *, jail: Jail | None = None,
                 unavailable: str | None = None) -> None:
        """Without ``open`` (or with size 0) every job starts its own worker.

        No ``jail`` means the process mode; ``unavailable`` (a reason) turns code
        nodes off instead.
        """
        self.size = size
        self.limits = limits
        self.jail: Jail = jail or ProcessJail()
        self.unavailable = unavailable
        self._slots = anyio.CapacityLimiter(max(1, limits.max_workers))
        self._ready: MemoryObjectReceiveStream[anyio.abc.Process] | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, size: int = 2, limits: CodeLimits | None = None, *,
                   jail: Jail | None = None, unavailable: str | None = None
                   ) -> AsyncIterator[CodeRunner]:
        """A runner that keeps ``size`` workers warm while the block lasts."""
        runner = cls(size, limits or CodeLimits(), jail=jail, unavailable=unavailable)
        if size <= 0 or unavailable is not None:
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
                        await _discard(ready.receive_nowait(), runner.jail)
                    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                        break

    async def _keep_warm(self, send: MemoryObjectSendStream[anyio.abc.Process]) -> None:
        while True:
            try:
                process = await self.jail.spawn()
            except OSError:
                logger.exception("cannot start a code worker")
                await anyio.sleep(1)
                continue
            try:
                await send.send(process)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _discard(process, self.jail)
                raise

    async def _take(self) -> anyio.abc.Process:
        if self._ready is not None:
            try:
                return self._ready.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                pass
        return await self.jail.spawn()

    async def run(self, code: str, inputs: dict[str, Any],
                  timeout_s: float | None = None) -> CodeResult:
        """Run ``main(**inputs)`` from ``code``; NodeFailure says clearly what went wrong."""
        if self.unavailable is not None:
            raise NodeFailure(
                f"code nodes are off: {self.unavailable}. Make a sandbox work here "
                f"(bubblewrap with user namespaces), or accept the weaker process "
                f"isolation with FLOWRUN_CODE_SANDBOX=process", code="code_sandbox_unavailable")
        async with self._slots:
            return await self._run(code, inputs, timeout_s)

    async def _run(self, code: str, inputs: dict[str, Any],
                   timeout_s: float | None) -> CodeResult:
        limits = self.limits
        wall = timeout_s if timeout_s is not None else limits.timeout_s
        job = json.dumps({"code": code, "inputs": inputs,
                          "memory_bytes": limits.memory_bytes, "cpu_seconds": limits.cpu_seconds,
                          "file_bytes": limits.file_bytes, "max_processes": limits.max_processes,
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
                raise NodeFailure(self.jail.death(process.returncode),
                                  code="code_crashed") from None
        finally:
            with anyio.CancelScope(shield=True):
                await _discard(process, self.jail)
        answer = _answer(line)
        if not answer.get("ok"):
            raise NodeFailure(str(answer.get("error")), code="code_error", process_data={
                "stdout": answer.get("stdout", ""), "stderr": answer.get("stderr", ""),
                "traceback": answer.get("traceback")})
        return CodeResult(answer["result"], answer.get("stdout", ""), answer.get("stderr", ""))


def _answer(line: bytes) -> dict[str, Any]:
    """The worker's result line, checked: user code can write that pipe too."""
    try:
        answer = json.loads(line, parse_constant=_refuse_constant)
        if not isinstance(answer, dict):
            raise ValueError("not an object")
        if answer.get("ok") and not isinstance(answer.get("result"), dict):
            raise ValueError("the result is not a dict")
        for name in ("stdout", "stderr"):
            if not isinstance(answer.get(name, ""), str):
                raise ValueError(f"{name} is not text")
    except (ValueError, RecursionError) as exc:
        raise NodeFailure(f"the code's result is malformed: {exc}",
                          code="code_error") from None
    return answer


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _discard(process: anyio.abc.Process, jail: Jail) -> None:
    """Kill a worker (whatever it is doing) with its process group, reap it, and let the
    jail clean up after it."""
    kill_group(process)
    with anyio.move_on_after(5):
        await process.wait()
    await process.aclose()
    await jail.release(process)
