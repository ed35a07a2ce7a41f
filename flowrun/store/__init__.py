"""Durable state in SQLite or PostgreSQL: the Store (every query), its backends, the
schemas and their migrations, and the group-commit writer."""

from flowrun.store.store import Store
from flowrun.store.writer import WriteResult

__all__ = ("Store", "WriteResult")
