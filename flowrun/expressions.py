"""Sandboxed ``{{ }}`` expressions over ``inputs``, ``nodes`` and ``run``.

A string that is exactly one ``{{ expr }}`` evaluates to the expression's own
value (an int stays an int, a dict stays a dict); any other string containing
``{{`` renders as a template to a string. Undefined names raise
``ExpressionError`` instead of quietly rendering as empty text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError, safe_range

from flowrun.errors import ExpressionError

_WHOLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)

MAX_VALUE_SIZE = 1_000_000  # characters or items one expression may build
MAX_RANGE_STEPS = 1_000_000  # range() items one evaluation may ask for, all loops together
_range_budget: ContextVar[list[int] | None] = ContextVar("range_budget", default=None)


def _budgeted_range(*args: int) -> range:
    """Jinja's capped ``range``, also charged against the evaluation's budget, so nested
    ``{% for %}`` loops cannot spin the event loop for minutes."""
    steps = safe_range(*args)
    budget = _range_budget.get()
    if budget is not None:
        budget[0] -= len(steps)
        if budget[0] < 0:
            raise SecurityError(f"the expression iterates more than {MAX_RANGE_STEPS} times")
    return steps


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's sandbox caps ``range``; this also caps ``*`` and ``**``, which would
    otherwise let one expression allocate gigabytes in the server process."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _number(left) and _number(right) and abs(left) > 1 \
                and abs(right) > 64:
            raise SecurityError(f"{left} ** {right} is too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) \
                        and len(seq) * times > MAX_VALUE_SIZE:
                    raise SecurityError(f"repeating a value of length {len(seq)} {times} times "
                                        f"exceeds {MAX_VALUE_SIZE}")
        return super().call_binop(context, operator, left, right)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
_env.globals["range"] = _budgeted_range


def is_expression(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def check_syntax(text: str) -> str | None:
    """Return a description of the syntax error in ``text``, or None when it parses."""
    whole = _WHOLE.match(text)
    try:
        if whole:
            _env.compile_expression(whole.group("expr"))
        else:
            _env.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        return f"expression syntax error in {text!r}: {exc.message}"
    return None


@functools.lru_cache(maxsize=4096)
def _compiled_expression(expr: str) -> Any:
    return _env.compile_expression(expr, undefined_to_none=False)


@functools.lru_cache(maxsize=4096)
def _compiled_template(text: str) -> jinja2.Template:
    return _env.from_string(text)


def _render_capped(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    parts, size = [], 0
    for chunk in template.generate(**context):
        size += len(chunk)
        if size > MAX_VALUE_SIZE:
            raise SecurityError(f"the rendered text exceeds {MAX_VALUE_SIZE} characters")
        parts.append(chunk)
    return "".join(parts)


def evaluate(value: Any, context: Mapping[str, Any]) -> Any:
    """Evaluate every expression inside ``value`` (recursing into dicts and lists)."""
    if _range_budget.get() is None:
        token = _range_budget.set([MAX_RANGE_STEPS])
        try:
            return _evaluate(value, context)
        finally:
            _range_budget.reset(token)
    return _evaluate(value, context)


def _evaluate(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return _evaluate_string(value, context)
    if isinstance(value, dict):
        return {k: _evaluate(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_evaluate(v, context) for v in value]
    return value


def _evaluate_string(text: str, context: Mapping[str, Any]) -> Any:
    if not is_expression(text):
        return text
    whole = _WHOLE.match(text)
    try:
        if whole:
            result = _compiled_expression(whole.group("expr"))(**context)
            if isinstance(result, jinja2.Undefined):
                result._fail_with_undefined_error()
            return result
        return _render_capped(_compiled_template(text), context)
    except jinja2.UndefinedError as exc:
        raise ExpressionError(f"undefined in {text.strip()!r}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise ExpressionError(f"cannot evaluate {text.strip()!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any user-expression error fails the node
        raise ExpressionError(f"cannot evaluate {text.strip()!r}: "
                              f"{type(exc).__name__}: {exc}") from None
