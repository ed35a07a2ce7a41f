"""Sandboxed ``{{ }}`` expressions over ``inputs``, ``nodes``, ``run`` and ``secrets``.

A string that is exactly one ``{{ expr }}`` evaluates to the expression's own
value (an int stays an int, a dict stays a dict); any other string containing
``{{`` renders as a template to a string. Undefined names raise
``ExpressionError`` instead of quietly rendering as empty text.

Expressions come from whoever holds a key and run on the event loop, so each
evaluation has a budget (``_Budget``): a step count and a deadline of about
``MAX_EVALUATION_S``, charged by every loop iteration, call, filter, operator,
comparison and attribute access; and every operation that could build something
huge (powers, repetition, concatenation, %-formatting, format widths, padding,
replace, join, batch, ...) is checked *before* it runs, against
``MAX_VALUE_SIZE`` characters or items (``MAX_INT_BITS`` for integers). The
finished value is held to the same size. Past any bound the node fails with
a clear message; the loop never stalls.

Deliberate oddity: a value is measured as if every shared part were copied out
(``[x] * 1000`` holds x a thousand times), since that is what printing,
comparing, hashing or storing it costs; but the measurement itself (``_Measure``)
looks at each shared part once, so it takes time in proportion to what the value
holds in memory, and it is charged to the same budget. Work done in C on a value
(printing, sorting, comparing) cannot be interrupted, so it is bounded by the size
before it starts; work done in Python over a value's items (``map``, ``unique``,
``pprint``, indented ``tojson``) is charged one item at a time.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import pprint
import re
import string
import time
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
    ValuesView,
)
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import chain
from types import FunctionType
from typing import Any

import jinja2
import orjson
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.visitor import NodeTransformer

from flowrun.errors import ExpressionError

_WHOLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)

MAX_VALUE_SIZE = 1_000_000  # characters or items one value may hold
MAX_INT_BITS = 100_000  # an integer's size (about 30,000 digits)
MAX_STEPS = 1_000_000  # loop iterations, calls, filters, operators: all of one evaluation
MAX_EVALUATION_S = 0.05  # wall time of one evaluation on the event loop
_CHECK_EVERY = 256  # steps between two looks at the clock
_LOOK_EVERY = 4096  # items measured between two looks at the clock


class _Budget:
    """What one evaluation may still spend, and the values of its context it has seen.

    ``owned``: the containers of the context (the run's inputs, its nodes' outputs) and
    those reached from them by a lookup (``nodes.fetch.body``), by id (each held, so no
    id is reused meanwhile). Such a value was bounded when it came in (a request's body,
    a node's stored output), holds no reference shared with itself (it came from JSON),
    and is not new: an expression that hands one on unchanged is not measured, and one
    inside a new value counts as its JSON text, measured in C (``_owned_size``).
    """

    __slots__ = ("deadline", "next_look", "owned", "sizes", "steps", "units")

    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.deadline = time.monotonic() + MAX_EVALUATION_S
        self.units = 0  # items measured so far (``work``)
        self.next_look = _LOOK_EVERY
        self.owned: dict[int, Any] = {}
        self.sizes: dict[int, int | None] = {}  # owned ids measured: their JSON length

    def own(self, value: Any) -> None:
        """Note ``value`` as the context's (when it is a container)."""
        if type(value) in _OWNABLE:
            self.owned[id(value)] = value

    def owned_size(self, value: Any) -> int | None:
        """The length of an owned value's JSON text (None: not owned, or not JSON)."""
        key = id(value)
        if key not in self.owned:
            return None
        if key not in self.sizes:
            try:
                self.sizes[key] = len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
            except (TypeError, orjson.JSONEncodeError):  # (a plugin's set, a huge int)
                self.sizes[key] = None
        return self.sizes[key]

    def spend(self, steps: int = 1) -> None:
        before = self.steps
        self.steps -= steps
        if self.steps < 0:
            raise SecurityError(f"the expression takes more than {MAX_STEPS} steps "
                                f"(it iterates more than the budget allows)")
        if before // _CHECK_EVERY != self.steps // _CHECK_EVERY:
            self._look()

    def work(self, units: int) -> None:
        """Measuring a value: far cheaper than a step, so it looks at the clock only every
        ``_LOOK_EVERY`` items instead of taking steps from the budget."""
        self.units += units
        if self.units >= self.next_look:
            self.next_look = self.units + _LOOK_EVERY
            self._look()

    def _look(self) -> None:
        if time.monotonic() > self.deadline:
            raise SecurityError(f"the expression ran longer than {MAX_EVALUATION_S:g}s")


_OWNABLE = frozenset({dict, list})  # what JSON makes: the context's containers

_budget: ContextVar[_Budget | None] = ContextVar("expression_budget", default=None)


def _owned(value: Any) -> bool:
    """Whether ``value`` is one of the context's own (see ``_Budget``)."""
    budget = _budget.get()
    return budget is not None and id(value) in budget.owned


def _inherit(owner: Any, found: Any) -> Any:
    """A lookup's result: the context's own when what it was looked up in is."""
    budget = _budget.get()
    if budget is not None and id(owner) in budget.owned:
        budget.own(found)
    return found


def _spend(steps: int = 1) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.spend(steps)


def _tick(units: int) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.work(units)


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


# --- measuring values ------------------------------------------------------------------

# What holds other values, and so must be measured through (a range is stored as the
# list of its numbers; a dict's view prints and compares like the dict).
_NESTS = (list, tuple, set, frozenset, range, Mapping, KeysView, ValuesView, ItemsView)
_PLAIN = frozenset({int, bool, type(None)})
_HOLDERS = frozenset({list, tuple, dict})
_WIDE_INT_BITS = 64  # past this an integer counts as its digits: comparing, printing and
# storing it cost that much (and JSON encoders leave their fast path)
_FLOAT_TEXT = 8  # characters a float counts for as text: repr is the slowest of the
# C printers, about as slow per float as printing eight characters
_WIDE_INT = 1 << _WIDE_INT_BITS
_CHUNK = 65_536  # items scanned in one go before the clock and the limit are looked at
_FEW = 32  # a container this small is scanned item by item (cheaper than in C)


class _Past(Exception):
    """A measurement went past its limit (internal to ``_Measure``)."""


class _Measure:
    """The size of values as items (``text=False``) or as the text they print as.

    A shared part counts once for every place it appears (as printing or storing the
    value would write it out), but is scanned once: sizes are memoised by ``id`` for the
    life of the measurement, while the values measured keep every part alive. Past
    ``limit`` it stops and says ``limit + 1``. Raises SecurityError for a float that is
    not finite (no JSON holds it) and for a value that contains itself.

    As text, the size is about the length ``str`` or ``tojson`` gives (brackets, quotes
    and separators count), so a check before printing refuses what would be refused
    after it; a float counts as ``_FLOAT_TEXT`` characters.
    """

    __slots__ = ("budget", "floor", "known", "limit", "quote", "text")

    def __init__(self, *, text: bool, limit: int = MAX_VALUE_SIZE) -> None:
        self.text = text
        self.limit = limit
        self.quote = 2 if text else 0
        self.budget = _budget.get()
        self.known: dict[int, int] = {}
        # what the distinct parts scanned so far hold: never more than the total, so
        # past the limit the total is too
        self.floor = 0

    def total(self, *values: Any) -> int:
        """The size of ``values`` together (a string at the top counts no quotes)."""
        size = 0
        try:
            for value in values:
                if isinstance(value, str):
                    size += len(value)
                elif isinstance(value, _NESTS):
                    size += self._tree(value)
                else:
                    size += self._scalar(value)
                self._grow(1)
                if size > self.limit:
                    raise _Past
        except _Past:
            return self.limit + 1
        return size

    def _scalar(self, item: Any) -> int:
        if isinstance(item, float):
            if not math.isfinite(item):
                raise SecurityError(f"the value holds {item}, which is not a finite number")
            return _FLOAT_TEXT if self.text else 1
        if isinstance(item, int) and not isinstance(item, bool):
            bits = item.bit_length()
            if bits > _WIDE_INT_BITS:
                return bits * 3 // 10  # its digits, at least
        return 1

    def _tree(self, root: Any) -> int:
        """The size of one nested value, its parts before their holders (no recursion:
        a value may be nested deeper than Python's stack)."""
        known = self.known
        scanned: dict[int, tuple[int, list[Any]]] = {}  # holders waiting for their parts
        todo = [root]
        while todo:
            node = todo[-1]
            key = id(node)
            if key in known:
                todo.pop()
                continue
            frame = scanned.get(key)
            if frame is None and self.budget is not None and \
                    (owned := self.budget.owned_size(node)) is not None:
                self._grow(0)
                if self.floor + owned > self.limit:
                    raise _Past
                known[key] = owned  # the context's own: its JSON text, measured in C
                todo.pop()
                continue
            if frame is None:
                own, kids = frame = scanned[key] = self._scan(node)
                if not kids:  # a leaf: done at once
                    known[key] = own
                    todo.pop()
                    continue
                for kid in (dict(zip(map(id, kids), kids, strict=True)).values()
                            if len(kids) > 1 else kids):
                    if id(kid) in known:
                        continue
                    if id(kid) in scanned:  # scanned, not summed: it is an ancestor
                        raise SecurityError("the value contains itself")
                    todo.append(kid)
                continue
            todo.pop()
            own, kids = frame
            size = own + sum(map(known.__getitem__, map(id, kids)))
            if size > self.limit:
                raise _Past
            known[key] = size
        return known[id(root)]

    def _scan(self, node: Any) -> tuple[int, list[Any]]:
        """What ``node`` holds itself, and the nested values it holds (with repeats)."""
        count = len(node)
        if self.floor + count > self.limit:
            raise _Past
        kind = type(node)
        kids: list[Any] = []
        if kind is dict or (kind is not list and kind is not tuple and
                            isinstance(node, Mapping)):
            own = 4 * count if self.text else count  # ": " and ", " between the entries
            own += self._mixed(chain(node, node.values()), kids) if count <= _FEW else \
                self._items(node.keys(), kids) + self._items(node.values(), kids)
        elif kind is range:
            own = len(repr(node)) if self.text else 2 * count
        else:
            own = max(2, 2 * count) if self.text else count  # brackets and ", "
            own += self._items(node, kids)
        self._grow(own)
        return own, kids

    def _grow(self, units: int) -> None:
        self.floor += units
        if self.floor > self.limit:
            raise _Past
        if self.budget is not None:
            self.budget.work(units)

    def _items(self, items: Iterable[Any], kids: list[Any]) -> int:
        """The units of the scalars among ``items``; the nested values among them go to
        ``kids``. A long list goes a chunk at a time (each looks at the clock and the
        limit), each chunk counted in C where it is of one plain kind."""
        if len(items) <= _FEW:  # type: ignore[arg-type]  # (views, lists, sets: sized)
            return self._mixed(items, kids)
        seq = items if isinstance(items, list | tuple) else list(items)
        units = 0
        for start in range(0, len(seq), _CHUNK):
            chunk = seq[start:start + _CHUNK]
            part = self._flat(chunk, kids)
            units += self._mixed(chunk, kids) if part is None else part
            if self.floor + units > self.limit:
                raise _Past
            if self.budget is not None:
                self.budget.work(len(chunk))
        return units

    def _flat(self, chunk: Sequence[Any], kids: list[Any]) -> int | None:
        """The units of a chunk of one plain kind, counted in C; None for any other."""
        kinds = set(map(type, chunk))
        if kinds <= _PLAIN:
            if int in kinds and (type(None) in kinds or min(chunk) < -_WIDE_INT or
                                 max(chunk) >= _WIDE_INT):
                return None
            return len(chunk)
        if kinds <= _HOLDERS and len(set(map(id, chunk))) * 4 <= len(chunk):
            kids.extend(chunk)  # mostly the same few parts: measured once each
            return 0
        if kinds == {str}:
            return sum(map(len, chunk)) + self.quote * len(chunk)
        if kinds == {float} and all(map(math.isfinite, chunk)):
            return len(chunk) * (_FLOAT_TEXT if self.text else 1)
        return None

    def _leaf(self, node: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> int | None:
        """The size of a small list, tuple or dict of strings and small numbers, counted
        where it appears (not memoised: cheaper than a frame of ``_tree``); None when it
        holds anything else."""
        count, quote = len(node), self.quote
        if type(node) is dict:
            units = 4 * count if self.text else count
            items: Iterable[Any] = chain(node, node.values())
        else:
            units = max(2, 2 * count) if self.text else count
            items = node
        for item in items:
            kind = type(item)
            if kind is str:
                units += len(item) + quote
            elif kind is int and -_WIDE_INT <= item < _WIDE_INT or kind is bool or \
                    item is None:
                units += 1
            else:
                return None
        return units

    def _mixed(self, items: Iterable[Any], kids: list[Any]) -> int:
        units, quote = 0, self.quote
        for item in items:
            kind = type(item)
            if kind is str:
                units += len(item) + quote
            elif kind is int and -_WIDE_INT <= item < _WIDE_INT or kind is bool or \
                    item is None:
                units += 1
            elif kind is list or kind is dict or kind is tuple:
                leaf = self._leaf(item) if len(item) <= _FEW else None
                if leaf is None:
                    kids.append(item)
                else:
                    units += leaf
            elif isinstance(item, str):
                units += len(item) + quote
            elif isinstance(item, _NESTS):
                kids.append(item)
            else:
                units += self._scalar(item)
        return units


def value_size(value: Any, limit: int = MAX_VALUE_SIZE) -> int:
    """The size of a value as characters and items, counting at most a little past
    ``limit``; a shared part counts every time it appears (as storing the value would
    write it out), and is measured once.

    Raises SecurityError for a float that is not finite: no JSON holds it.
    """
    return _Measure(text=False, limit=limit).total(value)


def _check_input(value: Any, what: str) -> None:
    """Refuse an operand too big to compare, hash, sort or walk (a list holding the same
    big list a thousand times costs nothing to hold)."""
    if isinstance(value, _NESTS) and value_size(value) > MAX_VALUE_SIZE:
        raise _refuse(what)


def _check_text(value: Any, what: str) -> None:
    """Refuse an operand that would become huge text (``str`` of a list holding the same
    big string a million times costs nothing to hold and gigabytes to print)."""
    if isinstance(value, _NESTS) and _Measure(text=True).total(value) > MAX_VALUE_SIZE:
        raise _refuse(what)


def _finalize(value: Any) -> Any:
    """Every ``{{ }}`` in a text template, before it is turned into text."""
    _check_text(value, "the printed value")
    return value


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


def _check_repeat(seq: Any, times: Any) -> None:
    """``seq * times``: its slots, and what they hold, each within the limit (so
    ``[big] * 1000`` is refused before it is made, not when it is printed)."""
    if _sized(seq) is None or not isinstance(times, int):
        return
    if len(seq) * times > MAX_VALUE_SIZE:
        raise _refuse(f"repeating a value of length {len(seq)} {times} times")
    if times > 1 and isinstance(seq, list | tuple):
        held = value_size(seq) - len(seq)
        if held * times > MAX_VALUE_SIZE:
            raise _refuse(f"repeating a value that holds {held:,} items {times} times")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**" and isinstance(left, int) and isinstance(right, int) \
            and not isinstance(left, bool) and abs(left) > 1 and right > 0:
        if left.bit_length() * right > MAX_INT_BITS:
            raise SecurityError(f"{operator} would build an integer over {MAX_INT_BITS:,} bits")
    elif operator == "*":
        _check_repeat(left, right)
        _check_repeat(right, left)
        if isinstance(left, int) and isinstance(right, int) and \
                left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise SecurityError(f"* would build an integer over {MAX_INT_BITS:,} bits")
    elif operator == "+" and _sized(left) is not None and _sized(right) is not None:
        if len(left) + len(right) > MAX_VALUE_SIZE:
            raise _refuse("the sum")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left)
        _check_text(right, "the formatted values")


def _binop_steps(operator: str, left: Any, right: Any) -> int:
    """Steps an operator costs: one, or for wide integers about their digits multiplied
    (a division of two 50,000-bit numbers takes milliseconds, not a step's microsecond)."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return 1
    if operator == "**":
        if abs(left) <= 1 or right <= 0:
            return 1
        bits = left.bit_length() * right  # held to MAX_INT_BITS by _check_binop
        return 1 + (bits * bits >> 20)
    if operator in {"*", "//", "%"}:
        return 1 + (left.bit_length() * right.bit_length() >> 20)
    return 1


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
    """The joined text: its items as they print, and the separators between them."""
    total = len(str(separator)) * max(len(items) - 1, 0)
    if total <= MAX_VALUE_SIZE:
        total += sum(map(len, items)) if set(map(type, items)) <= {str} \
            else _Measure(text=True).total(*items)
    if total > MAX_VALUE_SIZE:
        raise _refuse("the joined text")


def _check_call(owner: Any, name: str, args: tuple[Any, ...],
                kwargs: Mapping[str, Any]) -> None:
    """Pre-check a call's operands: as text where the call prints them."""
    operands = (*args, *kwargs.values())
    if isinstance(owner, str) and name in {"format", "format_map"}:
        for operand in operands:
            _check_text(operand, "a formatted argument")
    else:
        for operand in operands:
            _check_input(operand, "an argument")
    if isinstance(owner, list | tuple) and name in {"count", "index"}:
        _check_input(owner, f"the {type(owner).__name__} searched")  # compares every item
    elif isinstance(owner, str) and name != "join":
        _check_str_method(owner, name, args, kwargs)


# --- filters and tests ---------------------------------------------------------------

@dataclass(frozen=True)
class _Kinds:
    """What filters (or tests) do with their input, for the checks before they run."""

    shallow: frozenset[str]  # look at the top of the input only: nothing to measure
    prints: frozenset[str]  # turn input and arguments into text: measured as text


_FILTERS = _Kinds(
    shallow=frozenset({"length", "count", "first", "last", "random", "default", "d", "attr",
                       "list", "reverse", "abs", "int", "float", "round"}),
    prints=frozenset({"string", "pprint", "tojson", "e", "escape", "forceescape", "safe",
                      "upper", "lower", "capitalize", "title", "trim", "truncate",
                      "wordcount", "wordwrap", "center", "indent", "striptags", "urlize",
                      "replace", "format", "filesizeformat", "urlencode", "xmlattr"}),
)
_TESTS = _Kinds(
    shallow=frozenset({"defined", "undefined", "none", "boolean", "false", "true", "integer",
                       "float", "number", "string", "mapping", "iterable", "sequence",
                       "callable", "sameas", "escaped", "filter", "test", "even", "odd",
                       "divisibleby"}),
    prints=frozenset({"lower", "upper"}),
)
_SORTS = frozenset({"sort", "groupby", "dictsort"})  # n log n comparisons
_COMPARES = frozenset({"unique", "min", "max"}) | _SORTS  # compare or hash every item
_LOOPS = frozenset({"map", "select", "reject", "selectattr", "rejectattr", "batch", "slice"})
# Filters that run Python per word or per line: a tighter bound on their text, as a
# fraction of MAX_VALUE_SIZE.
_WORDY = {"title": 10, "wordwrap": 20, "striptags": 10, "urlize": 50, "wordcount": 2}
_PPRINT_ITEMS = 20_000  # pprint is written in Python and sorts every dict it prints
_COMPARES_PER_STEP = 4  # comparisons in C, against one step's worth of Python


def _check_operands(name: str, kinds: _Kinds, value: Any, args: tuple[Any, ...],
                    kwargs: Mapping[str, Any]) -> None:
    what = f"the input of {name}"
    operands = (*args, *kwargs.values())
    if name in kinds.prints:
        for operand in (value, *operands):
            _check_text(operand, what)
        return
    if name not in kinds.shallow and name not in _COMPARES:  # _prepare measures those
        _check_input(value, what)
    for operand in operands:
        _check_input(operand, what)


def _text_length(value: Any) -> int:
    return len(value) if isinstance(value, str) else _Measure(text=True).total(value)


def _prepare(name: str, value: Any, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Checks before a filter runs; may hand it ``value`` materialised or charged per item."""
    def arg(index: int, key: str, default: Any) -> Any:
        return args[index] if len(args) > index else kwargs.get(key, default)

    if name in _COMPARES:
        return _prepare_compared(name, value, arg), args, kwargs
    if name in {"batch", "slice"}:
        count = arg(0, "linecount" if name == "batch" else "slices", 1)
        if isinstance(count, int) and count > 10_000:
            raise SecurityError(f"{name}({count}) is over 10,000")
    if name in _LOOPS:
        return _charged(value), args, kwargs
    if name == "join":
        return _prepare_join(value, args, kwargs)
    _precheck_text(name, value, arg)
    if name == "xmlattr" and isinstance(value, Mapping):
        value = _ChargedMapping(value)
    elif name == "urlencode" and not isinstance(value, str):
        value = _charged(value.items() if isinstance(value, dict) else value)
    return value, args, kwargs


def _charged(value: Any) -> Any:
    """``value`` for a filter that loops over it in Python: one step per item it takes."""
    return _take(value) if isinstance(value, Iterable) else value


def _prepare_compared(name: str, value: Any, arg: Callable[[int, str, Any], Any]) -> Any:
    """Filters that compare or hash items: measured through (a comparison or a hash goes
    as deep as the items do), and the sorting ones charged for n log n comparisons."""
    items = value if isinstance(value, Mapping) and name == "dictsort" else \
        list(value) if isinstance(value, (*_NESTS, str)) else list(_take(value))
    size = value_size(items)
    if size > MAX_VALUE_SIZE:
        raise _refuse(f"the input of {name}")
    count = len(items)
    if name in _SORTS:
        by_key = arg(2, "attribute", None) is not None or name == "groupby"
        compared = count if by_key else size  # a key is assumed small; an item is not
        _spend(count + (count.bit_length() * compared) // _COMPARES_PER_STEP)
        return items
    return _take(items)


def _prepare_join(value: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """``join``: the items taken one step each, an ``attribute`` looked up here (so what
    is measured is what is printed), and the joined text checked before it is built."""
    items = list(_take(value))
    attribute = args[1] if len(args) > 1 else kwargs.get("attribute")
    if attribute is not None:
        getter = make_attrgetter(_env, attribute)
        items = [getter(item) for item in items]
        args, kwargs = args[:1], {k: v for k, v in kwargs.items() if k != "attribute"}
    _check_join(items, args[0] if args else kwargs.get("d", ""))
    return items, args, kwargs


def _precheck_text(name: str, value: Any, arg: Callable[[int, str, Any], Any]) -> None:
    """Checks of the filters that make text, beyond the size of their input."""
    if name in _WORDY and _text_length(value) > MAX_VALUE_SIZE // _WORDY[name]:
        raise _refuse(f"the input of {name} (1/{_WORDY[name]} of the limit)")
    if name == "center":
        width = arg(0, "width", 80)
        if isinstance(width, int) and width > MAX_VALUE_SIZE:
            raise _refuse(f"center({width})")
    elif name == "indent":
        width = arg(0, "width", 4)
        text = value if isinstance(value, str) else str(value)  # measured as text already
        size = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        if len(text) + (text.count("\n") + 1) * size > MAX_VALUE_SIZE:
            raise _refuse("the indented text")
    elif name == "wordwrap":
        wrap = arg(3, "wrapstring", "\n")
        if _text_length(value) * (len(str(wrap or "")) + 1) > MAX_VALUE_SIZE:
            raise _refuse("the wrapped text")
    elif name == "format":
        if isinstance(value, str):
            _check_percent_format(value)
    elif name == "replace":
        _check_replace(value, arg(0, "old", None), arg(1, "new", None), arg(2, "count", -1))
    elif name == "tojson":
        indent = arg(0, "indent", None)
        if isinstance(indent, int) and indent > 16:
            raise SecurityError("tojson indent is over 16")
    elif name == "pprint" and value_size(value) > _PPRINT_ITEMS:
        raise SecurityError(f"the input of pprint holds more than {_PPRINT_ITEMS:,} items")


def _take(value: Any) -> Iterator[Any]:
    """Iterate ``value``, charging the budget and refusing more than the size limit."""
    for count, item in enumerate(value if isinstance(value, Iterable) else [value]):
        if count >= MAX_VALUE_SIZE:
            raise _refuse("the sequence")
        _spend()
        yield item


class _ChargedMapping(Mapping[Any, Any]):
    """A read-only view of a mapping for a filter that loops over it in Python: each key
    it takes costs a step."""

    def __init__(self, mapping: Mapping[Any, Any]) -> None:
        self._mapping = mapping

    def __getitem__(self, key: Any) -> Any:
        return self._mapping[key]

    def __iter__(self) -> Iterator[Any]:
        return _take(self._mapping)

    def __len__(self) -> int:
        return len(self._mapping)


def _guard_filter(name: str, func: Callable[..., Any],
                  kinds: _Kinds = _FILTERS) -> Callable[..., Any]:
    passes_context = getattr(func, "jinja_pass_arg", None) is not None

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _spend()
        head, rest = (args[:1], args[1:]) if passes_context else ((), args)
        if rest:
            value, more = rest[0], tuple(rest[1:])
            if name == "in" and more:  # the test ``x is in(seq)``
                more = (_searched(more[0]), *more[1:])
            _check_operands(name, kinds, value, more, kwargs)
            value, more, kwargs = _prepare(name, value, more, kwargs)
            rest = (value, *more)
        return _check_size(func(*head, *rest, **kwargs), f"the result of {name}")

    return guarded


class _Printer(pprint.PrettyPrinter):
    """pprint's printer, charging a step for every value it formats (it is written in
    Python and formats a nested value again at each level it wraps)."""

    def format(self, obj: Any, context: dict[int, int], maxlevels: int,
               level: int) -> tuple[str, bool, bool]:
        _spend()
        return super().format(obj, context, maxlevels, level)


def _pprint(value: Any) -> str:
    """Jinja's ``pprint`` (``pprint.pformat``), charged per value it formats."""
    return _Printer().pformat(value)


def _dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` for ``tojson``. Indented, Python's encoder runs in Python: its
    pieces are charged and counted as they come. Without indent, the C encoder runs in
    one go, bounded by the size check made before it starts."""
    if options.get("indent") is None:
        return json.dumps(value, **options)
    parts, size = [], 0
    for part in json.JSONEncoder(**options).iterencode(value):
        _spend()
        size += len(part)
        if size > MAX_VALUE_SIZE:
            raise _refuse("the result of tojson")
        parts.append(part)
    return "".join(parts)


# --- the template tree: loops, ~, comparisons and dict keys charge the budget ---------

def _budget_iter(iterable: Any) -> Iterator[Any]:
    """What every ``{% for %}`` loops over: each iteration costs a step."""
    for item in iterable:
        _spend()
        yield item


def _budget_concat(parts: list[Any]) -> str:
    """``a ~ b``: the joined size is checked before it is built."""
    if _Measure(text=True).total(*parts) > MAX_VALUE_SIZE:
        raise _refuse("the concatenation")
    _spend()
    return "".join([str(part) for part in parts])


def _compared(value: Any) -> Any:
    """An operand of ``==``, ``<``, ``in``...: comparing or hashing goes as deep as it."""
    _spend()
    _check_input(value, "a compared value")
    return value


def _searched(value: Any) -> Any:
    """The right side of ``in``: an iterator is taken (one step per item) and measured."""
    if isinstance(value, Iterator):
        value = list(_take(value))
    return _compared(value)


def _hashed(key: Any) -> Any:
    """A dict literal's key: hashing a tuple goes as deep as the tuple."""
    _check_input(key, "a key")
    return key


def _call(function: str, node: nodes.Expr) -> nodes.Expr:
    if isinstance(node, nodes.Const):
        return node  # written in the expression: small
    return nodes.Call(nodes.ImportedName(f"{__name__}.{function}"), [node], [], None, None,
                      lineno=node.lineno)


class _Charge(NodeTransformer):
    """Route every for-loop's iterable, every ``~``, every comparison's operands and every
    dict literal's keys through budgeted functions."""

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

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        self.generic_visit(node)
        node.expr = _call("_compared", node.expr)
        for operand in node.ops:
            searched = operand.op in {"in", "notin"}
            operand.expr = _call("_searched" if searched else "_compared", operand.expr)
        return node

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:
        self.generic_visit(node)
        for pair in node.items:
            pair.key = _call("_hashed", pair.key)
        return node


_CHARGED = frozenset({_budget_iter, _budget_concat, _compared, _searched, _hashed})
_JINJA_LOCALS = frozenset({"_loop_vars", "_block_vars"})  # what jinja passes along a call


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with the budget and size checks of this module."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def _generate(self, source: nodes.Template, name: str | None, filename: str | None,
                  defer_init: bool = False) -> str:
        return super()._generate(_Charge().visit(source), name, filename, defer_init)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _spend()
        _check_binop(operator, left, right)
        _spend(_binop_steps(operator, left, right) - 1)
        return _check_size(super().call_binop(context, operator, left, right),
                           f"the result of {operator}")

    def call(__self, __context: Any, __obj: Any, *args: Any,  # Jinja's API
             **kwargs: Any) -> Any:
        if type(__obj) is FunctionType and __obj in _CHARGED:  # put in the tree by _Charge
            return __obj(*args)
        _spend()
        target = inspect.unwrap(__obj)
        owner = getattr(target, "__self__", None)
        name = getattr(target, "__name__", "")
        _check_call(owner, name, args, {key: value for key, value in kwargs.items()
                                        if key not in _JINJA_LOCALS})
        if isinstance(owner, str) and name == "join" and args:
            items = list(_take(args[0]))
            _check_join(items, owner)
            args = (items, *args[1:])
        return _check_size(super().call(__context, __obj, *args, **kwargs),
                           "the result of a call")

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``a.b`` on a mapping means its key ``b`` first: ``inputs.items`` is the input
        named items, not the dict method (which stays reachable when no key has its name)."""
        _spend()
        if isinstance(obj, Mapping):
            try:
                return _inherit(obj, obj[attribute])
            except (KeyError, TypeError):
                pass
        return _inherit(obj, super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend()
        if isinstance(argument, tuple):
            _check_input(argument, "a key")  # hashed as deep as it goes
        found = super().getitem(obj, argument)
        return found if isinstance(argument, slice) else _inherit(obj, found)


def _budgeted_range(*args: int) -> range:
    """Jinja's capped ``range``, charged in full up front."""
    steps = safe_range(*args)
    _spend(len(steps))
    return steps


_SUM_CHUNK = 256  # items added between two checks of the running total


def _sum(value: Any, attribute: str | int | None = None, start: Any = 0) -> Any:
    """Jinja's ``sum``, in linear time when it adds lists (built-in ``sum`` copies the
    growing list once per item), and a chunk at a time for numbers (adding the same
    100,000-bit integer a million times takes seconds; the total is checked as it grows)."""
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
    result = start
    for at in range(0, len(items), _SUM_CHUNK):
        result = _check_size(sum(items[at:at + _SUM_CHUNK], result), "the sum")
    return result


_env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                finalize=_finalize)
_env.filters["sum"] = _sum
_env.filters["pprint"] = _pprint
_env.policies["json.dumps_function"] = _dumps
_env.globals["range"] = _budgeted_range
_env.globals.pop("lipsum", None)  # generates text in bulk: nothing a workflow needs
_env.filters.update({name: _guard_filter(name, func)
                     for name, func in dict(_env.filters).items()})
_env.tests.update({name: _guard_filter(name, func, _TESTS)  # type: ignore[arg-type]
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
    budget = _budget.get()
    if budget is not None:
        for part in context.values():
            budget.own(part)
        return _Evaluation(context).value(value)
    budget = _Budget()
    for part in context.values():
        budget.own(part)
    token = _budget.set(budget)
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
            # (the check refuses inf and nan too; the context's own came from JSON)
            if not _owned(result) and value_size(result) > MAX_VALUE_SIZE:
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
