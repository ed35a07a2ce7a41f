"""Workflow definitions: the YAML/JSON format as pydantic models, and its checks.

``parse_definition`` turns a mapping into a ``WorkflowDefinition`` and checks
everything that can be known before a run: the graph, each node's params (plain
values against the node type's declared types; ``{{ }}`` values are checked
when evaluated), and every ``nodes.<id>.<field>`` an expression reads (the node
exists, runs before the reader, and has that output when its type declares its
outputs). Every problem is reported in one ``DefinitionError`` whose ``errors``
name the node or edge, and the field, at fault. ``check_child_workflows`` checks
the workflows that nodes call by name against a known set (the CLI's folder).
``check_inputs`` validates run inputs against the declared inputs, naming each
bad field.

This module never imports the engine: checks that need node types take the
registry to check against (``NodeTypes``, which ``flowrun.engine.nodes.Registry``
satisfies) as an argument.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from flowrun import expressions
from flowrun.errors import DefinitionError, InputError

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
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


class WorkflowDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    description: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0)
    nodes: list[NodeSpec] = Field(min_length=1)
    edges: list[EdgeSpec] = Field(default_factory=list)
    outputs: dict[str, Any] | None = None

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
    errors = check_graph(definition, registry, check_outputs=check_outputs)
    if errors:
        raise DefinitionError(f"{source}: " + "; ".join(e["message"] for e in errors),
                              errors=errors)
    return definition


def _describe_pydantic_error(err: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    loc = list(err.get("loc", ()))
    msg = err.get("msg", "invalid")
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


def check_graph(definition: WorkflowDefinition, registry: NodeTypes, *,
                check_outputs: bool = True) -> list[dict[str, Any]]:
    """Every graph problem of a parsed definition, each naming its node or edge."""
    errors: list[dict[str, Any]] = []
    ids: dict[str, NodeSpec] = {}
    for n in definition.nodes:
        if n.id in ids:
            errors.append({"node": n.id, "message": f"node {n.id!r}: duplicate id"})
        ids[n.id] = n
    for n in definition.nodes:
        errors.extend(_check_node(n, registry))
    for e in definition.edges:
        errors.extend(_check_edge(e, ids, registry))
    if not errors:
        cycle = find_cycle(list(ids), definition.edges)
        if cycle:
            path = " -> ".join(cycle)
            errors.append({"node": cycle[0], "message": f"cycle: {path}"})
    for key, value in (definition.outputs or {}).items():
        problem = _syntax_problems(value)
        if problem:
            errors.append({"field": f"outputs.{key}", "message": f"outputs.{key}: {problem}"})
    errors.extend(_check_references(definition, ids, registry, check_outputs=check_outputs))
    return errors


def _check_node(n: NodeSpec, registry: NodeTypes) -> list[dict[str, Any]]:
    node_type = registry.get(n.type)
    if node_type is None:
        known = ", ".join(registry.names())
        return [{"node": n.id, "message": f"node {n.id!r}: unknown node type {n.type!r} "
                                          f"(known: {known})"}]
    errors: list[dict[str, Any]] = []
    params = n.params
    for name in node_type.required_params:
        if name not in params:
            errors.append({"node": n.id, "field": name,
                           "message": f"node {n.id!r}: missing required param {name!r}"})
    if not node_type.accepts_extra:
        for name in sorted(set(params) - node_type.param_names):
            errors.append({"node": n.id, "field": name,
                           "message": f"node {n.id!r}: unknown param {name!r} for type "
                                      f"{n.type!r}"})
    for name, value in params.items():
        problem = _syntax_problems(value)
        if problem:
            errors.append({"node": n.id, "field": name,
                           "message": f"node {n.id!r}: param {name!r}: {problem}"})
    for name, problem in node_type.param_problems(params):
        errors.append({"node": n.id, "field": name,
                       "message": f"node {n.id!r}: param {name!r}: {problem}"})
    if node_type.check is not None:
        for field, message in node_type.check(params, registry):
            if field:
                errors.append({"node": n.id, "field": field,
                               "message": f"node {n.id!r}: param {field!r}: {message}"})
            else:
                errors.append({"node": n.id, "message": f"node {n.id!r}: {message}"})
    if n.on_error == "default" and n.default is None:
        errors.append({"node": n.id, "field": "default",
                       "message": f"node {n.id!r}: on_error 'default' needs a 'default' mapping"})
    return errors


def _check_edge(e: EdgeSpec, ids: Mapping[str, NodeSpec],
                registry: NodeTypes) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    for end in ("source", "target"):
        node_id = getattr(e, end)
        if node_id not in ids:
            errors.append({"edge": e.label, "message": f"edge {e.label}: {end} {node_id!r} "
                                                       f"is not a node"})
    if errors or e.branch is None:
        return errors
    source = ids[e.source]
    node_type = registry.get(source.type)
    if node_type is None:
        return errors
    if node_type.branches is None:
        errors.append({"edge": e.label, "message": f"edge {e.label}: node {e.source!r} of type "
                                                   f"{source.type!r} has no branches, "
                                                   f"but the edge names {e.branch!r}"})
        return errors
    allowed = node_type.branches(source.params)
    if e.branch not in allowed:
        errors.append({"edge": e.label, "message": f"edge {e.label}: bad branch {e.branch!r} "
                                                   f"(node {e.source!r} has "
                                                   f"{', '.join(sorted(allowed))})"})
    return errors


def _syntax_problems(value: Any) -> str | None:
    if isinstance(value, str):
        return expressions.check_syntax(value) if expressions.is_expression(value) else None
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            problem = _syntax_problems(item)
            if problem:
                return problem
    return None


def _check_references(definition: WorkflowDefinition, ids: Mapping[str, NodeSpec],
                      registry: NodeTypes, *, check_outputs: bool = True
                      ) -> list[dict[str, Any]]:
    """Every ``nodes.<id>[.<field>]`` a node's params or ``default``, or the outputs, read.

    A node's expressions are evaluated when it starts (its ``default`` when it has
    failed), and an output of a node that has not finished is undefined there: so a
    node may read only its ancestors, unless it tests for the node first (``is
    defined``, ``| default``). The run's outputs are evaluated at its end and may
    read any node.
    """
    errors: list[dict[str, Any]] = []
    upstream = _Ancestors(ids, definition.edges)
    for n in definition.nodes:
        node_type = registry.get(n.type)
        raw = node_type.raw_params if node_type is not None else frozenset()
        read = [(f"param {name!r}", name, value) for name, value in n.params.items()
                if name not in raw]
        if n.default:
            read.append(("default", "default", n.default))
        for where, field, value in read:
            for problem in _reference_problems(value, ids, registry, n.id, upstream):
                errors.append({"node": n.id, "field": field,
                               "message": f"node {n.id!r}: {where}: {problem}"})
    for key, value in (definition.outputs or {}).items() if check_outputs else ():
        for problem in _reference_problems(value, ids, registry, None, upstream):
            errors.append({"field": f"outputs.{key}", "message": f"outputs.{key}: {problem}"})
    return errors


def output_problems(value: Any, definition: WorkflowDefinition,
                    registry: NodeTypes) -> list[str]:
    """What is wrong with the node outputs the expressions in ``value`` read once
    ``definition`` has run, as its outputs are (e.g. a ``map`` node's ``output``)."""
    ids = {n.id: n for n in definition.nodes}
    return _reference_problems(value, ids, registry, None, _Ancestors(ids, definition.edges))


class _Ancestors:
    """The nodes that run before a node: those with an edge path to it (computed once)."""

    def __init__(self, ids: Iterable[str], edges: Iterable[EdgeSpec]) -> None:
        self._preds: dict[str, list[str]] = {n: [] for n in ids}
        for e in edges:
            if e.source in self._preds and e.target in self._preds:
                self._preds[e.target].append(e.source)
        self._found: dict[str, set[str]] = {}

    def of(self, node_id: str) -> set[str]:
        if node_id not in self._found:
            seen: set[str] = set()
            stack = list(self._preds.get(node_id, ()))
            while stack:
                pred = stack.pop()
                if pred not in seen:
                    seen.add(pred)
                    stack.extend(self._preds[pred])
            self._found[node_id] = seen
        return self._found[node_id]


def _reference_problems(value: Any, ids: Mapping[str, NodeSpec], registry: NodeTypes,
                        reader: str | None, upstream: _Ancestors) -> list[str]:
    """What is wrong with the node outputs the expressions in ``value`` read; ``reader``:
    the node whose param it is (None: the run's outputs, read once every node is done)."""
    problems: dict[str, None] = {}  # ordered, without repeats
    for text in _strings(value):
        for ref in expressions.node_references(text):
            shown = _shown(ref)
            spec = ids.get(ref.node)
            if spec is None:
                if not ref.node.startswith("_") and hasattr(dict, ref.node):
                    continue  # nodes.get(...), nodes.items(): the mapping's own methods
                close = difflib.get_close_matches(ref.node, list(ids), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems[f"{shown}: there is no node {ref.node!r}{hint}"] = None
                continue
            if reader is not None and not ref.guarded and ref.node not in upstream.of(reader):
                if ref.node == reader:
                    problems[f"{shown}: a node cannot read its own outputs"] = None
                else:
                    problems[f"{shown}: node {ref.node!r} is not upstream of {reader!r} (no "
                             f"edge path leads from it here), so it may not have run when "
                             f"{reader!r} starts; add an edge, or test it with 'is defined'"
                             ] = None
                continue
            fields = _output_fields(spec, registry)
            if ref.field is not None and fields is not None and ref.field not in fields \
                    and (ref.field.startswith("_") or not hasattr(dict, ref.field)):
                problems[f"{shown}: node {ref.node!r} of type {spec.type!r} has no output "
                         f"{ref.field!r} (it has {', '.join(sorted(fields))})"] = None
    return list(problems)


def _strings(value: Any) -> Iterator[str]:
    """The strings in a param value, as evaluation walks it (dict values, list items);
    not recursive, since a value may nest deeper than the recursion limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, Mapping):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def _shown(ref: expressions.NodeReference) -> str:
    text = "nodes" + _key(ref.node)
    return text + _key(ref.field) if ref.field is not None else text


def _key(name: str) -> str:
    return f".{name}" if name.isidentifier() else f"[{name!r}]"


def _output_fields(spec: NodeSpec, registry: NodeTypes) -> set[str] | None:
    """The fields a node's outputs may hold: its type's, and what on_error puts there
    instead (``error``, or the ``default`` mapping); None when its type does not say."""
    node_type = registry.get(spec.type)
    if node_type is None or node_type.outputs is None:
        return None
    fields = set(node_type.outputs)
    if spec.on_error != "fail":
        fields.add("error")
        fields.update(spec.default or {})
    return fields


def check_child_workflows(definition: WorkflowDefinition,
                          known: Mapping[str, WorkflowDefinition], *, where: str,
                          registry: NodeTypes) -> None:
    """Check the workflows that ``workflow`` and ``map`` nodes name as plain text against
    ``known`` (by name; ``where`` says where they were looked for), the inputs such a
    node gives by name against the child's, and what a map's ``output`` reads of the
    child's nodes; DefinitionError names each fault."""
    errors: list[dict[str, Any]] = []
    for n in definition.nodes:
        params = n.params
        name = params.get("workflow")
        if n.type not in {"workflow", "map"} or not isinstance(name, str) or \
                expressions.is_expression(name):
            continue
        child = known.get(name)
        if child is None:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append({"node": n.id, "field": "workflow",
                           "message": f"node {n.id!r}: param 'workflow': no workflow {name!r} "
                                      f"in {where}{hint}"})
            continue
        if n.type == "map" and params.get("output") is not None:
            for problem in output_problems(params["output"], child, registry):
                errors.append({"node": n.id, "field": "output",
                               "message": f"node {n.id!r}: param 'output': {problem}"})
        given = params.get("inputs")
        where_given = "param 'inputs'"
        if given is None and n.type == "map":
            given = {"item": None}  # what a map hands each item's run by default
            where_given = "param 'inputs' (default: {item: '{{ item }}'})"
        if not isinstance(given, Mapping | None):
            continue  # an expression: its keys are known only when it runs
        for key in sorted(set(given or {}) - set(child.inputs)):
            errors.append({"node": n.id, "field": f"inputs.{key}",
                           "message": f"node {n.id!r}: {where_given}: workflow {name!r} has "
                                      f"no input {key!r}"})
        for key, spec in child.inputs.items():
            if spec.required and key not in (given or {}):
                errors.append({"node": n.id, "field": f"inputs.{key}",
                               "message": f"node {n.id!r}: {where_given}: workflow {name!r} "
                                          f"needs input {key!r}"})
    if errors:
        raise DefinitionError("; ".join(e["message"] for e in errors), errors=errors)


def find_cycle(node_ids: Iterable[str], edges: Iterable[EdgeSpec]) -> list[str] | None:
    """A cycle as a closed path of node ids, or None (iterative DFS)."""
    succ: dict[str, list[str]] = {n: [] for n in node_ids}
    for e in edges:
        succ.setdefault(e.source, []).append(e.target)
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in succ:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = [start]
        state[start] = 1
        while stack:
            node_id, i = stack[-1]
            nexts = succ.get(node_id, [])
            if i < len(nexts):
                stack[-1] = (node_id, i + 1)
                nxt = nexts[i]
                if state.get(nxt) == 1:
                    return path[path.index(nxt):] + [nxt]
                if not state.get(nxt):
                    state[nxt] = 1
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                state[node_id] = 2
                stack.pop()
                path.pop()
    return None


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
    a file there can call when run locally (``flowrun.local.FolderWorkflows``)."""
    found = {}
    for path in workflow_files(folder):
        try:
            definition = load_file(path, registry=registry)
        except DefinitionError:
            continue  # reported when that file itself is validated
        found[definition.name] = definition
    return found


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
    "object": (dict,), "array": (list,), "file": (dict,),
}


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
        problem = _input_problem(spec, inputs[name])
        if problem:
            errors.append({"field": f"inputs.{name}", "message": f"inputs.{name}: {problem}"})
        else:
            result[name] = inputs[name]
    if errors:
        raise InputError("; ".join(e["message"] for e in errors), errors=errors)
    return result


def _input_problem(spec: InputSpec, value: Any) -> str | None:
    is_bool = isinstance(value, bool)
    if not isinstance(value, _PY_TYPES[spec.type]) or (is_bool and spec.type != "boolean"):
        return f"expected {spec.type}, got {_json_type(value)}"
    if spec.type == "integer" and isinstance(value, float):
        return "expected integer, got number"
    if spec.type == "file" and isinstance(value, dict):
        if "transfer_method" not in value or not ({"url", "upload_file_id"} & value.keys()):
            return "a file needs transfer_method and url or upload_file_id"
    if isinstance(value, str | list):
        if spec.max_length is not None and len(value) > spec.max_length:
            return f"longer than max_length {spec.max_length}"
        if spec.min_length is not None and len(value) < spec.min_length:
            return f"shorter than min_length {spec.min_length}"
    if isinstance(value, int | float) and not is_bool:
        if spec.minimum is not None and value < spec.minimum:
            return f"less than minimum {spec.minimum:g}"
        if spec.maximum is not None and value > spec.maximum:
            return f"greater than maximum {spec.maximum:g}"
    if spec.enum is not None and value not in spec.enum:
        return f"must be one of {spec.enum}"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
