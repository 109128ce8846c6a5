"""Images and edit inputs in an S3-compatible object store (moto's server on loopback,
spoken to through boto3 and django-storages), with the in-process worker: nothing is
written under MEDIA_ROOT, links redirect to presigned URLs, and a store that goes away
fails the job, releases its hold and answers a clear 502/503, then recovers."""

from __future__ import annotations

import base64
import io
import urllib.request

import pytest
from PIL import Image

from billing.models import CreditAccount, Hold
from images.models import Job
from tests.conftest import post_json
from tests.images.test_edits import half_transparent_mask, png
from tests.images.test_tasks_and_streaming import parse_sse
from tests.s3 import MotoS3, use_s3

URL = "/v1/images/generations"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def s3(store, settings, tmp_path):
    """The default storage is the bucket; MEDIA_ROOT is an empty folder that must stay empty."""
    if store.proc is None:  # a test stopped it
        store.start()
    store.clear()
    settings.MEDIA_ROOT = str(tmp_path / "media")
    use_s3(settings, store)
    yield store
    assert not (tmp_path / "media").exists() or not any((tmp_path / "media").rglob("*")), "wrote to local disk"


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _follow(api, url: str) -> tuple[int, str, bytes]:
    """GET our signed link with the test client (302), then the presigned URL over HTTP."""
    response = api.get(url.removeprefix("http://testserver"))
    assert response.status_code == 302, response.content
    location = response["Location"]
    with urllib.request.urlopen(location, timeout=10) as fetched:  # no key, no cookies
        return fetched.status, location, fetched.read()


def test_generation_url_redirects_to_a_presigned_object_of_the_right_size(api, worker, tenant, s3):
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "a lighthouse", "size": "256x256", "n": 2}, tenant)
    assert response.status_code == 200, response.content
    job = Job.objects.get()
    assert [img.file for img in job.images.order_by("index")] == [
        f"images/{str(job.pk)[:2]}/{job.pk}-{i}.png" for i in range(2)
    ]
    assert s3.keys("images/") == sorted(img.file for img in job.images.all())
    for item in response.json()["data"]:
        status, location, data = _follow(api, item["url"])
        assert status == 200 and location.startswith(s3.endpoint) and "X-Amz-Signature=" in location
        assert "X-Amz-Expires=" in location
        image = _image(data)
        assert image.format == "PNG" and image.size == (256, 256)


def test_generation_b64_json_reads_the_object_back(api, worker, tenant, s3):
    response = post_json(
        api, URL, {"model": "gpt-image-1", "prompt": "a fox", "quality": "low", "output_format": "webp"}, tenant
    )
    assert response.status_code == 200, response.content
    image = _image(base64.b64decode(response.json()["data"][0]["b64_json"]))
    assert image.format == "WEBP" and image.size == (1024, 1024)
    assert len(s3.keys("images/")) == 1 and s3.keys("images/")[0].endswith(".webp")


def test_edit_with_mask_stores_its_inputs_in_the_bucket_and_removes_them(api, worker, tenant, s3):
    response = api.post(
        "/v1/images/edits",
        {
            "model": "dall-e-2",
            "prompt": "add a moon",
            "size": "256x256",
            "response_format": "b64_json",
            "image": png(),
            "mask": half_transparent_mask(),
        },
        format="multipart",
        **tenant.auth,
    )
    assert response.status_code == 200, response.content
    assert _image(base64.b64decode(response.json()["data"][0]["b64_json"])).size == (256, 256)
    job = Job.objects.get()
    assert job.params["extra"]["init_file"] == f"inputs/{job.pk}/init.png"
    assert job.params["extra"]["mask_file"] == f"inputs/{job.pk}/mask.png"
    assert s3.keys("inputs/") == []  # read by the worker from the bucket, deleted once settled
    assert len(s3.keys("images/")) == 1


def test_variation_through_the_bucket(api, worker, tenant, s3):
    response = api.post(
        "/v1/images/variations",
        {"model": "dall-e-2", "image": png(), "size": "256x256"},
        format="multipart",
        **tenant.auth,
    )
    assert response.status_code == 200, response.content
    _, _, data = _follow(api, response.json()["data"][0]["url"])
    assert _image(data).size == (256, 256)


def test_stream_completes_with_the_stored_image(api, worker, tenant, s3):
    body = {"model": "gpt-image-1", "prompt": "x", "quality": "low", "stream": True, "partial_images": 1}
    response = post_json(api, URL, body, tenant)
    events = parse_sse(b"".join(response.streaming_content))
    assert events[-1][0] == "image_generation.completed", events[-1]
    assert _image(base64.b64decode(events[-1][1]["b64_json"])).size == (1024, 1024)
    assert len(s3.keys("images/")) == 1


def test_link_streams_from_the_store_when_redirects_are_off(api, worker, tenant, s3, settings):
    settings.S3_PRESIGNED_REDIRECT = False
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "x", "size": "256x256"}, tenant)
    served = api.get(response.json()["data"][0]["url"].removeprefix("http://testserver"))
    assert served.status_code == 200 and served["Content-Type"] == "image/png"
    assert _image(b"".join(served.streaming_content)).size == (256, 256)


def test_store_away_fails_the_job_releases_the_hold_and_recovers(api, worker, tenant, s3):
    s3.stop()
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "x", "size": "256x256"}, tenant)
    assert response.status_code in (502, 503), response.content
    error = response.json()["error"]
    assert error["code"] == "storage_failed" and "nothing was charged" in error["message"]
    job = Job.objects.get()
    assert job.status == Job.Status.FAILED and job.images.count() == 0
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert (account.balance, account.held) == (10_000, 0)
    assert Hold.objects.get(job=job).status == Hold.Status.RELEASED

    s3.start()  # back (empty: a fresh bucket)
    again = post_json(
        api, URL, {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}, tenant
    )
    assert again.status_code == 200, again.content
    assert _image(base64.b64decode(again.json()["data"][0]["b64_json"])).size == (256, 256)
    assert len(s3.keys("images/")) == 1


def test_store_away_before_an_edit_is_queued_answers_503_and_charges_nothing(api, worker, tenant, s3):
    s3.stop()
    response = api.post(
        "/v1/images/edits",
        {"model": "dall-e-2", "prompt": "add a moon", "size": "256x256", "image": png()},
        format="multipart",
        **tenant.auth,
    )
    assert response.status_code == 503, response.content
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert (account.balance, account.held) == (10_000, 0)


def test_b64_answer_while_the_store_is_away_is_503_not_500(api, worker, tenant, s3, settings):
    response = post_json(
        api,
        URL,
        {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"},
        tenant,
        HTTP_PREFER="respond-async",
    )
    task_id = response.json()["id"]
    job = Job.objects.get(pk=task_id)
    from images.services.jobs import job_wait

    assert job_wait(job_id=job.pk, timeout=60).status == Job.Status.SUCCEEDED
    s3.stop()
    task = api.get(f"/v1/images/tasks/{task_id}", **tenant.auth)
    assert task.status_code == 503 and task.json()["error"]["code"] == "storage_unavailable"
    settings.S3_PRESIGNED_REDIRECT = False
    image = job.images.get()
    from images.files import image_token

    served = api.get(f"/v1/files/{image_token(image)}")
    assert served.status_code == 503 and served.json()["error"]["code"] == "storage_unavailable"
