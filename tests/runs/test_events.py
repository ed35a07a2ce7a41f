"""The event bus and follow(): bounded fan-out, replay/live hand-over, slow subscribers."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from flowrun.records import Event
from flowrun.runs.events import EventBus, follow
from tests.eventually import eventually_async


class Log:
    """A stand-in event log: events become visible when 'committed', then are published."""

    def __init__(self, bus: EventBus, run_id: str = "r") -> None:
        self.bus = bus
        self.run_id = run_id
        self.events: list[Event] = []
        self.finished = False

    def commit(self, name: str = "node_finished") -> Event:
        event = Event(self.run_id, len(self.events) + 1, name, {}, 0.0)
        self.events.append(event)
        self.bus.publish(event)
        if name == "workflow_finished":
            self.finished = True
        return event

    async def replay(self, run_id: str, after: int, limit: int) -> list[Event]:
        await anyio.lowlevel.checkpoint()
        return [e for e in self.events if e.seq > after][:limit]

    async def is_finished(self) -> bool:
        return self.finished


def test_publish_reaches_every_subscriber_and_cleans_up() -> None:
    bus = EventBus(buffer_size=10)
    with bus.subscribe("r") as a, bus.subscribe("r") as b, bus.subscribe("other") as c:
        bus.publish(Event("r", 1, "x", {}, 0.0))
        assert a.receive_nowait().seq == 1 and b.receive_nowait().seq == 1
        assert bus.subscriber_count() == 3
        assert c.statistics().current_buffer_used == 0
    assert bus.subscriber_count() == 0


def test_a_full_subscriber_is_cut_off_without_blocking() -> None:
    bus = EventBus(buffer_size=2)
    with bus.subscribe("r") as slow, bus.subscribe("r", buffer_size=100) as fast:
        for seq in range(1, 6):
            bus.publish(Event("r", seq, "x", {}, 0.0))
        assert [slow.receive_nowait().seq for _ in range(2)] == [1, 2]
        assert [fast.receive_nowait().seq for _ in range(5)] == [1, 2, 3, 4, 5]
        try:
            slow.receive_nowait()
        except anyio.EndOfStream:
            pass
        else:
            raise AssertionError("the slow stream should have ended")


async def test_follow_switches_a_slow_reader_back_to_replay() -> None:
    bus = EventBus()
    log = Log(bus)
    received: list[int] = []
    async with anyio.create_task_group() as tg:

        async def reader() -> None:
            async for event in follow(bus, log.replay, "r", 0, log.is_finished, buffer_size=3):
                received.append(event.seq)
                await anyio.sleep(0.001)  # slower than the producer

        tg.start_soon(reader)
        await eventually_async(lambda: bus.subscriber_count("r") == 1, what="the reader live")
        for _ in range(200):
            log.commit()
        log.commit("workflow_finished")
    assert received == list(range(1, 202))


async def test_follow_hands_over_from_replay_to_live_without_gap() -> None:
    bus = EventBus()
    log = Log(bus)
    for _ in range(5):
        log.commit()
    received: list[int] = []
    async with anyio.create_task_group() as tg:

        async def reader() -> None:
            async for event in follow(bus, log.replay, "r", 2, log.is_finished):
                received.append(event.seq)
                if event.seq == 4:
                    log.commit()  # committed while the reader is mid-replay

        tg.start_soon(reader)
        await eventually_async(lambda: 6 in received, what="the reader past its own commit")
        log.commit("workflow_finished")
    assert received == [3, 4, 5, 6, 7]


async def test_follow_ends_for_a_finished_run_without_terminal_event() -> None:
    bus = EventBus()
    log = Log(bus)
    log.commit()
    log.finished = True
    with anyio.fail_after(2):
        seqs = [e.seq async for e in follow(bus, log.replay, "r", 0, log.is_finished)]
    assert seqs == [1]
