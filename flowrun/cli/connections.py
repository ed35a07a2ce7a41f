"""The rules ``flowrun serve`` applies to connections, apart from the protocol classes.

Who counts as one client (``client_of``), how many connections each may hold
(``ClientTally``), and the few answers the server writes below the application,
before any dialect is known (they use the native API's problem+json shape).
"""

from __future__ import annotations

import ipaddress
import logging
import time

import orjson

logger = logging.getLogger("flowrun.serving")

# One IPv6 host commonly owns a whole /64 and can take any address in it, so a cap
# per address would be a cap per attempt: the /64 is the client.
_V6_CLIENT_PREFIX = 64


def client_of(host: str | None) -> str | None:
    """The client a peer address belongs to: the IPv4 address (also when it reaches an
    IPv6 socket as ``::ffff:a.b.c.d``), or the /64 of an IPv6 one; None for what is not
    an IP address (a Unix socket), which no cap applies to."""
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, _V6_CLIENT_PREFIX), strict=False))
    return str(address)


class ClientTally:
    """Open connections per client, for one server, and whether one more may open.

    Past ``cap`` a client's new connection is refused at once: it is never counted
    among uvicorn's connections, so a client at its cap takes nothing from the others.
    A refusal is logged, at most once per ``log_every_s``, since an attacker makes many.
    """

    def __init__(self, cap: int, *, log_every_s: float = 60.0) -> None:
        self.cap = cap
        self.open: dict[str, int] = {}
        self._log_every_s = log_every_s
        self._logged_at: float | None = None

    def admit(self, client: str | None) -> bool:
        """Count a new connection of ``client``, or refuse it (False) past the cap."""
        if client is None:
            return True
        held = self.open.get(client, 0)
        if held >= self.cap:
            self._log_refusal(client)
            return False
        self.open[client] = held + 1
        return True

    def release(self, client: str | None) -> None:
        """A counted connection of ``client`` closed."""
        if client is None:
            return
        held = self.open.get(client, 0) - 1
        if held > 0:
            self.open[client] = held
        else:
            self.open.pop(client, None)

    def _log_refusal(self, client: str) -> None:
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= self._log_every_s:
            self._logged_at = now
            logger.warning("connections: %s holds %d (FLOWRUN_MAX_CONNECTIONS_PER_CLIENT); "
                           "its new ones are refused", client, self.cap)


def canned_problem(status: int, reason: str, code: str, detail: str,
                   extra_headers: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer (problem+json, ``Connection: close``) written straight to
    a transport, for the cases the application never sees."""
    body = orjson.dumps({"type": "about:blank", "title": reason, "status": status,
                         "detail": detail, "code": code})
    return (f"HTTP/1.1 {status} {reason}\r\n"
            f"content-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\n".encode()
            + extra_headers + b"connection: close\r\n\r\n" + body)


REFUSED = canned_problem(503, "Service Unavailable", "too_many_connections",
                         "this client holds as many connections as it may; close one "
                         "and retry", b"retry-after: 1\r\n")
TIMED_OUT = canned_problem(408, "Request Timeout", "request_timeout",
                           "the request body did not arrive in time")
