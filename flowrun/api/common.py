"""Request plumbing shared by every API module: state, auth, bounded JSON bodies."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from contextlib import aclosing
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import orjson
import pydantic
import yaml
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response

from flowrun import ids
from flowrun.errors import (
    BadRequest,
    FlowrunError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    UnsupportedMediaType,
)
from flowrun.features.keys import key_from_headers
from flowrun.instance import Instance, Served
from flowrun.records import Event, OnConflict, RunRecord
from flowrun.runs.access import Principal
from flowrun.settings import Settings

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


def instance_of(request: Request) -> Instance:
    """The running instance (set by the lifespan); 503 outside it."""
    served: Served = request.app.state.flowrun
    if served.instance is None:
        raise Unavailable("flowrun is not started: serve it with its lifespan (mounted in "
                          "another app, enter flowrun_lifespan(app) from the host's "
                          "lifespan), or it is shutting down", headers={"Retry-After": "1"})
    return served.instance


async def principal_of(request: Request) -> Principal:
    """Authenticate the request's API key (401 when missing or invalid)."""
    keys = instance_of(request).keys
    if not keys.enabled:
        return await keys.authenticate(None)
    return await keys.authenticate(key_from_headers(request.headers))


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                            and media.endswith("+json"))


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing (413) anything over ``max_bytes`` without reading it all,
    and (408) a body that takes longer than ``body_timeout_s``: ``flowrun serve``'s
    protocol enforces that from the headers on, and this holds under any other server."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and \
            (len(declared) > 18 or int(declared) > max_bytes):
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {max_bytes}")
    timeout = _body_timeout(request)
    try:
        with anyio.fail_after(timeout):
            return await _read_chunks(request, max_bytes)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s",
                             headers={"Connection": "close"}) from None
    except ClientDisconnect:  # nobody is left to read the answer: no traceback for it
        raise BadRequest("the client left before its request body was complete") from None


async def _read_chunks(request: Request, max_bytes: int) -> bytes:
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _body_timeout(request: Request) -> float:
    settings = getattr(request.app.state, "settings", None)
    return float(settings.body_timeout_s) if settings is not None else Settings.body_timeout_s


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
    return parse_json(body)


def parse_json(body: bytes) -> Any:
    """A body parsed as JSON; 400 when it is not JSON or nests too deeply."""
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
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


async def read_json_or_yaml(request: Request, max_bytes: int) -> Any:
    """A body sent as JSON or, with a YAML media type, as YAML (how workflow files are
    written). YAML anchors and aliases are refused: a few hundred bytes of them can
    expand into gigabytes."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in YAML_TYPES:
        return await read_json(request, max_bytes)
    body = await read_body(request, max_bytes)
    # pure-Python parsing of up to max_bytes: off the event loop
    return await anyio.to_thread.run_sync(_parse_yaml, body)


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors and aliases as it meets them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML is untyped
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise BadRequest("YAML anchors and aliases are not accepted in a request body",
                             errors=[{"field": "body", "message": "uses an alias"}])
        return super().compose_node(parent, index)


def _parse_yaml(body: bytes) -> Any:
    try:
        data = yaml.load(body.decode("utf-8"), Loader=_NoAliasLoader)  # a safe loader
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise BadRequest(f"malformed YAML body: {exc}",
                         errors=[{"field": "body", "message": "malformed YAML"}]) from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body is nested too deeply (over {MAX_JSON_DEPTH} levels)",
                         errors=[{"field": "body", "message": "nested too deeply"}])
    return data


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


def pydantic_errors(exc: pydantic.ValidationError, prefix: str = "",
                    known: Collection[str] = ()) -> list[dict[str, Any]]:
    """Per-field errors of a pydantic failure, each naming its field; an unknown field
    close to one of ``known`` says which was meant."""
    errors = []
    for err in exc.errors():
        field = prefix + ".".join(str(p) for p in err["loc"])
        message = f"{field or 'body'}: {err['msg']}"
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            close = difflib.get_close_matches(str(err["loc"][0]), known, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {prefix + close[0]!r}?)"
        errors.append({"field": field or "body", "message": message})
    return errors


def parse_model(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate ``data`` as ``model``; 400 naming every bad field."""
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object",
                         errors=[{"field": "body", "message": "must be a JSON object"}])
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = pydantic_errors(exc, prefix, known=list(model.model_fields))
        raise BadRequest("; ".join(e["message"] for e in errors), errors=errors) from None


MAX_IDEMPOTENCY_KEY = 255
MAX_NUMBER = 2**62  # any id, sequence or count a client sends; SQLite's integers are 64-bit


id_number = ids.number_of


def idempotency_of(request: Request, max_length: int = MAX_IDEMPOTENCY_KEY
                   ) -> tuple[str | None, OnConflict]:
    """``Idempotency-Key`` (or ``X-Idempotency-key``) and ``X-On-Conflict`` of a request.

    A header that is sent is used or refused, never ignored: an empty key, two
    different keys, or a strategy without a key is a 400.
    """
    given = {header: request.headers[header.lower()].strip()
             for header in ("Idempotency-Key", "X-Idempotency-key")
             if header.lower() in request.headers}
    if len(set(given.values())) > 1:
        raise BadRequest("Idempotency-Key and X-Idempotency-key differ; send one of them",
                         errors=[{"field": "Idempotency-Key", "message": "sent twice"}])
    key = None
    for header, key in given.items():
        if not key or len(key) > max_length or not key.isprintable():
            raise BadRequest(f"{header} must be 1-{max_length} printable characters",
                             errors=[{"field": header, "message": "invalid"}])
    strategy = on_conflict_of(request.headers.get("x-on-conflict"), "X-On-Conflict")
    if strategy is not None and key is None:
        raise BadRequest("X-On-Conflict applies to a request with an Idempotency-Key",
                         errors=[{"field": "X-On-Conflict", "message": "needs a key"}])
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


def checked_wait(value: float | None, limit: float) -> float | None:
    """A run-sync wait a caller asked for (None: the default), or BadRequest outside
    (0, ``limit``] (the ``run_sync_max_timeout_s`` setting): one rule for the query
    parameter and every dialect's body field."""
    if value is not None and not 0 < value <= limit:
        raise BadRequest(f"timeout must be a number of seconds in (0, {limit:g}]",
                         errors=[{"field": "timeout", "message": "out of range"}])
    return value


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
    return sum(n.tokens for n in run.nodes)


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


async def encoded(events: AsyncGenerator[Event, None], encode: Callable[[Event], ServerSentEvent]
                  ) -> AsyncGenerator[ServerSentEvent, None]:
    """A run's events as a dialect's SSE frames; closing this closes ``events``."""
    async with aclosing(events):
        async for event in events:
            yield encode(event)


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
    settings = instance_of(request).service.settings
    factory = (lambda: ServerSentEvent(event="ping")) if ping_event else None
    return EventSourceResponse(_paced(frames), ping=settings.sse_ping_s, headers=headers,
                               ping_message_factory=factory,
                               send_timeout=settings.sse_send_timeout_s)
