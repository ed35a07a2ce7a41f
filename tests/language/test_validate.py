"""``flowrun validate`` refuses what would fail at run time, naming the node and field.

Each case is a definition that passed validation and then failed its first run:
a reference to a node or output that does not exist, a plain param value of the
wrong type or range, a code node that does not compile, and a ``workflow`` node
calling a workflow that is not a file of the same folder. Registering such a
definition over HTTP is refused the same way (the folder check aside).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from flowrun import Settings, create_app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
E2E_WORKFLOWS = ROOT / "tests" / "e2e" / "workflows"


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "flowrun", "validate", *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


CASES = {
    "missing_node": (
        "nodes:\n"
        "  - {id: a, type: template, template: hi}\n"
        "  - {id: b, type: template, template: '{{ nodes.zzz.text }}'}\n"
        "edges:\n  - {source: a, target: b}\n",
        "node 'b': param 'template': nodes.zzz.text: there is no node 'zzz'"),
    "missing_output": (
        "nodes:\n"
        "  - {id: a, type: template, template: hi}\n"
        "  - {id: b, type: template, template: '{{ nodes.a.txt }}'}\n"
        "edges:\n  - {source: a, target: b}\n",
        "node 'b': param 'template': nodes.a.txt: node 'a' of type 'template' has no "
        "output 'txt' (it has text)"),
    "sleep_not_a_number": (
        "nodes:\n  - {id: s, type: sleep, seconds: abc}\n",
        "node 's': param 'seconds': Input should be a valid number"),
    "sleep_negative": (
        "nodes:\n  - {id: s, type: sleep, seconds: -5}\n",
        "node 's': param 'seconds': Input should be greater than or equal to 0 (got -5)"),
    "code_syntax_error": (
        "nodes:\n"
        "  - id: py\n"
        "    type: code\n"
        "    code: |\n"
        "      import os\n"
        "      def mian(:\n"
        "          return {}\n",
        "node 'py': param 'code': syntax error at line 2"),
    "undeclared_input": (
        "inputs:\n  name: {type: string}\n"
        "nodes:\n"
        "  - {id: a, type: template, template: '{{ inputs.nmae }} {{ inputs.name }}'}\n"
        "  - {id: b, type: template, template: '{{ inputs.opt | default(1) }}'}\n",
        "node 'a': param 'template': inputs.nmae: the workflow declares no input 'nmae' "
        "(did you mean 'name'?)"),
    "missing_child_workflow": (
        "nodes:\n  - {id: w, type: workflow, workflow: nope}\n",
        "node 'w': param 'workflow': no workflow 'nope' in the workflow files of"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_static_error_fails_validation_naming_node_and_field(tmp_path: Path,
                                                               case: str) -> None:
    body, message = CASES[case]
    path = write(tmp_path, case, f"name: {case.replace('_', '-')}\n{body}")
    out = validate(str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{path}: invalid" in out.stdout
    assert f"  - {message}" in out.stdout, out.stdout


def test_a_child_workflow_is_found_among_the_sibling_files(tmp_path: Path) -> None:
    write(tmp_path, "child", "name: child\ninputs:\n  who: {type: string, required: true}\n"
                             "nodes:\n  - {id: t, type: template, template: '{{ inputs.who }}'}\n")
    parent = write(tmp_path, "parent",
                   "name: parent\nnodes:\n"
                   "  - {id: w, type: workflow, workflow: child, inputs: {who: x}}\n"
                   "  - {id: r, type: template, template: '{{ nodes.w.t.text }}'}\n"
                   "edges:\n  - {source: w, target: r}\n")
    out = validate(str(parent))
    assert out.returncode == 0, out.stdout
    typo = write(tmp_path, "typo", "name: typo\nnodes:\n"
                                   "  - {id: w, type: workflow, workflow: chidl, "
                                   "inputs: {who: x}}\n"
                                   "  - {id: m, type: map, items: [1], workflow: child}\n")
    out = validate(str(tmp_path))
    assert out.returncode == 1
    assert f"{parent}: ok" in out.stdout
    assert "node 'w': param 'workflow': no workflow 'chidl' in the workflow files of " \
           f"{tmp_path.resolve()} (did you mean 'child'?)" in out.stdout, out.stdout
    assert "node 'm': param 'inputs' (default: {item: '{{ item }}'}): workflow 'child' " \
           "has no input 'item'" in out.stdout
    assert f"{typo}: invalid" in out.stdout


def test_a_child_workflows_inputs_and_outputs_are_checked_by_its_declarations(
        tmp_path: Path) -> None:
    write(tmp_path, "child", "name: child\ninputs:\n  n: {type: integer, required: true}\n"
                             "nodes:\n  - {id: t, type: template, template: '{{ inputs.n }}'}\n"
                             "outputs:\n  greeting: '{{ nodes.t.text }}'\n")
    good = write(tmp_path, "good",
                 "name: good\nnodes:\n"
                 "  - {id: w, type: workflow, workflow: child, inputs: {n: 3}}\n"
                 "  - {id: r, type: template, template: '{{ nodes.w.greeting }}'}\n"
                 "edges:\n  - {source: w, target: r}\n")
    bad = write(tmp_path, "bad", "name: bad\nnodes:\n"
                                 "  - {id: w, type: workflow, workflow: child, inputs: {n: abc}}\n"
                                 "  - {id: r, type: template, template: '{{ nodes.w.greting }}'}\n"
                                 "edges:\n  - {source: w, target: r}\n")
    out = validate(str(tmp_path))
    assert f"{good}: ok" in out.stdout, out.stdout
    assert f"{bad}: invalid" in out.stdout
    assert "node 'w': param 'inputs': input 'n' of workflow 'child': expected integer, " \
           "got string" in out.stdout, out.stdout
    assert "node 'r': param 'template': nodes.w.greting: workflow 'child' (run by node " \
           "'w') has no output 'greting' (it has greeting)" in out.stdout, out.stdout


def test_every_shipped_workflow_still_validates() -> None:
    out = validate(str(EXAMPLES))
    assert out.returncode == 0, out.stdout
    assert out.stdout.count(": ok (") == len(list(EXAMPLES.glob("*.yaml")))
    out = validate(str(E2E_WORKFLOWS), "--plugin", "tests.e2e.plugin")
    assert out.returncode == 0, out.stdout
    assert out.stdout.count(": ok (") == len(list(E2E_WORKFLOWS.glob("*.yaml")))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(db_path=tmp_path / "t.db", auth_enabled=False)
    with TestClient(create_app(settings)) as c:
        yield c


def test_registering_over_http_refuses_the_same_errors(client: TestClient) -> None:
    nodes = [{"id": "a", "type": "template", "template": "hi"},
             {"id": "b", "type": "template", "template": "{{ nodes.zzz.text }} {{ nodes.a.txt }}"},
             {"id": "s", "type": "sleep", "seconds": -5},
             {"id": "py", "type": "code", "code": "def mian(:\n    pass"}]
    resp = client.put("/workflows/bad", json={"nodes": nodes,
                                              "edges": [{"source": "a", "target": "b"}]})
    assert resp.status_code == 400, resp.text
    errors = {(e.get("node"), e.get("field")) for e in resp.json()["errors"]}
    assert errors == {("b", "template"), ("s", "seconds"), ("py", "code")}
    assert client.get("/workflows/bad").status_code == 404
