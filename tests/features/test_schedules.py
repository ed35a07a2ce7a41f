"""Cron slots and the catch-up policy, with a fixed clock."""

from __future__ import annotations

import datetime as dt

import pytest

from flowrun.language import cron
from flowrun.language.cron import choose, cron_problem, due_slots, next_slot, plan, timezone_problem


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
       ) -> float:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC).timestamp()


T0 = at(2026, 3, 1, 12, 0, 0)


def test_five_and_six_field_slots() -> None:
    assert next_slot("*/5 * * * *", "UTC", T0) == T0 + 300
    assert next_slot("*/10 * * * * *", "UTC", T0 + 1) == T0 + 10  # seconds first
    assert next_slot("* * * * * *", "UTC", T0 + 0.5) == T0 + 1


def test_slots_follow_the_zones_wall_clock() -> None:
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer
    assert next_slot("0 9 * * *", "Europe/Paris", at(2026, 1, 10)) == at(2026, 1, 10, 8)
    assert next_slot("0 9 * * *", "Europe/Paris", at(2026, 7, 10)) == at(2026, 7, 10, 7)


def test_due_slots_are_after_and_up_to_now() -> None:
    assert due_slots("* * * * * *", "UTC", T0, T0 + 3) == ([T0 + 1, T0 + 2, T0 + 3], False)
    assert due_slots("* * * * * *", "UTC", T0, T0 + 0.9) == ([], False)
    assert due_slots("* * * * * *", "UTC", T0, T0 + 500, limit=2) == ([T0 + 499, T0 + 500],
                                                                       True)


def test_a_new_schedule_counts_from_its_creation() -> None:
    fired = plan("* * * * * *", "UTC", "latest", None, created_at=T0 + 0.2, now=T0 + 1.1)
    assert fired.fire == [T0 + 1] and fired.last_slot == T0 + 1 and fired.missed == 0
    assert plan("* * * * * *", "UTC", "all", None, T0 + 0.2, T0 + 0.9).fire == []


@pytest.mark.parametrize(("policy", "fire"), [("skip", []), ("latest", [T0 + 60]),
                                              ("all", [T0 + 20, T0 + 40, T0 + 60])])
def test_catch_up_after_downtime(policy: cron.CatchUp, fire: list[float]) -> None:
    fired = plan("*/20 * * * * *", "UTC", policy, last_slot=T0, created_at=T0 - 100,
                 now=T0 + 65)
    assert fired.fire == fire
    assert fired.last_slot == T0 + 60  # whatever fires, those slots are not owed again


def test_on_time_slot_fires_under_every_policy() -> None:
    for policy in cron.CATCH_UP_POLICIES:
        fired = plan("* * * * * *", "UTC", policy, T0, T0 - 10, T0 + 1.2)
        assert fired.fire == [T0 + 1] and fired.missed == 0


def test_skip_fires_a_slot_that_came_during_a_slow_look_but_not_one_from_a_downtime() -> None:
    # the loop looked at T0 + 9.5, and its next look came 3 s late: T0 + 10 is on time
    fired = plan("*/10 * * * * *", "UTC", "skip", T0, T0 - 10, T0 + 13, looked_at=T0 + 9.5)
    assert fired.fire == [T0 + 10] and fired.missed == 0
    # just after a start (no look before), the same slot was missed while down
    assert plan("*/10 * * * * *", "UTC", "skip", T0, T0 - 10, T0 + 13).fire == []


def test_all_is_capped_to_the_most_recent_slots() -> None:
    fired = plan("* * * * * *", "UTC", "all", T0, T0, T0 + 10_000)
    assert len(fired.fire) == cron.MAX_CATCH_UP and fired.capped
    assert fired.fire[-1] == T0 + 10_000 and fired.fire[0] == T0 + 10_000 - 99


def test_nothing_due_keeps_last_slot() -> None:
    assert choose([], False, "all", T0, T0 - 1) == cron.Firing([], T0 - 1, 0)


@pytest.mark.parametrize("cron", ["", "bad", "* * *", "61 * * * *", "* * * * * * * *",
                                  "*/0 * * * *"])
def test_bad_cron(cron: str) -> None:
    assert cron_problem(cron) is not None


def test_good_cron_and_zones() -> None:
    assert cron_problem("0 9 * * mon-fri") is None and cron_problem("*/5 * * * * *") is None
    assert timezone_problem("Europe/Paris") is None and timezone_problem("UTC") is None
    for name in ("Mars/Base", "../etc/passwd", "/etc/localtime", ""):
        assert timezone_problem(name) is not None
