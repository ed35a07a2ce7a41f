"""Definition validation: each error kind names its culprit; input checks name each field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowrun.engine.nodes import registry
from flowrun.errors import DefinitionError, InputError
from flowrun.language.checks import check_child_workflows
from flowrun.language.definitions import (
    check_inputs,
    load_path,
    parse_definition,
    with_graph,
)
from tests.imports import SERVER_STACK, modules_after

EXAMPLES = Path(__file__).parents[2] / "examples"


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        parse_definition({"name": "wf", **data}, registry=registry)
    return [e["message"] for e in info.value.errors]


def test_examples_are_valid() -> None:
    names = {d.name for d in load_path(EXAMPLES, registry=registry)}
    assert {"hello", "branching", "slow", "fanout", "text-stats", "fetch-json", "summarize",
            "word-lengths", "report-pipeline"} <= names


def test_unknown_node_type() -> None:
    [message] = errors_of({"nodes": [{"id": "x", "type": "teleport"}]})
    assert message.startswith("node 'x': unknown node type 'teleport' (known: ")
    assert "if_else, " in message and "template" in message


def test_duplicate_id() -> None:
    msgs = errors_of({"nodes": [{"id": "x", "type": "template", "template": "a"},
                                {"id": "x", "type": "template", "template": "b"}]})
    assert msgs == ["node 'x': duplicate id"]


def test_edge_to_missing_node() -> None:
    msgs = errors_of({"nodes": [{"id": "x", "type": "template", "template": "a"}],
                      "edges": [{"source": "x", "target": "ghost"}]})
    assert msgs == ["edge x->ghost: target 'ghost' is not a node"]


def test_cycle_names_the_path() -> None:
    nodes = [{"id": n, "type": "template", "template": n} for n in "abc"]
    edges = [{"source": "a", "target": "b"}, {"source": "b", "target": "c"},
             {"source": "c", "target": "b"}]
    assert errors_of({"nodes": nodes, "edges": edges}) == ["cycle: b -> c -> b"]


def test_bad_branch_name() -> None:
    msgs = errors_of({"nodes": [{"id": "c", "type": "if_else", "condition": "x"},
                                {"id": "t", "type": "template", "template": "t"}],
                      "edges": [{"source": "c", "target": "t", "branch": "maybe"}]})
    assert msgs == ["edge c->t: bad branch 'maybe' (node 'c' has false, true)"]


def test_branch_on_a_node_without_branches() -> None:
    msgs = errors_of({"nodes": [{"id": "a", "type": "template", "template": "a"},
                                {"id": "t", "type": "template", "template": "t"}],
                      "edges": [{"source": "a", "target": "t", "branch": "true"}]})
    assert msgs == ["edge a->t: node 'a' of type 'template' has no branches, but the edge "
                    "names 'true'"]


def test_yaml_boolean_branch_means_the_named_branch() -> None:
    d = parse_definition({"name": "wf", "nodes": [
        {"id": "c", "type": "if_else", "condition": "x"},
        {"id": "t", "type": "template", "template": "t"}],
        "edges": [{"source": "c", "target": "t", "branch": True}]}, registry=registry)
    assert d.edges[0].branch == "true"


def test_missing_required_param() -> None:
    assert errors_of({"nodes": [{"id": "s", "type": "sleep"}]}) == [
        "node 's': missing required param 'seconds'"]


def test_unknown_param_is_a_typo_not_ignored() -> None:
    assert errors_of({"nodes": [{"id": "t", "type": "template", "tempalte": "x"}]}) == [
        "node 't': missing required param 'template'",
        "node 't': unknown param 'tempalte' for type 'template'"]


def test_expression_syntax_error() -> None:
    msgs = errors_of({"nodes": [{"id": "t", "type": "template", "template": "{{ inputs. }}"}]})
    assert len(msgs) == 1 and msgs[0].startswith("node 't': param 'template': expression syntax")


def test_missing_node_id_and_bad_name() -> None:
    msgs = errors_of({"name": "Bad Name!", "nodes": [{"type": "template", "template": "x"}]})
    assert any(m.startswith("name:") for m in msgs)
    assert any(m.startswith("node #0: id:") for m in msgs)


def test_on_error_default_requires_default() -> None:
    msgs = errors_of({"nodes": [{"id": "t", "type": "template", "template": "x",
                                 "on_error": "default"}]})
    assert msgs == ["node 't': on_error 'default' needs a 'default' mapping"]


def test_overrides_and_graph_replacement_are_checked() -> None:
    base = parse_definition({"name": "wf", "nodes": [{"id": "t", "type": "template",
                                                      "template": "x"}]}, registry=registry)
    changed = with_graph(base, overrides={"t": {"template": "y"}}, registry=registry)
    assert changed.nodes[0].params == {"template": "y"} and base.nodes[0].params["template"] == "x"
    with pytest.raises(DefinitionError, match="'ghost' is not a node"):
        with_graph(base, overrides={"ghost": {"template": "y"}}, registry=registry)
    with pytest.raises(DefinitionError, match="cycle"):
        with_graph(base, nodes=[{"id": "a", "type": "template", "template": "a"}],
                   edges=[{"source": "a", "target": "a"}], registry=registry)


SPEC = parse_definition({"name": "wf", "nodes": [{"id": "t", "type": "template",
                                                  "template": "x"}],
                         "inputs": {"s": {"type": "string", "required": True, "max_length": 3},
                                    "n": {"type": "integer", "default": 5, "minimum": 1},
                                    "f": {"type": "number"}, "b": {"type": "boolean"},
                                    "o": {"type": "object"}, "a": {"type": "array"},
                                    "file": {"type": "file"}}}, registry=registry)


def test_inputs_defaults_and_types() -> None:
    assert check_inputs(SPEC, {"s": "ab", "f": 1}) == {"s": "ab", "n": 5, "f": 1}


@pytest.mark.parametrize(("inputs", "field", "message"), [
    ({}, "inputs.s", "required"),
    ({"s": 1}, "inputs.s", "expected string, got integer"),
    ({"s": "long"}, "inputs.s", "longer than max_length 3"),
    ({"s": "a", "n": True}, "inputs.n", "expected integer, got boolean"),
    ({"s": "a", "n": 1.5}, "inputs.n", "expected integer, got number"),
    ({"s": "a", "n": 0}, "inputs.n", "less than minimum 1"),
    ({"s": "a", "f": "1"}, "inputs.f", "expected number, got string"),
    ({"s": "a", "b": "yes"}, "inputs.b", "expected boolean, got string"),
    ({"s": "a", "o": []}, "inputs.o", "expected object, got array"),
    ({"s": "a", "a": {}}, "inputs.a", "expected array, got object"),
    ({"s": "a", "file": {"type": "image"}}, "inputs.file",
     "a file needs transfer_method and url or upload_file_id"),
    ({"s": "a", "zzz": 1}, "inputs.zzz", "unknown input"),
])
def test_input_errors_name_the_field(inputs: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        check_inputs(SPEC, inputs)
    assert {"field": field, "message": f"{field}: {message}"} in info.value.errors


def test_definitions_import_without_the_engine_or_the_server() -> None:
    loaded = modules_after("import flowrun.language.definitions")
    assert not {m for m in loaded if m.startswith("flowrun.engine")}
    assert not loaded & {"flowrun.app", "flowrun.runs.service", "flowrun.store", *SERVER_STACK}


# --- what expressions read of other nodes ---------------------------------------------

def two(template: str, **b: Any) -> dict[str, Any]:
    """Node a, then node b whose template is ``template``."""
    return {"nodes": [{"id": "a", "type": "template", "template": "hi"},
                      {"id": "b", "type": "template", "template": template, **b}],
            "edges": [{"source": "a", "target": "b"}]}


def test_reading_a_node_that_does_not_exist() -> None:
    assert errors_of(two("{{ nodes.zzz.text }}")) == [
        "node 'b': param 'template': nodes.zzz.text: there is no node 'zzz'"]
    assert errors_of(two("x {{ nodes['aa'] }}")) == [
        "node 'b': param 'template': nodes.aa: there is no node 'aa' (did you mean 'a'?)"]


def test_reading_an_output_the_node_type_does_not_have() -> None:
    expected = ["node 'b': param 'template': nodes.a.txt: node 'a' of type 'template' has "
                "no output 'txt' (it has text)"]
    assert errors_of(two("{{ nodes.a.txt }}")) == expected
    assert errors_of(two("{{ nodes['a']['txt'] | upper }}")) == expected
    assert errors_of(two("{% if nodes.a.txt %}x{% endif %}")) == expected


def test_errors_carry_the_node_and_the_field() -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition({"name": "wf", **two("{{ nodes.a.txt }}")}, registry=registry)
    assert [(e["node"], e["field"]) for e in info.value.errors] == [("b", "template")]


def test_what_each_built_in_type_outputs() -> None:
    reads = {"template": "text", "sleep": "slept", "if_else": "result", "switch": "branch",
             "http": "status", "llm": "usage", "map": "results"}
    def outputs(name: str) -> frozenset[str] | None:
        found = registry.get(name)
        assert found is not None, name
        return found.outputs

    for node_type, field in reads.items():
        assert field in (outputs(node_type) or ()), node_type
    assert outputs("llm") == frozenset({"text", "usage", "model", "finish_reason"})
    assert outputs("http") == frozenset({"status", "headers", "body", "url"})
    assert outputs("code") is None and outputs("workflow") is None


def test_free_form_outputs_are_not_checked() -> None:
    parse_definition({"name": "wf", "nodes": [
        {"id": "py", "type": "code", "code": "def main():\n    return {'n': 1}"},
        {"id": "w", "type": "workflow", "workflow": "other"},
        {"id": "t", "type": "template", "template": "{{ nodes.py.n }} {{ nodes.w.any.thing }}"}],
        "edges": [{"source": "py", "target": "t"}, {"source": "w", "target": "t"}]},
        registry=registry)


def test_a_custom_type_declares_its_outputs() -> None:
    async def shout(ctx: Any, *, text: str) -> dict[str, Any]:
        return {"loud": text.upper()}

    custom = registry.copy()
    custom.register("shout", shout, outputs={"loud"})
    custom.register("vague", shout)
    data: dict[str, Any] = {"name": "wf", "nodes": [{"id": "s", "type": "shout", "text": "x"},
                                    {"id": "v", "type": "vague", "text": "x"},
                                    {"id": "t", "type": "template",
                                     "template": "{{ nodes.s.loud }} {{ nodes.v.whatever }}"}],
            "edges": [{"source": "s", "target": "t"}, {"source": "v", "target": "t"}]}
    parse_definition(data, registry=custom)
    data["nodes"][2]["template"] = "{{ nodes.s.quiet }}"
    with pytest.raises(DefinitionError, match="node 's' of type 'shout' has no output 'quiet'"):
        parse_definition(data, registry=custom)


def test_on_error_adds_the_outputs_it_puts_in_place() -> None:
    continued = two("{{ nodes.a.error.message }}")
    continued["nodes"][0]["on_error"] = "continue"
    parse_definition({"name": "wf", **continued}, registry=registry)
    defaulted = two("{{ nodes.a.fallback }} {{ nodes.a.error }}")
    defaulted["nodes"][0].update(on_error="default", default={"fallback": "-"})
    parse_definition({"name": "wf", **defaulted}, registry=registry)
    assert errors_of(two("{{ nodes.a.error }}")) == [
        "node 'b': param 'template': nodes.a.error: node 'a' of type 'template' has no "
        "output 'error' (it has text)"]


def test_mapping_methods_are_not_node_names_or_fields() -> None:
    parse_definition({"name": "wf", **two("{{ nodes.get('a') }} {{ nodes.a.get('text') }} "
                                          "{{ nodes.a.items() | list }}")}, registry=registry)


def test_a_node_reads_only_nodes_that_ran_before_it() -> None:
    data = two("{{ nodes.c.text }}")
    data["nodes"].append({"id": "c", "type": "template", "template": "c"})
    assert errors_of(data) == [
        "node 'b': param 'template': nodes.c.text: node 'c' is not upstream of 'b' (no edge "
        "path leads from it here), so it may not have run when 'b' starts; add an edge, or "
        "test it with 'is defined'"]
    data["edges"].append({"source": "c", "target": "a"})  # upstream through a
    parse_definition({"name": "wf", **data}, registry=registry)
    assert errors_of(two("{{ nodes.b.text }}")) == [
        "node 'b': param 'template': nodes.b.text: a node cannot read its own outputs"]


def test_a_node_may_test_for_one_that_may_not_have_run() -> None:
    data = two("{{ nodes.c.text if nodes.c is defined else '' }} {{ nodes.c | default({}) }}")
    data["nodes"].append({"id": "c", "type": "template", "template": "c"})
    parse_definition({"name": "wf", **data}, registry=registry)
    data["nodes"][1]["template"] = "{{ nodes.c.text | default('') }}"  # fails if c did not run
    assert len(errors_of(data)) == 1


def test_the_default_option_is_read_like_a_param() -> None:
    data = two("x", on_error="default", default={"text": "{{ nodes.a.txt }}"})
    assert errors_of(data) == ["node 'b': default: nodes.a.txt: node 'a' of type 'template' "
                               "has no output 'txt' (it has text)"]


def test_outputs_may_read_any_node_but_only_what_exists() -> None:
    data = {"nodes": [{"id": "a", "type": "template", "template": "a"},
                      {"id": "b", "type": "template", "template": "b"}],
            "outputs": {"both": "{{ nodes.a.text }}{{ nodes.b.text }}",
                        "bad": {"deep": ["{{ nodes.a.txt }}", "{{ nodes.c }}"]}}}
    assert errors_of(data) == [
        "outputs.bad: nodes.a.txt: node 'a' of type 'template' has no output 'txt' "
        "(it has text)",
        "outputs.bad: nodes.c: there is no node 'c'"]


def test_a_local_variable_named_nodes_is_not_the_runs_nodes() -> None:
    parse_definition({"name": "wf", **two("{% for nodes in [1] %}{{ nodes.x }}{% endfor %}")},
                     registry=registry)


def test_a_map_reads_its_own_graph() -> None:
    inline: dict[str, Any] = {"id": "m", "type": "map", "items": [1, 2],
              "nodes": [{"id": "t", "type": "template", "template": "{{ item }}"},
                        {"id": "u", "type": "template", "template": "{{ nodes.t.text }}"}],
              "edges": [{"source": "t", "target": "u"}], "output": "{{ nodes.u.text }}"}
    parse_definition({"name": "wf", "nodes": [inline]}, registry=registry)
    inline["output"] = "{{ nodes.u.txt }}"
    inline["nodes"][1]["template"] = "{{ nodes.zz.text }}"
    assert errors_of({"nodes": [inline]}) == [
        "node 'm': param 'nodes': inline graph: node 'u': param 'template': nodes.zz.text: "
        "there is no node 'zz'"]
    inline["nodes"][1]["template"] = "{{ nodes.t.text }}"
    assert errors_of({"nodes": [inline]}) == [
        "node 'm': param 'output': nodes.u.txt: node 'u' of type 'template' has no output "
        "'txt' (it has text)"]


# --- plain param values and code ------------------------------------------------------

def test_plain_param_values_are_checked_against_the_type() -> None:
    assert errors_of({"nodes": [{"id": "s", "type": "sleep", "seconds": "abc"}]}) == [
        "node 's': param 'seconds': Input should be a valid number, unable to parse string "
        "as a number (got 'abc')"]
    assert errors_of({"nodes": [{"id": "s", "type": "sleep", "seconds": -5}]}) == [
        "node 's': param 'seconds': Input should be greater than or equal to 0 (got -5)"]
    msgs = errors_of({"nodes": [{"id": "h", "type": "http", "url": "http://127.0.0.1/x",
                                 "method": "get", "headers": {"n": 1}},
                                {"id": "m", "type": "map", "items": [], "concurrency": 0,
                                 "nodes": [{"id": "t", "type": "template", "template": "t"}]}]})
    assert msgs == [
        "node 'h': param 'method': Input should be 'GET', 'POST', 'PUT', 'PATCH', 'DELETE', "
        "'HEAD' or 'OPTIONS' (got 'get')",
        "node 'h': param 'headers': n: Input should be a valid string (got 1)",
        "node 'm': param 'concurrency': Input should be greater than 0 (got 0)"]


def test_expression_values_are_checked_when_they_run() -> None:
    parse_definition({"name": "wf", "nodes": [
        {"id": "s", "type": "sleep", "seconds": "{{ inputs.s }}"},
        {"id": "h", "type": "http", "url": "http://127.0.0.1/x",
         "headers": {"n": 1, "a": "{{ 1 }}"}}]},
        registry=registry)


def test_code_is_compiled_not_run() -> None:
    assert errors_of({"nodes": [{"id": "py", "type": "code",
                                 "code": "x = 1\ndef mian(:\n    pass\n"}]}) == [
        "node 'py': param 'code': syntax error at line 2: invalid syntax"]
    assert errors_of({"nodes": [{"id": "py", "type": "code", "code": "return 1"}]}) == [
        "node 'py': param 'code': syntax error at line 1: 'return' outside function"]
    parse_definition({"name": "wf", "nodes": [
        {"id": "ok", "type": "code", "code": "raise SystemExit('never run')\ndef main():\n"
                                             "    return {}"},
        {"id": "rendered", "type": "code", "code": "def main({{ '' }}:\n    pass"}]},
        registry=registry)


# --- the workflows nodes call by name -------------------------------------------------

CHILD = parse_definition({"name": "child", "inputs": {"who": {"type": "string",
                                                              "required": True},
                                                      "item": {"type": "integer"}},
                          "nodes": [{"id": "t", "type": "template", "template": "x"}]},
                         registry=registry)


def child_errors(*nodes: dict[str, Any]) -> list[tuple[str, str, str]]:
    definition = parse_definition({"name": "p", "nodes": list(nodes)}, registry=registry)
    try:
        check_child_workflows(definition, {"child": CHILD}, where="here", registry=registry)
    except DefinitionError as exc:
        return [(e["node"], e["field"], e["message"]) for e in exc.errors]
    return []


def test_called_workflows_must_be_known() -> None:
    assert child_errors({"id": "w", "type": "workflow", "workflow": "chlid"}) == [
        ("w", "workflow", "node 'w': param 'workflow': no workflow 'chlid' in here "
                          "(did you mean 'child'?)")]
    assert child_errors({"id": "w", "type": "workflow", "workflow": "{{ inputs.wf }}"},
                        {"id": "t", "type": "template", "template": "x"}) == []


def test_inputs_given_by_name_must_fit_the_child() -> None:
    assert child_errors({"id": "w", "type": "workflow", "workflow": "child",
                         "inputs": {"who": "{{ inputs.x }}", "typo": 1}}) == [
        ("w", "inputs.typo", "node 'w': param 'inputs': workflow 'child' has no input 'typo'")]
    assert child_errors({"id": "w", "type": "workflow", "workflow": "child"}) == [
        ("w", "inputs.who", "node 'w': param 'inputs': workflow 'child' needs input 'who'")]
    assert child_errors({"id": "w", "type": "workflow", "workflow": "child",
                         "inputs": "{{ inputs.all }}"}) == []


def test_a_map_over_a_workflow_is_checked_too() -> None:
    assert child_errors({"id": "m", "type": "map", "items": [1], "workflow": "child",
                         "inputs": {"who": "{{ item }}"}, "output": "{{ nodes.t.txt }}"}) == [
        ("m", "output", "node 'm': param 'output': nodes.t.txt: node 't' of type 'template' "
                        "has no output 'txt' (it has text)")]
    assert [e[1] for e in child_errors({"id": "m", "type": "map", "items": [1],
                                        "workflow": "child"})] == ["inputs.who"]
