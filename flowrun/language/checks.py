"""Static checks of a parsed workflow definition: what can be known before it runs.

The graph (duplicate ids, unknown node types, edges and their branches, cycles),
each node's params (plain values against the node type's declared types; values
with ``{{ }}`` are checked when they are evaluated; code is compiled, never run),
and every ``nodes.<id>.<field>`` an expression reads: the node exists, runs before
the reader, and has that output when its type declares its outputs.
``check_child_workflows`` checks the workflows nodes call by name against a known
set (the CLI's folder). Each problem names its node or edge and field.

Node types come in as an argument (``NodeTypes``), so this never imports the engine.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from flowrun.errors import DefinitionError, InputError
from flowrun.language import cron as cron_rules
from flowrun.language import expressions
from flowrun.language.inputs import input_problem

if TYPE_CHECKING:
    from flowrun.language.definitions import EdgeSpec, NodeSpec, NodeTypes, WorkflowDefinition


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


def check_schedules(definition: WorkflowDefinition,
                    check_inputs: Callable[[WorkflowDefinition, Mapping[str, Any]], Any]
                    ) -> list[dict[str, Any]]:
    """Every problem of the ``schedules:`` block, each naming its schedule: duplicate
    ids, cron expressions and time zones, and inputs (checked with ``check_inputs``
    against the workflow's declared inputs, as a run's would be)."""
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for s in definition.schedules or ():
        if s.id in seen:
            errors.append({"schedule": s.id, "field": "id",
                           "message": f"schedule {s.id!r}: duplicate id"})
        seen.add(s.id)
        errors.extend(schedule_problems(definition, s.id, s.cron, s.timezone, s.inputs,
                                        check_inputs))
    return errors


def schedule_problems(definition: WorkflowDefinition, schedule_id: str, cron: str,
                      timezone: str, inputs: Mapping[str, Any],
                      check_inputs: Callable[[WorkflowDefinition, Mapping[str, Any]], Any]
                      ) -> list[dict[str, Any]]:
    """What is wrong with one schedule of ``definition`` (cron, time zone, inputs)."""
    errors: list[dict[str, Any]] = []
    for field, problem in (("cron", cron_rules.cron_problem(cron)),
                           ("timezone", cron_rules.timezone_problem(timezone))):
        if problem:
            errors.append({"schedule": schedule_id, "field": field,
                           "message": f"schedule {schedule_id!r}: {problem}"})
    try:
        check_inputs(definition, inputs)
    except InputError as exc:
        for e in exc.errors:
            errors.append({"schedule": schedule_id, "field": e["field"],
                           "message": f"schedule {schedule_id!r}: {e['message']}"})
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
    declared = set(definition.inputs or ())
    for n in definition.nodes:
        node_type = registry.get(n.type)
        raw = node_type.raw_params if node_type is not None else frozenset()
        read = [(f"param {name!r}", name, value) for name, value in n.params.items()
                if name not in raw]
        if n.default:
            read.append(("default", "default", n.default))
        for where, field, value in read:
            for problem in _reference_problems(value, ids, registry, n.id, upstream) + \
                    _input_problems(value, declared):
                errors.append({"node": n.id, "field": field,
                               "message": f"node {n.id!r}: {where}: {problem}"})
    for key, value in (definition.outputs or {}).items() if check_outputs else ():
        for problem in _reference_problems(value, ids, registry, None, upstream) + \
                _input_problems(value, declared):
            errors.append({"field": f"outputs.{key}", "message": f"outputs.{key}: {problem}"})
    return errors


def _input_problems(value: Any, declared: set[str]) -> list[str]:
    """Inputs the expressions in ``value`` read that the workflow does not declare: a
    run is refused any input not declared, so such a read always fails (unless it tests
    for it first). Nothing to check when it declares none."""
    if not declared:
        return []
    problems: dict[str, None] = {}
    for text in _strings(value):
        for ref in expressions.input_references(text):
            if ref.node in declared or ref.guarded or \
                    (not ref.node.startswith("_") and hasattr(dict, ref.node)):
                continue
            close = difflib.get_close_matches(ref.node, sorted(declared), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems[f"inputs.{ref.node}: the workflow declares no input {ref.node!r}"
                     f"{hint}"] = None
    return list(problems)


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
    # workflow nodes whose child declares its outputs: (child's name, node, output names)
    children: dict[str, tuple[str, NodeSpec, set[str]]] = {}
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
            value = (given or {}).get(key)
            if value is not None and \
                    not any(expressions.is_expression(t) for t in _strings(value)):
                wrong = input_problem(spec, value)  # a literal: known to fail now
                if wrong:
                    errors.append({"node": n.id, "field": f"inputs.{key}",
                                   "message": f"node {n.id!r}: {where_given}: input {key!r} "
                                              f"of workflow {name!r}: {wrong}"})
        if n.type == "workflow" and child.outputs:
            children[n.id] = (name, n, set(child.outputs))
    errors += _child_output_problems(definition, children)
    if errors:
        raise DefinitionError("; ".join(e["message"] for e in errors), errors=errors)


def _child_output_problems(definition: WorkflowDefinition,
                           children: Mapping[str, tuple[str, NodeSpec, set[str]]]
                           ) -> list[dict[str, Any]]:
    """Reads of a ``workflow`` node's output that its child does not declare (a workflow
    node's outputs are its child run's outputs)."""
    errors: list[dict[str, Any]] = []
    if not children:
        return errors
    read: list[tuple[str, str | None, str, Any]] = [
        (f"node {n.id!r}: param {k!r}", n.id, k, v) for n in definition.nodes
        for k, v in n.params.items()]
    read += [(f"outputs.{k}", None, f"outputs.{k}", v)
             for k, v in (definition.outputs or {}).items()]
    for where, reader, field, value in read:
        for text in _strings(value):
            for ref in expressions.node_references(text):
                found = children.get(ref.node)
                if found is None or ref.field is None:
                    continue
                name, node, declared = found
                allowed = declared | ({"error"} if node.on_error != "fail" else set()) | \
                    set(node.default or {})
                if ref.field in allowed or \
                        (not ref.field.startswith("_") and hasattr(dict, ref.field)):
                    continue
                errors.append({**({"node": reader} if reader else {}), "field": field,
                               "message": f"{where}: {_shown(ref)}: workflow {name!r} (run "
                                          f"by node {ref.node!r}) has no output "
                                          f"{ref.field!r} (it has "
                                          f"{', '.join(sorted(declared))})"})
    return errors


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
