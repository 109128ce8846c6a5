"""GET /metrics: behind METRICS_TOKEN, and the numbers move by what happened."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import post_json

URL = "/v1/images/generations"
SMALL = {"model": "dall-e-2", "prompt": "a lighthouse", "size": "256x256", "response_format": "b64_json"}
TOKEN = "metrics-token-for-tests"


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_CACHE_SECONDS = 0


def scrape(api) -> dict[tuple[str, tuple], float]:
    response = api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_is_404_while_no_token_is_set(api, db, settings):
    settings.METRICS_TOKEN = ""
    assert api.get("/metrics").status_code == 404
    assert api.get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 404


def test_metrics_answers_only_the_bearer_token(api, db, metrics_on):
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_three_generations_move_the_job_credit_and_latency_metrics_by_three(api, worker, tenant, metrics_on):
    before = scrape(api)
    for _ in range(3):
        assert post_json(api, URL, SMALL, tenant).status_code == 200
    after = scrape(api)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("imagegen_jobs_total", model="dall-e-2", outcome="succeeded") == 3
    assert moved("imagegen_pipeline_seconds_count", model="dall-e-2") == 3
    assert moved("imagegen_pipeline_seconds_bucket", model="dall-e-2", le="+Inf") == 3
    assert moved("imagegen_images_per_call_bucket", model="dall-e-2", le="1.0") == 3
    assert moved("imagegen_enqueue_to_start_seconds_count", model="dall-e-2") == 3
    assert moved("imagegen_credits_captured_total", model="dall-e-2") == 3 * 16  # 16 credits per 256x256
    assert value(after, "imagegen_holds_open") == 0 and value(after, "imagegen_credits_held") == 0
    # django-prometheus' request metrics for the web tier
    assert any(
        name == "django_http_responses_total_by_status_view_method_total" and dict(labels).get("status") == "200"
        for name, labels in after
    )


def test_refusals_are_counted_by_status_and_code(api, registry, make_tenant, metrics_on):
    poor = make_tenant(credits=0)
    before = scrape(api)
    assert post_json(api, URL, SMALL, poor).status_code == 402
    blocked = post_json(api, URL, {**SMALL, "prompt": "explicit porn of two people having sex"}, make_tenant())
    after = scrape(api)
    assert (
        value(after, "imagegen_api_errors_total", status="402", code="insufficient_quota")
        - value(before, "imagegen_api_errors_total", status="402", code="insufficient_quota")
        == 1
    )
    assert blocked.status_code == 400  # the default term lists block it
    code = blocked.json()["error"]["code"]
    assert value(after, "imagegen_api_errors_total", status="400", code=code) >= 1
    assert (
        value(after, "imagegen_moderation_blocks_total", model="dall-e-2")
        - value(before, "imagegen_moderation_blocks_total", model="dall-e-2")
        == 1
    )


def test_rate_limit_refusals_are_counted(api, registry, make_tenant, metrics_on, settings):
    settings.DEFAULT_TENANT_RPM = 1
    who = make_tenant()
    post_json(api, "/v1/images/generations", {"model": "nope", "prompt": "x"}, who)  # counted, 400
    assert post_json(api, URL, SMALL, who).status_code == 429
    assert value(scrape(api), "imagegen_api_errors_total", status="429", code="rate_limit_exceeded") >= 1


def test_queue_depth_and_oldest_age_per_queue(api, parked, tenant, metrics_on):
    from images.models import Job

    for _ in range(2):
        post_json(api, URL, SMALL, tenant, HTTP_PREFER="respond-async")
    Job.objects.update(created_at=timezone.now() - timedelta(seconds=90))
    samples = scrape(api)
    assert value(samples, "imagegen_queue_depth", queue="parked") == 2
    assert 89 <= value(samples, "imagegen_queue_oldest_age_seconds", queue="parked") < 200
    assert value(samples, "imagegen_holds_open") == 2 and value(samples, "imagegen_credits_held") == 32


def test_worker_heartbeats_are_exported_and_quiet_ones_marked(api, db, metrics_on, settings):
    from core.heartbeats import heartbeat_record

    now = timezone.now()
    heartbeat_record(
        worker_id="gpu-1:10",
        host="gpu-1",
        pid=10,
        queues=["gpu"],
        device="cuda: H200",
        started_at=now,
        jobs_running=1,
        jobs_done=7,
        device_memory_bytes=2**30,
    )
    heartbeat_record(
        worker_id="gpu-2:11",
        host="gpu-2",
        pid=11,
        queues=["gpu"],
        device="cpu",
        started_at=now,
        jobs_running=0,
        jobs_done=3,
        now=now - timedelta(seconds=settings.WORKER_QUIET_SECONDS + 5),
    )
    samples = scrape(api)
    live = {"worker": "gpu-1:10", "host": "gpu-1", "device": "cuda: H200"}
    quiet = {"worker": "gpu-2:11", "host": "gpu-2", "device": "cpu"}
    assert value(samples, "imagegen_worker_up", **live) == 1 and value(samples, "imagegen_worker_up", **quiet) == 0
    assert value(samples, "imagegen_worker_messages_total", **live) == 7
    assert value(samples, "imagegen_worker_device_memory_bytes", **live) == 2**30
    assert value(samples, "imagegen_worker_memory_bytes", **live) > 0


def test_admin_overview_lists_workers_and_the_quiet_ones(client, db, settings):
    from django.contrib.auth import get_user_model

    from core.heartbeats import heartbeat_record

    now = timezone.now()
    heartbeat_record(
        worker_id="gpu-7:70",
        host="gpu-7",
        pid=70,
        queues=["gpu"],
        device="cuda: H200",
        started_at=now,
        jobs_running=0,
        jobs_done=1,
        now=now - timedelta(seconds=settings.WORKER_QUIET_SECONDS + 30),
    )
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests-123")
    client.force_login(admin)
    page = client.get("/admin/overview/").content.decode()
    assert "gpu-7:70" in page and "cuda: H200" in page and "quiet" in page


def test_every_platform_metric_on_the_grafana_dashboard_is_exported(api, db, metrics_on):
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json").read_text())
    used = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bimagegen_[a-z_]+", target["expr"])
    }
    text = api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
    exported = set(re.findall(r"^# TYPE (imagegen_[a-z_]+) ", text, flags=re.M))
    exported |= {re.sub(r"_total$", "", name) for name in exported}
    missing = used - exported - {"imagegen_broker_messages"}  # (Redis broker only)
    assert not missing, missing
