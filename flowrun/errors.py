"""One exception tree for everything flowrun raises on purpose.

    FlowrunError                      500 internal_error
    ├── BadRequest                    400 invalid_param (carries per-field errors)
    │   ├── DefinitionError           400 invalid_definition (names node or edge)
    │   └── InputError                400 invalid_param (names each input)
    ├── Unauthorized                  401 unauthorized
    │   └── SignatureRefused          401 invalid_signature (a hook delivery's signature)
    ├── Forbidden                     403 forbidden (the key's scope or binding)
    ├── NotFound                      404
    │   ├── WorkflowNotFound          404 workflow_not_found
    │   ├── VersionNotFound           404 version_not_found
    │   └── RunNotFound               404 run_not_found
    ├── Conflict                      409 conflict (the run's state does not allow it)
    │   └── DeliveryReplayed          409 delivery_replayed (names the run it started)
    ├── IdempotencyConflict           409 idempotency_conflict
    ├── IdempotencyKeyReused          422 idempotency_key_reused
    ├── Unprocessable                 422 unprocessable (a hook body that gives no inputs)
    ├── RequestTimeout                408 request_timeout (the body came too slowly)
    ├── PayloadTooLarge               413 payload_too_large
    ├── UnsupportedMediaType          415 unsupported_media_type
    ├── TooManyRequests               429 too_many_requests (a per-key limit)
    │   └── QueueFull                 429 queue_full
    └── Unavailable                   503 unavailable (store fault, shutting down)
    NodeFailure                       a node's own failure inside a run (not HTTP)
    ├── ExpressionError               an expression could not be evaluated
    └── OutputTooLarge                output_too_large (past a storage limit)
    WaitForSignal                     a wait node parks its run (control flow, not an error)

HTTP status and machine ``code`` live on the class; every API dialect installs
one handler for ``FlowrunError`` and renders its own envelope.
"""

from __future__ import annotations

from typing import Any


class FlowrunError(Exception):
    """Base class: raised for any failure flowrun reports to a client."""

    status_code: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(self, message: str | None = None, *, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.message = message or self.title
        self.errors = errors or []
        self.headers = headers or {}
        super().__init__(self.message)

    @property
    def extra(self) -> dict[str, Any]:
        """Extension members for the error body (e.g. the conflicting run's id)."""
        return {}


class BadRequest(FlowrunError):
    """Raised when a request is malformed or a field has a wrong value."""

    status_code = 400
    code = "invalid_param"
    title = "Invalid request"


class DefinitionError(BadRequest):
    """Raised when a workflow definition or graph override is invalid."""

    code = "invalid_definition"
    title = "Invalid workflow definition"


class InputError(BadRequest):
    """Raised when run inputs do not match the workflow's declared inputs."""

    title = "Invalid inputs"


class Unauthorized(FlowrunError):
    """Raised when a request has no valid API key."""

    status_code = 401
    code = "unauthorized"
    title = "Unauthorized"


class SignatureRefused(Unauthorized):
    """Raised when a hook delivery's signature is missing, malformed, stale or wrong."""

    code = "invalid_signature"
    title = "Invalid signature"


class Forbidden(FlowrunError):
    """Raised when a valid key lacks the scope (admin) or binding (workflow) for an action."""

    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(FlowrunError):
    """Raised when a named resource does not exist (or is not the caller's)."""

    status_code = 404
    code = "not_found"
    title = "Not found"


class WorkflowNotFound(NotFound):
    """Raised for an unknown workflow name."""

    code = "workflow_not_found"
    title = "Workflow not found"


class VersionNotFound(NotFound):
    """Raised for a version a workflow does not have."""

    code = "version_not_found"
    title = "Workflow version not found"


class RunNotFound(NotFound):
    """Raised for an unknown run id, or a run made with another API key."""

    code = "run_not_found"
    title = "Run not found"


class Conflict(FlowrunError):
    """Raised when a run's state forbids the action (pause a finished run, retry a live one)."""

    status_code = 409
    code = "conflict"
    title = "Conflict"


class DeliveryReplayed(Conflict):
    """Raised when a hook delivery's signature was accepted before (a replay)."""

    code = "delivery_replayed"
    title = "Delivery already accepted"

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id

    @property
    def extra(self) -> dict[str, Any]:
        return {"run_id": self.run_id}


class IdempotencyConflict(FlowrunError):
    """Raised when a key's run exists (FAIL) or is still queued/running (FAIL_ON_RUNNING)."""

    status_code = 409
    code = "idempotency_conflict"
    title = "Idempotency conflict"

    def __init__(self, message: str, *, run_id: str, run_status: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.run_status = run_status

    @property
    def extra(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run_status": self.run_status}


class IdempotencyKeyReused(FlowrunError):
    """Raised when a key is sent again with a different request body."""

    status_code = 422
    code = "idempotency_key_reused"
    title = "Idempotency key reused with a different request"

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id

    @property
    def extra(self) -> dict[str, Any]:
        return {"run_id": self.run_id}


class Unprocessable(FlowrunError):
    """Raised when a well-formed hook delivery gives no valid inputs (its mapping fails or
    yields no object, or the inputs do not fit the workflow)."""

    status_code = 422
    code = "unprocessable"
    title = "Unprocessable body"


class RequestTimeout(FlowrunError):
    """Raised when a request's body does not arrive within ``body_timeout_s``."""

    status_code = 408
    code = "request_timeout"
    title = "Request timeout"


class PayloadTooLarge(FlowrunError):
    """Raised when a request body exceeds ``max_body_bytes``."""

    status_code = 413
    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaType(FlowrunError):
    """Raised when a body is not sent as JSON."""

    status_code = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class TooManyRequests(FlowrunError):
    """Raised when a key is over one of its limits (open event streams, runs started
    per second)."""

    status_code = 429
    code = "too_many_requests"
    title = "Too many requests"


class QueueFull(TooManyRequests):
    """Raised when ``max_queued`` runs are already waiting."""

    code = "queue_full"
    title = "Too many queued runs"


class Unavailable(FlowrunError):
    """Raised when the store cannot accept writes or the server is shutting down."""

    status_code = 503
    code = "unavailable"
    title = "Service unavailable"


class NodeFailure(Exception):
    """Raised inside a run when a node fails; recorded on the node, never sent as HTTP."""

    code = "node_failed"

    def __init__(self, message: str, *, code: str | None = None,
                 process_data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.process_data = process_data or {}
        if code:
            self.code = code


class ExpressionError(NodeFailure):
    """Raised when an expression names something undefined or fails to evaluate."""

    code = "expression_error"


class OutputTooLarge(NodeFailure):
    """Raised when what a node would store (its outputs, the inputs its expressions
    made, the text it streams) is past the limit for one node, or would take its run
    past the run's limit: the node fails and nothing of it is stored. It is not
    retried: the same node makes the same value again."""

    code = "output_too_large"


class WaitForSignal(Exception):
    """Raised by a ``wait`` node whose signal has not come: the executor records the node
    as waiting and the run parks (no task, no slot) until the signal or its timeout.

    Control flow, not a failure: a node's own errors never look like this.
    """

    def __init__(self, signal: str, *, expires_at: float | None, token: str) -> None:
        super().__init__(f"waiting for signal {signal!r}")
        self.signal = signal
        self.expires_at = expires_at
        self.token = token  # the one-time secret of the signal URL for this wait
