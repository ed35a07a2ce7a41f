/* flowrun's web UI: hash-routed pages over the native API. Data from the server is
 * only ever rendered as text (textContent / text nodes), never as markup. */
"use strict";

const API = document.querySelector('meta[name="flowrun-api"]').content;
const KEY = "flowrun.key";
const TERMINAL = new Set(["succeeded", "failed", "stopped", "timed_out"]);
const STATUSES = ["queued", "running", "paused", "waiting", "succeeded", "failed", "stopped",
  "timed_out"];
const main = document.getElementById("main");
let page = null; // {cleanups: []} of the page on screen

// ---- DOM ------------------------------------------------------------------
/** h("tag.class", {attr: value, onclick: fn}, child, ...): children are nodes or text. */
function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const e = document.createElement(tag);
  if (classes.length) e.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  return fill(e, ...children);
}
/** Replace e's children: nodes, text, or (nested) arrays of them; null and false are left out. */
function fill(e, ...children) {
  e.replaceChildren();
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const link = (hash, ...children) => h("a", { href: hash }, ...children);
const runLink = (id) => link("#/runs/" + encodeURIComponent(id), h("span.mono", {}, id));
const badge = (status) => h("span.badge." + String(status).replace(/[^a-z_]/g, ""),
  { "data-status": status }, status);
const json = (value) => h("pre", {}, JSON.stringify(value, null, 2));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The request that starts a run like ``run``: its inputs, version, priority and
 * correlation id, and its own graph when it was started with one. */
function sameRun(run) {
  const body = { inputs: run.inputs, version: run.version, priority: run.priority };
  if (run.correlation_id) body.correlation_id = run.correlation_id;
  if (run.graph) { body.nodes = run.graph.nodes; body.edges = run.graph.edges; }
  return body;
}

/** A random idempotency key. crypto.randomUUID exists only in secure contexts (https,
 * localhost): a server reached over plain http on a network has getRandomValues only. */
function newKey() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return isNaN(d) ? String(ts) : d.toLocaleString();
}
function duration(run) {
  let s = run.elapsed_s;
  if (s == null && run.started_at) s = (Date.now() - Date.parse(run.started_at)) / 1000;
  if (s == null) return "";
  return s < 1 ? Math.round(s * 1000) + " ms" : s < 120 ? s.toFixed(1) + " s"
    : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}

// ---- API ------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || "HTTP " + status);
    this.status = status;
    this.problem = problem || {};
  }
}

function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", "Bearer " + key);
  return headers;
}

async function api(path, { method = "GET", body, headers, signal } = {}) {
  const hs = authHeaders(headers);
  if (body !== undefined) hs.set("Content-Type", "application/json");
  const res = await fetch(API + path, { method, headers: hs, signal,
    body: body === undefined ? undefined : JSON.stringify(body) });
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : null;
  if (res.status === 401) {
    showSignin("The server refused the key; sign in again.");
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// ---- sign in --------------------------------------------------------------
const signin = document.getElementById("signin");
const signout = document.getElementById("signout");

function showSignin(message) {
  sessionStorage.removeItem(KEY);
  leave();
  main.replaceChildren();
  signin.hidden = false;
  signout.hidden = true;
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("signin-key").focus();
}

document.getElementById("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("signin-key");
  sessionStorage.setItem(KEY, input.value.trim());
  const res = await fetch(API + "/workflows", { headers: authHeaders() });
  if (!res.ok) {
    showSignin(res.status === 401 ? "That key was refused." : "Sign-in failed: HTTP " + res.status);
    return;
  }
  input.value = "";
  signin.hidden = true;
  signout.hidden = false;
  route();
});
signout.addEventListener("click", () => showSignin(""));

async function boot() {
  if (!sessionStorage.getItem(KEY)) {
    // With --no-auth the API answers without a key: open directly.
    const res = await fetch(API + "/workflows");
    if (res.status === 401) return showSignin("");
  } else {
    signout.hidden = false;
  }
  route();
}

// ---- routing --------------------------------------------------------------
function leave() {
  if (page) for (const f of page.cleanups) f();
  page = null;
}

function route() {
  if (!signin.hidden) return;
  leave();
  page = { cleanups: [] };
  const hash = location.hash.replace(/^#/, "") || "/workflows";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("[data-nav]"))
    a.classList.toggle("active", a.dataset.nav === parts[0]);
  main.replaceChildren();
  const current = page;
  let shown;
  if (parts[0] === "runs" && parts[1]) shown = runPage(parts[1], current);
  else if (parts[0] === "runs") shown = runsPage(params, current);
  else if (parts[0] === "workflows" && parts[1]) shown = workflowPage(parts[1], params, current);
  else shown = workflowsPage(current);
  Promise.resolve(shown).catch((err) => {
    if (page === current && !(err instanceof ApiError && err.status === 401))
      main.append(h("p.error", {}, "Could not load: " + err.message));
  });
}
window.addEventListener("hashchange", route);

/** Call fn every ms while the page is shown and the tab visible. */
function every(current, ms, fn) {
  let busy = false;
  const id = setInterval(async () => {
    if (busy || document.visibilityState !== "visible") return;
    busy = true;
    try { await fn(); } catch (e) { /* the next tick tries again */ } finally { busy = false; }
  }, ms);
  current.cleanups.push(() => clearInterval(id));
}

// ---- workflows ------------------------------------------------------------
async function workflowsPage(current) {
  const { workflows } = await api("/workflows");
  if (page !== current) return;
  main.append(h("h1", {}, "Workflows"), h("table", { id: "workflows" },
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Latest version"),
      h("th", {}, "Description"), h("th", {}, "Inputs"))),
    h("tbody", {}, workflows.map((w) => h("tr", { dataset: { workflow: w.name } },
      h("td", {}, link("#/workflows/" + encodeURIComponent(w.name), w.name)),
      h("td", {}, "v" + w.version), h("td", {}, w.description || ""),
      h("td.mono", {}, Object.keys(w.inputs || {}).join(", ")))))));
}

async function workflowPage(name, params, current) {
  const q = encodeURIComponent(name);
  const version = params.get("version");
  const [wf, versions] = await Promise.all([
    api(`/workflows/${q}` + (version ? `?version=${encodeURIComponent(version)}` : "")),
    api(`/workflows/${q}/versions`)]);
  if (page !== current) return;
  const def = wf.definition;
  const picker = h("select", { id: "version", onchange: (ev) => {
    location.hash = `#/workflows/${q}?version=${ev.target.value}`; } },
  versions.versions.map((v) => h("option", { value: v.version, selected: v.version === wf.version },
    `v${v.version} — ${new Date(v.created_at * 1000).toLocaleString()}`)));
  const graphBox = h("div.graph", { id: "graph" });
  const runsBox = h("div");
  main.append(
    h("h1", {}, name),
    h("div.row", {}, h("label", {}, "Version ", picker), h("span.muted", {}, def.description || "")),
    h("h2", {}, "Graph"), graphBox,
    h("div.cols", {},
      h("div", {}, h("h2", {}, "Start a run"), runForm(name, wf.version, def.inputs || {})),
      h("div", {}, h("h2", {}, "Inputs schema"), inputsTable(def.inputs || {}))),
    h("h2", {}, "Runs"), runsBox);
  FlowGraph.draw(graphBox, def.nodes || [], def.edges || [], null);
  runsTable(runsBox, current, new URLSearchParams({ workflow: name }), { fixedWorkflow: name });
}

function inputsTable(inputs) {
  const rows = Object.entries(inputs);
  if (!rows.length) return h("p.muted", {}, "No inputs.");
  return h("table", { id: "inputs-schema" },
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Type"), h("th", {}, "Required"),
      h("th", {}, "Default"), h("th", {}, "Constraints"))),
    h("tbody", {}, rows.map(([k, spec]) => {
      const { type, required, default: dflt, description, ...rest } = spec;
      return h("tr", {}, h("td.mono", {}, k, description ? h("div.muted", {}, description) : null),
        h("td", {}, type), h("td", {}, required ? "yes" : ""),
        h("td.mono", {}, dflt === undefined ? "" : JSON.stringify(dflt)),
        h("td.mono", {}, Object.keys(rest).length ? JSON.stringify(rest) : ""));
    })));
}

// ---- start a run from the inputs schema -----------------------------------
function runForm(name, version, inputs) {
  const fields = new Map(); // input name → {read(), error element, wrapper}
  const formError = h("p.error", { id: "form-error" });
  const form = h("form.card", { id: "run-form", novalidate: true });
  for (const [key, spec] of Object.entries(inputs)) {
    const id = "input-" + key;
    const error = h("div.error", { "data-error-for": key });
    let control, read;
    const hasDefault = spec.default !== undefined;
    if (spec.enum) {
      control = h("select", { id, name: key },
        spec.required && !hasDefault ? null : h("option", { value: "" }, "(unset)"),
        spec.enum.map((v) => h("option", { value: JSON.stringify(v),
          selected: hasDefault && spec.default === v }, String(v))));
      read = () => control.value === "" ? undefined : JSON.parse(control.value);
    } else if (spec.type === "boolean") {
      control = h("select", { id, name: key }, h("option", { value: "" }, "(unset)"),
        h("option", { value: "true", selected: spec.default === true }, "true"),
        h("option", { value: "false", selected: spec.default === false }, "false"));
      read = () => control.value === "" ? undefined : control.value === "true";
    } else if (spec.type === "object" || spec.type === "array" || spec.type === "file") {
      control = h("textarea", { id, name: key,
        placeholder: spec.type === "array" ? "[ ]  (JSON)" : "{ }  (JSON)" });
      if (hasDefault) control.value = JSON.stringify(spec.default, null, 2);
      read = () => {
        if (!control.value.trim()) return undefined;
        try { return JSON.parse(control.value); } catch (e) { throw new Error("not valid JSON"); }
      };
    } else {
      const numeric = spec.type === "number" || spec.type === "integer";
      control = h("input", { id, name: key, type: "text", inputmode: numeric ? "decimal" : null,
        placeholder: spec.type });
      if (hasDefault) control.value = String(spec.default);
      read = () => {
        const v = control.value;
        if (v === "") return undefined;
        // A value that is not a number goes as typed: the server names what is wrong.
        if (numeric && v.trim() !== "" && !isNaN(Number(v))) return Number(v);
        return v;
      };
    }
    const wrapper = h("div.field", { dataset: { field: key } },
      h("label", { for: id }, key, spec.required ? " *" : "", h("div.muted", {}, spec.type)),
      control, error);
    fields.set(key, { read, error, wrapper });
    form.append(wrapper);
  }
  const submit = h("button.primary", { type: "submit" }, "Start run");
  form.append(h("div.actions", {}, submit), formError);

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    formError.textContent = "";
    const body = { inputs: {}, version };
    let bad = false;
    for (const [key, f] of fields) {
      f.error.textContent = "";
      f.wrapper.classList.remove("invalid");
      try {
        const v = f.read();
        if (v !== undefined) body.inputs[key] = v;
      } catch (e) {
        f.error.textContent = e.message;
        f.wrapper.classList.add("invalid");
        bad = true;
      }
    }
    if (bad) return;
    submit.disabled = true;
    try {
      const run = await api(`/workflows/${encodeURIComponent(name)}/run`, { method: "POST", body,
        headers: { "Idempotency-Key": newKey() } });
      location.hash = "#/runs/" + encodeURIComponent(run.id);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      const errors = err.problem.errors || [];
      for (const e of errors) {
        const field = String(e.field || "").replace(/^(body\.)?inputs\./, "");
        const f = fields.get(field);
        if (f) {
          f.error.textContent = e.message;
          f.wrapper.classList.add("invalid");
        } else {
          formError.append(h("div", {}, (e.field ? e.field + ": " : "") + e.message));
        }
      }
      if (!errors.length) formError.textContent = err.message;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

// ---- runs table -----------------------------------------------------------
function runsPage(params, current) {
  main.append(h("h1", {}, "Runs"));
  const box = h("div");
  main.append(box);
  return runsTable(box, current, params, {});
}

async function runsTable(box, current, params, { fixedWorkflow }) {
  const filters = { workflow: fixedWorkflow || params.get("workflow") || "",
    status: params.get("status") || "", correlation_id: params.get("correlation_id") || "" };
  const cursors = [null]; // the cursor of each page seen; the last is the one on screen
  const status = h("select", { id: "filter-status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)));
  const workflow = h("select", { id: "filter-workflow", disabled: !!fixedWorkflow },
    h("option", { value: "" }, "all workflows"));
  const correlation = h("input", { id: "filter-correlation", type: "text",
    placeholder: "correlation id", value: filters.correlation_id });
  const apply = () => {
    filters.status = status.value;
    filters.workflow = fixedWorkflow || workflow.value;
    filters.correlation_id = correlation.value.trim();
    cursors.splice(0, cursors.length, null);
    if (!fixedWorkflow) {
      const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
      history.replaceState(null, "", "#/runs" + (q.toString() ? "?" + q : ""));
    }
    load();
  };
  status.addEventListener("change", apply);
  workflow.addEventListener("change", apply);
  correlation.addEventListener("change", apply);
  const body = h("tbody");
  const prev = h("button", { type: "button", id: "runs-prev", onclick: () => {
    cursors.pop(); load(); } }, "‹ Newer");
  const next = h("button", { type: "button", id: "runs-next", onclick: () => {
    cursors.push(next.dataset.cursor); load(); } }, "Older ›");
  const where = h("span.muted");
  box.append(h("div.filters", {}, status, workflow, correlation, h("span.live", {}, "live")),
    h("table", { id: "runs" }, h("thead", {}, h("tr", {}, ["Run", "Status", "Workflow", "Version",
      "Created", "Duration", "Correlation id"].map((t) => h("th", {}, t)))), body),
    h("div.pager", {}, prev, next, where));

  if (!fixedWorkflow) {
    api("/workflows").then(({ workflows }) => {
      for (const w of workflows) workflow.append(h("option", { value: w.name,
        selected: w.name === filters.workflow }, w.name));
    }).catch(() => {});
  }

  async function load() {
    const q = new URLSearchParams({ limit: "20" });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    const data = await api("/runs?" + q);
    if (page !== current) return;
    body.replaceChildren(...data.runs.map((r) => h("tr", { dataset: { runId: r.id, status: r.status } },
      h("td", {}, runLink(r.id)), h("td", {}, badge(r.status)),
      h("td", {}, link("#/workflows/" + encodeURIComponent(r.workflow), r.workflow)),
      h("td", {}, "v" + r.version), h("td", {}, when(r.created_at)), h("td", {}, duration(r)),
      h("td.mono", {}, r.correlation_id || ""))));
    if (!data.runs.length) body.append(h("tr", {}, h("td.muted", { colspan: 7 }, "No runs.")));
    next.disabled = !data.next_cursor;
    next.dataset.cursor = data.next_cursor || "";
    prev.disabled = cursors.length < 2;
    where.textContent = "page " + cursors.length;
  }
  await load();
  every(current, 2000, load);
}

// ---- one run --------------------------------------------------------------
async function runPage(id, current) {
  const q = encodeURIComponent(id);
  let run = await api(`/runs/${q}`);
  if (page !== current) return;
  // A run may carry its own graph (sent with its request); else its workflow version's.
  const def = run.graph || (await api(
    `/workflows/${encodeURIComponent(run.workflow)}?version=${run.version}`)).definition;
  if (page !== current) return;
  const stream = { controller: null, lastSeq: 0, texts: new Map() };
  let selected = null;

  const head = h("div.card", { id: "run-head" });
  const stop = h("button.danger", { type: "button", id: "stop" }, "Stop");
  const rerun = h("button", { type: "button", id: "rerun" }, "Re-run with the same inputs");
  const rerunFrom = h("button", { type: "button", id: "rerun-from", disabled: true },
    "Re-run from the selected node");
  const message = h("p.error", { id: "run-message" });
  const live = h("span.live", { id: "live" });
  // Shown while a wait node waits; built once, so a refresh keeps what is being typed.
  const signalName = h("input", { id: "signal-name", size: 16, "aria-label": "signal name" });
  const signalData = h("textarea", { id: "signal-data", rows: 3, cols: 40,
    "aria-label": "signal data (a JSON object)" }, "{}");
  const signalForm = h("form.card", { id: "signal-form", hidden: true },
    h("div", {}, "Waiting for a signal. Its data (a JSON object) becomes the wait node's outputs."),
    h("div.row", {}, signalName, signalData, h("button", { type: "submit", id: "send-signal" },
      "Send signal")));
  const graphBox = h("div.graph", { id: "graph" });
  const gantt = h("div.gantt.card", { id: "timeline" });
  const detail = h("div.card", { id: "node-detail" }, h("p.muted", {}, "Select a node."));
  main.append(h("h1", {}, "Run ", h("span.mono", {}, id)), head,
    h("div.actions", {}, stop, rerun, rerunFrom, live), message, signalForm,
    h("div.cols", {}, h("div", {}, graphBox, h("h2", {}, "Timeline"), gantt),
      h("div", {}, h("h2", {}, "Node"), detail)));
  const graph = FlowGraph.draw(graphBox, def.nodes || [], def.edges || [], (node) => {
    selected = node;
    render();
  });

  function render() {
    fill(head, h("div.row", {},
      h("span", {}, "Status ", badge(run.status)),
      h("span", {}, "Workflow ", link("#/workflows/" + encodeURIComponent(run.workflow), run.workflow),
        " v" + run.version),
      h("span", {}, "Created ", when(run.created_at)),
      h("span", {}, "Duration ", duration(run)),
      run.correlation_id ? h("span", {}, "Correlation id ", h("span.mono", {}, run.correlation_id)) : null,
      run.parent_run_id ? h("span", { id: "parent" }, "Parent run ", runLink(run.parent_run_id)) : null,
      run.rerun_of ? h("span", { id: "rerun-of" }, "Re-run of ", runLink(run.rerun_of)) : null),
    run.error ? h("p.error", {}, `${run.error.code}: ${run.error.message}`
      + (run.error.node_id ? ` (node ${run.error.node_id})` : "")) : null,
    h("details", {}, h("summary", {}, "Inputs and outputs"),
      h("div", {}, "inputs"), json(run.inputs), h("div", {}, "outputs"), json(run.outputs)));
    stop.disabled = TERMINAL.has(run.status);
    rerunFrom.disabled = !selected || !TERMINAL.has(run.status);
    const waits = run.nodes.filter((n) => n.status === "waiting");
    signalForm.hidden = !waits.length;
    if (waits.length && !signalName.value) signalName.value = waits[0].process_data.signal || "";
    const nodes = new Map(run.nodes.map((n) => [n.id, n]));
    for (const n of def.nodes || []) {
      const record = nodes.get(n.id) || {};
      graph.setStatus(n.id, record.status || "pending");
      graph.setReused(n.id, Boolean(record.process_data && record.process_data.reused_from));
    }
    graph.select(selected);
    renderGantt(run.nodes);
    renderDetail(selected ? nodes.get(selected) || { id: selected, status: "pending" } : null);
  }

  function renderGantt(nodes) {
    // Reused nodes ran in an earlier run: they are not part of this run's timeline.
    const started = nodes.filter((n) => n.started_at && !(n.process_data && n.process_data.reused_from));
    if (!started.length) return gantt.replaceChildren(h("p.muted", {}, "No node has started."));
    const t0 = Math.min(...started.map((n) => Date.parse(n.started_at)));
    const end = (n) => n.finished_at ? Date.parse(n.finished_at) : Date.now();
    const span = Math.max(1, Math.max(...started.map(end)) - t0);
    gantt.replaceChildren(...started.sort((a, b) => Date.parse(a.started_at) - Date.parse(b.started_at))
      .map((n) => {
        const bar = h("div.bar." + n.status, { title: `${n.id}: ${n.elapsed_s ?? "…"} s` });
        bar.style.left = ((Date.parse(n.started_at) - t0) / span * 100).toFixed(2) + "%";
        bar.style.width = ((end(n) - Date.parse(n.started_at)) / span * 100).toFixed(2) + "%";
        return h("div.bar-row", { dataset: { nodeId: n.id }, onclick: () => { selected = n.id; render(); } },
          h("span.label.mono", {}, n.id), h("div.track", {}, bar));
      }), h("div.muted", {}, "0 – " + (span / 1000).toFixed(3) + " s"));
  }

  function renderDetail(n) {
    if (!n) return detail.replaceChildren(h("p.muted", {}, "Select a node in the graph."));
    const child = n.process_data && n.process_data.child_run_id;
    const text = stream.texts.get(n.id);
    const reused = n.process_data && n.process_data.reused_from;
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

  // Refetch the run after events, at most every 250 ms, for the nodes' full records.
  let refreshing = null, again = false;
  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = (async () => {
      do {
        again = false;
        const fresh = await api(`/runs/${q}`);
        if (page !== current) return;
        run = fresh;
        render();
        await sleep(250);
      } while (again);
    })().finally(() => { refreshing = null; });
  }

  function onEvent(name, data) {
    const payload = data && data.data ? data.data : data || {};
    let node = (run.nodes || []).find((n) => n.id === payload.node_id);
    if (!node && payload.node_id && !payload.iteration_id &&
        (name === "node_started" || name === "node_finished")) {
      // A node the last fetch did not have yet: shown now, its full record comes with
      // the next refetch (else a finished run could show a node still pending).
      node = { id: payload.node_id, status: "pending" };
      run.nodes = [...(run.nodes || []), node];
    }
    if (name === "node_started" && node) node.status = "running";
    if (name === "node_finished" && node && payload.status) node.status = payload.status;
    if (name === "workflow_finished" && payload.status) run.status = payload.status;
    if (name === "text_chunk") {
      const from = (payload.from_variable_selector || [])[0];
      if (from) {
        stream.texts.set(from, (stream.texts.get(from) || "") + (payload.text || ""));
        if (!selected) selected = from;
      }
    }
    render();
    refresh();
  }

  function follow() {
    if (stream.controller) stream.controller.abort();
    stream.controller = new AbortController();
    readEvents(`/runs/${q}/events`, stream, onEvent, (s) => { live.textContent = s; },
      stream.controller.signal).then(() => refresh());
  }
  current.cleanups.push(() => stream.controller && stream.controller.abort());

  stop.addEventListener("click", async () => {
    message.textContent = "";
    stop.disabled = true;
    try { run = await api(`/runs/${q}/stop`, { method: "POST" }); render(); }
    catch (err) { message.textContent = err.message; stop.disabled = false; }
  });
  signalForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    message.textContent = "";
    let data;
    try { data = JSON.parse(signalData.value || "{}"); }
    catch (err) { message.textContent = "The signal's data is not JSON: " + err.message; return; }
    try {
      run = await api(`/runs/${q}/signal`, { method: "POST", body: { name: signalName.value, data } });
      render();
    } catch (err) { message.textContent = err.message; }
  });
  // One key for this page's re-run: a double click (or a retry after a lost answer)
  // finds the run the first click made instead of making another.
  const rerunKey = newKey();
  rerun.addEventListener("click", async () => {
    message.textContent = "";
    rerun.disabled = true;
    try {
      const fresh = await api(`/workflows/${encodeURIComponent(run.workflow)}/run`, { method: "POST",
        body: sameRun(run), headers: { "Idempotency-Key": rerunKey } });
      location.hash = "#/runs/" + encodeURIComponent(fresh.id);
    } catch (err) { message.textContent = err.message; }
    finally { rerun.disabled = false; }
  });
  rerunFrom.addEventListener("click", async () => {
    message.textContent = "";
    rerunFrom.disabled = true;  // (one request at a time: no second run from a double click)
    try {
      // A new run (rerun_of this one) that keeps the outputs of the nodes before it.
      const fresh = await api(`/runs/${q}/rerun`, { method: "POST", body: { from_node: selected } });
      location.hash = "#/runs/" + encodeURIComponent(fresh.id);
    } catch (err) { message.textContent = err.message; }
    finally { rerunFrom.disabled = !selected || !TERMINAL.has(run.status); }
  });

  render();
  follow();
  every(current, 1000, async () => { if (!TERMINAL.has(run.status)) render(); }); // durations
}

/** Read a run's SSE stream with fetch (EventSource cannot send the key). On a drop,
 *  reconnect with Last-Event-ID; resolve once the stream ends after workflow_finished. */
async function readEvents(path, state, onEvent, onState, signal) {
  let delay = 500;
  while (!signal.aborted) {
    let finished = false;
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (state.lastSeq) headers.set("Last-Event-ID", String(state.lastSeq));
      const res = await fetch(API + path, { headers, signal });
      if (res.status === 401) return showSignin("The server refused the key; sign in again.");
      if (!res.ok) throw new Error("HTTP " + res.status);
      onState("live");
      delay = 500;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "", name = "message", data = [], id = null;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const lines = buffer.split(/\r\n|\n|\r/);
        buffer = lines.pop(); // an unfinished line waits for the next chunk
        for (const line of lines) {
          if (line === "") { // end of one event
            if (data.length) {
              if (id !== null && /^\d+$/.test(id)) state.lastSeq = Number(id);
              let parsed = null;
              try { parsed = JSON.parse(data.join("\n")); } catch (e) { parsed = null; }
              onEvent(name, parsed);
              if (name === "workflow_finished") finished = true;
            }
            name = "message"; data = []; id = null;
          } else if (!line.startsWith(":")) {
            const at = line.indexOf(":");
            const field = at < 0 ? line : line.slice(0, at);
            const val = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
            if (field === "event") name = val;
            else if (field === "data") data.push(val);
            else if (field === "id") id = val;
          }
        }
      }
      if (finished) { onState("finished"); return; }
    } catch (err) {
      if (signal.aborted) return;
    }
    onState("reconnecting…");
    await sleep(delay);
    delay = Math.min(delay * 2, 5000);
  }
}

boot();
