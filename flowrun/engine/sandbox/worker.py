"""The code node's worker process: runs one user ``main(**inputs)`` and exits.

Started by the sandbox pool with ``python -I`` and an empty environment (under
bubblewrap unless the operator chose the weaker process mode), it
waits (warm) for one JSON job line on stdin, applies the job's resource limits
to itself, runs the user code with stdout/stderr captured (capped), and writes
one JSON result line on a private copy of its original stdout. File
descriptors 1 and 2 point at /dev/null while user code runs, so nothing the
code prints can corrupt the protocol. Deliberately imports nothing of flowrun (nor
``typing``: the annotations are for mypy only).
"""

from __future__ import annotations

import io
import json
import os
import resource
import sys
import traceback


class CappedText(io.TextIOBase):
    """A text sink that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        room = self.limit - self.size
        if room > 0:
            self.parts.append(text[:room])
            self.size += min(len(text), room)
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def value(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[... {self.dropped} more characters not kept]"
        return text


def drop_privileges() -> None:
    """Give up every Linux capability and the means to regain one.

    The server marks itself non-dumpable; without CAP_SYS_PTRACE even a process of
    the same user (root included) cannot then read its memory or
    /proc/<pid>/environ, where secrets live. The uid stays, so the interpreter's
    own files stay readable wherever Python is installed.
    """
    try:
        import ctypes

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
        libc.capset(ctypes.byref(header), (Data * 2)())
    except (OSError, AttributeError):
        pass  # not Linux: nothing to drop


def become(uid: int) -> None:
    """Switch from namespace root to an unprivileged uid (a root server's sandbox).

    Leaving uid 0 clears every capability; RLIMIT_NPROC then binds, which it does
    not for uid 0.
    """
    try:
        os.setgroups([])
    except OSError:
        pass  # setgroups may be denied in the namespace; the groups are already empty
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def egress(path: str) -> None:
    """Give user code HTTP(S) through the server's proxy (the sandbox has no other network).

    A loopback port inside the sandbox is forwarded to the proxy's unix socket, and
    the usual proxy variables point at it, so urllib and most clients use it.
    """
    import select
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def pump(inside: socket.socket, outside: socket.socket) -> None:
        with inside, outside:
            try:
                while True:
                    ready, _, _ = select.select([inside, outside], [], [])
                    for sock in ready:
                        data = sock.recv(65536)
                        if not data:
                            return
                        (outside if sock is inside else inside).sendall(data)
            except OSError:
                return

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(path)
            except OSError:
                conn.close()
                upstream.close()
                continue
            threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ[name] = url


def limit(kind: int, value: int | None) -> None:
    if value:
        resource.setrlimit(kind, (int(value), int(value)))


def main() -> None:
    os.closerange(3, 65536)  # nothing the sandbox's setup left open reaches user code
    for arg in sys.argv[1:]:
        if arg.startswith("--become="):
            become(int(arg.split("=", 1)[1]))
    for arg in sys.argv[1:]:
        if arg.startswith("--egress="):
            egress(arg.split("=", 1)[1])
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    line = sys.stdin.readline()
    if not line:
        return
    job = json.loads(line)
    limit(resource.RLIMIT_AS, job.get("memory_bytes"))
    limit(resource.RLIMIT_CPU, job.get("cpu_seconds"))
    limit(resource.RLIMIT_FSIZE, job.get("file_bytes"))
    limit(resource.RLIMIT_NPROC, job.get("max_processes"))
    drop_privileges()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    out, err = CappedText(job["output_chars"]), CappedText(job["output_chars"])
    sys.stdout, sys.stderr = out, err
    answer: dict[str, object] = {"ok": False}
    try:
        namespace: dict[str, object] = {"__name__": "__flowrun_code__"}
        exec(compile(job["code"], "<code>", "exec"), namespace)  # running user code is the point
        entry = namespace.get("main")
        if not callable(entry):
            raise TypeError("the code must define a function main(**inputs)")
        result = entry(**job["inputs"])
        if not isinstance(result, dict):
            raise TypeError(f"main must return a dict, not {type(result).__name__}")
        json.dumps(result, allow_nan=False)
        answer = {"ok": True, "result": result}
    except MemoryError:
        answer = {"ok": False, "error": "MemoryError: the code exceeded its memory limit"}
    except BaseException as exc:  # every failure of user code is reported
        frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": "".join(frames[-6:])[-4000:]}
    answer["stdout"] = out.value()
    answer["stderr"] = err.value()
    try:
        text = json.dumps(answer, allow_nan=False)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"ok": False, "error": f"result is not JSON: {exc}",
                           "stdout": answer["stdout"], "stderr": answer["stderr"]})
    protocol.write(text + "\n")
    protocol.flush()


if __name__ == "__main__":
    main()
