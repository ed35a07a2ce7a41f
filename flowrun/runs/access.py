"""Who a request acts for and what it may do: the principal of an API key, its scope,
the workflows it is bound to, and the checks every service applies (written once).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from flowrun.errors import Forbidden


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


def require_admin(principal: Principal, action: str) -> None:
    """Forbidden unless the key has the admin scope."""
    if not principal.is_admin:
        raise Forbidden(f"{action} needs an admin API key; this key's scope is "
                        f"{principal.scope.value!r}")


def require_workflow(principal: Principal, workflow: str) -> None:
    """Forbidden when the key is bound to workflows that do not include ``workflow``.

    Checked before the workflow is looked up, so a bound key cannot learn which
    other workflows exist.
    """
    if not principal.may_use(workflow):
        bound = ", ".join(sorted(principal.workflows or ()))
        raise Forbidden(f"this API key is bound to {bound}; it may not use {workflow!r}")
