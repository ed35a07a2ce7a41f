"""The dynamic section of an ELF file: what the loader reads before it maps the file.

Only the program headers are read (section headers may be stripped): ``PT_INTERP``
names the program's loader, ``PT_DYNAMIC`` holds the needed libraries and search
paths as offsets into the dynamic string table, whose address ``PT_LOAD`` maps
back to a place in the file. ELF32 and ELF64, either byte order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 1, 5, 10, 14, 15, 29
_DT_FLAGS_1, _DF_1_NODEFLIB = 0x6FFFFFFB, 0x800
_PN_XNUM = 0xFFFF  # the real count is in a section header: too rare to follow
# class -> (where e_phoff, e_phentsize and e_phnum are; a program header, where its type,
# offset, virtual address and size in the file are; a dynamic entry)
_LAYOUT = {1: ("28xI10xHH", "IIIIIIII", (0, 1, 2, 4), "iI"),
           2: ("32xQ14xHH", "IIQQQQQQ", (0, 2, 3, 5), "qQ")}


class ElfError(ValueError):
    """The file is not an ELF file this reader can follow (the caller asks ``ldd``)."""


@dataclass(frozen=True)
class Elf:
    """What one ELF file tells the loader; ``kind`` (class, byte order, machine) must
    match between a program and the libraries it may load."""

    kind: tuple[int, int, int]
    interp: str | None = None
    soname: str | None = None
    needed: list[str] = field(default_factory=list)
    rpath: str | None = None  # ignored by the loader when there is a runpath
    runpath: str | None = None
    nodeflib: bool = False  # neither the loader's cache nor the default folders


def read(path: str) -> Elf:
    """The dynamic section of ``path``: OSError when it cannot be opened, ElfError
    when it is not an ELF file this reader follows."""
    with open(path, "rb") as file:
        try:
            return _read(file)
        except ElfError:
            raise
        except (struct.error, ValueError) as exc:  # a bad UTF-8 name, a string without end
            raise ElfError(f"{path}: malformed ELF file ({exc})") from None


def _read(file: BinaryIO) -> Elf:
    ident = file.read(20)
    if ident[:4] != b"\x7fELF" or ident[4] not in _LAYOUT or ident[5] not in (1, 2):
        raise ElfError(f"{file.name}: not an ELF file")
    order = "<" if ident[5] == 1 else ">"
    header, phdr, fields, dyn = _LAYOUT[ident[4]]
    (machine,) = struct.unpack_from(order + "H", ident, 18)
    file.seek(0)
    phoff, phentsize, phnum = struct.unpack_from(order + header, file.read(64))
    if phnum == _PN_XNUM:
        raise ElfError(f"{file.name}: too many program headers")
    segments = [_pick(struct.unpack_from(order + phdr, _at(file, phoff + i * phentsize,
                                                            phentsize)), fields)
                for i in range(phnum)]
    kind = (ident[4], ident[5], machine)
    interp = next((_at(file, off, size).split(b"\0")[0].decode()
                   for type_, off, _, size in segments if type_ == _PT_INTERP), None)
    dynamic = next(((off, size) for type_, off, _, size in segments if type_ == _PT_DYNAMIC),
                   None)
    if dynamic is None:  # linked statically
        return Elf(kind, interp)
    entries = list(struct.iter_unpack(order + dyn, _at(file, *dynamic)))
    return _dynamic(file, kind, interp, entries, [s for s in segments if s[0] == _PT_LOAD])


def _pick(values: tuple[int, ...], fields: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """A program header's (type, offset in the file, virtual address, size in the file)."""
    return values[fields[0]], values[fields[1]], values[fields[2]], values[fields[3]]


def _dynamic(file: BinaryIO, kind: tuple[int, int, int], interp: str | None,
             entries: list[tuple[int, int]], loads: list[tuple[int, int, int, int]]) -> Elf:
    tags: dict[int, list[int]] = {}
    for tag, value in entries:
        if tag == 0:  # DT_NULL ends the table
            break
        tags.setdefault(tag, []).append(value)
    address, size = tags.get(_DT_STRTAB, [0])[0], tags.get(_DT_STRSZ, [0])[0]
    # the table is given by its address once loaded: find the segment that maps it
    offset = next((off + address - vaddr for _, off, vaddr, filesz in loads
                   if vaddr <= address < vaddr + filesz), None)
    if offset is None:
        raise ElfError(f"{file.name}: the dynamic string table lies outside the file")
    strings = _at(file, offset, size)

    def text(at: int) -> str:
        if at >= len(strings):
            raise ElfError(f"{file.name}: a dynamic string lies outside its table")
        return strings[at:strings.index(b"\0", at)].decode()

    def first(tag: int) -> str | None:
        return text(tags[tag][0]) if tag in tags else None

    return Elf(kind, interp, soname=first(_DT_SONAME),
               needed=[text(at) for at in tags.get(_DT_NEEDED, [])],
               rpath=first(_DT_RPATH), runpath=first(_DT_RUNPATH),
               nodeflib=bool(tags.get(_DT_FLAGS_1, [0])[0] & _DF_1_NODEFLIB))


def _at(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    data = file.read(size)
    if len(data) != size:
        raise ElfError(f"{file.name}: truncated ELF file")
    return data
