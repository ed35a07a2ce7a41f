"""The conductor dialect (being built)."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
exception_handlers: dict[Any, Any] = {}
