"""POST /v1/images/generations through DRF's client with a real worker and the demo model."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from billing.models import CreditAccount, UsageRecord
from images.models import Job
from images.selectors import image_model_cache_clear
from tests.conftest import post_json

URL = "/v1/images/generations"


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_dalle2_b64_json_returns_png_of_requested_size_and_charges_the_price(api, worker, tenant):
    response = post_json(
        api,
        URL,
        {"model": "dall-e-2", "prompt": "a lighthouse", "size": "256x256", "response_format": "b64_json", "n": 2},
        tenant,
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"created", "data"}
    assert len(body["data"]) == 2
    for item in body["data"]:
        image = decode(item["b64_json"])
        assert image.format == "PNG" and image.size == (256, 256)
    assert response["x-credits-charged"] == "32"  # 2 x 16 credits
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert (account.balance, account.held) == (10_000 - 32, 0)
    assert response["x-credits-remaining"] == str(10_000 - 32)
    usage = UsageRecord.objects.get(tenant=tenant.tenant)
    assert (usage.outcome, usage.images, usage.credits_charged, usage.pixels) == ("succeeded", 2, 32, 2 * 256 * 256)


def test_default_response_is_a_signed_url_readable_without_a_key(api, worker, tenant):
    response = post_json(api, URL, {"prompt": "a lighthouse", "size": "256x256"}, tenant)
    assert response.status_code == 200, response.content
    url = response.json()["data"][0]["url"]
    assert url.startswith("http://testserver/v1/files/")
    image_response = api.get(url.removeprefix("http://testserver"))
    assert image_response.status_code == 200 and image_response["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(b"".join(image_response.streaming_content)))
    assert image.size == (256, 256)
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    missing = api.get(tampered.removeprefix("http://testserver"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_expired_link_is_404(api, worker, tenant, settings):
    response = post_json(api, URL, {"prompt": "x", "size": "256x256"}, tenant)
    url = response.json()["data"][0]["url"].removeprefix("http://testserver")
    settings.IMAGE_URL_TTL_SECONDS = -1
    assert api.get(url).status_code == 404


def test_gpt_image_returns_b64_with_usage_and_resolved_fields(api, worker, tenant):
    response = post_json(
        api,
        URL,
        {
            "model": "gpt-image-1",
            "prompt": "a red fox in snow",
            "quality": "low",
            "output_format": "jpeg",
            "output_compression": 50,
        },
        tenant,
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["size"] == "1024x1024" and body["quality"] == "low"
    assert body["background"] == "opaque" and body["output_format"] == "jpeg"
    usage = body["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] == 272
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"] == {"text_tokens": usage["input_tokens"], "image_tokens": 0}
    image = decode(body["data"][0]["b64_json"])
    assert image.format == "JPEG" and image.size == (1024, 1024)


def test_dalle3_returns_revised_prompt_with_style_template(api, worker, tenant):
    response = post_json(
        api,
        URL,
        {"model": "dall-e-3", "prompt": "a quiet harbour", "style": "natural", "response_format": "b64_json"},
        tenant,
    )
    assert response.status_code == 200, response.content
    item = response.json()["data"][0]
    assert item["revised_prompt"].startswith("a quiet harbour") and item["revised_prompt"] != "a quiet harbour"
    assert decode(item["b64_json"]).size == (1024, 1024)


def test_same_seed_gives_same_image(api, worker, tenant):
    body = {"model": "dall-e-2", "prompt": "seeded", "size": "256x256", "response_format": "b64_json", "seed": 42}
    first = post_json(api, URL, body, tenant).json()["data"][0]["b64_json"]
    second = post_json(api, URL, body, tenant).json()["data"][0]["b64_json"]
    other = post_json(api, URL, {**body, "seed": 43}, tenant).json()["data"][0]["b64_json"]
    assert decode(first).tobytes() == decode(second).tobytes()
    assert decode(first).tobytes() != decode(other).tobytes()


def test_nulls_mean_defaults(api, worker, tenant):
    response = post_json(
        api,
        URL,
        {
            "model": "gpt-image-1",
            "prompt": "x",
            "n": None,
            "size": None,
            "quality": None,
            "background": None,
            "output_format": None,
        },
        tenant,
    )
    assert response.status_code == 200, response.content
    assert response.json()["quality"] == "high" and response.json()["size"] == "1024x1024"


def test_failed_generation_is_502_not_retried_and_releases_the_hold(api, worker, tenant):
    from images.models import ImageModel

    ImageModel.objects.filter(public_id="dall-e-2").update(source="/nonexistent/model")
    image_model_cache_clear()  # (a bulk update sends no signal)
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "x", "size": "256x256"}, tenant)
    assert response.status_code == 502
    assert response["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "generation_failed"
    job = Job.objects.get(tenant=tenant.tenant)
    assert str(job.pk) in error["message"] and job.status == "failed"
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert (account.balance, account.held) == (10_000, 0)
    assert job.hold.status == "released"
    assert UsageRecord.objects.get(job=job).outcome == "failed"


def test_wait_past_its_limit_names_the_job_and_is_not_retried(api, parked, tenant):
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "x", "size": "256x256"}, tenant)
    assert response.status_code == 504
    assert response["x-should-retry"] == "false"
    job = Job.objects.get(tenant=tenant.tenant)
    assert str(job.pk) in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "job_wait_timeout"


def test_insufficient_credits_is_402_and_creates_no_job(api, registry, make_tenant):
    poor = make_tenant(credits=10)
    response = post_json(api, URL, {"model": "dall-e-2", "prompt": "x", "size": "256x256"}, poor)
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota" and error["param"] is None
    assert "16 credits" in error["message"] and "10 credits" in error["message"]
    assert not Job.objects.filter(tenant=poor.tenant).exists()
    assert UsageRecord.objects.get(tenant=poor.tenant).outcome == "refused"
    account = CreditAccount.objects.get(tenant=poor.tenant)
    assert (account.balance, account.held) == (10, 0)


@pytest.mark.parametrize(
    "model_id",
    [
        "dall-e-2",
        "dall-e-3",
        "gpt-image-1",
        "gpt-image-1-mini",
        "gpt-image-1.5",
        "imagen-3",
        "alphaedge-vision-3-1-2505",
    ],
)
def test_models_endpoint_lists_every_seeded_model(api, registry, tenant, model_id):
    listing = api.get("/v1/models", **tenant.auth).json()
    assert listing["object"] == "list"
    assert model_id in {m["id"] for m in listing["data"]}
    detail = api.get(f"/v1/models/{model_id}", **tenant.auth).json()
    assert detail["id"] == model_id and detail["object"] == "model" and isinstance(detail["created"], int)


def test_unknown_model_detail_is_404_envelope(api, registry, tenant):
    response = api.get("/v1/models/nope", **tenant.auth)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
