"""The baseline: a bare Starlette endpoint that parses and answers JSON."""

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "got": await request.json()}, status_code=202)


async def static(request: Request) -> PlainTextResponse:
    """The cheapest answer the stack can give: the load generator's ceiling shows here."""
    return PlainTextResponse("ok")


async def events(request: Request) -> EventSourceResponse:
    """An SSE answer whose first event is ready at once: what the stack and the client
    cost before flowrun's first event (same SSE library, same framing)."""
    await request.json()

    async def one() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(id="1", event="workflow_started", data='{"ok":true}')

    return EventSourceResponse(one())


app = Starlette(routes=[Route("/echo", echo, methods=["POST"]),
                        Route("/events", events, methods=["POST"]),
                        Route("/static", static, methods=["GET"])])
