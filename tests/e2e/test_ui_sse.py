"""The web UI's event-stream parser (flowrun/ui/sse.js) alone, in the real headless
chromium the UI tests use: the module is imported from a real server's /ui and fed a
stream in many chunkings (whole, one unit at a time, cut once at every position, and
random cuttings), each of which must give the same events."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import httpx
import pytest
from playwright.sync_api import Page

from tests.e2e.chromium import WAIT, console_errors, launch
from tests.e2e.server import Server, finished

# A new parser per chunking, fed the stream's bytes (or, with ``text``, its decoded
# string, a byte order mark kept) cut at that chunking's positions. The first
# chunking's result comes back, and each chunking whose result differs from it.
FEED = """async ({ stream, chunkings, text }) => {
  const { SSEParser } = await import(new URL("ui/sse.js", location.href));
  const bytes = new Uint8Array(stream);
  const input = text ? new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes) : bytes;
  const results = chunkings.map((cuts) => {
    const parser = new SSEParser();
    const events = [];
    let at = 0;
    for (const cut of [...cuts, input.length]) {
      events.push(...parser.feed(input.slice(at, cut)));
      at = cut;
    }
    return { events, retry: parser.retry, lastEventId: parser.lastEventId };
  });
  const first = JSON.stringify(results[0]);
  const differ = results.map((result, i) => ({ cuts: chunkings[i], result }))
    .filter(({ result }) => JSON.stringify(result) !== first);
  return { first: results[0], differ };
}"""


class Parsed(NamedTuple):
    first: dict[str, Any]  # {events, retry, lastEventId} of the stream in one chunk
    differ: list[dict[str, Any]]  # {cuts, result} of each chunking that gave otherwise


Parse = Callable[..., Parsed]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Page]]:
    """One server (no key needed) and a chromium page on its /ui, for the module."""
    server = Server(tmp_path_factory.mktemp("sse"))
    server.start("--no-auth")
    try:
        with launch() as browser:
            page = browser.new_page()
            page.set_default_timeout(WAIT)
            errors = console_errors(page)
            page.goto(f"{server.url}/ui")
            page.wait_for_selector('#workflows tr[data-workflow="hello"]')
            yield server, page
            page.close()
    finally:
        server.close()
    assert not errors


def chunkings(size: int) -> list[list[int]]:
    """Cut positions: none; every one; each alone; and 40 random sets of them."""
    rng = random.Random(size)
    cuts: list[list[int]] = [[], list(range(1, size)), *([i] for i in range(1, size))]
    for _ in range(40):
        cuts.append(sorted(rng.sample(range(1, size), rng.randint(2, min(size - 1, 30)))))
    return cuts


@pytest.fixture
def parse(served: tuple[Server, Page]) -> Parse:
    page = served[1]

    def run(stream: bytes, text: bool = False) -> Parsed:
        size = len(stream.decode()) if text else len(stream)
        done = page.evaluate(FEED, {"stream": list(stream), "chunkings": chunkings(size),
                                    "text": text})
        return Parsed(done["first"], done["differ"])

    return run


def event(id: str, data: str, name: str = "message") -> dict[str, str]:
    return {"id": id, "event": name, "data": data}


# What a server may send: a ping comment, CRLF, LF and CR line ends, multi-line data,
# a retry, a field with no space after its colon, characters of two, three and four
# bytes, and an event left unfinished when the stream ends.
STREAM = (b": ping\r\n\r\n"
          b'id: 1\r\nevent: node_started\r\ndata: {"a": 1}\r\n\r\n'
          b"id: 2\nevent: text_chunk\ndata: line one\ndata: line two\n\n"
          b"retry: 2500\rid: 3\rdata:tight\r\r"
          + "data: héllo ✓ 🌍\r\n\r\n".encode()
          + b"data: unfinished")
PARSED = {"events": [event("1", '{"a": 1}', "node_started"),
                     event("2", "line one\nline two", "text_chunk"),
                     event("3", "tight"),
                     event("3", "héllo ✓ 🌍")],  # an id holds until another comes
          "retry": 2500, "lastEventId": "3"}


def test_a_stream_cut_anywhere_gives_the_same_events(parse: Parse) -> None:
    """Bytes cut inside a CRLF and inside a multi-byte character included."""
    assert parse(STREAM) == (PARSED, [])


def test_decoded_text_cut_anywhere_gives_the_same_events(parse: Parse) -> None:
    """Strings cut anywhere, between the two UTF-16 halves of the emoji included."""
    assert parse(STREAM, text=True) == (PARSED, [])


@pytest.mark.parametrize(("stream", "events"), [
    # a CR ending one chunk and an LF starting the next are one line end, not two
    (b"data: a\r\ndata: b\r\n\r\n", [event("", "a\nb")]),
    (b"data: a\rdata: b\n\r\n", [event("", "a\nb")]),
    # a field with no colon has an empty value; one space after the colon is dropped
    (b"data\n\n", [event("", "")]),
    (b"data:  two\n\n", [event("", " two")]),
    # a blank line with no data sends nothing and forgets the event's name
    (b"event: named\n\ndata: x\n\n", [event("", "x")]),
    # an empty id clears it; one holding NUL is ignored
    (b"id: 7\ndata: a\n\nid\ndata: b\n\n", [event("7", "a"), event("", "b")]),
    (b"id: 8\ndata: a\n\nid: 9\x00\ndata: b\n\n", [event("8", "a"), event("8", "b")]),
    # comments, unknown fields and lone blank lines change nothing
    (b"data: a\n: keep-alive\nfoo: bar\ndata: b\n\n\r\n\n", [event("", "a\nb")]),
])
def test_fields_and_line_ends(parse: Parse, stream: bytes, events: list[dict[str, str]]) \
        -> None:
    parsed = parse(stream)
    assert (parsed.first["events"], parsed.differ) == (events, [])


@pytest.mark.parametrize("text", [False, True])
def test_a_byte_order_mark_at_the_start_is_dropped(parse: Parse, text: bool) -> None:
    """Not part of the first field's name, whether bytes or text are fed."""
    parsed = parse("\ufeffdata: a\n\n\ufeffdata: b\n\n".encode(), text=text)
    assert (parsed.first["events"], parsed.differ) == ([event("", "a")], [])


@pytest.mark.parametrize(("stream", "retry", "events"), [
    (b"retry: 1000\n\n", 1000, []),  # a retry alone sends no event
    (b"retry: 1000\nretry: 3s\nretry: -1\nretry: 2 s\ndata: a\n\n", 1000, [event("", "a")]),
    (b"retry: 1.5\n\n", None, []),
])
def test_retry_takes_digits_only(parse: Parse, stream: bytes, retry: int | None,
                                 events: list[dict[str, str]]) -> None:
    parsed = parse(stream)
    assert (parsed.first["retry"], parsed.first["events"], parsed.differ) == (retry, events, [])


def test_a_real_run_stream_cut_anywhere(served: tuple[Server, Page], parse: Parse) -> None:
    server = served[0]
    client = server.client(None)
    run = client.post("/workflows/hello/run", json={"inputs": {"name": "Zoë ✓"}}).json()
    finished(client, run["id"])
    stream = client.get(f"/runs/{run['id']}/events",
                        headers={"Accept": "text/event-stream"}).content
    parsed = parse(stream)
    events = parsed.first["events"]
    assert [e["id"] for e in events] == [str(seq) for seq in range(1, len(events) + 1)]
    assert (events[0]["event"], events[-1]["event"]) == ("workflow_started", "workflow_finished")
    assert "Hello, Zo" in events[-1]["data"]
    assert parsed.differ == []


def test_the_module_is_served_as_javascript(served: tuple[Server, Page]) -> None:
    response = httpx.get(f"{served[0].url}/ui/sse.js")
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
