"""Schedules as arithmetic: cron slots in a time zone, and the catch-up policy.

A *slot* is a moment a cron expression names (a unix timestamp). A schedule
fires each slot once; slots that went by while the server was down (or busy)
are *missed*, and the schedule's ``catch_up`` policy says which of them fire:

- ``skip``: none; only a slot that is on time (due less than ``ON_TIME_S`` ago, or
  due since the loop's previous look while it was running: a slow look is not a
  downtime);
- ``latest`` (the default): the most recent one;
- ``all``: each of them, at most ``MAX_CATCH_UP`` (the most recent ones).

Cron expressions are parsed by croniter, never by hand: five fields, or six with
seconds first (``*/5 * * * * *``: every five seconds). Time zones are IANA names
(zoneinfo); a slot is computed on the zone's wall clock, so ``0 9 * * *`` in
``Europe/Paris`` is 09:00 there in winter and in summer.

Everything here is pure (the clock is an argument), so the loop that fires
slots (``features/schedules/book.py``) and the definition checks share it.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from croniter import CroniterError, croniter

CatchUp = Literal["skip", "latest", "all"]
CATCH_UP_POLICIES: tuple[CatchUp, ...] = ("skip", "latest", "all")
MAX_CATCH_UP = 100  # slots ``all`` fires at most after a downtime
ON_TIME_S = 1.0  # a slot due less than this long ago is on time, not missed


def cron_problem(cron: str) -> str | None:
    """Why ``cron`` is not a valid expression (None when it is)."""
    if not isinstance(cron, str) or not cron.strip():
        return "cron must be a non-empty string"
    fields = len(cron.split())
    if fields not in (5, 6):
        return f"cron {cron!r} must have 5 fields, or 6 with seconds first (it has {fields})"
    try:
        croniter(cron, dt.datetime(2000, 1, 1, tzinfo=dt.UTC), second_at_beginning=True)
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        return f"cron {cron!r} is not valid: {exc}"
    return None


def timezone_problem(name: str) -> str | None:
    """Why ``name`` is not a known IANA time zone (None when it is)."""
    try:
        zone(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        return f"timezone {name!r} is not a known IANA time zone (e.g. UTC, Europe/Paris)"
    return None


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The zone named ``name``; ZoneInfoNotFoundError or ValueError when there is none."""
    if not name or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(name)  # zoneinfo would read a path
    return zoneinfo.ZoneInfo(name)


def _iter(cron: str, timezone: str, at: float) -> croniter:
    return croniter(cron, dt.datetime.fromtimestamp(at, tz=zone(timezone)),
                    second_at_beginning=True)


def next_slot(cron: str, timezone: str, after: float) -> float:
    """The first slot strictly after ``after``."""
    return float(_iter(cron, timezone, after).get_next(float))


def due_slots(cron: str, timezone: str, after: float, now: float,
              limit: int = MAX_CATCH_UP) -> tuple[list[float], bool]:
    """The most recent ``limit`` slots in (``after``, ``now``], oldest first, and whether
    there were more (older ones left out).

    Walks back from ``now``, so a long downtime costs ``limit`` steps, not one per slot.
    """
    it = _iter(cron, timezone, now + 0.001)  # get_prev is strict: include a slot at now
    found: list[float] = []
    while True:
        slot = float(it.get_prev(float))
        if slot <= after:
            return found[::-1], False
        if len(found) == limit:
            return found[::-1], True
        found.append(slot)


@dataclass(frozen=True)
class Firing:
    """What a schedule does now: the slots to fire, the new ``last_slot``, and how many
    due slots it leaves unfired (missed and not caught up)."""

    fire: list[float]
    last_slot: float | None
    missed: int
    capped: bool = False


def plan(cron: str, timezone: str, catch_up: CatchUp, last_slot: float | None,
         created_at: float, now: float, *, looked_at: float | None = None) -> Firing:
    """Which due slots fire at ``now``, under ``catch_up``.

    A schedule that never fired counts from its creation. ``last_slot`` moves to the
    most recent due slot whichever slots fire, so a slot is never owed twice.
    ``looked_at``: when the running loop last looked (None just after a start); a
    slot due since then is on time, however slow this look is.
    """
    after = created_at if last_slot is None else last_slot
    limit = MAX_CATCH_UP if catch_up == "all" else 2  # enough to tell "missed some"
    due, more = due_slots(cron, timezone, after, now, limit)
    return choose(due, more, catch_up, now, last_slot, looked_at=looked_at)


def choose(due: Sequence[float], more: bool, catch_up: CatchUp, now: float,
           last_slot: float | None, *, looked_at: float | None = None) -> Firing:
    """The catch-up policy over ``due`` (oldest first; ``more``: older ones were left out)."""
    if not due:
        return Firing([], last_slot, 0)
    latest = due[-1]
    on_time = now - latest < ON_TIME_S or (looked_at is not None and latest > looked_at)
    if catch_up == "all":
        fire = list(due)
    elif catch_up == "latest" or on_time:
        fire = [latest]
    else:  # skip, and even the latest slot is late
        fire = []
    missed = len(due) - len(fire) + (1 if more and catch_up != "all" else 0)
    return Firing(fire, latest, missed, capped=more and catch_up == "all")
