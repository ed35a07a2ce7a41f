/* The entry point: signing in and out, and routing the location's hash to a page.
 * Each page is given a View: the element it fills, whether it is still on screen (a
 * page left while its data was loading draws nothing), and what to undo when it goes. */

import { ApiError, forgetKey, hasKey, probe, setKey, whenRefused } from "./api.js";
import { h } from "./dom.js";
import { runPage } from "./pages/run.js";
import { runsPage } from "./pages/runs.js";
import { workflowPage, workflowsPage } from "./pages/workflows.js";

const main = document.getElementById("main");
const signin = document.getElementById("signin");
const signout = document.getElementById("signout");
let view = null; // the View on screen

class View {
  constructor(root) {
    this.root = root;
    this.gone = false;
    this.cleanups = [];
  }

  onLeave(fn) { this.cleanups.push(fn); }

  /** Call fn every ms while the page is shown and the tab visible. */
  every(ms, fn) {
    let busy = false;
    const id = setInterval(async () => {
      if (busy || document.visibilityState !== "visible") return;
      busy = true;
      try { await fn(); } catch (e) { /* the next tick tries again */ } finally { busy = false; }
    }, ms);
    this.onLeave(() => clearInterval(id));
  }

  leave() {
    this.gone = true;
    for (const f of this.cleanups) f();
  }
}

// ---- routing --------------------------------------------------------------
function leave() {
  if (view) view.leave();
  view = null;
}

/** The hash as path parts (decoded) and query: "#/workflows/x?version=2". */
function where() {
  const hash = location.hash.replace(/^#/, "") || "/workflows";
  const [path, query] = hash.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent),
    params: new URLSearchParams(query || "") };
}

function show(current, [section, name], params) {
  if (section === "runs" && name) return runPage(current, name);
  if (section === "runs") return runsPage(current, params);
  if (section === "workflows" && name) return workflowPage(current, name, params);
  return workflowsPage(current);
}

function route() {
  if (!signin.hidden) return;
  leave();
  const current = view = new View(main);
  const { parts, params } = where();
  for (const a of document.querySelectorAll("[data-nav]"))
    a.classList.toggle("active", a.dataset.nav === parts[0]);
  main.replaceChildren();
  Promise.resolve(show(current, parts, params)).catch((err) => {
    if (!current.gone && !(err instanceof ApiError && err.status === 401))
      main.append(h("p.error", {}, "Could not load: " + err.message));
  });
}

// ---- sign in --------------------------------------------------------------
function showSignin(message) {
  forgetKey();
  leave();
  main.replaceChildren();
  signin.hidden = false;
  signout.hidden = true;
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("signin-key").focus();
}

async function signIn(ev) {
  ev.preventDefault();
  const input = document.getElementById("signin-key");
  setKey(input.value.trim());
  const status = await probe();
  if (status < 200 || status > 299) {
    showSignin(status === 401 ? "That key was refused." : "Sign-in failed: HTTP " + status);
    return;
  }
  input.value = "";
  signin.hidden = true;
  signout.hidden = false;
  route();
}

async function boot() {
  if (!hasKey()) {
    // With --no-auth the API answers without a key: open directly.
    if ((await probe()) === 401) return showSignin("");
  } else {
    signout.hidden = false;
  }
  route();
}

whenRefused(showSignin);
document.getElementById("signin-form").addEventListener("submit", signIn);
signout.addEventListener("click", () => showSignin(""));
window.addEventListener("hashchange", route);
boot();
