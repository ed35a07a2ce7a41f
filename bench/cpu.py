"""Who used the CPU during a measurement, from /proc (Linux; no psutil needed).

``sample`` reads, at one moment, the CPU time of whole process trees (a process, its
live descendants, and what its reaped children used, so a PostgreSQL postmaster
counts every backend, even one that exited in between), each thread of some of
them, the bench's own process and the children it reaped (wrk), every other
process (someone else's work on a shared machine), and the machine's totals from
/proc/stat. ``Usage`` is the difference of two samples, in percent of one core (so
2 cores are 200%), as ``top`` shows it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _fields(path: Path) -> list[str] | None:
    """A /proc stat line's fields from the 3rd (state) on, or None if it is gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


@dataclass
class _Proc:
    name: str
    parent: int
    own: int  # utime + stime
    ticks: int  # own, and its reaped children's (cutime + cstime)


def _processes() -> dict[int, _Proc]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (f := _fields(entry / "stat")) is not None:
            name = (entry / "comm").read_text().strip() if (entry / "comm").exists() else "?"
            own = int(f[11]) + int(f[12])
            found[int(entry.name)] = _Proc(name, int(f[1]), own, own + int(f[13]) + int(f[14]))
    return found


def _tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    return [pid, *(p for child in children.get(pid, ()) for p in _tree(child, children))]


def thread_ticks(pid: int) -> dict[int, int]:
    found: dict[int, int] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        if (f := _fields(task / "stat")) is not None:
            found[int(task.name)] = int(f[11]) + int(f[12])
    return found


def _machine() -> list[int]:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


@dataclass
class Sample:
    at: float
    trees: dict[int, int]
    threads: dict[int, dict[int, int]]
    bench: float  # this process's own CPU seconds
    reaped: float  # CPU seconds of the children it waited for (wrk)
    others: dict[int, _Proc]  # every process in no tree, nor this one
    machine: list[int] = field(default_factory=list)


def sample(trees: Iterable[int], threads: Iterable[int] = ()) -> Sample:
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, proc in procs.items():
        children.setdefault(proc.parent, []).append(pid)
    ticks, ours = {}, set(_tree(os.getpid(), children))  # (this bench and its wrk)
    for root in trees:
        members = [pid for pid in _tree(root, children) if pid in procs]
        ticks[root] = sum(procs[pid].ticks for pid in members)
        ours.update(members)
    times = os.times()
    return Sample(time.monotonic(), ticks, {pid: thread_ticks(pid) for pid in threads},
                  times.user + times.system, times.children_user + times.children_system,
                  {pid: p for pid, p in procs.items() if pid not in ours}, _machine())


@dataclass
class Usage:
    """CPU use between two samples, in percent of one core."""

    seconds: float
    trees: dict[int, float]
    threads: dict[int, list[float]]  # of each process asked for: its threads, busiest first
    bench: float
    reaped: float
    other: float  # all other processes
    others: list[tuple[float, str, int]]  # (percent, name, pid) of the live ones, busiest first
    busy: float  # the whole machine: user, nice, system, irq, softirq
    irq: float  # of which irq and softirq (not charged to a process: loopback TCP's)
    iowait: float
    steal: float

    def of(self, pids: Iterable[int]) -> float:
        return sum(self.trees[pid] for pid in pids)

    def cpu_seconds(self, pids: Iterable[int]) -> float:
        return self.of(pids) / 100 * self.seconds


def usage(a: Sample, b: Sample) -> Usage:
    span = b.at - a.at

    def pct(ticks: float) -> float:
        return ticks / TICK / span * 100

    threads = {}
    for pid, after in b.threads.items():
        before = a.threads.get(pid, {})
        threads[pid] = sorted((pct(t - before.get(tid, 0)) for tid, t in after.items()),
                              reverse=True)
    # A process that started during the span counts from 0. One that ended is in its
    # parent's reaped time with all it ever used, so what it had used before is taken off.
    other = sum(p.ticks - (a.others[pid].ticks if pid in a.others else 0)
                for pid, p in b.others.items())
    other -= sum(p.ticks for pid, p in a.others.items() if pid not in b.others)
    others = sorted(((pct(p.own - (a.others[pid].own if pid in a.others else 0)), p.name, pid)
                     for pid, p in b.others.items()), reverse=True)
    d = [y - x for x, y in zip(a.machine, b.machine, strict=True)]
    user, nice, system, _idle, iowait, irq, softirq, steal = d
    return Usage(span, {pid: pct(t - a.trees.get(pid, 0)) for pid, t in b.trees.items()},
                 threads, (b.bench - a.bench) / span * 100, (b.reaped - a.reaped) / span * 100,
                 max(pct(other), 0.0), [o for o in others if o[0] > 0],
                 pct(user + nice + system + irq + softirq), pct(irq + softirq), pct(iowait),
                 pct(steal))
