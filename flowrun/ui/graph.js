/* Drawing a workflow graph as SVG, laid out by dagre (vendored: the bundle sets
 * window.dagre). Every label is a text node. */

import "./vendor/dagre.min.js";

const SVG = "http://www.w3.org/2000/svg";
const STATUSES = ["pending", "running", "waiting", "succeeded", "failed", "skipped", "stopped"];

function el(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function text(value, attrs, parent) {
  const t = el("text", attrs, parent);
  t.textContent = value;
  return t;
}

/** The dagre graph of nodes and edges, laid out left to right. */
function layout(nodes, edges) {
  const g = new window.dagre.graphlib.Graph({ multigraph: true });
  g.setGraph({ rankdir: "LR", nodesep: 22, ranksep: 56, edgesep: 12, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of nodes) {
    const chars = Math.max(String(n.id).length, String(n.type || "").length + 2);
    g.setNode(n.id, { width: Math.max(96, chars * 7.4 + 24), height: 42 });
  }
  edges.forEach((e, i) => {
    const label = e.branch != null ? String(e.branch) : null;
    g.setEdge(e.source, e.target,
      label ? { label, width: label.length * 6.6 + 12, height: 18, labelpos: "c" } : {},
      "e" + i);
  });
  window.dagre.layout(g);
  return g;
}

function drawCanvas(container, g) {
  const size = g.graph();
  const svg = el("svg", { width: size.width, height: size.height,
    viewBox: `0 0 ${size.width} ${size.height}`, role: "img" }, container);
  const defs = el("defs", {}, svg);
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
  el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }, marker);
  return svg;
}

function drawEdges(svg, g) {
  const layer = el("g", { class: "edges" }, svg);
  for (const e of g.edges()) {
    const data = g.edge(e);
    const d = data.points.map((p, i) => (i ? "L" : "M") + p.x.toFixed(1) + " " + p.y.toFixed(1))
      .join(" ");
    const group = el("g", { class: "edge", "data-source": e.v, "data-target": e.w }, layer);
    el("path", { d, "marker-end": "url(#arrow)" }, group);
    if (data.label) {
      const lg = el("g", { class: "edge-label" }, group);
      el("rect", { x: data.x - data.width / 2, y: data.y - data.height / 2,
        width: data.width, height: data.height, rx: 4 }, lg);
      text(data.label, { x: data.x, y: data.y + 4, "text-anchor": "middle" }, lg);
    }
  }
}

/** One group per node, by id; a click (or Enter) on one calls onSelect(id). */
function drawNodes(svg, g, nodes, onSelect) {
  const layer = el("g", { class: "nodes" }, svg);
  const byId = new Map();
  for (const n of nodes) {
    const box = g.node(n.id);
    const group = el("g", { class: "node pending", transform:
      `translate(${box.x - box.width / 2},${box.y - box.height / 2})`, tabindex: 0 }, layer);
    group.dataset.nodeId = n.id;
    el("rect", { width: box.width, height: box.height }, group);
    text(n.id, { x: 10, y: 18 }, group);
    text(n.type || "", { x: 10, y: 32, class: "type" }, group);
    const tip = el("title", {}, group);
    tip.textContent = n.title ? `${n.title} (${n.id})` : n.id;
    byId.set(n.id, group);
    if (onSelect) {
      group.addEventListener("click", () => onSelect(n.id));
      group.addEventListener("keydown", (ev) => { if (ev.key === "Enter") onSelect(n.id); });
    }
  }
  return byId;
}

/** Draw nodes [{id, type, title?}] and edges [{source, target, branch?}] into container.
 *  Returns {svg, setStatus(id, status), setReused(id, reused), select(id)}. */
export function draw(container, nodes, edges, onSelect) {
  container.replaceChildren();
  const g = layout(nodes, edges);
  const svg = drawCanvas(container, g);
  drawEdges(svg, g);
  const byId = drawNodes(svg, g, nodes, onSelect);
  return {
    svg,
    setStatus(id, status) {
      const group = byId.get(id);
      if (!group) return;
      group.classList.remove(...STATUSES);
      group.classList.add(STATUSES.includes(status) ? status : "pending");
      group.dataset.status = status;
    },
    setReused(id, reused) {
      const group = byId.get(id);
      if (group) group.classList.toggle("reused", reused);
    },
    select(id) {
      for (const [key, group] of byId) group.classList.toggle("selected", key === id);
    },
  };
}
