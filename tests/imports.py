"""What a fresh interpreter has imported after one import statement (import-weight tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The server stack: none of it may load before something asks for the server.
SERVER_STACK = ("starlette", "uvicorn", "aiosqlite", "sse_starlette")


def modules_after(statement: str) -> set[str]:
    """Top-level and flowrun module names loaded by ``statement`` in a new interpreter."""
    code = (f"{statement}\nimport json, sys\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, check=True)
    names = json.loads(out.stdout.splitlines()[-1])
    return {n for n in names if n.startswith("flowrun.") or "." not in n}
