"""JSON text as flowrun stores it, and its size: made once, measured once, reused.

A value is encoded by orjson (in C) into the text the store writes; the number of
bytes that takes is known from the same call, so what is measured is what is
written, and a value the engine has encoded is not encoded again by the store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, eq=False)
class Encoded:
    """``value`` as stored JSON ``text``, ``size`` bytes of UTF-8. Kept beside the value
    it was made from: the store uses ``text`` only while the record still holds that
    very object (``is``), so a value replaced later is encoded afresh."""

    value: Any
    text: str
    size: int


def dumps(value: Any) -> str:
    """Compact JSON of a value known to be JSON (lists, dicts, finite numbers)."""
    return encode(value).text


def encode(value: Any) -> Encoded:
    """``value`` as compact JSON with its size: orjson, or json for what orjson refuses
    (integers past 64 bits, lone surrogates, keys that are not strings)."""
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError:
        # ensure_ascii: a lone surrogate can only be stored escaped
        text = json.dumps(value, separators=(",", ":"))
        return Encoded(value, text, len(text))
    return Encoded(value, data.decode(), len(data))


# orjson writes these as JSON on its own; a node's outputs must be plain JSON values
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def encode_outputs(value: Any, max_bytes: int) -> Encoded:
    """A node's outputs (any Python object) as stored JSON: TypeError or ValueError
    unless it is strict JSON (no NaN or infinity, no object JSON has no type for).

    orjson encodes and measures in one pass, but writes NaN and infinity as null
    without a word: a text that holds ``null`` is checked once more, by json, for
    numbers that are not finite. Only a text within ``max_bytes`` is: a larger one
    is refused for its size, so the check costs at most that much.
    """
    try:
        data = orjson.dumps(value, option=_STRICT)
    except orjson.JSONEncodeError:  # ints past 64 bits, lone surrogates, int keys
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
        return Encoded(value, text, len(text))
    if b"null" in data and len(data) <= max_bytes:
        # (default: types orjson took are not this check's business)
        json.dumps(value, allow_nan=False, default=_anything)
    return Encoded(value, data.decode(), len(data))


def _anything(value: Any) -> None:
    return None


def encode_reusing(value: Mapping[str, Any], parts: Iterable[Encoded]) -> Encoded:
    """``encode`` of a mapping whose values may be already encoded (``parts``: a run's
    outputs made of its nodes' outputs): their text is reused, not made again."""
    known = {id(part.value): part for part in parts}
    try:
        data = orjson.dumps({key: orjson.Fragment(known[id(item)].text)
                             if id(item) in known else item for key, item in value.items()})
    except orjson.JSONEncodeError:
        return encode(value)
    return Encoded(value, data.decode(), len(data))


class TooLarge(Exception):
    """Raised by ``plain_json`` once a value's JSON would take more than ``max_bytes``:
    more than ``size`` bytes, where the walk stopped."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def plain_json(value: Any, max_bytes: float = math.inf) -> Any:
    """``value`` as JSON holds it (tuples, sets and ranges become lists, number keys
    strings): TypeError or ValueError for what JSON cannot hold (NaN and infinity
    included), TooLarge once its JSON would pass ``max_bytes``.

    The walk counts the least the JSON can take (a character is at least a byte) and
    stops there: a list holding one big string a million times costs little to hold,
    and would take gigabytes to write.
    """
    return _Plain(max_bytes).value(value)


class _Plain:
    """One walk of ``plain_json``: the bytes counted so far against ``max_bytes``."""

    def __init__(self, max_bytes: float) -> None:
        self.max_bytes = max_bytes
        self.spent = 0

    def _take(self, size: int) -> None:
        self.spent += size
        if self.spent > self.max_bytes:
            raise TooLarge(self.spent)

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            self._take(len(value) + 2)
            return value
        if value is None or isinstance(value, bool | int):
            self._take(1)
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{value} is not a finite number")
            self._take(1)
            return value
        if isinstance(value, Mapping):
            self._take(1 + len(value))  # braces and commas
            return {self.key(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | range | set | frozenset):
            self._take(1 + len(value))
            return [self.value(v) for v in value]
        raise TypeError(f"it holds a {type(value).__name__}")

    def key(self, key: Any) -> str:
        if isinstance(key, str):
            text = key
        elif isinstance(key, int | float | bool) or key is None:
            text = json.dumps(key)
        else:
            raise TypeError(f"a key is a {type(key).__name__}")
        self._take(len(text) + 3)  # quotes and colon
        return text
