"""``llm``: an OpenAI-compatible chat completion, streamed.

Each content delta becomes a ``text_chunk`` event as it arrives; the node
outputs the whole ``text`` and the ``usage`` the server reports (summed into the
run's ``total_tokens``). The configured base URL is trusted; a per-node
``base_url`` goes through the same SSRF guard as the http node.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from httpx_sse import EventSource

from flowrun.engine.netguard import BLOCKED, guarded_client
from flowrun.engine.nodes.registry import NodeContext, registry
from flowrun.errors import NodeFailure


async def llm(ctx: NodeContext, *, prompt: str | None = None,
              messages: list[dict[str, Any]] | None = None, system: str | None = None,
              model: str | None = None, temperature: float | None = None,
              max_tokens: int | None = None, base_url: str | None = None) -> dict[str, Any]:
    from flowrun.engine.services import NodeServices

    services = ctx.services if ctx.services is not None else NodeServices()
    defaults = services.llm
    chat: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    chat += list(messages or [])
    if prompt:
        chat.append({"role": "user", "content": prompt})
    if not chat:
        raise NodeFailure("llm needs a prompt or messages", code="llm_bad_request")
    root = (base_url or defaults.base_url).rstrip("/")
    trusted = base_url is None or root == defaults.base_url.rstrip("/")
    payload: dict[str, Any] = {"model": model or defaults.model, "messages": chat,
                               "stream": True, "stream_options": {"include_usage": True}}
    if temperature is not None:
        payload["temperature"] = temperature
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    headers = {"Authorization": f"Bearer {defaults.api_key}"} if defaults.api_key else {}
    parts: list[str] = []
    usage: dict[str, Any] = {}
    finish_reason = None
    try:
        async with guarded_client(services.http, trusted=trusted,
                                  timeout=defaults.timeout_s) as client, \
                client.stream("POST", f"{root}/chat/completions", json=payload,
                              headers=headers) as resp:
            if resp.status_code >= 400:
                excerpt = (await resp.aread())[:500].decode("utf-8", "replace")
                raise NodeFailure(f"LLM API answered {resp.status_code}: {excerpt}",
                                  code="llm_error")
            if "text/event-stream" in resp.headers.get("content-type", ""):
                async for sse in EventSource(resp).aiter_sse():
                    if sse.data.strip() == "[DONE]":
                        break
                    chunk = json.loads(sse.data)
                    if chunk.get("error"):
                        raise NodeFailure(f"LLM stream error: {chunk['error']}",
                                          code="llm_error")
                    for choice in chunk.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            parts.append(delta)
                            await ctx.emit_text(delta)
                        finish_reason = choice.get("finish_reason") or finish_reason
                    usage = chunk.get("usage") or usage
            else:  # a server that ignores "stream": one JSON answer
                data = json.loads(await resp.aread())
                choice = (data.get("choices") or [{}])[0]
                text = (choice.get("message") or {}).get("content") or ""
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


registry.register("llm", llm)
