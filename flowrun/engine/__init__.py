"""The engine: runs one workflow graph. Knows nothing of HTTP or SQLite."""
