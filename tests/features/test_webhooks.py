"""Webhooks, the pure rules: mapping checks, body to inputs, visible headers."""

from __future__ import annotations

from typing import Any

import pytest

from flowrun.errors import BadRequest, Unprocessable
from flowrun.features.webhooks import book


@pytest.mark.parametrize("mapping", [None, {}, {"a": "{{ body.x }}", "b": [1, "{{ 2 }}"]},
                                     "{{ body.payload }}", {"fixed": "text"}])
def test_good_mappings_pass(mapping: Any) -> None:
    book.check_mapping(mapping)


@pytest.mark.parametrize("mapping", ["plain text", 3, [1], True, {"a": "{{ body. }}"},
                                     {"a": {"b": ["{% if %}"]}}])
def test_bad_mappings_are_refused_naming_inputs(mapping: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        book.check_mapping(mapping)
    assert caught.value.errors[0]["field"] == "inputs"


def test_without_a_mapping_the_body_object_is_the_inputs() -> None:
    assert book.map_inputs(None, {"text": "hi"}, {}) == {"text": "hi"}
    with pytest.raises(Unprocessable):
        book.map_inputs(None, ["not", "an", "object"], {})


def test_a_mapping_reads_the_body_and_lowercased_headers() -> None:
    mapping = {"text": "{{ body.message.text }}", "event": "{{ headers['x-event'] }}",
               "count": "{{ body.items | length }}"}
    inputs = book.map_inputs(mapping, {"message": {"text": "hi"}, "items": [1, 2]},
                              {"X-Event": "push"})
    assert inputs == {"text": "hi", "event": "push", "count": 2}
    assert book.map_inputs("{{ body.payload }}", {"payload": {"a": 1}}, {}) == {"a": 1}


@pytest.mark.parametrize("mapping", ["{{ body.missing.deeper }}", "{{ body.text }}",
                                     "{{ range(3) }}", {"r": "{{ range(3) }}"}])
def test_a_mapping_that_fails_or_gives_no_json_object_is_unprocessable(mapping: Any) -> None:
    with pytest.raises(Unprocessable):
        book.map_inputs(mapping, {"text": "x"}, {})


def test_credentials_and_the_signature_are_not_visible_to_a_mapping() -> None:
    shown = book.visible_headers({"Authorization": "Bearer k", "Cookie": "c",
                                   "X-Api-Key": "k", "Flowrun-Signature": "t=1,v1=a",
                                   "Content-Type": "application/json"})
    assert shown == {"content-type": "application/json"}


def test_a_delivery_acts_for_its_workflow_only_and_without_a_key() -> None:
    principal = book.hook_principal("wf")
    assert principal.key_id is None and not principal.is_admin
    assert principal.may_use("wf") and not principal.may_use("other")
