"""The health check's grace (core/db, issue 20): a PostgreSQL connection that worked less
than DB_HEALTH_CHECK_GRACE_SECONDS ago is not pinged before the next request's first
statement; an idle one is, and a connection the server closed while idle is replaced
without the caller seeing an error."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.conf import settings
from django.db import close_old_connections, connection, connections

pytestmark = pytest.mark.skipif(
    not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"), reason="the grace is PostgreSQL's backend's"
)


@pytest.fixture
def pings(monkeypatch):
    """How many health checks Django's own is_usable ran (counted, then called through)."""
    done = []
    wrapper = type(connections["default"])
    is_usable = wrapper.is_usable

    def counted(self):
        done.append(time.monotonic())
        return is_usable(self)

    monkeypatch.setattr(wrapper, "is_usable", counted)
    return done


def _request() -> int:
    """What a request does to its thread's connection: Django's request-start rule, then
    one statement. Returns the backend's pid."""
    close_old_connections()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _terminate(pid: int) -> None:
    db = settings.DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"], autocommit=True
    ) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_connection_used_moments_ago_is_not_pinged_an_idle_one_is(transactional_db, settings, pings):
    settings.DB_HEALTH_CHECK_GRACE_SECONDS = 0.3
    first = _request()
    assert _request() == first and _request() == first
    assert pings == []  # back to back: no SELECT 1
    time.sleep(0.4)
    assert _request() == first
    assert len(pings) == 1  # idle past the grace: checked once


def test_a_connection_closed_while_idle_is_replaced_without_an_error(transactional_db, settings, pings):
    settings.DB_HEALTH_CHECK_GRACE_SECONDS = 0.3
    first = _request()
    _terminate(first)
    time.sleep(0.4)
    second = _request()  # the ping finds it dead: a new connection, no error
    assert second != first and len(pings) == 1


def test_grace_zero_is_djangos_check_on_every_request(transactional_db, settings, pings):
    settings.DB_HEALTH_CHECK_GRACE_SECONDS = 0
    first = _request()
    assert _request() == first and _request() == first
    assert len(pings) == 2
