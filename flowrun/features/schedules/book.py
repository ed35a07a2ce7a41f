"""Schedules served: the API's rules over the stored schedules, and the loop firing them.

``ScheduleBook`` is what the routers call (list, create, pause, resume, delete).
``ScheduleBook.run`` is a task in the app's task group: it wakes at the next due
slot (at most ``TICK_S`` later, so new or changed schedules are seen), and for
each slot ``cron.plan`` says fires it submits a run through
``RunService.submit`` with the idempotency key ``schedule:{workflow}:{id}:{slot}``,
then records the slot as ``last_slot``. The key makes a slot fire once even when
the server stops between the submit and that record, or two loops race; the
``last_slot`` keeps the slots already fired from being planned again.

Scheduled runs act as ``SCHEDULER``: the operator (admin scope, no API key),
like a caller with auth off. Schedules are the operator's (only an admin key
makes or deletes one, or registers a definition's block), so their runs belong
to no API key: admins see them, run-scope keys do not.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import pydantic

from flowrun.errors import (
    BadRequest,
    Conflict,
    FlowrunError,
    IdempotencyKeyReused,
    NotFound,
    Unavailable,
)
from flowrun.language import cron, definitions
from flowrun.language.checks import schedule_problems
from flowrun.language.definitions import ScheduleSpec
from flowrun.records import ScheduleRecord
from flowrun.runs import access
from flowrun.runs.catalog import WorkflowCatalog
from flowrun.runs.lifecycle import Lifecycle
from flowrun.runs.service import RunRequest, RunService
from flowrun.store import Store

logger = logging.getLogger(__name__)

SCHEDULER = access.Principal(key_id=None, scope=access.Scope.ADMIN)
TICK_S = 1.0  # the longest the loop sleeps: a new or resumed schedule waits at most this
TICK_TIMEOUT_S = 30.0  # a tick that takes longer (a stuck database) is abandoned, then retried


def slot_key(workflow: str, schedule_id: str, slot: float) -> str:
    """The idempotency key of one slot of one schedule."""
    iso = dt.datetime.fromtimestamp(slot, tz=dt.UTC).isoformat().replace("+00:00", "Z")
    return f"schedule:{workflow}:{schedule_id}:{iso}"


class ScheduleBook:
    """List, create, pause, resume and delete schedules; fire them while running."""

    def __init__(self, store: Store, workflows: WorkflowCatalog, service: RunService,
                 lifecycle: Lifecycle, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.workflows = workflows
        self.service = service
        self.lifecycle = lifecycle
        self.clock = clock
        self._looked_at: float | None = None  # when this loop's previous tick began

    # --- the API -------------------------------------------------------------------

    async def list(self, principal: access.Principal, workflow: str) -> list[ScheduleRecord]:
        """A workflow's schedules (WorkflowNotFound when it is not registered)."""
        await self.workflows.read(principal, workflow)
        return await self.store.list_schedules(workflow)

    async def create(self, principal: access.Principal, workflow: str,
                     data: dict[str, Any]) -> ScheduleRecord:
        """Add an API schedule (admin); 400 naming it when invalid, 409 when its id is taken."""
        access.require_admin(principal, "creating schedules")
        _, definition = await self.workflows.get(workflow)
        spec = _parse(data)
        errors = schedule_problems(definition, spec.id, spec.cron, spec.timezone, spec.inputs,
                                   definitions.check_inputs)
        if errors:
            raise BadRequest("; ".join(e["message"] for e in errors), errors=errors)
        record = ScheduleRecord(workflow=workflow, id=spec.id, cron=spec.cron,
                                timezone=spec.timezone, inputs=spec.inputs,
                                catch_up=spec.catch_up, paused=spec.paused, source="api",
                                created_at=self.clock())
        if not await self.store.add_schedule(record):
            raise Conflict(f"workflow {workflow!r} already has a schedule {spec.id!r}",
                           errors=[{"schedule": spec.id, "field": "id",
                                    "message": "already exists"}])
        logger.info("schedule %s/%s: created (%s %s)", workflow, spec.id, spec.cron,
                    spec.timezone)
        return record

    async def set_paused(self, principal: access.Principal, workflow: str, schedule_id: str,
                         paused: bool) -> ScheduleRecord:
        """Pause, or resume from now (the slots that went by while paused are not owed).
        Admin only: a schedule runs for every user of the workflow, not for one key."""
        access.require_admin(principal, "pausing or resuming schedules")
        await self._get(workflow, schedule_id)
        await self.store.set_schedule_paused(workflow, schedule_id, paused,
                                             None if paused else self.clock())
        logger.info("schedule %s/%s: %s", workflow, schedule_id,
                    "paused" if paused else "resumed")
        return await self._get(workflow, schedule_id)

    async def delete(self, principal: access.Principal, workflow: str, schedule_id: str) -> None:
        """Delete a schedule (admin); a definition's comes back when its block is registered
        again."""
        access.require_admin(principal, "deleting schedules")
        if not await self.store.delete_schedule(workflow, schedule_id):
            raise _not_found(workflow, schedule_id)
        logger.info("schedule %s/%s: deleted", workflow, schedule_id)

    async def _get(self, workflow: str, schedule_id: str) -> ScheduleRecord:
        found = await self.store.get_schedule(workflow, schedule_id)
        if found is None:
            raise _not_found(workflow, schedule_id)
        return found

    # --- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Fire due slots until cancelled (a task in the app's task group)."""
        while True:
            wake = self.clock() + TICK_S
            if not self.lifecycle.shutting_down:  # a drain fires nothing
                with anyio.move_on_after(TICK_TIMEOUT_S) as scope:
                    wake = min(wake, await self.tick())
                if scope.cancelled_caught:
                    logger.warning("schedules: a tick took over %gs; retrying", TICK_TIMEOUT_S)
            await anyio.sleep(max(0.0, min(wake - self.clock(), TICK_S)))

    async def tick(self) -> float:
        """Fire every due slot now; the time of the next slot of any schedule."""
        now = self.clock()
        wake = now + TICK_S
        try:
            due = await self.store.list_schedules()
        except FlowrunError as exc:  # the database cannot be read now: the next tick
            logger.warning("schedules: cannot look for due slots: %s", exc.message)
            return wake
        looked_at, self._looked_at = self._looked_at, now
        for schedule in due:
            if schedule.paused:
                continue
            try:
                await self._fire(schedule, now, looked_at)
                wake = min(wake, cron.next_slot(schedule.cron, schedule.timezone, now))
            except FlowrunError as exc:  # draining, or the database refuses writes
                logger.warning("schedule %s/%s: not fired now: %s", schedule.workflow,
                               schedule.id, exc.message)
            except Exception:  # a bad row must not stop the others, nor crash the group
                logger.exception("schedule %s/%s: not fired", schedule.workflow, schedule.id)
        return wake

    async def _fire(self, schedule: ScheduleRecord, now: float,
                    looked_at: float | None) -> None:
        plan = cron.plan(schedule.cron, schedule.timezone,
                              _catch_up(schedule.catch_up), schedule.last_slot,
                              schedule.created_at, now, looked_at=looked_at)
        if plan.missed:
            logger.info("schedule %s/%s: %s missed slots, catch_up %s fires %d%s",
                        schedule.workflow, schedule.id,
                        plan.missed if schedule.catch_up == "all" else f"{plan.missed}+",
                        schedule.catch_up, len(plan.fire),
                        f" (at most {cron.MAX_CATCH_UP})" if plan.capped else "")
        for slot in plan.fire:
            request = RunRequest(workflow=schedule.workflow, inputs=dict(schedule.inputs),
                                 idempotency_key=slot_key(schedule.workflow, schedule.id, slot),
                                 schedule_id=schedule.id, schedule_slot=slot)
            try:
                submission = await self.service.submit(SCHEDULER, request)
            except IdempotencyKeyReused:  # fired already, before its inputs changed
                pass
            except Unavailable:
                raise  # draining, or the database refuses writes: the next tick retries
            except FlowrunError as exc:
                # Refused for good (its workflow was deleted, its inputs no longer fit,
                # the queue is full): this slot is lost, said once, not every tick.
                logger.warning("schedule %s/%s: slot %s not fired: %s", schedule.workflow,
                               schedule.id, request.idempotency_key, exc.message)
            else:
                if submission.created:
                    logger.info("schedule %s/%s: slot %s started run %s", schedule.workflow,
                                schedule.id, request.idempotency_key, submission.run.id)
            await self.store.set_schedule_slot(schedule.workflow, schedule.id, slot)
        if plan.last_slot is not None and plan.last_slot != schedule.last_slot:
            await self.store.set_schedule_slot(schedule.workflow, schedule.id, plan.last_slot)


def _parse(data: Any) -> ScheduleSpec:
    """A schedule body as ``ScheduleSpec``; 400 naming the schedule and field."""
    try:
        return ScheduleSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        name = data.get("id") if isinstance(data, dict) else None
        label = f"schedule {name!r}" if isinstance(name, str) else "schedule"
        errors: list[dict[str, Any]] = []
        for e in exc.errors():
            field = ".".join(str(p) for p in e["loc"])
            errors.append({"schedule": name, "field": field,
                           "message": f"{label}: {field}: {e['msg']}"})
        raise BadRequest("; ".join(e["message"] for e in errors), errors=errors) from None


def _catch_up(value: str) -> cron.CatchUp:
    for policy in cron.CATCH_UP_POLICIES:
        if policy == value:
            return policy
    return "latest"


def _not_found(workflow: str, schedule_id: str) -> NotFound:
    return NotFound(f"workflow {workflow!r} has no schedule {schedule_id!r}",
                    errors=[{"schedule": schedule_id, "message": "no such schedule"}])
