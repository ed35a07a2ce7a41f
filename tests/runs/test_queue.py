"""The run queue's pick rule: priority first, then the key with the fewest runs going,
then arrival; a key at its cap is skipped, not waited for; runs with no key have no cap."""

from __future__ import annotations

from flowrun.runs.queue import RunQueue, pick


def test_the_key_with_the_fewest_held_goes_first_then_the_earliest() -> None:
    assert pick({"a": 1, "b": 5}, {"a": 3, "b": 1}, cap=10) == ("b",)
    assert pick({"a": 1, "b": 5}, {"a": 2, "b": 2}, cap=10) == ("a",)
    assert pick({"a": 7, "b": 5}, {}, cap=10) == ("b",)


def test_a_key_at_its_cap_is_skipped_and_no_key_has_none() -> None:
    assert pick({"a": 1, "b": 5}, {"a": 4}, cap=4) == ("b",)
    assert pick({"a": 1}, {"a": 4}, cap=4) is None
    assert pick({None: 9, "a": 1}, {None: 100, "a": 4}, cap=4) == (None,)


def drain(queue: RunQueue[str], held: dict[str | None, int], cap: int) -> list[str]:
    """Pop until nothing may start, counting each popped item as held by its key."""
    out = []
    while (popped := queue.pop(held, cap, lambda item: not item.startswith("x"))) is not None:
        item = popped[1]
        out.append(item)
        key = item[0]
        held[key] = held.get(key, 0) + 1
    return out


def test_priority_first_then_turns_between_keys() -> None:
    queue: RunQueue[str] = RunQueue()
    order = iter(range(100))
    for item in ["a1", "a2", "a3", "a4", "b1", "b2"]:
        queue.push(99 if item[0] == "a" else 0, item[0], next(order), item)
    queue.push(0, "c", next(order), "c1")
    # a's priority-99 runs first, up to its cap; then b and c in turn at priority 0
    assert drain(queue, {}, cap=2) == ["a1", "a2", "b1", "c1", "b2"]
    assert len(queue) == 2  # a3, a4 wait for a's runs to end


def test_within_a_priority_the_key_holding_more_waits_behind_one_holding_less() -> None:
    queue: RunQueue[str] = RunQueue()
    for order, item in enumerate(["a1", "a2", "a3", "b1"]):
        queue.push(5, item[0], order, item)
    assert drain(queue, {"a": 3}, cap=10) == ["b1", "a1", "a2", "a3"]


def test_stale_entries_are_dropped_as_a_pick_meets_them() -> None:
    queue: RunQueue[str] = RunQueue()
    for order, item in enumerate(["xa", "a1", "xb"]):
        queue.push(1, item[-1] if item.startswith("x") else item[0], order, item)
    assert drain(queue, {}, cap=10) == ["a1"]
    assert len(queue) == 0
