/* The workflows list, and one workflow: its versions, graph, inputs schema, a form
 * built from that schema to start a run, and its runs. */

import { api, ApiError, newKey } from "../api.js";
import { h, workflowLink } from "../dom.js";
import { draw } from "../graph.js";
import { runsTable } from "./runs.js";

export async function workflowsPage(view) {
  const { workflows } = await api("/workflows");
  if (view.gone) return;
  view.root.append(h("h1", {}, "Workflows"), h("table", { id: "workflows" },
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Latest version"),
      h("th", {}, "Description"), h("th", {}, "Inputs"))),
    h("tbody", {}, workflows.map((w) => h("tr", { dataset: { workflow: w.name } },
      h("td", {}, workflowLink(w.name)),
      h("td", {}, "v" + w.version), h("td", {}, w.description || ""),
      h("td.mono", {}, Object.keys(w.inputs || {}).join(", ")))))));
}

export async function workflowPage(view, name, params) {
  const q = encodeURIComponent(name);
  const version = params.get("version");
  const [wf, versions] = await Promise.all([
    api(`/workflows/${q}` + (version ? `?version=${encodeURIComponent(version)}` : "")),
    api(`/workflows/${q}/versions`)]);
  if (view.gone) return;
  const def = wf.definition;
  const graphBox = h("div.graph", { id: "graph" });
  const runsBox = h("div");
  view.root.append(
    h("h1", {}, name),
    h("div.row", {}, h("label", {}, "Version ", versionPicker(q, wf.version, versions.versions)),
      h("span.muted", {}, def.description || "")),
    h("h2", {}, "Graph"), graphBox,
    h("div.cols", {},
      h("div", {}, h("h2", {}, "Start a run"), runForm(name, wf.version, def.inputs || {})),
      h("div", {}, h("h2", {}, "Inputs schema"), inputsTable(def.inputs || {}))),
    h("h2", {}, "Runs"), runsBox);
  draw(graphBox, def.nodes || [], def.edges || [], null);
  runsTable(view, runsBox, new URLSearchParams({ workflow: name }), { fixedWorkflow: name });
}

function versionPicker(q, shown, versions) {
  return h("select", { id: "version", onchange: (ev) => {
    location.hash = `#/workflows/${q}?version=${ev.target.value}`; } },
  versions.map((v) => h("option", { value: v.version, selected: v.version === shown },
    `v${v.version} — ${new Date(v.created_at * 1000).toLocaleString()}`)));
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

// ---- the form that starts a run -------------------------------------------
// Each input's control, and read(): its value for the request, undefined to leave it
// out (the server applies the default), or an Error thrown for what cannot be sent.

function enumControl(id, key, spec) {
  const hasDefault = spec.default !== undefined;
  const control = h("select", { id, name: key },
    spec.required && !hasDefault ? null : h("option", { value: "" }, "(unset)"),
    spec.enum.map((v) => h("option", { value: JSON.stringify(v),
      selected: hasDefault && spec.default === v }, String(v))));
  return { control, read: () => control.value === "" ? undefined : JSON.parse(control.value) };
}

function booleanControl(id, key, spec) {
  const control = h("select", { id, name: key }, h("option", { value: "" }, "(unset)"),
    h("option", { value: "true", selected: spec.default === true }, "true"),
    h("option", { value: "false", selected: spec.default === false }, "false"));
  return { control, read: () => control.value === "" ? undefined : control.value === "true" };
}

function jsonControl(id, key, spec) {
  const control = h("textarea", { id, name: key,
    placeholder: spec.type === "array" ? "[ ]  (JSON)" : "{ }  (JSON)" });
  if (spec.default !== undefined) control.value = JSON.stringify(spec.default, null, 2);
  const read = () => {
    if (!control.value.trim()) return undefined;
    try { return JSON.parse(control.value); } catch (e) { throw new Error("not valid JSON"); }
  };
  return { control, read };
}

function textControl(id, key, spec) {
  const numeric = spec.type === "number" || spec.type === "integer";
  const control = h("input", { id, name: key, type: "text", inputmode: numeric ? "decimal" : null,
    placeholder: spec.type });
  if (spec.default !== undefined) control.value = String(spec.default);
  const read = () => {
    const v = control.value;
    if (v === "") return undefined;
    // A value that is not a number goes as typed: the server names what is wrong.
    if (numeric && v.trim() !== "" && !isNaN(Number(v))) return Number(v);
    return v;
  };
  return { control, read };
}

function inputControl(id, key, spec) {
  if (spec.enum) return enumControl(id, key, spec);
  if (spec.type === "boolean") return booleanControl(id, key, spec);
  if (spec.type === "object" || spec.type === "array" || spec.type === "file")
    return jsonControl(id, key, spec);
  return textControl(id, key, spec);
}

/** One labelled field: {read, error (element), wrapper}. */
function inputField(key, spec) {
  const id = "input-" + key;
  const { control, read } = inputControl(id, key, spec);
  const error = h("div.error", { "data-error-for": key });
  const wrapper = h("div.field", { dataset: { field: key } },
    h("label", { for: id }, key, spec.required ? " *" : "", h("div.muted", {}, spec.type)),
    control, error);
  return { read, error, wrapper };
}

function markField(f, message) {
  f.error.textContent = message;
  f.wrapper.classList.add("invalid");
}

/** The inputs the fields hold, or null when one cannot be read (marked on its field). */
function readInputs(fields) {
  const inputs = {};
  let bad = false;
  for (const [key, f] of fields) {
    f.error.textContent = "";
    f.wrapper.classList.remove("invalid");
    try {
      const v = f.read();
      if (v !== undefined) inputs[key] = v;
    } catch (e) {
      markField(f, e.message);
      bad = true;
    }
  }
  return bad ? null : inputs;
}

/** The server's errors, each next to its field (or under the form when it has none). */
function showProblem(err, fields, formError) {
  const errors = err.problem.errors || [];
  for (const e of errors) {
    const f = fields.get(String(e.field || "").replace(/^(body\.)?inputs\./, ""));
    if (f) markField(f, e.message);
    else formError.append(h("div", {}, (e.field ? e.field + ": " : "") + e.message));
  }
  if (!errors.length) formError.textContent = err.message;
}

function runForm(name, version, inputs) {
  const fields = new Map(); // input name → {read(), error element, wrapper}
  const formError = h("p.error", { id: "form-error" });
  const form = h("form.card", { id: "run-form", novalidate: true });
  for (const [key, spec] of Object.entries(inputs)) {
    const field = inputField(key, spec);
    fields.set(key, field);
    form.append(field.wrapper);
  }
  const submit = h("button.primary", { type: "submit" }, "Start run");
  form.append(h("div.actions", {}, submit), formError);

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    formError.textContent = "";
    const read = readInputs(fields);
    if (!read) return;
    submit.disabled = true;
    try {
      const run = await api(`/workflows/${encodeURIComponent(name)}/run`, { method: "POST",
        body: { inputs: read, version }, headers: { "Idempotency-Key": newKey() } });
      location.hash = "#/runs/" + encodeURIComponent(run.id);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      showProblem(err, fields, formError);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
