"""Django's PostgreSQL backend with the health check's grace (core.db.HealthCheckGraceMixin)."""

from django.db.backends.postgresql import base

from core.db import HealthCheckGraceMixin


class DatabaseWrapper(HealthCheckGraceMixin, base.DatabaseWrapper):
    """django.db.backends.postgresql's wrapper; see HealthCheckGraceMixin."""
