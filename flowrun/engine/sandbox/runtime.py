"""What of the host a code sandbox sees: the system's ``/usr`` and the Python runtime's own files.

The sandbox binds ``/usr``'s own directories read-only (the libraries and tools
the distribution ships), but not ``/usr/local``: that is where a site keeps its
own programs and their configuration (``/usr/local/etc``). Of the interpreter it
binds exactly what it runs on, wherever it lives (``/usr/local``, a pyenv folder,
a prefix of its own): its executable, the directories on its isolated
``sys.path`` (stdlib, ``lib-dynload``, its site-packages) and the shared
libraries that the executable and its extension modules load, read from their
ELF files as the loader finds them (libraries.py). What it finds under ``/usr``
itself is bound already.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from flowrun.engine.sandbox import libraries

_TOPS = ("/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")
_LIST_S = 60.0  # the interpreter's start, once a server start
_SYS_PATH = "import json, sys; print(json.dumps([sys.executable, *sys.path]))"


@functools.lru_cache(maxsize=8)
def runtime_paths(python: str) -> tuple[str, ...]:
    """The files and folders the interpreter ``python`` runs on (blocking: it runs the
    interpreter and reads its ELF files). OSError when the interpreter cannot say."""
    try:
        done = subprocess.run([python, "-I", "-c", _SYS_PATH], capture_output=True,
                              text=True, timeout=_LIST_S, check=True, cwd="/",
                              env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        executable, *path = json.loads(done.stdout)
    except (subprocess.SubprocessError, ValueError) as exc:
        raise OSError(f"{python} cannot list its own files: {exc}") from None
    folders = [p for p in path if os.path.isabs(p) and os.path.exists(p)]
    modules = [str(f) for folder in folders if folder.endswith("lib-dynload")
               for f in sorted(Path(folder).glob("*.so"))]
    return tuple(dict.fromkeys([executable, *folders, *libraries.loaded([executable, *modules])]))


def _system_roots() -> tuple[list[str], list[str]]:
    """(bubblewrap arguments for the system's trees, the real folders they bind)."""
    args, roots = ["--perms", "0755", "--dir", "/usr"], []
    for entry in sorted(os.scandir("/usr"), key=lambda e: e.name):
        if entry.name == "local":
            continue  # the site's own programs and configuration
        if entry.is_symlink():
            args += ["--symlink", os.readlink(entry.path), entry.path]
        else:
            args += ["--ro-bind", entry.path, entry.path]
            roots.append(os.path.realpath(entry.path))
    for top in _TOPS:  # mirrored as the host has them: links into /usr, or folders
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
            roots.append(top)
    if os.path.exists("/etc/ld.so.cache"):
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    return args, roots


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _to_bind(path: str, roots: list[str]) -> str | None:
    """Where ``path`` must be bound for the sandbox to open it by that name (None: the
    system's trees show it already)."""
    system = _under(path, ["/usr", *_TOPS]) and not _under(path, ["/usr/local"])
    real = os.path.realpath(path)
    if system:  # the name is inside a system tree: what it leads to must be shown
        return None if _under(real, roots) else real
    return path  # its own name, its content (bubblewrap follows links)


def mounts(runtime: Iterable[str]) -> list[str]:
    """bubblewrap arguments that show the system's ``/usr`` (not ``/usr/local``) and the
    ``runtime`` paths that lie outside it, each read-only at its own path."""
    args, roots = _system_roots()
    made: set[str] = set()
    bound: list[str] = []
    for path in sorted({t for t in (_to_bind(p, roots) for p in runtime) if t}):
        if _under(path, bound):
            continue  # inside a folder bound already
        # bubblewrap would make the missing parents (e.g. /root) private to root
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in made and str(parent) != "/usr":
                args += ["--perms", "0755", "--dir", str(parent)]
                made.add(str(parent))
        args += ["--ro-bind", path, path]
        bound.append(path)
    return args
