"""Django's `migrate`, one process at a time per database (core.db_locks).

Every way the platform starts runs `manage.py migrate` (`make run`, `make worker`, the
compose `migrate` service, the live tests), so the lock is taken here rather than in a
command of its own that an entry point could forget. Apps' commands replace Django's
own of the same name; options and output are Django's.
"""

from __future__ import annotations

from django.core.management.commands.migrate import Command as DjangoMigrate

from core.db_locks import advisory_lock

MIGRATE_LOCK = "platform:migrate"


class Command(DjangoMigrate):
    help = DjangoMigrate.help + " Waits for any other migrate on the same PostgreSQL database first."

    def handle(self, *args, **options):
        with advisory_lock(MIGRATE_LOCK, using=options["database"]):
            return super().handle(*args, **options)
