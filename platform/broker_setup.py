"""Dramatiq broker configuration and the embedded (in-process) worker.

BROKER_URL unset: a StubBroker lives inside the web process and an in-process
dramatiq.Worker consumes it, so one `make run` is a whole platform.
redis://... or amqp://...: the web tier only enqueues; `make worker` consumes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import dq_name
from dramatiq.errors import ConnectionClosed

logger = logging.getLogger(__name__)

MIDDLEWARE = [
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.Callbacks",
    "dramatiq.middleware.Retries",
    "dramatiq.middleware.ShutdownNotifications",
    "django_dramatiq.middleware.DbConnectionsMiddleware",
    "images.middleware.WorkerLifecycle",
    "core.logging.LogContextMiddleware",  # job id on every log line of a message
]


def broker_settings(
    broker_url: str,
    namespace: str = "dramatiq",
    *,
    heartbeat_timeout_ms: int = 30_000,
    maintenance_chance: int = 50_000,
) -> dict[str, Any]:
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
            "BROKER": "broker_setup.WakingRedisBroker",
            "OPTIONS": {
                "url": broker_url,
                "namespace": namespace,
                "heartbeat_timeout": heartbeat_timeout_ms,
                "maintenance_chance": maintenance_chance,
            },
            "MIDDLEWARE": MIDDLEWARE,
        }
    if broker_url.startswith(("amqp://", "amqps://")):
        return {
            "BROKER": "dramatiq.brokers.rabbitmq.RabbitmqBroker",
            "OPTIONS": {"url": broker_url},
            "MIDDLEWARE": MIDDLEWARE,
        }
    raise ValueError(f"BROKER_URL must be redis://, rediss:// or amqp://, not {broker_url.split(':', 1)[0]}://")


class WakingRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, with idle consumers woken up instead of polling.

    Dramatiq's Redis consumer polls: after an empty fetch it sleeps (5, 10, 20 ... ms,
    up to the worker timeout) and fetches again. A short timeout makes pickup quick but
    costs ~10 % of a core per idle worker process (measured: 1.03 CPU-s per 10 s at
    20 ms), and the default 1 s leaves a new job waiting ~175 ms (docs/benchmarks.md).
    Here every enqueue also PUBLISHes the queue's name on one channel; each worker
    process has one thread subscribed to it that wakes the idle consumer of that queue
    at once, and acks/nacks wake it too (a freed prefetch slot is refilled at once).
    Messages, acks, heartbeats and dead-worker recovery are Dramatiq's, unchanged: a
    lost wake-up (the subscription down, a message requeued by maintenance) only costs
    the old poll, at most the worker timeout (WORKER_POLL_MS).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wake_channel = f"{self.namespace}:__wake__"
        self._wake_events: dict[str, threading.Event] = {}
        self._wake_lock = threading.Lock()
        self._listener: threading.Thread | None = None

    @property
    def consumer_class(self):
        return _WakingConsumer

    def enqueue(self, message, *, delay=None):
        enqueued = super().enqueue(message, delay=delay)
        try:
            self.client.publish(
                self.wake_channel, dq_name(message.queue_name) if delay is not None else message.queue_name
            )
        except Exception:  # the message is queued; a worker will poll it up anyway
            logger.warning("could not publish a wake-up for queue %s", message.queue_name, exc_info=True)
        return enqueued

    def wake_event(self, queue_name: str) -> threading.Event:
        """The event that wakes this process's consumer of `queue_name` (and starts the
        listener thread on first use, i.e. only in processes that consume)."""
        with self._wake_lock:
            if self._listener is None:
                self._listener = threading.Thread(target=self._listen, name="broker-wake", daemon=True)
                self._listener.start()
            return self._wake_events.setdefault(queue_name, threading.Event())

    def _listen(self) -> None:
        while True:
            pubsub = None
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.wake_channel)
                while True:
                    # A bounded wait, so a socket_timeout in BROKER_URL is not an error.
                    item = pubsub.get_message(timeout=1.0)
                    if item is None:
                        continue
                    name = item.get("data")
                    event = self._wake_events.get(name.decode() if isinstance(name, bytes) else str(name))
                    if event is not None:
                        event.set()
            except Exception:
                logger.warning(
                    "broker wake-up subscription lost; retrying in 1 s (workers poll meanwhile)", exc_info=True
                )
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
            time.sleep(1)


class _WakingConsumer(_RedisConsumer):
    """Fetch when there is room; otherwise, or when the fetch is empty, wait for a
    wake-up (a message enqueued, an ack) for at most the worker timeout."""

    def __init__(self, broker, queue_name, prefetch, timeout):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.wake = broker.wake_event(queue_name)

    def ack(self, message):
        super().ack(message)
        self.wake.set()

    def nack(self, message):
        super().nack(message)
        self.wake.set()

    def __next__(self):
        if self.message_cache:
            return super().__next__()
        # Cleared before looking: a wake-up that comes after this point is not lost.
        self.wake.clear()
        if self.outstanding_message_count < self.prefetch:
            try:
                fetched = self.broker.do_fetch(self.queue_name, self.prefetch - self.outstanding_message_count)
            except redis.ConnectionError as exc:
                raise ConnectionClosed(exc) from None
            if fetched:
                self.message_cache = fetched
                return super().__next__()
        self.wake.wait(self.timeout / 1000)
        return None


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
