"""Process-wide mutual exclusion through the database: PostgreSQL advisory locks.

Start-up steps that every process runs (`migrate`, `platform_setup`: `make run` and
`make worker` both do) must not run twice at once on one database: two `migrate`s on a
fresh PostgreSQL database both see a table missing and both create it ("relation
already exists"). Under the lock the second waits, then finds the work done. SQLite
needs the same: it serialises single writes, not a whole `migrate` (each migration is
its own transaction, planned before the first one runs), so two `migrate`s on one fresh
file interleave and one fails the same way; there the lock is an exclusive `flock` on a
file beside the database's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections


@contextmanager
def advisory_lock(name: str, *, using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock keyed by `name` (hashtext: a 32-bit key)
    for the block, waiting as long as another process holds it. On a SQLite file, an
    exclusive `flock` on `<database>.<name>.lock` beside it (`_file_lock`); nothing on
    an in-memory database or another engine.

    The lock lives on a connection of its own, opened here and closed after the block
    (which releases it even if the process dies): the block's own queries may close or
    replace Django's connection without letting the lock go early.
    """
    connection = connections[using]
    if connection.vendor == "sqlite":
        with _file_lock(connection.settings_dict["NAME"], name):
            yield
        return
    if connection.vendor != "postgresql":
        yield
        return
    raw = connection.get_new_connection(connection.get_connection_params())
    try:
        raw.autocommit = True
        with raw.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(hashtext(%s))", [name])
        yield
    finally:
        raw.close()  # ends the session, and with it the lock


@contextmanager
def _file_lock(database: object, name: str) -> Iterator[None]:
    """An exclusive, blocking `flock` on a lock file beside the SQLite database `database`
    (a path), for the block; released when the file closes (or the process dies).
    Nothing for an in-memory database, or where `fcntl` does not exist (Windows)."""
    path = str(database or "")
    if not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # (no flock on Windows: one process at a time is the operator's)
        yield
        return
    safe = "".join(c if c.isalnum() else "-" for c in name)
    lock_path = Path(f"{path}.{safe}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# How long a new SQLite connection retries switching the file to WAL while another
# process holds a lock on it (seconds), as the sqlite3 `timeout` in settings waits for
# ordinary statements.
WAL_SWITCH_SECONDS = 30.0


def sqlite_wal_enable(sender: object, connection: Any, **kwargs: Any) -> None:
    """`connection_created` receiver: put a SQLite file database in write-ahead-log mode
    (readers run while the in-process worker writes; settings.py). The mode is stored in
    the file, so only the first connection to a fresh database changes anything; but
    that change needs the file to itself, and SQLite answers "database is locked" at
    once, without waiting out its busy timeout, when another process is using it (two
    starts on one fresh file: `make run` and `make worker`, or a `migrate` beside
    another's system checks). So it is retried here, every 50 ms for up to
    WAL_SWITCH_SECONDS, then raised. Nothing for other engines or in-memory databases.
    It runs on the raw sqlite3 connection (not through Django's cursor: no statement
    is logged or counted)."""
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return
    from sqlite3 import OperationalError

    deadline = time.monotonic() + WAL_SWITCH_SECONDS
    while True:
        try:
            connection.connection.execute("PRAGMA journal_mode=WAL")
            return
        except OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
