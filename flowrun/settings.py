"""Settings: one frozen object built at the edge.

This is the only module that reads ``FLOWRUN_*`` environment variables; every
other part of flowrun takes the values it needs as arguments.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback_host(host: str) -> bool:
    """True when ``host`` only listens on the local machine."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one flowrun server or embedded instance."""

    db_path: Path = Path("flowrun.db")
    host: str = "127.0.0.1"
    port: int = 8000
    workflows_dir: Path | None = None
    plugins: tuple[str, ...] = ()
    auth_enabled: bool = True
    max_concurrent_runs: int = 256
    max_queued: int = 100_000
    max_body_bytes: int = 1024 * 1024
    run_sync_default_timeout_s: float = 300.0
    run_sync_max_timeout_s: float = 600.0
    stop_wait_s: float = 10.0
    idempotency_ttl_s: float = 86_400.0
    shutdown_grace_s: float = 10.0
    sse_ping_s: float = 10.0
    sse_send_timeout_s: float = 30.0
    sse_buffer: int = 1024
    run_retention_s: float | None = None
    sweep_interval_s: float = 60.0
    group_commit_max: int = 512
    sqlite_busy_timeout_ms: int = 5000
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``FLOWRUN_*`` variables, then apply explicit overrides."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"FLOWRUN_{f.name.upper()}")
            if raw is None or f.name == "extra":
                continue
            values[f.name] = _parse(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _parse(name: str, raw: str) -> object:
    if name in {"db_path", "workflows_dir"}:
        return Path(raw)
    if name == "plugins":
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if name == "auth_enabled":
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if name in {"port", "max_concurrent_runs", "max_queued", "max_body_bytes", "group_commit_max",
                "sse_buffer", "sqlite_busy_timeout_ms"}:
        return int(raw)
    if name == "run_retention_s":
        return float(raw) if raw.strip() else None
    if name == "host":
        return raw
    return float(raw)
