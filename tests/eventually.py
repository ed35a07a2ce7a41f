"""Waiting in tests for something to happen: poll a check until it holds, within a bound.

A test never sleeps and hopes: it names what it waits for and how long it may take,
and a wait that runs out fails with that name and what the check saw last. A check
answers with a truthy value when the condition holds (that value is returned) and
with a falsy one while it does not; ``NotYet(seen)`` is a falsy answer that carries
what was seen, for the failure message. An exception a check raises ends the wait
at once: an assertion inside a check is an invariant of the wait, not a retry.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import anyio

T = TypeVar("T")


class NotYet:
    """A check's answer while its condition does not hold, with what it saw."""

    def __init__(self, seen: Any) -> None:
        self.seen = seen

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return repr(self.seen)


def _failure(what: str, timeout: float, seen: object) -> AssertionError:
    return AssertionError(f"{what}: not within {timeout:g}s; last seen: {seen!r}")


def eventually(check: Callable[[], T | NotYet | None], *, timeout: float = 15.0,
               interval: float = 0.02, what: str = "the condition") -> T:
    """Call ``check`` every ``interval`` seconds until it answers truthy and return that
    answer; AssertionError naming ``what`` once ``timeout`` seconds have passed. The
    first look is made at once, and a look is made after the deadline too."""
    deadline = time.monotonic() + timeout
    while True:
        seen = check()
        if seen:
            return seen  # type: ignore[return-value]  # truthy: neither None nor NotYet
        if time.monotonic() >= deadline:
            raise _failure(what, timeout, seen)
        time.sleep(interval)


# ``timeout`` bounds the polling and fails with what was seen (an AssertionError, not a
# TimeoutError): not the cancel scope that ASYNC109 would have instead.
@overload
async def eventually_async(check: Callable[[], Awaitable[T | NotYet | None]], *,
                           timeout: float = ...,  # noqa: ASYNC109
                           interval: float = ..., what: str = ...) -> T: ...


@overload
async def eventually_async(check: Callable[[], T | NotYet | None], *,
                           timeout: float = ...,  # noqa: ASYNC109
                           interval: float = ..., what: str = ...) -> T: ...


async def eventually_async(check: Callable[[], Any], *,
                           timeout: float = 15.0,  # noqa: ASYNC109
                           interval: float = 0.02, what: str = "the condition") -> Any:
    """``eventually`` for async tests: ``check`` may be a plain or an async function,
    and the wait between looks lets the event loop run."""
    deadline = time.monotonic() + timeout
    while True:
        seen = check()
        if inspect.isawaitable(seen):
            seen = await seen
        if seen:
            return seen
        if time.monotonic() >= deadline:
            raise _failure(what, timeout, seen)
        await anyio.sleep(interval)
