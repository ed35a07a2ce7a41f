"""The page a one-time signal URL shows a person in a browser: what waits, and a form.

Plain HTML with every stored value escaped; the form posts the signal with
``fetch`` to the same URL, so the token never leaves the address it came in.
"""

from __future__ import annotations

import html
from typing import Any

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>flowrun: {title}</title>
<style>body{{font:15px system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}
textarea{{width:100%;height:8rem;font:13px monospace}}button{{font-size:15px;padding:.4rem 1rem}}
.muted{{color:#666}}</style></head>
<body><h1>{title}</h1>
<p class="muted">Run <code>{run_id}</code> of workflow <code>{workflow}</code> waits for
signal <code>{signal}</code>.</p>
<p id="state">{state_text}</p>
<form id="send" {hidden}><label for="data">Data (a JSON object)</label>
<textarea id="data" name="data">{{}}</textarea>
<p><button type="submit">Send</button></p></form>
<script>
document.getElementById("send").addEventListener("submit", async (e) => {{
  e.preventDefault();
  const state = document.getElementById("state");
  let data;
  try {{ data = JSON.parse(document.getElementById("data").value || "{{}}"); }}
  catch (err) {{ state.textContent = "That is not JSON: " + err.message; return; }}
  const res = await fetch(location.pathname, {{method: "POST",
    headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{data}})}});
  const body = await res.json().catch(() => ({{}}));
  state.textContent = res.ok ? "Sent. The run goes on." : (body.detail || "Refused");
  if (res.ok) e.target.hidden = true;
}});
</script></body></html>
"""

_STATES = {"waiting": "It is waiting.", "used": "This link was used already.",
           "ended": "The run has ended."}


def signal_page(found: dict[str, Any]) -> str:
    """The HTML page for ``WaitBook.describe_token``'s answer."""
    state = str(found.get("state"))
    return _PAGE.format(title=html.escape(str(found.get("title"))),
                        run_id=html.escape(str(found.get("run_id"))),
                        workflow=html.escape(str(found.get("workflow"))),
                        signal=html.escape(str(found.get("signal"))),
                        state_text=html.escape(_STATES.get(state, state)),
                        hidden="" if state == "waiting" else "hidden")
