"""The sweep of sandboxes a killed server left behind (a bubblewrap setup race), and the
command lines that start sandboxes."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowrun.engine.sandbox.jail import WORKER, BwrapJail, sweep_orphans, userns_lock_command
from tests.eventually import eventually

NAP = "import time; time.sleep(60)"


def state(pid: int) -> str | None:
    """A process's state letter (Z: dead, not yet reaped), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except OSError:
        return None
    return None


def parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def orphan(name: str, *args: str, pidfile: Path) -> int:
    """A process named ``name`` whose parent has exited (so its parent is now pid 1)."""
    command = f"exec -a {shlex.quote(name)} {shlex.quote(sys.executable)} -c " \
              f"{shlex.quote(NAP)} {' '.join(shlex.quote(a) for a in args)}"
    subprocess.run(["bash", "-c", f"( {command} ) & echo $! > {shlex.quote(str(pidfile))}"],
                   check=True, start_new_session=True, timeout=10)
    return int(pidfile.read_text())


@pytest.fixture
def pids() -> Iterator[list[int]]:
    started: list[int] = []
    yield started
    for pid in started:
        subprocess.run(["kill", "-9", str(pid)], check=False, capture_output=True)


def test_only_orphaned_sandboxes_of_this_worker_are_killed(tmp_path: Path,
                                                          pids: list[int]) -> None:
    bwrap = str(tmp_path / "bwrap")  # the name the processes run under
    stale = orphan(bwrap, "--ro-bind", str(WORKER), "/flowrun/code_worker.py",
                   pidfile=tmp_path / "stale")
    other = orphan(bwrap, "--ro-bind", "/elsewhere/worker.py", "/w", pidfile=tmp_path / "o")
    pids.extend([stale, other])
    live = subprocess.Popen(["bash", "-c", f"exec -a {shlex.quote(bwrap)} "
                             f"{shlex.quote(sys.executable)} -c {shlex.quote(NAP)} "
                             f"--ro-bind {shlex.quote(str(WORKER))} /w"])
    pids.append(live.pid)
    try:
        eventually(lambda: parent(stale) == 1 and parent(other) == 1, timeout=10,
                   interval=0.01, what="the orphans adopted by pid 1")
    except AssertionError:
        pytest.skip("orphans here go to a subreaper, not to pid 1")
    assert sweep_orphans(bwrap) == 1
    eventually(lambda: state(stale) in (None, "Z"), timeout=10, interval=0.01,
               what="the stale sandbox killed")
    assert state(other) not in (None, "Z")  # not this worker's
    assert live.poll() is None  # a live server's sandbox has that server as parent
    live.kill()
    live.wait()


def test_both_kinds_of_sandbox_lock_nested_user_namespaces_beyond_seccomp() -> None:
    user = BwrapJail("/x/bwrap", as_root=False, runtime_files=[])
    command = user.user_command([], None)
    assert "--unshare-user" in command and "--disable-userns" in command  # bubblewrap's own
    assert user.nsenter is None
    root = BwrapJail("/x/bwrap", as_root=True, runtime_files=[])
    command = root.root_command([], None, 5, 6)
    # bubblewrap refuses --disable-userns beside --userns-block-fd: the limit is set from here
    assert "--userns-block-fd" in command and "--disable-userns" not in command
    if shutil.which("nsenter") is None:
        assert "seccomp only" in root.describe()
        return
    assert root.nsenter is not None and "no nested user namespaces" in root.describe()
    assert userns_lock_command(root.nsenter, 42) == [
        root.nsenter, "--user=/proc/42/ns/user", "--preserve-credentials", "--",
        "/bin/sh", "-c", "echo 0 > /proc/sys/user/max_user_namespaces"]
