"""The shared libraries a program loads, read from ELF files: the same as ``ldd`` says."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from flowrun.engine.sandbox import libraries
from flowrun.engine.sandbox.jail import python_executable
from flowrun.engine.sandbox.runtime import runtime_paths

CLEAN = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


def ldd(binaries: list[str], env: dict[str, str] = CLEAN) -> set[str]:
    """What ``ldd`` says the binaries load, by path (not the vdso, which has none)."""
    done = subprocess.run(["ldd", *binaries], capture_output=True, text=True, env=env,
                          check=False, timeout=60, cwd="/")
    found = set()
    for line in done.stdout.splitlines():
        target = line.split("=>", 1)[-1].strip().split(" (", 1)[0].strip()
        if target.startswith("/") and not target.endswith(":"):  # not "file:" headers
            found.add(target)
    return found


@pytest.fixture
def no_ldd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the reader asks ``ldd`` (then it compared ldd with itself)."""
    def refuse(binaries: list[str]) -> list[str]:
        raise AssertionError(f"the reader fell back to ldd for {binaries}")
    monkeypatch.setattr(libraries, "_ldd", refuse)


@pytest.mark.usefixtures("no_ldd")
def test_this_interpreter_and_its_extension_modules_load_what_ldd_says() -> None:
    if shutil.which("ldd") is None:
        pytest.skip("no ldd to compare with")
    folder = next(f for f in runtime_paths(python_executable()) if f.endswith("lib-dynload"))
    binaries = [python_executable(), *sorted(str(f) for f in Path(folder).glob("*.so"))]
    assert len(binaries) > 10
    found = libraries.loaded(binaries)
    assert len(found) == len(set(found))
    assert set(found) == ldd(binaries)


C = "int f{n}(void) {{ return {n}; }}\n"
MAIN = "int main(void) { return 0; }\n"


def gcc(tmp: Path, out: str, *flags: str, main: bool = False) -> str:
    source = tmp / f"{out.replace('/', '_')}.c"
    source.write_text(MAIN if main else C.format(n=len(out)))
    (tmp / out).parent.mkdir(parents=True, exist_ok=True)
    shared = () if main else ("-shared", "-fPIC")
    subprocess.run(["gcc", *shared, "-o", str(tmp / out), str(source), "-Wl,--no-as-needed",
                    *flags], check=True, capture_output=True, timeout=60, cwd=tmp)
    return str(tmp / out)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/prog: runpath $ORIGIN/../lib, needs libouter (runpath $ORIGIN, needs libinner)
    and liblost (no runpath, needs libhidden: not found, a runpath is not inherited);
    bin/prog2: rpath $ORIGIN/../rlib, needs libr1 (no paths, needs libr2: found through
    prog2's rpath, which is inherited); shadow/libinner.so for LD_LIBRARY_PATH."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build programs with")
    tmp = tmp_path_factory.mktemp("elves")
    for lib in ("lib/libinner.so", "lib/libhidden.so", "rlib/libr2.so", "shadow/libinner.so"):
        gcc(tmp, lib)
    gcc(tmp, "lib/libouter.so", "-Llib", "-linner", "-Wl,--enable-new-dtags",
        "-Wl,-rpath,$ORIGIN")
    gcc(tmp, "lib/liblost.so", "-Llib", "-lhidden")
    gcc(tmp, "rlib/libr1.so", "-Lrlib", "-lr2")
    gcc(tmp, "bin/prog", "-Llib", "-louter", "-llost", "-Wl,--enable-new-dtags",
        "-Wl,-rpath,$ORIGIN/../lib", main=True)
    gcc(tmp, "bin/prog2", "-Lrlib", "-lr1", "-Wl,--disable-new-dtags",
        "-Wl,-rpath,$ORIGIN/../rlib", main=True)
    return tmp


@pytest.mark.usefixtures("no_ldd")
def test_origin_runpaths_and_inherited_rpaths_as_the_loader_follows_them(built: Path) -> None:
    prog, prog2 = str(built / "bin/prog"), str(built / "bin/prog2")
    found = libraries.loaded([prog])
    up = f"{built}/bin/.."
    own = {f for f in found if f.startswith(str(built))}
    assert own == {f"{up}/lib/libouter.so", f"{up}/lib/liblost.so",
                   f"{up}/lib/libinner.so"}  # libhidden: "not found"
    assert set(found) == ldd([prog])
    found = libraries.loaded([prog2])
    assert {f for f in found if f.startswith(str(built))} == {
        f"{up}/rlib/libr1.so", f"{up}/rlib/libr2.so"}
    assert set(found) == ldd([prog2])


@pytest.mark.usefixtures("no_ldd")
def test_a_library_path_comes_before_runpaths(built: Path) -> None:
    prog, shadow = str(built / "bin/prog"), str(built / "shadow")
    found = libraries.loaded([prog], library_path=shadow)
    assert f"{shadow}/libinner.so" in found
    assert f"{built}/bin/../lib/libinner.so" not in found
    assert set(found) == ldd([prog], {**CLEAN, "LD_LIBRARY_PATH": shadow})


def test_a_program_the_reader_cannot_follow_alone_goes_to_ldd(
        built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(built, broken, symlinks=True)
    (broken / "lib/libinner.so").write_text("not an ELF file\n")
    asked: list[list[str]] = []

    def fake_ldd(binaries: list[str]) -> list[str]:
        asked.append(binaries)
        return ["/from/ldd"]

    monkeypatch.setattr(libraries, "_ldd", fake_ldd)
    found = libraries.loaded([str(built / "bin/prog2"), str(broken / "bin/prog")])
    assert asked == [[str(broken / "bin/prog")]]
    assert f"{built}/bin/../rlib/libr1.so" in found and "/from/ldd" in found
    assert os.path.isabs(found[0])


def test_the_loaders_cache_comes_after_runpaths_and_hwcaps_entries_go_to_ldd(
        built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.path.exists("/etc/ld.so.cache"):
        assert "/libc.so.6" in libraries._cache()["libc.so.6"][0][0]  # ldconfig -p, read
    prog, hidden = str(built / "bin/prog"), str(built / "lib/libhidden.so")
    cache = {"libhidden.so": [(hidden, False)],
             "libinner.so": [(str(built / "shadow/libinner.so"), False)]}
    monkeypatch.setattr(libraries, "_cache", lambda: cache)
    monkeypatch.setattr(libraries, "_ldd", lambda binaries: ["/from/ldd"])
    found = libraries.loaded([prog])
    assert hidden in found  # liblost has no runpath: the cache has it
    assert f"{built}/bin/../lib/libinner.so" in found  # libouter's runpath comes first
    cache["libhidden.so"].insert(0, ("/elsewhere/glibc-hwcaps/x86-64-v3/libhidden.so", True))
    assert libraries.loaded([prog]) == ["/from/ldd"]
