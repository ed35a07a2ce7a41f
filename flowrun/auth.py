"""API keys: generation, hashing at rest, and the principal a request acts as.

Keys are long random tokens, so a fast SHA-256 digest is a safe at-rest form
(no password stretching needed); only the digest and a short display prefix
are stored.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

KEY_PREFIX = "fr_"


class Scope(StrEnum):
    """What a key may do: ``admin`` manages workflows, keys and secrets and sees every run;
    ``run`` starts runs and reads, streams and stops its own."""

    ADMIN = "admin"
    RUN = "run"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: an API key id (None when auth is off), its scope and the
    workflows it is bound to (None: any workflow)."""

    key_id: str | None
    scope: Scope = Scope.RUN
    workflows: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope is Scope.ADMIN

    @property
    def workflow(self) -> str | None:
        """The one workflow a key is bound to (a Dify app key), else None."""
        if self.workflows is not None and len(self.workflows) == 1:
            return next(iter(self.workflows))
        return None

    def may_use(self, workflow: str) -> bool:
        """True when the key's binding allows ``workflow``."""
        return self.workflows is None or workflow in self.workflows

    def owns(self, api_key_id: str | None) -> bool:
        """True when a run made by ``api_key_id`` is visible to this key."""
        return self.is_admin or api_key_id == self.key_id


# With auth off the server trusts its (loopback-only) caller as the operator.
ANONYMOUS = Principal(key_id=None, scope=Scope.ADMIN)


def principal_for(key_id: str, scope: str, workflows: Iterable[str] | None) -> Principal:
    return Principal(key_id, Scope(scope), frozenset(workflows) if workflows else None)


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
