"""The ``flowrun`` command: serve, run, events, validate, keys, secrets."""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import logging
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from flowrun import __version__
from flowrun.app import create_app, load_plugins
from flowrun.cli import admin
from flowrun.cli.progress import PrintingObserver, ProgressPrinter
from flowrun.cli.serving import DrainingServer, server_config, tune_gc
from flowrun.client import Client, ClientError
from flowrun.engine.nodes import registry
from flowrun.errors import FlowrunError, Unavailable
from flowrun.features import keys
from flowrun.language import checks, definitions
from flowrun.records import RunStatus
from flowrun.runs import access
from flowrun.runs.local import run_workflow
from flowrun.settings import ClientSettings, Settings, SettingsError
from flowrun.store import Store


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return Settings.from_env(db=getattr(args, "db", None), **extra)


def _plugins(args: argparse.Namespace) -> tuple[str, ...]:
    """``--plugin`` modules, else ``FLOWRUN_PLUGINS`` (as for ``serve``)."""
    return _settings(args, plugins=tuple(args.plugin) or None).plugins


# --- serve -------------------------------------------------------------------------

async def _ensure_key(settings: Settings) -> str | None:
    """An admin key for a database that has none (its secret, shown once), else None."""
    async with Store.open(settings.database) as store:
        if not settings.auth_enabled or await store.count_api_keys():
            return None
        return await keys.create_first_api_key(store)


def _not_dumpable() -> None:
    """Keep same-user processes (code-node workers) from reading this process's memory and
    /proc/<pid>/environ, where secrets live (Linux only; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _workflow_problems(folder: Path) -> list[str]:
    """Why ``serve --workflows folder`` could not load it: one line per bad file."""
    if not folder.exists():
        return [f"error: workflows folder {folder} does not exist"]
    try:
        files = definitions.workflow_files(folder)
    except OSError as exc:
        return [f"error: cannot read workflows folder {folder}: {exc.strerror or exc}"]
    bad = []
    for path in files:
        try:
            definitions.load_file(path, registry=registry)
        except FlowrunError as exc:
            bad.append(f"  {exc.message}")
    if not bad:
        return []
    many = len(bad) > 1
    return [f"error: {len(bad)} workflow file{'s' if many else ''} in {folder} "
            f"{'are' if many else 'is'} invalid:", *bad]


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound now (uvicorn listens on it once the app has started),
    so that a port in use stops ``serve`` before anything else happens.

    Its protocol is named (IPPROTO_TCP, not 0): asyncio sets TCP_NODELAY only on
    connections accepted from such a socket, and without it a response written in two
    parts waits for the client's delayed ACK, ~40 ms per request on a kept-alive
    connection."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


class _Server(DrainingServer):
    """uvicorn on a socket bound beforehand, announcing where it serves as it does."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            logging.getLogger("uvicorn.error").info("Uvicorn running on %s (Press CTRL+C "
                                                    "to quit)", url)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, host=args.host, port=args.port,
                         workflows_dir=Path(args.workflows) if args.workflows else None,
                         plugins=tuple(args.plugin) or None)
    if args.no_auth:
        settings = settings.replace(auth_enabled=False)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiosqlite logs every statement with its parameters at debug level: secret values
    # and run inputs must not reach the log, whatever the level asked for.
    for name in ("aiosqlite", "psycopg"):  # (psycopg: connection strings)
        logging.getLogger(name).setLevel(logging.INFO)
    # Whatever can stop the start (a plugin, a workflow file, the port) is checked before
    # a new database gets its admin key: that key is printed once, and a start that
    # fails after printing it would lose it. PluginError reaches main() as one line.
    load_plugins(settings.plugins)
    if settings.workflows_dir is not None:
        problems = _workflow_problems(settings.workflows_dir)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 2
    try:
        sock = _listening_socket(settings.host, settings.port)
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    with sock:
        secret = anyio.run(_ensure_key, settings)  # Unavailable reaches main() as one line
        if secret:
            print(f"Created an admin API key for this new database (shown once):\n"
                  f"  {secret}\nSend it as 'Authorization: Bearer <key>'. Keys for "
                  f"clients: flowrun keys create --scope run [--workflow NAME].",
                  flush=True)
        _not_dumpable()
        app = create_app(settings)
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown so the process dies
        # by the signal; a clean shutdown should exit 0, so the re-raised signal lands here.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_cleanly)
        tune_gc()
        _Server(server_config(app, settings, args.log_level), app).run(sockets=[sock])
    return 0


# --- run ---------------------------------------------------------------------------

# What ``-i key=value`` must hold for each declared input type other than string.
_WANTED = {"number": "a number", "integer": "an integer", "boolean": "true or false",
           "object": "a JSON object", "array": "a JSON array", "file": "a JSON file object"}


def _typed(kind: str, raw: str) -> tuple[bool, Any]:
    """(whether ``raw`` is JSON of type ``kind``, its value)."""

    def refuse(name: str) -> None:
        raise ValueError(name)  # NaN and Infinity are not JSON

    try:
        value = json.loads(raw, parse_constant=refuse)
    except ValueError:
        return False, None
    if kind == "boolean":
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, value
    if kind == "integer":
        return isinstance(value, int), value
    if kind == "number":
        return isinstance(value, int | float), value
    return isinstance(value, list if kind == "array" else dict), value


def _parse_inputs(definition: definitions.WorkflowDefinition,
                  pairs: list[str]) -> dict[str, Any]:
    """``-i key=value`` pairs by each input's declared type: a string input takes the
    text as it is, any other type its JSON (``-i n=3``, ``-i tags='["a"]'``)."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--input expects key=value, got {pair!r}")
        spec = definition.inputs.get(key)
        if spec is None or spec.type == "string":
            inputs[key] = raw  # an undeclared name is reported by check_inputs
            continue
        ok, value = _typed(spec.type, raw)
        if not ok:
            raise ValueError(f"--input {key}: expected {_WANTED[spec.type]}, got {raw!r}")
        inputs[key] = value
    return inputs


def cmd_run(args: argparse.Namespace) -> int:
    load_plugins(_plugins(args))
    try:
        definition = definitions.load_file(Path(args.file), registry=registry)
        checked = definitions.check_inputs(definition, _parse_inputs(definition, args.input))
    except (FlowrunError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Progress is for the person watching; stdout carries only the outputs (| jq).
    printer = ProgressPrinter(sys.stderr, result=sys.stdout)
    run_id = uuid.uuid4().hex
    printer.show("workflow_started", {"id": run_id, "workflow_id": definition.name})
    started = time.monotonic()
    run = functools.partial(run_workflow, definition, checked,
                            observer=PrintingObserver(printer), registry=registry,
                            folder=Path(args.file).parent, run_id=run_id)
    try:
        outcome = anyio.run(run)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    printer.show("workflow_finished", {
        "status": outcome.status.value, "elapsed_time": time.monotonic() - started,
        "outputs": outcome.outputs, "error": (outcome.error or {}).get("message")})
    return 0 if outcome.status is RunStatus.SUCCEEDED else 1


# --- events ------------------------------------------------------------------------

def cmd_events(args: argparse.Namespace) -> int:
    printer = ProgressPrinter(sys.stdout)
    status = None
    try:
        with Client(args.url, args.key) as client:
            for event in client.events(args.run_id, after=args.after):
                printer.show(event.event, event.data)
                if event.terminal:
                    status = event.data.get("status")
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0 if status == "succeeded" else 1


# --- validate ----------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    load_plugins(_plugins(args))
    bad = 0
    folders: dict[Path, dict[str, definitions.WorkflowDefinition]] = {}
    for target in args.files:
        for path in definitions.workflow_files(Path(target)):
            try:
                definition = definitions.load_file(path, registry=registry)
                # The workflows its nodes call are its sibling files, as in `flowrun run`.
                folder = path.parent
                if folder not in folders:
                    folders[folder] = definitions.load_folder(folder, registry=registry)
                checks.check_child_workflows(
                    definition, folders[folder],
                    where=f"the workflow files of {folder.resolve()}", registry=registry)
            except FlowrunError as exc:
                bad += 1
                print(f"{path}: invalid")
                for err in exc.errors or [{"message": exc.message}]:
                    print(f"  - {err['message']}")
            else:
                print(f"{path}: ok ({definition.name}, {len(definition.nodes)} nodes)")
    return 1 if bad else 0


# --- keys and secrets (flowrun/cli/admin.py) ---------------------------------------

def cmd_keys(args: argparse.Namespace) -> int:
    return admin.cmd_keys(args, _settings(args))


def cmd_secrets(args: argparse.Namespace) -> int:
    return admin.cmd_secrets(args, _settings(args))


def _db_option(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--db`` on a command and on each of its subcommands, so either order works."""
    parser.add_argument("--db", default=None if top else argparse.SUPPRESS,
                        help="database: a SQLite file, sqlite:///path or postgresql://user@"
                             "host:port/db (default: $FLOWRUN_DB, $FLOWRUN_DB_PATH or "
                             "flowrun.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowrun", description="flowrun: a self-hosted workflow run server.")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}",
                        help="print flowrun's version and exit")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND",
                                help="what to do (each has its own --help)")

    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default=None,
                       help="address to listen on (default: $FLOWRUN_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None,
                       help="port to listen on (default: $FLOWRUN_PORT or 8000)")
    serve.add_argument("--db", default=None,
                       help="database: a SQLite file (created if missing), sqlite:///path "
                            "or postgresql://user@host:port/db (default: $FLOWRUN_DB, "
                            "$FLOWRUN_DB_PATH or flowrun.db)")
    serve.add_argument("--workflows", default=None, metavar="FOLDER",
                       help="register every workflow file in FOLDER at start (default: "
                            "$FLOWRUN_WORKFLOWS_DIR)")
    serve.add_argument("--no-auth", action="store_true",
                       help="serve without API keys (only on a loopback host)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug", "trace"],
                       help="how much to log (default: info)")
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser("run", help="run a workflow file in-process: its progress on stderr, "
                              "its outputs (JSON) on stdout")
    run.add_argument("file", help="workflow file (.yaml, .yml or .json); the workflows it "
                                  "calls are looked for beside it")
    run.add_argument("-i", "--input", action="append", default=[], metavar="KEY=VALUE",
                     help="an input of the workflow (repeat for more): a string input takes "
                          "VALUE as it is; number, integer, boolean, object and array inputs "
                          "take JSON (-i n=3 -i tags='[\"a\"]')")
    run.set_defaults(func=cmd_run)

    events = sub.add_parser("events", help="follow a run's live events on a server")
    events.add_argument("run_id", help="the run's id")
    client_defaults = ClientSettings.from_env()
    events.add_argument("--url", default=client_defaults.url,
                        help="server URL (default: $FLOWRUN_URL or http://127.0.0.1:8000)")
    events.add_argument("--key", default=client_defaults.api_key,
                        help="API key (default: $FLOWRUN_API_KEY)")
    events.add_argument("--after", type=int, default=None, help="resume after this event")
    events.set_defaults(func=cmd_events)

    validate = sub.add_parser("validate", help="check workflow files")
    validate.add_argument("files", nargs="+", metavar="PATH",
                          help="a workflow file, or a folder of them")
    validate.set_defaults(func=cmd_validate)

    keys = sub.add_parser("keys", help="manage API keys")
    _db_option(keys, top=True)
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION",
                                   help="create, list or revoke")
    create = keys_sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", default=None, help="a label for the key in 'keys list'")
    create.add_argument("--scope", choices=[s.value for s in access.Scope],
                        default=access.Scope.RUN.value,
                        help="run (default): start and follow its own runs; admin: also "
                             "register workflows, manage keys and secrets, see every run")
    create.add_argument("--workflow", action="append", default=[], metavar="NAME",
                        help="bind a run key to this workflow (repeat for more); it must be "
                             "registered in the database, once any workflow is")
    create.add_argument("--allow-unknown-workflow", action="store_true",
                        help="bind to --workflow names that are not registered (yet)")
    listing = keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key", help="the key's id, its prefix as 'keys list' shows it, or "
                                    "the whole key")
    for p in (create, listing, revoke):
        _db_option(p)
    keys.set_defaults(func=cmd_keys)

    secrets = sub.add_parser("secrets", help="manage secrets that node requests may send")
    _db_option(secrets, top=True)
    secrets_sub = secrets.add_subparsers(dest="secrets_cmd", required=True, metavar="ACTION",
                                         help="set, list or delete")
    put = secrets_sub.add_parser(
        "set", help="store a secret, its value read from stdin (or a prompt)")
    put.add_argument("name", help="the secret's name, used as {{ secrets.NAME }}")
    put.add_argument("--allow", action="append", default=[], required=True, metavar="URL",
                     help="a URL prefix the secret may be sent to (repeat for more)")
    listing = secrets_sub.add_parser("list", help="list secrets (never their values)")
    delete = secrets_sub.add_parser("delete", help="delete a secret")
    delete.add_argument("name", help="the secret's name")
    for p in (put, listing, delete):
        _db_option(p)
    secrets.set_defaults(func=cmd_secrets)

    for p in (serve, run, validate):
        p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                       help="a module name (found in the current folder first) or .py file "
                            "that registers custom node types; repeat for more "
                            "(default: $FLOWRUN_PLUGINS, comma-separated)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:  # the database cannot be opened, or another server has it
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
