"""The code node: results, isolation, and every hostile case fails only that node."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowrun.engine.executor import Executor, RunOutcome
from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes import registry
from flowrun.engine.sandbox import cgroups
from flowrun.engine.sandbox import jail as jails
from flowrun.engine.sandbox.runner import CodeLimits, CodeRunner, choose_jail
from flowrun.engine.sandbox.runner import _discard as discard
from flowrun.engine.sandbox.runtime import runtime_paths
from flowrun.language.definitions import parse_definition
from flowrun.records import RunStatus
from tests.eventually import NotYet, eventually_async


@asynccontextmanager
async def code_services(mode: str = "bwrap") -> AsyncIterator[NodeServices]:
    """A warm pool for one test (its task group must live inside the test's task)."""
    limits = CodeLimits(timeout_s=3, memory_bytes=256 * 1024 * 1024, cpu_seconds=10,
                        output_chars=10_000, max_processes=16)
    jail, description = await choose_jail(mode)
    assert jail is not None, description
    async with CodeRunner.open(2, limits, jail=jail) as runner:
        yield NodeServices(code=runner)


async def run_code(services: NodeServices, code: str, inputs: dict[str, Any] | None = None,
                   **options: Any) -> RunOutcome:
    definition = parse_definition({"name": "c", "inputs": {"x": {"type": "integer",
                                                                 "default": 2}},
                                   "nodes": [{"id": "py", "type": "code", "code": code,
                                              "inputs": inputs or {}, **options}]},
                                  registry=registry)
    return await Executor(definition, run_id="r", inputs={"x": 2},
                          services=services).execute()


async def test_main_gets_inputs_and_returns_outputs() -> None:
    async with code_services() as services:
        out = await run_code(services, "def main(a, b):\n    print('adding')\n"
                                       "    return {'sum': a + b}",
                             {"a": "{{ inputs.x }}", "b": 40})
        assert out.status is RunStatus.SUCCEEDED
        assert out.outputs == {"py": {"sum": 42}}
        assert out.nodes[0].process_data["stdout"] == "adding\n"


async def test_warm_workers_wait_ready_in_the_pool() -> None:
    async with code_services() as services:
        ready = services.code._ready
        assert ready is not None
        await eventually_async(  # started ahead of any job
            lambda: ready.statistics().current_buffer_used >= 2, timeout=10, interval=0.01,
            what="two warm workers ready")
        out = await run_code(services, "def main():\n    return {'ok': True}")
        assert out.outputs == {"py": {"ok": True}}


async def test_infinite_loop_is_killed_at_the_wall_clock_limit() -> None:
    async with code_services() as services:
        started = time.perf_counter()
        out = await run_code(services, "def main():\n    while True:\n        pass")
        assert out.status is RunStatus.FAILED and out.error is not None
        assert out.error["code"] == "code_timeout"
        assert time.perf_counter() - started < 5


async def test_node_timeout_option_kills_sooner() -> None:
    async with code_services() as services:
        started = time.perf_counter()
        out = await run_code(services, "import time\ndef main():\n    time.sleep(60)", timeout=0.5)
        assert out.error is not None
        assert out.error["code"] == "node_timeout" and time.perf_counter() - started < 2


async def test_huge_allocation_hits_the_memory_limit() -> None:
    async with code_services() as services:
        out = await run_code(services, "def main():\n    x = bytearray(2 * 1024**3)\n    return {}")
        assert out.status is RunStatus.FAILED and out.error is not None
        assert out.error["code"] == "code_error" and "MemoryError" in out.error["message"]


async def test_megabytes_of_prints_are_capped() -> None:
    async with code_services() as services:
        out = await run_code(services, "def main():\n    for _ in range(1000):\n"
                                       "        print('x' * 10_000)\n    return {'done': 1}")
        assert out.status is RunStatus.SUCCEEDED
        stdout = out.nodes[0].process_data["stdout"]
        assert len(stdout) < 11_000 and stdout.endswith("more characters not kept]")


async def test_the_environment_holds_no_secret() -> None:
    async with code_services() as services:
        os.environ["FLOWRUN_TEST_SECRET"] = "hunter2"
        try:
            out = await run_code(services, "import os\ndef main():\n"
                                           "    try:\n"
                                           "        parent = open(f'/proc/{os.getppid()}/environ')"
                                           ".read()\n"
                                           "    except OSError as exc:\n"
                                           "        parent = type(exc).__name__\n"
                                           "    return {'env': dict(os.environ), 'parent': parent}")
        finally:
            del os.environ["FLOWRUN_TEST_SECRET"]
        assert out.status is RunStatus.SUCCEEDED and out.outputs is not None
        seen = out.outputs["py"]
        assert "hunter2" not in str(seen)
        assert set(seen["env"]) <= {"PATH", "LANG", "PYTHONIOENCODING", "LC_CTYPE", "PWD"}


@pytest.mark.parametrize(("code", "code_name", "text"), [
    ("def main():\n    return {'s': {1, 2}}", "code_error", "not JSON serializable"),
    ("def main():\n    return 5", "code_error", "main must return a dict"),
    # Plain code is compiled when the definition loads; rendered code only when it runs.
    ("def main({{ '' }}:\n    pass", "code_error", "SyntaxError"),
    ("x = 1", "code_error", "must define a function main"),
    ("def main():\n    raise ValueError('nope')", "code_error", "ValueError: nope"),
    ("import os\ndef main():\n    os._exit(3)", "code_crashed", "exited with status 3"),
    ("import os, signal\ndef main():\n    os.kill(os.getpid(), signal.SIGSEGV)", "code_crashed",
     "SIGSEGV"),
    ("def main():\n    return {'nan': float('nan')}", "code_error", "JSON"),
])
async def test_bad_code_fails_only_the_node(code: str, code_name: str,
                                            text: str) -> None:
    async with code_services() as services:
        out = await run_code(services, code)
        assert out.status is RunStatus.FAILED and out.error is not None
        assert out.error["code"] == code_name and text in out.error["message"], out.error


async def test_protocol_survives_writes_to_the_raw_stdout() -> None:
    async with code_services() as services:
        out = await run_code(services, "import os\ndef main():\n    os.write(1, b'garbage\\n')\n"
                                       "    return {'fine': True}")
        assert out.outputs == {"py": {"fine": True}}


SPY = """
import os, socket
def main(port):
    seen = {"uid": os.getuid(), "pids": sorted(p for p in os.listdir('/proc') if p.isdigit()),
            "root": sorted(os.listdir('/'))}
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1)
        seen["net"] = "open"
    except OSError as exc:
        seen["net"] = type(exc).__name__
    try:
        open("/etc/passwd").read()
        seen["passwd"] = "read"
    except OSError as exc:
        seen["passwd"] = type(exc).__name__
    forked = 0
    try:
        for _ in range(64):
            if os.fork() == 0:
                import time
                time.sleep(5)
                os._exit(0)
            forked += 1
    except OSError:
        pass
    seen["forked"] = forked
    return seen
"""


async def test_bwrap_worker_sees_only_itself() -> None:
    # "No network" is shown with a listener of the test's own: the sandbox's loopback is
    # its own, so it is refused there, and nothing reaches this one.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        async with code_services() as services:
            out = await run_code(services, SPY, {"port": listener.getsockname()[1]})
        with pytest.raises(BlockingIOError):
            listener.accept()
        assert out.status is RunStatus.SUCCEEDED and out.outputs is not None, out.error
        seen = out.outputs["py"]
        assert seen["uid"] == jails.SANDBOX_UID
        assert seen["pids"] == ["1", "2"]  # bubblewrap's init and the worker: no one else
        assert "home" not in seen["root"] and "var" not in seen["root"]
        assert "work" not in seen["root"] and "etc" in seen["root"]  # only ld.so.cache
        assert seen["passwd"] in {"FileNotFoundError", "PermissionError"}
        assert seen["net"] == "ConnectionRefusedError"
        assert 0 < seen["forked"] < 16  # RLIMIT_NPROC holds (16 here)


RUNTIME = """
import os, sqlite3, ssl, ctypes
def main():
    local = sorted(os.listdir('/usr/local')) if os.path.isdir('/usr/local') else None
    return {"local": local, "etc": os.path.exists('/usr/local/etc'),
            "ssl": ssl.OPENSSL_VERSION, "sh": os.path.exists('/bin/sh')}
"""


async def test_the_sandbox_shows_the_runtime_but_not_usr_local() -> None:
    async with code_services() as services:
        out = await run_code(services, RUNTIME)
    assert out.outputs is not None, out.error
    seen = out.outputs["py"]
    assert seen["etc"] is False  # the site's configuration
    # of /usr/local, only what this interpreter runs on, if it lives there
    needed = sorted({Path(f).relative_to("/usr/local").parts[0]
                     for f in runtime_paths(jails.python_executable())
                     if f.startswith("/usr/local/")})
    assert seen["local"] == (needed or None)
    assert seen["ssl"] and seen["sh"]  # extension modules load; the system's tools stay


async def test_process_mode_is_the_weaker_opt_in() -> None:
    jail, description = await choose_jail("process")
    assert jail is not None and "WEAKER" in description
    async with code_services("process") as services:
        out = await run_code(services, "import os\ndef main():\n    return {'uid': os.getuid()}")
        assert out.outputs == {"py": {"uid": os.getuid()}}


async def test_no_working_sandbox_turns_code_nodes_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flowrun.engine.sandbox.runner.find_bwrap", lambda: "/nonexistent/bwrap")
    jail, reason = await choose_jail("bwrap")
    assert jail is None and "does not work" in reason
    async with CodeRunner.open(2, CodeLimits(), unavailable=reason) as runner:
        out = await run_code(NodeServices(code=runner), "def main():\n    return {}")
    assert out.status is RunStatus.FAILED and out.error is not None
    assert out.error["code"] == "code_sandbox_unavailable"
    assert "FLOWRUN_CODE_SANDBOX=process" in out.error["message"]
    monkeypatch.setattr("flowrun.engine.sandbox.runner.find_bwrap", lambda: None)
    assert (await choose_jail("bwrap"))[0] is None


HOG = """
import os, time
def main(children, megabytes):
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            try:
                block = bytearray(megabytes * 1024 * 1024)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(2)
            finally:
                os._exit(0)
        pids.append(pid)
    return {"killed": sum(1 for pid in pids if os.waitpid(pid, 0)[1] == 9)}
"""


async def test_memory_is_capped_for_the_whole_job_not_per_process() -> None:
    limits = CodeLimits(timeout_s=20, memory_bytes=256 * 1024 * 1024)
    if cgroups.detect(limits.memory_bytes, 34) is None:
        pytest.skip("per-sandbox cgroups need a root server and a writable cgroup tree")
    jail, description = await choose_jail("bwrap", limits=limits)
    assert jail is not None and "256 MiB and 34 processes per sandbox (cgroup)" in description
    async with CodeRunner.open(1, limits, jail=jail) as runner:
        out = await run_code(NodeServices(code=runner), HOG, {"children": 6, "megabytes": 150})
    assert out.status is RunStatus.SUCCEEDED and out.outputs is not None, out.error
    assert out.outputs["py"]["killed"] >= 3  # 900 MB asked, 256 MiB allowed in all


async def test_code_cannot_make_namespaces_or_mounts_but_has_a_private_tmp() -> None:
    code = ("import os, subprocess\ndef main():\n"
            "    open('/tmp/scratch', 'w').write('ok')\n"
            "    nested = subprocess.run(['unshare', '-Urm', 'true'], capture_output=True)\n"
            "    mount = subprocess.run(['mount', '-t', 'tmpfs', 'none', '/tmp'],"
            " capture_output=True)\n"
            "    return {'tmp': open('/tmp/scratch').read(), 'nested': nested.returncode,"
            " 'mount': mount.returncode, 'fds': sorted(os.listdir('/proc/self/fd'))}")
    async with code_services() as services:
        out = await run_code(services, code)
    assert out.outputs is not None, out.error
    seen = out.outputs["py"]
    assert seen["tmp"] == "ok" and seen["nested"] != 0 and seen["mount"] != 0
    assert len(seen["fds"]) <= 5  # stdin, stdout, stderr, the result pipe, listdir's own


NESTED = """
import ctypes
def main():
    libc = ctypes.CDLL(None, use_errno=True)
    made = libc.unshare(0x10000000)  # CLONE_NEWUSER
    return {"made": made, "errno": ctypes.get_errno(),
            "limit": open('/proc/sys/user/max_user_namespaces').read().strip()}
"""


async def test_a_root_sandbox_refuses_nested_user_namespaces_without_seccomp_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox of a server that is not root is locked by bubblewrap itself")
    async with code_services() as services:  # with the filter: it answers first
        out = await run_code(services, NESTED)
    assert out.outputs is not None, out.error
    assert out.outputs["py"] == {"made": -1, "errno": errno.EPERM, "limit": "0"}
    monkeypatch.setattr("flowrun.engine.sandbox.seccomp.program", lambda machine=None: None)
    async with code_services() as services:  # without it: the namespace's own limit
        out = await run_code(services, NESTED)
    assert out.outputs is not None, out.error
    assert out.outputs["py"] == {"made": -1, "errno": errno.ENOSPC, "limit": "0"}


def bwrap_pids() -> set[int]:
    """The sandboxes this test process started (not those of servers that other tests,
    maybe in other workers, run meanwhile)."""
    found, parents = set(), {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(status.split("PPid:", 1)[1].split()[0])
            if b"bwrap" in cmd.split(b"\\0")[0] and b"code_worker.py" in cmd:
                found.add(int(entry))

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return {pid for pid in found if ours(pid)}


async def test_cancelled_sandbox_starts_leave_no_process_behind() -> None:
    jail, description = await choose_jail("bwrap")
    assert jail is not None, description
    before = bwrap_pids()
    for attempt in range(30):
        with anyio.move_on_after(attempt * 0.002):
            process = await jail.spawn()
            with anyio.CancelScope(shield=True):  # a start that completed: as the pool does
                await discard(process, jail)

    def none_left() -> bool | NotYet:
        left = bwrap_pids() - before
        return not left or NotYet(left)

    await eventually_async(none_left, timeout=10, interval=0.05,
                           what="no sandbox process left behind")


REAP = """
import anyio
from flowrun.engine.sandbox.runner import CodeLimits, CodeRunner, choose_jail

async def main():
    jail, description = await choose_jail("bwrap")
    assert jail is not None, description
    async with CodeRunner.open(2, CodeLimits(timeout_s=0.3), jail=jail) as runner:
        for _ in range(10):
            try:
                await runner.run("import time\\ndef main():\\n    time.sleep(5)", {})
            except Exception:
                pass
            with anyio.move_on_after(0.05):
                await runner.run("import time\\ndef main():\\n    time.sleep(5)", {})

anyio.run(main)
"""


def test_killed_and_finished_workers_are_reaped_once() -> None:
    # asyncio's child watcher logs "Unknown child process" when something else reaped
    # a worker first (Popen.kill() polls, and a poll reaps): it runs in its own process
    # so its stderr can be read whole.
    done = subprocess.run([sys.executable, "-c", REAP], capture_output=True, text=True,
                          timeout=120, check=False, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert "Unknown child process" not in done.stderr, done.stderr
