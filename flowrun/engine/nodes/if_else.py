"""``if_else``: evaluate a condition and take the ``true`` or ``false`` branch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowrun.engine.nodes.registry import NodeContext, registry

_FALSE_STRINGS = {"", "false", "0", "no", "off", "none", "null"}


def truthy(value: Any) -> bool:
    """Truth of a condition; the strings "false", "0", "no"... are false."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_STRINGS
    return bool(value)


async def if_else(ctx: NodeContext, *, condition: Any) -> dict[str, bool]:
    return {"result": truthy(condition)}


def _select(outputs: Mapping[str, Any]) -> str:
    return "true" if outputs.get("result") else "false"


registry.register("if_else", if_else, branches=lambda _params: {"true", "false"},
                  select_branch=_select, outputs={"result"})
