"""Opening a database file: create it private, configure the connection, migrate the schema.

It sits above both connection.py (pragmas, transactions) and schema.py (the migrations), so
neither imports the other's caller.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from elipc.locations import is_url
from elipc.model import DatabaseGone, StorageError
from elipc.store import schema
from elipc.store.connection import BUSY_TIMEOUT_S, configure


def open_database(location: str, *, check_same_thread: bool = True) -> Any:
    """Open, configure and migrate the database at `location`: a PostgreSQL URL (psycopg is
    loaded only then), else an SQLite file's path (created 0600 if missing)."""
    if is_url(location):
        from elipc.store import postgres

        return postgres.open_database(location)
    return _open_sqlite(location, check_same_thread)


def _open_sqlite(path: str, check_same_thread: bool) -> sqlite3.Connection:
    _create_private(path)
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
            check_same_thread=check_same_thread,
        )
    except sqlite3.Error as e:
        raise StorageError(f"cannot open database {path}: {e}") from None
    try:
        configure(conn)
        schema.migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def file_identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) naming the file at `path`, or None if there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def check_same_file(path: str, opened: tuple[int, int] | None) -> None:
    """Raise DatabaseGone unless `path` still names the file identified as `opened` (one
    stat: cheap enough for every writer turn)."""
    if opened is not None and file_identity(path) != opened:
        raise DatabaseGone(f"the database file {path} was deleted or replaced while elipc "
                           "was running; nothing more is written to it: restart elipc")


def open_uri(path: str) -> str:
    """A URI that opens the existing file at `path` read-write and never creates one (only
    open_database creates database files, 0600)."""
    import urllib.parse  # the server's pools only: keep it off the CLI's start-up

    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"


def _create_private(path: str) -> None:
    # SQLite gives its -wal and -shm files the database file's mode, so 0600 here covers all.
    if path == ":memory:" or os.path.exists(path):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as e:
        raise StorageError(f"cannot create database {path}: {e.strerror}") from None
