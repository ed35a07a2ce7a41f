"""Callback URLs: which an API or a definition may name (a delivery must be able to send
them), checked where a run or a workflow is accepted.
"""

from __future__ import annotations

import urllib.parse

import httpcore
import httpx

MAX_URL_LENGTH = 2048


def check_url(url: str) -> str:
    """``url`` if it may be a callback's: http or https with a host, no user info, no
    spaces or control characters, at most 2048 characters, and a request the delivery
    can build (``buildable``); ValueError saying why."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("callback_url must not hold spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("callback_url is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("callback_url must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("callback_url has no host")
    if "@" in parts.netloc:
        raise ValueError("callback_url must not carry user info (user:password@)")
    buildable(url)
    return url


def buildable(url: str) -> None:
    """Build the POST of ``url`` as a delivery does, or raise ValueError saying why not.

    httpx parses the URL (IDNA-encoding a host), the Host header decodes it again,
    httpcore takes the request as httpx hands it over, and the connection encodes the
    host name with Python's ``idna`` codec (TLS's server name). Each of these refuses
    URLs the checks above let through (``http://xn--/`` among them), and not always with
    an ``httpx.HTTPError``: a URL refused here is one no attempt could ever send.
    """
    try:
        request = httpx.Request("POST", url, content=b"")
        target = request.url
        httpcore.Request("POST", httpcore.URL(scheme=target.raw_scheme, host=target.raw_host,
                                              port=target.port, target=target.raw_path),
                         headers=request.headers.raw)
        host = target.raw_host.decode("ascii")
        if ":" not in host:  # (an IPv6 address is no name to encode)
            host.encode("idna")
    except Exception as exc:  # httpx's InvalidURL, idna's and the codec's own errors
        raise ValueError(f"callback_url is not a valid URL ({exc})") from None
    if target.scheme not in ("http", "https") or not target.host or target.userinfo:
        raise ValueError("callback_url is not a valid URL (as its request would be sent)")
