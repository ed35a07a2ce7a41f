/* Element helpers and display formats. Whatever the server sends is put on the page as
 * text (text nodes, attributes set one by one), never parsed as markup: a node's
 * outputs holding "<img onerror=...>" show as those characters. */

/** h("tag.class", {attr: value, onclick: fn}, child, ...): children are nodes or text. */
export function h(spec, attrs, ...children) {
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
export function fill(e, ...children) {
  e.replaceChildren();
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export const link = (hash, ...children) => h("a", { href: hash }, ...children);
export const runLink = (id) => link("#/runs/" + encodeURIComponent(id), h("span.mono", {}, id));
export const workflowLink = (name) => link("#/workflows/" + encodeURIComponent(name), name);
export const badge = (status) => h("span.badge." + String(status).replace(/[^a-z_]/g, ""),
  { "data-status": status }, status);
export const json = (value) => h("pre", {}, JSON.stringify(value, null, 2));

/** A timestamp in the reader's locale; what does not parse is shown as it came. */
export function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return isNaN(d) ? String(ts) : d.toLocaleString();
}

/** How long a run took, or has taken so far while it runs. */
export function duration(run) {
  let s = run.elapsed_s;
  if (s == null && run.started_at) s = (Date.now() - Date.parse(run.started_at)) / 1000;
  if (s == null) return "";
  return s < 1 ? Math.round(s * 1000) + " ms" : s < 120 ? s.toFixed(1) + " s"
    : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}
