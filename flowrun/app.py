"""The composition root: ``create_app(settings)`` wires store, bus, scheduler and routes.

The lifespan opens every long-lived resource as nested ``async with`` blocks in
dependency order (store → task group → scheduler) and closes them in reverse.
Cancelling the task group on shutdown leaves unfinished runs ``running`` in the
store, to resume on the next start.

Mounted inside another Starlette app, flowrun's lifespan does not run by
itself: enter ``flowrun_lifespan(app)`` from the host app's lifespan.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette

from flowrun.api import native
from flowrun.engine.nodes import Registry
from flowrun.engine.nodes import registry as default_registry
from flowrun.events import EventBus
from flowrun.metrics import Metrics
from flowrun.runner import Runner
from flowrun.scheduler import Scheduler
from flowrun.service import RunService
from flowrun.settings import Settings
from flowrun.store import Store

logger = logging.getLogger(__name__)


def load_plugins(modules: tuple[str, ...]) -> None:
    """Import modules that register custom node types with ``@flowrun.node``."""
    for name in modules:
        importlib.import_module(name)


@asynccontextmanager
async def flowrun_lifespan(app: Starlette) -> AsyncIterator[None]:
    """Run flowrun's resources for as long as the block lasts."""
    settings: Settings = app.state.settings
    registry: Registry = app.state.registry
    load_plugins(settings.plugins)
    async with Store.open(settings.db_path, max_batch=settings.group_commit_max) as store:
        bus = EventBus(buffer_size=settings.sse_buffer)
        runner = Runner(store, bus, registry, app.state.metrics)
        scheduler = Scheduler(runner, max_concurrent=settings.max_concurrent_runs,
                              max_queued=settings.max_queued)
        app.state.metrics.watch_queue(lambda: scheduler.queued, lambda: scheduler.running)
        service = RunService(settings, store, scheduler, bus, registry)
        if settings.workflows_dir is not None:
            for name, version in await service.load_workflows(settings.workflows_dir):
                logger.info("workflow %s: version %d from %s", name, version,
                            settings.workflows_dir)
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler.run, tg)
            await service.resume_unfinished()
            app.state.service = service
            try:
                yield
            finally:
                app.state.service = None
                tg.cancel_scope.cancel()
    logger.info("flowrun stopped")


def create_app(settings: Settings | None = None, *,
               registry: Registry = default_registry) -> Starlette:
    """A Starlette app serving flowrun's API with ``settings``."""
    settings = settings or Settings.from_env()
    app = Starlette(routes=native.routes,
                    exception_handlers=native.exception_handlers,  # type: ignore[arg-type]
                    lifespan=flowrun_lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.service = None
    app.state.metrics = Metrics()
    return app
