"""Custom node types the end-to-end servers load with --plugin."""

from __future__ import annotations

from typing import Any

import anyio

import flowrun


@flowrun.node("count")
async def count(ctx: flowrun.NodeContext, *, file: str, label: str) -> dict[str, str]:
    """Append ``label`` to ``file``: a side effect that shows how often a node really ran."""
    async with await anyio.open_file(file, "a") as f:
        await f.write(label + "\n")
    return {"label": label}


@flowrun.node("require_file")
async def require_file(ctx: flowrun.NodeContext, *, path: str) -> dict[str, bool]:
    """Fail until ``path`` exists on the server's host (a gate a test can open)."""
    if not await anyio.Path(path).exists():
        raise flowrun.NodeFailure(f"marker missing: {path}")
    return {"passed": True}


@flowrun.node("emit")
async def emit(ctx: flowrun.NodeContext, *, parts: list[str],
               delay: float = 0.0) -> dict[str, str]:
    """Stream ``parts`` as text chunks, ``delay`` seconds apart."""
    for part in parts:
        await ctx.emit_text(part)
        if delay:
            await anyio.sleep(delay)
    return {"text": "".join(parts)}


@flowrun.node("chat_input")
async def chat_input(ctx: flowrun.NodeContext, *, input_value: str = "",
                     input_type: str = "chat", session_id: str | None = None) -> dict[str, Any]:
    """A Langflow-like input component: its params arrive as ``ChatInput-abc.param``."""
    return {"text": input_value, "type": input_type, "session_id": session_id}
