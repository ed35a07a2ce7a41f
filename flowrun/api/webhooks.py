"""Inbound webhook routes of the native API: the admin's hook management and the
deliveries (``flowrun.features.webhooks.book`` holds the rules).

``POST /hooks/{workflow}`` asks for no API key: the signature is the credential.
It reads the raw body (capped at ``max_body_bytes``), because the signature is
over those exact bytes, and parses it as JSON only once the signature holds.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flowrun.api.common import (
    JSONResponse,
    instance_of,
    parse_json,
    parse_model,
    principal_of,
    read_body,
    read_json,
)
from flowrun.features.webhooks import signing
from flowrun.records import HookRecord
from flowrun.runs.access import require_admin


class HookBody(BaseModel):
    """``PUT /workflows/{name}/hook``: how a delivery's body becomes the run's inputs."""

    model_config = ConfigDict(extra="forbid")

    # None: the body (a JSON object) is the inputs. Else any JSON value whose strings
    # may be {{ }} expressions over ``body`` and ``headers``, giving an object.
    inputs: JsonValue = None


def _max_body(request: Request) -> int:
    return instance_of(request).service.settings.max_body_bytes


def _shown(record: HookRecord, secret: str | None = None) -> dict[str, Any]:
    body = record.to_json()
    if secret is not None:  # shown once: when it is made
        body["secret"] = secret
    return body


async def put_hook(request: Request) -> Response:
    """Create the workflow's hook (201, with its secret) or change its mapping (200)."""
    principal = await principal_of(request)
    require_admin(principal, "managing hooks")  # before reading the body
    body = parse_model(HookBody, await read_json(request, _max_body(request), empty={}))
    record, secret = await instance_of(request).hooks.put(principal, request.path_params["name"],
                                                 body.inputs)
    return JSONResponse(_shown(record, secret), status_code=201 if secret else 200)


async def get_hook(request: Request) -> Response:
    principal = await principal_of(request)
    record = await instance_of(request).hooks.get(principal, request.path_params["name"])
    return JSONResponse(_shown(record))


async def rotate_hook(request: Request) -> Response:
    """A new secret, shown once; the old one stops working at once."""
    principal = await principal_of(request)
    record, secret = await instance_of(request).hooks.rotate(principal, request.path_params["name"])
    return JSONResponse(_shown(record, secret))


async def delete_hook(request: Request) -> Response:
    principal = await principal_of(request)
    await instance_of(request).hooks.delete(principal, request.path_params["name"])
    return Response(status_code=204)


async def deliver(request: Request) -> Response:
    """A signed delivery: 202 with the run it started, ``Location: /runs/{id}``."""
    book = instance_of(request).hooks
    raw = await read_body(request, _max_body(request))
    delivery = await book.verify(request.path_params["workflow"],
                                 request.headers.get(signing.HEADER), raw)
    submission = await book.start(delivery, parse_json(raw), request.headers)
    run = submission.run
    location = f"{request.scope.get('root_path', '')}/runs/{run.id}"
    return JSONResponse({"run_id": run.id, "status": run.status.value}, status_code=202,
                        headers={"Location": location, "X-Run-Id": run.id})


routes = [
    Route("/workflows/{name}/hook", get_hook, methods=["GET"]),
    Route("/workflows/{name}/hook", put_hook, methods=["PUT"]),
    Route("/workflows/{name}/hook", delete_hook, methods=["DELETE"]),
    Route("/workflows/{name}/hook/rotate", rotate_hook, methods=["POST"]),
    Route("/hooks/{workflow}", deliver, methods=["POST"]),
]

__all__ = ("HookBody", "routes")
