"""The baseline: a bare Starlette endpoint that parses and answers JSON."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "got": await request.json()}, status_code=202)


async def static(request: Request) -> PlainTextResponse:
    """The cheapest answer the stack can give: the load generator's ceiling shows here."""
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/echo", echo, methods=["POST"]),
                        Route("/static", static, methods=["GET"])])
