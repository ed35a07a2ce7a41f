"""Run a published API client in its own interpreter, against a test server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.server import ROOT

CLIENTS = Path(os.environ.get("FLOWRUN_CLIENTS_DIR", ROOT / ".venv" / "clients"))


def run_client(name: str, script: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 120) -> Any:
    """Run ``script`` with only client ``name`` importable; it prints one JSON line."""
    folder = CLIENTS / name
    assert folder.is_dir(), f"{folder} is missing: `make test` installs the published clients"
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONPATH": str(folder), **(env or {})})
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])
