"""Reading a reply body within a byte cap, counted as it arrives.

httpx inflates a compressed body one network read at a time with no bound on what
one read becomes (64 KiB of gzip inflate to 64 MiB), and an event-stream parser that
waits for a line's end holds the whole line, however long. Here the raw body is
inflated in steps of at most ``BLOCK`` bytes, and every decoded byte (comments,
unfinished lines, fields nobody reads) counts against the cap before it is kept, so
what a reply holds stays within about the cap whatever the server sends. Only the
encodings flowrun asks for (``ACCEPT_ENCODING``) are undone; a reply in another is
refused.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncGenerator, Iterator

import httpx

BLOCK = 64 * 1024  # the most one step of inflation makes
ACCEPT_ENCODING = "gzip, deflate"  # what ``Inflater`` undoes (no br, no zstd)
_GZIP = zlib.MAX_WBITS | 16
_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class BodyTooLarge(Exception):
    """Raised when a reply's body, as sent or as decoded, passes its cap."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"the reply is larger than {cap} bytes")
        self.cap = cap


class BadEncoding(Exception):
    """Raised when a reply's Content-Encoding is not one flowrun asked for, or its
    compressed data is corrupt."""


class Inflater:
    """Undoes one Content-Encoding (none, gzip or deflate) in pieces of at most BLOCK."""

    def __init__(self, encoding: str) -> None:
        encoding = encoding.strip().lower()
        if encoding in {"", "identity"}:
            self._wbits: int | None = None
        elif encoding in {"gzip", "x-gzip"}:
            self._wbits = _GZIP
        elif encoding == "deflate":
            self._wbits = zlib.MAX_WBITS  # zlib-wrapped, or bare (``_sniff``)
        else:
            raise BadEncoding(f"unsupported Content-Encoding {encoding!r}")
        self._zlib = None if self._wbits is None else zlib.decompressobj(self._wbits)
        # "deflate" comes with and without the zlib wrapper: its two header bytes are
        # kept until they have passed, to inflate them bare if they were not a header
        self._head: bytearray | None = bytearray() if self._wbits == zlib.MAX_WBITS else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data``, a block at a time (inflated only when asked)."""
        if self._zlib is None:
            if data:
                yield data
            return
        try:
            yield from self._inflate(data)
        except zlib.error as exc:
            raise BadEncoding(f"corrupt compressed reply: {exc}") from None

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        if self._head is not None:
            data = self._sniff(data)
        while self._zlib is not None:
            out = self._zlib.decompress(data, BLOCK)
            if out:
                yield out
            if self._zlib.eof:  # a gzip member ended: another may follow it
                data = self._zlib.unused_data
                if not data or self._wbits != _GZIP:
                    return
                self._zlib = zlib.decompressobj(self._wbits)
                continue
            data = self._zlib.unconsumed_tail
            if not data and len(out) < BLOCK:  # (a full block may have more behind it)
                return

    def _sniff(self, data: bytes) -> bytes:
        """Tell a zlib-wrapped deflate stream from a bare one by its first two bytes."""
        assert self._head is not None
        self._head += data
        if len(self._head) < 2:
            return b""
        head, self._head = bytes(self._head), None
        if head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0:
            return head  # a zlib header (RFC 1950: deflate, checksum of the two bytes)
        self._wbits = -zlib.MAX_WBITS
        self._zlib = zlib.decompressobj(self._wbits)
        return head


async def decoded_body(resp: httpx.Response, cap: int) -> AsyncGenerator[bytes, None]:
    """``resp``'s body decoded, block by block; raises BodyTooLarge as soon as more than
    ``cap`` bytes have arrived, counted both as sent and as decoded."""
    inflater = Inflater(resp.headers.get("content-encoding", ""))
    sent = decoded = 0
    async for raw in resp.aiter_raw():
        sent += len(raw)
        if sent > cap:
            raise BodyTooLarge(cap)
        for block in inflater.feed(raw):
            decoded += len(block)
            if decoded > cap:
                raise BodyTooLarge(cap)
            yield block


class EventStreamParser:
    """Server-sent events from decoded bytes, as the WHATWG rules read them: a line
    ends in CRLF, LF or CR, a blank line ends an event, a leading byte order mark,
    comments and fields other than ``data`` are skipped, and an event the body ends
    inside is dropped. ``feed`` gives the data of each event it completes.

    It holds only the unfinished line and the unfinished event, both part of what the
    caller counted against its cap.
    """

    def __init__(self) -> None:
        self._line = bytearray()  # the line begun and not ended
        self._after_cr = False  # the last byte fed ended a line with CR: an LF next is its
        self._first = True  # the first line (it may start with a byte order mark)
        self._data: list[bytes] = []  # the data lines of the event begun

    def feed(self, block: bytes) -> list[str]:
        """The data of every event ``block`` completes (events without data skipped)."""
        start = 1 if self._after_cr and block.startswith(b"\n") else 0
        if block:
            self._after_cr = False
        events: list[str] = []
        for end in _EOL.finditer(block, start):
            piece = block[start:end.start()]
            if self._line:
                self._line += piece
                piece = bytes(self._line)
                self._line.clear()
            self._take(piece, events)
            start = end.end()
            self._after_cr = end.group() == b"\r" and start == len(block)
        self._line += block[start:]
        return events

    def _take(self, line: bytes, events: list[str]) -> None:
        if self._first:
            self._first = False
            line = line.removeprefix(_BOM)
        if not line:
            if self._data:
                data = b"\n".join(self._data).decode("utf-8", "replace")
                self._data = []
                if data:
                    events.append(data)
            return
        name, colon, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)
