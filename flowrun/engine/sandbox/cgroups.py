"""One memory and pids cgroup per code sandbox, where the host lets the server make them.

rlimits bind a single process: a job may fork up to its process limit and give
each child the full memory limit. A cgroup caps the job as a whole. The cap
covers every process it forks and the files it writes to its tmpfs. That takes
a server running as root, on a host whose cgroup file system it may write:
cgroup v1's memory and pids controllers, or a v2 subtree with both enabled.
Elsewhere ``detect`` returns None, and the rlimits are what holds; the server
says which at start.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

_names = itertools.count()


@dataclass
class SandboxCgroups:
    """Makes, joins and removes the per-sandbox cgroups under the server's own."""

    bases: list[tuple[str, Path]]  # (controller kind, the server's cgroup directory)
    memory_bytes: int
    max_pids: int
    _stale: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        return (f"{self.memory_bytes // (1024 * 1024)} MiB and {self.max_pids} processes "
                f"per sandbox (cgroup)")

    def create(self) -> list[Path]:
        """Fresh cgroups for one sandbox, with its limits set (blocking: call in a thread)."""
        name = f"flowrun-sandbox-{os.getpid()}-{next(_names)}"
        made: list[Path] = []
        try:
            for kind, base in self.bases:
                path = base / name
                path.mkdir()
                made.append(path)
                for file, value, required in self._limits(kind):
                    try:
                        (path / file).write_text(value)
                    except OSError:
                        if required:
                            raise
        except OSError:
            self.remove(made)
            raise
        return made

    def _limits(self, kind: str) -> list[tuple[str, str, bool]]:
        memory, pids = str(self.memory_bytes), str(self.max_pids)
        if kind == "memory":
            return [("memory.limit_in_bytes", memory, True),
                    ("memory.memsw.limit_in_bytes", memory, False)]
        if kind == "pids":
            return [("pids.max", pids, True)]
        return [("memory.max", memory, True), ("memory.swap.max", "0", False),
                ("pids.max", pids, True)]

    @staticmethod
    def attach(paths: list[Path], pid: int) -> None:
        """Move a process (and so everything it forks later) into the cgroups."""
        for path in paths:
            (path / "cgroup.procs").write_text(str(pid))

    def remove(self, paths: list[Path]) -> None:
        """Remove cgroups whose processes are gone; ones still emptying are retried later."""
        pending, self._stale = [*self._stale, *paths], []
        for path in pending:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                self._stale.append(path)


def detect(memory_bytes: int, max_pids: int) -> SandboxCgroups | None:
    """Per-sandbox cgroups if this process may make them, else None (blocking)."""
    if os.geteuid() != 0:
        return None
    try:
        memberships = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    bases = _v2_base(memberships, mounts) or _v1_bases(memberships, mounts)
    if not bases:
        return None
    cgroups = SandboxCgroups(bases, memory_bytes, max_pids)
    # sandboxes of server processes that are gone (killed before they cleaned up)
    cgroups.remove([stale for _, base in bases for stale in base.glob("flowrun-sandbox-*")
                    if not _alive(stale.name.split("-")[2])])
    try:
        cgroups.remove(cgroups.create())
    except OSError as exc:
        logger.debug("no per-sandbox cgroups: %s", exc)
        return None
    return cgroups


def _alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def _mounts(mounts: list[str]) -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) of each cgroup mount."""
    found = []
    for line in mounts:
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) >= 5 and len(rest) >= 3 and rest[0] in {"cgroup", "cgroup2"}:
            found.append((rest[0], fields[3], fields[4], set(rest[2].split(","))))
    return found


def _under(mount_point: str, mount_root: str, path: str) -> Path:
    if mount_root != "/" and path.startswith(mount_root):
        path = path[len(mount_root):]
    return Path(mount_point) / path.lstrip("/")


def _v2_base(memberships: list[str], mounts: list[str]) -> list[tuple[str, Path]]:
    path = next((line[3:] for line in memberships if line.startswith("0::")), None)
    for fstype, root, point, _ in _mounts(mounts):
        if fstype == "cgroup2" and path is not None:
            base = _under(point, root, path)
            try:
                enabled = (base / "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            if {"memory", "pids"} <= set(enabled):
                return [("v2", base)]
    return []


def _v1_bases(memberships: list[str], mounts: list[str]) -> list[tuple[str, Path]]:
    bases = []
    for controller in ("memory", "pids"):
        path = next((parts[2] for parts in (line.split(":", 2) for line in memberships)
                     if len(parts) == 3 and controller in parts[1].split(",")), None)
        mount = next(((root, point) for fstype, root, point, options in _mounts(mounts)
                      if fstype == "cgroup" and controller in options), None)
        if path is not None and mount is not None:
            bases.append((controller, _under(mount[1], mount[0], path)))
    return bases if any(kind == "memory" for kind, _ in bases) else []
