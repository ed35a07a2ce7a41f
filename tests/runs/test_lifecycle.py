"""Lifecycle: a drain refuses new work, and ends callers' waits when the grace is over."""

from __future__ import annotations

import anyio
import pytest

from flowrun.errors import Unavailable
from flowrun.runs.lifecycle import Lifecycle


class _Idle:
    """A dispatcher stand-in: pausing is recorded, and it is always idle."""

    paused = False

    def pause_dispatch(self) -> None:
        self.paused = True

    async def idle(self) -> None:
        return None


def lifecycle() -> tuple[Lifecycle, _Idle]:
    dispatcher = _Idle()
    return Lifecycle(dispatcher), dispatcher  # type: ignore[arg-type]  # a stand-in


async def test_a_drain_refuses_new_work_and_pauses_dispatch() -> None:
    life, dispatcher = lifecycle()
    life.refuse_new_work()  # accepted before the drain
    life.begin_drain()
    assert life.shutting_down and dispatcher.paused and life.draining.is_set()
    with pytest.raises(Unavailable) as refused:
        life.refuse_new_work()
    assert refused.value.headers == {"Retry-After": "5"}
    assert await life.wait_for_runs(grace_s=1)


async def test_end_waits_ends_a_wait_at_once_and_every_later_one() -> None:
    life, _ = lifecycle()
    never = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            ended = anyio.Event()

            async def waiter() -> None:
                with life.wait_scope(within_s=60):
                    await never.wait()
                ended.set()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            life.end_waits()
            await ended.wait()
        with life.wait_scope(within_s=60) as scope:  # after the grace: over at once
            await never.wait()
        assert scope.cancelled_caught


async def test_a_wait_scope_ends_after_its_own_budget() -> None:
    life, _ = lifecycle()
    with anyio.fail_after(5):
        with life.wait_scope(within_s=0.01) as scope:
            await anyio.Event().wait()
    assert scope.cancelled_caught
    assert not life.shutting_down
