/* One run: its head (status, links, error, inputs and outputs), its actions (stop,
 * re-run, re-run from a node, signal a waiting node), its graph coloured by node status,
 * a timeline and the selected node's detail, kept live by the run's event stream.
 * The page's state is one object, ``page``: {view, q, run, def, selected, texts, ui,
 * graph, refresh}; each function below reads or changes it and render() shows it. */

import { api, newKey, sameRun, TERMINAL } from "../api.js";
import { badge, duration, fill, h, json, runLink, when, workflowLink } from "../dom.js";
import { follow, sleep } from "../follow.js";
import { draw } from "../graph.js";

export async function runPage(view, id) {
  const q = encodeURIComponent(id);
  const run = await api(`/runs/${q}`);
  if (view.gone) return;
  const def = await definitionOf(run);
  if (view.gone) return;
  const page = { view, q, run, def, selected: null, texts: new Map() };
  page.ui = layout(view.root, id);
  page.graph = draw(page.ui.graphBox, def.nodes || [], def.edges || [],
    (nodeId) => select(page, nodeId));
  page.refresh = refresher(page);
  wireActions(page);
  render(page);
  followEvents(page);
  view.every(1000, async () => { if (!TERMINAL.has(page.run.status)) render(page); }); // durations
}

/** A run may carry its own graph (sent with its request); else its workflow version's. */
async function definitionOf(run) {
  if (run.graph) return run.graph;
  const wf = await api(`/workflows/${encodeURIComponent(run.workflow)}?version=${run.version}`);
  return wf.definition;
}

/** The page's elements, built once (a refresh keeps what is being typed in them). */
function layout(root, id) {
  const ui = {
    head: h("div.card", { id: "run-head" }),
    stop: h("button.danger", { type: "button", id: "stop" }, "Stop"),
    rerun: h("button", { type: "button", id: "rerun" }, "Re-run with the same inputs"),
    rerunFrom: h("button", { type: "button", id: "rerun-from", disabled: true },
      "Re-run from the selected node"),
    message: h("p.error", { id: "run-message" }),
    live: h("span.live", { id: "live" }),
    signalName: h("input", { id: "signal-name", size: 16, "aria-label": "signal name" }),
    signalData: h("textarea", { id: "signal-data", rows: 3, cols: 40,
      "aria-label": "signal data (a JSON object)" }, "{}"),
    graphBox: h("div.graph", { id: "graph" }),
    gantt: h("div.gantt.card", { id: "timeline" }),
    detail: h("div.card", { id: "node-detail" }, h("p.muted", {}, "Select a node.")),
  };
  // Shown while a wait node waits.
  ui.signalForm = h("form.card", { id: "signal-form", hidden: true },
    h("div", {}, "Waiting for a signal. Its data (a JSON object) becomes the wait node's outputs."),
    h("div.row", {}, ui.signalName, ui.signalData, h("button", { type: "submit", id: "send-signal" },
      "Send signal")));
  root.append(h("h1", {}, "Run ", h("span.mono", {}, id)), ui.head,
    h("div.actions", {}, ui.stop, ui.rerun, ui.rerunFrom, ui.live), ui.message, ui.signalForm,
    h("div.cols", {}, h("div", {}, ui.graphBox, h("h2", {}, "Timeline"), ui.gantt),
      h("div", {}, h("h2", {}, "Node"), ui.detail)));
  return ui;
}

function select(page, nodeId) {
  page.selected = nodeId;
  render(page);
}

// ---- showing the run --------------------------------------------------------
const reusedFrom = (n) => n.process_data && n.process_data.reused_from;

function render(page) {
  const { run, ui } = page;
  renderHead(ui.head, run);
  renderActions(page);
  const nodes = new Map(run.nodes.map((n) => [n.id, n]));
  renderGraph(page, nodes);
  renderGantt(ui.gantt, run.nodes, (nodeId) => select(page, nodeId));
  const shown = page.selected ? nodes.get(page.selected) || { id: page.selected, status: "pending" }
    : null;
  renderDetail(ui.detail, shown, page.texts);
}

function renderHead(head, run) {
  fill(head, h("div.row", {},
    h("span", {}, "Status ", badge(run.status)),
    h("span", {}, "Workflow ", workflowLink(run.workflow), " v" + run.version),
    h("span", {}, "Created ", when(run.created_at)),
    h("span", {}, "Duration ", duration(run)),
    run.correlation_id ? h("span", {}, "Correlation id ", h("span.mono", {}, run.correlation_id)) : null,
    run.parent_run_id ? h("span", { id: "parent" }, "Parent run ", runLink(run.parent_run_id)) : null,
    run.rerun_of ? h("span", { id: "rerun-of" }, "Re-run of ", runLink(run.rerun_of)) : null),
  run.error ? h("p.error", {}, `${run.error.code}: ${run.error.message}`
    + (run.error.node_id ? ` (node ${run.error.node_id})` : "")) : null,
  h("details", {}, h("summary", {}, "Inputs and outputs"),
    h("div", {}, "inputs"), json(run.inputs), h("div", {}, "outputs"), json(run.outputs)));
}

function renderActions(page) {
  const { run, ui } = page;
  ui.stop.disabled = TERMINAL.has(run.status);
  ui.rerunFrom.disabled = !page.selected || !TERMINAL.has(run.status);
  const waits = run.nodes.filter((n) => n.status === "waiting");
  ui.signalForm.hidden = !waits.length;
  if (waits.length && !ui.signalName.value) ui.signalName.value = waits[0].process_data.signal || "";
}

function renderGraph(page, nodes) {
  for (const n of page.def.nodes || []) {
    const record = nodes.get(n.id) || {};
    page.graph.setStatus(n.id, record.status || "pending");
    page.graph.setReused(n.id, Boolean(reusedFrom(record)));
  }
  page.graph.select(page.selected);
}

function renderGantt(gantt, nodes, onPick) {
  // Reused nodes ran in an earlier run: they are not part of this run's timeline.
  const started = nodes.filter((n) => n.started_at && !reusedFrom(n));
  if (!started.length) return gantt.replaceChildren(h("p.muted", {}, "No node has started."));
  const t0 = Math.min(...started.map((n) => Date.parse(n.started_at)));
  const end = (n) => n.finished_at ? Date.parse(n.finished_at) : Date.now();
  const span = Math.max(1, Math.max(...started.map(end)) - t0);
  const row = (n) => {
    const bar = h("div.bar." + n.status, { title: `${n.id}: ${n.elapsed_s ?? "…"} s` });
    bar.style.left = ((Date.parse(n.started_at) - t0) / span * 100).toFixed(2) + "%";
    bar.style.width = ((end(n) - Date.parse(n.started_at)) / span * 100).toFixed(2) + "%";
    return h("div.bar-row", { dataset: { nodeId: n.id }, onclick: () => onPick(n.id) },
      h("span.label.mono", {}, n.id), h("div.track", {}, bar));
  };
  gantt.replaceChildren(
    ...started.sort((a, b) => Date.parse(a.started_at) - Date.parse(b.started_at)).map(row),
    h("div.muted", {}, "0 – " + (span / 1000).toFixed(3) + " s"));
}

function renderDetail(detail, n, texts) {
  if (!n) return detail.replaceChildren(h("p.muted", {}, "Select a node in the graph."));
  const child = n.process_data && n.process_data.child_run_id;
  const text = texts.get(n.id);
  const reused = reusedFrom(n);
  fill(detail, h("div.row", {}, h("strong.mono", {}, n.id), badge(n.status),
    reused ? h("span.badge.reused", { id: "reused" }, "reused") : null,
    n.type ? h("span.muted", {}, n.type) : null,
    n.attempts > 1 ? h("span.muted", {}, n.attempts + " attempts") : null,
    n.elapsed_s != null ? h("span.muted", {}, n.elapsed_s + " s") : null),
  child ? h("p", { id: "child-run" }, "Child run ", runLink(child)) : null,
  reused ? h("p", {}, "Not run again: its outputs come from run ", runLink(reused)) : null,
  text ? [h("div", {}, "streamed text"), h("pre.stream", { id: "stream-text" }, text)] : null,
  n.error ? [h("div", {}, "error"), json(n.error)] : null,
  h("div", {}, "inputs"), json(n.inputs ?? null),
  h("div", {}, "outputs"), json(n.outputs ?? null),
  n.process_data ? [h("div", {}, "process_data"), json(n.process_data)] : null);
}

// ---- keeping it live ----------------------------------------------------------
/** refresh(): refetch the run for the nodes' full records, at most every 250 ms; a call
 *  while one is under way asks for one more after it. */
function refresher(page) {
  let refreshing = null;
  let again = false;
  return function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = (async () => {
      do {
        again = false;
        const fresh = await api(`/runs/${page.q}`);
        if (page.view.gone) return;
        page.run = fresh;
        render(page);
        await sleep(250);
      } while (again);
    })().catch(() => { /* the server is away: the next event or the stream's end refetches */ })
      .finally(() => { refreshing = null; });
  };
}

function followEvents(page) {
  const controller = new AbortController();
  page.view.onLeave(() => controller.abort());
  follow(`/runs/${page.q}/events`, {
    signal: controller.signal,
    onEvent: (name, data) => onEvent(page, name, data),
    onState: (state) => { page.ui.live.textContent = state; },
  }).then(() => { if (!page.view.gone) page.refresh(); });
}

/** The node an event is about. One the last fetch did not have yet is added as pending
 *  and shown now; its full record comes with the next refetch (else a finished run
 *  could show a node still pending). */
function eventNode(run, name, payload) {
  const node = (run.nodes || []).find((n) => n.id === payload.node_id);
  if (node || !payload.node_id || payload.iteration_id) return node;
  if (name !== "node_started" && name !== "node_finished") return node;
  const added = { id: payload.node_id, status: "pending" };
  run.nodes = [...(run.nodes || []), added];
  return added;
}

function addText(page, payload) {
  const from = (payload.from_variable_selector || [])[0];
  if (!from) return;
  page.texts.set(from, (page.texts.get(from) || "") + (payload.text || ""));
  if (!page.selected) page.selected = from;
}

function onEvent(page, name, data) {
  const { run } = page;
  const payload = data && data.data ? data.data : data || {};
  const node = eventNode(run, name, payload);
  if (name === "node_started" && node) node.status = "running";
  if (name === "node_finished" && node && payload.status) node.status = payload.status;
  if (name === "workflow_finished" && payload.status) run.status = payload.status;
  if (name === "text_chunk") addText(page, payload);
  render(page);
  page.refresh();
}

// ---- actions ------------------------------------------------------------------
function wireActions(page) {
  const { ui } = page;
  // One key for this page's re-run: a double click (or a retry after a lost answer)
  // finds the run the first click made instead of making another.
  const rerunKey = newKey();
  ui.stop.addEventListener("click", () => stopRun(page));
  ui.signalForm.addEventListener("submit", (ev) => { ev.preventDefault(); sendSignal(page); });
  ui.rerun.addEventListener("click", () => rerun(page, rerunKey));
  ui.rerunFrom.addEventListener("click", () => rerunFrom(page));
}

const openRun = (run) => { location.hash = "#/runs/" + encodeURIComponent(run.id); };

async function stopRun(page) {
  const { ui } = page;
  ui.message.textContent = "";
  ui.stop.disabled = true;
  try { page.run = await api(`/runs/${page.q}/stop`, { method: "POST" }); render(page); }
  catch (err) { ui.message.textContent = err.message; ui.stop.disabled = false; }
}

async function sendSignal(page) {
  const { ui } = page;
  ui.message.textContent = "";
  let data;
  try { data = JSON.parse(ui.signalData.value || "{}"); }
  catch (err) { ui.message.textContent = "The signal's data is not JSON: " + err.message; return; }
  try {
    page.run = await api(`/runs/${page.q}/signal`, { method: "POST",
      body: { name: ui.signalName.value, data } });
    render(page);
  } catch (err) { ui.message.textContent = err.message; }
}

async function rerun(page, key) {
  const { ui } = page;
  ui.message.textContent = "";
  ui.rerun.disabled = true;
  try {
    openRun(await api(`/workflows/${encodeURIComponent(page.run.workflow)}/run`, { method: "POST",
      body: sameRun(page.run), headers: { "Idempotency-Key": key } }));
  } catch (err) { ui.message.textContent = err.message; }
  finally { ui.rerun.disabled = false; }
}

/** A new run (rerun_of this one) that keeps the outputs of the nodes before the one
 *  selected. One request at a time: a double click makes no second run. */
async function rerunFrom(page) {
  const { ui } = page;
  ui.message.textContent = "";
  ui.rerunFrom.disabled = true;
  try {
    openRun(await api(`/runs/${page.q}/rerun`, { method: "POST",
      body: { from_node: page.selected } }));
  } catch (err) { ui.message.textContent = err.message; }
  finally { ui.rerunFrom.disabled = !page.selected || !TERMINAL.has(page.run.status); }
}
