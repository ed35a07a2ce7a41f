"""The shared libraries a program loads, found as glibc's dynamic loader finds them.

Reading the ELF files (elf.py) and following the loader's search order takes a few
milliseconds where ``ldd`` over the interpreter and its extension modules took
half a second at every server start. For each needed name, as the loader does
(breadth first, a name it has loaded already, by path or soname, not looked up
again): the ``DT_RPATH`` of the object that needs it and of the objects that
loaded that one, up to the program (only when the object has no ``DT_RUNPATH``),
``LD_LIBRARY_PATH``, the object's ``DT_RUNPATH``, the loader's cache
(``ldconfig -p``), then the default folders; ``$ORIGIN`` is the folder of the
object whose path it is in, and a file of another class or machine is passed over.

Where the reader cannot be sure what the loader would do (a file it cannot read
as ELF, ``$LIB`` or ``$PLATFORM`` in a path, a ``glibc-hwcaps`` folder or cache
entry, a loader that is not glibc's) it asks ``ldd`` about that program alone.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
from collections import deque
from dataclasses import dataclass
from typing import NoReturn

from flowrun.engine.sandbox import elf

logger = logging.getLogger(__name__)

_RUN_S = 60.0  # ldd over a few dozen programs, once a server start
_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}  # no LD_*: the loader as the sandbox runs it
_ORIGIN = re.compile(r"\$(ORIGIN\b|\{ORIGIN\})")


class _Unsure(Exception):
    """The reader cannot tell what the loader would open (then ``ldd`` tells)."""


@dataclass(eq=False)
class _Object:
    """One object in a program's link map; ``loader`` is the one that needed it first."""

    path: str
    elf: elf.Elf
    loader: _Object | None = None


def loaded(binaries: list[str], *, library_path: str = "") -> list[str]:
    """The absolute paths of the shared libraries ``binaries`` load, each by the name
    the loader opens it by; ``library_path`` is the ``LD_LIBRARY_PATH`` to search
    (none by default: the sandbox starts its interpreter without one)."""
    try:
        search = _Search(library_path, _cache(), _default_folders())
    except _Unsure as exc:
        logger.info("code sandbox: ldd lists the runtime's libraries (%s)", exc)
        return _ldd(binaries)
    found: list[str] = []
    unsure: list[str] = []
    for binary in binaries:
        try:
            found += search.link_map(binary)
        except _Unsure as exc:
            logger.info("code sandbox: ldd lists the libraries of %s (%s)", binary, exc)
            unsure.append(binary)
    return list(dict.fromkeys([*found, *(_ldd(unsure) if unsure else [])]))


class _Search:
    """The loader's search rules on this host, and the ELF files read so far."""

    def __init__(self, library_path: str, cache: dict[str, list[tuple[str, bool]]],
                 defaults: list[str]) -> None:
        self.library_path = library_path
        self.cache = cache
        self.defaults = defaults
        self.rtld: str | None = None  # the program's loader, in every link map
        self._read: dict[str, elf.Elf | None] = {}
        self._hwcaps: dict[str, bool] = {}

    def link_map(self, binary: str) -> list[str]:
        """The libraries ``binary`` loads, breadth first as the loader maps them."""
        main = _Object(binary, self._elf(binary, None) or _missing(binary))
        loaded = _Loaded()
        loaded.add(main)
        rtld = self._rtld(main)
        if rtld is not None:
            loaded.add(rtld)
        queue = deque([main])
        while queue:
            needer = queue.popleft()
            for name in needer.elf.needed:
                if loaded.has(name):
                    continue
                path = self._find(name, needer, main)
                if path is None:
                    continue  # ldd says "not found": the program would not start
                same = loaded.by_file(path)  # the same file by another name: loaded once
                if same is None:
                    same = _Object(path, self._elf(path, main.elf) or _missing(path), needer)
                    queue.append(same)
                loaded.add(same, name)
        return [o.path for o in loaded.objects[1:]]

    def _rtld(self, main: _Object) -> _Object | None:
        """The loader in every link map: the one the first program read asks for."""
        if self.rtld is None and main.elf.interp:
            if not os.path.basename(main.elf.interp).startswith(("ld-linux", "ld64.so",
                                                                 "ld.so")):
                raise _Unsure(f"{main.elf.interp} is not glibc's loader")
            self.rtld = main.elf.interp
        if self.rtld is None:
            return None
        return _Object(self.rtld, self._elf(self.rtld, None) or _missing(self.rtld))

    def _find(self, name: str, needer: _Object, main: _Object) -> str | None:
        """Where the loader finds ``name`` that ``needer`` needs, or None."""
        if "/" in name:
            return self._usable(os.path.join("/", name), main.elf)
        folders: list[str] = []
        if needer.elf.runpath is None:  # a runpath turns every rpath off
            chain: list[_Object] = []
            at: _Object | None = needer
            while at is not None:  # the objects that loaded it, each its rpath
                chain.append(at)
                at = at.loader
            if main not in chain:
                chain.append(main)
            folders += [f for o in chain for f in _folders(o.elf.rpath, o.path)]
        folders += _folders(self.library_path, main.path)
        folders += _folders(needer.elf.runpath, needer.path)
        for folder in folders:
            found = self._in_folder(folder, name, main.elf)
            if found is not None:
                return found
        if needer.elf.nodeflib:
            return None
        return self._from_cache(name, main.elf) or next(
            (f for d in self.defaults if (f := self._in_folder(d, name, main.elf))), None)

    def _from_cache(self, name: str, main: elf.Elf) -> str | None:
        for path, hwcap in self.cache.get(name, []):
            if hwcap:
                raise _Unsure(f"the loader's cache has a hwcaps entry for {name}")
            found = self._usable(path, main)
            if found is not None:
                return found
        return None

    def _in_folder(self, folder: str, name: str, main: elf.Elf) -> str | None:
        if folder not in self._hwcaps:
            self._hwcaps[folder] = os.path.isdir(os.path.join(folder, "glibc-hwcaps"))
        if self._hwcaps[folder]:
            raise _Unsure(f"{folder} has glibc-hwcaps subfolders")
        return self._usable(os.path.join(folder, name), main)

    def _usable(self, path: str, main: elf.Elf) -> str | None:
        """``path`` when the loader would take it: it exists and fits the program."""
        return path if self._elf(path, main) is not None else None

    def _elf(self, path: str, main: elf.Elf | None) -> elf.Elf | None:
        """The file read once; None when absent or (given ``main``) of another kind."""
        if path not in self._read:
            try:
                self._read[path] = elf.read(path)
            except elf.ElfError as exc:
                raise _Unsure(str(exc)) from None
            except OSError:
                self._read[path] = None  # not there, or not readable: the loader goes on
        found = self._read[path]
        return found if found is None or main is None or found.kind == main.kind else None


class _Loaded:
    """One program's link map, by every name the loader knows an object by: its path,
    its soname and the names it was needed by."""

    def __init__(self) -> None:
        self.objects: list[_Object] = []
        self._names: dict[str, _Object] = {}
        self._files: dict[tuple[int, int], _Object] = {}

    def add(self, obj: _Object, *names: str) -> None:
        if obj not in self.objects:
            self.objects.append(obj)
            self._files[_file_id(obj.path)] = obj
            names = (obj.path, *([obj.elf.soname] if obj.elf.soname else []), *names)
        for name in names:
            self._names.setdefault(name, obj)

    def has(self, name: str) -> bool:
        return name in self._names

    def by_file(self, path: str) -> _Object | None:
        return self._files.get(_file_id(path))


def _missing(path: str) -> NoReturn:
    raise _Unsure(f"cannot read {path}")


def _file_id(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _folders(paths: str | None, origin_of: str) -> list[str]:
    """A search path's folders, ``$ORIGIN`` expanded (relative ones from ``/``, where
    ``ldd`` ran)."""
    if not paths:
        return []
    origin = os.path.dirname(origin_of) or "/"
    folders = []
    for entry in re.split("[:;]", paths):
        entry = _ORIGIN.sub(lambda _: origin, entry)
        if "$" in entry:
            raise _Unsure(f"{entry}: a token other than $ORIGIN")
        folders.append(os.path.join("/", entry.rstrip("/") or "/"))
    return folders


def _cache() -> dict[str, list[tuple[str, bool]]]:
    """The loader's cache: name -> [(path, whether it is a hwcaps entry)], in order."""
    if not os.path.exists("/etc/ld.so.cache"):
        return {}
    ldconfig = shutil.which("ldconfig", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if ldconfig is None:
        raise _Unsure("no ldconfig to read the loader's cache")
    try:
        done = subprocess.run([ldconfig, "-p"], capture_output=True, text=True,
                              timeout=_RUN_S, check=True, cwd="/", env=_ENV)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _Unsure(f"ldconfig -p: {exc}") from None
    cache: dict[str, list[tuple[str, bool]]] = {}
    for line in done.stdout.splitlines():
        # "\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1"
        entry, arrow, path = line.strip().rpartition(" => ")
        name, paren, flags = entry.partition(" (")
        if arrow and paren:
            cache.setdefault(name, []).append((path, "hwcap" in flags))
    return cache


def _default_folders() -> list[str]:
    """The loader's own folders: the multiarch ones (Debian), lib64, lib."""
    multiarch = [f for top in ("/lib", "/usr/lib") for f in sorted(glob.glob(f"{top}/*-linux-*"))]
    return [*multiarch, "/lib64", "/usr/lib64", "/lib", "/usr/lib"]


def _ldd(binaries: list[str]) -> list[str]:
    """The libraries ``binaries`` load, as ``ldd`` lists them."""
    try:
        done = subprocess.run(["ldd", *binaries], capture_output=True, text=True,
                              timeout=_RUN_S, check=False, cwd="/", env=_ENV)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("code sandbox: cannot list the interpreter's libraries (%s); only "
                       "those under /usr are bound", exc)
        return []
    found = []
    for line in done.stdout.splitlines():
        # "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)", "/lib64/ld-... (0x...)"
        target = line.split("=>", 1)[-1].strip().split(" (", 1)[0].strip()
        if os.path.isabs(target) and os.path.exists(target):
            found.append(target)
    return found
