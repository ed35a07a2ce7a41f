"""API keys: generation, hashing at rest, authentication, and managing them (admin).

Who a key may be and what it may do (``Principal``, ``Scope``) is ``runs.access``.

Keys are long random tokens, so a fast SHA-256 digest is a safe at-rest form
(no password stretching needed); only the digest and a short display prefix
are stored.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

from flowrun.errors import BadRequest, NotFound, Unauthorized
from flowrun.runs.access import ANONYMOUS, Principal, Scope, principal_for, require_admin

if TYPE_CHECKING:
    from flowrun.records import ApiKeyRecord
    from flowrun.store import Store

logger = logging.getLogger(__name__)

KEY_PREFIX = "fr_"


def new_key() -> tuple[str, str, str, str]:
    """(key id, full secret key, display prefix, digest) for a fresh key."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return uuid.uuid4().hex[:12], secret, secret[:10], hash_key(secret)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The API key of a request: ``Authorization: Bearer``, ``x-api-key`` or
    ``X-Authorization``; None when there is none.

    Unauthorized when a header is there but unusable (another scheme, an empty key)
    or when two headers carry different keys, so the caller learns why instead of
    reading "missing API key".
    """
    found: dict[str, str] = {}
    other_scheme = None  # an Authorization header of another scheme (a proxy's, maybe)
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer":
            found["Authorization"] = token.strip()
        else:
            other_scheme = scheme
    for name in ("x-api-key", "x-authorization"):
        value = headers.get(name)
        if value is not None:
            value = value.strip()
            if value.lower().startswith("bearer "):
                value = value[7:].strip()
            found[name] = value
    for name, value in found.items():
        if not value:
            raise Unauthorized(f"the {name} header holds no API key")
    if len(set(found.values())) > 1:
        raise Unauthorized(f"{' and '.join(found)} carry different API keys; send one")
    if not found and other_scheme is not None:
        raise Unauthorized(f"the Authorization scheme {other_scheme[:20]!r} is not "
                           f"supported; send Authorization: Bearer <key>")
    return next(iter(found.values()), None)


async def check_binding(store: Store, workflows: list[str] | None, *,
                        allow_unknown: bool = False, where: str = "",
                        hint: str = "allow_unknown_workflows binds the key anyway"
                        ) -> list[str]:
    """The workflows a new key may be bound to must be registered: BadRequest naming
    those that are not (``where``: the database, as the message names it), unless
    ``allow_unknown``. A database with no workflow yet (a key made before the first
    ``serve`` registers its folder) takes any name; the names it took unchecked are
    returned. The API and the CLI both apply this rule."""
    if not workflows:
        return []
    unknown, any_registered = await store.unregistered_workflows(workflows)
    if unknown and any_registered and not allow_unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise BadRequest(f"no workflow {names} is registered{where}; {hint}",
                         errors=[{"field": "workflows", "message": f"{name!r} is not registered"}
                                 for name in unknown])
    return unknown


async def create_api_key(store: Store, *, name: str | None, scope: Scope,
                         workflows: list[str] | None, allow_unknown: bool = False
                         ) -> tuple[ApiKeyRecord, str]:
    """Store a new key; (its record, its secret). Admin keys are never bound; a run
    key's workflows pass ``check_binding``."""
    if scope is Scope.RUN:
        await check_binding(store, workflows, allow_unknown=allow_unknown)
    made = await _make_key(store, name=name, scope=scope, workflows=workflows)
    assert made is not None
    return made


async def create_first_api_key(store: Store) -> str | None:
    """An admin key for a database that has none (its secret), else None: of processes
    starting together on a new database, one makes it."""
    made = await _make_key(store, name="initial", scope=Scope.ADMIN, workflows=None,
                           only_first=True)
    return None if made is None else made[1]


async def _make_key(store: Store, *, name: str | None, scope: Scope,
                    workflows: list[str] | None, only_first: bool = False
                    ) -> tuple[ApiKeyRecord, str] | None:
    if scope is Scope.ADMIN and workflows:
        raise BadRequest("an admin key cannot be bound to workflows; use --scope run",
                         errors=[{"field": "workflows", "message": "admin keys are unbound"}])
    key_id, secret, prefix, digest = new_key()
    record = await store.add_api_key(key_id, prefix, digest, name=name, scope=scope.value,
                                     workflows=workflows, only_first=only_first)
    return None if record is None else (record, secret)


class KeyRing:
    """The instance's API keys: who a request's key is, and (for admins) managing keys.

    A key found valid is remembered for ``cache_s`` seconds, so a busy client does
    not cost a read per request; revoking a key forgets them all at once.
    """

    def __init__(self, store: Store, *, enabled: bool, cache_s: float = 5.0) -> None:
        self.store = store
        self.enabled = enabled
        self.cache_s = cache_s
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def authenticate(self, secret: str | None) -> Principal:
        """The principal for an API key; Unauthorized when it is missing or unknown."""
        if not self.enabled:
            return ANONYMOUS
        if not secret:
            raise Unauthorized("missing API key (Authorization: Bearer <key>)")
        digest = hash_key(secret)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        record = await self.store.find_api_key(digest)
        if record is None:
            raise Unauthorized("invalid API key")
        principal = principal_for(record.id, record.scope, record.workflows)
        if len(self._cache) >= 10_000:
            self._cache.clear()
        self._cache[digest] = (principal, now + self.cache_s)
        return principal

    async def create(self, principal: Principal, *, name: str | None = None,
                     scope: Scope = Scope.RUN, workflows: list[str] | None = None,
                     allow_unknown: bool = False) -> tuple[ApiKeyRecord, str]:
        """A new API key (admin only): its record and its secret, shown once."""
        require_admin(principal, "creating API keys")
        return await create_api_key(self.store, name=name, scope=scope, workflows=workflows,
                                    allow_unknown=allow_unknown)

    async def list(self, principal: Principal) -> list[ApiKeyRecord]:
        require_admin(principal, "listing API keys")
        return await self.store.list_api_keys()

    def forget(self) -> None:
        """Keys changed elsewhere (another process revoked one): look each up again."""
        self._cache.clear()

    async def revoke(self, principal: Principal, key_id: str) -> None:
        """Revoke a key by id (admin only); it stops working at once."""
        require_admin(principal, "revoking API keys")
        if not await self.store.revoke_api_key(key_id):
            raise NotFound(f"no live API key {key_id!r}")
        self._cache.clear()
        logger.info("API key %s: revoked", key_id)
