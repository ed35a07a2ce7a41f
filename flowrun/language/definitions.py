"""Workflow definitions: the YAML/JSON format as pydantic models, loaded and parsed.

``parse_definition`` turns a mapping into a ``WorkflowDefinition`` and runs the
static checks of ``flowrun/language/checks.py`` on it; every problem is reported in one
``DefinitionError`` whose ``errors`` name the node or edge, and the field, at
fault. ``check_inputs`` validates run inputs against the declared inputs, naming
each bad field.

This module never imports the engine: checks that need node types take the
registry to check against (``NodeTypes``, which ``flowrun.engine.nodes.Registry``
satisfies) as an argument.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from flowrun.errors import DefinitionError, InputError
from flowrun.language import checks, expressions, urls
from flowrun.language.inputs import input_problem

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
SIGNAL_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"  # what a wait node waits for, and a signal names
NODE_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"
NODE_OPTIONS = frozenset({"id", "type", "title", "timeout", "retry", "on_error", "default"})
InputType = Literal["string", "number", "integer", "boolean", "object", "array", "file"]


class NodeTypeInfo(Protocol):
    """What the checks need to know of one node type."""

    @property
    def required_params(self) -> list[str]: ...
    @property
    def param_names(self) -> set[str]: ...
    @property
    def accepts_extra(self) -> bool: ...
    # Branch names a node of this type can take, given its raw params; None: no branches.
    @property
    def branches(self) -> Callable[[Mapping[str, Any]], set[str]] | None: ...
    # Extra checks of a node's raw params: (param or None, message) of what is wrong.
    @property
    def check(self) -> Callable[[Mapping[str, Any], NodeTypes],
                                list[tuple[str | None, str]]] | None: ...
    # Params handed to the node as written (not expressions of this graph).
    @property
    def raw_params(self) -> frozenset[str]: ...
    # The output fields a node returns; None: free-form.
    @property
    def outputs(self) -> frozenset[str] | None: ...
    # (param, message) for each plain (non-expression) param value its type refuses.
    def param_problems(self, params: Mapping[str, Any]) -> list[tuple[str, str]]: ...


class NodeTypes(Protocol):
    """The node types a definition is checked against (a ``Registry``)."""

    def get(self, name: str) -> NodeTypeInfo | None: ...
    def names(self) -> Iterable[str]: ...


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: InputType = "string"
    required: bool = False
    default: Any = None
    description: str | None = None
    max_length: int | None = Field(default=None, ge=0)
    min_length: int | None = Field(default=None, ge=0)
    minimum: float | None = None
    maximum: float | None = None
    enum: list[Any] | None = None


class RetrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=1, ge=1, le=100)
    backoff_s: float = Field(default=0.0, ge=0, le=3600)


class NodeSpec(BaseModel):
    """A node: its options are fields, everything else is a param of its type."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(pattern=NODE_ID_PATTERN, max_length=128)
    type: str
    title: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    retry: RetrySpec | None = None
    on_error: Literal["fail", "continue", "default"] = "fail"
    default: dict[str, Any] | None = None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EdgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    target: str
    branch: str | None = None

    @pydantic.field_validator("branch", mode="before")
    @classmethod
    def _bool_branch(cls, value: Any) -> Any:
        # YAML reads `branch: true` as a boolean; it means the branch named "true".
        if isinstance(value, bool):
            return "true" if value else "false"
        return value

    @property
    def label(self) -> str:
        return f"{self.source}->{self.target}"


class ScheduleSpec(BaseModel):
    """An entry of a definition's ``schedules:`` block (also the body that creates one
    through the API): run the workflow at each slot of ``cron`` in ``timezone``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=NODE_ID_PATTERN, max_length=128)
    cron: str = Field(max_length=256)
    timezone: str = Field(default="UTC", max_length=128)
    inputs: dict[str, Any] = Field(default_factory=dict)
    catch_up: Literal["skip", "latest", "all"] = "latest"
    paused: bool = False


class WorkflowDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    description: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0)
    nodes: list[NodeSpec] = Field(min_length=1)
    edges: list[EdgeSpec] = Field(default_factory=list)
    outputs: dict[str, Any] | None = None
    # None rather than []: a definition without schedules serialises as it always did
    schedules: list[ScheduleSpec] | None = None
    # runs whose concurrency_key (an expression over inputs; a constant: the whole
    # workflow) evaluates the same run at most concurrency_limit (default 1) at once
    concurrency_key: str | None = Field(default=None, min_length=1, max_length=1000)
    concurrency_limit: int | None = Field(default=None, ge=1)
    # where every run's end is POSTed unless its request names another (language/urls.py)
    callback_url: str | None = Field(default=None, max_length=urls.MAX_URL_LENGTH)

    @pydantic.field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        return None if value is None else urls.check_url(value)

    @pydantic.field_validator("concurrency_key")
    @classmethod
    def _key_parses(cls, value: str | None) -> str | None:
        fault = None if value is None else expressions.check_syntax(value)
        if fault is not None:
            raise ValueError(fault)
        return value

    def node(self, node_id: str) -> NodeSpec:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def parse_definition(data: Any, *, source: str = "definition", registry: NodeTypes,
                     check_outputs: bool = True) -> WorkflowDefinition:
    """Validate a mapping as a workflow definition; raise DefinitionError naming each fault.

    Without ``check_outputs`` the nodes the ``outputs`` read are not checked: a graph
    or params sent for one run keep the stored outputs, which may name nodes the run
    left out or changed; such a run fails at its end, with ``output_error``.
    """
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{source}: a workflow definition must be a mapping",
                              errors=[{"field": "", "message": "must be a mapping"}])
    try:
        definition = WorkflowDefinition.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = [_describe_pydantic_error(err, data) for err in exc.errors()]
        raise DefinitionError(f"{source}: " + "; ".join(e["message"] for e in errors),
                              errors=errors) from None
    errors = checks.check_graph(definition, registry, check_outputs=check_outputs)
    errors.extend(checks.check_schedules(definition, check_inputs))
    if errors:
        raise DefinitionError(f"{source}: " + "; ".join(e["message"] for e in errors),
                              errors=errors)
    return definition


def _describe_pydantic_error(err: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    loc = list(err.get("loc", ()))
    msg = err.get("msg", "invalid")
    if len(loc) >= 2 and loc[0] == "schedules" and isinstance(loc[1], int):
        items = data.get("schedules") or []
        item = items[loc[1]] if loc[1] < len(items) else {}
        schedule_id = item.get("id") if isinstance(item, Mapping) else None
        name = f"schedule {schedule_id!r}" if schedule_id else f"schedule #{loc[1]}"
        rest = ".".join(str(p) for p in loc[2:])
        return {"schedule": schedule_id, "field": rest,
                "message": f"{name}: {rest + ': ' if rest else ''}{msg}"}
    if len(loc) >= 2 and loc[0] in {"nodes", "edges"} and isinstance(loc[1], int):
        items = data.get(loc[0]) or []
        item = items[loc[1]] if loc[1] < len(items) else {}
        rest = ".".join(str(p) for p in loc[2:])
        if loc[0] == "nodes":
            node_id = item.get("id") if isinstance(item, Mapping) else None
            name = f"node {node_id!r}" if node_id else f"node #{loc[1]}"
            return {"node": node_id, "field": rest,
                    "message": f"{name}: {rest + ': ' if rest else ''}{msg}"}
        label = (f"{item.get('source')}->{item.get('target')}" if isinstance(item, Mapping)
                 else f"#{loc[1]}")
        return {"edge": label, "field": rest,
                "message": f"edge {label}: {rest + ': ' if rest else ''}{msg}"}
    field = ".".join(str(p) for p in loc)
    return {"field": field, "message": f"{field or 'definition'}: {msg}"}


def with_graph(definition: WorkflowDefinition, *, nodes: list[Any] | None = None,
               edges: list[Any] | None = None,
               overrides: Mapping[str, Mapping[str, Any]] | None = None,
               registry: NodeTypes) -> WorkflowDefinition:
    """A copy with the graph replaced and/or node params overridden, checked like a new one."""
    data = definition.to_json()
    if nodes is not None:
        data["nodes"] = nodes
    if edges is not None:
        data["edges"] = edges
    if overrides:
        by_id = {n.get("id"): n for n in data["nodes"] if isinstance(n, dict)}
        errors = []
        for node_id, params in overrides.items():
            if node_id not in by_id:
                errors.append({"node": node_id, "field": f"overrides.{node_id}",
                               "message": f"overrides: {node_id!r} is not a node"})
            elif not isinstance(params, Mapping):
                errors.append({"node": node_id, "field": f"overrides.{node_id}",
                               "message": f"overrides.{node_id}: must be a mapping of params"})
            else:
                by_id[node_id].update(params)
        if errors:
            raise DefinitionError("; ".join(e["message"] for e in errors), errors=errors)
    return parse_definition(data, source="graph", registry=registry, check_outputs=False)


def load_file(path: Path, *, registry: NodeTypes) -> WorkflowDefinition:
    """Load one .yaml/.yml/.json workflow file."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as exc:
        raise DefinitionError(f"{path}: cannot read: {exc}",
                              errors=[{"field": "", "message": str(exc)}]) from None
    return parse_definition(data, source=str(path), registry=registry)


def workflow_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir()
                      if p.suffix in {".yaml", ".yml", ".json"} and p.is_file())
    return [path]


def load_path(path: Path, *, registry: NodeTypes) -> list[WorkflowDefinition]:
    """Load a file, or every workflow file in a folder."""
    return [load_file(p, registry=registry) for p in workflow_files(path)]


def load_folder(folder: Path, *, registry: NodeTypes) -> dict[str, WorkflowDefinition]:
    """The valid workflows among a folder's files, by name: what a ``workflow`` node of
    a file there can call when run locally (``flowrun.runs.local.FolderWorkflows``)."""
    found = {}
    for path in workflow_files(folder):
        try:
            definition = load_file(path, registry=registry)
        except DefinitionError:
            continue  # reported when that file itself is validated
        found[definition.name] = definition
    return found



def check_inputs(definition: WorkflowDefinition, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Inputs with defaults applied; InputError names every bad or unknown field."""
    errors: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for name in inputs:
        if name not in definition.inputs:
            errors.append({"field": f"inputs.{name}", "message": f"inputs.{name}: unknown input"})
    for name, spec in definition.inputs.items():
        if name not in inputs or inputs[name] is None:
            if spec.required:
                errors.append({"field": f"inputs.{name}",
                               "message": f"inputs.{name}: required"})
            elif spec.default is not None:
                result[name] = spec.default
            continue
        problem = input_problem(spec, inputs[name])
        if problem:
            errors.append({"field": f"inputs.{name}", "message": f"inputs.{name}: {problem}"})
        else:
            result[name] = inputs[name]
    if errors:
        raise InputError("; ".join(e["message"] for e in errors), errors=errors)
    return result
