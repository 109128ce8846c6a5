"""Issue #13's faults on the request path, each with the other members of its kind:
cheap checks before decoding, a pixel budget, nothing written by a refused request,
strict fields on every body, streamed replays, dall-e-2's transparency mask, input
image tokens in `usage`, and JSON edits."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, ImageFile

from billing.models import CreditAccount, LedgerEntry
from images.models import Job
from images.profiles import input_image_tokens
from images.selectors import image_model_cache_clear
from tests.conftest import post_json
from tests.images.test_tasks_and_streaming import parse_sse

EDITS = "/v1/images/edits"


def png_bytes(width: int = 256, height: int = 256, *, mode: str = "RGB", color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(data: bytes, name: str = "a.png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="image/png")


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


def stored_inputs(media: Path) -> list[Path]:
    return [p for p in (media / "inputs").rglob("*") if p.is_file()] if (media / "inputs").exists() else []


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """Counts full image decodes (PIL's ImageFile.load) during a request."""
    calls: list[int] = []
    original = ImageFile.ImageFile.load

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return calls


# ---- Cheap refusals before any decode; a pixel budget ---------------------------------


def test_a_tenant_without_credits_is_refused_before_any_image_is_decoded(api, parked, make_tenant, media, decodes):
    poor = make_tenant(credits=0)
    files = [upload(png_bytes(1024, 1024), f"{i}.png") for i in range(16)]
    response = api.post(
        EDITS, {"model": "gpt-image-1", "prompt": "blend", "image[]": files}, format="multipart", **poor.auth
    )
    assert response.status_code == 402 and response.json()["error"]["code"] == "insufficient_quota"
    assert decodes == []  # sizes were read from the headers only
    assert not Job.objects.exists() and stored_inputs(media) == []


@pytest.mark.parametrize(
    "path,extra", [(EDITS, {"model": "gpt-image-1", "prompt": "x"}), ("/v1/images/variations", {"model": "dall-e-2"})]
)
def test_pixels_past_the_budget_are_a_400_before_decoding(api, parked, tenant, media, decodes, settings, path, extra):
    settings.INPUT_PIXEL_BUDGET = 300 * 300
    response = api.post(path, {**extra, "image": upload(png_bytes(400, 400))}, format="multipart", **tenant.auth)
    assert response.status_code == 400 and response.json()["error"]["code"] == "input_too_large"
    assert decodes == []
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0


def test_the_pixel_budget_counts_every_image_of_a_request(api, parked, tenant, media, settings):
    settings.INPUT_PIXEL_BUDGET = 3 * 256 * 256
    files = [upload(png_bytes(), f"{i}.png") for i in range(4)]  # 4 x 65,536 pixels: over a budget of 3
    response = api.post(
        EDITS, {"model": "gpt-image-1", "prompt": "x", "image[]": files}, format="multipart", **tenant.auth
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "input_too_large"


def test_a_url_reference_is_not_fetched_for_a_tenant_that_cannot_pay(api, parked, make_tenant, media, settings):
    """A URL no server answers: fetching it would fail with invalid_image_url; the 402
    comes first, so nothing was fetched."""
    settings.IMAGE_FETCH_ALLOW_PRIVATE = True
    poor = make_tenant(credits=0)
    response = post_json(
        api,
        "/api/images/generations",
        {"model": "gpt-image-1", "prompt": "x", "image": "http://127.0.0.1:9/never.png"},
        poor,
    )
    assert response.status_code == 402, response.content


# ---- A refused request writes nothing ----------------------------------------------------

MASK_CASES = [
    ("gpt-image-1", png_bytes(128, 128), png_bytes(64, 64, mode="RGBA", color=(0, 0, 0, 0)), "invalid_mask"),
    ("gpt-image-1", png_bytes(128, 128), png_bytes(128, 128), "invalid_mask"),  # no alpha channel
    ("dall-e-2", png_bytes(128, 128), png_bytes(64, 64, mode="RGBA", color=(0, 0, 0, 0)), "invalid_mask"),
    ("gpt-image-1", png_bytes(128, 128), b"not an image at all", "invalid_image_format"),
]


@pytest.mark.parametrize("model,image,mask,code", MASK_CASES)
def test_a_refused_edit_leaves_nothing_on_disk(api, worker, tenant, media, model, image, mask, code):
    response = api.post(
        EDITS,
        {"model": model, "prompt": "x", "image": upload(image), "mask": upload(mask, "mask.png")},
        format="multipart",
        **tenant.auth,
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == code
    assert stored_inputs(media) == []
    assert not Job.objects.exists()


def test_an_edit_refused_for_money_leaves_nothing_on_disk(api, worker, make_tenant, media):
    poor = make_tenant(credits=3)
    response = api.post(
        EDITS,
        {"model": "dall-e-2", "prompt": "x", "size": "256x256", "image": upload(png_bytes())},
        format="multipart",
        **poor.auth,
    )
    assert response.status_code == 402
    assert stored_inputs(media) == []


def test_a_finished_edit_keeps_no_inputs(api, worker, tenant, media):
    response = api.post(
        EDITS,
        {"model": "dall-e-2", "prompt": "x", "size": "256x256", "image": upload(png_bytes())},
        format="multipart",
        **tenant.auth,
    )
    assert response.status_code == 200, response.content
    assert stored_inputs(media) == []


# ---- Strict fields, multipart and vendor shapes too ----------------------------------------


@pytest.mark.parametrize(
    "path,fields",
    [
        (EDITS, {"model": "dall-e-2", "prompt": "x", "qualty": "low"}),
        (EDITS, {"model": "dall-e-2", "prompt": "x", "moderation": "low"}),  # not a field of the multipart edit
        ("/v1/images/variations", {"model": "dall-e-2", "prompt": "a variation takes no prompt"}),
    ],
)
def test_unknown_multipart_fields_are_refused(api, parked, tenant, path, fields):
    name = next(k for k in fields if k not in ("model",) and (k != "prompt" or "variations" in path))
    name = "qualty" if "qualty" in fields else name
    response = api.post(path, {**fields, "image": upload(png_bytes())}, format="multipart", **tenant.auth)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_parameter" and error["message"] == f"Unknown parameter: '{error['param']}'."
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0


def test_an_unknown_file_part_is_refused(api, parked, tenant):
    response = api.post(
        EDITS,
        {"model": "dall-e-2", "prompt": "x", "image": upload(png_bytes()), "masque": upload(png_bytes(), "m.png")},
        format="multipart",
        **tenant.auth,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "masque"


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/vision/generate", {"prompt": "x", "quality": "hd"}, "quality"),  # seed 000 documents no quality
        ("/api/images/generations", {"prompt": "x", "background": "opaque"}, "background"),  # seed 002: not documented
        ("/api/v1/image/generation", {"prompt": "x", "qualty": "low"}, "qualty"),
    ],
)
def test_vendor_shapes_keep_only_their_documented_fields(api, parked, tenant, path, body, param):
    response = post_json(api, path, body, tenant)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["code"] == "unknown_parameter"


def test_the_misspelled_quality_is_not_charged_at_the_default(api, parked, tenant):
    response = post_json(
        api, "/v1/images/generations", {"model": "gpt-image-1", "prompt": "a white cat", "qualty": "low"}, tenant
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Unknown parameter: 'qualty'.",
        "type": "invalid_request_error",
        "param": "qualty",
        "code": "unknown_parameter",
    }
    assert not LedgerEntry.objects.filter(tenant=tenant.tenant, kind="hold").exists()


def test_deeply_nested_json_to_the_playground_is_a_400(client, parked, tenant):
    from django.contrib.auth import get_user_model

    from accounts.models import Membership

    user = get_user_model().objects.create_user(username="nest", password="a-long-password-9")
    Membership.objects.create(user=user, tenant=tenant.tenant, role=Membership.Role.OWNER)
    client.force_login(user)
    body = "[" * 100_000 + "]" * 100_000
    response = client.post("/dashboard/api/generations", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# ---- Streamed replays come back as a stream ---------------------------------------------------


def test_a_streamed_request_replayed_with_its_key_is_streamed_again_and_not_charged(api, worker, tenant):
    body = {"model": "gpt-image-1", "prompt": "x", "quality": "low", "stream": True, "partial_images": 1}
    first = post_json(api, "/v1/images/generations", body, tenant, HTTP_IDEMPOTENCY_KEY="stream-1")
    first_events = parse_sse(b"".join(first.streaming_content))
    assert first_events[-1][0] == "image_generation.completed"
    balance = CreditAccount.objects.get(tenant=tenant.tenant).balance
    again = post_json(api, "/v1/images/generations", body, tenant, HTTP_IDEMPOTENCY_KEY="stream-1")
    assert again["Content-Type"] == "text/event-stream" and again["Idempotent-Replayed"] == "true"
    events = parse_sse(b"".join(again.streaming_content))
    assert [e for e, _ in events] == ["image_generation.completed"]
    assert events[0][1]["b64_json"] == first_events[-1][1]["b64_json"]
    assert events[0][1]["usage"] == first_events[-1][1]["usage"]
    assert CreditAccount.objects.get(tenant=tenant.tenant).balance == balance
    assert Job.objects.filter(tenant=tenant.tenant).count() == 1


# ---- dall-e-2: the image's transparent area is the mask ---------------------------------------


def _half_transparent(size: int = 256) -> bytes:
    image = Image.new("RGBA", (size, size), (30, 160, 60, 255))
    image.paste((0, 0, 0, 0), (0, 0, size // 2, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_dalle2_edit_without_mask_uses_the_transparent_area(api, parked, tenant, media):
    from django.db import transaction  # noqa: F401  (parked: the job stays queued for inspection)

    response = api.post(
        EDITS,
        {"model": "dall-e-2", "prompt": "x", "size": "256x256", "image": upload(_half_transparent())},
        format="multipart",
        **tenant.auth,
        HTTP_PREFER="respond-async",
    )
    assert response.status_code == 202, response.content
    job = Job.objects.get(tenant=tenant.tenant)
    assert job.params["extra"]["mask_file"], "the transparent area must become the mask"


def test_dalle2_edit_of_an_opaque_image_without_mask_edits_it_whole(api, parked, tenant, media):
    response = api.post(
        EDITS,
        {"model": "dall-e-2", "prompt": "x", "size": "256x256", "image": upload(png_bytes())},
        format="multipart",
        **tenant.auth,
        HTTP_PREFER="respond-async",
    )
    assert response.status_code == 202
    assert Job.objects.get(tenant=tenant.tenant).params["extra"]["mask_file"] is None


def test_the_transparency_mask_repaints_only_the_transparent_half():
    from images.profiles import DALLE2
    from images.services.inputs import InputImage, inputs_peek, inputs_prepare

    item = InputImage(param="image", upload=io.BytesIO(_half_transparent()))
    inputs_peek([item], None, rules=DALLE2.edit_inputs)
    prepared = inputs_prepare([item], None, rules=DALLE2.edit_inputs, width=256, height=256)
    assert prepared.mask is not None
    assert prepared.mask.getpixel((10, 128)) == 255 and prepared.mask.getpixel((245, 128)) == 0


# ---- usage counts input images ---------------------------------------------------------------


def test_image_tokens_follow_the_documented_tile_rule():
    assert input_image_tokens(512, 512) == 65 + 129
    assert input_image_tokens(1024, 1024) == 65 + 129  # scaled to 512x512
    assert input_image_tokens(1024, 2048) == 65 + 129 * 2  # 512x1024
    assert input_image_tokens(4096, 1024) == 65 + 129 * 4  # fit 2048x512: 4 tiles
    assert input_image_tokens(100, 100) == 65 + 129  # never enlarged


def test_edit_usage_counts_its_input_images(api, worker, tenant):
    files = [upload(png_bytes(256, 256), f"{i}.png") for i in range(3)]
    response = api.post(
        EDITS,
        {"model": "gpt-image-1", "prompt": "x", "quality": "low", "image[]": files},
        format="multipart",
        **tenant.auth,
    )
    assert response.status_code == 200, response.content
    details = response.json()["usage"]["input_tokens_details"]
    assert details["image_tokens"] == 3 * input_image_tokens(256, 256)
    usage = response.json()["usage"]
    assert usage["input_tokens"] == details["text_tokens"] + details["image_tokens"]


# ---- JSON edits (GPT image models) ----------------------------------------------------------------


def test_json_edit_with_a_data_url(api, worker, tenant):
    response = post_json(
        api,
        EDITS,
        {
            "model": "gpt-image-1",
            "prompt": "make it blue",
            "quality": "low",
            "images": [{"image_url": data_url(png_bytes())}],
        },
        tenant,
    )
    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 1
    assert Job.objects.get(tenant=tenant.tenant).kind == "edit"


@pytest.mark.parametrize(
    "body,status,param,code",
    [
        (
            {"model": "gpt-image-1", "prompt": "x", "images": [{"file_id": "file-123"}]},
            400,
            "images",
            "unsupported_parameter",
        ),
        (
            {"model": "dall-e-2", "prompt": "x", "images": [{"image_url": "data:image/png;base64,AAAA"}]},
            400,
            "images",
            "unsupported_parameter",
        ),
        ({"model": "gpt-image-1", "prompt": "x", "images": []}, 400, "images", None),
        (
            {"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": "http://127.0.0.1/a.png"}]},
            400,
            "images",
            "invalid_image_url",
        ),
        (
            {"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": "data:image/png;base64,!!!"}]},
            400,
            "images",
            None,
        ),
    ],
)
def test_bad_json_edits_are_refused_with_the_right_parameter(api, parked, tenant, body, status, param, code):
    response = post_json(api, EDITS, body, tenant)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["param"].split(".")[0].split("[")[0] == param, error
    if code:
        assert error["code"] == code
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0


def test_json_edit_body_is_sniffed_not_trusted(api, parked, tenant):
    text = "data:image/png;base64," + base64.b64encode(json.dumps({"not": "an image"}).encode()).decode()
    response = post_json(api, EDITS, {"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": text}]}, tenant)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image_format"


# ---- A model whose queue no worker serves ---------------------------------------------------------


def test_a_model_on_a_queue_no_worker_serves_is_refused_at_once(api, registry, tenant):
    from images.models import ImageModel

    ImageModel.objects.filter(public_id="dall-e-2").update(queue="gpu-nowhere")
    image_model_cache_clear()  # (a bulk update sends no signal)
    response = post_json(api, "/v1/images/generations", {"model": "dall-e-2", "prompt": "x", "size": "256x256"}, tenant)
    assert response.status_code == 503 and response["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "model_unavailable"
    assert not Job.objects.exists()
    assert CreditAccount.objects.get(tenant=tenant.tenant).held == 0


# ---- Found by attacking the request path ----------------------------------------------------------


@pytest.mark.parametrize("name", ["mask[0]", "mask[]", "mask[foo]", "image_extra"])
def test_a_misnamed_file_part_is_refused_not_dropped(api, parked, tenant, name):
    mask = png_bytes(256, 256, mode="RGBA", color=(0, 0, 0, 0))
    body = {
        "model": "dall-e-2",
        "prompt": "x",
        "size": "256x256",
        "image": upload(png_bytes()),
        name: upload(mask, "m.png"),
    }
    for path in (EDITS, "/v1/images/variations"):
        fields = {k: v for k, v in body.items() if not (path.endswith("variations") and k == "prompt")}
        response = api.post(path, fields, format="multipart", **tenant.auth)
        assert response.status_code == 400, (path, response.content)
        assert response.json()["error"] == {**response.json()["error"], "param": name, "code": "unknown_parameter"}
    assert not Job.objects.exists()


def test_a_repeated_form_field_is_refused(api, parked, tenant):
    from urllib.parse import urlencode

    body = urlencode([("prompt", "a"), ("model", "dall-e-2"), ("size", "256x256"), ("n", "2"), ("n", "abc")])
    response = api.post("/v1/images/generations", body, content_type="application/x-www-form-urlencoded", **tenant.auth)
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"
    assert response.json()["error"]["code"] == "duplicate_parameter"


@pytest.mark.parametrize("value", ["\u0662", "\uff12", "2.0", " "])
def test_form_integers_are_ascii_digits(api, parked, tenant, value):
    response = api.post(
        EDITS,
        {"model": "dall-e-2", "prompt": "x", "n": value, "image": upload(png_bytes())},
        format="multipart",
        **tenant.auth,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"


def test_aigne_edit_refuses_a_style_its_model_does_not_take(api, parked, tenant):
    response = post_json(
        api,
        "/api/images/generations",
        {"prompt": "x", "image": data_url(png_bytes()), "style": "vivid", "size": "256x256"},
        tenant,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "style"


@pytest.mark.parametrize("value", [[1], {"a": 1}, True, 1.5])
def test_reseller_partial_images_of_another_type_is_refused(api, parked, tenant, value):
    response = post_json(api, "/api/v1/image/generation", {"prompt": "x", "partial_images": value}, tenant)
    assert response.status_code == 400 and response.json()["error"]["param"] == "partial_images"


def test_a_paid_result_the_store_cannot_read_is_not_retryable_and_replays_once_the_store_is_back(
    api, worker, tenant, monkeypatch
):
    from images import serializers
    from images.files import StorageUnavailable

    real = serializers.image_read

    def away(image):
        raise StorageUnavailable("The image store is unavailable.")

    monkeypatch.setattr(serializers, "image_read", away)
    body = {"model": "dall-e-2", "prompt": "a cat", "size": "256x256", "response_format": "b64_json"}
    first = post_json(api, "/v1/images/generations", body, tenant, HTTP_IDEMPOTENCY_KEY="blip")
    assert first.status_code == 503 and first["x-should-retry"] == "false"
    job = Job.objects.get(tenant=tenant.tenant)
    assert str(job.pk) in first.json()["error"]["message"]
    monkeypatch.setattr(serializers, "image_read", real)
    again = post_json(api, "/v1/images/generations", body, tenant, HTTP_IDEMPOTENCY_KEY="blip")
    assert again.status_code == 200 and again["Idempotent-Replayed"] == "true"
    assert len(again.json()["data"]) == 1
    assert Job.objects.filter(tenant=tenant.tenant).count() == 1
    assert CreditAccount.objects.get(tenant=tenant.tenant).balance == 10_000 - 16


def test_a_key_budget_exactly_the_price_is_accepted_and_one_credit_less_is_not(api, parked, tenant):
    body = {"model": "dall-e-2", "prompt": "x", "size": "256x256"}  # 16 credits
    tenant.key.monthly_credit_limit = 16
    tenant.key.save(update_fields=["monthly_credit_limit"])
    assert post_json(api, "/v1/images/generations", body, tenant, HTTP_PREFER="respond-async").status_code == 202
    refused = post_json(api, "/v1/images/generations", body, tenant)  # 16 held: used up
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "key_budget_exceeded"
    tenant.key.monthly_credit_limit = 31
    tenant.key.save(update_fields=["monthly_credit_limit"])
    short = post_json(api, "/v1/images/generations", body, tenant)  # 16 + 16 > 31
    assert short.status_code == 402 and "costs 16 credits" in short.json()["error"]["message"]
