"""Async tasks (Prefer: respond-async, GET/DELETE /v1/images/tasks/{id}) and SSE streaming."""

from __future__ import annotations

import json
import time

from billing.models import CreditAccount
from images.actors import run_generation
from images.models import Job
from images.selectors import image_model_cache_clear
from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}


def test_respond_async_returns_202_and_the_task_completes(api, worker, tenant):
    response = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async")
    assert response.status_code == 202
    task = response.json()
    assert task["object"] == "image.task" and task["status"] in ("queued", "running", "succeeded")
    assert response["Location"].endswith(f"/v1/images/tasks/{task['id']}")
    fractions = []
    for _ in range(200):
        task = api.get(f"/v1/images/tasks/{task['id']}", **tenant.auth).json()
        fractions.append(task["progress"]["fraction"])
        if task["status"] == "succeeded":
            break
        time.sleep(0.05)
    assert task["status"] == "succeeded" and task["progress"]["fraction"] == 1.0
    assert fractions == sorted(fractions)
    assert len(task["result"]["data"]) == 1 and task["finished_at"] >= task["created_at"]


def test_cancel_releases_the_hold(api, parked, tenant):
    task = post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async").json()
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 16
    cancelled = api.delete(f"/v1/images/tasks/{task['id']}", **tenant.auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert (account.balance, account.held) == (10_000, 0)
    run_generation.fn(task["id"])  # the queued message arrives later: nothing happens
    assert Job.objects.get(pk=task["id"]).status == "cancelled"
    assert api.delete(f"/v1/images/tasks/{task['id']}", **tenant.auth).status_code == 400


def test_another_tenants_task_is_404(api, parked, make_tenant):
    a, b = make_tenant(), make_tenant()
    task = post_json(api, URL, SMALL, a, HTTP_PREFER="respond-async").json()
    assert api.get(f"/v1/images/tasks/{task['id']}", **b.auth).status_code == 404
    assert api.delete(f"/v1/images/tasks/{task['id']}", **b.auth).status_code == 404
    assert api.get("/v1/images/tasks/not-a-uuid", **a.auth).status_code == 404
    assert Job.objects.get(pk=task["id"]).status == "queued"


def parse_sse(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        event = next(line[7:] for line in lines if line.startswith("event: "))
        data = json.loads(next(line[6:] for line in lines if line.startswith("data: ")))
        events.append((event, data))
    return events


def test_stream_sends_partials_then_completed(api, worker, tenant):
    body = {"model": "gpt-image-1", "prompt": "x", "quality": "high", "stream": True, "partial_images": 2}
    response = post_json(api, URL, body, tenant)
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = parse_sse(b"".join(response.streaming_content))
    types = [e for e, _ in events]
    assert types[-1] == "image_generation.completed"
    assert 1 <= types.count("image_generation.partial_image") <= 2
    partials = [d for e, d in events if e == "image_generation.partial_image"]
    assert [p["partial_image_index"] for p in partials] == list(range(len(partials)))
    completed = events[-1][1]
    assert completed["type"] == "image_generation.completed" and completed["usage"]["output_tokens"] == 4160
    assert completed["size"] == "1024x1024" and completed["b64_json"] != partials[0]["b64_json"]


def test_stream_error_before_start_is_plain_json(api, registry, tenant):
    response = post_json(api, URL, {"model": "gpt-image-1", "prompt": "x", "stream": True, "partial_images": 4}, tenant)
    assert response.status_code == 400 and response.json()["error"]["param"] == "partial_images"


def test_stream_failure_after_start_is_an_error_event(api, worker, tenant):
    from images.models import ImageModel

    ImageModel.objects.filter(public_id="gpt-image-1").update(source="/nonexistent")
    image_model_cache_clear()  # (a bulk update sends no signal)
    response = post_json(api, URL, {"model": "gpt-image-1", "prompt": "x", "stream": True}, tenant)
    events = parse_sse(b"".join(response.streaming_content))
    assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == "generation_failed"
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0
