"""Waiting requests under the ASGI server (issue 20, core/waiting.py): a synchronous
generation, a stream and a long poll wait on the event loop, without a thread; cheap
requests are answered meanwhile; a client that disconnects (Django cancels its request
on `http.disconnect`) before its job started pays nothing.

Requests go through PooledASGIHandler (the application platform/asgi.py serves)
with a hand-made ASGI `receive`, so that a test can disconnect the client."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from billing.models import CreditAccount, LedgerEntry
from core import waiting
from images.models import Job
from images.services import jobs as job_services

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}  # 16 credits
STREAM = {"model": "gpt-image-1", "prompt": "x", "quality": "low", "stream": True}


class Client:
    """One ASGI request: `await client.run(app)`; `client.leave()` is the client disconnecting."""

    def __init__(self, method: str, path: str, tenant, body=None, headers: dict | None = None) -> None:
        self.body = json.dumps(body).encode() if body is not None else b""
        path, _, query = path.partition("?")
        hdrs = {"authorization": f"Bearer {tenant.raw}", "content-type": "application/json", **(headers or {})}
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.encode(), v.encode()) for k, v in {**hdrs, "content-length": str(len(self.body))}.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.gone = asyncio.Event()
        self.sent: list[dict] = []

    async def run(self, app) -> None:
        first = True

        async def receive():
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": self.body, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            self.sent.append(message)

        await app(self.scope, receive, send)

    def leave(self) -> None:
        self.gone.set()

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return {k.decode().lower(): v.decode() for k, v in start["headers"]}

    @property
    def content(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def json(self):
        return json.loads(self.content)


@pytest.fixture
def app(transactional_db):
    """The application platform/asgi.py serves (sync code on the shared pool); no
    persistent connections here, so that the test's flush finds none open."""
    from django.db import connections

    database = connections["default"].settings_dict
    kept = database["CONN_MAX_AGE"]
    database["CONN_MAX_AGE"] = 0
    waiting._sync_pool = None  # a fresh pool, sized by this test's WEB_THREADS on first use
    asgi = waiting._asgi
    waiting._asgi = True  # the ASGI cap, as platform/asgi.py configures it
    yield waiting.PooledASGIHandler()
    waiting._asgi = asgi
    if waiting._sync_pool is not None:
        waiting._sync_pool.shutdown(wait=True)
        waiting._sync_pool = None
    database["CONN_MAX_AGE"] = kept


def account(tenant) -> tuple[int, int]:
    row = CreditAccount.objects.get(tenant=tenant.tenant)
    return row.balance, row.held


async def in_thread(fn, *args, **kwargs):
    """Test-side database work, on a thread that closes its connection after."""
    from django.db import connection

    def call():
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return await asyncio.to_thread(call)


async def until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := await in_thread(predicate)):
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.02)
    return value


def first_job():
    return Job.objects.first()


def test_balance_is_answered_while_generations_wait_and_leavers_pay_nothing(app, parked, tenant, settings):
    settings.JOB_WAIT_SECONDS = 30

    async def scenario():
        waits = [Client("POST", URL, tenant, SMALL) for _ in range(5)]
        tasks = [asyncio.create_task(c.run(app)) for c in waits]
        await until(lambda: Job.objects.count() == 5)
        await until(lambda: waiting.waiting_count() == 5)
        started = time.monotonic()
        balance = Client("GET", "/v1/balance", tenant)
        await balance.run(app)
        assert balance.status == 200 and time.monotonic() - started < 5
        assert balance.json()["held"] == 5 * 16
        for c in waits:
            c.leave()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)

    asyncio.run(scenario())
    # The five clients left before their jobs started: cancelled, nothing charged.
    assert sorted(Job.objects.values_list("error_code", flat=True)) == ["client_disconnected"] * 5
    assert account(tenant) == (10_000, 0) and waiting.waiting_count() == 0


def test_a_generation_answered_after_its_job_ends_records_its_idempotency_key(app, worker, tenant, settings):
    async def scenario():
        first = Client("POST", URL, tenant, SMALL, {"idempotency-key": "asgi-1"})
        await asyncio.wait_for(first.run(app), 60)
        again = Client("POST", URL, tenant, SMALL, {"idempotency-key": "asgi-1"})
        await again.run(app)
        return first, again

    first, again = asyncio.run(scenario())
    assert first.status == 200, first.content[:300]
    assert len(first.json()["data"]) == 1 and first.headers["x-credits-charged"] == "16"
    assert again.status == 200 and again.headers["idempotent-replayed"] == "true"
    assert Job.objects.count() == 1 and account(tenant) == (10_000 - 16, 0)
    assert waiting.waiting_count() == 0


def test_a_stream_is_served_by_an_async_iterator(app, worker, tenant):
    async def scenario():
        stream = Client("POST", URL, tenant, {**STREAM, "partial_images": 1})
        await asyncio.wait_for(stream.run(app), 60)
        return stream

    stream = asyncio.run(scenario())
    assert stream.status == 200
    assert b"event: image_generation.completed" in stream.content and stream.content.startswith(b": stream open")
    assert waiting.waiting_count() == 0


def test_a_client_that_leaves_a_stream_before_its_job_starts_is_not_charged(app, parked, tenant, settings):
    settings.JOB_WAIT_SECONDS = 30

    async def scenario():
        stream = Client("POST", URL, tenant, STREAM)
        task = asyncio.create_task(stream.run(app))
        await until(lambda: stream.content.startswith(b": stream open"))
        assert (await in_thread(account, tenant))[1] > 0  # its credits held
        stream.leave()
        await asyncio.wait_for(task, 20)
        return stream

    stream = asyncio.run(scenario())
    assert b"completed" not in stream.content
    job = Job.objects.get()
    assert (job.status, job.error_code) == ("cancelled", "client_disconnected")
    assert account(tenant) == (10_000, 0) and waiting.waiting_count() == 0
    assert sorted(LedgerEntry.objects.filter(job=job).values_list("kind", flat=True)) == ["hold", "release"]


def test_a_client_that_leaves_after_its_job_started_pays_and_its_job_runs_on(app, parked, tenant, settings):
    settings.JOB_WAIT_SECONDS = 30

    async def scenario():
        client = Client("POST", URL, tenant, SMALL, {"idempotency-key": "asgi-2"})
        task = asyncio.create_task(client.run(app))
        job = await until(first_job)
        await until(lambda: waiting.waiting_count() == 1)
        assert await in_thread(job_services.job_start, job_id=job.pk) is not None
        client.leave()
        await asyncio.wait_for(task, 20)
        return job

    job = asyncio.run(scenario())
    job.refresh_from_db()
    assert job.status == "running" and account(tenant) == (10_000, 16)  # still held: it will be charged
    assert waiting.waiting_count() == 0


def test_a_long_poll_wakes_when_its_task_changes(app, parked, tenant, settings):
    from rest_framework.test import APIClient

    from tests.conftest import post_json

    task = post_json(APIClient(), URL, SMALL, tenant, HTTP_PREFER="respond-async").json()

    async def scenario():
        poll = Client("GET", f"/v1/images/tasks/{task['id']}?wait=20", tenant)
        running = asyncio.create_task(poll.run(app))
        await until(lambda: waiting.waiting_count() == 1)
        started = time.monotonic()
        await in_thread(job_services.job_start, job_id=task["id"])
        await asyncio.wait_for(running, 10)
        return poll, time.monotonic() - started

    poll, took = asyncio.run(scenario())
    assert poll.status == 200 and poll.json()["status"] == "running" and took < 5
    assert waiting.waiting_count() == 0
    # The answer made after the wait carries what the middleware chain set on the
    # deferred one (request id, security headers), with its own type and length.
    headers = poll.headers
    assert headers["x-request-id"].startswith("req_") and headers["x-content-type-options"] == "nosniff"
    assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(poll.content)
    assert headers["retry-after"] == "1"


def test_open_waiting_requests_hold_no_thread_each(app, parked, tenant, settings):
    """Django's own handler parks one executor thread per open request; PooledASGIHandler
    runs every request's sync code on WEB_THREADS shared threads, so 12 waiting
    generations (the tenant's concurrency is 16) leave at most 3 sync threads."""
    import threading

    settings.JOB_WAIT_SECONDS = 30
    settings.WEB_THREADS = 3

    def sync_threads() -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith(("web-sync", "ThreadPoolExecutor")))

    async def scenario():
        waits = [Client("POST", URL, tenant, SMALL) for _ in range(12)]
        tasks = [asyncio.create_task(c.run(app)) for c in waits]
        # A slot is taken before the hold (admission control): wait for the 12 jobs too.
        await until(lambda: Job.objects.count() == 12, timeout=30)
        await until(lambda: waiting.waiting_count() == 12, timeout=30)
        held = sync_threads()
        balance = Client("GET", "/v1/balance", tenant)
        await balance.run(app)
        for c in waits:
            c.leave()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return held, balance

    held, balance = asyncio.run(scenario())
    assert held <= 3, held
    assert balance.status == 200 and balance.json()["held"] == 12 * 16
    assert account(tenant) == (10_000, 0) and waiting.waiting_count() == 0


def test_a_burst_of_concurrent_polls_is_answered_in_two_pool_calls_each(app, parked, tenant, settings):
    """1,000 concurrent pollers once got no answer in 10 s: Django's async chain crossed
    to a pool thread and back for each of its sync middlewares (23 hops per poll), and
    with one FIFO pool every request advanced one hop per round, so none finished before
    all had nearly finished. PooledASGIHandler runs the chain and the view in one pool
    call and closes the response in a second: a burst of 150 polls on 4 threads is all
    answered, with 2 pool calls per poll."""
    from rest_framework.test import APIClient

    from tests.conftest import post_json

    settings.WEB_THREADS = 4
    task = post_json(APIClient(), URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    pool = waiting.sync_pool()
    submit, calls = pool.submit, []

    def counted(fn, /, *args, **kwargs):
        calls.append(fn)
        return submit(fn, *args, **kwargs)

    pool.submit = counted

    async def scenario():
        polls = [Client("GET", f"/v1/images/tasks/{task['id']}", tenant) for _ in range(150)]
        await asyncio.wait_for(asyncio.gather(*(c.run(app) for c in polls)), 30)
        return polls

    polls = asyncio.run(scenario())
    assert [c.status for c in polls] == [200] * 150
    assert {c.json()["status"] for c in polls} == {"queued"}
    assert all(c.headers["retry-after"] == "1" and c.headers["x-request-id"] for c in polls)
    assert len(calls) == 2 * 150, len(calls) / 150


def test_a_done_event_ends_the_wait_without_reading_the_job_again(app, parked, tenant, settings):
    """ "done" is sent only after the settle's commit (images.services.jobs), so the wait
    ends on it without another check of the job (issue 20: a thread hop and a Redis
    read less per generation). Here the row is still running when "done" comes: only
    the event can end this wait with True (a re-check would read "running" and wait
    on until the timeout, then answer False)."""
    from rest_framework.test import APIClient

    from images import notify
    from tests.conftest import post_json

    task = post_json(APIClient(), URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    job_services.job_start(job_id=task["id"])  # running, and its status snapshot says so

    async def scenario():
        waiter = asyncio.create_task(job_services.job_wait_async(job_id=task["id"], timeout=3))
        await asyncio.sleep(0.3)  # subscribed, and its first check found the job running
        assert not waiter.done()
        await in_thread(notify.job_notify, task["id"])
        return await asyncio.wait_for(waiter, 10)

    assert asyncio.run(scenario()) is True
    assert Job.objects.get(pk=task["id"]).status == Job.Status.RUNNING
