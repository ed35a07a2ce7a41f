/* The runs table: filters (status, workflow, correlation id) kept in the hash, cursor
 * paging, and a poll every 2 s so new runs and status changes show up by themselves.
 * The runs page is the table alone; a workflow's page shows it for its workflow. */

import { api, STATUSES } from "../api.js";
import { badge, duration, h, runLink, when, workflowLink } from "../dom.js";

const COLUMNS = ["Run", "Status", "Workflow", "Version", "Created", "Duration", "Correlation id"];

export function runsPage(view, params) {
  view.root.append(h("h1", {}, "Runs"));
  const box = h("div");
  view.root.append(box);
  return runsTable(view, box, params, {});
}

function filterControls(filters, fixedWorkflow) {
  const status = h("select", { id: "filter-status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)));
  const workflow = h("select", { id: "filter-workflow", disabled: !!fixedWorkflow },
    h("option", { value: "" }, "all workflows"));
  const correlation = h("input", { id: "filter-correlation", type: "text",
    placeholder: "correlation id", value: filters.correlation_id });
  return { status, workflow, correlation };
}

/** Fill the workflow filter with every workflow's name (a failure leaves it at "all"). */
function listWorkflows(select, chosen) {
  api("/workflows").then(({ workflows }) => {
    for (const w of workflows) select.append(h("option", { value: w.name,
      selected: w.name === chosen }, w.name));
  }).catch(() => {});
}

function runRow(r) {
  return h("tr", { dataset: { runId: r.id, status: r.status } },
    h("td", {}, runLink(r.id)), h("td", {}, badge(r.status)),
    h("td", {}, workflowLink(r.workflow)),
    h("td", {}, "v" + r.version), h("td", {}, when(r.created_at)), h("td", {}, duration(r)),
    h("td.mono", {}, r.correlation_id || ""));
}

export async function runsTable(view, box, params, { fixedWorkflow }) {
  const filters = { workflow: fixedWorkflow || params.get("workflow") || "",
    status: params.get("status") || "", correlation_id: params.get("correlation_id") || "" };
  const cursors = [null]; // the cursor of each page seen; the last is the one on screen
  const controls = filterControls(filters, fixedWorkflow);
  const body = h("tbody");
  const prev = h("button", { type: "button", id: "runs-prev", onclick: () => {
    cursors.pop(); load(); } }, "‹ Newer");
  const next = h("button", { type: "button", id: "runs-next", onclick: () => {
    cursors.push(next.dataset.cursor); load(); } }, "Older ›");
  const where = h("span.muted");
  box.append(h("div.filters", {}, controls.status, controls.workflow, controls.correlation,
    h("span.live", {}, "live")),
  h("table", { id: "runs" }, h("thead", {}, h("tr", {}, COLUMNS.map((t) => h("th", {}, t)))), body),
  h("div.pager", {}, prev, next, where));

  const apply = () => {
    filters.status = controls.status.value;
    filters.workflow = fixedWorkflow || controls.workflow.value;
    filters.correlation_id = controls.correlation.value.trim();
    cursors.splice(0, cursors.length, null);
    if (!fixedWorkflow) {
      const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
      history.replaceState(null, "", "#/runs" + (q.toString() ? "?" + q : ""));
    }
    load();
  };
  for (const control of Object.values(controls)) control.addEventListener("change", apply);
  if (!fixedWorkflow) listWorkflows(controls.workflow, filters.workflow);

  async function load() {
    const q = new URLSearchParams({ limit: "20" });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    const data = await api("/runs?" + q);
    if (view.gone) return;
    body.replaceChildren(...data.runs.map(runRow));
    if (!data.runs.length) body.append(h("tr", {}, h("td.muted", { colspan: 7 }, "No runs.")));
    next.disabled = !data.next_cursor;
    next.dataset.cursor = data.next_cursor || "";
    prev.disabled = cursors.length < 2;
    where.textContent = "page " + cursors.length;
  }
  await load();
  view.every(2000, load);
}
