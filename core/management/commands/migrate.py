"""Django's `migrate`, one process at a time per database (core.db_locks).

Every way the platform starts runs `manage.py migrate` (`make run`, `make worker`, the
compose `migrate` service, the live tests), so the lock is taken here rather than in a
command of its own that an entry point could forget. Apps' commands replace Django's
own of the same name; options and output are Django's.
"""

from __future__ import annotations

from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import connections

from core.db_locks import advisory_lock

MIGRATE_LOCK = "platform:migrate"


class Command(DjangoMigrate):
    help = DjangoMigrate.help + " Waits for any other migrate on the same PostgreSQL database first."

    def handle(self, *args, **options):
        using = options["database"]
        with advisory_lock(MIGRATE_LOCK, using=using):
            try:
                return super().handle(*args, **options)
            finally:
                _sqlite_close(using)


def _sqlite_close(using: str) -> None:
    """Close a SQLite file database's connection while the migrate lock is still held.
    The last connection to a WAL database checkpoints it as it closes; left to process
    exit, that can meet the next migrate's first statement (`PRAGMA journal_mode=WAL`,
    core.db_locks.sqlite_wal_enable, which retries rather than waits: SQLite answers it
    "database is locked" at once). Nothing for PostgreSQL, in-memory databases, or inside a transaction."""
    connection = connections[using]
    if connection.vendor == "sqlite" and not connection.is_in_memory_db() and not connection.in_atomic_block:
        connection.close()
