"""``llm``: an OpenAI-compatible chat completion, streamed.

Each content delta becomes a ``text_chunk`` event as it arrives; the node
outputs the whole ``text`` and the ``usage`` the server reports (summed into the
run's ``total_tokens``). The configured base URL is trusted; a per-node
``base_url`` goes through the same SSRF guard as the http node.

The server's own API key goes only to the configured base URL (every
redirect hop is checked). A node with another ``base_url`` sends its own
``api_key`` param, typically ``{{ secrets.NAME }}``, which a stored secret only
fills for the URLs it allows. The reply is capped at ``max_response_bytes``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import pydantic
from httpx_sse import EventSource

from flowrun.engine.net.guard import BLOCKED, guarded_client
from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes.registry import NodeContext, registry
from flowrun.engine.secrets import SecretUse
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
    cap = defaults.max_response_bytes
    received = 0
    parts: list[str] = []
    usage: dict[str, Any] = {}
    finish_reason = None
    try:
        async with guarded_client(services.http, trusted=trusted, timeout=defaults.timeout_s,
                                  on_request=secrets.hook() if secrets.values else None
                                  ) as client, \
                client.stream("POST", f"{root}/chat/completions", json=payload,
                              headers=headers) as resp:
            if resp.status_code >= 400:
                excerpt = (await resp.aread())[:500].decode("utf-8", "replace")
                raise NodeFailure(f"LLM API answered {resp.status_code}: {excerpt}",
                                  code="llm_error")
            if "text/event-stream" in resp.headers.get("content-type", ""):
                async for sse in EventSource(resp).aiter_sse():
                    received += len(sse.data)
                    if received > cap:
                        raise NodeFailure(f"LLM reply is larger than {cap} bytes",
                                          code="llm_too_large")
                    if sse.data.strip() == "[DONE]":
                        break
                    chunk = json.loads(sse.data)
                    if chunk.get("error"):
                        raise NodeFailure(f"LLM stream error: {chunk['error']}",
                                          code="llm_error")
                    for choice in chunk.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            delta = secrets.redact(delta)
                            parts.append(delta)
                            await ctx.emit_text(delta)
                        finish_reason = choice.get("finish_reason") or finish_reason
                    usage = chunk.get("usage") or usage
            else:  # a server that ignores "stream": one JSON answer
                raw = b""
                async for block in resp.aiter_bytes():
                    raw += block
                    if len(raw) > cap:
                        raise NodeFailure(f"LLM reply is larger than {cap} bytes",
                                          code="llm_too_large")
                data = json.loads(raw)
                choice = (data.get("choices") or [{}])[0]
                text = secrets.redact((choice.get("message") or {}).get("content") or "")
                parts.append(text)
                await ctx.emit_text(text)
                usage, finish_reason = data.get("usage") or {}, choice.get("finish_reason")
    except httpx.ConnectError as exc:
        code = "http_blocked" if str(exc).startswith(BLOCKED) else "llm_connect_error"
        raise NodeFailure(f"LLM API at {root}: {exc}", code=code) from None
    except httpx.TimeoutException:
        raise NodeFailure(f"LLM API at {root} timed out", code="llm_timeout") from None
    except (httpx.HTTPError, ValueError) as exc:
        raise NodeFailure(f"LLM API at {root}: {type(exc).__name__}: {exc}",
                          code="llm_error") from None
    return {"text": "".join(parts), "usage": _usage(usage), "model": payload["model"],
            "finish_reason": finish_reason}


def _usage(raw: dict[str, Any]) -> dict[str, int]:
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(raw.get("total_tokens") or prompt + completion)}


registry.register("llm", llm, outputs={"text", "usage", "model", "finish_reason"})
