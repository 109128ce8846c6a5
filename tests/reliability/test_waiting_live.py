"""Issue 20's check against real processes: one gunicorn web process (production mode:
PostgreSQL, Redis, no worker running), its waiting places filled by synchronous
generations, balance probes meanwhile; the clients abandon their requests, then a worker
starts: their credits are untouched. Runs in the PostgreSQL + Redis pass."""

from __future__ import annotations

import http.client
import json
import time

import pytest
from django.conf import settings

from tests.live import start_live_server
from tests.reliability.test_drills import call

pytestmark = pytest.mark.live

SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}  # 16 credits
WAITING = 6  # WEB_MAX_WAITING of the test server (WEB_THREADS 10)


def balance(server, key: str) -> dict:
    status, _, body = call(server, "GET", "/v1/balance", key, timeout=5)
    assert status == 200  # never queued behind the waiting generations
    return body


def until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.1)


@pytest.mark.skipif(not settings.BROKER_URL, reason="no worker running needs separate worker processes (BROKER_URL)")
def test_waiting_requests_are_capped_and_those_abandoned_before_their_job_started_cost_nothing(tmp_path):
    server = start_live_server(
        tmp_path, {"WEB_THREADS": "10", "WEB_MAX_WAITING": str(WAITING), "JOB_WAIT_SECONDS": "120"}, worker=False
    )
    try:
        key = server.tenant(credits=1000)
        waiting = []
        for i in range(WAITING):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            conn.request(
                "POST",
                "/v1/images/generations",
                json.dumps(SMALL),
                {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Idempotency-Key": f"w{i}"},
            )
            waiting.append(conn)
        until(lambda: balance(server, key)["held"] == 16 * WAITING)  # all waiting, credits held

        # The cap is reached: one more waiting request is refused at once, before any hold.
        status, headers, body = call(server, "POST", "/v1/images/generations", key, SMALL, timeout=5)
        assert status == 503 and body["error"]["code"] == "server_busy"
        assert headers["Retry-After"] == "2" and headers["x-should-retry"] == "true"
        status, _, body = call(
            server, "POST", "/v1/images/generations", key, {**SMALL, "stream": True, "model": "gpt-image-1"}, timeout=5
        )
        assert status == 503 and body["error"]["code"] == "server_busy"
        assert balance(server, key) == {**balance(server, key), "balance": 1000, "held": 16 * WAITING}
        status, _, task = call(
            server, "POST", "/v1/images/generations", key, SMALL, {"Prefer": "respond-async"}, timeout=5
        )
        assert status == 202  # does not wait: not counted
        assert call(server, "DELETE", f"/v1/images/tasks/{task['id']}", key, timeout=5)[0] == 200

        for conn in waiting:  # the clients give up
            conn.close()
        until(lambda: balance(server, key)["held"] == 0)
        assert balance(server, key)["balance"] == 1000

        server.start_worker()
        # A request now waits and is answered: the worker has come past the abandoned jobs.
        status, headers, body = call(server, "POST", "/v1/images/generations", key, SMALL, timeout=120)
        assert status == 200 and len(body["data"]) == 1 and headers["x-credits-charged"] == "16"
        assert balance(server, key) == {**balance(server, key), "balance": 1000 - 16, "held": 0}
        abandoned = json.loads(
            server.shell(
                "import json; from images.models import Job; "
                "print(json.dumps(sorted({(j.status, j.error_code, j.attempts) for j in "
                "Job.objects.exclude(status='succeeded').exclude(error_code='cancelled')})))"
            )
        )
        assert abandoned == [["cancelled", "client_disconnected", 0]]
        # Their Idempotency-Keys were not used up: a retry is a new request.
        status, _, body = call(server, "POST", "/v1/images/generations", key, SMALL, {"Idempotency-Key": "w0"})
        assert status == 200 and balance(server, key)["balance"] == 1000 - 32
        assert server.manage("billing_reconcile").returncode == 0
    finally:
        server.stop()
