"""GET /healthz: 200 when the database (and the broker, when configured) answer.
GET /readyz: 200 when this process can serve: the database, the broker and the object
store (or local storage) all answer; else 503 naming what fails. A load balancer sends
traffic by /readyz; /healthz stays as it was for the existing probes."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


def _broker_ok() -> bool:
    url = settings.BROKER_URL
    if not url:
        return True
    try:
        if url.startswith(("redis", "unix")):
            from core.redis import redis_client

            redis_client(url, socket_timeout=2, socket_connect_timeout=2).ping()
        else:
            import pika

            pika.BlockingConnection(pika.URLParameters(url + ("&" if "?" in url else "?") + "socket_timeout=2")).close()
        return True
    except Exception:
        return False


def _storage_ok() -> bool:
    """The default storage answers: on an object store, a HEAD of the bucket (through
    the storage's own client: same credentials, endpoint and timeouts)."""
    from django.core.files.storage import default_storage

    try:
        if settings.AWS_STORAGE_BUCKET_NAME:
            default_storage.connection.meta.client.head_bucket(Bucket=default_storage.bucket_name)
        else:
            default_storage.exists("readyz")
        return True
    except Exception:
        return False


def readyz(request: HttpRequest) -> JsonResponse:
    checks = (("database", _database_ok()), ("broker", _broker_ok()), ("storage", _storage_ok()))
    failing = [name for name, ok in checks if not ok]
    if failing:
        return JsonResponse({"status": "unavailable", "failing": failing}, status=503)
    return JsonResponse({"status": "ok", "checks": [name for name, _ in checks]})


def healthz(request: HttpRequest) -> JsonResponse:
    failing = [name for name, ok in (("database", _database_ok()), ("broker", _broker_ok())) if not ok]
    if failing:
        return JsonResponse({"status": "unavailable", "failing": failing}, status=503)
    return JsonResponse({"status": "ok"})
