"""GET /metrics in Prometheus' text format, for the operator's Prometheus only.

Off unless METRICS_TOKEN is set (then a 404 like any unknown page); with it set, only a
request carrying `Authorization: Bearer $METRICS_TOKEN` is answered (401 otherwise).

What one scrape of any web process returns, and why it is built this way:

1. Counters and histograms kept in the web processes: django-prometheus (requests by
   view, method and status, latencies, response sizes; database queries and errors when
   metrics are on) and ours below (API errors by status and code: 402s, 429s,
   moderation refusals). Several gunicorn processes on one host each count their own;
   with PROMETHEUS_MULTIPROC_DIR set, prometheus_client's multiprocess mode writes them
   to files in that folder and this view adds every process's up (the `serve` command
   empties it at start and marks exited processes dead).
2. The platform's own numbers, computed at scrape time from the database (collectors
   named in settings.METRICS_COLLECTORS: images.metrics): jobs by model and outcome,
   queue depth and oldest job per queue, pipeline seconds, images per call and
   enqueue-to-start time per model, holds open, credits held and captured, moderation
   blocks, and every worker's heartbeat. The GPU workers run on other machines, often
   behind NAT, and come and go; counting from the shared database means one scrape of
   the web tier sees all of them, nothing is lost when a worker dies, and nothing is
   counted twice. (Dramatiq's own Prometheus middleware would need every worker host
   to be scraped on a port of its own.) Results are reused for METRICS_CACHE_SECONDS.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.crypto import constant_time_compare
from django.utils.module_loading import import_string
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import Metric

# Every error answer of the API, by HTTP status and error code (core.errors renders them
# all): 402 insufficient_quota, 429 rate_limit_exceeded, 400 moderation_blocked, ...
API_ERRORS = Counter("imagegen_api_errors", "Error answers of the API by status and code", ["status", "code"])


def api_error_count(*, status: int, code: str | None) -> None:
    try:
        API_ERRORS.labels(status=str(status), code=code or "").inc()
    except Exception:  # metrics never break an answer
        pass


class CachedCollector:
    """Wraps a collector whose `collect()` queries the database: its metrics are
    computed at most once per METRICS_CACHE_SECONDS per process."""

    def __init__(self, collector: Any) -> None:
        self.collector = collector
        self._lock = threading.Lock()
        self._at = -1e9
        self._metrics: list[Metric] = []

    def collect(self):
        with self._lock:
            if time.monotonic() - self._at >= settings.METRICS_CACHE_SECONDS:
                self._metrics = list(self.collector.collect())
                self._at = time.monotonic()
            return list(self._metrics)


_platform: CollectorRegistry | None = None
_platform_lock = threading.Lock()


def platform_registry() -> CollectorRegistry:
    """The registry of the scrape-time collectors (settings.METRICS_COLLECTORS)."""
    global _platform
    with _platform_lock:
        if _platform is None:
            registry = CollectorRegistry(auto_describe=False)
            for path in getattr(settings, "METRICS_COLLECTORS", []):
                registry.register(CachedCollector(import_string(path)()))
            _platform = registry
        return _platform


def process_registry() -> CollectorRegistry:
    """This process's metrics, or every process's on this host in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def metrics_text() -> bytes:
    return generate_latest(process_registry()) + generate_latest(platform_registry())


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("metrics are off")
    if not constant_time_compare(request.META.get("HTTP_AUTHORIZATION", ""), f"Bearer {token}"):
        response = HttpResponse("A valid metrics token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(metrics_text(), content_type=CONTENT_TYPE_LATEST)
