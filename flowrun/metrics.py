"""Prometheus metrics of one flowrun instance (its own registry, so apps never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ("CONTENT_TYPE_LATEST", "Metrics")


class Metrics:
    """Counters of accepted and finished runs, gauges of the queue, run durations."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs_accepted = Counter("flowrun_runs_accepted", "Runs accepted",
                                     ["workflow"], registry=self.registry)
        self.runs_finished = Counter("flowrun_runs_finished", "Runs that reached a terminal status",
                                     ["workflow", "status"], registry=self.registry)
        self.run_seconds = Histogram("flowrun_run_duration_seconds", "Run duration, start to end",
                                     ["workflow"], registry=self.registry,
                                     buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600))
        self.queued = Gauge("flowrun_runs_queued", "Runs waiting for a slot",
                            registry=self.registry)
        self.running = Gauge("flowrun_runs_running", "Runs executing now",
                             registry=self.registry)

    def watch_queue(self, queued: Callable[[], float], running: Callable[[], float]) -> None:
        self.queued.set_function(queued)
        self.running.set_function(running)

    def render(self) -> bytes:
        return generate_latest(self.registry)
