"""Secrets as the admin API manages them (checked, stored, listed, deleted), and as
nodes read them.

A secret's value never leaves the store through the API: listings show names and
the URL prefixes each secret may be sent to.
"""

from __future__ import annotations

import logging
import re

from flowrun.engine import secrets
from flowrun.errors import BadRequest, NotFound
from flowrun.records import SecretRecord
from flowrun.runs.access import Principal, require_admin
from flowrun.store import Store

logger = logging.getLogger(__name__)


def check_secret(name: str, value: str, allowed_urls: list[str]) -> None:
    """BadRequest naming what is wrong with a secret before it is stored."""
    errors = []
    if not re.match(secrets.NAME_PATTERN, name):
        errors.append({"field": "name", "message": "a secret name is letters, digits and _ "
                                                   "(not first), at most 64"})
    if not value or len(value) > 65536:
        errors.append({"field": "value", "message": "must be 1-65536 characters"})
    if not allowed_urls or len(allowed_urls) > 32:
        errors.append({"field": "allowed_urls",
                       "message": "name 1-32 URL prefixes the secret may be sent to"})
    for raw in allowed_urls:
        problem = secrets.check_prefix(raw)
        if problem:
            errors.append({"field": "allowed_urls", "message": problem})
    if errors:
        raise BadRequest("; ".join(e["message"] for e in errors), errors=errors)


class Vault:
    """The admin API's secrets (admin keys only)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, principal: Principal, name: str, value: str,
                  allowed_urls: list[str]) -> bool:
        """Store a secret and the URL prefixes it may go to; True if it is new."""
        require_admin(principal, "managing secrets")
        check_secret(name, value, allowed_urls)
        created = await self.store.put_secret(name, value, allowed_urls)
        logger.info("secret %s: %s", name, "created" if created else "replaced")
        return created

    async def list(self, principal: Principal) -> list[SecretRecord]:
        """Secrets by name; callers show them without their values."""
        require_admin(principal, "listing secrets")
        return await self.store.list_secrets()

    async def delete(self, principal: Principal, name: str) -> None:
        require_admin(principal, "deleting secrets")
        if not await self.store.delete_secret(name):
            raise NotFound(f"no secret {name!r}")


class StoreSecrets:
    """Secret values for nodes, read from the store when a request needs them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, name: str) -> SecretRecord | None:
        return await self.store.get_secret(name)
