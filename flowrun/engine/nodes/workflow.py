"""``workflow``: run another registered workflow as a child run and output its outputs.

The child is a real run (own id, visible through the API, ``parent_run_id``
set) made through the instance's ``child_runs`` service. Its idempotency key is
derived from this node, attempt and inputs, so a parent resumed after a
restart re-attaches to the same child instead of starting another. Stopping
the parent stops the child; a shutdown leaves both to resume.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import anyio

from flowrun.engine.nodes.registry import NodeContext, registry
from flowrun.errors import FlowrunError, NodeFailure


async def workflow(ctx: NodeContext, *, workflow: str, version: int | None = None,
                   inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    runs = ctx.services.child_runs if ctx.services is not None else None
    if runs is None:
        raise NodeFailure("the workflow node needs a flowrun server to start child runs",
                          code="child_unavailable")
    digest = hashlib.sha256(json.dumps(inputs or {}, sort_keys=True, default=str).encode())
    key = f"{ctx.node_id}:{ctx.attempt}:{digest.hexdigest()[:16]}"
    try:
        child_id = await runs.start(ctx.run_id, key, workflow, version, inputs or {})
    except FlowrunError as exc:
        raise NodeFailure(f"cannot start workflow {workflow!r}: {exc.message}",
                          code="child_rejected") from None
    ctx.process_data["child_run_id"] = child_id
    try:
        status, outputs, error = await runs.wait(child_id)
    except anyio.get_cancelled_exc_class():
        if ctx.ending():
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await runs.stop(child_id)
        raise
    if status != "succeeded":
        detail = (error or {}).get("message") or status
        raise NodeFailure(f"child run {child_id} of {workflow!r} {status}: {detail}",
                          code="child_failed")
    return dict(outputs or {})


registry.register("workflow", workflow)
