"""Settings: one frozen object built at the edge.

This is the only module that reads ``FLOWRUN_*`` environment variables; every
other part of flowrun takes the values it needs as arguments.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback_host(host: str) -> bool:
    """True when ``host`` only listens on the local machine."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SettingsError(ValueError):
    """Raised when settings contradict each other or a safety rule."""


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def safe_url(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^/]*@", r"\1:***@", url)


def parse_database(target: str | Path) -> Path | str:
    """Where the store lives: a SQLite file (a ``Path``) or a PostgreSQL URL (a ``str``).

    A bare path and ``sqlite:///path`` (``sqlite:////abs/path`` for an absolute one, as
    SQLAlchemy writes it) are SQLite; ``postgresql://`` and ``postgres://`` URLs are
    PostgreSQL (libpq's URL form, kept as written). Any other ``scheme://`` raises
    SettingsError.
    """
    if isinstance(target, Path):
        return target
    if target.startswith("sqlite:///"):
        return Path(target.removeprefix("sqlite:///"))
    if target.startswith(_POSTGRES_SCHEMES):
        return target
    if "://" in target:
        scheme = target.split("://", 1)[0]
        raise SettingsError(f"unknown database URL scheme {scheme!r}: give a SQLite file "
                            f"path, sqlite:///path or postgresql://user@host:port/db")
    return Path(target)


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one flowrun server or embedded instance."""

    db_path: Path = Path("flowrun.db")
    # a database URL (FLOWRUN_DB, flowrun --db): a SQLite path, sqlite:///path or
    # postgresql://…; when set it wins over db_path (see ``database``)
    db: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workflows_dir: Path | None = None
    plugins: tuple[str, ...] = ()
    auth_enabled: bool = True
    max_concurrent_runs: int = 256
    # runs of one API key started at once (running or paused); None: a quarter of
    # max_concurrent_runs, at least 4 (see ``running_per_key``)
    max_running_per_key: int | None = None
    # the highest priority a run-scoped key may give its runs (admin keys: any, 0-99)
    run_key_max_priority: int = 99
    max_queued: int = 100_000
    max_body_bytes: int = 1024 * 1024
    run_sync_default_timeout_s: float = 300.0
    run_sync_max_timeout_s: float = 600.0
    stop_wait_s: float = 10.0
    idempotency_ttl_s: float = 86_400.0
    shutdown_grace_s: float = 10.0
    sse_ping_s: float = 10.0
    # mount one dialect (dify, conductor, langflow, jobs) at / as well as at its prefix
    root_dialect: str | None = None
    sse_send_timeout_s: float = 30.0
    sse_buffer: int = 1024
    max_streams_per_key: int = 100  # event streams one API key may hold open at once
    # runs one API key may start: a token bucket refilled at run_rate_per_key a second
    # holding up to run_burst_per_key (child runs and scheduled runs are not counted)
    run_rate_per_key: float = 50.0
    run_burst_per_key: int = 100
    # connections: past max_connections new requests get 503; a connection must send its
    # request headers within header_timeout_s, then its body within body_timeout_s (408);
    # idle keep-alive connections close after keep_alive_s. One client (an IP address,
    # an IPv6 /64) may hold max_connections_per_client (unset: a quarter of
    # max_connections; loopback is one client, a local reverse proxy too), and queue
    # max_pipelined_requests behind an unanswered one before its connection is closed
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections_per_client: int | None = None
    max_pipelined_requests: int = 16
    # what one run may ask for: nesting of child runs, child runs live under one root
    # run, and items a map node runs at once
    max_child_depth: int = 10
    max_child_runs_per_root: int = 32
    max_map_concurrency: int = 32
    # inbound webhooks: a delivery signed further than this from now is refused, and an
    # accepted one is remembered (refused as a replay) for as long
    hook_tolerance_s: float = 300.0
    # what one run may store (bytes of JSON): what each node stores (its outputs, the
    # inputs its expressions make, the text it streams), and its nodes' values and its
    # outputs in all; past either the node fails with output_too_large
    max_node_output_bytes: int = 1024 * 1024
    max_run_output_bytes: int = 16 * 1024 * 1024
    # text_chunk events one run streams (each is a stored row); past it the run's text
    # goes into its nodes' outputs only (the log says so once)
    max_text_chunks_per_run: int = 10_000
    # finished runs (with their nodes, events and keys) are deleted this long after they
    # end, so the database does not grow for ever; 0 keeps them (the start-up log says which)
    run_retention_s: float = 30 * 86_400.0
    sweep_interval_s: float = 60.0
    group_commit_max: int = 512
    # how long progress nobody waits for yet (a run's node rows and events) may wait to
    # share a commit; awaited writes and runs with live subscribers do not wait
    write_linger_s: float = 0.003
    # past write_backlog queued writes a run's streamed text waits for the writer, up to
    # write_backlog_wait_s; still behind then, the run streams no more text
    write_backlog: int = 10_000
    write_backlog_wait_s: float = 10.0
    # how long a finishing run waits for its final write through a store fault before it
    # lets go (the writer keeps retrying that write)
    final_write_timeout_s: float = 30.0
    sqlite_busy_timeout_ms: int = 5000
    # FULL: a commit survives power loss; NORMAL (WAL): it survives a process crash,
    # not a power cut, and commits cost no fsync (a local dev server may prefer it).
    sqlite_synchronous: str = "FULL"
    # code node: the sandbox ("bwrap"; "process" is the weaker opt-in), warm workers,
    # per-job limits, and how many jobs may run at once
    code_sandbox: str = "bwrap"
    code_pool_size: int = 2
    code_timeout_s: float = 30.0
    code_memory_mb: int = 512
    code_cpu_s: int = 30
    code_max_processes: int = 32
    code_tmp_mb: int = 64
    code_max_workers: int = 16
    # code nodes get HTTP(S) through a proxy that applies the http node's policy; each
    # job may hold that many connections to it, each of which must send its request
    # head within the timeout
    code_network: bool = False
    code_network_connections_per_job: int = 16
    code_network_head_timeout_s: float = 2.0
    # http and llm nodes
    allow_private_hosts: bool = False
    http_allowed_networks: tuple[str, ...] = ()
    http_max_response_bytes: int = 10 * 1024 * 1024
    http_timeout_s: float = 30.0
    llm_base_url: str = "https://api.openai.com/v1"
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"
    # llm_timeout_s bounds each connect, read and write; llm_deadline_s the whole call
    # (a server that sends a byte now and then holds a node no longer than that)
    llm_timeout_s: float = 120.0
    llm_deadline_s: float = 600.0
    # the reply as decoded (inflated), every byte counted: comments, unread fields
    llm_max_response_bytes: int = 10 * 1024 * 1024
    # completion callbacks (through the http node's SSRF policy): a failed attempt is
    # retried after callback_backoff_s doubling up to callback_max_backoff_s, for up to
    # callback_max_age_s after the run ended; each attempt may take callback_timeout_s,
    # and up to callback_max_in_flight are sent at once, at most
    # callback_max_in_flight_per_key of one API key's (the others' share)
    callback_backoff_s: float = 10.0
    callback_max_backoff_s: float = 3600.0
    callback_max_age_s: float = 86_400.0
    callback_timeout_s: float = 10.0
    callback_max_in_flight: int = 8
    callback_max_in_flight_per_key: int = 4
    # several processes on one PostgreSQL database (cluster.py): each renews its lease
    # every heartbeat_s; the runs of one silent for lease_s are taken over by the others
    heartbeat_s: float = 2.0
    lease_s: float = 10.0
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # However auth is turned off (a flag, FLOWRUN_AUTH_ENABLED), never beyond loopback.
        if not self.auth_enabled and not is_loopback_host(self.host):
            raise SettingsError(f"auth can be off only on a loopback host, not {self.host}")
        if self.max_running_per_key is not None and self.max_running_per_key < 1:
            raise SettingsError("max_running_per_key must be >= 1")
        if not 0 <= self.run_key_max_priority <= 99:
            raise SettingsError("run_key_max_priority must be between 0 and 99")
        if self.run_rate_per_key <= 0 or self.run_burst_per_key < 1:
            raise SettingsError("run_rate_per_key must be > 0 and run_burst_per_key >= 1")
        if self.callback_backoff_s <= 0 or self.callback_timeout_s <= 0 or \
                self.callback_max_in_flight < 1 or self.callback_max_in_flight_per_key < 1:
            raise SettingsError("callback_backoff_s and callback_timeout_s must be > 0, "
                                "callback_max_in_flight and callback_max_in_flight_per_key "
                                ">= 1")
        if self.hook_tolerance_s <= 0:
            raise SettingsError("hook_tolerance_s must be > 0")
        if self.code_network_connections_per_job < 1 or self.code_network_head_timeout_s <= 0:
            raise SettingsError("code_network_connections_per_job must be >= 1 and "
                                "code_network_head_timeout_s > 0")
        if self.max_node_output_bytes < 1 or self.max_run_output_bytes < 1:
            raise SettingsError("max_node_output_bytes and max_run_output_bytes must be >= 1")
        if self.llm_timeout_s <= 0 or self.llm_deadline_s <= 0:
            raise SettingsError("llm_timeout_s and llm_deadline_s must be > 0")
        if self.max_text_chunks_per_run < 0 or self.write_backlog < 1 or \
                self.write_backlog_wait_s < 0:
            raise SettingsError("max_text_chunks_per_run and write_backlog_wait_s must be "
                                ">= 0, write_backlog >= 1")
        if self.run_retention_s < 0:
            raise SettingsError("run_retention_s must be >= 0 (0 keeps finished runs)")
        self._check_connections()
        if self.heartbeat_s <= 0 or self.lease_s < 2 * self.heartbeat_s:
            raise SettingsError("heartbeat_s must be > 0 and lease_s at least twice it")
        if self.db is not None:
            parse_database(self.db)  # an unknown scheme fails here, at the edge

    def _check_connections(self) -> None:
        if self.max_connections < 1 or self.max_pipelined_requests < 1:
            raise SettingsError("max_connections and max_pipelined_requests must be >= 1")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0 or self.keep_alive_s <= 0:
            raise SettingsError("header_timeout_s, body_timeout_s and keep_alive_s must be > 0")
        cap = self.max_connections_per_client
        if cap is not None and not 1 <= cap <= self.max_connections:
            raise SettingsError(f"max_connections_per_client must be between 1 and "
                                f"max_connections ({self.max_connections}), not {cap}")

    @property
    def connections_per_client(self) -> int:
        """How many connections one client may hold: the setting, else a quarter of all."""
        if self.max_connections_per_client is not None:
            return self.max_connections_per_client
        return max(1, self.max_connections // 4)

    @property
    def database(self) -> Path | str:
        """The store's target: a SQLite file (``Path``) or a PostgreSQL URL (``str``)."""
        return parse_database(self.db) if self.db is not None else self.db_path

    @property
    def running_per_key(self) -> int:
        """How many runs of one API key may run at once (per process): so that no key
        holds every slot, and a few keys share them."""
        if self.max_running_per_key is not None:
            return self.max_running_per_key
        return max(4, self.max_concurrent_runs // 4)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``FLOWRUN_*`` variables, then apply explicit overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}  # each parsed to its field's type
        for f in dataclasses.fields(cls):
            raw = env.get(f"FLOWRUN_{f.name.upper()}")
            if raw is None or f.name == "extra":
                continue
            values[f.name] = _parse(str(f.type), raw)
        if "llm_api_key" not in values and env.get("OPENAI_API_KEY"):
            values["llm_api_key"] = env["OPENAI_API_KEY"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ClientSettings:
    """Where the command-line client (``flowrun events``) connects, and with which key."""

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientSettings:
        env = os.environ if env is None else env
        return cls(url=env.get("FLOWRUN_URL") or cls.url,
                   api_key=env.get("FLOWRUN_API_KEY") or None)


def _parse(annotation: str, raw: str) -> object:
    """Turn an environment string into the field's type (read from its annotation)."""
    kind = annotation.replace(" | None", "")
    if raw.strip() == "" and "None" in annotation:
        return None
    if kind == "Path":
        return Path(raw)
    if kind.startswith("tuple"):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if kind == "bool":
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw
