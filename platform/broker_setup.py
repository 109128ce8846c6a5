"""Dramatiq broker configuration and the embedded (in-process) worker.

BROKER_URL unset: a StubBroker lives inside the web process and an in-process
dramatiq.Worker consumes it, so one `make run` is a whole platform.
redis://... or amqp://...: the web tier only enqueues; `make worker` consumes.
"""
from __future__ import annotations

import threading
from typing import Any

MIDDLEWARE = [
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.Callbacks",
    "dramatiq.middleware.Retries",
    "dramatiq.middleware.ShutdownNotifications",
    "django_dramatiq.middleware.DbConnectionsMiddleware",
    "images.middleware.WorkerLifecycle",
]


def broker_settings(broker_url: str, namespace: str = "dramatiq", *, heartbeat_timeout_ms: int = 30_000,
                    maintenance_chance: int = 50_000) -> dict[str, Any]:
    """The DRAMATIQ_BROKER setting for a broker URL ('' = embedded)."""
    if not broker_url:
        return {"BROKER": "dramatiq.brokers.stub.StubBroker", "OPTIONS": {}, "MIDDLEWARE": MIDDLEWARE}
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        # heartbeat_timeout: a worker silent this long (ms) is dead, and the next
        # maintenance pass requeues its unacknowledged messages to live workers.
        # maintenance_chance (per million broker commands; Dramatiq's default is 1000)
        # is raised so that pass comes within seconds, not minutes: a killed
        # worker's job is redelivered well within a minute. See docs/operations.md.
        return {
            "BROKER": "dramatiq.brokers.redis.RedisBroker",
            "OPTIONS": {"url": broker_url, "namespace": namespace, "heartbeat_timeout": heartbeat_timeout_ms,
                        "maintenance_chance": maintenance_chance},
            "MIDDLEWARE": MIDDLEWARE,
        }
    if broker_url.startswith(("amqp://", "amqps://")):
        return {"BROKER": "dramatiq.brokers.rabbitmq.RabbitmqBroker", "OPTIONS": {"url": broker_url}, "MIDDLEWARE": MIDDLEWARE}
    raise ValueError(f"BROKER_URL must be redis://, rediss:// or amqp://, not {broker_url.split(':', 1)[0]}://")


_embedded_lock = threading.Lock()
_embedded_worker = None


def start_embedded_worker(threads: int = 2, *, any_broker: bool = False, queues: set[str] | None = None):
    """Start the in-process worker once per process: in the embedded mode, or on any
    broker when `any_broker` (the test suite does this to run jobs through Redis)."""
    global _embedded_worker
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    with _embedded_lock:
        broker = dramatiq.get_broker()
        if not isinstance(broker, StubBroker) and not any_broker:
            return None
        if _embedded_worker is None:
            # worker_timeout: how often idle threads poll the in-memory queue (ms);
            # small, so a job starts within a few ms of being sent.
            _embedded_worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100, queues=queues)
            _embedded_worker.start()
        return _embedded_worker


def stop_embedded_worker() -> None:
    global _embedded_worker
    with _embedded_lock:
        if _embedded_worker is not None:
            _embedded_worker.stop()
            _embedded_worker = None
