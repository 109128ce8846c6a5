"""GET /healthz: 200 when the database (and the broker, when configured) answer."""
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


def healthz(request: HttpRequest) -> JsonResponse:
    failing = [name for name, ok in (("database", _database_ok()), ("broker", _broker_ok())) if not ok]
    if failing:
        return JsonResponse({"status": "unavailable", "failing": failing}, status=503)
    return JsonResponse({"status": "ok"})
