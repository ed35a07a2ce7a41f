"""``llm``: an OpenAI-compatible chat completion, streamed.

The content deltas stream as ``text_chunk`` events as they arrive, those that come
within 50 ms of each other gathered into one (``TextBatcher``); the node outputs the
whole ``text`` and the ``usage`` the server reports (summed into the run's
``total_tokens``). The configured base URL is trusted; a per-node
``base_url`` goes through the same SSRF guard as the http node.

The server's own API key goes only to the configured base URL (every
redirect hop is checked). A node with another ``base_url`` sends its own
``api_key`` param, typically ``{{ secrets.NAME }}``, which a stored secret only
fills for the URLs it allows. The reply is capped at ``max_response_bytes``, counted
as it arrives (decoded, with comments and unfinished lines: ``net.replies``), and the
whole call at ``deadline_s`` however the server paces it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any

import anyio
import httpx
import pydantic

from flowrun.engine.net.guard import BLOCKED, guarded_client
from flowrun.engine.net.replies import (
    ACCEPT_ENCODING,
    BadEncoding,
    BodyTooLarge,
    EventStreamParser,
    decoded_body,
)
from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes.registry import NodeContext, registry
from flowrun.engine.secrets import SecretUse
from flowrun.engine.textbatch import TextBatcher
from flowrun.errors import NodeFailure
from flowrun.records import SecretRecord

SERVER_KEY = "llm_api_key"  # how the server's own key shows up in anything recorded

# What OpenAI-compatible servers accept; anything else is the workflow's mistake, said
# when it is registered (or when an expression gives it), not a 400 from the LLM API.
Temperature = Annotated[float, pydantic.Field(ge=0, le=2, allow_inf_nan=False)]
MaxTokens = Annotated[int, pydantic.Field(ge=1, le=1_000_000)]
ModelName = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=200)]


async def llm(ctx: NodeContext, *, prompt: str | None = None,
              messages: list[dict[str, Any]] | None = None, system: str | None = None,
              model: ModelName | None = None, temperature: Temperature | None = None,
              max_tokens: MaxTokens | None = None, base_url: str | None = None,
              api_key: str | None = None) -> dict[str, Any]:
    services = ctx.services if ctx.services is not None else NodeServices()
    defaults = services.llm
    chat: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    chat += list(messages or [])
    if prompt:
        chat.append({"role": "user", "content": prompt})
    if not chat:
        raise NodeFailure("llm needs a prompt or messages", code="llm_bad_request")
    configured = defaults.base_url.rstrip("/")
    root = (base_url or configured).rstrip("/")
    trusted = root == configured
    secrets = SecretUse(services.secrets)
    if api_key is not None:
        await secrets.load(api_key)
        key: str | None = secrets.fill(api_key)
    elif trusted and defaults.api_key:
        key = defaults.api_key
        secrets.values[SERVER_KEY] = SecretRecord(SERVER_KEY, key, [configured + "/"], 0, 0)
    else:
        key = None  # the server's key never goes to a URL the operator did not configure
    payload: dict[str, Any] = {"model": model or defaults.model, "messages": chat,
                               "stream": True, "stream_options": {"include_usage": True}}
    if temperature is not None:
        payload["temperature"] = temperature
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        return await _chat(ctx, services, secrets, root, trusted, payload, headers)
    except NodeFailure as exc:
        raise NodeFailure(secrets.redact(exc.message), code=exc.code) from None


async def _chat(ctx: NodeContext, services: Any, secrets: SecretUse, root: str, trusted: bool,
                payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    defaults = services.llm
    try:
        async with TextBatcher(ctx.emit_text) as batcher:
            reply = _Reply(secrets, defaults.max_response_bytes, batcher.add)
            # The whole call has a deadline, not only each read: a server that sends a
            # byte now and then would otherwise hold the node for as long as it likes.
            with anyio.fail_after(defaults.deadline_s):
                async with guarded_client(services.http, trusted=trusted,
                                          timeout=defaults.timeout_s,
                                          on_request=secrets.hook() if secrets.values else None
                                          ) as client, \
                        client.stream("POST", f"{root}/chat/completions", json=payload,
                                      headers={**headers, "Accept-Encoding": ACCEPT_ENCODING}
                                      ) as resp:
                    await reply.read(resp)
    except BodyTooLarge as exc:
        raise NodeFailure(f"LLM reply is larger than {exc.cap} bytes "
                          f"(FLOWRUN_LLM_MAX_RESPONSE_BYTES)", code="llm_too_large") from None
    except httpx.ConnectError as exc:
        code = "http_blocked" if str(exc).startswith(BLOCKED) else "llm_connect_error"
        raise NodeFailure(f"LLM API at {root}: {exc}", code=code) from None
    except httpx.TimeoutException:
        raise NodeFailure(f"LLM API at {root} timed out", code="llm_timeout") from None
    except TimeoutError:
        raise NodeFailure(f"LLM API at {root} did not finish its reply within "
                          f"{defaults.deadline_s:g}s (FLOWRUN_LLM_DEADLINE_S)",
                          code="llm_timeout") from None
    except (httpx.HTTPError, BadEncoding, ValueError) as exc:
        raise NodeFailure(f"LLM API at {root}: {type(exc).__name__}: {exc}",
                          code="llm_error") from None
    return {"text": "".join(reply.parts), "usage": _usage(reply.usage),
            "model": payload["model"], "finish_reason": reply.finish_reason}


class _Reply:
    """One reply as it is read: the text so far, the usage, the finish reason.

    Every byte of the body counts against ``cap`` as it arrives (``decoded_body``), and
    events are parsed from what was counted, so what is held stays within the cap
    whatever the server sends.
    """

    def __init__(self, secrets: SecretUse, cap: int,
                 emit: Callable[[str], Awaitable[None]]) -> None:
        self.secrets = secrets
        self.cap = cap
        self.emit = emit
        self.parts: list[str] = []
        self.usage: dict[str, Any] = {}
        self.finish_reason: str | None = None

    async def read(self, resp: httpx.Response) -> None:
        if resp.status_code >= 400:
            raise NodeFailure(f"LLM API answered {resp.status_code}: "
                              f"{await _excerpt(resp)}", code="llm_error")
        if "text/event-stream" in resp.headers.get("content-type", ""):
            await self._stream(resp)
            return
        raw = bytearray()  # a server that ignores "stream": one JSON answer
        async with aclosing(decoded_body(resp, self.cap)) as body:
            async for block in body:
                raw += block
        data = json.loads(raw)
        choice = (data.get("choices") or [{}])[0]
        await self._text((choice.get("message") or {}).get("content") or "")
        self.usage = data.get("usage") or {}
        self.finish_reason = choice.get("finish_reason")

    async def _stream(self, resp: httpx.Response) -> None:
        events = EventStreamParser()
        async with aclosing(decoded_body(resp, self.cap)) as body:
            async for block in body:
                for data in events.feed(block):
                    if not await self._event(data):
                        return

    async def _event(self, data: str) -> bool:
        """Take one event's data; False once the stream says it is done."""
        if data.strip() == "[DONE]":
            return False
        chunk = json.loads(data)
        if chunk.get("error"):
            raise NodeFailure(f"LLM stream error: {chunk['error']}", code="llm_error")
        for choice in chunk.get("choices") or []:
            await self._text((choice.get("delta") or {}).get("content"))
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.usage = chunk.get("usage") or self.usage
        return True

    async def _text(self, text: str | None) -> None:
        if text:
            text = self.secrets.redact(text)
            self.parts.append(text)
            await self.emit(text)


async def _excerpt(resp: httpx.Response, limit: int = 500) -> str:
    """The start of an error answer (read no further, however it is encoded)."""
    head = bytearray()
    try:
        async with aclosing(decoded_body(resp, 1 << 20)) as body:
            async for block in body:
                head += block
                if len(head) >= limit:
                    break
    except (BodyTooLarge, BadEncoding):
        pass
    return bytes(head[:limit]).decode("utf-8", "replace")


def _usage(raw: dict[str, Any]) -> dict[str, int]:
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(raw.get("total_tokens") or prompt + completion)}


registry.register("llm", llm, outputs={"text", "usage", "model", "finish_reason"})
