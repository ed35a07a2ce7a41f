"""Inbound webhooks: each workflow's hook, and what a signed delivery passes to start a run.

A hook is the operator's (an admin key creates it, changes its mapping, rotates its
secret, deletes it). A delivery is ``POST /hooks/{workflow}`` with no API key: the
``Flowrun-Signature`` over the raw body (``flowrun.features.webhooks.signing``) is the credential.
It is checked in this order, so that a caller without the secret learns only
whether the hook exists: hook (404) → signature (401: missing, malformed, stale
or no match) → replay (409, naming the run the first delivery started) → body as
JSON (400, in the router) → mapping to inputs (422) → ``RunService.submit``
(inputs checked against the workflow, 422; queue full 429; draining 503).

Replays. A signature carries its timestamp, and one older (or newer) than
``tolerance_s`` is refused as stale, so only signatures inside that window need
remembering. Each accepted one is stored with its timestamp, in the database, so a
restart does not reopen the window; housekeeping forgets it once it is stale.
Two identical deliveries racing past that check meet again at the run: the
signature is the run's idempotency key, so the store accepts one run, and the
other delivery is answered 409 too.

Hook runs act as ``hook_principal(workflow)``: no API key, run scope, bound to
that one workflow. Like scheduled runs they belong to no key (admins see them),
and the per-key rate limit does not count them; the queue limit and the drain do
apply. ``source`` on the run says it came from the hook, and its inputs are
inputs only (a body cannot override node params through dotted keys).

The mapping is any JSON value whose strings may be ``{{ }}`` expressions, evaluated
by the sandboxed, budgeted evaluator over ``body`` (the parsed body) and ``headers``
(lowercased; credentials left out; headers are not covered by the signature).

Rotating a secret replaces it at once, with no grace period: the sender switches
to the new secret when the operator hands it over, and a delivery signed with
the old one meanwhile is refused (401) and can be sent again, signed anew.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flowrun.errors import (
    BadRequest,
    DeliveryReplayed,
    IdempotencyKeyReused,
    NodeFailure,
    NotFound,
    SignatureRefused,
    Unprocessable,
)
from flowrun.features.webhooks import signing
from flowrun.language import expressions
from flowrun.records import HookRecord
from flowrun.runs import access
from flowrun.runs.catalog import WorkflowCatalog
from flowrun.runs.service import RunRequest, RunService, Submission
from flowrun.store import Store

logger = logging.getLogger(__name__)

SOURCE = "hook"
# Never shown to a mapping: they are the caller's credentials, not the event's data.
HIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key",
                            "x-authorization", signing.HEADER.lower()})


def hook_principal(workflow: str) -> access.Principal:
    """Who a delivery acts as: no key, run scope, bound to the hook's workflow."""
    return access.Principal(key_id=None, scope=access.Scope.RUN, workflows=frozenset({workflow}))


def check_mapping(mapping: Any) -> None:
    """BadRequest unless ``mapping`` is None, an object, or one ``{{ }}`` expression, and
    every expression in it parses."""
    if mapping is None:
        return
    if isinstance(mapping, str) and not expressions.is_expression(mapping):
        raise BadRequest("inputs must be an object or a {{ }} expression giving one",
                         errors=[{"field": "inputs", "message": "not an expression"}])
    if not isinstance(mapping, str | dict):
        raise BadRequest("inputs must be an object or a {{ }} expression giving one",
                         errors=[{"field": "inputs", "message": "must be an object or "
                                                                "an expression"}])
    pending: list[Any] = [mapping]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str) and expressions.is_expression(value):
            fault = expressions.check_syntax(value)
            if fault is not None:
                raise BadRequest(f"inputs: {fault}",
                                 errors=[{"field": "inputs", "message": fault}])


def visible_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers a mapping may read: lowercased, credentials left out."""
    return {name.lower(): value for name, value in headers.items()
            if name.lower() not in HIDDEN_HEADERS}


def map_inputs(mapping: Any, body: Any, headers: Mapping[str, str]) -> dict[str, Any]:
    """A delivery's run inputs: the body itself without a mapping, else the mapping
    evaluated over ``body`` and ``headers``; Unprocessable unless that is a JSON object."""
    if mapping is None:
        value = body
    else:
        try:
            value = expressions.evaluate(mapping, {"body": body,
                                                   "headers": visible_headers(headers)})
        except NodeFailure as exc:  # an expression error, or past its budget
            raise Unprocessable(f"the hook's inputs mapping failed: {exc.message}",
                                errors=[{"field": "inputs", "message": exc.message}]) from None
    if not isinstance(value, dict):
        what = "the body" if mapping is None else "the hook's inputs mapping"
        raise Unprocessable(f"{what} must give a JSON object of inputs, not "
                            f"{type(value).__name__}",
                            errors=[{"field": "inputs", "message": "not an object"}])
    try:  # what an expression made must be storable as JSON: plain values only
        plain: dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise Unprocessable(f"the hook's inputs are not JSON: {exc}",
                            errors=[{"field": "inputs", "message": "not JSON"}]) from None
    return plain


@dataclass(frozen=True)
class Delivery:
    """A delivery whose signature was verified and not seen before."""

    hook: HookRecord
    signature: str
    signed_at: float


class HookBook:
    """Create, read, rotate and delete hooks; verify deliveries and start their runs."""

    def __init__(self, store: Store, workflows: WorkflowCatalog, service: RunService, *,
                 tolerance_s: float = signing.DEFAULT_TOLERANCE_S) -> None:
        self.store = store
        self.workflows = workflows
        self.service = service
        self.tolerance_s = tolerance_s

    # --- the admin API -------------------------------------------------------------

    async def put(self, principal: access.Principal, workflow: str, mapping: Any
                  ) -> tuple[HookRecord, str | None]:
        """Create the workflow's hook, or set its mapping: (the hook, its new secret when
        created, else None). WorkflowNotFound for an unknown workflow."""
        access.require_admin(principal, "managing hooks")
        await self.workflows.get(workflow)
        check_mapping(mapping)
        secret = signing.new_secret()
        record, created = await self.store.put_hook(workflow, secret, mapping)
        logger.info("hook %s: %s", workflow, "created" if created else "mapping changed")
        return record, secret if created else None

    async def get(self, principal: access.Principal, workflow: str) -> HookRecord:
        """The workflow's hook (shown without its secret by the router)."""
        access.require_admin(principal, "reading hooks")
        return await self._get(workflow)

    async def rotate(self, principal: access.Principal, workflow: str) -> tuple[HookRecord, str]:
        """A new secret for the hook; the old one stops working at once."""
        access.require_admin(principal, "rotating hook secrets")
        secret = signing.new_secret()
        if not await self.store.rotate_hook_secret(workflow, secret):
            raise await self._missing(workflow)
        logger.info("hook %s: secret rotated", workflow)
        return await self._get(workflow), secret

    async def delete(self, principal: access.Principal, workflow: str) -> None:
        access.require_admin(principal, "deleting hooks")
        if not await self.store.delete_hook(workflow):
            raise await self._missing(workflow)
        logger.info("hook %s: deleted", workflow)

    async def _get(self, workflow: str) -> HookRecord:
        found = await self.store.get_hook(workflow)
        if found is None:
            raise await self._missing(workflow)
        return found

    async def _missing(self, workflow: str) -> NotFound:
        """404 for the admin API: no such workflow, or a workflow without a hook."""
        await self.workflows.get(workflow)  # WorkflowNotFound when it is not registered
        return NotFound(f"workflow {workflow!r} has no hook",
                        errors=[{"field": "workflow", "message": "no hook"}])

    # --- deliveries ----------------------------------------------------------------

    async def verify(self, workflow: str, header: str | None, body: bytes) -> Delivery:
        """Check a delivery's signature and that it is not a replay."""
        hook = await self.store.get_hook(workflow)
        if hook is None:  # the same answer whether or not the workflow exists
            raise NotFound(f"there is no hook for workflow {workflow!r}")
        if header is not None and not header.isascii():  # compare_digest takes ASCII only
            raise SignatureRefused(f"the {signing.HEADER} header is malformed")
        try:
            signature = signing.verify(hook.secret, header, body, tolerance_s=self.tolerance_s)
        except signing.SignatureError as exc:
            raise SignatureRefused(str(exc)) from None
        assert header is not None  # verified
        signed_at, _ = signing.parse(header)
        earlier = await self.store.hook_delivery(workflow, signature)
        if earlier is not None:
            raise DeliveryReplayed(f"this delivery was accepted before: it started run "
                                   f"{earlier}", run_id=earlier)
        return Delivery(hook, signature, signed_at)

    async def start(self, delivery: Delivery, body: Any,
                    headers: Mapping[str, str]) -> Submission:
        """Start the run of a verified delivery with its parsed ``body``; its signature
        is remembered once the run is accepted."""
        hook = delivery.hook
        inputs = map_inputs(hook.inputs, body, headers)
        request = RunRequest(workflow=hook.workflow, inputs=inputs,
                             idempotency_key=f"hook:{delivery.signature}", source=SOURCE,
                             inputs_only=True)
        try:
            submission = await self.service.submit(hook_principal(hook.workflow), request)
        except IdempotencyKeyReused as exc:  # the same signature, the mapping changed since
            raise DeliveryReplayed(f"this delivery was accepted before: it started run "
                                   f"{exc.run_id}", run_id=exc.run_id) from None
        except BadRequest as exc:  # the inputs do not fit the workflow
            raise Unprocessable(exc.message, errors=exc.errors) from None
        if not submission.created:  # an identical delivery won the race
            raise DeliveryReplayed(f"this delivery was accepted before: it started run "
                                   f"{submission.run.id}", run_id=submission.run.id)
        await self.store.add_hook_delivery(hook.workflow, delivery.signature,
                                           delivery.signed_at, submission.run.id)
        logger.info("hook %s: delivery started run %s", hook.workflow, submission.run.id)
        return submission

    async def forget_stale(self, now: float) -> int:
        """Forget deliveries whose signatures are stale now (they cannot be replayed)."""
        removed = 0
        while count := await self.store.delete_old_hook_deliveries(now - self.tolerance_s):
            removed += count
        return removed
