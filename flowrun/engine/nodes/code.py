"""``code``: run user Python ``main(**inputs) -> dict`` in a sandboxed worker process."""

from __future__ import annotations

from typing import Any

from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes.registry import NodeContext, registry


async def code(ctx: NodeContext, *, code: str,
               inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The node's ``timeout`` option (or the code_timeout_s setting) kills a runaway job."""
    services = ctx.services if ctx.services is not None else NodeServices()
    result = await services.code.run(code, inputs or {})
    ctx.process_data.update(stdout=result.stdout, stderr=result.stderr)
    return result.outputs


registry.register("code", code)
