"""Process-wide mutual exclusion through the database: PostgreSQL advisory locks.

Start-up steps that every process runs (`migrate`, `platform_setup`: `make run` and
`make worker` both do) must not run twice at once on one database: two `migrate`s on a
fresh PostgreSQL database both see a table missing and both create it ("relation
already exists"). Under the lock the second waits, then finds the work done.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DEFAULT_DB_ALIAS, connections


@contextmanager
def advisory_lock(name: str, *, using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock keyed by `name` (hashtext: a 32-bit key)
    for the block, waiting as long as another process holds it; nothing on other
    databases (SQLite serialises writers itself, and is one machine's file).

    The lock lives on a connection of its own, opened here and closed after the block
    (which releases it even if the process dies): the block's own queries may close or
    replace Django's connection without letting the lock go early.
    """
    connection = connections[using]
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
