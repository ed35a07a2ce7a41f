"""A readable, live progress view of a run's events, for the terminal.

One line per node as it starts and finishes (status and time), text chunks
inline as they arrive, and the outcome at the end. Used by ``flowrun run``
(in-process) and ``flowrun events`` (following a server's stream). The run's
outputs, as JSON, may go to a stream of their own: ``flowrun run`` shows its
progress on stderr and writes only the outputs to stdout, for ``| jq``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, TextIO

from flowrun.records import NodeRecord
from flowrun.runs.events import node_finished_payload, node_payload

_MARKS = {"succeeded": "✓", "failed": "✗", "stopped": "■"}


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ProgressPrinter:
    """Prints events as lines to ``out``, and the outputs of the finished run to
    ``result`` (default: ``out``); keeps text chunks on their own running line."""

    def __init__(self, out: TextIO, *, result: TextIO | None = None) -> None:
        self.out = out
        self.result = out if result is None else result
        self._in_text = False

    def _line(self, text: str) -> None:
        if self._in_text:
            self.out.write("\n")
            self._in_text = False
        print(text, file=self.out, flush=True)

    def show(self, name: str, data: dict[str, Any]) -> None:
        if name == "text_chunk":
            self.out.write(str(data.get("text", "")))
            self.out.flush()
            self._in_text = True
        elif name in {"workflow_started", "workflow_resumed"}:
            verb = "resumed" if name == "workflow_resumed" else "started"
            self._line(f"run {data.get('id')} of {data.get('workflow_id')} {verb}")
        elif name == "node_started":
            self._line(f"  ▶ {data['node_id']} ({data['node_type']})")
        elif name == "node_retry":
            self._line(f"  ↻ {data['node_id']} retry {data.get('retry_index')}: "
                       f"{data.get('error')}")
        elif name == "node_finished":
            status = data["status"]
            detail = _short(data.get("outputs")) if status == "succeeded" else data.get("error")
            self._line(f"  {_MARKS.get(status, '?')} {data['node_id']} {status} in "
                       f"{data.get('elapsed_time') or 0:.3f}s {detail or ''}".rstrip())
        elif name == "node_skipped":
            self._line(f"  - {data['node_id']} skipped")
        elif name == "workflow_finished":
            self._line(f"{data['status']} in {data.get('elapsed_time') or 0:.3f}s")
            if data.get("error"):
                self._line(f"error: {data['error']}")
            if data.get("outputs") is not None:
                print(json.dumps(data["outputs"], indent=2, ensure_ascii=False),
                      file=self.result, flush=True)
        elif name == "error":
            self._line(f"error: {data.get('message', data)}")


class PrintingObserver:
    """A run observer for in-process runs that shows progress with a ProgressPrinter."""

    def __init__(self, printer: ProgressPrinter) -> None:
        self.printer = printer
        self._ids: dict[str, str] = {}

    def _id(self, node: NodeRecord) -> str:
        return self._ids.setdefault(node.node_id, uuid.uuid4().hex)

    async def node_started(self, node: NodeRecord, predecessor: str | None) -> None:
        self.printer.show("node_started", node_payload(node, self._id(node), predecessor))

    async def node_retry(self, node: NodeRecord, error: dict[str, Any]) -> None:
        self.printer.show("node_retry", {"node_id": node.node_id, "retry_index": node.attempts,
                                         "error": error.get("message")})

    async def node_finished(self, node: NodeRecord) -> None:
        self.printer.show("node_finished", node_finished_payload(node, self._id(node), None))

    async def node_skipped(self, node: NodeRecord) -> None:
        self.printer.show("node_skipped", {"node_id": node.node_id})

    async def node_waiting(self, node: NodeRecord) -> None:
        self.printer.show("node_waiting", {"node_id": node.node_id, **node.process_data})

    async def text_chunk(self, node_id: str, text: str) -> None:
        self.printer.show("text_chunk", {"text": text})
