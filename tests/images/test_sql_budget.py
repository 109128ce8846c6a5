"""How many SQL statements one generation costs, end to end (#20 item 5): the web request
that submits it (Prefer: respond-async) and the worker that runs and settles it, counted
in this process (the in-process Dramatiq worker) by every thread that works for it.

Counted: every statement Django sends (through its cursor wrapper, so savepoints too)
and every health-check ping (`SELECT 1` on a reused connection, which bypasses the
cursor wrapper), plus new connections. Not counted: the worker process's own timers
(heartbeat, deadline and retention sweeps, model warm-up), which cost the same whatever
the traffic."""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager

from django.conf import settings
from django.db import close_old_connections, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.backends.utils import CursorWrapper

from images import notify
from images.models import Job
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}
BACKGROUND_THREADS = ("deadline-sweeper", "heartbeat", "retention-sweep", "warm-up")
POSTGRES = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")

# The budget per generation (statements, pings and new connections together), measured
# on this code: see docs/benchmarks.md for the numbers before and after #20.
# Before issue 20 (PostgreSQL): web 14 + 1 ping, worker 19 (+ 3 pings, 1 new connection).
# SQLite (embedded) adds a `BEGIN IMMEDIATE` per transaction, and connects instead of pinging.
WEB_BUDGET = 15 if POSTGRES else 16
WORKER_BUDGET = 12 if POSTGRES else 13


class StatementCount:
    """Every statement and ping in this process while active, by kind and thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, str, str]] = []  # (thread, kind, sql)

    def add(self, kind: str, sql: str) -> None:
        name = threading.current_thread().name
        if name.startswith(BACKGROUND_THREADS):
            return
        with self.lock:
            self.items.append((name, kind, sql))

    def total(self, *, web: bool | None = None) -> int:
        """Statements, pings and new connections (a thread's first job connects instead
        of pinging), on the web side (this test's thread) or the worker's, or both."""
        main = threading.main_thread().name
        return sum(1 for thread, _, _ in self.items if web is None or (thread == main) == web)

    def report(self) -> str:
        kinds = Counter((thread, kind) for thread, kind, _ in self.items)
        lines = [f"{thread:24} {kind:10} {count}" for (thread, kind), count in sorted(kinds.items())]
        lines += [f"  [{thread}] {sql[:150]}" for thread, _, sql in self.items]
        return "\n".join(lines)


@contextmanager
def statements_counted():
    """Count process-wide (all threads): the cursor wrapper, the health-check ping and
    connection_created are wrapped, calling through to Django's own code."""
    count = StatementCount()
    execute, executemany, is_usable = CursorWrapper._execute, CursorWrapper._executemany, None

    def counted_execute(self, sql, params, *ignored):
        count.add("statement", str(sql))
        return execute(self, sql, params, *ignored)

    def counted_executemany(self, sql, param_list, *ignored):
        count.add("statement", str(sql))
        return executemany(self, sql, param_list, *ignored)

    def created(sender, connection, **kwargs):
        count.add("connect", "(new connection)")

    wrapper_class = type(connections["default"])
    is_usable = wrapper_class.is_usable

    def counted_is_usable(self):
        count.add("ping", "SELECT 1 (health check)")
        return is_usable(self)

    CursorWrapper._execute, CursorWrapper._executemany = counted_execute, counted_executemany
    wrapper_class.is_usable = counted_is_usable
    connection_created.connect(created)
    try:
        yield count
    finally:
        CursorWrapper._execute, CursorWrapper._executemany = execute, executemany
        wrapper_class.is_usable = is_usable
        connection_created.disconnect(created)
    assert issubclass(wrapper_class, BaseDatabaseWrapper)


def _worker_drained() -> None:
    """Wait until the worker's helper threads have nothing left for the job."""
    from images import worker as worker_module

    worker_module._side.submit(lambda: None).result(timeout=30)
    worker_module._encoder.submit(lambda: None).result(timeout=30)


def _one_generation(api, tenant) -> tuple[StatementCount, dict]:
    # A first generation warms every cache (model rows, pipelines, connections).
    first = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    assert notify.job_wait_signal(first["id"], 60)
    _worker_drained()
    with statements_counted() as count:
        close_old_connections()  # what Django does when a request starts (the test client does not)
        task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
        assert notify.job_wait_signal(task["id"], 60)  # (no database: the worker's "done" event)
        _worker_drained()
    return count, task


def test_statements_per_generation_stay_within_the_budget(api, worker, tenant, capsys):
    count, task = _one_generation(api, tenant)
    assert Job.objects.get(pk=task["id"]).status == Job.Status.SUCCEEDED
    with capsys.disabled():
        print(f"\nSQL per generation: web {count.total(web=True)}, worker {count.total(web=False)}")
        print(count.report())
    assert count.total(web=True) <= WEB_BUDGET, count.report()
    assert count.total(web=False) <= WORKER_BUDGET, count.report()
