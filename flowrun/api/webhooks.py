"""Inbound webhook routes of the native API: the admin's hook management and the
deliveries (``flowrun.features.webhooks.book`` holds the rules).

``POST /hooks/{workflow}`` asks for no API key: the signature is the credential.
It reads the raw body (capped at ``max_body_bytes``), because the signature is
over those exact bytes, and parses it as JSON only once the signature holds.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue
from starlette.requests import Request
from starlette.responses import Response

from flowrun.api.common import (
    JSONResponse,
    instance_of,
    parse_json,
    parse_model,
    principal_of,
    read_body,
    read_json,
)
from flowrun.api.routes import ApiRoute
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
    """Create the workflow's webhook (201, its secret shown once) or change how a
    delivery's body maps to inputs (200) (admin)."""
    principal = await principal_of(request)
    require_admin(principal, "managing hooks")  # before reading the body
    body = parse_model(HookBody, await read_json(request, _max_body(request), empty={}))
    record, secret = await instance_of(request).hooks.put(principal, request.path_params["name"],
                                                 body.inputs)
    return JSONResponse(_shown(record, secret), status_code=201 if secret else 200)


async def get_hook(request: Request) -> Response:
    """The workflow's inbound webhook, never its secret (admin)."""
    principal = await principal_of(request)
    record = await instance_of(request).hooks.get(principal, request.path_params["name"])
    return JSONResponse(_shown(record))


async def rotate_hook(request: Request) -> Response:
    """A new webhook secret, shown once; the old one stops working (admin)."""
    principal = await principal_of(request)
    record, secret = await instance_of(request).hooks.rotate(principal, request.path_params["name"])
    return JSONResponse(_shown(record, secret))


async def delete_hook(request: Request) -> Response:
    """Delete the workflow's webhook (admin)."""
    principal = await principal_of(request)
    await instance_of(request).hooks.delete(principal, request.path_params["name"])
    return Response(status_code=204)


async def deliver(request: Request) -> Response:
    """A signed delivery (`Flowrun-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
    "<t>.<body>">`; no API key): starts a run with the body as inputs (202, Location:
    /runs/{id}); 401 when the signature is missing, malformed, stale or wrong, 409 for a
    replay."""
    book = instance_of(request).hooks
    raw = await read_body(request, _max_body(request))
    delivery = await book.verify(request.path_params["workflow"],
                                 request.headers.get(signing.HEADER), raw)
    submission = await book.start(delivery, parse_json(raw), request.headers)
    run = submission.run
    location = f"{request.scope.get('root_path', '')}/runs/{run.id}"
    return JSONResponse({"run_id": run.id, "status": run.status.value}, status_code=202,
                        headers={"Location": location, "X-Run-Id": run.id})


route = partial(ApiRoute, error="Problem")  # the native API's

routes = [
    route("/workflows/{name}/hook", get_hook, "GET"),
    route("/workflows/{name}/hook", put_hook, "PUT", ok="201", body=HookBody, also=("200",)),
    route("/workflows/{name}/hook", delete_hook, "DELETE", ok="204"),
    route("/workflows/{name}/hook/rotate", rotate_hook, "POST"),
    route("/hooks/{workflow}", deliver, "POST", ok="202", body={}, public=True,
          headers=(signing.HEADER,)),
]

__all__ = ("HookBody", "routes")
