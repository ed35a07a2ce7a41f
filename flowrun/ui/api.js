/* The native API client: its base (from the page's meta tag: the root, /native when a
 * dialect takes the root, under the app's root_path when mounted), the key (kept in
 * this tab's sessionStorage, sent as a header, never in a URL), and its errors. */

export const API = document.querySelector('meta[name="flowrun-api"]').content;
export const TERMINAL = new Set(["succeeded", "failed", "stopped", "timed_out"]);
export const STATUSES = ["queued", "running", "paused", "waiting", "succeeded", "failed",
  "stopped", "timed_out"];
const KEY = "flowrun.key";

/** An answer that is not 2xx: ``problem`` is the API's problem+json body ({} if none). */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || "HTTP " + status);
    this.status = status;
    this.problem = problem || {};
  }
}

export const hasKey = () => Boolean(sessionStorage.getItem(KEY));
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const forgetKey = () => sessionStorage.removeItem(KEY);

// What a refused key leads to (the sign-in form); main.js sets it, so this module
// needs nothing of the pages.
let onRefused = () => {};
export function whenRefused(fn) { onRefused = fn; }
export function refused() { onRefused("The server refused the key; sign in again."); }

/** Headers with the key, if this tab has one. */
export function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", "Bearer " + key);
  return headers;
}

/** The HTTP status of listing workflows with this tab's key (or none): does it get in? */
export async function probe() {
  const res = await fetch(API + "/workflows", { headers: authHeaders() });
  return res.status;
}

/** A JSON request to the native API; its JSON answer, or an ApiError. */
export async function api(path, { method = "GET", body, headers, signal } = {}) {
  const hs = authHeaders(headers);
  if (body !== undefined) hs.set("Content-Type", "application/json");
  const res = await fetch(API + path, { method, headers: hs, signal,
    body: body === undefined ? undefined : JSON.stringify(body) });
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : null;
  if (res.status === 401) {
    refused();
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

/** A random idempotency key. crypto.randomUUID exists only in secure contexts (https,
 * localhost): a server reached over plain http on a network has getRandomValues only. */
export function newKey() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The request that starts a run like ``run``: its inputs, version, priority and
 * correlation id, and its own graph when it was started with one. */
export function sameRun(run) {
  const body = { inputs: run.inputs, version: run.version, priority: run.priority };
  if (run.correlation_id) body.correlation_id = run.correlation_id;
  if (run.graph) { body.nodes = run.graph.nodes; body.edges = run.graph.edges; }
  return body;
}
