"""``http``: one HTTP request; status, headers and body (parsed when JSON) as outputs.

Connections go through the SSRF guard of ``flowrun.engine.net.guard``; the body
is read up to the policy's size cap. ``[[secret:NAME]]`` references (from
``{{ secrets.NAME }}``) in the url, headers, query or body are filled in only
for URLs the secret allows (see ``flowrun.engine.secrets``). Without
``expect_status`` a status of 400 or more fails the node; with it, only the
listed statuses pass.
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from flowrun.engine.net.guard import BLOCKED, guarded_client
from flowrun.engine.net.replies import ACCEPT_ENCODING, BadEncoding, BodyTooLarge, decoded_body
from flowrun.engine.node_services import NodeServices
from flowrun.engine.nodes.registry import NodeContext, registry
from flowrun.engine.secrets import SecretUse
from flowrun.errors import NodeFailure

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def http(ctx: NodeContext, *, url: str, method: Method = "GET",
               headers: dict[str, str] | None = None, query: dict[str, Any] | None = None,
               json: Any = None, body: str | None = None,
               expect_status: int | list[int] | None = None) -> dict[str, Any]:
    services = ctx.services if ctx.services is not None else NodeServices()
    if not url.startswith(("http://", "https://")):
        raise NodeFailure(f"url must start with http:// or https://, got {url!r}",
                          code="http_bad_url")
    secrets = SecretUse(services.secrets)
    await secrets.load(url, headers, query, json, body)
    request = Request(method, url, headers, query, json, body)
    try:
        outputs = await _send(services, secrets, request)
    except NodeFailure as exc:
        raise NodeFailure(secrets.redact(exc.message), code=exc.code,
                          process_data=secrets.redact(exc.process_data)) from None
    outputs = dict(secrets.redact(outputs))
    expected = [expect_status] if isinstance(expect_status, int) else expect_status
    status = outputs["status"]
    if (expected is not None and status not in expected) or (
            expected is None and status >= 400):
        excerpt = str(outputs["body"])[:300]
        raise NodeFailure(f"{method} {url} answered {status}: {excerpt}",
                          code="http_status", process_data={"response": outputs})
    return outputs


@dataclass(frozen=True)
class Request:
    """The request as the node's params give it (secret references not yet filled)."""

    method: str
    url: str
    headers: dict[str, str] | None
    query: dict[str, Any] | None
    json: Any
    body: str | None


async def _send(services: Any, secrets: SecretUse, req: Request) -> dict[str, Any]:
    policy = services.http
    cap = policy.max_response_bytes
    method, url = req.method, req.url
    content = secrets.fill(req.body).encode() if req.body is not None else None
    try:
        async with guarded_client(policy, resolve=services.resolve,
                                  on_request=secrets.hook() if secrets.values else None
                                  ) as client, \
                client.stream(method, secrets.fill(url), headers=_asking_encodings(
                                  secrets.fill(req.headers)),
                              params=secrets.fill(req.query), content=content,
                              json=secrets.fill(req.json) if req.body is None else None
                              ) as resp:
            # counted as it inflates, a block at a time (httpx would inflate each chunk
            # whole first: a chunk of a gzip bomb is a thousand times its size)
            raw = b"".join([block async for block in decoded_body(resp, cap)])
    except BodyTooLarge:
        raise NodeFailure(f"response body is larger than {cap} bytes",
                          code="http_too_large") from None
    except BadEncoding as exc:
        raise NodeFailure(f"{method} {url}: {exc}", code="http_error") from None
    except httpx.ConnectError as exc:
        code = "http_blocked" if str(exc).startswith(BLOCKED) else "http_connect_error"
        raise NodeFailure(f"{method} {url}: {exc}", code=code) from None
    except httpx.TooManyRedirects:
        raise NodeFailure(f"{method} {url}: more than {policy.max_redirects} redirects",
                          code="http_redirects") from None
    except httpx.TimeoutException:
        raise NodeFailure(f"{method} {url}: timed out", code="http_timeout") from None
    except httpx.HTTPError as exc:
        raise NodeFailure(f"{method} {url}: {type(exc).__name__}: {exc}",
                          code="http_error") from None
    return {"status": resp.status_code, "headers": dict(resp.headers),
            "body": _decode(raw, resp.headers.get("content-type", "")), "url": str(resp.url)}


def _asking_encodings(headers: dict[str, str] | None) -> dict[str, str]:
    """The request's headers, asking for only the encodings the body's reader undoes
    (unless the workflow asks for its own: another then fails the node clearly)."""
    headers = dict(headers or {})
    if not any(name.lower() == "accept-encoding" for name in headers):
        headers["Accept-Encoding"] = ACCEPT_ENCODING
    return headers


def _decode(raw: bytes, content_type: str) -> Any:
    text = raw.decode("utf-8", "replace")
    if "json" in content_type.lower():
        try:
            return jsonlib.loads(text)
        except ValueError:
            return text
    return text


registry.register("http", http, outputs={"status", "headers", "body", "url"})
