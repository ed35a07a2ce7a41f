"""One served flowrun: what ``create_app`` sets up and what its lifespan runs.

The app keeps one attribute, ``app.state.flowrun`` (a ``Served``): the settings, the node
registry and the metrics from the start, and the running ``Instance`` while the lifespan
runs. Request handlers reach every part through ``api.common.instance_of(request)``; the
parts themselves get what they need through their constructors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.routing import Router

    from flowrun.engine.nodes import Registry
    from flowrun.features.callbacks.book import CallbackBook
    from flowrun.features.keys import KeyRing
    from flowrun.features.schedules.book import ScheduleBook
    from flowrun.features.vault import Vault
    from flowrun.features.waits import WaitBook
    from flowrun.features.webhooks.book import HookBook
    from flowrun.metrics import Metrics
    from flowrun.runs.catalog import WorkflowCatalog
    from flowrun.runs.lifecycle import Lifecycle
    from flowrun.runs.service import RunService
    from flowrun.settings import Settings
    from flowrun.store import Store


@dataclass(frozen=True, slots=True)
class Instance:
    """The running parts of one flowrun, built together by the lifespan."""

    settings: Settings
    store: Store
    service: RunService  # runs: accept, look up, stop, pause, re-run
    workflows: WorkflowCatalog  # registered definitions and their versions
    lifecycle: Lifecycle  # draining at shutdown
    keys: KeyRing  # API keys: who calls
    vault: Vault  # secrets, as the admin API manages them
    schedules: ScheduleBook
    waits: WaitBook  # waiting runs: where signals go
    callbacks: CallbackBook
    hooks: HookBook  # inbound webhooks
    metrics: Metrics


@dataclass(slots=True)
class Served:
    """What an app serves: fixed at ``create_app``, with its Instance while it runs."""

    settings: Settings
    registry: Registry
    metrics: Metrics
    router: Router | None = None  # the whole app's routes (what /openapi.json describes)
    instance: Instance | None = None  # set by the lifespan, None before and after
