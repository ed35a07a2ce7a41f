"""``make bench``, PostgreSQL: the burst on 1, 2 and 3 ``flowrun serve`` processes
sharing one database, beside the same burst on a fresh SQLite server.

The burst is ``run.py``'s: BURST runs of the 3-node chain (bench/three.yaml) sent by
wrk at CONCURRENCY connections, here one wrk per process with BURST / N runs each,
all at once, so every process gets its share at the same time. Each process is
started as ``run.py`` starts its server (same flags and limits), on a fresh database
of one PostgreSQL server started the way tests/pg.py does, but durable (fsync and
synchronous_commit on, as SQLite's synchronous=FULL is). The time runs from the first
submit until the database holds every run in a final state.

What bounds each figure is measured, not guessed: CPU use of each flowrun process
(and of its busiest threads), of PostgreSQL (the postmaster's whole tree), of wrk,
of the kernel's irq work and of anything else on the machine, read from /proc over
the burst (bench/cpu.py); what each flowrun writer connection is doing, sampled
from pg_stat_activity every 20 ms (inside PostgreSQL, waiting for flowrun between
the statements of a transaction, or idle); and PostgreSQL's commit and WAL flush
counts. Without PostgreSQL the rows say they are skipped, and why.

``python -m bench.cluster`` runs this part alone (it prints, and writes nothing).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import cpu, wrk
from bench.run import (
    BURST,
    CONCURRENCY,
    FLOWRUN_ENV,
    HERE,
    ROOT,
    flowrun_args,
    free_port,
    spawn,
    wait_listening,
)

PROCESSES = (1, 2, 3)
TERMINAL = ("succeeded", "failed", "stopped", "timed_out")
DRAIN_TIMEOUT_S = 120  # after the last submit, for every run to finish
# PostgreSQL's settings here: durable, unlike the tests' (fsync=off ...); the rest default.
PG_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on",
               "max_connections": "300", "track_wal_io_timing": "on"}
_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
# What only flowrun's writer connection sends (its readers and listener only read).
_WRITES = ("BEGIN", "COMMIT", "ROLLBACK", "INSERT", "UPDATE", "DELETE", "SAVEPOINT",
           "RELEASE")

Rows = list[tuple[str, str, str]]
MARK = "/* bench */ "


class Skipped(Exception):
    """PostgreSQL cannot be had here; the message says why."""


@dataclass
class Burst:
    runs: int
    seconds: float  # first submit → every run final (polled)
    record_seconds: float  # first accept → last finish, from the run records
    since: float  # time.time() before the first submit
    accepted: int  # runs in the database when the last wrk ended
    accept_seconds: float
    wrk: list[wrk.WrkResult]
    statuses: dict[str, int]
    unfinished: int
    whole: cpu.Usage
    submitting: cpu.Usage
    writers: dict[str, float] | None  # Activity.writer_shares()
    owners: dict[str | None, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.runs / self.seconds

    def row(self) -> str:
        text = (f"{self.seconds:.1f} s = {self.rate:,.0f} completed runs/s "
                f"(records: {self.runs / self.record_seconds:,.0f}); accepted "
                f"{self.accepted / self.accept_seconds:,.0f}/s")
        if self.unfinished:
            text += f"; {self.unfinished} runs NOT finished after {DRAIN_TIMEOUT_S} s"
        return text


class Db:
    """Reads of a flowrun database (``?`` placeholders), counted: on PostgreSQL each is
    a transaction of its own, which the commit counts must leave out."""

    def __init__(self, target: str | Path) -> None:
        self.statements = 0
        self.postgres = isinstance(target, str)
        self.backend = 0  # on PostgreSQL: the pid of the backend that serves this
        if isinstance(target, str):
            import psycopg

            self._pg = psycopg.connect(target, autocommit=True)
            self.backend = self._pg.info.backend_pid
        else:
            self._lite = sqlite3.connect(f"file:{target}?mode=ro", uri=True)

    def __call__(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        self.statements += 1
        if self.postgres:  # (marked, to tell them from flowrun's in pg_stat_statements)
            cursor = self._pg.execute(MARK + sql.replace("?", "%s"), args)
            return cursor.fetchall() if cursor.description is not None else []
        return self._lite.execute(sql, args).fetchall()

    def close(self) -> None:
        (self._pg if self.postgres else self._lite).close()


class Activity(threading.Thread):
    """What each of flowrun's connections to the database is doing, sampled from
    pg_stat_activity every 20 ms until ``finish``."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.db = Db(url)
        self._done = threading.Event()
        self.samples: dict[int, list[tuple[str, str]]] = {}  # backend → (state, wait)
        self.writers: set[int] = set()

    def run(self) -> None:
        while not self._done.wait(0.02):
            for pid, state, wait_type, wait, sql in self.db(
                    "SELECT pid, state, wait_event_type, wait_event, left(query, 60) "
                    "FROM pg_stat_activity WHERE datname = current_database() AND "
                    "backend_type = 'client backend' AND pid <> pg_backend_pid()"):
                self.samples.setdefault(pid, []).append(
                    (state or "?", f"{wait_type}:{wait}" if wait else "CPU"))
                if (sql or "").lstrip().upper().startswith(_WRITES) or \
                        state == "idle in transaction":
                    self.writers.add(pid)

    def finish(self) -> None:
        self._done.set()
        self.join()
        self.db.close()

    def writer_shares(self) -> dict[str, float]:
        """Over the writer connections' samples: the share inside PostgreSQL (active),
        that of it waiting on WAL I/O, between statements of a transaction (waiting
        for flowrun), and idle; and how many writers there were."""
        seen = [s for pid in self.writers for s in self.samples[pid]]
        total = len(seen) or 1
        return {"writers": len(self.writers),
                "active": sum(state == "active" for state, _ in seen) / total * 100,
                "wal": sum(state == "active" and wait.startswith(("IO:WAL", "LWLock:WAL"))
                           for state, wait in seen) / total * 100,
                "in_transaction": sum(state.startswith("idle in transaction")
                                      for state, _ in seen) / total * 100,
                "idle": sum(state == "idle" for state, _ in seen) / total * 100}


def _idle(urls: Sequence[str]) -> bool:
    for url in urls:
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        if health["queued"] or health["running"]:
            return False
    return True


def burst(urls: Sequence[str], query: Db, trees: Sequence[int], loops: Sequence[int],
          activity: Activity | None = None) -> Burst:
    """BURST runs of ``three`` over ``urls`` (one wrk each); CPU of the process trees
    ``trees`` and of the threads of ``loops`` sampled over it, and ``activity``'s."""
    since = time.time()
    if activity is not None:
        activity.start()
    before = cpu.sample(trees, loops)
    with ThreadPoolExecutor(len(urls)) as pool:
        sent = [pool.submit(wrk.run, f"{url}/workflows/three/run", method="POST", body={},
                            connections=CONCURRENCY, duration_s=120,
                            limit_per_thread=BURST // len(urls)) for url in urls]
        results = [f.result() for f in sent]
    submitted = cpu.sample(trees, loops)
    [(accepted,)] = query("SELECT count(*) FROM runs WHERE created_at >= ?", since)
    terminal = ", ".join(f"'{s}'" for s in TERMINAL)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        [(done, total)] = query(f"SELECT count(*) FILTER (WHERE status IN ({terminal})), "
                                "count(*) FROM runs WHERE created_at >= ?", since)
        if done == total and _idle(urls) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    after = cpu.sample(trees, loops)
    if activity is not None:
        activity.finish()
    [(first, last)] = query("SELECT min(created_at), max(finished_at) FROM runs "
                            "WHERE created_at >= ?", since)
    statuses = dict(query("SELECT status, count(*) FROM runs WHERE created_at >= ? "
                          "GROUP BY status", since))
    return Burst(total, after.at - before.at, last - first, since, accepted,
                 submitted.at - before.at, results, statuses, total - done,
                 cpu.usage(before, after), cpu.usage(before, submitted),
                 activity.writer_shares() if activity is not None else None)


def warm_up(urls: Sequence[str]) -> None:
    """One run-sync per process: each serves the workflow and runs it to the end."""
    for url in urls:
        reply = httpx.post(f"{url}/workflows/three/run-sync", json={}, timeout=60)
        if reply.status_code != 200 or reply.json()["status"] != "succeeded":
            raise RuntimeError(f"{url}: warm-up run-sync answered {reply.status_code} "
                               f"{reply.text[:300]}")


def start_servers(db: str, count: int, flows: Path, work: Path, tag: str
                  ) -> tuple[list[subprocess.Popen[bytes]], list[str], list[Path]]:
    """``count`` flowrun processes on ``db``, started at once (as a deploy would)."""
    ports = [free_port() for _ in range(count)]
    logs = [work / f"{tag}-{i + 1}.log" for i in range(count)]
    procs = [spawn(flowrun_args(port, db, flows), log, FLOWRUN_ENV)
             for port, log in zip(ports, logs, strict=True)]
    try:
        for proc, port in zip(procs, ports, strict=True):
            wait_listening(proc, port)
    except Exception:
        stop(procs)
        for log in logs:
            print(f"--- {log.name}:\n{log.read_text()[-2000:]}")
        raise
    return procs, [f"http://127.0.0.1:{port}" for port in ports], logs


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> list[int | None]:
    """SIGTERM (a drain), then each exit code; killed after 30 s (None)."""
    global _stopped_at
    _stopped_at = time.time()
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=30))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)
    return codes


_stopped_at = 0.0  # when stop() last sent SIGTERM


def _when(line: str) -> str:
    """'' or ' (after SIGTERM)' / ' (before SIGTERM)', from a log line's timestamp."""
    try:
        at = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return ""
    return " (after SIGTERM)" if at >= _stopped_at else " (before SIGTERM)"


def orphans() -> int:
    """Sandboxes (bwrap) of this checkout's flowrun whose server is gone: reparented to
    pid 1. flowrun's next start kills them (``sweep_orphans``, any checkout's); counted
    here to see whether a drain leaves any."""
    found, worker = 0, os.fsencode(ROOT / "flowrun" / "engine" / "code_worker.py")
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        if ppid == "1" and argv[0].endswith(b"bwrap") and any(worker in a for a in argv):
            found += 1
    return found


def problems(logs: Sequence[Path], codes: Sequence[int | None]) -> str:
    """What the processes' logs (at --log-level warning) and exit codes say went wrong."""
    said = []
    for i, (log, code) in enumerate(zip(logs, codes, strict=True), 1):
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if _PROBLEM.search(line)]
        if lines:
            said.append(f"process {i}: {len(lines)} warning/error lines, first"
                        f"{_when(lines[0])}: {lines[0].strip()[:200]!r}")
        if code != 0:
            said.append(f"process {i} exited with {code if code is not None else 'a kill'} "
                        "after SIGTERM")
    if left := orphans():
        said.append(f"{left} orphaned code sandboxes (bwrap, parent pid 1) of this "
                    "checkout after the stop")
    return "; ".join(said) or "no warning or error in the processes' logs; all exited 0"


def pct(values: Sequence[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values) + "%"


def explain(name: str, b: Burst, procs: Sequence[int], postmaster: int | None,
            mine: Sequence[int] = (), pg_stats: dict[str, float] | None = None) -> str:
    """What the samples say bounds the burst. ``mine``: the backends of this bench's
    own connections (their CPU is the bench's, not flowrun's PostgreSQL work)."""
    u, cores = b.whole, os.cpu_count() or 1
    cap, used = cores * 100, u.busy + u.steal
    flow = [u.trees[p] for p in procs]
    threads = [u.threads[p] + [0.0, 0.0] for p in procs]
    ours = sum(u.trees[p] for p in mine)
    pg = u.trees[postmaster] - ours if postmaster else 0.0
    others = u.other

    def ms(percent: float) -> float:  # CPU milliseconds per run
        return percent / 100 * u.seconds / b.runs * 1000

    per_run = ms(sum(flow)) + ms(pg) + ms(u.irq)
    text = (f"{name}: CPU over the {u.seconds:.1f} s (100% = one core): flowrun "
            f"{pct(flow)} (its busiest threads: "
            + ", ".join(f"{t[0]:.0f}+{t[1]:.0f}%" for t in threads) + ")"
            + (f", PostgreSQL {pg:.0f}%" if postmaster else "")
            + f", the kernel's irq/softirq (loopback TCP) {u.irq:.0f}%, wrk {u.reaped:.0f}% "
            f"(while submitting {b.submitting.reaped:.0f}%; wrk's p50 "
            f"{'/'.join(f'{r.p50_ms:.0f}' for r in b.wrk)} ms: the servers queue, not wrk), "
            f"this bench {u.bench + ours:.0f}%, other processes {others:.0f}%"
            + (" (" + ", ".join(f"{n} {v:.0f}%" for v, n, _ in u.others[:2]) + ")"
               if others >= 5 else "")
            + f"; the machine {used:.0f}% of {cap}%"
            + (f" (steal {u.steal:.0f}%)" if u.steal >= 5 else "")
            + (f", iowait {u.iowait:.0f}%" if u.iowait >= 5 else "")
            + f". Per run: flowrun {ms(sum(flow)):.2f} ms of CPU"
            + (f", PostgreSQL {ms(pg):.2f} ms" if postmaster else "")
            + f", kernel {ms(u.irq):.2f} ms: {cores} cores doing nothing else would "
            f"finish at most {cores * 1000 / per_run:,.0f} runs/s at this cost.")
    w = b.writers
    if w:
        text += (f" Writer connections ({w['writers']:.0f}; each process writes every "
                 f"statement in turn on one): inside PostgreSQL {w['active']:.0f}% of the "
                 f"time (on WAL I/O {w['wal']:.0f}%), between the statements of a "
                 f"transaction, waiting for flowrun, {w['in_transaction']:.0f}%, idle "
                 f"{w['idle']:.0f}%.")
    if pg_stats and "writes" in pg_stats:
        text += (f" Per run, flowrun sent {pg_stats['writes']:.1f} statements through the "
                 f"writer and {pg_stats['reads']:.1f} reads, which PostgreSQL executed in "
                 f"{pg_stats['exec_ms']:.2f} ms.")
    if pg_stats:
        text += (f" PostgreSQL: {pg_stats['commits']:.2f} commits and "
                 f"{pg_stats['syncs']:.2f} WAL flushes per run, a flush "
                 f"{pg_stats['sync_ms']:.2f} ms on average ({pg_stats['sync_share']:.0f}% "
                 "of the burst spent flushing).")
    busiest = max(flow)
    writer_busy = 100 - w["idle"] if w else 0.0
    own = [(used / cores, f"the machine's cores ({used:.0f}% of {cap}%)"),
           (busiest, f"the flowrun process ({busiest:.0f}% of a core)"),
           *([(writer_busy, f"the writer connection (busy {writer_busy:.0f}%: "
               f"{w['in_transaction']:.0f}% between statements waiting for flowrun, "
               f"{w['active']:.0f}% inside PostgreSQL)")] if w else [])]
    if used >= 0.85 * cap and others >= 20:
        # Someone else's work took a good part of the cores: say so, and what of ours
        # came nearest to its limit anyway.
        nearest = max(own[1:])
        bound = (f"the {cores} cores are saturated, {others:.0f}% by other processes on "
                 f"this shared machine, so this figure depends on them; of the burst's own "
                 f"(flowrun {sum(flow):.0f}%, PostgreSQL {pg:.0f}%), the nearest to its "
                 f"limit is {nearest[1]}")
    elif used >= 0.85 * cap:
        bound = (f"the {cores} cores are saturated, so CPU: flowrun takes "
                 f"{sum(flow):.0f}%, PostgreSQL {pg:.0f}%, the kernel {u.irq:.0f}%, "
                 f"other processes {others:.0f}%")
        if len(procs) > 1:
            bound += (f"; {len(procs)} flowrun processes and PostgreSQL compete for "
                      f"{cores} cores, so another process cannot add throughput here")
    elif busiest >= 85:
        bound = (f"the flowrun process's one core: its Python threads share one GIL and "
                 f"together use {busiest:.0f}% of a core (busiest threads "
                 + ", ".join(f"{t[0]:.0f}+{t[1]:.0f}%" for t in threads)
                 + f") while {cap - used:.0f}% of the machine is idle")
    elif writer_busy >= 85:
        bound = (f"the writer connection: busy {writer_busy:.0f}% of the time, mostly "
                 + ("waiting for flowrun between statements (a round trip and Python per "
                    "statement, one statement at a time)"
                    if w and w["in_transaction"] >= w["active"] else
                    "inside PostgreSQL")
                 + f", while no core is saturated ({used:.0f}% of {cap}%) nor any "
                 f"flowrun process ({busiest:.0f}% at most)")
    else:
        bound = (f"nothing measured is saturated; the nearest is {max(own)[1]}: the "
                 "processes wait on each other (latency, not capacity)")
    return f"{text} Bound: {bound}."


def _pg_counters(url: str) -> dict[str, float]:
    """The database's commits and the server's WAL flushes so far. A backend reports
    its counts when it ends (or now and then), so read this with the processes gone;
    this connection's own 2 statements are counted after it ends."""
    db = Db(url)
    try:
        [(commits,)] = db("SELECT xact_commit FROM pg_stat_database "
                          "WHERE datname = current_database()")
        [(syncs, sync_ms)] = db("SELECT wal_sync, wal_sync_time FROM pg_stat_wal")
    finally:
        db.close()
    return {"commits": commits, "syncs": syncs, "sync_ms": sync_ms}


def _admin(server: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = Db(server.admin_url)
    try:
        return db(sql, *args)
    finally:
        db.close()


def _statements(server: Any, url: str, runs: int) -> dict[str, float]:
    """flowrun's statements on ``url``'s database since the last reset, per run, from
    pg_stat_statements: those the writer sends (one after the other), the reads, and
    the time PostgreSQL spent executing them."""
    found = _admin(server, "SELECT query, calls, total_exec_time FROM pg_stat_statements "
                   "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = ?)",
                   url.rsplit("/", 1)[1])
    writes = reads = 0
    exec_ms = 0.0
    for sql, calls, total in found:
        if MARK.strip() in sql:
            continue
        exec_ms += total
        if sql.lstrip().upper().startswith(_WRITES) or "pg_notify" in sql:
            writes += calls
        else:
            reads += calls
    return {"writes": writes / runs, "reads": reads / runs, "exec_ms": exec_ms / runs}


def start_postgres(work: Path) -> Any:
    """A durable PostgreSQL server, started as tests/pg.py starts the tests' one."""
    try:
        from tests.pg import PostgresServer, _bindir
    except ImportError as exc:
        raise Skipped(f"tests/pg.py cannot be imported ({exc})") from None
    bindir = _bindir()
    if bindir is None:
        raise Skipped("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; "
                      "`make postgres` installs Debian's postgresql package)")

    settings = dict(PG_SETTINGS)
    if (bindir.parent / "lib" / "pg_stat_statements.so").exists():
        settings["shared_preload_libraries"] = "pg_stat_statements"  # statements per run

    class DurablePostgres(PostgresServer):
        settings: dict[str, str]

        def start(self) -> None:
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                      "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                       + " ".join(f"-c {k}={v}" for k, v in self.settings.items()))
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                      str(self.root / "server.log"), "-o", options, "-w", "-t", "60",
                      "start")

    server = DurablePostgres(bindir)
    server.settings = settings
    try:
        server.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            server.stop()
        raise Skipped(f"PostgreSQL did not start: {str(exc)[:300]}") from None
    return server


def sqlite_burst(flows: Path, work: Path, rows: Rows, notes: list[str]) -> None:
    """The burst on a fresh SQLite server, measured as the PostgreSQL ones are."""
    db = work / "fresh.db"
    procs, urls, logs = start_servers(str(db), 1, flows, work, "sqlite")
    try:
        warm_up(urls)
        query = Db(db)
        try:
            b = burst(urls, query, [procs[0].pid], [procs[0].pid])
        finally:
            query.close()
    finally:
        codes = stop(procs)
    rows.append((f"burst on SQLite, fresh server: {b.runs:,} runs, all finished after",
                 b.row(), "-"))
    notes.append(explain("SQLite, fresh server", b, [procs[0].pid], None))
    notes.append(f"SQLite: {problems(logs, codes)}.")


def postgres_bursts(flows: Path, work: Path, rows: Rows, notes: list[str]) -> None:
    server = start_postgres(work)
    try:
        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
        admin = Db(server.admin_url)
        [(version,)] = admin("SHOW server_version")
        if "shared_preload_libraries" in server.settings:
            admin("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        admin.close()
        notes.append(f"PostgreSQL {version} (Debian's binaries, as tests/pg.py starts them), "
                     "one server on this machine's disk, durable: "
                     + ", ".join(f"{k}={v}" for k, v in server.settings.items())
                     + ", the rest default; a fresh database for each process count; each "
                     "process started as the SQLite server is (--no-auth, "
                     + ", ".join(f"{k}={v}" for k, v in FLOWRUN_ENV.items())
                     + ", default heartbeat_s and lease_s); one wrk per process, "
                     f"{CONCURRENCY} connections each, {BURST:,} runs in all.")
        for count in PROCESSES:
            url = server.database()
            try:
                one_count(server, url, count, postmaster, flows, work, rows, notes)
            except Exception as exc:  # said in the report; the other counts still run
                traceback.print_exc()
                rows.append((f"burst on PostgreSQL, {count} processes", f"FAILED: {exc}", "-"))
            finally:
                server.drop(url)
    finally:
        server.stop()


def one_count(server: Any, url: str, count: int, postmaster: int, flows: Path, work: Path,
              rows: Rows, notes: list[str]) -> None:
    name = f"PostgreSQL, {count} process{'es' if count > 1 else ''}"
    procs, urls, logs = start_servers(url, count, flows, work, f"pg{count}")
    pids = [p.pid for p in procs]
    query = Db(url)
    try:
        warm_up(urls)
        workers = [httpx.get(f"{u}/healthz", timeout=10).json()["cluster"]["worker"]
                   for u in urls]
        statements = "shared_preload_libraries" in server.settings
        if statements:
            _admin(server, "SELECT pg_stat_statements_reset()")
        counters = _pg_counters(url)
        activity = Activity(url)
        mine = [query.backend, activity.db.backend]
        b = burst(urls, query, [*pids, postmaster, *mine], pids, activity)
        b.owners = dict(query("SELECT owner, count(*) FROM runs WHERE created_at >= ? "
                              "GROUP BY owner", b.since))
    finally:
        codes = stop(procs)
        query.close()
    after = _pg_counters(url)
    syncs = after["syncs"] - counters["syncs"]
    sync_ms = after["sync_ms"] - counters["sync_ms"]
    # (leaving out this bench's own reads: the poll's, and the first _pg_counters' two)
    stats = {"commits": (after["commits"] - counters["commits"] - query.statements
                         - activity.db.statements - 2) / b.runs,
             "syncs": syncs / b.runs, "sync_ms": sync_ms / syncs if syncs else 0.0,
             "sync_share": sync_ms / 1000 / b.seconds * 100}
    if statements:
        stats.update(_statements(server, url, b.runs))
    rows.append((f"burst on {name}: {b.runs:,} runs, all finished after", b.row(), "-"))
    notes.append(explain(name, b, pids, postmaster, mine, stats))
    said = [problems(logs, codes)]
    if count > 1:
        per = [b.owners.get(w, 0) for w in workers]
        strangers = sum(n for w, n in b.owners.items() if w not in workers)
        said.insert(0, "runs per process by the owner column: "
                    + ", ".join(f"{n:,}" for n in per)
                    + " (accepted by each, by wrk's count: "
                    + ", ".join(f"{r.requests:,}" for r in b.wrk) + ")"
                    + (f", {strangers:,} owned by no live process" if strangers else ""))
    if b.statuses.keys() - {"succeeded"}:
        said.append(f"statuses: {b.statuses}")
    notes.append(f"{name}: " + "; ".join(said) + ".")


def bursts() -> tuple[Rows, list[str]]:
    """The new rows for the report and the notes that explain them."""
    rows: Rows = []
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="flowrun-bench-pg-"))
    flows = work / "workflows"
    flows.mkdir()
    shutil.copy(HERE / "three.yaml", flows)
    try:
        sqlite_burst(flows, work, rows, notes)
        try:
            postgres_bursts(flows, work, rows, notes)
        except Skipped as exc:
            rows.append(("burst on PostgreSQL, 1, 2 and 3 processes", f"skipped: {exc}", "-"))
            print(f"bench: the PostgreSQL rows are skipped: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, notes


if __name__ == "__main__":
    began = time.monotonic()
    new_rows, new_notes = bursts()
    width = max(len(r[0]) for r in new_rows)
    for measure, value, _ in new_rows:
        print(f"{measure.ljust(width)}  {value}")
    for note in new_notes:
        print(f"- {note}")
    print(f"({time.monotonic() - began:.0f} s)")
