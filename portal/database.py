"""Engine settings that make SQLite safe for a web server with several processes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

_installed = False


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    # WAL lets readers go on while one process writes; FULL syncs each commit to disk.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # SQLite's lower() knows only ASCII: « élections » must find « Élections ».
    dbapi_connection.create_function("lower", 1, _lower, deterministic=True)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


@contextmanager
def unsynced(connection: Connection) -> Iterator[Connection]:
    """One transaction on ``connection`` whose commit does not wait for the disk.

    Only for counters: a download must not cost an fsync. Such a commit is atomic and
    survives the process being killed; only a power cut or a kernel crash within the next
    moment may undo it, never half of it. PostgreSQL: ``synchronous_commit`` off for this
    transaction alone. SQLite (WAL): ``synchronous=NORMAL`` around it, FULL again before
    the connection goes back to the pool, or the connection is thrown away.
    """
    dialect = connection.dialect.name
    sqlite = dialect == "sqlite"
    if sqlite:
        connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
        connection.commit()
    try:
        with connection.begin():
            if dialect == "postgresql":
                connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield connection
    finally:
        if sqlite:
            try:
                connection.exec_driver_sql("PRAGMA synchronous=FULL")
                connection.commit()
            except BaseException:
                # A connection left unsynced must never commit a document.
                connection.invalidate()
                raise


def init_app(app: Flask) -> None:
    """Install the SQLite connection settings once per process."""
    global _installed
    if not _installed:
        event.listen(Engine, "connect", _sqlite_pragmas)
        _installed = True
