"""The web UI: one page and its static assets under ``/ui``, served by the main app.

The UI is plain HTML, CSS and JavaScript modules from ``flowrun/ui`` (no build step);
it talks to the native API like any other client, with the key in a header. It is
not an API, so its routes are left out of /openapi.json (``include_in_schema``).
The page is told where the native API lives (the root, or ``/native`` when a
dialect takes the root) through a meta tag filled in here.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ASSETS = Path(__file__).resolve().parent.parent / "ui"

# Only our own scripts and styles run on the page: whatever a node's outputs hold,
# rendered by mistake as markup, could not execute.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

# The page's scripts are ES modules, which a browser runs only when served with a
# JavaScript type; StaticFiles takes the type from the host's mimetypes tables, and a
# host whose tables map .js elsewhere (text/plain is seen) would leave the page blank.
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}


class _Assets(StaticFiles):
    """The UI's files, with their content types fixed here rather than guessed."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media_type = _TYPES.get(Path(full_path).suffix)
        if media_type and "content-type" in response.headers:  # (not on a 304)
            response.headers["content-type"] = media_type
        return response


def routes(api_base: str) -> list[BaseRoute]:
    """``/ui`` (the page) and ``/ui/...`` (its assets); ``api_base``: the native API's prefix."""
    page = (ASSETS / "index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        # Mounted inside another app (at root_path), the API is under it too; the page
        # links its assets relatively, so they follow.
        base = html.escape(request.scope.get("root_path", "") + api_base, quote=True)
        return HTMLResponse(page.replace("__API_BASE__", base), headers=_HEADERS)

    async def to_page(request: Request) -> Response:
        return RedirectResponse(request.scope.get("root_path", "") + "/ui", status_code=307)

    return [
        Route("/ui", index, methods=["GET"], include_in_schema=False),
        Route("/ui/", to_page, methods=["GET"], include_in_schema=False),
        Mount("/ui", app=_Assets(directory=ASSETS), name="ui"),
    ]
