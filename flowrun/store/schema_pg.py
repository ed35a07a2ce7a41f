"""The PostgreSQL schema as an ordered list of migrations; ``schema_version`` records
the step.

Its own list, not SQLite's translated: step 1 is SQLite's eight steps as one. Types
are PostgreSQL's (``double precision`` times, ``bigint`` counts, ``bigint`` identity
for the run number the jobs API shows). JSON stays ``text``: the store compares
stored JSON as text (an unchanged definition, a schedule's spec) and ``jsonb`` would
reorder keys. Tables that SQLite addresses by ``rowid`` (a workflow's number, batched
deletes) get an identity column of that name, so the shared SQL reads the same.
"""

from __future__ import annotations

PG_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE workflows (
            rowid bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
            name text NOT NULL,
            version bigint NOT NULL,
            definition text NOT NULL,
            created_at double precision NOT NULL,
            deleted_at double precision,
            PRIMARY KEY (name, version)
        )""",
        """CREATE TABLE runs (
            num bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            workflow text NOT NULL,
            version bigint NOT NULL,
            status text NOT NULL,
            inputs text NOT NULL,
            outputs text,
            error text,
            priority bigint NOT NULL DEFAULT 0,
            correlation_id text,
            idempotency_key text,
            "user" text,
            trace_id text,
            api_key_id text,
            overrides text,
            graph text,
            steps bigint NOT NULL DEFAULT 0,
            created_at double precision NOT NULL,
            started_at double precision,
            finished_at double precision,
            parent_run_id text,
            depth bigint NOT NULL DEFAULT 0,
            root_run_id text,
            rerun_of text,
            schedule_id text,
            schedule_slot double precision,
            wake_at double precision,
            callback_url text,
            source text
        )""",
        "CREATE INDEX runs_by_workflow ON runs (workflow, api_key_id, num)",
        "CREATE INDEX runs_by_status ON runs (status, num)",
        "CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL",
        "CREATE INDEX runs_by_key ON runs (api_key_id, num)",
        "CREATE INDEX runs_by_correlation ON runs (correlation_id, num) "
        "WHERE correlation_id IS NOT NULL",
        "CREATE INDEX runs_waking ON runs (wake_at) WHERE status = 'waiting'",
        """CREATE TABLE node_executions (
            run_id text NOT NULL,
            node_id text NOT NULL,
            type text NOT NULL,
            title text NOT NULL,
            idx bigint NOT NULL,
            status text NOT NULL,
            inputs text,
            outputs text,
            error text,
            attempts bigint NOT NULL DEFAULT 0,
            branch text,
            logs text,
            started_at double precision,
            finished_at double precision,
            PRIMARY KEY (run_id, node_id)
        )""",
        """CREATE TABLE events (
            run_id text NOT NULL,
            seq bigint NOT NULL,
            name text NOT NULL,
            data text NOT NULL,
            created_at double precision NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
        """CREATE TABLE idempotency_keys (
            rowid bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
            api_key_id text NOT NULL,
            workflow text NOT NULL,
            key text NOT NULL,
            fingerprint text NOT NULL,
            run_id text NOT NULL,
            created_at double precision NOT NULL,
            expires_at double precision,
            PRIMARY KEY (api_key_id, workflow, key)
        )""",
        "CREATE INDEX idempotency_keys_by_run ON idempotency_keys (run_id)",
        """CREATE TABLE api_keys (
            id text PRIMARY KEY,
            prefix text NOT NULL,
            hash text NOT NULL UNIQUE,
            name text,
            created_at double precision NOT NULL,
            revoked_at double precision,
            scope text NOT NULL DEFAULT 'admin',
            workflows text
        )""",
        """CREATE TABLE secrets (
            name text PRIMARY KEY,
            value text NOT NULL,
            allowed_urls text NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL
        )""",
        """CREATE TABLE schedules (
            workflow text NOT NULL,
            id text NOT NULL,
            cron text NOT NULL,
            timezone text NOT NULL,
            inputs text NOT NULL,
            catch_up text NOT NULL,
            paused bigint NOT NULL DEFAULT 0,
            source text NOT NULL,
            spec text,
            last_slot double precision,
            created_at double precision NOT NULL,
            PRIMARY KEY (workflow, id)
        )""",
        """CREATE TABLE signals (
            run_id text NOT NULL,
            name text NOT NULL,
            data text NOT NULL,
            via text NOT NULL,
            received_at double precision NOT NULL,
            PRIMARY KEY (run_id, name)
        )""",
        """CREATE TABLE signal_tokens (
            token_hash text PRIMARY KEY,
            run_id text NOT NULL,
            node_id text NOT NULL,
            signal text NOT NULL,
            created_at double precision NOT NULL
        )""",
        "CREATE INDEX signal_tokens_by_run ON signal_tokens (run_id)",
        """CREATE TABLE callbacks (
            run_id text PRIMARY KEY,
            delivery_id text NOT NULL,
            state text NOT NULL,
            attempts bigint NOT NULL DEFAULT 0,
            next_attempt_at double precision,
            updated_at double precision NOT NULL
        )""",
        "CREATE INDEX callbacks_pending ON callbacks (next_attempt_at) "
        "WHERE state = 'pending'",
        """CREATE TABLE callback_attempts (
            run_id text NOT NULL,
            attempt bigint NOT NULL,
            at double precision NOT NULL,
            status_code bigint,
            error text,
            duration_ms double precision NOT NULL,
            PRIMARY KEY (run_id, attempt)
        )""",
        """CREATE TABLE server_secrets (
            name text PRIMARY KEY,
            value text NOT NULL,
            previous text,
            previous_until double precision,
            updated_at double precision NOT NULL
        )""",
        """CREATE TABLE hooks (
            workflow text PRIMARY KEY,
            secret text NOT NULL,
            inputs text,
            created_at double precision NOT NULL,
            rotated_at double precision,
            last_delivery_at double precision,
            last_run_id text
        )""",
        """CREATE TABLE hook_deliveries (
            rowid bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
            workflow text NOT NULL,
            signature text NOT NULL,
            signed_at double precision NOT NULL,
            run_id text NOT NULL,
            received_at double precision NOT NULL,
            PRIMARY KEY (workflow, signature)
        )""",
        "CREATE INDEX hook_deliveries_by_time ON hook_deliveries (signed_at)",
    ],
    [
        # Several processes on one database (cluster.py): the process that runs a run
        # (its ``owner``), a stop asked for on another process, and the processes alive.
        "ALTER TABLE runs ADD COLUMN owner text",
        "ALTER TABLE runs ADD COLUMN stop_reason text",
        # what a claim walks: live runs, priority then age
        "CREATE INDEX runs_claimable ON runs (priority DESC, num) "
        "WHERE status IN ('queued', 'running', 'paused')",
        "CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL",
        # one workflow's runs, any key's (an admin's or the UI's list), newest first
        "CREATE INDEX runs_by_workflow_any_key ON runs (workflow, num)",
        """CREATE TABLE workers (
            id text PRIMARY KEY,
            host text NOT NULL,
            pid bigint NOT NULL,
            started_at double precision NOT NULL,
            heartbeat_at double precision NOT NULL
        )""",
    ],
    [
        # callbacks shared out key by key (see schema.py); NULLS FIRST as the loop reads
        "ALTER TABLE callbacks ADD COLUMN api_key_id text NOT NULL DEFAULT ''",
        "UPDATE callbacks c SET api_key_id = COALESCE(r.api_key_id, '') FROM runs r "
        "WHERE r.id = c.run_id",
        "DROP INDEX callbacks_pending",
        "CREATE INDEX callbacks_pending_by_key ON callbacks "
        "(api_key_id, next_attempt_at NULLS FIRST) WHERE state = 'pending'",
    ],
    [
        # Retention (on by default): the housekeeping sweep finds the runs that ended
        # before its cut-off with a range per terminal status, not by reading them all
        # (runs_by_status alone would make it scan every finished run at each sweep).
        "CREATE INDEX runs_by_end ON runs (status, finished_at)",
    ],
]

PG_SCHEMA_VERSION = len(PG_MIGRATIONS)
