"""JSON text as flowrun stores it, and its size: made once, measured once, reused.

A value is encoded by orjson (in C) into the text the store writes; the number of
bytes that takes is known from the same call, so what is measured is what is
written, and a value the engine has encoded is not encoded again by the store.
"""

from __future__ import annotations

import json
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
