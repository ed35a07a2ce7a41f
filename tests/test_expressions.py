from __future__ import annotations

import pytest

from flowrun.errors import ExpressionError
from flowrun.expressions import check_syntax, evaluate

CTX = {"inputs": {"n": 3, "d": {"k": [1, 2]}}, "nodes": {"a": {"text": "hi"}},
       "run": {"id": "r"}}


def test_whole_expression_keeps_its_type() -> None:
    assert evaluate("{{ inputs.n }}", CTX) == 3
    assert evaluate(" {{ inputs.d }} ", CTX) == {"k": [1, 2]}
    assert evaluate("{{ inputs.n > 2 }}", CTX) is True


def test_mixed_text_renders_to_a_string() -> None:
    assert evaluate("n={{ inputs.n }} {{ nodes.a.text }}", CTX) == "n=3 hi"
    assert evaluate("{{ inputs.n }}{{ inputs.n }}", CTX) == "33"


def test_recurses_into_containers() -> None:
    assert evaluate({"x": ["{{ run.id }}", 1]}, CTX) == {"x": ["r", 1]}


@pytest.mark.parametrize("text", ["{{ inputs.missing }}", "x {{ nodes.b.text }}",
                                  "{{ missing }}"])
def test_undefined_names_are_errors(text: str) -> None:
    with pytest.raises(ExpressionError, match="undefined"):
        evaluate(text, CTX)


def test_sandbox_refuses_dunder_access() -> None:
    with pytest.raises(ExpressionError, match="unsafe"):
        evaluate("{{ inputs.__class__.__mro__ }}", CTX)


def test_syntax_check() -> None:
    assert check_syntax("{{ inputs.n }}") is None
    assert "syntax error" in (check_syntax("{{ 1 + }}") or "")


@pytest.mark.parametrize("text", ["{{ 'a' * 10**9 }}", "{{ [0] * 10**8 }}", "{{ 9 ** 99999999 }}",
                                  "x{% for i in range(90000) %}{{ 'abcdefghijklmnop' }}"
                                  "{% endfor %}"])
def test_huge_values_are_refused_not_built(text: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(text, CTX)


def test_ordinary_arithmetic_still_works() -> None:
    assert evaluate("{{ 'ab' * 3 }}", CTX) == "ababab"
    assert evaluate("{{ 2 ** 10 }}", CTX) == 1024
    assert evaluate("{{ inputs.n * 2.5 }}", CTX) == 7.5


def test_nested_loops_run_out_of_budget() -> None:
    # Without the budget this is 10**10 iterations: the per-test timeout would fail it.
    text = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(ExpressionError, match="iterates more than"):
        evaluate(text, CTX)
    assert evaluate("{% for i in range(3) %}{{ i }}{% endfor %}", CTX) == "012"
    assert evaluate("{{ range(5) | list }}", CTX) == [0, 1, 2, 3, 4]
