"""Outbound HTTP for nodes, with SSRF protection that holds through DNS and redirects.

The check sits in the connection layer (an httpcore network backend): every
TCP connection, including each redirect hop, resolves the host once, refuses it
if any address is loopback, private, link-local (cloud metadata lives at
169.254.169.254), shared, multicast or otherwise not global, and then connects
to the vetted address itself, so a second DNS answer cannot slip a private
address in between check and connect. TLS still verifies the original host
name. ``allow_private_hosts`` (or ``allowed_networks``) opens it.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import certifi
import httpcore
import httpx

from flowrun.engine.node_services import HttpPolicy

Resolver = Callable[[str, int], Awaitable[list[str]]]
BLOCKED = "blocked"

_SSL_CONTEXT = ssl.create_default_context(cafile=certifi.where())


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated (RFC 2765)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: mapped, compatible, translated,
    NAT64, 6to4 and Teredo (server and client) forms."""
    found = []
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    elif int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d (IPv4-compatible, deprecated)
        found.append(low32)
    elif ip in _TRANSLATED or any(ip in net for net in _NAT64):
        found.append(low32)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def address_allowed(ip_text: str, policy: HttpPolicy) -> bool:
    """True when connecting to this address is allowed by the policy.

    An IPv6 address that embeds an IPv4 address is judged by the IPv4 address
    too: every form must be allowed on its own.
    """
    ip: IPAddress = ipaddress.ip_address(ip_text.split("%", 1)[0])
    if policy.allow_private_hosts:
        return True
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if ip.ipv4_mapped is not None:
            candidates = []  # a mapped address is exactly its IPv4 address
        candidates.extend(embedded)
    return all(_one_allowed(c, policy) for c in candidates)


def _one_allowed(ip: IPAddress, policy: HttpPolicy) -> bool:
    if any(ip.version == network.version and ip in network
           for network in policy.allowed_networks):
        return True
    return ip.is_global and not ip.is_multicast


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore backend that only connects to addresses the policy allows."""

    def __init__(self, policy: HttpPolicy, resolve: Resolver | None = None) -> None:
        self._policy = policy
        self._resolve = resolve or system_resolve
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int,
                          timeout: float | None = None,  # noqa: ASYNC109 - httpcore's API
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}")
        for address in addresses:
            if not address_allowed(address, self._policy):
                raise httpcore.ConnectError(
                    f"{BLOCKED}: {host} resolves to {address}, a private, loopback or "
                    f"link-local address (set allow_private_hosts to allow it)")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address,
                                                     socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str,
                                  timeout: float | None = None,  # noqa: ASYNC109 - httpcore
                                  socket_options: Iterable[Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError(f"{BLOCKED}: unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on a GuardedBackend; no proxies from env."""

    def __init__(self, policy: HttpPolicy, resolve: Resolver | None = None) -> None:
        super().__init__(trust_env=False)
        # httpx builds its pool without a way to pass a network backend; replace it.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_SSL_CONTEXT, network_backend=GuardedBackend(policy, resolve))


def guarded_client(policy: HttpPolicy, *, resolve: Resolver | None = None,
                   timeout: float | None = None, trusted: bool = False,
                   on_request: Any = None) -> httpx.AsyncClient:
    """An AsyncClient for node traffic (``trusted``: operator-configured, no SSRF check).

    ``on_request`` is called with every request, each redirect hop included.
    """
    transport = httpx.AsyncHTTPTransport(trust_env=False) if trusted else \
        GuardedTransport(policy, resolve)
    return httpx.AsyncClient(transport=transport, trust_env=False,
                             timeout=timeout or policy.timeout_s, follow_redirects=True,
                             max_redirects=policy.max_redirects,
                             event_hooks={"request": [on_request]} if on_request else None)
