"""API keys: generation, hashing at rest, and the principal a request acts as.

Keys are long random tokens, so a fast SHA-256 digest is a safe at-rest form
(no password stretching needed); only the digest and a short display prefix
are stored.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

KEY_PREFIX = "fr_"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: an API key id (None when auth is off)."""

    key_id: str | None
    workflow: str | None = None  # set for keys bound to one workflow (Dify app keys)


ANONYMOUS = Principal(key_id=None)


def new_key() -> tuple[str, str, str, str]:
    """(key id, full secret key, display prefix, digest) for a fresh key."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return uuid.uuid4().hex[:12], secret, secret[:10], hash_key(secret)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The API key of a request: ``Authorization: Bearer``, ``x-api-key`` or ``X-Authorization``."""
    get = headers.get
    auth = get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return str(token.strip())
    for name in ("x-api-key", "x-authorization"):
        value = get(name)
        if value:
            value = value.strip()
            if value.lower().startswith("bearer "):
                value = value[7:].strip()
            return str(value)
    return None
