"""django-prometheus's PostgreSQL backend (query metrics, METRICS_TOKEN set) with the
health check's grace (core.db.HealthCheckGraceMixin)."""

from django_prometheus.db.backends.postgresql import base

from core.db import HealthCheckGraceMixin


class DatabaseWrapper(HealthCheckGraceMixin, base.DatabaseWrapper):
    """django_prometheus.db.backends.postgresql's wrapper; see HealthCheckGraceMixin."""
