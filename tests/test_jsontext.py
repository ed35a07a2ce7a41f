"""jsontext: the stored JSON text of a value and its size in bytes, made once."""

from __future__ import annotations

import datetime
import json
import math

import pytest

from flowrun.jsontext import (
    Encoded,
    TooLarge,
    dumps,
    encode,
    encode_outputs,
    encode_reusing,
    plain_json,
)


def test_the_size_is_the_bytes_the_store_writes() -> None:
    for value in ({"text": "abc"}, {"text": "中文" * 10}, {"n": [1, 2.5, None, True]}):
        encoded = encode(value)
        assert json.loads(encoded.text) == value
        assert encoded.size == len(encoded.text.encode("utf-8"))
        assert encoded.value is value


def test_what_orjson_refuses_is_written_by_json_and_can_be_stored() -> None:
    assert json.loads(dumps({"n": 2 ** 70})) == {"n": 2 ** 70}
    encoded = encode({"x": "a\ud800b"})  # a lone surrogate: only escaped is it UTF-8
    assert encoded.text.isascii() and encoded.size == len(encoded.text)
    assert json.loads(encoded.text) == {"x": "a\ud800b"}
    assert dumps({1: "a"}) == '{"1":"a"}'


def test_node_outputs_must_be_strict_json() -> None:
    assert encode_outputs({"a": None, "b": (1, 2)}, 100).text == '{"a":null,"b":[1,2]}'
    for bad in ({"x": math.nan}, {"x": [None, -math.inf]}, {"x": {1, 2}},
                {"x": datetime.datetime.now()}):
        with pytest.raises((TypeError, ValueError)):
            encode_outputs(bad, 1000)
    big = encode_outputs({"x": math.nan, "pad": "p" * 100}, 50)  # refused for its size
    assert big.size > 50


def test_a_runs_outputs_reuse_the_text_of_their_nodes() -> None:
    node = {"text": "abc"}
    part = Encoded(node, '{"text":"as stored"}', 20)
    encoded = encode_reusing({"a": node, "b": [1]}, [part])
    assert encoded.text == '{"a":{"text":"as stored"},"b":[1]}'
    assert encoded.size == len(encoded.text)


def test_plain_json_converts_and_stops_past_its_bound() -> None:
    assert plain_json({1: (1, 2), "s": {3}}) == {"1": [1, 2], "s": [3]}
    big = "b" * 1000
    with pytest.raises(TooLarge) as caught:
        plain_json([big] * 1_000_000, 10_000)  # 1 GB to write: refused by its length
    assert caught.value.size > 10_000
    with pytest.raises(TooLarge):
        plain_json([[big] * 1000] * 1000, 10_000)  # stops within the first inner list
    for value in ({"k": ["é", 1, None, {"x": 2.5}]}, [], {}, ["a"] * 10):
        size = encode(value).size  # the walk's count never passes the real size
        assert plain_json(value, size) == json.loads(encode(value).text)
    with pytest.raises(ValueError, match="not a finite number"):
        plain_json([math.inf])
