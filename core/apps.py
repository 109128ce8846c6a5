from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from core.db_locks import sqlite_wal_enable

        connection_created.connect(sqlite_wal_enable, dispatch_uid="core.sqlite_wal_enable")
