"""Fixtures for every test folder: the PostgreSQL server (tests/pg.py)."""

pytest_plugins = ["tests.pg"]
