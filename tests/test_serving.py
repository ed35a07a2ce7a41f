"""How ``flowrun serve`` sets up its process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from flowrun.serving import tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_server_collects_old_generations_rarely_and_never_its_startup_objects(
        restored_gc: None) -> None:
    young, middle, old = gc.get_threshold()
    tune_gc()
    assert gc.get_freeze_count() > 0  # start-up objects are out of every collection
    assert gc.get_threshold() == (young, 100, 100)
    assert middle < 100 and old < 100  # (the defaults it raises)
