"""``code``: run user Python ``main(**inputs) -> dict`` in a sandboxed worker process.

A definition's code is compiled (never run) when it is loaded, so a syntax error
is reported then rather than by the first run.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes.registry import NodeContext, registry
from flowrun.language import expressions

if TYPE_CHECKING:
    from flowrun.language.definitions import NodeTypes


async def code(ctx: NodeContext, *, code: str,
               inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The node's ``timeout`` option (or the code_timeout_s setting) kills a runaway job."""
    services = ctx.services if ctx.services is not None else NodeServices()
    result = await services.code.run(code, inputs or {})
    ctx.process_data.update(stdout=result.stdout, stderr=result.stderr)
    return result.outputs


def _check(params: Mapping[str, Any], node_types: NodeTypes) -> list[tuple[str | None, str]]:
    source = params.get("code")
    if not isinstance(source, str) or expressions.is_expression(source):
        return []  # not text (the param check says so), or rendered first: checked at run time
    problem = _compile_problem(source)
    return [("code", problem)] if problem else []


@functools.lru_cache(maxsize=256)  # a run's graph or overrides are checked on every run
def _compile_problem(source: str) -> str | None:
    try:
        # As the worker compiles it (same interpreter, same flags); nothing is executed.
        compile(source, "<code>", "exec")
    except SyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno else "the code"
        return f"syntax error at {where}: {exc.msg}"
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, deep nesting
        return f"cannot compile: {type(exc).__name__}: {exc}"
    return None


registry.register("code", code, check=_check)
