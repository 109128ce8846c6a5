"""No shared disk: the web tier and two workers, each with a private MEDIA_ROOT, share
only the database, the broker and an S3 server (moto's, on loopback). The official SDK
drives generations (url and b64_json), an edit with a mask, a variation and streaming;
/metrics, scraped with its token, moves by what was done; /readyz checks the store.

Two separate workers need a broker: with BROKER_URL (the PostgreSQL + Redis pass) this
runs web + 2 workers; embedded, the same tests run against web with its in-process
worker (one machine, still only the bucket for images)."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from django.conf import settings
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.live import LiveServer
from tests.s3 import MotoS3

pytestmark = pytest.mark.live
TOKEN = "distributed-metrics-token"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    store = MotoS3(tmp).start()
    env = {
        **store.env(),
        "METRICS_TOKEN": TOKEN,
        "METRICS_CACHE_SECONDS": "0",
        "WORKER_HEARTBEAT_SECONDS": "1",
        "MEDIA_ROOT": str(tmp / "media-web"),
        "LOG_FORMAT": "json",
    }
    server = LiveServer(tmp, name="dist", extra_env=env)
    try:
        server.prepare()
        if server.distributed:
            # Two gunicorn processes: their counters add up through the multiprocess folder.
            (tmp / "prom").mkdir()
            server.start_web(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom")})
            for name in ("media-worker-1", "media-worker-2"):
                server.start_worker(threads=1, env={"MEDIA_ROOT": str(tmp / name)})
        else:
            server.start_web()
        server.wait_healthy()
    except BaseException:
        server.stop()
        store.stop()
        raise
    server.store, server.media_roots = store, [tmp / "media-web", tmp / "media-worker-1", tmp / "media-worker-2"]
    yield server
    server.stop()
    store.stop()
    print("---- distributed logs (tail) ----\n" + server.log_text()[-6000:])


@pytest.fixture(scope="module")
def client(cluster):
    return openai.OpenAI(api_key=cluster.tenant(), base_url=cluster.url + "/v1", max_retries=0, timeout=180)


def _png(alpha_left: bool = False) -> bytes:
    mode, color = ("RGBA", (90, 120, 200, 255)) if alpha_left else ("RGB", (90, 120, 200))
    image = Image.new(mode, (256, 256), color)
    if alpha_left:
        image.paste((0, 0, 0, 0), (0, 0, 128, 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fetch(url: str, *, store: str) -> Image.Image:
    """Our signed link, without the key: a 302 to a presigned URL of the store, followed."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.url.startswith(store) and "X-Amz-Signature=" in response.url, response.url
        image = Image.open(io.BytesIO(response.read()))
        image.load()
        return image


def scrape(cluster) -> dict:
    request = urllib.request.Request(cluster.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _jobs(samples, outcome: str) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "imagegen_jobs_total" and dict(labels).get("outcome") == outcome
    )


def test_every_kind_of_request_works_with_the_bucket_as_the_only_shared_storage(cluster, client):
    store = cluster.store.endpoint
    url = client.images.generate(model="dall-e-2", prompt="a lighthouse", size="512x512", n=2)
    for item in url.data:
        image = _fetch(item.url, store=store)
        assert image.format == "PNG" and image.size == (512, 512)
    b64 = client.images.generate(model="gpt-image-1", prompt="a fox", quality="low", output_format="jpeg")
    image = Image.open(io.BytesIO(base64.b64decode(b64.data[0].b64_json)))
    assert image.format == "JPEG" and image.size == (1024, 1024)
    masked = client.images.edit(
        model="dall-e-2",
        image=("a.png", _png(), "image/png"),
        mask=("m.png", _png(alpha_left=True), "image/png"),
        prompt="sky",
        size="256x256",
    )
    assert _fetch(masked.data[0].url, store=store).size == (256, 256)
    variation = client.images.create_variation(
        image=("a.png", _png(), "image/png"), n=1, size="256x256", response_format="b64_json"
    )
    assert Image.open(io.BytesIO(base64.b64decode(variation.data[0].b64_json))).size == (256, 256)
    events = list(
        client.images.generate(model="gpt-image-1", prompt="a lighthouse", quality="low", stream=True, partial_images=1)
    )
    assert events[-1].type == "image_generation.completed"
    assert Image.open(io.BytesIO(base64.b64decode(events[-1].b64_json))).size == (1024, 1024)

    keys = cluster.store.keys()
    assert len([k for k in keys if k.startswith("images/")]) == 2 + 1 + 1 + 1 + 1
    assert not [k for k in keys if k.startswith("inputs/")]  # deleted once each edit settled
    for root in cluster.media_roots:  # nothing on any machine's own disk
        assert not root.exists() or not any(p.is_file() for p in root.rglob("*")), root


def test_metrics_count_three_more_succeeded_jobs_after_three_requests(cluster, client):
    before = _jobs(scrape(cluster), "succeeded")
    with ThreadPoolExecutor(3) as pool:  # at once: both workers get some
        results = list(
            pool.map(
                lambda i: client.images.generate(
                    model="dall-e-2", prompt=f"tower {i}", size="256x256", response_format="b64_json"
                ),
                range(3),
            )
        )
    assert all(len(r.data) == 1 for r in results)
    after = scrape(cluster)
    assert _jobs(after, "succeeded") - before == 3
    assert sum(v for (name, _), v in after.items() if name == "django_http_requests_total_by_method_total") > 0


@pytest.mark.skipif(not settings.BROKER_URL, reason="two separate workers need a broker (the PostgreSQL + Redis pass)")
def test_both_workers_report_heartbeats_and_did_work(cluster, client):
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda i: client.images.generate(
                    model="dall-e-2", prompt=f"x{i}", size="256x256", response_format="b64_json"
                ),
                range(4),
            )
        )
    deadline = time.monotonic() + 15
    while True:
        samples = scrape(cluster)
        up = {
            dict(labels)["worker"] for (name, labels), v in samples.items() if name == "imagegen_worker_up" and v == 1
        }
        busy = {
            dict(labels)["worker"]
            for (name, labels), v in samples.items()
            if name == "imagegen_worker_messages_total" and v > 0
        }
        if (len(up) >= 2 and len(busy) >= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(up) >= 2, samples
    assert len(busy) >= 2, "both workers should have run jobs"


def test_readyz_checks_the_store_and_fails_while_it_is_away(cluster):
    with urllib.request.urlopen(cluster.url + "/readyz", timeout=10) as response:
        assert json.loads(response.read())["checks"] == ["database", "broker", "storage"]
    cluster.store.stop()
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(cluster.url + "/readyz", timeout=30)
        assert refused.value.code == 503 and "storage" in json.loads(refused.value.read())["failing"]
        with urllib.request.urlopen(cluster.url + "/healthz", timeout=10) as response:  # liveness is unaffected
            assert response.status == 200
    finally:
        cluster.store.start()
