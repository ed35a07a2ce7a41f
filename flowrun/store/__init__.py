"""Durable state in one SQLite file: schema, migrations, the writer and the repository."""

from flowrun.store.repository import Store
from flowrun.store.writer import WriteResult

__all__ = ("Store", "WriteResult")
