"""Named secrets in node params: references in the graph, values only on the wire.

``{{ secrets.NAME }}`` does not evaluate to the secret. It evaluates to a
reference, ``[[secret:NAME]]``, which is what runs, node inputs, events and
logs hold. Only a node that sends a request (``http``, ``llm``) swaps a
reference for the value, at send time, and only when the request's URL
starts with one of the URL prefixes the operator stored with that secret; any
other destination fails the node. Every redirect hop is checked again, and the
value is replaced by its reference in whatever the node records afterwards (a
response that echoes it, an error message).

So a key holder can use a secret but never read it: not through an
expression, a code node, another URL, or the run's records.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from flowrun.errors import NodeFailure
from flowrun.records import SecretRecord

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_REFERENCE = re.compile(r"\[\[secret:([A-Za-z_][A-Za-z0-9_]{0,63})\]\]")


def reference(name: str) -> str:
    return f"[[secret:{name}]]"


class SecretRefs(dict[str, str]):
    """``secrets`` in expressions: any valid name gives its reference, never its value."""

    def __missing__(self, name: str) -> str:
        if not _NAME.match(name):
            raise KeyError(name)
        return reference(name)


class SecretSource(Protocol):
    """Where secret values come from (the store, for a server)."""

    async def get(self, name: str) -> SecretRecord | None: ...


def url_allowed(url: httpx.URL, prefixes: list[str]) -> bool:
    """True when ``url`` has the scheme, host and port of a prefix and its path under it."""
    for raw in prefixes:
        allowed = httpx.URL(raw)
        if (url.scheme, url.host.lower(), url.port or _default_port(url.scheme)) != \
                (allowed.scheme, allowed.host.lower(),
                 allowed.port or _default_port(allowed.scheme)):
            continue
        base = allowed.path or "/"
        if base.endswith("/") and url.path.startswith(base):
            return True
        if url.path == base or url.path.startswith(base + "/"):
            return True
    return False


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme)


def check_prefix(raw: str) -> str | None:
    """What is wrong with an allowed-URL prefix, or None."""
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        return f"{raw!r} is not a URL: {exc}"
    if url.scheme not in {"http", "https"} or not url.host:
        return f"{raw!r} must be an http:// or https:// URL with a host"
    if url.query or url.fragment or url.userinfo:
        return f"{raw!r} must not carry a query, fragment or credentials"
    return None


@dataclass
class SecretUse:
    """The secrets one request uses: their values, for sending and for redacting."""

    source: SecretSource | None
    values: dict[str, SecretRecord] = field(default_factory=dict)

    def names_in(self, value: Any) -> set[str]:
        if isinstance(value, str):
            return set(_REFERENCE.findall(value))
        if isinstance(value, Mapping):
            return set().union(*(self.names_in(k) | self.names_in(v)
                                 for k, v in value.items())) if value else set()
        if isinstance(value, list | tuple):
            return set().union(*(self.names_in(v) for v in value)) if value else set()
        return set()

    async def load(self, *values: Any) -> None:
        """Look up every secret referenced in ``values``; a missing one fails the node."""
        for name in sorted(set().union(*(self.names_in(v) for v in values))):
            record = await self.source.get(name) if self.source is not None else None
            if record is None:
                raise NodeFailure(f"secret {name!r} is not set (flowrun secrets set {name})",
                                  code="secret_not_found")
            self.values[name] = record

    def check(self, url: httpx.URL) -> None:
        """Fail unless every secret in use may go to ``url``."""
        for name, record in self.values.items():
            if not url_allowed(url, record.allowed_urls):
                raise NodeFailure(
                    f"secret {name!r} may not be sent to {url.scheme}://{url.host}"
                    f"{url.path}; it is allowed for {', '.join(record.allowed_urls)}",
                    code="secret_not_allowed")

    def fill(self, value: Any) -> Any:
        """``value`` with every reference replaced by its secret's value."""
        if not self.values:
            return value
        if isinstance(value, str):
            return _REFERENCE.sub(lambda m: self.values[m.group(1)].value, value)
        if isinstance(value, Mapping):
            return {self.fill(k): self.fill(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.fill(v) for v in value]
        return value

    def redact(self, value: Any) -> Any:
        """``value`` with every secret value in use put back as its reference."""
        if not self.values:
            return value
        if isinstance(value, str):
            for name, record in self.values.items():
                value = value.replace(record.value, reference(name))
            return value
        if isinstance(value, Mapping):
            return {self.redact(k): self.redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact(v) for v in value]
        return value

    def hook(self) -> Any:
        """An httpx request hook that checks every request (each redirect hop too)."""

        async def on_request(request: httpx.Request) -> None:
            self.check(request.url)

        return on_request
