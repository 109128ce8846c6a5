"""The Redis broker's wake-ups (platform/broker_setup.py): an idle consumer picks a new
message up at once, and an ack refills its prefetch at once, although its poll
interval (the worker timeout) is long. Needs Redis: runs in .ci/run's second pass."""

from __future__ import annotations

import time
import uuid

import pytest
from django.conf import settings

import broker_setup

pytestmark = pytest.mark.skipif(
    not settings.BROKER_URL.startswith("redis"), reason="needs Redis: runs in the PostgreSQL + Redis pass (BROKER_URL)"
)

POLL_MS = 20_000  # far longer than any wait below: only a wake-up can end one in time


@pytest.fixture
def broker():
    namespace = f"test-wake-{uuid.uuid4().hex[:8]}"
    broker = broker_setup.WakingRedisBroker(url=settings.BROKER_URL, namespace=namespace, middleware=[])
    broker.declare_queue("q")
    yield broker
    keys = list(broker.client.scan_iter(match=f"{namespace}:*"))
    if keys:
        broker.client.delete(*keys)
    broker.close()


def message(broker, text: str):
    import dramatiq

    return broker.enqueue(dramatiq.Message(queue_name="q", actor_name="a", args=(text,), kwargs={}, options={}))


def take_in_background(consumer):
    """Call the consumer on a thread until it yields a message; returns (thread, result),
    where result gets "item" and "at" (monotonic time) once it does."""
    import threading

    result: dict = {}

    def run():
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            item = next(consumer)
            if item is not None:
                result.update(item=item, at=time.monotonic())
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def subscribed(broker) -> None:
    deadline = time.monotonic() + 5
    while dict(broker.client.pubsub_numsub(broker.wake_channel)).get(broker.wake_channel.encode(), 0) < 1:
        assert time.monotonic() < deadline, "the wake-up listener never subscribed"
        time.sleep(0.01)


# Idle this long first: Dramatiq's own consumer would by then be sleeping seconds between
# polls (its back-off doubles per empty fetch), so a quick pickup proves the wake-up.
IDLE_S = 3.0


def test_an_idle_consumer_wakes_up_when_a_message_is_enqueued(broker):
    consumer = broker.consume("q", prefetch=1, timeout=POLL_MS)
    subscribed(broker)
    thread, got = take_in_background(consumer)
    time.sleep(IDLE_S)
    sent = time.monotonic()
    message(broker, "hello")
    thread.join(15)
    assert got["item"].args == ("hello",)
    assert got["at"] - sent < 0.5, f"picked up {got['at'] - sent:.2f} s after it was sent"


def test_an_ack_lets_the_consumer_fetch_the_next_message_at_once(broker):
    consumer = broker.consume("q", prefetch=1, timeout=POLL_MS)
    subscribed(broker)
    message(broker, "one")
    thread, got = take_in_background(consumer)
    thread.join(15)
    first = got["item"]
    message(broker, "two")  # prefetch is full: the consumer may not take it yet
    thread, got = take_in_background(consumer)
    time.sleep(IDLE_S)
    assert not got, "the consumer took a message beyond its prefetch"
    acked = time.monotonic()
    consumer.ack(first)
    thread.join(15)
    assert got["item"].args == ("two",)
    assert got["at"] - acked < 0.5, f"fetched {got['at'] - acked:.2f} s after the ack"
