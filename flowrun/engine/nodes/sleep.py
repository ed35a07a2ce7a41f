"""``sleep``: wait; cancellation (stop, timeout, deadline) interrupts it at once."""

from __future__ import annotations

import anyio
import pydantic

from flowrun.engine.nodes.registry import NodeContext, registry


async def sleep(ctx: NodeContext, *,
                seconds: pydantic.NonNegativeFloat) -> dict[str, float]:
    await anyio.sleep(seconds)
    return {"slept": seconds}


registry.register("sleep", sleep, outputs={"slept"})
