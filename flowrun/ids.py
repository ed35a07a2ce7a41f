"""Random identifiers (UUID4) for runs, traces and node executions.

``uuid.uuid4()`` reads 16 bytes from the kernel per id, and ``os.urandom``
releases the GIL around that call: under load the event loop then waits for
the SQLite threads to hand the GIL back (milliseconds, not the microseconds of
the call). Ids here come from the same kernel source, read 4 KiB at a time.
"""

from __future__ import annotations

import os
import threading
import uuid

_CHUNK = 4096
_lock = threading.Lock()
_buffer = b""
_offset = _CHUNK


def _random16() -> bytes:
    global _buffer, _offset
    with _lock:
        if _offset >= len(_buffer):
            _buffer, _offset = os.urandom(_CHUNK), 0
        start = _offset
        _offset += 16
        return _buffer[start:_offset]


def _forget() -> None:
    """A forked child must not hand out its parent's remaining bytes again."""
    global _buffer, _offset
    _buffer, _offset = b"", _CHUNK


os.register_at_fork(after_in_child=_forget)


def new_uuid() -> uuid.UUID:
    """A random (version 4) UUID."""
    return uuid.UUID(bytes=_random16(), version=4)


def new_id() -> str:
    """A random UUID in its canonical text form (a run's id, a node execution's id)."""
    return str(new_uuid())


def new_hex() -> str:
    """A random UUID as 32 hex digits (a trace id)."""
    return new_uuid().hex


def number_of(raw: str) -> int | None:
    """``raw`` as a number id (a jobs-API job, a workflow number), or None if it is not one.

    Only ASCII digits count (``"²".isdigit()`` is true), and at most 18 of them, so
    the value fits SQLite's 64-bit integers.
    """
    if raw.isascii() and raw.isdigit() and len(raw) < 19:
        return int(raw)
    return None
