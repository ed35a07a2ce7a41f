"""The SQLite schema as an ordered list of migrations; ``user_version`` records the step."""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE workflows (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            definition TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (name, version)
        )""",
        """CREATE TABLE runs (
            num INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            workflow TEXT NOT NULL,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            inputs TEXT NOT NULL,
            outputs TEXT,
            error TEXT,
            priority INTEGER NOT NULL DEFAULT 0,
            correlation_id TEXT,
            idempotency_key TEXT,
            user TEXT,
            trace_id TEXT,
            api_key_id TEXT,
            overrides TEXT,
            graph TEXT,
            steps INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        )""",
        "CREATE INDEX runs_by_workflow ON runs (workflow, api_key_id, num)",
        "CREATE INDEX runs_by_status ON runs (status, num)",
        """CREATE TABLE node_executions (
            run_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            type TEXT NOT NULL,
            title TEXT NOT NULL,
            idx INTEGER NOT NULL,
            status TEXT NOT NULL,
            inputs TEXT,
            outputs TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            branch TEXT,
            logs TEXT,
            started_at REAL,
            finished_at REAL,
            PRIMARY KEY (run_id, node_id)
        )""",
        """CREATE TABLE events (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            data TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
        """CREATE TABLE idempotency_keys (
            api_key_id TEXT NOT NULL,
            workflow TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            run_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            PRIMARY KEY (api_key_id, workflow, key)
        )""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            prefix TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            name TEXT,
            workflow TEXT,
            created_at REAL NOT NULL,
            revoked_at REAL
        )""",
    ],
    [
        # Child runs started by a parent's workflow node.
        "ALTER TABLE runs ADD COLUMN parent_run_id TEXT",
        "CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL",
    ],
    [
        # Key scopes: keys bound to a workflow were Dify app keys (run scope); the others
        # could do anything, so they stay admin until the operator narrows them.
        "ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin'",
        "ALTER TABLE api_keys ADD COLUMN workflows TEXT",  # JSON array; NULL: any workflow
        "UPDATE api_keys SET scope = 'run', workflows = json_array(workflow) "
        "WHERE workflow IS NOT NULL",
        "ALTER TABLE api_keys DROP COLUMN workflow",
        # Named secrets and the URL prefixes each may be sent to.
        """CREATE TABLE secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            allowed_urls TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        # Child-run bounds: how deep a run is, and the root run its tree hangs from.
        "ALTER TABLE runs ADD COLUMN depth INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN root_run_id TEXT",
    ],
    [
        # Deleted workflow versions stay as rows (a version number is never reused, and
        # the runs made from it can still be retried); reads for new runs skip them.
        "ALTER TABLE workflows ADD COLUMN deleted_at REAL",
        # A run made by re-running another from a node, and the run it re-ran.
        "ALTER TABLE runs ADD COLUMN rerun_of TEXT",
        # GET /runs over every workflow, for one key (the web UI's runs page).
        "CREATE INDEX runs_by_key ON runs (api_key_id, num)",
        "CREATE INDEX runs_by_correlation ON runs (correlation_id, num) "
        "WHERE correlation_id IS NOT NULL",
    ],
    [
        # Schedules: from a definition's schedules block (source 'definition', replaced
        # when a new version is registered) or made through the API (source 'api').
        # ``spec`` is the block's entry as written, to tell a changed entry from one
        # paused or resumed through the API since. ``last_slot``: the last slot fired.
        """CREATE TABLE schedules (
            workflow TEXT NOT NULL,
            id TEXT NOT NULL,
            cron TEXT NOT NULL,
            timezone TEXT NOT NULL,
            inputs TEXT NOT NULL,
            catch_up TEXT NOT NULL,
            paused INTEGER NOT NULL DEFAULT 0,
            source TEXT NOT NULL,
            spec TEXT,
            last_slot REAL,
            created_at REAL NOT NULL,
            PRIMARY KEY (workflow, id)
        )""",
        # The schedule and slot that started a run.
        "ALTER TABLE runs ADD COLUMN schedule_id TEXT",
        "ALTER TABLE runs ADD COLUMN schedule_slot REAL",
    ],
    [
        # Wait nodes. A waiting run has no task; ``wake_at`` is when it must be queued
        # again without a signal (its first wait timeout, or its run deadline).
        "ALTER TABLE runs ADD COLUMN wake_at REAL",
        "CREATE INDEX runs_waking ON runs (wake_at) WHERE status = 'waiting'",
        # Signals a run received, by name (one each): the data a wait node returns.
        """CREATE TABLE signals (
            run_id TEXT NOT NULL,
            name TEXT NOT NULL,
            data TEXT NOT NULL,
            via TEXT NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (run_id, name)
        )""",
        # One-time signal URLs (for a person without a key): the token's hash.
        """CREATE TABLE signal_tokens (
            token_hash TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            signal TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX signal_tokens_by_run ON signal_tokens (run_id)",
    ],
    [
        # Completion callbacks: the URL a run's end is POSTed to, set when it is accepted.
        "ALTER TABLE runs ADD COLUMN callback_url TEXT",
        # One row per run with a callback, written with the run: its delivery state
        # (pending, delivered, failed) and when to try next (NULL: as soon as the run
        # ends). The partial index keeps the delivery loop's look-up to pending rows.
        """CREATE TABLE callbacks (
            run_id TEXT PRIMARY KEY,
            delivery_id TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX callbacks_pending ON callbacks (next_attempt_at) "
        "WHERE state = 'pending'",
        # Every delivery attempt: when, the receiver's status or why it failed, how long.
        """CREATE TABLE callback_attempts (
            run_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            at REAL NOT NULL,
            status_code INTEGER,
            error TEXT,
            duration_ms REAL NOT NULL,
            PRIMARY KEY (run_id, attempt)
        )""",
        # Keys the server itself holds (the callback signing secret), with the one a
        # rotation replaced, still signed with until previous_until.
        """CREATE TABLE server_secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            previous TEXT,
            previous_until REAL,
            updated_at REAL NOT NULL
        )""",
    ],
    [
        # Inbound webhooks: one per workflow, its signing secret (kept as it is: the HMAC
        # needs it) and the optional expression mapping a delivery's body to inputs.
        """CREATE TABLE hooks (
            workflow TEXT PRIMARY KEY,
            secret TEXT NOT NULL,
            inputs TEXT,
            created_at REAL NOT NULL,
            rotated_at REAL,
            last_delivery_at REAL,
            last_run_id TEXT
        )""",
        # Signatures of accepted deliveries, kept while their timestamp is within the
        # tolerance, so a replay is refused across restarts too.
        """CREATE TABLE hook_deliveries (
            workflow TEXT NOT NULL,
            signature TEXT NOT NULL,
            signed_at REAL NOT NULL,
            run_id TEXT NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (workflow, signature)
        )""",
        "CREATE INDEX hook_deliveries_by_time ON hook_deliveries (signed_at)",
        # Where a run came from when not from an API call (``hook``).
        "ALTER TABLE runs ADD COLUMN source TEXT",
    ],
    [
        # The process that runs a run and a stop asked for elsewhere: used by several
        # processes on PostgreSQL (cluster.py); kept here so both stores share their SQL.
        "ALTER TABLE runs ADD COLUMN owner TEXT",
        "ALTER TABLE runs ADD COLUMN stop_reason TEXT",
        # one workflow's runs, any key's (an admin's or the UI's list), newest first:
        # without it, every run of the workflow is sorted for each page
        "CREATE INDEX runs_by_workflow_any_key ON runs (workflow, num)",
    ],
    [
        # Completion callbacks are shared out key by key (features/callbacks/book.py): each names
        # its run's key ('' for a run without one), and the loop walks the pending ones
        # of each key in turn, soonest first, never past another key's.
        "ALTER TABLE callbacks ADD COLUMN api_key_id TEXT NOT NULL DEFAULT ''",
        "UPDATE callbacks SET api_key_id = COALESCE((SELECT r.api_key_id FROM runs r "
        "WHERE r.id = callbacks.run_id), '')",
        "DROP INDEX callbacks_pending",
        "CREATE INDEX callbacks_pending_by_key ON callbacks (api_key_id, next_attempt_at) "
        "WHERE state = 'pending'",
    ],
    [
        # Retention (on by default): the housekeeping sweep finds the runs that ended
        # before its cut-off with a range per terminal status, not by reading them all
        # (runs_by_status alone would make it scan every finished run at each sweep).
        "CREATE INDEX runs_by_end ON runs (status, finished_at)",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)
