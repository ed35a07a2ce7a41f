"""Request plumbing shared by every API module: state, auth, bounded JSON bodies."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import orjson
import pydantic
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response

from flowrun import ids
from flowrun.auth import KeyRing, Principal, key_from_headers
from flowrun.engine.executor import node_tokens
from flowrun.errors import (
    BadRequest,
    FlowrunError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from flowrun.records import OnConflict, RunRecord
from flowrun.service import RunService
from flowrun.vault import Vault
from flowrun.workflows import WorkflowCatalog

M = TypeVar("M", bound=pydantic.BaseModel)


class JSONResponse(_StarletteJSONResponse):
    """Starlette's JSON response, encoded by orjson (several times faster on run records).

    Bodies hold only what JSON can: stored values were checked when they were made.
    Whatever orjson refuses (an integer past 64 bits) falls back to Starlette's encoder.
    """

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except orjson.JSONEncodeError:
            return super().render(content)


def _started(request: Request, part: str) -> Any:
    """A part of the running instance (set by the lifespan); 503 outside it."""
    found = getattr(request.app.state, part, None)
    if found is None:
        raise Unavailable("flowrun is not started (outside its lifespan, or shutting down)",
                          headers={"Retry-After": "1"})
    return found


def service_of(request: Request) -> RunService:
    """The instance's RunService: runs."""
    service: RunService = _started(request, "service")
    return service


def workflows_of(request: Request) -> WorkflowCatalog:
    """The instance's workflow definitions."""
    workflows: WorkflowCatalog = _started(request, "workflows")
    return workflows


def vault_of(request: Request) -> Vault:
    """The instance's secrets, as the admin API manages them."""
    vault: Vault = _started(request, "vault")
    return vault


def keys_of(request: Request) -> KeyRing:
    """The instance's API keys."""
    keys: KeyRing = _started(request, "keys")
    return keys


async def principal_of(request: Request) -> Principal:
    """Authenticate the request's API key (401 when missing or invalid)."""
    return await keys_of(request).authenticate(key_from_headers(request.headers))


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                            and media.endswith("+json"))


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing (413) anything over ``max_bytes`` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and \
            (len(declared) > 18 or int(declared) > max_bytes):
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {max_bytes}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int, *, empty: Any = None) -> Any:
    """The JSON body; 415 for another media type, 400 for malformed JSON.

    An empty body without a content type is ``empty`` (a bare ``curl -X POST``).
    """
    body = await read_body(request, max_bytes)
    content_type = request.headers.get("content-type", "")
    if not body.strip() and empty is not None and not content_type:
        return empty
    if not _is_json(content_type):
        raise UnsupportedMediaType(f"send the body as application/json "
                                   f"(got {content_type or 'no content type'!r})")
    try:
        data = json.loads(body, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        data = None
        depth = MAX_JSON_DEPTH + 1
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}",
                         errors=[{"field": "body", "message": "malformed JSON"}]) from None
    else:
        depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"the JSON body is nested too deeply (over {MAX_JSON_DEPTH} levels)",
                         errors=[{"field": "body", "message": "nested too deeply"}])
    return data


MAX_JSON_DEPTH = 64


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (without recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def pydantic_errors(exc: pydantic.ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Per-field errors of a pydantic failure, each naming its field."""
    errors = []
    for err in exc.errors():
        field = prefix + ".".join(str(p) for p in err["loc"])
        errors.append({"field": field or "body", "message": f"{field or 'body'}: {err['msg']}"})
    return errors


def parse_model(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate ``data`` as ``model``; 400 naming every bad field."""
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object",
                         errors=[{"field": "body", "message": "must be a JSON object"}])
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = pydantic_errors(exc, prefix)
        raise BadRequest("; ".join(e["message"] for e in errors), errors=errors) from None


MAX_IDEMPOTENCY_KEY = 255
MAX_NUMBER = 2**62  # any id, sequence or count a client sends; SQLite's integers are 64-bit


id_number = ids.number_of


def idempotency_of(request: Request, max_length: int = MAX_IDEMPOTENCY_KEY
                   ) -> tuple[str | None, OnConflict]:
    """``Idempotency-Key`` (or ``X-Idempotency-key``) and ``X-On-Conflict`` of a request."""
    key = request.headers.get("idempotency-key") or request.headers.get("x-idempotency-key")
    header = "Idempotency-Key" if request.headers.get("idempotency-key") else "X-Idempotency-key"
    if key is not None:
        key = key.strip()
        if not key or len(key) > max_length or not key.isprintable():
            raise BadRequest(f"{header} must be 1-{max_length} printable characters",
                             errors=[{"field": header, "message": "invalid"}])
    strategy = on_conflict_of(request.headers.get("x-on-conflict"), "X-On-Conflict")
    return key, strategy or OnConflict.RETURN_EXISTING


def on_conflict_of(raw: str | None, field: str) -> OnConflict | None:
    """An idempotency strategy by name (any case); None when ``raw`` is empty."""
    if raw is None or not raw.strip():
        return None
    try:
        return OnConflict(raw.strip().upper())
    except ValueError:
        choices = ", ".join(c.value for c in OnConflict)
        raise BadRequest(f"{field} must be one of {choices}",
                         errors=[{"field": field, "message": "unknown"}]) from None


def query_int(request: Request, name: str, default: int | None, *, minimum: int,
              maximum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if len(raw) < 19 else maximum + 1
    except ValueError:
        raise BadRequest(f"{name} must be an integer",
                         errors=[{"field": name, "message": "must be an integer"}]) from None
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name} must be between {minimum} and {maximum}",
                         errors=[{"field": name, "message": f"must be {minimum}-{maximum}"}])
    return value


ErrorRenderer = Callable[[FlowrunError, Request], Response]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


def http_error(exc: HTTPException) -> FlowrunError:
    """Starlette's own 404/405 (no route, wrong method) as a FlowrunError."""
    err = NotFound(str(exc.detail)) if exc.status_code == 404 else FlowrunError(str(exc.detail))
    err.status_code = exc.status_code
    err.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
    err.title = str(exc.detail)
    return err


def error_handlers(render: ErrorRenderer) -> dict[type[Exception], ErrorHandler]:
    """Exception handlers rendering FlowrunError (and Starlette's 404/405) with ``render``,
    a dialect's error envelope."""

    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return render(http_error(exc), request)
        assert isinstance(exc, FlowrunError)
        return render(exc, request)

    return {FlowrunError: handle, HTTPException: handle}


def unix(ts: float | None) -> int | None:
    return None if ts is None else int(ts)


def run_tokens(run: RunRecord) -> int:
    """Tokens the run's nodes reported (an llm node's usage)."""
    return sum(node_tokens(n) for n in run.nodes)


def last_event_id(request: Request) -> int:
    """Where a stream resumes: ``Last-Event-ID`` header, else ``?after=``, else 0."""
    raw = request.headers.get("last-event-id")
    field = "Last-Event-ID"
    if raw is None or not raw.strip():
        raw, field = request.query_params.get("after"), "after"
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw) if len(raw) < 19 else -1
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_NUMBER:
        raise BadRequest(f"{field} must be a non-negative event sequence number",
                         errors=[{"field": field, "message": "must be an integer >= 0"}])
    return value


async def _paced(frames: AsyncGenerator[ServerSentEvent, None]
                 ) -> AsyncIterator[ServerSentEvent]:
    """Yield to the loop after each frame. A replay sends many frames without waiting;
    if the client has gone, the transport learns it at the first failed write but tells
    uvicorn only on the next loop turn, and every write in between is logged by asyncio
    ("socket.send() raised exception").

    Every generator in an event stream closes the one it reads from (``aclosing``):
    ``async for`` does not, and an unclosed generator would hold its bus
    subscription and its key's stream slot until a garbage collection.
    """
    async with aclosing(frames):  # closed here, not left to the garbage collector
        async for frame in frames:
            yield frame
            await anyio.lowlevel.checkpoint()


def sse_response(request: Request, frames: AsyncGenerator[ServerSentEvent, None], *,
                 ping_event: bool = False,
                 headers: dict[str, str] | None = None) -> EventSourceResponse:
    """An SSE answer with the instance's keep-alive and slow-client settings.

    Keep-alives are a ``: ping`` comment, or an ``event: ping`` frame with
    ``ping_event`` (Dify's form).
    """
    settings = service_of(request).settings
    factory = (lambda: ServerSentEvent(event="ping")) if ping_event else None
    return EventSourceResponse(_paced(frames), ping=settings.sse_ping_s, headers=headers,
                               ping_message_factory=factory,
                               send_timeout=settings.sse_send_timeout_s)
