"""``flowrun keys`` and ``flowrun secrets``: an instance's API keys and secrets, managed
through its database, a file or a PostgreSQL URL (no server needed; beside a running
one too).

Commands that read or remove need an existing database: run in the wrong folder they
must say so, not answer from a new, empty one. Commands that store (keys create,
secrets set) may create it, to provision a server before its first start, and say so.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

import anyio

from flowrun.errors import FlowrunError
from flowrun.features import keys
from flowrun.features.keys import create_api_key
from flowrun.features.vault import check_secret
from flowrun.runs import access
from flowrun.settings import Settings, safe_url
from flowrun.store import Store


def _database(settings: Settings, *, may_create: bool) -> bool:
    """Whether the command may go on with ``settings.database``; says why not. (A
    PostgreSQL database is the operator's to create: connecting says if it is not there.)"""
    path = settings.database
    if isinstance(path, str) or path.exists():
        return True
    if may_create:
        print(f"created a new database {path}", file=sys.stderr)
        return True
    print(f"error: no database {path} here; give its path with --db (or $FLOWRUN_DB_PATH), "
          f"or start 'flowrun serve' to create it", file=sys.stderr)
    return False


def _shown(database: Path | str) -> str:
    """The database as messages name it (a URL without its password)."""
    return str(database) if isinstance(database, Path) else safe_url(database)


async def _create_key(store: Store, args: argparse.Namespace, db: str) -> int:
    try:
        if args.scope == access.Scope.RUN.value:
            unchecked = await keys.check_binding(
                store, args.workflow or None, allow_unknown=args.allow_unknown_workflow,
                where=f" in {db}", hint="--allow-unknown-workflow binds the key anyway")
            if unchecked and not args.allow_unknown_workflow:
                print(f"note: no workflow is registered in {db} yet; the key is bound to "
                      f"{', '.join(unchecked)} unchecked", file=sys.stderr)
        record, secret = await create_api_key(
            store, name=args.name, scope=access.Scope(args.scope), workflows=args.workflow or None,
            allow_unknown=True)  # (checked just now, with the CLI's words)
    except FlowrunError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(secret)
    print(f"id {record.id}", file=sys.stderr)
    return 0


async def _revoke_key(store: Store, given: str) -> int:
    """Revoke the live key ``given`` names: its id, its display prefix, or the key."""
    live = [key for key in await store.list_api_keys() if key.revoked_at is None]
    matches = [key for key in live if given in (key.id, key.prefix)]
    if not matches and given.startswith(keys.KEY_PREFIX):
        found = await store.find_api_key(keys.hash_key(given))
        matches = [found] if found is not None else []
    # Never echo a whole key back: its display prefix says which one was meant.
    shown = given if len(given) <= 10 else given[:10] + "…"
    if not matches:
        print(f"error: no active key matches {shown!r} (give a key id or prefix from "
              f"'keys list', or the key itself)", file=sys.stderr)
        return 1
    if len(matches) > 1:
        print(f"error: {shown!r} matches {len(matches)} keys "
              f"({', '.join(key.id for key in matches)}); give the key id", file=sys.stderr)
        return 1
    key = matches[0]
    await store.revoke_api_key(key.id)
    print(f"revoked key {key.id} ({key.prefix}…, {key.scope}, {key.name or 'no name'})")
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    if not _database(settings, may_create=args.keys_cmd == "create"):
        return 2

    async def main() -> int:
        async with Store.open(settings.database) as store:
            if args.keys_cmd == "create":
                return await _create_key(store, args, _shown(settings.database))
            if args.keys_cmd == "list":
                for key in await store.list_api_keys():
                    state = "revoked" if key.revoked_at else "active"
                    print(f"{key.id}  {key.prefix}…  {state:7}  {key.scope:5}  "
                          f"{key.name or '-'}  {','.join(key.workflows or ['*'])}")
                return 0
            return await _revoke_key(store, args.key)

    return anyio.run(main)


def cmd_secrets(args: argparse.Namespace, settings: Settings) -> int:
    if not _database(settings, may_create=args.secrets_cmd == "set"):
        return 2
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
        async with Store.open(settings.database) as store:
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
