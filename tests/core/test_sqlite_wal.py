"""SQLite file databases are switched to WAL as each connection opens
(core.db_locks.sqlite_wal_enable), with retries: on a fresh file with another process
starting beside it (`make run` and `make worker`), SQLite can answer that switch
"database is locked" at once instead of waiting out its busy timeout, which failed one
of two starts. That answer comes from a race inside SQLite's WAL recovery that a test
cannot stage on demand; these tests check the switch itself and that a connection
opened while another process holds the file waits and then switches."""

from __future__ import annotations

import sqlite3
import threading
import time

from django.db.backends.sqlite3.base import DatabaseWrapper


def _wrapper(path) -> DatabaseWrapper:
    return DatabaseWrapper(
        {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(path),
            "OPTIONS": {"timeout": 30, "init_command": "PRAGMA synchronous=NORMAL;"},
            "TIME_ZONE": None,
            "CONN_MAX_AGE": 0,
            "CONN_HEALTH_CHECKS": False,
            "AUTOCOMMIT": True,
            "ATOMIC_REQUESTS": False,
            "USER": "",
            "PASSWORD": "",
            "HOST": "",
            "PORT": "",
            "TEST": {},
        }
    )


def test_a_fresh_file_is_switched_to_wal_after_another_process_lets_go(tmp_path, django_db_blocker):
    path = tmp_path / "db.sqlite3"
    holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-migration: the file is taken
    threading.Timer(0.5, lambda: holder.execute("COMMIT")).start()
    connection = _wrapper(path)
    started = time.monotonic()
    try:
        with django_db_blocker.unblock():
            connection.ensure_connection()  # without the retries: "database is locked" at once
        waited = time.monotonic() - started
        assert connection.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()
        holder.close()
    assert waited >= 0.4


def test_every_new_connection_finds_the_file_in_wal(tmp_path, django_db_blocker):
    path = tmp_path / "db.sqlite3"
    for _ in range(2):
        connection = _wrapper(path)
        with django_db_blocker.unblock():
            connection.ensure_connection()
        connection.close()
    assert sqlite3.connect(str(path)).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
