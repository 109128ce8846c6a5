"""Raw requests in each seed's shape, responses checked field by field."""

from __future__ import annotations

import base64
import io
from datetime import datetime

from PIL import Image

from billing.models import CreditAccount
from images.models import Job
from tests.conftest import post_json


def png_b64(width=256, height=256) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 60, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_seed_000_alphaedge_vision_generate(api, worker, tenant):
    response = post_json(
        api,
        "/v1/vision/generate",
        {"model": "alphaedge-vision-3-1-2505", "prompt": "A beautiful sunset over the ocean", "size": "256x256"},
        tenant,
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"id", "object", "created", "data"}
    assert body["id"].startswith("img-") and body["object"] == "vision.image" and isinstance(body["created"], int)
    item = body["data"][0]
    assert set(item) == {"url", "b64_json"} and item["url"].startswith("http://testserver/v1/files/")
    assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size == (256, 256)


def test_seed_000_default_model(api, worker, tenant):
    post_json(api, "/v1/vision/generate", {"prompt": "x", "size": "256x256"}, tenant)
    assert Job.objects.get().model.public_id == "alphaedge-vision-3-1-2505"


def test_seed_001_modelmax_imagen3(api, worker, tenant):
    response = post_json(
        api,
        "/v1/images/generations",
        {
            "model": "imagen-3",
            "prompt": "A watercolor painting",
            "n": 1,
            "size": "1024x1024",
            "quality": "hd",
            "style": "natural",
            "response_format": "b64_json",
        },
        tenant,
    )
    assert response.status_code == 200, response.content
    item = response.json()["data"][0]
    assert "revised_prompt" in item and "b64_json" in item


def test_seed_002_aigne_generation_defaults_to_dalle2(api, worker, tenant):
    response = post_json(
        api, "/api/images/generations", {"prompt": "a cat programming", "n": 1, "size": "256x256"}, tenant
    )
    assert response.status_code == 200, response.content
    assert set(response.json()) == {"created", "data"} and "url" in response.json()["data"][0]
    assert Job.objects.get().model.public_id == "dall-e-2"


def test_seed_002_aigne_image_field_makes_an_edit(api, worker, tenant):
    for image in (png_b64(), "data:image/png;base64," + png_b64(), [png_b64(), png_b64()]):
        response = post_json(
            api,
            "/api/images/generations",
            {"model": "gpt-image-1", "prompt": "edit me", "quality": "low", "image": image},
            tenant,
        )
        assert response.status_code == 200, response.content
    assert set(Job.objects.values_list("kind", flat=True)) == {"edit"}


def test_seed_002_private_url_is_refused(api, parked, tenant):
    for url in ("http://127.0.0.1:8000/x.png", "http://10.0.0.1/x.png", "http://localhost/x.png"):
        response = post_json(
            api, "/api/images/generations", {"model": "gpt-image-1", "prompt": "x", "image": url}, tenant
        )
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image_url", url
    assert not Job.objects.exists() and CreditAccount.objects.get(tenant=tenant.tenant).held == 0


def test_seed_002_bad_image_is_400(api, parked, tenant):
    response = post_json(
        api,
        "/api/images/generations",
        {"model": "gpt-image-1", "prompt": "x", "image": base64.b64encode(b"text, not an image").decode()},
        tenant,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"


def test_seed_003_reseller_envelope(api, worker, tenant):
    response = post_json(
        api,
        "/api/v1/image/generation",
        {
            "prompt": "a fox",
            "n": 1,
            "size": "1024x1024",
            "stream": False,
            "output_compression": 100,
            "model": "gpt-image-1.5",
            "quality": "low",
        },
        tenant,
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["code"] == 0 and body["request_id"] == response["x-request-id"] and body["message"]
    data = body["data"]
    assert len(data["urls"]) == 1 and data["task_status"] == "succeeded"
    assert Job.objects.filter(pk=data["task_id"]).exists()
    assert set(data["usage"]) == {"images", "seconds", "input_tokens", "output_tokens", "total_tokens"}
    assert data["usage"]["images"] == 1 and data["usage"]["output_tokens"] == 272
    datetime.fromisoformat(data["expired"].replace("Z", "+00:00"))


def test_seed_003_errors_use_the_same_envelope(api, registry, tenant):
    response = post_json(api, "/api/v1/image/generation", {"prompt": "x", "n": 11}, tenant)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 400 and body["data"] is None and "n" in body["message"]
    unauthorized = post_json(api, "/api/v1/image/generation", {"prompt": "x"})
    assert unauthorized.status_code == 401 and unauthorized.json()["code"] == 401
