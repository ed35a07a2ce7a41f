"""The composition root: ``create_app(settings)`` wires store, bus, dispatcher and routes.

The lifespan opens every long-lived resource as nested ``async with`` blocks in
dependency order (store → task group → dispatcher) and closes them in reverse.
Cancelling the task group on shutdown leaves unfinished runs ``running`` in the
store, to resume on the next start.

Mounted inside another Starlette app, flowrun's lifespan does not run by
itself: enter ``flowrun_lifespan(app)`` from the host app's lifespan.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import ipaddress
import logging
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Protocol

import anyio
import anyio.lowlevel
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount

from flowrun.api import conductor, dify, jobs, langflow, native, ui
from flowrun.api.common import ErrorHandler
from flowrun.engine.net.egress import EgressLimits, EgressProxy
from flowrun.engine.node_services import HttpPolicy, LlmDefaults, NodeServices
from flowrun.engine.nodes import Registry
from flowrun.engine.nodes import registry as default_registry
from flowrun.engine.sandbox.runner import CodeLimits, CodeRunner, choose_jail
from flowrun.engine.storage import StorageLimits
from flowrun.errors import FlowrunError
from flowrun.features.callbacks.book import CallbackBook
from flowrun.features.callbacks.rules import RetryPolicy
from flowrun.features.keys import KeyRing
from flowrun.features.schedules.book import ScheduleBook
from flowrun.features.vault import StoreSecrets, Vault
from flowrun.features.waits import WaitBook
from flowrun.features.webhooks.book import HookBook
from flowrun.instance import Instance, Served
from flowrun.metrics import Metrics
from flowrun.runs.adapters import ServiceChildRuns, ServiceWorkflows
from flowrun.runs.catalog import WorkflowCatalog
from flowrun.runs.dispatch import Dispatcher
from flowrun.runs.events import EventBus
from flowrun.runs.lifecycle import Lifecycle
from flowrun.runs.runner import Runner
from flowrun.runs.service import RunService
from flowrun.settings import Settings, SettingsError
from flowrun.store import Store

logger = logging.getLogger(__name__)


class PluginError(SettingsError):
    """Raised by ``load_plugins`` when a plugin cannot be loaded; names it and says why."""


def load_plugins(modules: tuple[str, ...], registry: Registry = default_registry) -> None:
    """Load custom node types: the ``flowrun.nodes`` entry points, then ``modules``.

    An entry point may name an async function (registered under the entry point's
    name) or a module whose import registers its nodes with ``@flowrun.node``.
    Each of ``modules`` is a module name, found as ``python -m`` would (the current
    folder first, then the usual path), or the path of a ``.py`` file. One that
    cannot be loaded raises PluginError; loading one again does nothing.
    """
    for entry_point in importlib.metadata.entry_points(group="flowrun.nodes"):
        try:
            loaded = entry_point.load()
        except Exception:
            logger.exception("cannot load node entry point %s", entry_point.value)
            continue
        if inspect.iscoroutinefunction(loaded):
            registry.register(entry_point.name, loaded)
    for plugin in modules:
        try:
            if plugin.endswith(".py") or "/" in plugin or os.sep in plugin:
                _import_file(plugin)
            else:
                _import_module(plugin)
        except PluginError:
            raise
        except Exception as exc:  # whatever the plugin's own code raised while importing
            raise PluginError(f"cannot load plugin {plugin!r}: {_why(exc)}") from exc


def _import_module(name: str) -> None:
    # A console script's sys.path starts at its own folder, not the current one:
    # put the current folder first, as ``python -m`` does.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    importlib.import_module(name)


def _import_file(plugin: str) -> None:
    path = Path(plugin).resolve()
    if not path.is_file():
        raise PluginError(f"cannot load plugin {plugin!r}: no such file")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        where = getattr(loaded, "__file__", None)
        if where is not None and Path(where).resolve() == path:
            return
        raise PluginError(f"cannot load plugin {plugin!r}: a module named {name!r} is "
                          f"already loaded from elsewhere; rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot load plugin {plugin!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # As for ``python path/to/file.py``: the file's folder goes on the path, so the
    # plugin can import the modules beside it.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _why(exc: Exception) -> str:
    """One line: the exception, and where in the plugin's code it was raised."""
    if isinstance(exc, ModuleNotFoundError | SyntaxError):
        return str(exc)  # "No module named 'x'"; a SyntaxError names its file and line
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def node_services(settings: Settings, registry: Registry, code: CodeRunner) -> NodeServices:
    """What built-in nodes use, from settings."""
    return NodeServices(
        code=code, registry=registry, max_map_concurrency=settings.max_map_concurrency,
        http=http_policy(settings),
        storage=StorageLimits(max_node_bytes=settings.max_node_output_bytes,
                              max_run_bytes=settings.max_run_output_bytes,
                              max_text_chunks=settings.max_text_chunks_per_run),
        llm=LlmDefaults(base_url=settings.llm_base_url, api_key=settings.llm_api_key,
                        model=settings.llm_model, timeout_s=settings.llm_timeout_s,
                        max_response_bytes=settings.llm_max_response_bytes,
                        deadline_s=settings.llm_deadline_s))


def http_policy(settings: Settings) -> HttpPolicy:
    """Where node traffic (http, llm, and code with network on) may go."""
    networks = tuple(ipaddress.ip_network(n, strict=False) for n in settings.http_allowed_networks)
    return HttpPolicy(allow_private_hosts=settings.allow_private_hosts,
                      allowed_networks=networks,
                      max_response_bytes=settings.http_max_response_bytes,
                      timeout_s=settings.http_timeout_s)


def code_limits(settings: Settings) -> CodeLimits:
    return CodeLimits(timeout_s=settings.code_timeout_s,
                      memory_bytes=settings.code_memory_mb * 1024 * 1024,
                      cpu_seconds=settings.code_cpu_s, max_processes=settings.code_max_processes,
                      max_workers=settings.code_max_workers)


@asynccontextmanager
async def code_runner(settings: Settings, policy: HttpPolicy) -> AsyncIterator[CodeRunner]:
    """The code-node runner in the configured sandbox mode, announced in the log."""
    async with AsyncExitStack() as stack:
        limits = EgressLimits(connections_per_job=settings.code_network_connections_per_job,
                              head_timeout_s=settings.code_network_head_timeout_s)
        egress = await stack.enter_async_context(EgressProxy.open(policy, limits)) \
            if settings.code_network else None
        async with _code_runner(settings, egress) as runner:
            yield runner


@asynccontextmanager
async def _code_runner(settings: Settings, egress: EgressProxy | None
                       ) -> AsyncIterator[CodeRunner]:
    jail, description = await choose_jail(settings.code_sandbox, settings.code_tmp_mb, egress,
                                          code_limits(settings))
    if jail is None:
        logger.warning("code sandbox: unavailable, code nodes will fail: %s", description)
    elif jail.name == "process":
        logger.warning("code sandbox: %s", description)
    else:
        logger.info("code sandbox: %s", description)
    async with CodeRunner.open(settings.code_pool_size, code_limits(settings), jail=jail,
                               unavailable=description if jail is None else None) as runner:
        yield runner


def announce_retention(settings: Settings) -> None:
    """Say at start how long finished runs are kept: keeping them for ever is the
    operator's explicit choice, and said as a warning (the database only grows)."""
    if settings.run_retention_s:
        logger.info("retention: finished runs are deleted %s after they end "
                    "(FLOWRUN_RUN_RETENTION_S=0 keeps them)", _duration(settings.run_retention_s))
    else:
        logger.warning("retention: off (FLOWRUN_RUN_RETENTION_S=0): finished runs are kept "
                       "for ever, and the database grows with every run")


def _duration(seconds: float) -> str:
    for unit, length in (("days", 86_400), ("hours", 3_600), ("minutes", 60)):
        if seconds >= length:
            return f"{seconds / length:g} {unit}"
    return f"{seconds:g} s"


@asynccontextmanager
async def flowrun_lifespan(app: Starlette) -> AsyncIterator[None]:
    """Run flowrun's resources for as long as the block lasts."""
    served: Served = app.state.flowrun
    settings, registry, metrics = served.settings, served.registry, served.metrics
    load_plugins(settings.plugins, registry)
    announce_retention(settings)
    async with Store.open(settings.database, max_batch=settings.group_commit_max,
                          busy_timeout_ms=settings.sqlite_busy_timeout_ms,
                          synchronous=settings.sqlite_synchronous,
                          linger_s=settings.write_linger_s,
                          max_backlog=settings.write_backlog) as store, \
            code_runner(settings, http_policy(settings)) as code:
        bus = EventBus(buffer_size=settings.sse_buffer)
        services = node_services(settings, registry, code)
        runner = Runner(store, bus, registry, metrics,
                        idempotency_ttl_s=settings.idempotency_ttl_s, services=services,
                        final_write_timeout_s=settings.final_write_timeout_s,
                        text_wait_s=settings.write_backlog_wait_s)
        dispatcher = Dispatcher(runner, max_concurrent=settings.max_concurrent_runs,
                              max_queued=settings.max_queued,
                              max_per_key=settings.running_per_key)
        metrics.watch_queue(lambda: dispatcher.queued, lambda: dispatcher.running)
        workflows = WorkflowCatalog(store, registry)
        lifecycle = Lifecycle(dispatcher)
        service = RunService(settings, store, dispatcher, bus, workflows, lifecycle)
        schedule_book = ScheduleBook(store, workflows, service, lifecycle)
        wait_book = WaitBook(store, service)
        callback_book = CallbackBook(
            store, service, lifecycle, services.http,
            RetryPolicy(base_s=settings.callback_backoff_s,
                        cap_s=settings.callback_max_backoff_s,
                        max_age_s=settings.callback_max_age_s),
            timeout_s=settings.callback_timeout_s,
            max_in_flight=settings.callback_max_in_flight,
            max_in_flight_per_key=settings.callback_max_in_flight_per_key,
            resolve=services.resolve)
        runner.on_finished = callback_book.run_finished
        hook_book = HookBook(store, workflows, service, tolerance_s=settings.hook_tolerance_s)
        # The engine reaches the served instance through these adapters.
        services.child_runs = ServiceChildRuns(service)
        services.workflows = ServiceWorkflows(service, workflows)
        services.secrets = StoreSecrets(store)
        if settings.workflows_dir is not None:
            for name, version in await workflows.load_folder(settings.workflows_dir):
                logger.info("workflow %s: version %d from %s", name, version,
                            settings.workflows_dir)
        cluster = None
        if store.postgres:  # other processes may share the database: runs are claimed
            from flowrun.runs.cluster import Cluster
            cluster = Cluster(store, dispatcher, bus, lease_s=settings.lease_s,
                              heartbeat_s=settings.heartbeat_s,
                              max_queued=settings.max_queued)
            cluster.adopt = service.adopt
            cluster.workflow_changed = workflows.forget
            dispatcher.on_slot_free = cluster.wake_claims
            dispatcher.on_left = cluster.release
            service.cluster = cluster
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run, tg)
            tg.start_soon(housekeeping, store, settings, hook_book)
            tg.start_soon(lifecycle.end_waits_after_grace, settings.shutdown_grace_s)
            if cluster is None:
                await service.resume_unfinished()
            else:  # unfinished runs are claimed: those of dead processes, and unowned ones
                await tg.start(cluster.run)
            tg.start_soon(schedule_book.run)  # after resuming: catch-up runs queue behind
            tg.start_soon(wait_book.run)  # waits that timed out while the server was down
            tg.start_soon(callback_book.run)
            keys = KeyRing(store, enabled=settings.auth_enabled)
            if cluster is not None:
                cluster.keys_changed = keys.forget
            served.instance = Instance(
                settings=settings, store=store, service=service, workflows=workflows,
                lifecycle=lifecycle, keys=keys, vault=Vault(store), schedules=schedule_book,
                waits=wait_book, callbacks=callback_book, hooks=hook_book, metrics=metrics)
            try:
                yield
            finally:
                # Drain: accept nothing new, start nothing queued, give running runs the
                # grace period, then cancel the rest; they resume on the next start.
                lifecycle.begin_drain()
                finished = await lifecycle.wait_for_runs(settings.shutdown_grace_s)
                if not finished:
                    logger.info("shutdown: %d runs left to resume on next start",
                                dispatcher.running)
                if cluster is not None:
                    tg.cancel_scope.cancel()  # the runs left stop here, then go back
                    await _settle(dispatcher)
                    await cluster.leave()
                served.instance = None
                tg.cancel_scope.cancel()
    logger.info("flowrun stopped")


async def _settle(dispatcher: Dispatcher) -> None:
    """Wait (shielded, briefly) for cancelled run tasks to end."""
    with anyio.move_on_after(5, shield=True):
        await dispatcher.idle()


async def housekeeping(store: Store, settings: Settings, hooks: HookBook | None = None
                       ) -> None:
    """Periodically forget expired idempotency keys, hook deliveries too old to be
    replayed and runs past retention (unless it is 0: kept for ever)."""
    while True:
        await anyio.sleep(settings.sweep_interval_s)
        try:
            now = time.time()
            while await store.delete_expired_keys(now):
                await anyio.lowlevel.checkpoint()
            if hooks is not None:
                await hooks.forget_stale(now)
            if store.postgres:  # processes gone for a day (their runs went long ago)
                await store.forget_workers(86_400.0)
            if settings.run_retention_s:
                removed = 0
                while count := await store.delete_finished_runs(now - settings.run_retention_s):
                    removed += count
                    await anyio.lowlevel.checkpoint()  # let requests in between batches
                if removed:
                    logger.info("retention: deleted %d finished runs", removed)
        except FlowrunError as exc:
            logger.warning("housekeeping skipped: %s", exc.message)


class Dialect(Protocol):
    """What the app takes from a dialect module: its routes and its error envelope."""

    @property
    def routes(self) -> Sequence[BaseRoute]: ...

    @property
    def exception_handlers(self) -> Mapping[type[Exception], ErrorHandler]: ...


DIALECTS: dict[str, tuple[str, Dialect]] = {
    "dify": ("/dify/v1", dify),
    "conductor": ("/conductor/api", conductor),
    "langflow": ("/langflow", langflow),
    "jobs": ("/jobs", jobs),
}


def _dialect_app(module: Dialect, state: State) -> Starlette:
    """A dialect as a sub-app: its own routes and error envelope, the main app's state."""
    sub = Starlette(routes=module.routes, exception_handlers=module.exception_handlers)
    sub.state = state
    return sub


def _errors_by_prefix(root_module: Dialect | None) -> ErrorHandler:
    """The root app's error handler: a path under a dialect's prefix that no route
    matched (Starlette's mounts do not match every byte, e.g. a newline) still gets
    that dialect's error shape."""

    async def handle(request: Request, exc: Exception) -> Response:
        path = request.url.path
        for prefix, module in DIALECTS.values():
            if path == prefix or path.startswith(prefix + "/"):
                return await module.exception_handlers[_base(exc)](request, exc)
        if root_module is not None and not path.startswith("/native/"):
            return await root_module.exception_handlers[_base(exc)](request, exc)
        return await native.handle_error(request, exc)

    return handle


def _base(exc: Exception) -> type[Exception]:
    return HTTPException if isinstance(exc, HTTPException) else FlowrunError


def create_app(settings: Settings | None = None, *,
               registry: Registry = default_registry) -> Starlette:
    """A Starlette app serving flowrun's API with ``settings``.

    The native API is at the root; each dialect is mounted under its prefix (a
    client sets its base URL there). With ``root_dialect`` that dialect takes the
    root instead, and the native API moves to ``/native`` (health, metrics and the
    spec stay at the root). The web UI is at ``/ui`` either way.
    """
    settings = settings or Settings.from_env()
    root = settings.root_dialect
    if root is not None and root not in DIALECTS:
        raise ValueError(f"root_dialect must be one of {', '.join(DIALECTS)}")
    handle = _errors_by_prefix(None if root is None else DIALECTS[root][1])
    app = Starlette(exception_handlers={FlowrunError: handle, HTTPException: handle},
                    lifespan=flowrun_lifespan)
    routes: list[BaseRoute] = [Mount(prefix, app=_dialect_app(module, app.state))
                               for prefix, module in DIALECTS.values()]
    if root is None:
        routes += [*native.routes, *ui.routes("")]
    else:
        routes = [*native.ops_routes, *ui.routes("/native"), *routes,
                  Mount("/native", app=_dialect_app(native, app.state)),
                  Mount("", app=_dialect_app(DIALECTS[root][1], app.state))]
    app.router.routes.extend(routes)
    app.state.flowrun = Served(settings, registry, Metrics(), router=app.router)
    return app
