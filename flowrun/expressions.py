"""Sandboxed ``{{ }}`` expressions over ``inputs``, ``nodes``, ``run`` and ``secrets``.

A string that is exactly one ``{{ expr }}`` evaluates to the expression's own
value (an int stays an int, a dict stays a dict); any other string containing
``{{`` renders as a template to a string. Undefined names raise
``ExpressionError`` instead of quietly rendering as empty text.

Expressions come from whoever holds a key and run on the event loop, so each
evaluation has a budget (``_Budget``): a step count and a deadline of about
``MAX_EVALUATION_S``, charged by every loop iteration, call, filter, operator
and attribute access; and every operation that could build something huge
(powers, repetition, concatenation, %-formatting, format widths, padding,
replace, join, batch, ...) is checked *before* it runs, against
``MAX_VALUE_SIZE`` characters or items (``MAX_INT_BITS`` for integers). The
finished value is held to the same size. Past any bound the node fails with
a clear message; the loop never stalls.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.visitor import NodeTransformer

from flowrun.errors import ExpressionError

_WHOLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)

MAX_VALUE_SIZE = 1_000_000  # characters or items one value may hold
MAX_INT_BITS = 100_000  # an integer's size (about 30,000 digits)
MAX_STEPS = 1_000_000  # loop iterations, calls, filters, operators: all of one evaluation
MAX_EVALUATION_S = 0.05  # wall time of one evaluation on the event loop
_CHECK_EVERY = 256  # steps between two looks at the clock


class _Budget:
    """What one evaluation may still spend."""

    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.deadline = time.monotonic() + MAX_EVALUATION_S

    def spend(self, steps: int = 1) -> None:
        before = self.steps
        self.steps -= steps
        if self.steps < 0:
            raise SecurityError(f"the expression takes more than {MAX_STEPS} steps "
                                f"(it iterates more than the budget allows)")
        if before // _CHECK_EVERY != self.steps // _CHECK_EVERY and \
                time.monotonic() > self.deadline:
            raise SecurityError(f"the expression ran longer than {MAX_EVALUATION_S:g}s")


_budget: ContextVar[_Budget | None] = ContextVar("expression_budget", default=None)


def _spend(steps: int = 1) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.spend(steps)


def _refuse(what: str) -> SecurityError:
    return SecurityError(f"{what} exceeds the limit of {MAX_VALUE_SIZE:,} characters or items")


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, str | list | tuple | dict) else None


def _check_size(value: Any, what: str = "the value") -> Any:
    size = _sized(value)
    if size is not None and size > MAX_VALUE_SIZE:
        raise _refuse(what)
    if isinstance(value, int) and not isinstance(value, bool) and \
            value.bit_length() > MAX_INT_BITS:
        raise SecurityError(f"{what} is an integer over {MAX_INT_BITS:,} bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise SecurityError(f"{what} is not a finite number ({value})")
    return value


def _check_input(value: Any, what: str) -> None:
    """Refuse an operand that would become huge text (``str`` of a list holding the same
    big string a million times costs nothing to hold and gigabytes to print)."""
    if isinstance(value, list | tuple | dict | set | frozenset) and \
            value_size(value) > MAX_VALUE_SIZE:
        raise _refuse(what)


def _finalize(value: Any) -> Any:
    """Every ``{{ }}`` in a text template, before it is turned into text."""
    _check_input(value, "the printed value")
    return value


def value_size(value: Any, limit: int = MAX_VALUE_SIZE) -> int:
    """The size of a value as text or items, counting at most a little past ``limit``.

    Raises SecurityError for a float that is not finite: no JSON holds it.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise SecurityError(f"the value holds {item}, which is not a finite number")
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, Mapping):
            total += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item)
            stack.extend(item)
        else:
            total += 1
        if total > limit:
            return total
    return total


# --- operators, calls and formatting ---------------------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_percent_format(fmt: str) -> None:
    """Refuse a %-format whose widths and precisions would build a huge string."""
    total = len(fmt)
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups():
            if part == "*":
                raise SecurityError("'*' widths are not allowed in % formats")
            if part:
                total += int(part) if len(part) < 8 else MAX_VALUE_SIZE + 1
    if total > MAX_VALUE_SIZE:
        raise _refuse("the formatted text")


def _check_format_spec(fmt: str) -> None:
    """Refuse ``str.format`` specs with huge widths or nested (computed) widths."""
    total = len(fmt)
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # format() itself will report it
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise SecurityError("nested fields in a format spec are not allowed")
        for digits in _DIGITS.findall(spec):
            total += int(digits) if len(digits) < 8 else MAX_VALUE_SIZE + 1
    if total > MAX_VALUE_SIZE:
        raise _refuse("the formatted text")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**" and isinstance(left, int) and isinstance(right, int) \
            and not isinstance(left, bool) and abs(left) > 1 and right > 0:
        if left.bit_length() * right > MAX_INT_BITS:
            raise SecurityError(f"{operator} would build an integer over {MAX_INT_BITS:,} bits")
    elif operator == "*":
        for seq, times in ((left, right), (right, left)):
            if _sized(seq) is not None and isinstance(times, int) and \
                    len(seq) * times > MAX_VALUE_SIZE:
                raise _refuse(f"repeating a value of length {len(seq)} {times} times")
        if isinstance(left, int) and isinstance(right, int) and \
                left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise SecurityError(f"* would build an integer over {MAX_INT_BITS:,} bits")
    elif operator == "+" and _sized(left) is not None and _sized(right) is not None:
        if len(left) + len(right) > MAX_VALUE_SIZE:
            raise _refuse("the sum")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left)
        _check_input(right, "the formatted values")


def _check_str_method(text: str, name: str, args: tuple[Any, ...],
                      kwargs: Mapping[str, Any]) -> None:
    """Pre-check a call of a str method that can grow its string."""
    if name in {"center", "ljust", "rjust", "zfill"} and args and isinstance(args[0], int):
        if args[0] > MAX_VALUE_SIZE:
            raise _refuse(f"str.{name}({args[0]})")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int) and len(text) * max(size, 1) > MAX_VALUE_SIZE:
            raise _refuse("str.expandtabs")
    elif name == "replace" and len(args) >= 2:
        _check_replace(text, args[0], args[1], args[2] if len(args) > 2 else -1)
    elif name in {"format", "format_map"}:
        _check_format_spec(text)


def _check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    hits = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * (len(new) - len(old)) > MAX_VALUE_SIZE:
        raise _refuse("the replaced text")


def _check_join(items: list[Any], separator: Any) -> None:
    total = len(str(separator)) * max(len(items) - 1, 0)
    for item in items:
        total += len(item) if isinstance(item, str) else value_size(item)
        if total > MAX_VALUE_SIZE:
            raise _refuse("the joined text")


# --- filters -------------------------------------------------------------------------

def _filter_precheck(name: str, value: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
    """Checks before a filter runs; may return a materialised ``value``."""
    def arg(index: int, key: str, default: Any) -> Any:
        return args[index] if len(args) > index else kwargs.get(key, default)

    if name == "center":
        width = arg(0, "width", 80)
        if isinstance(width, int) and width > MAX_VALUE_SIZE:
            raise _refuse(f"center({width})")
    elif name == "indent":
        width = arg(0, "width", 4)
        lines = str(value).count("\n") + 1
        size = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        if len(str(value)) + lines * size > MAX_VALUE_SIZE:
            raise _refuse("the indented text")
    elif name in {"wordwrap", "urlize", "striptags"} and len(str(value)) > MAX_VALUE_SIZE // 10:
        raise _refuse(f"the input of {name} (a tenth of the limit)")
    elif name == "wordwrap":
        wrap = arg(3, "wrapstring", "\n")
        if len(str(value)) * (len(str(wrap or "")) + 1) > MAX_VALUE_SIZE:
            raise _refuse("the wrapped text")
    elif name == "format":
        if isinstance(value, str):
            _check_percent_format(value)
    elif name == "replace":
        _check_replace(value, arg(0, "old", None), arg(1, "new", None), arg(2, "count", -1))
    elif name == "join":
        items = list(_take(value))
        _check_join(items, arg(0, "d", ""))
        return items
    elif name in {"batch", "slice"}:
        count = arg(0, "linecount" if name == "batch" else "slices", 1)
        if isinstance(count, int) and count > 10_000:
            raise SecurityError(f"{name}({count}) is over 10,000")
    elif name == "tojson":
        indent = arg(0, "indent", None)
        if isinstance(indent, int) and indent > 16:
            raise SecurityError("tojson indent is over 16")
    return value


def _take(value: Any) -> Iterator[Any]:
    """Iterate ``value``, charging the budget and refusing more than the size limit."""
    for count, item in enumerate(value if isinstance(value, Iterable) else [value]):
        if count >= MAX_VALUE_SIZE:
            raise _refuse("the sequence")
        _spend()
        yield item


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    passes_context = getattr(func, "jinja_pass_arg", None) is not None

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _spend()
        head, rest = (args[:1], args[1:]) if passes_context else ((), args)
        for operand in (*rest, *kwargs.values()):
            _check_input(operand, f"the input of {name}")
        if rest:
            value = _filter_precheck(name, rest[0], tuple(rest[1:]), kwargs)
            rest = (value, *rest[1:])
        return _check_size(func(*head, *rest, **kwargs), f"the result of {name}")

    return guarded


# --- the template tree: loops and ~ charge the budget ---------------------------------

def _budget_iter(iterable: Any) -> Iterator[Any]:
    """What every ``{% for %}`` loops over: each iteration costs a step."""
    for item in iterable:
        _spend()
        yield item


def _budget_concat(parts: list[Any]) -> str:
    """``a ~ b``: the joined size is checked before it is built."""
    for part in parts:
        _check_input(part, "a part of the concatenation")
    texts = [str(part) for part in parts]
    if sum(len(t) for t in texts) > MAX_VALUE_SIZE:
        raise _refuse("the concatenation")
    _spend()
    return "".join(texts)


class _Charge(NodeTransformer):
    """Route every for-loop's iterable and every ``~`` through budgeted functions."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.ImportedName(f"{__name__}._budget_iter"), [node.iter],
                               [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.ImportedName(f"{__name__}._budget_concat"),
                          [nodes.List(node.nodes, lineno=node.lineno)], [], None, None,
                          lineno=node.lineno)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with the budget and size checks of this module."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def _generate(self, source: nodes.Template, name: str | None, filename: str | None,
                  defer_init: bool = False) -> str:
        return super()._generate(_Charge().visit(source), name, filename, defer_init)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _spend()
        _check_binop(operator, left, right)
        return _check_size(super().call_binop(context, operator, left, right),
                           f"the result of {operator}")

    def call(__self, __context: Any, __obj: Any, *args: Any,  # Jinja's API
             **kwargs: Any) -> Any:
        _spend()
        for operand in (*args, *kwargs.values()):
            _check_input(operand, "an argument")
        target = inspect.unwrap(__obj)
        owner = getattr(target, "__self__", None)
        name = getattr(target, "__name__", "")
        if isinstance(owner, str) and name == "join" and args:
            items = list(_take(args[0]))
            _check_join(items, owner)
            args = (items, *args[1:])
        elif isinstance(owner, str):
            _check_str_method(owner, name, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs),
                           "the result of a call")

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``a.b`` on a mapping means its key ``b`` first: ``inputs.items`` is the input
        named items, not the dict method (which stays reachable when no key has its name)."""
        _spend()
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend()
        return super().getitem(obj, argument)


def _budgeted_range(*args: int) -> range:
    """Jinja's capped ``range``, charged in full up front."""
    steps = safe_range(*args)
    _spend(len(steps))
    return steps


def _sum(value: Any, attribute: str | int | None = None, start: Any = 0) -> Any:
    """Jinja's ``sum``, in linear time when it adds lists (built-in ``sum`` copies the
    growing list once per item)."""
    items = list(_take(value))
    if attribute is not None:
        items = [_env.getitem(item, attribute) for item in items]
    if isinstance(start, list | tuple):
        total = list(start)
        for item in items:
            if len(total) + (len(item) if isinstance(item, list | tuple) else 1) > \
                    MAX_VALUE_SIZE:
                raise _refuse("the sum")
            total.extend(item)
            _spend()
        return type(start)(total)
    return sum(items, start)


_env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                finalize=_finalize)
_env.filters["sum"] = _sum
_env.globals["range"] = _budgeted_range
_env.globals.pop("lipsum", None)  # generates text in bulk: nothing a workflow needs
_env.filters.update({name: _guard_filter(name, func)
                     for name, func in dict(_env.filters).items()})
_env.tests.update({name: _guard_filter(name, func)  # type: ignore[arg-type]
                   for name, func in dict(_env.tests).items()})


def is_expression(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def check_syntax(text: str) -> str | None:
    """Return a description of the syntax error in ``text``, or None when it parses."""
    whole = _WHOLE.match(text)
    try:
        if whole:
            _compiled_expression(whole.group("expr"))
        else:
            _compiled_template(text)
    except jinja2.TemplateSyntaxError as exc:
        return f"expression syntax error in {text!r}: {exc.message}"
    except RecursionError:
        return f"expression is nested too deeply: {text[:80]!r}…"
    return None


@dataclass(frozen=True)
class NodeReference:
    """One ``nodes.<node>[.<field>]`` an expression reads (also ``nodes['<node>']...``).

    ``guarded``: the expression also tests the bare ``nodes.<node>`` with ``is defined``,
    ``is undefined`` or ``| default``, so it copes with a node that has not run.
    """

    node: str
    field: str | None
    guarded: bool


_GUARD_TESTS = frozenset({"defined", "undefined"})
_GUARD_FILTERS = frozenset({"default", "d"})


def node_references(text: str) -> list[NodeReference]:
    """The node outputs ``text`` reads by name, found in its template tree.

    Empty when ``text`` is no expression, does not parse (``check_syntax`` says why), or
    binds ``nodes`` itself (``{% set %}``, a loop or macro variable). A computed name
    (``nodes[key]``) or ``nodes`` as a whole is not a reference.
    """
    if not is_expression(text):
        return []
    return list(_references(text, "nodes"))


def input_references(text: str) -> list[NodeReference]:
    """The run inputs ``text`` reads by name (``inputs.<name>``; ``node`` holds the
    name, ``field`` what it reads of it), as ``node_references`` finds nodes."""
    if not is_expression(text):
        return []
    return list(_references(text, "inputs"))


@functools.lru_cache(maxsize=4096)
def _references(text: str, root: str) -> tuple[NodeReference, ...]:
    try:
        tree = _env.parse(text)
    except (jinja2.TemplateSyntaxError, RecursionError):
        return ()
    parents: dict[int, nodes.Node] = {}
    names: list[nodes.Name] = []
    stack: list[nodes.Node] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, nodes.Name) and item.name == root:
            if item.ctx != "load":
                return ()  # a local variable of that name: not the run's
            names.append(item)
        for child in item.iter_child_nodes():
            parents[id(child)] = item
            stack.append(child)
    found: list[tuple[str, str | None]] = []
    guarded: set[str] = set()
    for name in names:
        ref = parents[id(name)]  # a Name always has a parent (at least the template)
        node_id = _static_key(ref, name)
        if node_id is None:
            continue
        outer = parents.get(id(ref))
        if (isinstance(outer, nodes.Test) and outer.node is ref and
                outer.name in _GUARD_TESTS) or \
                (isinstance(outer, nodes.Filter) and outer.node is ref and
                 outer.name in _GUARD_FILTERS):
            guarded.add(node_id)
        found.append((node_id, _static_key(outer, ref)))
    return tuple(NodeReference(node_id, field, node_id in guarded)
                 for node_id, field in sorted(set(found), key=lambda f: (f[0], f[1] or "")))


def _static_key(node: nodes.Node | None, operand: nodes.Node) -> str | None:
    """The name ``node`` looks up in ``operand`` (``operand.key`` or ``operand['key']``)."""
    if isinstance(node, nodes.Getattr) and node.node is operand:
        return node.attr
    if isinstance(node, nodes.Getitem) and node.node is operand and \
            isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    return None


@functools.lru_cache(maxsize=4096)
def _compiled_expression(expr: str) -> Any:
    return _env.compile_expression(expr, undefined_to_none=False)


@functools.lru_cache(maxsize=4096)
def _compiled_template(text: str) -> jinja2.Template:
    template = _env.from_string(text)
    # Each render copies the globals into a new context: from a plain dict that is half
    # the cost of from jinja's ChainMap (the environment's globals are fixed by now).
    template.globals = dict(template.globals)
    return template


def _render_capped(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    parts, size = [], 0
    for chunk in template.generate(**context):
        _spend()
        size += len(chunk)
        if size > MAX_VALUE_SIZE:
            raise _refuse("the rendered text")
        parts.append(chunk)
    return "".join(parts)


@dataclass
class _Evaluation:
    context: Mapping[str, Any]

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return _evaluate_string(value, self.context)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


def evaluate(value: Any, context: Mapping[str, Any]) -> Any:
    """Evaluate every expression inside ``value`` (recursing into dicts and lists).

    One budget covers the whole of ``value`` (all params of one node).
    """
    if _budget.get() is not None:
        return _Evaluation(context).value(value)
    token = _budget.set(_Budget())
    try:
        return _Evaluation(context).value(value)
    finally:
        _budget.reset(token)


def _evaluate_string(text: str, context: Mapping[str, Any]) -> Any:
    if not is_expression(text):
        return text
    whole = _WHOLE.match(text)
    try:
        if whole:
            result = _compiled_expression(whole.group("expr"))(**context)
            if isinstance(result, jinja2.Undefined):
                result._fail_with_undefined_error()
            if value_size(result) > MAX_VALUE_SIZE:  # (and refuses inf and nan)
                raise _refuse("the value")
            return result
        return _render_capped(_compiled_template(text), context)
    except jinja2.UndefinedError as exc:
        raise ExpressionError(f"undefined in {_short(text)}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise ExpressionError(f"cannot evaluate {_short(text)}: {exc}") from None
    except RecursionError:
        raise ExpressionError(f"cannot evaluate {_short(text)}: it recurses too deeply") \
            from None
    except Exception as exc:  # any user-expression error fails the node
        raise ExpressionError(f"cannot evaluate {_short(text)}: "
                              f"{type(exc).__name__}: {exc}") from None


def _short(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= 200 else text[:200] + "…")
