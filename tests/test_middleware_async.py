"""Every middleware is async-capable: under the ASGI server a sync-only one would make
Django run the rest of the chain on a thread, and every waiting request would hold a
thread again (core/waiting.py, core/middleware.py)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.utils.module_loading import import_string


def test_every_middleware_is_async_capable():
    sync_only = [path for path in settings.MIDDLEWARE if not getattr(import_string(path), "async_capable", False)]
    assert sync_only == [], f"sync-only middleware would put waits back on threads: {sync_only}"


def adaptations() -> list[str]:
    """What Django logs (with DEBUG on) while it loads the chain for ASGI: one line per
    middleware it had to put on a thread, or to take off one."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("django.request")
    handler, level, disabled = Collect(logging.DEBUG), logger.level, logger.disabled
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    try:
        ASGIHandler()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
    return [line for line in seen if "adapted" in line]


def test_the_asgi_chain_is_loaded_without_adapting_a_single_middleware(settings):
    settings.DEBUG = True  # (Django logs its adaptations only then)
    assert adaptations() == []
    assert settings.MIDDLEWARE[-1] == "core.middleware.WaitingMiddleware"  # innermost: its answers pass through all
    # (and the check sees one: whitenoise's own middleware is sync-only)
    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE[:-1],
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "core.middleware.WaitingMiddleware",
    ]
    assert adaptations() != []
