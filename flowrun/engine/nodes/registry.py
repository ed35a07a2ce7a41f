"""The node type registry: built-in and custom node types by name.

A node type is an async function ``fn(ctx, **params) -> dict``. Its keyword
parameters are the node's params: the registry derives a pydantic model from
the signature, so a definition can be checked for missing or unknown params on
load and the evaluated params are type-checked before every call. The same
model checks the params a definition writes as plain values (no ``{{ }}``)
when it is loaded. A type may declare the output fields it returns, so that
``nodes.<id>.<field>`` in a definition can be checked against them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, get_type_hints

import pydantic

from flowrun.errors import NodeFailure
from flowrun.language import expressions

if TYPE_CHECKING:
    from flowrun.engine.executor import GraphRun, RunObserver
    from flowrun.engine.node_services import NodeServices
    from flowrun.language.definitions import NodeTypes, WorkflowDefinition

logger = logging.getLogger(__name__)

NodeFunc = Callable[..., Awaitable[Mapping[str, Any] | None]]
# (param, message) for each problem; param None when no single param is at fault.
NodeCheck = Callable[[Mapping[str, Any], "NodeTypes"], list[tuple[str | None, str]]]


class GraphRunner(Protocol):
    """Runs a sub-graph inside a running node (what the executor gives ``NodeContext``)."""

    def __call__(self, definition: WorkflowDefinition, *, inputs: Mapping[str, Any],
                 scope: Mapping[str, Any], observer: RunObserver,
                 services: NodeServices | None) -> Awaitable[GraphRun]: ...


@dataclass
class NodeContext:
    """What a running node may use besides its params.

    ids, text streaming (``emit_text``), logging (``log``, kept in the node's
    process data), the services of the instance it runs in (code sandbox, HTTP
    policy, LLM defaults, child runs), sub-graphs run in this node (``run_graph``,
    for ``map``), and ``ending()``: True once the run is being stopped (stop,
    failure, deadline), False when the process is merely shutting down.
    Cancellation itself arrives as anyio cancellation at any await.
    """

    run_id: str
    node_id: str
    attempt: int
    emit_text_cb: Callable[[str], Awaitable[None]] | None = None
    logs: list[str] = field(default_factory=list)
    # None: no instance around it (each node then uses NodeServices() defaults).
    services: NodeServices | None = None
    ending: Callable[[], bool] = lambda: False
    on_error: str = "fail"
    default: Mapping[str, Any] | None = None
    observer: RunObserver | None = None
    process_data: dict[str, Any] = field(default_factory=dict)
    expression_context: Mapping[str, Any] = field(default_factory=dict)
    run_graph_cb: GraphRunner | None = None
    # For ``wait`` nodes: the signals this run has received (name -> data), and when
    # this node first started waiting (None: it has not waited yet).
    signals: Mapping[str, Any] = field(default_factory=dict)
    waiting_since: float | None = None

    async def emit_text(self, text: str) -> None:
        """Stream a piece of text from this node (a ``text_chunk`` event)."""
        if self.emit_text_cb is not None:
            await self.emit_text_cb(text)

    async def run_graph(self, definition: WorkflowDefinition, *, inputs: Mapping[str, Any],
                        scope: Mapping[str, Any], observer: RunObserver,
                        services: NodeServices | None = None) -> GraphRun:
        """Run ``definition`` to its end inside this node, under this run's id, reporting
        its nodes to ``observer``; ``scope`` adds names to its expressions, ``services``
        (default: this node's) is what its nodes use. Cancelling this node cancels it."""
        if self.run_graph_cb is None:
            raise NodeFailure("this node runs a sub-graph, which needs a running executor",
                              code="subgraph_unavailable")
        return await self.run_graph_cb(
            definition, inputs=inputs, scope=scope, observer=observer,
            services=services if services is not None else self.services)

    def log(self, message: str) -> None:
        """Record a line in the node's process data and the server log."""
        self.logs.append(message)
        logger.info("run %s node %s: %s", self.run_id, self.node_id, message)


@dataclass(frozen=True)
class NodeType:
    """A registered node type."""

    name: str
    func: NodeFunc
    params_model: type[pydantic.BaseModel]
    accepts_extra: bool = False
    # Branch names a node of this type can take, given its raw params; None: no branches.
    branches: Callable[[Mapping[str, Any]], set[str]] | None = None
    # Which branch a finished node took, given its outputs.
    select_branch: Callable[[Mapping[str, Any]], str] | None = None
    # Params handed over as written, not evaluated first (e.g. a map's inline graph).
    raw_params: frozenset[str] = frozenset()
    # Extra definition-time checks of a node's raw params: (param, message) of what is wrong.
    check: NodeCheck | None = None
    # The output fields a node of this type returns; None: free-form (not checked).
    outputs: frozenset[str] | None = None

    @property
    def required_params(self) -> list[str]:
        return [f.alias or n for n, f in self.params_model.model_fields.items()
                if f.is_required()]

    @property
    def param_names(self) -> set[str]:
        return {f.alias or n for n, f in self.params_model.model_fields.items()}

    def param_problems(self, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(param, message) for each param written as a plain value that its declared type
        refuses. A value holding an expression is checked only once evaluated, when the
        node runs; missing and unknown params are the definition check's to report."""
        known = self.param_names
        plain = {name: value for name, value in params.items()
                 if (name in known or self.accepts_extra) and
                 (name in self.raw_params or not _holds_expression(value))}
        try:
            self.params_model.model_validate(plain)
        except pydantic.ValidationError as exc:
            problems = []
            for err in exc.errors():
                loc = err["loc"]
                if not loc or loc[0] not in plain or (
                        len(loc) == 1 and err["type"] in {"missing", "extra_forbidden"}):
                    continue
                where = ".".join(map(str, loc[1:]))
                problems.append((str(loc[0]), f"{where + ': ' if where else ''}{err['msg']} "
                                              f"(got {_excerpt(err.get('input'))})"))
            return problems
        return []

    def call_kwargs(self, validated: pydantic.BaseModel) -> dict[str, Any]:
        """Validated params as keyword arguments, under their declared names."""
        return {**validated.model_dump(by_alias=True), **(validated.model_extra or {})}


def _holds_expression(value: Any) -> bool:
    stack = [value]  # not recursive: a param may nest deeper than the recursion limit
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if expressions.is_expression(item):
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _excerpt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _params_model(name: str, func: NodeFunc) -> tuple[type[pydantic.BaseModel], bool]:
    sig = inspect.signature(func)
    hints = get_type_hints(func, include_extras=True)  # keep Annotated constraints
    fields: dict[str, Any] = {}
    accepts_extra = False
    params = list(sig.parameters.values())[1:]  # the first parameter is the context
    for p in params:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_extra = True
            continue
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        annotation = hints.get(p.name, Any)
        default = ... if p.default is inspect.Parameter.empty else p.default
        # A param may be named like a BaseModel attribute ("json"): store it aside.
        field_name = f"{p.name}_" if hasattr(pydantic.BaseModel, p.name) else p.name
        fields[field_name] = (annotation, pydantic.Field(default, alias=p.name))
    config = pydantic.ConfigDict(extra="allow" if accepts_extra else "forbid",
                                 arbitrary_types_allowed=True, populate_by_name=False)
    model = pydantic.create_model(f"{name}_params", __config__=config, **fields)
    return model, accepts_extra


class Registry:
    """Node types by name; ``register`` is what ``@flowrun.node`` calls."""

    def __init__(self) -> None:
        self._types: dict[str, NodeType] = {}

    def register(self, name: str, func: NodeFunc, *,
                 branches: Callable[[Mapping[str, Any]], set[str]] | None = None,
                 select_branch: Callable[[Mapping[str, Any]], str] | None = None,
                 raw_params: frozenset[str] = frozenset(),
                 check: NodeCheck | None = None,
                 outputs: Iterable[str] | None = None) -> NodeType:
        """Add (or replace) the node type ``name``; ``outputs``: the fields its nodes
        return, for definitions to be checked against (None: free-form)."""
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"node type {name!r}: {func!r} must be an async function")
        model, extra = _params_model(name, func)
        node_type = NodeType(name, func, model, extra, branches, select_branch, raw_params,
                             check, None if outputs is None else frozenset(outputs))
        self._types[name] = node_type
        return node_type

    def copy(self) -> Registry:
        """A new registry holding the same types (to add types without touching this one)."""
        clone = Registry()
        clone._types = dict(self._types)
        return clone

    def get(self, name: str) -> NodeType | None:
        return self._types.get(name)

    def names(self) -> Iterable[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types


registry = Registry()


def node(name: str, *, outputs: Iterable[str] | None = None
         ) -> Callable[[NodeFunc], NodeFunc]:
    """Register an async function as the node type ``name``.

    ``async def fn(ctx: NodeContext, *, param: T = default, ...) -> dict``; ``outputs``
    names the keys of that dict, so that definitions reading another key are refused.
    """

    def decorate(func: NodeFunc) -> NodeFunc:
        registry.register(name, func, outputs=outputs)
        return func

    return decorate
