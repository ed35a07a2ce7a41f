"""Input values against their declared types and bounds: one rule for a run's inputs
and for the literal inputs a definition gives a child workflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowrun.language.definitions import InputSpec

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
    "object": (dict,), "array": (list,), "file": (dict,),
}


def input_problem(spec: InputSpec, value: Any) -> str | None:
    """What is wrong with ``value`` for an input of this spec; None when nothing."""
    is_bool = isinstance(value, bool)
    if not isinstance(value, _PY_TYPES[spec.type]) or (is_bool and spec.type != "boolean"):
        return f"expected {spec.type}, got {_json_type(value)}"
    if spec.type == "integer" and isinstance(value, float):
        return "expected integer, got number"
    if spec.type == "file" and isinstance(value, dict):
        if "transfer_method" not in value or not ({"url", "upload_file_id"} & value.keys()):
            return "a file needs transfer_method and url or upload_file_id"
    if isinstance(value, str | list):
        if spec.max_length is not None and len(value) > spec.max_length:
            return f"longer than max_length {spec.max_length}"
        if spec.min_length is not None and len(value) < spec.min_length:
            return f"shorter than min_length {spec.min_length}"
    if isinstance(value, int | float) and not is_bool:
        if spec.minimum is not None and value < spec.minimum:
            return f"less than minimum {spec.minimum:g}"
        if spec.maximum is not None and value > spec.maximum:
            return f"greater than maximum {spec.maximum:g}"
    if spec.enum is not None and value not in spec.enum:
        return f"must be one of {spec.enum}"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
