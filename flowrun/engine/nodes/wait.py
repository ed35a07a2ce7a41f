"""``wait``: park the run until a signal names this node's wait, or its timeout passes.

The node itself only decides: the signal's data when it has come (it becomes the
node's outputs), a ``wait_timeout`` failure once ``timeout_s`` has passed (with
``on_error: default`` the node then takes its ``default``, as any node does),
otherwise ``WaitForSignal``. The executor records the node as waiting
and the runner parks the run; a signal (``POST /runs/{id}/signal``, or the one-time
signal URL) or the timeout queues it again, and this node runs once more.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

import pydantic

from flowrun.engine.nodes.registry import NodeContext, registry
from flowrun.errors import NodeFailure, WaitForSignal
from flowrun.language.definitions import SIGNAL_PATTERN

SignalName = Annotated[str, pydantic.StringConstraints(pattern=SIGNAL_PATTERN)]


async def wait(ctx: NodeContext, *, signal: SignalName | None = None,
               timeout_s: pydantic.PositiveFloat | None = None) -> dict[str, Any]:
    name: str = signal or ctx.node_id
    if name in ctx.signals:
        data = ctx.signals[name]
        ctx.process_data.update(signal=name)
        return dict(data)
    now = time.time()
    since = ctx.waiting_since if ctx.waiting_since is not None else now
    expires_at = None if timeout_s is None else since + timeout_s
    if expires_at is not None and now >= expires_at:
        raise NodeFailure(f"no signal {name!r} came within {timeout_s:g}s",
                          code="wait_timeout", process_data={"signal": name, "timed_out": True})
    raise WaitForSignal(name, expires_at=expires_at, token=secrets.token_urlsafe(24))


registry.register("wait", wait)
