"""jsontext: the stored JSON text of a value and its size in bytes, made once."""

from __future__ import annotations

import json

from flowrun.jsontext import dumps, encode


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
