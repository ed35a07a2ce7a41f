"""The tests' one way of waiting for something (tests/eventually.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.eventually import NotYet, eventually, eventually_async


def answers(*values: object) -> Iterator[object]:
    """The values a check gives, one per look; the last one from then on."""
    yield from values
    while True:
        yield values[-1]


def test_returns_the_first_truthy_answer_after_the_falsy_ones() -> None:
    looks = answers(None, 0, [], NotYet("half"), {"status": "done"})
    assert eventually(lambda: next(looks), interval=0.001) == {"status": "done"}


def test_fails_after_the_timeout_naming_what_and_the_last_answer() -> None:
    looks = answers(NotYet({"status": "queued"}), NotYet({"status": "running"}))
    began = time.monotonic()
    with pytest.raises(AssertionError) as failed:
        eventually(lambda: next(looks), timeout=0.2, interval=0.01, what="the run finished")
    assert time.monotonic() - began >= 0.2
    assert str(failed.value) == \
        "the run finished: not within 0.2s; last seen: {'status': 'running'}"


def test_a_first_look_that_holds_does_not_sleep() -> None:
    calls: list[float] = []

    def check() -> bool:
        calls.append(time.monotonic())
        return True

    began = time.monotonic()
    assert eventually(check, interval=30) is True  # a sleep would outlast the test's timeout
    assert len(calls) == 1 and time.monotonic() - began < 5


def test_a_check_that_raises_ends_the_wait_at_once() -> None:
    def check() -> bool:
        raise AssertionError("an invariant broke")

    began = time.monotonic()
    with pytest.raises(AssertionError, match="an invariant broke"):
        eventually(check, timeout=30)
    assert time.monotonic() - began < 5


def test_the_last_look_comes_after_the_deadline() -> None:
    began = time.monotonic()
    # holds only once the deadline has passed: the wait still sees it
    assert eventually(lambda: time.monotonic() - began > 0.3, timeout=0.3, interval=0.2)


async def test_async_waits_for_a_plain_or_an_async_check() -> None:
    looks = answers(False, False, "plain")
    assert await eventually_async(lambda: next(looks), interval=0.001) == "plain"
    later = answers(None, 7)

    async def check() -> int | None:
        value = next(later)
        assert value is None or isinstance(value, int)
        return value

    assert await eventually_async(check, interval=0.001) == 7


async def test_async_fails_after_the_timeout_and_does_not_sleep_on_a_first_success() -> None:
    async def never() -> NotYet:
        return NotYet(["a", "b"])

    with pytest.raises(AssertionError, match=r"^two items: not within 0.1s; last seen: "
                                             r"\['a', 'b'\]$"):
        await eventually_async(never, timeout=0.1, interval=0.01, what="two items")
    began = time.monotonic()

    async def at_once() -> str:
        return "yes"

    assert await eventually_async(at_once, interval=30) == "yes"
    assert time.monotonic() - began < 5
