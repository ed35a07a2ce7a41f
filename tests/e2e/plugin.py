"""Custom node types the end-to-end servers load with --plugin."""

from __future__ import annotations

import anyio

import flowrun


@flowrun.node("count")
async def count(ctx: flowrun.NodeContext, *, file: str, label: str) -> dict[str, str]:
    """Append ``label`` to ``file``: a side effect that shows how often a node really ran."""
    async with await anyio.open_file(file, "a") as f:
        await f.write(label + "\n")
    return {"label": label}


@flowrun.node("emit")
async def emit(ctx: flowrun.NodeContext, *, parts: list[str],
               delay: float = 0.0) -> dict[str, str]:
    """Stream ``parts`` as text chunks, ``delay`` seconds apart."""
    for part in parts:
        await ctx.emit_text(part)
        if delay:
            await anyio.sleep(delay)
    return {"text": "".join(parts)}
