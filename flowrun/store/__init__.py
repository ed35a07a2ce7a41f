"""Durable state in one SQLite file: schema, migrations, the writer and the Store on top."""

from flowrun.store.sqlite import Store
from flowrun.store.writer import WriteResult

__all__ = ("Store", "WriteResult")
