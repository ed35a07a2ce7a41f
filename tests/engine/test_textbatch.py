"""Streamed text gathered into fewer events, alone."""

from __future__ import annotations

import anyio
import pytest

from flowrun.engine.textbatch import TextBatcher


class Sink:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.arrived = anyio.Event()

    async def emit(self, text: str) -> None:
        self.texts.append(text)
        self.arrived.set()


async def test_deltas_in_a_burst_make_few_events_with_all_the_text_in_order() -> None:
    sink = Sink()
    async with TextBatcher(sink.emit, interval_s=10, max_chars=100) as batcher:
        for i in range(1000):
            await batcher.add(str(i % 10))
    assert "".join(sink.texts) == "0123456789" * 100
    assert sink.texts[0] == "0"  # the first delta after a quiet spell goes out at once
    assert len(sink.texts) <= 12 and all(len(t) <= 100 for t in sink.texts[1:])


async def test_gathered_text_goes_out_when_the_upstream_goes_quiet() -> None:
    sink = Sink()
    async with TextBatcher(sink.emit, interval_s=0.05) as batcher:
        await batcher.add("a")
        await batcher.add("b")  # within the interval: it waits for company
        assert sink.texts == ["a"]
        sink.arrived = anyio.Event()
        with anyio.fail_after(10):
            await sink.arrived.wait()  # the flusher sends it, with nothing more coming
        assert sink.texts == ["a", "b"]


async def test_a_failure_in_the_block_goes_on_unwrapped_after_the_text_is_sent() -> None:
    sink = Sink()
    with pytest.raises(KeyError):
        async with TextBatcher(sink.emit, interval_s=10) as batcher:
            await batcher.add("a")
            await batcher.add("b")
            raise KeyError("upstream broke")
    assert sink.texts == ["a", "b"]


async def test_cancelled_it_sends_nothing_more() -> None:
    sink = Sink()
    with anyio.CancelScope() as scope:
        async with TextBatcher(sink.emit, interval_s=10) as batcher:
            await batcher.add("a")
            await batcher.add("b")
            scope.cancel()
            await anyio.sleep(1)
    assert sink.texts == ["a"]
