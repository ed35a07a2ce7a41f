"""The ``flowrun`` command: serve, run, events, validate, keys, secrets."""

from __future__ import annotations

import argparse
import ctypes
import getpass
import json
import logging
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from flowrun import __version__, auth, definitions
from flowrun.app import create_app, load_plugins
from flowrun.auth import create_api_key
from flowrun.client import Client, ClientError
from flowrun.engine.executor import Executor
from flowrun.engine.nodes import registry
from flowrun.errors import FlowrunError
from flowrun.local import folder_services
from flowrun.progress import PrintingObserver, ProgressPrinter
from flowrun.records import RunStatus
from flowrun.serving import DrainingServer, server_config, tune_gc
from flowrun.settings import ClientSettings, Settings, SettingsError
from flowrun.store import Store
from flowrun.vault import check_secret


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return Settings.from_env(db_path=Path(args.db) if getattr(args, "db", None) else None,
                             **extra)


# --- serve -------------------------------------------------------------------------

async def _ensure_key(settings: Settings) -> str | None:
    """An admin key for a database that has none (its secret, shown once), else None."""
    async with Store.open(settings.db_path) as store:
        if await store.count_api_keys():
            return None
        _, secret = await create_api_key(store, name="initial", scope=auth.Scope.ADMIN,
                                         workflows=None)
        return secret


def _not_dumpable() -> None:
    """Keep same-user processes (code-node workers) from reading this process's memory and
    /proc/<pid>/environ, where secrets live (Linux only; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


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
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    if settings.auth_enabled:
        secret = anyio.run(_ensure_key, settings)
        if secret:
            print(f"Created an admin API key for this new database (shown once):\n"
                  f"  {secret}\nSend it as 'Authorization: Bearer <key>'. Keys for "
                  f"clients: flowrun keys create --scope run [--workflow NAME].", flush=True)
    _not_dumpable()
    app = create_app(settings)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown so the process dies by
    # the signal; a clean shutdown should exit 0, so the re-raised signal lands here.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    tune_gc()
    DrainingServer(server_config(app, settings, args.log_level), app).run()
    return 0


# --- run ---------------------------------------------------------------------------

def _parse_input(pair: str) -> tuple[str, Any]:
    key, sep, raw = pair.partition("=")
    if not sep or not key:
        raise ValueError(f"--input expects key=value, got {pair!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _coerce(definition: definitions.WorkflowDefinition, inputs: dict[str, Any]) -> dict[str, Any]:
    """Command-line values are text: turn them into the declared type where possible."""
    out = dict(inputs)
    for name, value in inputs.items():
        spec = definition.inputs.get(name)
        if spec is not None and spec.type == "string" and not isinstance(value, str):
            out[name] = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    load_plugins(tuple(args.plugin))
    try:
        definition = definitions.load_file(Path(args.file), registry=registry)
        inputs = _coerce(definition, dict(_parse_input(p) for p in args.input))
        checked = definitions.check_inputs(definition, inputs)
    except (FlowrunError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    printer = ProgressPrinter(sys.stdout)
    run_id = uuid.uuid4().hex
    printer.show("workflow_started", {"id": run_id, "workflow_id": definition.name})
    started = time.monotonic()
    executor = Executor(definition, run_id=run_id, inputs=checked,
                        observer=PrintingObserver(printer),
                        services=folder_services(Path(args.file).parent, registry))

    async def main() -> Any:
        return await executor.execute()

    try:
        outcome = anyio.run(main)
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
    load_plugins(tuple(args.plugin))
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
                definitions.check_child_workflows(
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


# --- keys --------------------------------------------------------------------------

def cmd_keys(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def main() -> int:
        async with Store.open(settings.db_path) as store:
            if args.keys_cmd == "create":
                try:
                    record, secret = await create_api_key(
                        store, name=args.name, scope=auth.Scope(args.scope),
                        workflows=args.workflow or None)
                except FlowrunError as exc:
                    print(f"error: {exc.message}", file=sys.stderr)
                    return 2
                print(secret)
                print(f"id {record.id}", file=sys.stderr)
                return 0
            if args.keys_cmd == "list":
                for key in await store.list_api_keys():
                    state = "revoked" if key.revoked_at else "active"
                    print(f"{key.id}  {key.prefix}…  {state:7}  {key.scope:5}  "
                          f"{key.name or '-'}  {','.join(key.workflows or ['*'])}")
                return 0
            count = await store.revoke_api_key(args.key)
            print(f"revoked {count} key(s)")
            return 0 if count else 1

    return anyio.run(main)


# --- secrets -----------------------------------------------------------------------

def cmd_secrets(args: argparse.Namespace) -> int:
    settings = _settings(args)
    value = None
    if args.secrets_cmd == "set":
        if sys.stdin.isatty():
            value = getpass.getpass(f"value of {args.name}: ")
        else:
            value = sys.stdin.read().rstrip("\n")
        try:
            check_secret(args.name, value, args.allow)
        except FlowrunError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2

    async def main() -> int:
        async with Store.open(settings.db_path) as store:
            if args.secrets_cmd == "set":
                assert value is not None
                created = await store.put_secret(args.name, value, args.allow)
                print(f"{'created' if created else 'replaced'} secret {args.name}; use it as "
                      f"{{{{ secrets.{args.name} }}}} in requests to {', '.join(args.allow)}")
                return 0
            if args.secrets_cmd == "list":
                for record in await store.list_secrets():
                    print(f"{record.name}  {', '.join(record.allowed_urls)}")
                return 0
            if await store.delete_secret(args.name):
                print(f"deleted secret {args.name}")
                return 0
            print(f"error: no secret {args.name!r}", file=sys.stderr)
            return 1

    return anyio.run(main)


def _db_option(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--db`` on a command and on each of its subcommands, so either order works."""
    parser.add_argument("--db", default=None if top else argparse.SUPPRESS,
                        help="SQLite file (default flowrun.db or $FLOWRUN_DB_PATH)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowrun", description="flowrun: a self-hosted workflow run server.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)

    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--db", default=None, help="SQLite file (default flowrun.db)")
    serve.add_argument("--workflows", default=None, help="folder of workflow files to register")
    serve.add_argument("--no-auth", action="store_true", help="no API keys (loopback only)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser("run", help="run a workflow file in-process and print its progress")
    run.add_argument("file")
    run.add_argument("--input", "-i", action="append", default=[], metavar="KEY=VALUE")
    run.set_defaults(func=cmd_run)

    events = sub.add_parser("events", help="follow a run's live events on a server")
    events.add_argument("run_id")
    client_defaults = ClientSettings.from_env()
    events.add_argument("--url", default=client_defaults.url,
                        help="server URL (default: $FLOWRUN_URL or http://127.0.0.1:8000)")
    events.add_argument("--key", default=client_defaults.api_key,
                        help="API key (default: $FLOWRUN_API_KEY)")
    events.add_argument("--after", type=int, default=None, help="resume after this event")
    events.set_defaults(func=cmd_events)

    validate = sub.add_parser("validate", help="check workflow files")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=cmd_validate)

    keys = sub.add_parser("keys", help="manage API keys")
    _db_option(keys, top=True)
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", default=None)
    create.add_argument("--scope", choices=[s.value for s in auth.Scope],
                        default=auth.Scope.RUN.value,
                        help="run (default): start and follow its own runs; admin: also "
                             "register workflows, manage keys and secrets, see every run")
    create.add_argument("--workflow", action="append", default=[], metavar="NAME",
                        help="bind a run key to this workflow (repeat for more)")
    listing = keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key", help="key id or prefix")
    for p in (create, listing, revoke):
        _db_option(p)
    keys.set_defaults(func=cmd_keys)

    secrets = sub.add_parser("secrets", help="manage secrets that node requests may send")
    _db_option(secrets, top=True)
    secrets_sub = secrets.add_subparsers(dest="secrets_cmd", required=True)
    put = secrets_sub.add_parser(
        "set", help="store a secret, its value read from stdin (or a prompt)")
    put.add_argument("name")
    put.add_argument("--allow", action="append", default=[], required=True, metavar="URL",
                     help="a URL prefix the secret may be sent to (repeat for more)")
    listing = secrets_sub.add_parser("list", help="list secrets (never their values)")
    delete = secrets_sub.add_parser("delete", help="delete a secret")
    delete.add_argument("name")
    for p in (put, listing, delete):
        _db_option(p)
    secrets.set_defaults(func=cmd_secrets)

    for p in (serve, run, validate):
        p.add_argument("--plugin", action="append", default=[],
                       help="import a module that registers custom node types")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
