"""What of the host the sandbox shows: the system's /usr without /usr/local, and the runtime."""

from __future__ import annotations

import os

from flowrun.engine.sandbox import runtime
from flowrun.engine.sandbox.jail import python_executable


def binds(args: list[str]) -> dict[str, str]:
    """Each ``--ro-bind`` of bubblewrap arguments: destination -> source."""
    return {args[i + 2]: args[i + 1] for i, a in enumerate(args) if a == "--ro-bind"}


def folders(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--dir"]


def test_usr_is_bound_but_not_usr_local() -> None:
    args = runtime.mounts([])
    bound = binds(args)
    assert "/usr" not in bound and "/usr/local" not in bound
    assert not any(d.startswith("/usr/local") for d in [*bound, *folders(args)])
    assert "/usr/lib" in bound or os.path.islink("/usr/lib")  # the system's libraries stay


def test_a_runtime_in_usr_local_brings_only_its_own_files() -> None:
    files = ["/usr/local/bin/python3.11", "/usr/local/lib/python3.11",
             "/usr/local/lib/python3.11/lib-dynload", "/usr/local/lib/libpython3.11.so.1.0",
             "/usr/lib/x86_64-linux-gnu/libc.so.6"]
    args = runtime.mounts(files)
    local = {d for d in binds(args) if d.startswith("/usr/local")}
    assert local == {"/usr/local/bin/python3.11", "/usr/local/lib/python3.11",
                     "/usr/local/lib/libpython3.11.so.1.0"}  # lib-dynload is inside
    assert [d for d in folders(args) if d.startswith("/usr/local")] == [
        "/usr/local", "/usr/local/bin", "/usr/local/lib"]


def test_a_runtime_elsewhere_is_bound_with_parents_others_may_enter() -> None:
    args = runtime.mounts(["/opt/py/lib/python3.12", "/opt/py/bin/python3.12"])
    assert {d for d in binds(args) if d.startswith("/opt")} == {
        "/opt/py/lib/python3.12", "/opt/py/bin/python3.12"}
    for parent in ("/opt", "/opt/py", "/opt/py/bin", "/opt/py/lib"):
        at = args.index(parent)
        assert args[at - 3:at] == ["--perms", "0755", "--dir"], parent


def test_this_interpreters_files_are_its_stdlib_extensions_and_libraries() -> None:
    files = runtime.runtime_paths(python_executable())
    assert files[0] == python_executable()
    assert os.path.dirname(os.__file__) in files
    assert any(f.endswith("lib-dynload") for f in files)
    assert any("libc.so" in os.path.basename(f) for f in files)
    assert all(os.path.isabs(f) and os.path.exists(f) for f in files)
