"""Edits and variations (multipart, as the SDK sends them), and their bad inputs."""

from __future__ import annotations

import base64
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from billing.models import CreditAccount
from images.models import Job

EDITS = "/v1/images/edits"
VARIATIONS = "/v1/images/variations"


def png(width: int = 256, height: int = 256, *, mode: str = "RGB", color=(200, 40, 40), name: str = "a.png"):
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/png")


def half_transparent_mask(width: int = 256, height: int = 256):
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return SimpleUploadedFile("mask.png", buffer.getvalue(), content_type="image/png")


def post(api, path, tenant, data):
    return api.post(path, data, format="multipart", **tenant.auth)


def decode(item) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))


def test_dalle2_edit_with_mask(api, worker, tenant):
    response = post(
        api,
        EDITS,
        tenant,
        {
            "model": "dall-e-2",
            "prompt": "add a moon",
            "size": "256x256",
            "response_format": "b64_json",
            "image": png(),
            "mask": half_transparent_mask(),
        },
    )
    assert response.status_code == 200, response.content
    assert decode(response.json()["data"][0]).size == (256, 256)
    job = Job.objects.get()
    assert job.kind == "edit" and job.params["extra"]["mask_file"]
    from django.core.files.storage import default_storage

    # The stored init image and mask are removed once the job is settled.
    assert not default_storage.exists(job.params["extra"]["init_file"])
    assert not default_storage.exists(job.params["extra"]["mask_file"])
    assert CreditAccount.objects.get(tenant=tenant.tenant).balance == 10_000 - 16


def test_gpt_image_edit_with_an_image_list(api, worker, tenant):
    images = [png(name="a.png"), png(color=(10, 200, 10), name="b.png")]
    response = post(
        api, EDITS, tenant, {"model": "gpt-image-1", "prompt": "merge", "quality": "low", "image[]": images, "n": "2"}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert len(body["data"]) == 2 and body["size"] == "1024x1024" and "usage" in body
    assert Job.objects.get().params["extra"]["inputs"] == 2


def test_edit_size_auto_follows_the_input_aspect(api, worker, tenant):
    response = post(
        api, EDITS, tenant, {"model": "gpt-image-1", "prompt": "wide", "quality": "low", "image": png(600, 300)}
    )
    assert response.status_code == 200, response.content
    assert response.json()["size"] == "1536x1024"


def test_variation(api, worker, tenant):
    response = post(
        api, VARIATIONS, tenant, {"image": png(), "n": "2", "size": "256x256", "response_format": "b64_json"}
    )
    assert response.status_code == 200, response.content
    assert [decode(item).size for item in response.json()["data"]] == [(256, 256)] * 2
    assert Job.objects.get().kind == "variation"


BAD = [
    (
        EDITS,
        lambda: {
            "model": "dall-e-2",
            "prompt": "x",
            "image": SimpleUploadedFile("a.png", b"hello, not an image", content_type="image/png"),
        },
        400,
        "image",
    ),
    (
        EDITS,
        lambda: {
            "model": "dall-e-2",
            "prompt": "x",
            "image": SimpleUploadedFile("a.png", png().read()[:200], content_type="image/png"),
        },
        400,
        "image",
    ),
    (
        EDITS,
        lambda: {"model": "dall-e-2", "prompt": "x", "image": png(), "mask": half_transparent_mask(128, 128)},
        400,
        "mask",
    ),
    (EDITS, lambda: {"model": "dall-e-2", "prompt": "x", "image": png(), "mask": png()}, 400, "mask"),
    (
        EDITS,
        lambda: {"model": "gpt-image-1", "prompt": "x", "image[]": [png(name=f"{i}.png") for i in range(17)]},
        400,
        "image",
    ),
    (EDITS, lambda: {"model": "dall-e-2", "prompt": "x", "image": png(300, 200)}, 400, "image"),
    (EDITS, lambda: {"model": "dall-e-3", "prompt": "x", "image": png()}, 400, "model"),
    (EDITS, lambda: {"model": "dall-e-2", "prompt": "x"}, 400, "image"),
    (EDITS, lambda: {"model": "dall-e-2", "image": png()}, 400, "prompt"),
    (
        EDITS,
        lambda: {"model": "gpt-image-1", "prompt": "x", "image": png(), "partial_images": "4"},
        400,
        "partial_images",
    ),
    (
        EDITS,
        lambda: {"model": "gpt-image-1-mini", "prompt": "x", "image": png(), "input_fidelity": "high"},
        400,
        "input_fidelity",
    ),
    (VARIATIONS, lambda: {"model": "gpt-image-1", "image": png()}, 400, "model"),
    (VARIATIONS, lambda: {"image": png(300, 200)}, 400, "image"),
]


@pytest.mark.parametrize(
    "path,make,status,param", BAD, ids=[f"{b[0].rsplit('/', 1)[1]}-{b[3]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_input_is_rejected_and_charges_nothing(api, parked, tenant, path, make, status, param):
    response = post(api, path, tenant, make())
    assert response.status_code == status, response.content
    assert response.json()["error"]["param"] == param
    assert not Job.objects.exists()
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0


def test_oversized_upload_is_413(api, parked, tenant):
    big = SimpleUploadedFile("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (5 * 1024 * 1024), content_type="image/png")
    response = post(api, EDITS, tenant, {"model": "dall-e-2", "prompt": "x", "image": big})
    assert response.status_code == 413 and response.json()["error"]["param"] == "image"


def test_decompression_bomb_is_400(api, parked, tenant):
    buffer = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buffer, format="PNG")  # 100 Mpx of zeros: a tiny file
    bomb = SimpleUploadedFile("bomb.png", buffer.getvalue(), content_type="image/png")
    response = post(api, EDITS, tenant, {"model": "gpt-image-1", "prompt": "x", "image": bomb})
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"
