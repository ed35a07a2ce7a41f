"""``template``: render text; expressions are evaluated before the node runs."""

from __future__ import annotations

from typing import Any

from flowrun.engine.nodes.registry import NodeContext, registry


async def template(ctx: NodeContext, *, template: Any) -> dict[str, Any]:
    return {"text": template if isinstance(template, str) else str(template)}


registry.register("template", template, outputs={"text"})
