"""A Python client for the native API, sync (``Client``) and async (``AsyncClient``).

    ClientError            any 4xx/5xx answer; carries status, code, detail, body
    └── RunSyncTimeout     run-sync answered 408: the run goes on (``run_id``); a 408
                           request_timeout (the request's body came too slowly) is a
                           plain ClientError
    WaitTimeout            ``wait`` ran out of time: the run goes on (``run``)
    SignatureError         ``verify_callback``: not a callback signed for this URL

``events(run_id)`` yields typed ``RunEvent``s and reconnects by itself with the
last seen sequence number as ``Last-Event-ID``, so a dropped connection loses
and repeats nothing. It ends after ``workflow_finished``.

``verify_callback`` is the receiving end of completion callbacks: it checks the
signature against the receiver's own URL and gives the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from flowrun.features.webhooks import signing

DEFAULT_URL = "http://127.0.0.1:8000"
SignatureError = signing.SignatureError  # what verify_callback raises
_STREAM_TIMEOUT = httpx.Timeout(30.0, read=60.0)  # the server pings every 10 s


class ClientError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.code = body.get("code") if isinstance(body, dict) else None
        self.detail = (body.get("detail") or body.get("message")) if isinstance(body, dict) \
            else str(body)
        super().__init__(f"{status} {self.code}: {self.detail}")


class RunSyncTimeout(ClientError):
    """run-sync returned 408 before the run finished; the run keeps going."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        if isinstance(body, dict) and "run_id" in body:
            self.code = "timeout"
            self.detail = (f"run {body['run_id']} is still {body.get('status')} after "
                           f"{body.get('timeout')}s; it goes on (wait for it with wait())")
            self.args = (f"{status} {self.code}: {self.detail}",)

    @property
    def run_id(self) -> str:
        return str(self.body["run_id"])


class WaitTimeout(TimeoutError):
    """``wait`` gave up before the run finished; the run keeps going."""

    def __init__(self, run: dict[str, Any], timeout: float) -> None:
        self.run = run
        super().__init__(f"run {run.get('id')} is still {run.get('status')} after {timeout:g}s")


TERMINAL = frozenset({"succeeded", "failed", "stopped", "timed_out"})


def verify_callback(secret: str, headers: Mapping[str, str], body: bytes, *, url: str,
                    tolerance_s: float = signing.DEFAULT_TOLERANCE_S,
                    now: float | None = None) -> dict[str, Any]:
    """The run a completion callback carries, once its ``Flowrun-Signature`` holds for
    this receiver: ``secret`` (``GET /callbacks/secret``), the request's ``headers``
    (any case), its raw ``body`` and ``url``, the receiver's own address exactly as
    runs name it in ``callback_url``. Raises SignatureError when the signature is
    missing, malformed, stale (``tolerance_s``), forged, or signed for another URL."""
    header = next((v for k, v in headers.items() if k.lower() == signing.HEADER.lower()),
                  None)
    signing.verify(secret, header, body, url=url, tolerance_s=tolerance_s, now=now)
    run: dict[str, Any] = json.loads(body)
    return run


def _poll_delays(timeout: float | None) -> Iterator[float]:
    """Pauses between polls of ``wait``: 50 ms doubling to 1 s, cut short by ``timeout``;
    ends when the time is up."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.05
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        yield delay if left is None else min(delay, left)
        delay = min(delay * 2, 1.0)


@dataclass(frozen=True)
class RunEvent:
    """One event of a run's stream."""

    seq: int
    event: str
    run_id: str
    data: dict[str, Any]
    created_at: int

    @property
    def terminal(self) -> bool:
        return self.event == "workflow_finished"


def _check(resp: httpx.Response) -> Any:
    if resp.status_code < 400:
        return resp.json()
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    # a 408 with the run is run-sync's; request_timeout is the server's (a body too slow)
    if resp.status_code == 408 and not (isinstance(body, dict)
                                        and body.get("code") == "request_timeout"):
        raise RunSyncTimeout(resp.status_code, body)
    raise ClientError(resp.status_code, body)


def _run_body(inputs: dict[str, Any] | None, options: dict[str, Any],
              callback_url: str | None = None) -> dict[str, Any]:
    body = {"inputs": inputs or {}, **{k: v for k, v in options.items() if v is not None}}
    if callback_url is not None:
        body["callback_url"] = callback_url
    return body


def _check_empty(resp: httpx.Response) -> None:
    """An answer with no body (204): only its errors matter."""
    if resp.status_code >= 400:
        _check(resp)


def _key_headers(idempotency_key: str | None, on_conflict: str | None) -> dict[str, str]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    if on_conflict:
        headers["X-On-Conflict"] = on_conflict
    return headers


def _parse(sse: ServerSentEvent) -> RunEvent | None:
    if not sse.data or sse.event == "ping":
        return None
    envelope = json.loads(sse.data)
    return RunEvent(int(envelope["seq"]), envelope["event"], envelope["run_id"],
                    envelope.get("data") or {}, int(envelope.get("created_at") or 0))


class _Resume:
    """Where a followed stream is: the last event seen and the failures since it."""

    def __init__(self, after: int | None, max_reconnects: int) -> None:
        self.last = after or 0
        self.failures = 0
        self.max_reconnects = max_reconnects

    @property
    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": str(self.last)}

    def take(self, sse: ServerSentEvent) -> RunEvent | None:
        """The event to hand on, or None for a ping or one already seen."""
        event = _parse(sse)
        if event is None or event.seq <= self.last:
            return None
        self.last, self.failures = event.seq, 0
        return event

    def next_delay(self, error: Exception | None) -> float:
        """How long to wait before reconnecting; re-raises once retries are used up."""
        if error is not None and self.failures >= self.max_reconnects:
            raise error
        self.failures += 1
        return _backoff(self.failures)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _backoff(attempt: int) -> float:
    return float(min(0.1 * 2 ** attempt, 5.0))


class Client:
    """Blocking client; use as a context manager or call ``close()``."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float = 30.0, max_reconnects: int = 10,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout,
                                  transport=transport)
        self.max_reconnects = max_reconnects

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(self, workflow: str, inputs: dict[str, Any] | None = None, *,
               idempotency_key: str | None = None, on_conflict: str | None = None,
               callback_url: str | None = None, **options: Any) -> dict[str, Any]:
        """Start a run (202; 200 when an idempotency key replays an existing run).
        ``callback_url``: POST the finished run there (see ``callbacks``)."""
        return dict(_check(self._http.post(f"/workflows/{workflow}/run",
                                           json=_run_body(inputs, options, callback_url),
                                           headers=_key_headers(idempotency_key,
                                                                on_conflict))))

    def run_sync(self, workflow: str, inputs: dict[str, Any] | None = None, *,
                 timeout: float | None = None, idempotency_key: str | None = None,
                 on_conflict: str | None = None, callback_url: str | None = None,
                 **options: Any) -> dict[str, Any]:
        """Run and wait for the finished run; RunSyncTimeout when ``timeout`` passes first."""
        params = {"timeout": timeout} if timeout is not None else {}
        wait = (timeout or 300) + 30
        return dict(_check(self._http.post(f"/workflows/{workflow}/run-sync", params=params,
                                           json=_run_body(inputs, options, callback_url),
                                           timeout=wait,
                                           headers=_key_headers(idempotency_key,
                                                                on_conflict))))

    def get(self, run_id: str) -> dict[str, Any]:
        return dict(_check(self._http.get(f"/runs/{run_id}")))

    def callbacks(self, run_id: str) -> dict[str, Any]:
        """The run's completion callback: url, state (pending, delivered, failed),
        next_attempt_at and every attempt; ClientError 404 when it has none."""
        return dict(_check(self._http.get(f"/runs/{run_id}/callbacks")))

    def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The run once it has finished; WaitTimeout when ``timeout`` seconds pass first."""
        run = self.get(run_id)
        for delay in _poll_delays(timeout):
            if run["status"] in TERMINAL:
                return run
            time.sleep(delay)
            run = self.get(run_id)
        if run["status"] in TERMINAL:
            return run
        raise WaitTimeout(run, timeout or 0)

    def rerun(self, run_id: str, from_node: str,
              inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new run of a finished run from ``from_node``, reusing the nodes before it."""
        body: dict[str, Any] = {"from_node": from_node}
        if inputs is not None:
            body["inputs"] = inputs
        return dict(_check(self._http.post(f"/runs/{run_id}/rerun", json=body)))

    def list(self, workflow: str | None = None, **filters: Any) -> dict[str, Any]:
        """``{"runs": [...], "next_cursor": ...}`` of one workflow, or of all; filters:
        status, correlation_id, limit, cursor."""
        params = {k: v for k, v in filters.items() if v is not None}
        path = "/runs" if workflow is None else f"/workflows/{workflow}/runs"
        return dict(_check(self._http.get(path, params=params)))

    def stop(self, run_id: str) -> dict[str, Any]:
        return dict(_check(self._http.post(f"/runs/{run_id}/stop")))

    def signal(self, run_id: str, name: str,
               data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send signal ``name`` to the run's wait node; ``data`` becomes its outputs."""
        body = {"name": name, "data": data or {}}
        return dict(_check(self._http.post(f"/runs/{run_id}/signal", json=body)))
    # --- inbound webhooks (admin key) -------------------------------------------------

    def put_hook(self, workflow: str, inputs: Any = None) -> dict[str, Any]:
        """Create the workflow's hook (its ``secret`` is in the answer, this once) or
        change its ``inputs`` mapping (None: a delivery's body is the inputs)."""
        return dict(_check(self._http.put(f"/workflows/{workflow}/hook",
                                          json={"inputs": inputs})))

    def get_hook(self, workflow: str) -> dict[str, Any]:
        """The hook without its secret: path, mapping, created_at, last_delivery."""
        return dict(_check(self._http.get(f"/workflows/{workflow}/hook")))

    def rotate_hook_secret(self, workflow: str) -> dict[str, Any]:
        """A new ``secret`` for the hook; the old one stops working at once."""
        return dict(_check(self._http.post(f"/workflows/{workflow}/hook/rotate")))

    def delete_hook(self, workflow: str) -> None:
        _check_empty(self._http.delete(f"/workflows/{workflow}/hook"))

    def events(self, run_id: str, after: int | None = None) -> Iterator[RunEvent]:
        """The run's events after ``after``, reconnecting as needed, until it finishes."""
        resume = _Resume(after, self.max_reconnects)
        while True:
            error: Exception | None = None
            try:
                with connect_sse(self._http, "GET", f"/runs/{run_id}/events",
                                 headers=resume.headers, timeout=_STREAM_TIMEOUT) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        _check(source.response)
                    for sse in source.iter_sse():
                        event = resume.take(sse)
                        if event is not None:
                            yield event
                            if event.terminal:
                                return
            except httpx.TransportError as exc:
                error = exc
            time.sleep(resume.next_delay(error))


class AsyncClient:
    """The same calls as ``Client``, awaitable."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float = 30.0, max_reconnects: int = 10,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key),
                                       timeout=timeout, transport=transport)
        self.max_reconnects = max_reconnects

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(self, workflow: str, inputs: dict[str, Any] | None = None, *,
                     idempotency_key: str | None = None, on_conflict: str | None = None,
                     callback_url: str | None = None, **options: Any) -> dict[str, Any]:
        return dict(_check(await self._http.post(f"/workflows/{workflow}/run",
                                                 json=_run_body(inputs, options, callback_url),
                                                 headers=_key_headers(idempotency_key,
                                                                      on_conflict))))

    async def run_sync(self, workflow: str, inputs: dict[str, Any] | None = None, *,
                       timeout: float | None = None,  # noqa: ASYNC109 - the server's wait
                       idempotency_key: str | None = None, on_conflict: str | None = None,
                       callback_url: str | None = None, **options: Any) -> dict[str, Any]:
        params = {"timeout": timeout} if timeout is not None else {}
        wait = (timeout or 300) + 30
        return dict(_check(await self._http.post(f"/workflows/{workflow}/run-sync",
                                                 params=params,
                                                 json=_run_body(inputs, options, callback_url),
                                                 timeout=wait,
                                                 headers=_key_headers(idempotency_key,
                                                                      on_conflict))))

    async def get(self, run_id: str) -> dict[str, Any]:
        return dict(_check(await self._http.get(f"/runs/{run_id}")))

    async def callbacks(self, run_id: str) -> dict[str, Any]:
        return dict(_check(await self._http.get(f"/runs/{run_id}/callbacks")))

    async def wait(self, run_id: str,
                   timeout: float | None = None,  # noqa: ASYNC109 - a polling budget
                   ) -> dict[str, Any]:
        run = await self.get(run_id)
        for delay in _poll_delays(timeout):
            if run["status"] in TERMINAL:
                return run
            await anyio.sleep(delay)
            run = await self.get(run_id)
        if run["status"] in TERMINAL:
            return run
        raise WaitTimeout(run, timeout or 0)

    async def rerun(self, run_id: str, from_node: str,
                    inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"from_node": from_node}
        if inputs is not None:
            body["inputs"] = inputs
        return dict(_check(await self._http.post(f"/runs/{run_id}/rerun", json=body)))

    async def list(self, workflow: str | None = None, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        path = "/runs" if workflow is None else f"/workflows/{workflow}/runs"
        return dict(_check(await self._http.get(path, params=params)))

    async def stop(self, run_id: str) -> dict[str, Any]:
        return dict(_check(await self._http.post(f"/runs/{run_id}/stop")))

    async def signal(self, run_id: str, name: str,
                     data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send signal ``name`` to the run's wait node; ``data`` becomes its outputs."""
        body = {"name": name, "data": data or {}}
        return dict(_check(await self._http.post(f"/runs/{run_id}/signal", json=body)))
    async def put_hook(self, workflow: str, inputs: Any = None) -> dict[str, Any]:
        return dict(_check(await self._http.put(f"/workflows/{workflow}/hook",
                                                json={"inputs": inputs})))

    async def get_hook(self, workflow: str) -> dict[str, Any]:
        return dict(_check(await self._http.get(f"/workflows/{workflow}/hook")))

    async def rotate_hook_secret(self, workflow: str) -> dict[str, Any]:
        return dict(_check(await self._http.post(f"/workflows/{workflow}/hook/rotate")))

    async def delete_hook(self, workflow: str) -> None:
        _check_empty(await self._http.delete(f"/workflows/{workflow}/hook"))

    async def events(self, run_id: str, after: int | None = None) -> AsyncIterator[RunEvent]:
        resume = _Resume(after, self.max_reconnects)
        while True:
            error: Exception | None = None
            try:
                async with aconnect_sse(self._http, "GET", f"/runs/{run_id}/events",
                                        headers=resume.headers,
                                        timeout=_STREAM_TIMEOUT) as source:
                    if source.response.status_code >= 400:
                        await source.response.aread()
                        _check(source.response)
                    async for sse in source.aiter_sse():
                        event = resume.take(sse)
                        if event is not None:
                            yield event
                            if event.terminal:
                                return
            except httpx.TransportError as exc:
                error = exc
            await anyio.sleep(resume.next_delay(error))
