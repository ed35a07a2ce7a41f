"""The bounded reply decoder and the event-stream parser, alone."""

from __future__ import annotations

import gzip
import random
import zlib

import httpx
import pytest

from flowrun.engine.net.replies import (
    BLOCK,
    BadEncoding,
    BodyTooLarge,
    EventStreamParser,
    Inflater,
    decoded_body,
)

STREAM = ('\ufeffdata: {"a": 1}\r\n\r\n'
          ": a comment\n"
          "event: message\nid: 7\nretry: 10\ndata: first\ndata: second\n\n"
          "data:no space\r\rdata\n\n"  # a bare "data" is an empty data line
          "data:  two spaces\n\n"
          "data: é ü 漢 🎉\r\n\r\n"
          "unknown: field\n\n"
          ": only a comment\n\n"
          "data: [DONE]\n\n"
          "data: cut off by the end")
EXPECTED = ['{"a": 1}', "first\nsecond", "no space", " two spaces", "é ü 漢 🎉", "[DONE]"]


def parse(blocks: list[bytes]) -> list[str]:
    parser = EventStreamParser()
    return [data for block in blocks for data in parser.feed(block)]


def test_whole_stream() -> None:
    assert parse([STREAM.encode()]) == EXPECTED


def test_byte_by_byte() -> None:
    raw = STREAM.encode()
    assert parse([raw[i:i + 1] for i in range(len(raw))]) == EXPECTED


def test_cut_once_at_every_byte() -> None:
    raw = STREAM.encode()
    for cut in range(len(raw) + 1):
        assert parse([raw[:cut], raw[cut:]]) == EXPECTED, cut


def test_random_cuts() -> None:
    raw = STREAM.encode()
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 20)))
        blocks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        assert parse(blocks) == EXPECTED


@pytest.mark.parametrize("eol", ["\n", "\r", "\r\n"])
def test_each_line_end(eol: str) -> None:
    text = f"data: a{eol}data: b{eol}{eol}:c{eol}data: d{eol}{eol}"
    raw = text.encode()
    assert parse([raw]) == ["a\nb", "d"]
    assert parse([raw[i:i + 1] for i in range(len(raw))]) == ["a\nb", "d"]


def test_a_cr_and_an_lf_in_two_blocks_are_one_line_end() -> None:
    # (two line ends would be a blank line: the event would end after "a")
    assert parse([b"data: a\r", b"\ndata: b\n\n"]) == ["a\nb"]
    assert parse([b"data: a\r", b"", b"\ndata: b\r", b"\r"]) == ["a\nb"]


def test_a_bom_only_at_the_start() -> None:
    assert parse([b"\xef\xbb", b"\xbfdata: x\n\n"]) == ["x"]
    assert parse([b"data: x\n\n\xef\xbb\xbfdata: y\n\n"]) == ["x"]  # a field named BOM+data


def test_a_long_line_fed_in_small_blocks_is_linear() -> None:
    # 4 MiB in 1-byte-ish pieces: an unended line is kept in one growing buffer
    parser = EventStreamParser()
    parser.feed(b"data: ")
    piece = b"a" * 16
    for _ in range(4 * 1024 * 1024 // 16):
        assert parser.feed(piece) == []
    assert parser.feed(b"\n\n") == ["a" * 4 * 1024 * 1024]


def inflate_all(inflater: Inflater, data: bytes, step: int) -> bytes:
    out = bytearray()
    for i in range(0, len(data), step):
        for block in inflater.feed(data[i:i + step]):
            assert len(block) <= max(BLOCK, step)  # (identity hands on what came)
            out += block
    return bytes(out)


@pytest.mark.parametrize("step", [1, 7, 1000, 1 << 20])
def test_inflating_gzip_deflate_and_bare_deflate_in_bounded_blocks(step: int) -> None:
    body = b"data: " + bytes(range(256)) * 2000 + b"a" * 300_000
    bare = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw_deflate = bare.compress(body) + bare.flush()
    two_members = gzip.compress(body[:1000]) + gzip.compress(body[1000:])
    assert inflate_all(Inflater("gzip"), gzip.compress(body), step) == body
    assert inflate_all(Inflater("gzip"), two_members, step) == body
    assert inflate_all(Inflater("deflate"), zlib.compress(body), step) == body
    assert inflate_all(Inflater("deflate"), raw_deflate, step) == body
    assert inflate_all(Inflater("identity"), body, step) == body


def test_unknown_or_corrupt_encodings_are_refused() -> None:
    with pytest.raises(BadEncoding, match="br"):
        Inflater("br")
    with pytest.raises(BadEncoding, match="corrupt"):
        list(Inflater("gzip").feed(b"not gzip at all"))


def reply(body: bytes, encoding: str | None = None) -> httpx.Response:
    headers = {"content-encoding": encoding} if encoding else {}
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))


async def read(resp: httpx.Response, cap: int) -> bytes:
    return b"".join([block async for block in decoded_body(resp, cap)])


async def test_the_cap_counts_decoded_bytes_of_a_bomb() -> None:
    bomb = gzip.compress(b"a" * (50 << 20))  # ~50 KB sent, 50 MiB inflated
    assert len(bomb) < 1 << 20
    seen = 0
    with pytest.raises(BodyTooLarge):
        async for block in decoded_body(reply(bomb, "gzip"), 1 << 20):
            seen += len(block)
    assert seen <= 1 << 20  # nothing past the cap was handed on


async def test_the_cap_counts_bytes_as_sent_and_lets_exactly_the_cap_through() -> None:
    assert await read(reply(b"x" * 100), 100) == b"x" * 100
    with pytest.raises(BodyTooLarge):
        await read(reply(b"x" * 101), 100)
    assert await read(reply(gzip.compress(b"y" * 100), "gzip"), 100) == b"y" * 100
