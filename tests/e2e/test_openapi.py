"""Every operation /openapi.json describes answers on a real server, in its described
error shape: with the native API at the root, and with a dialect there instead."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.server import Server


def conforms(value: Any, schema: dict[str, Any], schemas: dict[str, Any]) -> bool:
    """Whether ``value`` has the keys ``schema`` requires, in nested objects too (all an
    error shape needs)."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
    if schema.get("type") != "object":
        return True
    if not isinstance(value, dict) or not set(schema.get("required", ())) <= set(value):
        return False
    return all(conforms(value[name], sub, schemas)
               for name, sub in schema.get("properties", {}).items() if name in value)


@pytest.mark.parametrize("root", [None, "jobs"])
def test_every_described_operation_answers_in_its_shape(
        server_factory: Callable[..., Server], root: str | None) -> None:
    """A request for each operation, its path parameters unknown ids and no body, reaches
    a handler (no router 404 or 405) and any error is the one the spec says. Under a
    root dialect the native API answers under /native and a route the /jobs mount
    shadows is not described."""
    server = server_factory({"FLOWRUN_ROOT_DIALECT": root} if root else {})
    key = server.admin_key()
    server.start()
    client = server.client(key)
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    answered = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            answer = client.request(method, re.sub(r"{[^}]*}", "~1", path))
            where = (method, path, answer.status_code, answer.text[:300])
            assert answer.status_code != 405 and '"Not Found"' not in answer.text, where
            if answer.status_code >= 400:
                content = op["responses"][str(answer.status_code)]["content"]
                assert answer.headers["content-type"].split(";")[0] in content, where
                schema = next(iter(content.values()))["schema"]
                assert conforms(answer.json(), schema, schemas), where
            answered += 1
    assert answered > 55
