"""Completion callbacks served: the API over them, and the loop that delivers them.

``CallbackBook`` is what the routers call: a run's callback with every attempt, and
the signing secret (read and rotated by an admin). ``CallbackBook.run`` is a task in
the app's task group. It takes the pending callbacks of ended runs whose next attempt
is due (``Store.due_callbacks``, a partial index over pending rows, key by key), sends
up to ``max_in_flight`` at once, each in its own task and bounded by ``timeout_s``, and
records each attempt together with the state it leaves (``rules.after_attempt``),
whatever went wrong in it. The slots are shared out between API keys: a key has at
most ``max_in_flight_per_key`` of them, and each free one goes to the key with the
fewest in flight (``rules.fair_pick``). So however many callbacks a key points
at receivers that never answer, another key's wait only while every slot is taken
(one attempt's timeout at most), and each goes ahead of that key's next. (Each
process counts its own slots.) Each attempt is signed for its URL (``v2``). It wakes
when a run with a callback ends (``run_finished``, told once that run's terminal write
has committed), when an attempt ends, when a retry it scheduled falls due, and every
``TICK_S`` whatever happens, so nothing hangs on the poke; after a restart its first
tick finds whatever was left pending.

Attempts go through the http node's SSRF guard (``netguard.guarded_client`` with the
server's ``HttpPolicy``): a callback to a private or loopback address is a failed
attempt whose error starts with ``blocked``, unless the operator allows private hosts.
A POST the receiver got but whose record a crash lost is sent again: delivery is at
least once, and ``Flowrun-Delivery`` lets a receiver drop the repeat.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import httpx
import orjson

from flowrun.engine.net.guard import BLOCKED, Resolver, guarded_client
from flowrun.engine.node_services import HttpPolicy
from flowrun.errors import FlowrunError, NotFound
from flowrun.features.callbacks import rules
from flowrun.features.callbacks.rules import RetryPolicy
from flowrun.features.webhooks import signing
from flowrun.language import urls
from flowrun.records import CallbackAttempt, CallbackRecord, DueCallback, RunRecord, rfc3339
from flowrun.runs import access
from flowrun.runs.lifecycle import Lifecycle
from flowrun.runs.service import RunService
from flowrun.store import Store

logger = logging.getLogger(__name__)

SECRET_NAME = "callback_signing"
ROTATION_OVERLAP_S = 86_400.0  # a rotated-out secret still signs (as a second v2) this long
TICK_S = 1.0  # the longest the loop sleeps: a due retry waits at most this
TICK_TIMEOUT_S = 30.0  # a look-up that takes longer (a stuck database) is abandoned
RECORD_TIMEOUT_S = 10.0  # the wait for an attempt's record, shielded from shutdown


class CallbackBook:
    """Show a run's callback, manage the signing secret; deliver callbacks while running."""

    def __init__(self, store: Store, service: RunService, lifecycle: Lifecycle,
                 policy: HttpPolicy, retry: RetryPolicy, *, timeout_s: float = 10.0,
                 max_in_flight: int = 8, max_in_flight_per_key: int = 4,
                 resolve: Resolver | None = None,
                 clock: Callable[[], float] = time.time,
                 jitter: Callable[[], float] = random.random) -> None:
        self.store = store
        self.service = service
        self.lifecycle = lifecycle
        self.policy = policy
        self.retry = retry
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_key = max_in_flight_per_key
        self.resolve = resolve
        self.clock = clock
        self.jitter = jitter
        self._in_flight: dict[str, str] = {}  # run ids being sent now -> their keys
        self._soonest = math.inf  # the earliest retry this process scheduled
        self._wake = anyio.Event()
        self._secret: tuple[str, str | None, float | None] | None = None
        self._http: httpx.AsyncClient | None = None

    # --- the API -------------------------------------------------------------------

    async def get(self, principal: access.Principal, run_id: str) -> CallbackRecord:
        """A run's callback with its attempts: RunNotFound as reading the run would
        (another key's run), NotFound when the run has no callback."""
        await self.service.get_run(principal, run_id)
        found = await self.store.get_callback(run_id)
        if found is None:
            raise NotFound(f"run {run_id!r} has no callback",
                           errors=[{"field": "run_id", "message": "no callback_url"}])
        return found

    async def secret(self, principal: access.Principal) -> dict[str, Any]:
        """The signing secret (made on first need), and until when the one a rotation
        replaced still signs too (admin)."""
        access.require_admin(principal, "reading the callback signing secret")
        value, previous, until = await self._secrets()
        still = previous is not None and until is not None and until > self.clock()
        return {"secret": value, "previous_valid_until": rfc3339(until) if still else None}

    async def rotate(self, principal: access.Principal) -> dict[str, Any]:
        """A new signing secret (admin). The old one signs alongside it (a second ``v2``)
        for ``ROTATION_OVERLAP_S``, while receivers move to the new one."""
        access.require_admin(principal, "rotating the callback signing secret")
        await self.store.rotate_server_secret(SECRET_NAME, signing.new_secret(),
                                              self.clock() + ROTATION_OVERLAP_S)
        self._secret = None
        logger.info("callbacks: signing secret rotated")
        return await self.secret(principal)

    async def _secrets(self) -> tuple[str, str | None, float | None]:
        if self._secret is None:  # (this process is the only one that rotates it)
            self._secret = await self.store.server_secret(SECRET_NAME, signing.new_secret())
        return self._secret

    async def signing_secrets(self) -> list[str]:
        """The secrets an attempt is signed with now: the current one first."""
        value, previous, until = await self._secrets()
        if previous is not None and until is not None and until > self.clock():
            return [value, previous]
        return [value]

    # --- the loop ------------------------------------------------------------------

    def run_finished(self, run: RunRecord) -> None:
        """A run's terminal write has committed: send its callback now, not at the tick."""
        if run.callback_url is not None:
            self._wake.set()

    async def run(self) -> None:
        """Deliver due callbacks until cancelled (a task in the app's task group)."""
        async with guarded_client(self.policy, resolve=self.resolve,
                                  timeout=self.timeout_s) as http, \
                anyio.create_task_group() as tg:
            self._http = http
            while True:
                self._wake = anyio.Event()  # before the look-up: a poke during it counts
                if not self.lifecycle.shutting_down:  # a drain starts nothing new
                    with anyio.move_on_after(TICK_TIMEOUT_S) as scope:
                        await self.tick(tg)
                    if scope.cancelled_caught:
                        logger.warning("callbacks: a look-up took over %gs; retrying",
                                       TICK_TIMEOUT_S)
                with anyio.move_on_after(min(TICK_S, self._soonest - self.clock())):
                    await self._wake.wait()

    async def tick(self, tg: anyio.abc.TaskGroup) -> int:
        """Start sending every due callback there is room for; how many were started."""
        now = self.clock()
        if self._soonest <= now:
            self._soonest = math.inf  # due now: this look-up finds it
        room = self.max_in_flight - len(self._in_flight)
        if room <= 0:
            return 0
        try:
            due = await self._pick(now, room)
        except FlowrunError as exc:
            logger.warning("callbacks: cannot look for due callbacks: %s", exc.message)
            return 0
        for item in due:
            self._in_flight[item.run_id] = item.api_key_id
            tg.start_soon(self._deliver, item)
        return len(due)

    async def _pick(self, now: float, room: int) -> list[DueCallback]:
        """Up to ``room`` due callbacks shared out between keys (``rules.fair_pick``):
        one look-up of the keys with pending callbacks, then one round trip for the
        soonest few of each key that is under its cap."""
        busy = Counter(self._in_flight.values())
        cap = self.max_in_flight_per_key
        wanted = {key: min(room, cap - busy[key]) for key in await self.store.callback_keys()
                  if busy[key] < cap}
        due = await self.store.due_callbacks(now, wanted, self._in_flight)
        return rules.fair_pick(due, busy, per_key=cap, room=room)

    async def _deliver(self, item: DueCallback) -> None:
        try:
            await self.attempt(item)
        except Exception as exc:  # a bad row or a store fault must not crash the task group
            await self._not_made(item, exc)
        finally:
            self._in_flight.pop(item.run_id, None)
            self._wake.set()  # a slot is free

    async def _not_made(self, item: DueCallback, exc: Exception) -> None:
        """An attempt that failed before it was sent or recorded (a store fault, a bad
        row): recorded as a failed attempt if the store takes it, so it backs off and
        expires like any other; if not, held in flight a moment (no tight retry loop).
        One log line either way, not a traceback at every try."""
        why = f"{type(exc).__name__}: {exc}"
        trace = logger.isEnabledFor(logging.DEBUG)
        try:
            await self._record(item, CallbackAttempt(item.attempts + 1, self.clock(), None,
                                                     f"not sent: {why}", 0.0),
                               level=logging.WARNING)
        except Exception:
            logger.warning("callbacks: run %s: attempt %d not made, nor recorded: %s",
                           item.run_id, item.attempts + 1, why, exc_info=trace)
            await anyio.sleep(TICK_S)

    async def attempt(self, item: DueCallback) -> CallbackAttempt | None:
        """POST the run once and record the attempt with the state it leaves; None when
        the run is gone (deleted meanwhile, its callback with it)."""
        with anyio.fail_after(TICK_TIMEOUT_S):  # a stuck database: tried again later
            if self.store.postgres and not await self.store.claim_callback(
                    item.run_id, item.attempts, self.clock(),
                    self.clock() + self.timeout_s + RECORD_TIMEOUT_S + TICK_TIMEOUT_S):
                return None  # another process sharing the database sends this one
            run = await self.store.get_run(item.run_id)
            secrets = await self.signing_secrets()
        if run is None:
            return None
        number = item.attempts + 1
        at = self.clock()
        started = time.monotonic()
        try:
            urls.check_url(item.url)  # stored before this version refused it?
        except ValueError as exc:
            record = CallbackAttempt(number, at, None, f"invalid callback_url: {exc}", 0.0)
            # no attempt could ever send it: failed now, not retried for a day
            await self._record(item, record, retry=False, level=logging.WARNING)
            return record
        body = _dumps(run.to_json())
        headers = rules.request_headers(secrets, body, url=item.url,
                                            delivery_id=item.delivery_id, attempt=number,
                                            timestamp=int(at))
        status_code, error = await self._post(item.url, body, headers)
        record = CallbackAttempt(number, at, status_code, error,
                                 (time.monotonic() - started) * 1000)
        await self._record(item, record)
        return record

    async def _record(self, item: DueCallback, record: CallbackAttempt, *,
                      retry: bool = True, level: int = logging.INFO) -> None:
        """Save an attempt with the state it leaves the callback in (shielded: an attempt
        the receiver saw is recorded even during a shutdown)."""
        decision = rules.after_attempt(record.attempt,
                                           rules.delivered(record.status_code),
                                           now=self.clock(), finished_at=item.finished_at,
                                           policy=self.retry, jitter=self.jitter(),
                                           retry=retry)
        with anyio.move_on_after(RECORD_TIMEOUT_S, shield=True):
            await self.store.record_callback_attempt(item.run_id, record, decision.state,
                                                     decision.next_attempt_at)
        if decision.next_attempt_at is not None:
            self._soonest = min(self._soonest, decision.next_attempt_at)
        logger.log(level, "callbacks: run %s: attempt %d: %s -> %s", item.run_id,
                   record.attempt,
                   record.status_code if record.status_code is not None else record.error,
                   decision.state.value)

    async def _post(self, url: str, body: bytes,
                    headers: dict[str, str]) -> tuple[int | None, str | None]:
        """(status, None) when the receiver answered, else (None, why not). The answer's
        body is never read: a receiver cannot make the server read much."""
        assert self._http is not None, "run() opens the client"
        try:
            with anyio.fail_after(self.timeout_s):
                async with self._http.stream("POST", url, content=body, headers=headers,
                                             follow_redirects=False) as resp:
                    return resp.status_code, None
        except (TimeoutError, httpx.TimeoutException):
            return None, f"timeout: no answer within {self.timeout_s:g}s"
        except httpx.ConnectError as exc:
            text = str(exc)
            return None, text if text.startswith(BLOCKED) else f"connect error: {text}"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # not httpx's own (InvalidURL, idna's): failed all the same
            return None, f"cannot send: {type(exc).__name__}: {exc}"


def _dumps(value: Any) -> bytes:
    """The body as ``GET /runs/{id}`` renders it."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer past 64 bits
        return json.dumps(value, separators=(",", ":")).encode()
