"""The ELF reader: the dynamic section of 32- and 64-bit files in either byte order."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from flowrun.engine.sandbox import elf

BASE = 0x10000  # where the one PT_LOAD maps the file


def build(bits: int, order: str, *, strtab_at: int | None = None) -> bytes:
    """A minimal shared object: PT_INTERP, one PT_LOAD over the whole file, PT_DYNAMIC."""
    header_size, phentsize = (64, 56) if bits == 64 else (52, 32)
    phoff = header_size
    interp_at = phoff + 3 * phentsize
    interp = b"/lib/ld-linux-test.so.1\0"
    strings = b"\0libc.so.6\0libm.so.6\0$ORIGIN/../lib\0/opt/r\0libself.so.1\0"
    strings_at = interp_at + len(interp)
    dynamic_at = strings_at + len(strings)
    at = strings.index
    tags = [(1, at(b"libc.so.6")), (1, at(b"libm.so.6")), (29, at(b"$ORIGIN")),
            (15, at(b"/opt/r")), (14, at(b"libself")), (0x6FFFFFFB, 0x801),
            (5, BASE + strings_at if strtab_at is None else strtab_at), (10, len(strings)),
            (0, 0)]
    entry = "qQ" if bits == 64 else "iI"
    dynamic = b"".join(struct.pack(order + entry, tag, value) for tag, value in tags)
    size = dynamic_at + len(dynamic)
    ident = b"\x7fELF" + bytes([bits // 32, 1 if order == "<" else 2, 1]) + bytes(9)
    layout, machine = ("16sHHIQQQIHHHHHH", 62) if bits == 64 else ("16sHHIIIIIHHHHHH", 20)
    header = struct.pack(order + layout, ident, 3, machine, 1, 0, phoff, 0, 0, header_size,
                         phentsize, 3, 64, 0, 0)
    phdrs = [segment(bits, order, 3, interp_at, len(interp)), segment(bits, order, 1, 0, size),
             segment(bits, order, 2, dynamic_at, len(dynamic))]
    return header + b"".join(phdrs) + interp + strings + dynamic


def segment(bits: int, order: str, kind: int, offset: int, size: int) -> bytes:
    """A program header mapping ``size`` bytes at ``offset`` to BASE + offset."""
    if bits == 64:  # type, flags, offset, vaddr, paddr, filesz, memsz, align
        return struct.pack(order + "IIQQQQQQ", kind, 4, offset, BASE + offset, BASE + offset,
                           size, size, 8)
    return struct.pack(order + "IIIIIIII", kind, offset, BASE + offset, BASE + offset, size,
                       size, 4, 4)  # type, offset, vaddr, paddr, filesz, memsz, flags, align


@pytest.mark.parametrize(("bits", "order"), [(64, "<"), (64, ">"), (32, "<"), (32, ">")])
def test_the_dynamic_section_of_each_class_and_byte_order(tmp_path: Path, bits: int,
                                                          order: str) -> None:
    path = tmp_path / "lib.so"
    path.write_bytes(build(bits, order))
    found = elf.read(str(path))
    assert found == elf.Elf(
        (bits // 32, 1 if order == "<" else 2, 62 if bits == 64 else 20),
        interp="/lib/ld-linux-test.so.1", soname="libself.so.1",
        needed=["libc.so.6", "libm.so.6"], rpath="/opt/r", runpath="$ORIGIN/../lib",
        nodeflib=True)


def test_files_it_cannot_follow_are_refused_not_guessed(tmp_path: Path) -> None:
    path = tmp_path / "lib.so"
    good = build(64, "<")
    for bad in (b"#!/bin/sh\n", good[:200], build(64, "<", strtab_at=0x999999)):
        path.write_bytes(bad)
        with pytest.raises(elf.ElfError):
            elf.read(str(path))
    with pytest.raises(OSError):
        elf.read(str(tmp_path / "absent.so"))
