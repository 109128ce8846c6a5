"""Database backends: Django's PostgreSQL backend (and django-prometheus's wrapper of it,
when METRICS_TOKEN is set) with one change, the health check's grace
(`HealthCheckGraceMixin`). Named in DATABASES["default"]["ENGINE"] by platform/settings.py."""

from __future__ import annotations

import time

from django.conf import settings


class HealthCheckGraceMixin:
    """CONN_HEALTH_CHECKS without a `SELECT 1` before every request or job on a connection
    that was working moments ago (issue 20: the pings were 2 of the 19 statements of one
    generation, web and worker).

    Django health-checks a reused connection once per request (the request signals, and
    the worker's close_old_connections per job, clear `health_check_done`), to catch a
    connection the server closed while it sat idle (a database restart, an idle
    timeout). Here the check is skipped when this connection opened a cursor less than
    DB_HEALTH_CHECK_GRACE_SECONDS ago (default 1.0; 0 restores Django's behaviour) and no
    error has been seen on it since; an idle connection is checked as before, and so is
    one after an error (Django's close_if_unusable_or_obsolete pings those itself). The
    cost: a restart of the database within that second fails the statements that were
    already on their way, as it fails those in flight at the moment of the restart; the
    broken connection is then closed at the request's end (errors_occurred) and replaced."""

    used_at: float = -1e9

    def close_if_health_check_failed(self) -> None:
        grace = float(getattr(settings, "DB_HEALTH_CHECK_GRACE_SECONDS", 1.0))
        if (
            self.connection is not None
            and not self.health_check_done
            and not self.errors_occurred
            and time.monotonic() - self.used_at < grace
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _cursor(self, name=None):
        cursor = super()._cursor(name)
        self.used_at = time.monotonic()
        return cursor
