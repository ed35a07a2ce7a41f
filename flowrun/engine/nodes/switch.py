"""``switch``: take the branch whose case value equals ``value``, else ``default``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowrun.engine.nodes.registry import NodeContext, registry


async def switch(ctx: NodeContext, *, value: Any, cases: dict[str, Any]) -> dict[str, str]:
    for branch, case in cases.items():
        if case == value or (isinstance(case, list) and value in case):
            return {"branch": branch}
    return {"branch": "default"}


def _branches(params: Mapping[str, Any]) -> set[str]:
    cases = params.get("cases")
    names = set(cases) if isinstance(cases, dict) else set()
    return names | {"default"}


registry.register("switch", switch, branches=_branches,
                  select_branch=lambda outputs: str(outputs.get("branch", "default")),
                  outputs={"branch"})
