"""A run's node executions and events, written in batches and replayed."""

from __future__ import annotations

import json
from typing import Any

from flowrun.records import (
    Event,
    NodeRecord,
    NodeStatus,
)
from flowrun.store.backend import (
    Query,
)
from flowrun.store.base import (
    EVENT_ROWS,
    NODE_ROWS,
    NODES_OF_RUN,
    STORED_WITH,
    NodeRow,
    StoreBase,
    event_row,
    load_json,
    node_from_row,
    referring_data,
)
from flowrun.store.writer import RowTable, WriteResult


class ProgressQueries(StoreBase):
    """A run's node executions and events, written in batches and replayed
    (the runner's and event stream's queries)."""

    def record(self, *, node: NodeRecord | None = None,
               event: Event | None = None) -> WriteResult[None]:
        """Durably save a node execution and/or an event, together.

        An event written with its node's row refers to the row for large inputs and
        outputs rather than holding them again (see ``INLINE_BYTES``).
        """
        rows: list[tuple[RowTable, tuple[Any, ...]]] = []
        data: str | None = None
        if node is not None:
            node_row = NodeRow(node)
            rows.append((NODE_ROWS, node_row.row))
            if event is not None and node.started_at is not None:
                data = referring_data(event, {"inputs": node_row.inputs,
                                               "outputs": node_row.outputs},
                                       {"started_at": node.started_at})
        if event is not None:
            rows.append((EVENT_ROWS, event_row(event, data)))
        return self._writer.submit(None, durable=True, rows=tuple(rows))

    async def node_records(self, run_id: str) -> list[NodeRecord]:
        rows = await self._fetchall(NODES_OF_RUN, (run_id,))
        return [node_from_row(r) for r in rows]

    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        """A page of a run's event log after sequence number ``after``, each event as it
        was sent live (values stored once, in their row, joined back in)."""
        rows = await self._fetchall("SELECT seq, name, data, created_at FROM events "
                                    "WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                    (run_id, after, limit))
        events = [Event(run_id, r["seq"], r["name"], json.loads(r["data"]), r["created_at"])
                  for r in rows]
        referring = [e for e in events if STORED_WITH in e.data]
        if referring:
            await self._join_stored(run_id, referring)
        return events

    async def _join_stored(self, run_id: str, events: list[Event]) -> None:
        """Put back the values these events left in their node's row (or the run's),
        in one more read. A row that no longer holds that execution (the node ran again
        in a retry or after a restart) leaves the value null, flagged ``<field>_truncated``
        as Dify flags values it cuts short."""
        refs = [(event, event.data.pop(STORED_WITH)) for event in events]
        node_ids = sorted({str(e.data.get("node_id")) for e, ref in refs if "started_at" in ref})
        the_run = any("started_at" not in ref for _, ref in refs)  # a workflow_finished
        queries: list[Query] = []
        if node_ids:
            queries.append((f"SELECT node_id, started_at, inputs, outputs FROM node_executions "
                            f"WHERE run_id = ? AND node_id IN ({', '.join('?' * len(node_ids))})",
                            (run_id, *node_ids)))
        if the_run:
            queries.append(("SELECT outputs, finished_at FROM runs WHERE id = ?", (run_id,)))
        found = iter(await self._fetch_together(queries))
        by_node = {r["node_id"]: r for r in next(found)} if node_ids else {}
        runs = next(found) if the_run else []
        for event, ref in refs:
            if "started_at" in ref:  # a node's execution
                row, mark = by_node.get(event.data.get("node_id")), "started_at"
            else:  # the run's end
                row, mark = (runs[0] if runs else None), "finished_at"
            for name in ref["fields"]:
                if row is not None and row[mark] == ref[mark]:
                    event.data[name] = load_json(row[name])
                else:
                    event.data[f"{name}_truncated"] = True

    async def last_event_seq(self, run_id: str) -> int:
        row = await self._fetchone("SELECT MAX(seq) AS s FROM events WHERE run_id = ?",
                                   (run_id,))
        return int(row["s"]) if row is not None and row["s"] is not None else 0

    async def run_progress(self, run_id: str) -> tuple[int, int]:
        """(the run's last event number, the bytes of inputs and outputs its succeeded
        nodes hold) in one read: where a resumed or retried run's numbering and
        storage count go on from (it keeps those nodes)."""
        size = "octet_length({})" if self.postgres else "LENGTH(CAST({} AS BLOB))"
        held = " + ".join(f"COALESCE({size.format(c)}, 0)" for c in ("inputs", "outputs"))
        row = await self._fetchone(
            f"SELECT (SELECT MAX(seq) FROM events WHERE run_id = ?) AS seq, "
            f"(SELECT SUM({held}) FROM node_executions WHERE run_id = ? AND status = ?) "
            f"AS held", (run_id, run_id, NodeStatus.SUCCEEDED.value))
        if row is None:
            return 0, 0
        return int(row["seq"] or 0), int(row["held"] or 0)
