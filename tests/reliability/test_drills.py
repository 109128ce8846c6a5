"""Fault drills against real processes: `serve` (gunicorn) and `runworker` on their own
database and broker namespace. The worker and web-restart drills need separate worker
processes, so they run in .ci/run's PostgreSQL + Redis pass."""

from __future__ import annotations

import json
import signal
import statistics
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings

from tests.live import start_live_server

pytestmark = pytest.mark.live

needs_workers = pytest.mark.skipif(
    not settings.BROKER_URL, reason="needs separate worker processes: runs in the PostgreSQL + Redis pass (BROKER_URL)"
)
needs_postgres = pytest.mark.skipif(
    not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"),
    reason="cuts a PostgreSQL connection: runs in the PostgreSQL + Redis pass",
)

SLOW = {
    "model": "dall-e-2",
    "prompt": "slow",
    "size": "1024x1024",
    "n": 8,
    "response_format": "b64_json",
}  # 160 credits


def call(server, method: str, path: str, key: str | None = None, body=None, headers=None, timeout: float = 120):
    request = urllib.request.Request(
        server.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Content-Type": "application/json",
            **(headers or {}),
            **({"Authorization": f"Bearer {key}"} if key else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read() or b"null")


def wait_task(server, key: str, task_id: str, until, timeout: float = 150) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        _, _, task = call(server, "GET", f"/v1/images/tasks/{task_id}", key)
        if until(task):
            return task
        assert time.monotonic() < deadline, f"task never reached the state: {task}"
        time.sleep(0.2)


def ledger(server, task_id: str) -> dict:
    out = server.shell(
        "import json; from billing.models import LedgerEntry; from images.models import Job; "
        f"j = Job.objects.get(pk='{task_id}'); "
        "print(json.dumps({'attempts': j.attempts, 'kinds': sorted(LedgerEntry.objects.filter(job=j)"
        ".values_list('kind', flat=True))}))"
    )
    return json.loads(out)


@pytest.fixture
def server(tmp_path):
    live = start_live_server(tmp_path)
    yield live
    live.stop()


@needs_workers
def test_worker_killed_mid_job_is_redelivered_and_charged_once(server):
    key = server.tenant(credits=10_000)
    status, _, task = call(server, "POST", "/v1/images/generations", key, SLOW, {"Prefer": "respond-async"})
    assert status == 202
    wait_task(server, key, task["id"], lambda t: t["status"] == "running")
    server.kill(server.worker, signal.SIGKILL)
    killed_at = time.monotonic()
    server.start_worker()
    deadline = killed_at + 90
    while ledger(server, task["id"])["attempts"] < 2:  # the redelivered message started the job again
        assert time.monotonic() < deadline, "the killed worker's job was not redelivered"
        time.sleep(0.5)
    redelivered_in = time.monotonic() - killed_at
    done = wait_task(server, key, task["id"], lambda t: t["status"] in ("succeeded", "failed"), timeout=120)
    assert done["status"] == "succeeded" and len(done["result"]["data"]) == 8
    assert redelivered_in < 60
    _, _, balance = call(server, "GET", "/v1/balance", key)
    assert (balance["balance"], balance["held"]) == (10_000 - 160, 0)
    record = ledger(server, task["id"])
    assert record["kinds"] == ["capture", "hold"] and record["attempts"] == 2
    assert server.manage("billing_reconcile").returncode == 0
    print(f"redelivered {redelivered_in:.1f} s after SIGKILL")


@needs_workers
def test_worker_stopped_with_sigterm_finishes_its_job(server):
    key = server.tenant(credits=10_000)
    _, _, task = call(server, "POST", "/v1/images/generations", key, SLOW, {"Prefer": "respond-async"})
    wait_task(server, key, task["id"], lambda t: t["status"] == "running")
    server.kill(server.worker, signal.SIGTERM, wait=120)  # returns once the worker has exited
    _, _, done = call(server, "GET", f"/v1/images/tasks/{task['id']}", key)
    if done["status"] != "succeeded":
        # It handed the job back (the message was never acknowledged): the next worker
        # gets it once the stopped one's heartbeat expires. Nothing may be lost.
        server.start_worker()
        done = wait_task(server, key, task["id"], lambda t: t["status"] in ("succeeded", "failed"), timeout=120)
    assert done["status"] == "succeeded"
    assert ledger(server, task["id"])["kinds"] == ["capture", "hold"]
    _, _, balance = call(server, "GET", "/v1/balance", key)
    assert (balance["balance"], balance["held"]) == (10_000 - 160, 0)


def test_broker_unreachable_is_503_and_holds_nothing(tmp_path):
    live = start_live_server(tmp_path, {"BROKER_URL": "redis://127.0.0.1:1/0"}, worker=False, expect_health=503)
    try:
        status, _, health = call(live, "GET", "/healthz")
        assert status == 503 and health["failing"] == ["broker"]
        key = live.tenant(credits=1000)
        status, headers, body = call(
            live, "POST", "/v1/images/generations", key, {"model": "dall-e-2", "prompt": "x", "size": "256x256"}
        )
        assert status == 503 and body["error"]["code"] == "service_unavailable"
        assert int(headers["Retry-After"]) >= 1
        _, _, balance = call(live, "GET", "/v1/balance", key)
        assert (balance["balance"], balance["held"]) == (1000, 0)
        counts = live.shell(
            "from images.models import Job; print(Job.objects.filter(status='queued').count(), Job.objects.count())"
        ).split()
        assert counts == ["0", "1"]  # the job exists, failed, not stuck in queued
        assert live.manage("billing_reconcile").returncode == 0
    finally:
        live.stop()


@needs_postgres
def test_database_unreachable_is_a_quick_503_and_recovers(tmp_path):
    from tests.reliability.proxy import TcpProxy

    db = settings.DATABASES["default"]
    proxy = TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)).start()
    live = start_live_server(
        tmp_path,
        {
            "DATABASE_URL": lambda name: f"postgres://{db['USER']}@127.0.0.1:{proxy.port}/{name}",
            "DB_CONNECT_TIMEOUT": "2",
        },
    )
    try:
        key = live.tenant(credits=1000)
        assert call(live, "GET", "/v1/balance", key)[0] == 200
        proxy.stop()
        started = time.monotonic()
        status, _, health = call(live, "GET", "/healthz")
        assert status == 503 and health["failing"] == ["database"]
        status, headers, body = call(
            live, "POST", "/v1/images/generations", key, {"model": "dall-e-2", "prompt": "x", "size": "256x256"}
        )
        assert status == 503 and body["error"]["code"] == "service_unavailable" and "Retry-After" in headers
        assert time.monotonic() - started < 10
        proxy.start()  # same port
        live.wait_healthy(timeout=30)
        status, _, _ = call(
            live,
            "POST",
            "/v1/images/generations",
            key,
            {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"},
        )
        assert status == 200
        _, _, balance = call(live, "GET", "/v1/balance", key)
        assert (balance["balance"], balance["held"]) == (1000 - 16, 0)
        assert live.manage("billing_reconcile").returncode == 0
    finally:
        live.stop()
        proxy.stop()


@needs_workers
def test_web_restart_while_waiting_then_retry_with_idempotency_key(server):
    key = server.tenant(credits=10_000)
    headers = {"Idempotency-Key": "drill-restart-1"}
    outcome: dict = {}

    def first_attempt():
        try:
            outcome["first"] = call(server, "POST", "/v1/images/generations", key, SLOW, headers)
        except Exception as exc:  # the connection dies with the web process
            outcome["first"] = exc

    thread = threading.Thread(target=first_attempt)
    thread.start()
    task_id = None
    deadline = time.monotonic() + 60
    while task_id is None:
        listing = server.shell(
            "from images.models import Job; print('jobs', *[str(j.pk) for j in Job.objects.filter(status='running')])"
        ).split()[1:]
        task_id = listing[0] if listing else None
        assert time.monotonic() < deadline
        time.sleep(0.3)
    server.kill(server.web, signal.SIGKILL)
    thread.join(timeout=30)
    assert isinstance(outcome["first"], Exception)
    server.start_web()
    server.wait_healthy()
    while True:
        status, _, body = call(server, "POST", "/v1/images/generations", key, SLOW, headers)
        if status != 409:
            break
        assert body["error"]["code"] == "idempotency_request_in_progress"
        time.sleep(0.5)
    assert status == 200 and len(body["data"]) == 8
    _, _, task = call(server, "GET", f"/v1/images/tasks/{task_id}", key)
    assert task["status"] == "succeeded"
    _, _, balance = call(server, "GET", "/v1/balance", key)
    assert (balance["balance"], balance["held"]) == (10_000 - 160, 0)


def test_overload_only_200_402_429_busy_503_and_reconcile_clean(tmp_path):
    """300 synchronous generations at once against one web process: each is answered with
    its images, a 402, a 429, or (past WEB_MAX_WAITING) an immediate 503 `server_busy`
    with Retry-After; nothing hangs and the money reconciles."""
    live = start_live_server(tmp_path)
    try:
        keys = []
        for _ in range(3):
            key = live.tenant(credits=3 * 16)  # three images each
            live.manage(
                "tenant_update",
                live.shell(
                    "from accounts.models import APIKey; "
                    f"print(APIKey.objects.get(prefix='{key.split('.')[0]}').tenant.name)"
                ),
                "--rpm",
                "60",
            )
            keys.append(key)
        results: list[tuple[int, float]] = []
        busy: list[tuple[str | None, str | None]] = []  # (error code, Retry-After) of each 503
        lock = threading.Lock()

        def one(i: int) -> None:
            started = time.monotonic()
            try:
                status, headers, body = call(
                    live,
                    "POST",
                    "/v1/images/generations",
                    keys[i % 3],
                    {"model": "dall-e-2", "prompt": f"load {i}", "size": "256x256", "response_format": "b64_json"},
                    timeout=180,
                )
            except Exception:
                status = -1
            with lock:
                results.append((status, time.monotonic() - started))
                if status == 503:
                    busy.append((body["error"]["code"], headers.get("Retry-After")))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(300)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        statuses = [s for s, _ in results]
        assert len(statuses) == 300
        assert set(statuses) <= {200, 402, 429, 503}, sorted(set(statuses))
        assert all(code == "server_busy" and retry_after for code, retry_after in busy), busy[:3]
        assert statuses.count(200) <= 9
        refusals = sorted(t for s, t in results if s in (402, 429, 503))
        p99 = refusals[int(len(refusals) * 0.99) - 1]
        print(
            f"overload: {statuses.count(200)} x 200, {statuses.count(402)} x 402, {statuses.count(429)} x 429, "
            f"{statuses.count(503)} x 503; "
            f"refusal p50 {statistics.median(refusals) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        )
        assert live.manage("billing_reconcile").returncode == 0
    finally:
        live.stop()
