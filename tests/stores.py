"""The two stores the contract tests run against: a fresh SQLite file, or a fresh database
on the test run's own PostgreSQL server (tests/pg.py). A test class mixes one of these in
with a contract (a plain class of test methods) and a trial TestCase."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from elipc import store
from tests.helpers import new_postgres_database, temp_dir


class SQLiteStore:
    """A fresh SQLite file per test; `location` is its path."""

    dialect = "sqlite"

    def make_location(self: Any) -> str:
        return os.path.join(temp_dir(self), "ipc.db")

    def raw_rows(self: Any, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows read on a connection of the test's own (what is really stored)."""
        import sqlite3

        conn = sqlite3.connect(self.location)
        try:
            return [tuple(row) for row in conn.execute(query, params).fetchall()]
        finally:
            conn.close()


class PostgresStore:
    """A fresh database per test on this test process's PostgreSQL; `location` is its URL."""

    dialect = "postgresql"

    def make_location(self: Any) -> str:
        return new_postgres_database(self)

    def raw_rows(self: Any, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows read on a connection of the test's own (what is really stored)."""
        import psycopg

        with psycopg.connect(self.location, autocommit=True) as conn:
            statement = query.replace("%", "%%").replace("?", "%s")
            return [tuple(row) for row in conn.execute(statement, params or None).fetchall()]


class StoreCase(SynchronousTestCase):
    """A fresh store per test, opened as `self.db`; `open()` opens another connection."""

    dialect: str

    def make_location(self) -> str:
        raise NotImplementedError

    def setUp(self) -> None:
        self.location = self.make_location()
        self.db = self.open()

    def open(self, **options: Any) -> Any:
        conn = store.open_database(self.location, **options)
        self.addCleanup(conn.close)
        return conn
