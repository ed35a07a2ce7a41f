/* Following a run's event stream. fetch, not EventSource (which cannot send the key),
 * read through the SSE parser; after a drop it reconnects with Last-Event-ID, so each
 * event comes once, until the stream ends after workflow_finished. */

import { API, authHeaders, refused } from "./api.js";
import { SSEParser } from "./sse.js";

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const FIRST_DELAY = 500; // ms before the first reconnect, doubled up to MAX_DELAY
const MAX_DELAY = 5000;

/** Follow ``path``'s events: ``onEvent(name, data)`` for each (data: its parsed JSON, or
 * null), ``onState("live" | "reconnecting…" | "finished")``. Resolves once the run has
 * finished, ``signal`` aborts, or the key is refused. */
export async function follow(path, { onEvent, onState, signal }) {
  const position = { lastSeq: 0, retry: null }; // kept across connections
  let delay = null; // null: the next wait is the first (the server's retry:, if it sent one)
  while (!signal.aborted) {
    try {
      const res = await connect(path, position.lastSeq, signal);
      if (res.status === 401) return refused();
      if (!res.ok) throw new Error("HTTP " + res.status);
      onState("live");
      delay = null;
      if (await read(res.body, position, onEvent)) { onState("finished"); return; }
    } catch (err) {
      if (signal.aborted) return;
    }
    onState("reconnecting…");
    const wait = delay ?? position.retry ?? FIRST_DELAY;
    await sleep(wait);
    delay = Math.min(wait * 2, MAX_DELAY);
  }
}

function connect(path, lastSeq, signal) {
  const headers = authHeaders({ Accept: "text/event-stream" });
  if (lastSeq) headers.set("Last-Event-ID", String(lastSeq));
  return fetch(API + path, { headers, signal });
}

/** Read one connection to its end; true if it carried workflow_finished. */
async function read(body, position, onEvent) {
  const parser = new SSEParser(); // each connection is a new stream to decode
  const reader = body.getReader();
  let finished = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return finished;
    for (const event of parser.feed(value)) {
      if (/^\d+$/.test(event.id)) position.lastSeq = Number(event.id);
      onEvent(event.event, parseJson(event.data));
      if (event.event === "workflow_finished") finished = true;
    }
    if (parser.retry !== null) position.retry = parser.retry;
  }
}

function parseJson(text) {
  try { return JSON.parse(text); } catch (err) { return null; }
}
