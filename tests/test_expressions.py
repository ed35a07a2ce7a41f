from __future__ import annotations

import time

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
    with pytest.raises(ExpressionError, match="ran longer than|iterates more than"):
        evaluate(text, CTX)
    assert evaluate("{% for i in range(3) %}{{ i }}{% endfor %}", CTX) == "012"
    assert evaluate("{{ range(5) | list }}", CTX) == [0, 1, 2, 3, 4]


HOSTILE = [
    "{% set r=range(600) %}{% for a in r %}{% for b in r %}{% for c in r %}{% endfor %}"
    "{% endfor %}{% endfor %}",
    "{{ ((((9**64)**64)**64)**64) }}",
    "{{ (2 ** 99999) * (2 ** 99999) }}",
    "{{ '%01000000000d' % 1 }}",
    "{{ '%.900000f%.900000f' % (1, 2) }}",
    "{{ '%*d' % (1000000000, 1) }}",
    "{{ 'x' | center(1000000000) }}",
    "{{ ('x' * 1000) | replace('x', 'y' * 2000) }}",
    "{{ 'abc' | replace('', 'y' * 999999) }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{{ '{:{w}}'.format(1, w=1000000000) }}",
    "{{ 'a'.center(1000000000) }}",
    "{{ 'a'.zfill(1000000000) }}",
    "{{ ('a\t' * 1000).expandtabs(100000) }}",
    "{{ ['x' * 999999] * 999999 }}",
    "{{ (['x' * 999999] * 100) | join(',') }}",
    "{{ ','.join(['x' * 999999] * 100) }}",
    "{{ ('x' * 999999) ~ ('y' * 999999) }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "{% set ns = namespace(s=[1]) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{{ ('x' * 999999) | indent(1000) }}",
    "{{ [1, 2] | batch(1000000000, 0) | list }}",
    "{{ [1] | tojson(indent=1000000000) }}",
    "{{ lipsum(100000) }}",
    "{{ ('word ' * 190000) | wordwrap(5, wrapstring='-' * 100) }}",
    "{{ ([[1] * 999999] * 300) | sum(start=[]) | length }}",
    "{{ ([[1] * 999] * 3000) | sum(start=[]) | length }}",
    "{{ ([('x' * 999999)] * 2000) | string | length }}",
    "{{ ([('x' * 999999)] * 2000) | tojson | length }}",
    "{{ ([('x' * 999999)] * 2000) | pprint | length }}",
    "{{ (([('x' * 999999)] * 2000) ~ '') | length }}",
    "{{ ('%s' % (([('x' * 999999)] * 2000),)) | length }}",
    "{{ '{}'.format([('x' * 999999)] * 2000) | length }}",
    "x{{ [('x' * 999999)] * 2000 }}",
    "{{ 1e308 * 10 }}",
    "{{ 1e999 }}",
    "{{ 'inf' | float }}",
    "{{ [1e308 * 10] }}",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_expressions_fail_fast_without_building_anything(text: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ExpressionError):
        evaluate(text, CTX)
    assert time.perf_counter() - started < 2  # a budget of ~50 ms, with room for a busy CI


@pytest.mark.parametrize(("text", "value"), [
    ("{{ 'a' | center(5) }}", "  a  "),
    ("{{ ['a', 'b'] | join(',') }}", "a,b"),
    ("{{ '-'.join(['a', 'b']) }}", "a-b"),
    ("{{ '%05d' % 3 }}", "00003"),
    ("{{ '{:>4}|{}'.format(1, 'x') }}", "   1|x"),
    ("{{ inputs.n ~ 'x' }}", "3x"),
    ("{% for i in range(3) %}{{ loop.index }}{% endfor %}", "123"),
    ("{{ 'a b' | replace(' ', '_') }}", "a_b"),
    ("{{ 2 ** 64 }}", 2 ** 64),
    ("{{ [1, 2] + [3] }}", [1, 2, 3]),
    ("{{ ('x' * 999999) | length }}", 999999),
    ("{{ [[1, 2], [3]] | sum(start=[]) }}", [1, 2, 3]),
    ("{{ [1, 2, 3] | sum }}", 6),
    ("{{ [{'n': 2}, {'n': 3}] | sum(attribute='n') }}", 5),
    ("{{ 1.5 * 2 }}", 3.0),
])
def test_ordinary_expressions_still_work(text: str, value: object) -> None:
    assert evaluate(text, CTX) == value
