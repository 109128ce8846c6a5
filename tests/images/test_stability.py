"""Stability AI's v2beta shape (issue 26 item 2), driven as its clients drive it:
multipart bodies, `Accept: image/*` or `application/json`, Stability's error envelope;
through the one charged path and the embedded worker."""

from __future__ import annotations

import base64
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from PIL import Image, ImageFilter

from billing.models import CreditAccount, LedgerEntry, UsageRecord
from images.models import ImageModel, Job, StabilityRoute
from images.stability import STABILITY_MODELS, TOOL_SERVICES, nearest_size
from tests.images.test_waiting_asgi import app  # noqa: F401  (the ASGI application fixture)

CORE = "/v2beta/stable-image/generate/core"
SD3 = "/v2beta/stable-image/generate/sd3"
INPAINT = "/v2beta/stable-image/edit/inpaint"
OUTPAINT = "/v2beta/stable-image/edit/outpaint"
ERASE = "/v2beta/stable-image/edit/erase"
SEARCH_REPLACE = "/v2beta/stable-image/edit/search-and-replace"
SEARCH_RECOLOR = "/v2beta/stable-image/edit/search-and-recolor"
REMOVE_BACKGROUND = "/v2beta/stable-image/edit/remove-background"
UPSCALE_FAST = "/v2beta/stable-image/upscale/fast"
UPSCALE_CONSERVATIVE = "/v2beta/stable-image/upscale/conservative"
UPSCALE_CREATIVE = "/v2beta/stable-image/upscale/creative"


def upload(image: Image.Image, name: str = "image.png") -> SimpleUploadedFile:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/png")


def post(api, path, tenant, data, *, accept="image/*", **headers):
    auth = tenant.auth if tenant else {}
    return api.post(path, data, format="multipart", HTTP_ACCEPT=accept, **auth, **headers)


def balance(tenant) -> int:
    return CreditAccount.objects.get(tenant=tenant.tenant).balance


def test_core_answers_the_image_bytes_with_stabilitys_headers(api, worker, tenant):
    response = post(api, CORE, tenant, {"prompt": "a lighthouse at dusk", "output_format": "png", "seed": "1234"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "image/png"
    assert response["finish-reason"] == "SUCCESS" and response["seed"] == "1234"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size == (1024, 1024)  # 1:1, the default
    job = Job.objects.get()
    assert job.model.public_id == "stable-image-core" and job.endpoint == CORE
    credits = STABILITY_MODELS["stable-image-core"]
    assert response["x-credits-charged"] == str(credits) and balance(tenant) == 10_000 - credits
    assert UsageRecord.objects.get(job=job).credits_charged == credits


def test_core_as_json_with_an_aspect_ratio_style_and_jpeg(api, worker, tenant):
    response = post(
        api,
        CORE,
        tenant,
        {"prompt": "a fox", "aspect_ratio": "16:9", "style_preset": "anime", "output_format": "jpeg"},
        accept="application/json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"image", "finish_reason", "seed"} and body["finish_reason"] == "SUCCESS"
    image = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert image.format == "JPEG" and image.size == (1536, 1024)  # the model's size nearest 16:9
    job = Job.objects.get()
    assert job.prompt == "a fox, anime style" and body["seed"] == job.seed and body["seed"] > 0


def test_outpaint_grows_the_canvas_by_exactly_the_margins(api, worker, tenant):
    source = Image.new("RGB", (300, 200), (20, 120, 200))
    response = post(
        api,
        OUTPAINT,
        tenant,
        {"image": upload(source), "left": "50", "right": "10", "up": "7", "down": "33", "output_format": "png"},
    )
    assert response.status_code == 200, response.content
    result = Image.open(io.BytesIO(response.content))
    assert result.size == (300 + 50 + 10, 200 + 7 + 33)
    # What was there is kept (the inpainting path's unmasked area), up to resampling.
    r, g, b = result.convert("RGB").getpixel((50 + 150, 7 + 100))
    assert abs(r - 20) < 24 and abs(g - 120) < 24 and abs(b - 200) < 24
    job = Job.objects.get()
    assert job.kind == "edit" and job.model.public_id == "stable-image-outpaint"
    assert balance(tenant) == 10_000 - STABILITY_MODELS["stable-image-outpaint"]


def test_inpaint_with_a_mask_keeps_the_size_and_what_is_black(api, worker, tenant):
    source = Image.new("RGB", (320, 240), (200, 30, 30))
    mask = Image.new("L", (320, 240), 0)
    mask.paste(255, (0, 0, 160, 240))  # white: repaint the left half
    response = post(
        api,
        INPAINT,
        tenant,
        {"image": upload(source), "mask": upload(mask, "mask.png"), "prompt": "a green meadow", "grow_mask": "0"},
        accept="application/json",
    )
    assert response.status_code == 200, response.content
    result = Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))).convert("RGB")
    assert result.size == (320, 240)
    r, g, b = result.getpixel((300, 120))  # right half: kept
    assert abs(r - 200) < 24 and g < 60 and b < 60
    job = Job.objects.get()
    assert job.params["extra"]["mask_file"] and job.params["extra"]["strength"] == 1.0
    assert job.model.public_id == "stable-image-inpaint"


def test_erase_uses_the_images_alpha_channel_as_its_mask(api, worker, tenant):
    source = Image.new("RGBA", (128, 128), (10, 200, 10, 255))
    source.paste((0, 0, 0, 0), (32, 32, 96, 96))
    response = post(api, ERASE, tenant, {"image": upload(source)})
    assert response.status_code == 200, response.content
    assert Image.open(io.BytesIO(response.content)).size == (128, 128)
    assert Job.objects.get().model.public_id == "stable-image-erase"


def test_missing_prompt_is_a_400_in_stabilitys_envelope(api, registry, tenant):
    response = post(api, CORE, tenant, {"aspect_ratio": "1:1"})
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"id", "name", "errors"} and body["name"] == "bad_request"
    assert "prompt" in body["errors"][0] and body["id"] == response["x-request-id"].removeprefix("req_")
    bad = post(api, CORE, tenant, {"prompt": "x", "aspect_ratio": "7:3"})
    assert bad.status_code == 400 and "aspect_ratio" in bad.json()["errors"][0]
    assert not Job.objects.exists()


def test_an_input_over_10_mib_is_a_413_in_the_envelope(api, registry, tenant):
    huge = SimpleUploadedFile("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (10 * 1024 * 1024), content_type="image/png")
    response = post(api, INPAINT, tenant, {"image": huge, "prompt": "x"})
    assert response.status_code == 413 and response.json()["name"] == "payload_too_large"
    assert not Job.objects.exists()


def test_empty_balance_is_a_402_in_stabilitys_envelope(api, registry, make_tenant):
    broke = make_tenant(credits=0)
    response = post(api, CORE, broke, {"prompt": "a cat"})
    assert response.status_code == 402
    body = response.json()
    assert set(body) == {"id", "name", "errors"} and body["name"] == "payment_required"
    assert not Job.objects.exists()
    assert UsageRecord.objects.get(tenant=broke.tenant).outcome == "refused"


def test_auth_moderation_and_unknown_routes_answer_in_the_envelope(api, registry, tenant):
    unauthorized = post(api, CORE, None, {"prompt": "x"})
    assert unauthorized.status_code == 401 and unauthorized.json()["name"] == "unauthorized"
    blocked = post(api, CORE, tenant, {"prompt": "child sexual abuse material"})
    assert blocked.status_code == 403 and blocked.json()["name"] == "content_moderation", blocked.content
    gone = post(api, "/v2beta/stable-image/control/doodle", tenant, {})
    assert gone.status_code == 404 and gone.json()["name"] == "not_found"
    assert not Job.objects.exists()


def test_user_balance_is_stabilitys_credits_float(api, registry, make_tenant):
    rich = make_tenant(credits=1234)
    response = api.get("/v1/user/balance", **rich.auth)
    assert response.status_code == 200 and response.json() == {"credits": 1234.0}
    assert api.get("/v1/user/balance").json()["name"] == "unauthorized"


def test_sd3_model_values_follow_the_operators_routes(api, parked, tenant):
    response = post(api, SD3, tenant, {"prompt": "x", "model": "sd3.5-medium"}, HTTP_PREFER="respond-async")
    assert response.status_code == 202 and set(response.json()) == {"id"}
    assert Job.objects.get(pk=response.json()["id"]).model.public_id == "sd3.5-medium"
    polled = api.get(f"/v2beta/results/{response.json()['id']}", **tenant.auth)
    assert polled.status_code == 202 and polled.json() == {"id": response.json()["id"], "status": "in-progress"}
    # The operator maps sd3.5-medium to another own model: its price rows now apply.
    StabilityRoute.objects.filter(service="generate/sd3", model_value="sd3.5-medium").update(
        image_model=ImageModel.objects.get(public_id="gpt-image-1")
    )
    again = post(api, SD3, tenant, {"prompt": "x", "model": "sd3.5-medium"}, HTTP_PREFER="respond-async")
    assert Job.objects.get(pk=again.json()["id"]).model.public_id == "gpt-image-1"
    unknown = post(api, SD3, tenant, {"prompt": "x", "model": "sd9"})
    assert unknown.status_code == 400 and unknown.json()["errors"][0].startswith("model:")


def test_sd3_image_to_image_keeps_the_inputs_aspect_ratio(api, worker, tenant):
    source = Image.new("RGB", (400, 200), (90, 90, 200))
    data = {"prompt": "a river", "mode": "image-to-image", "image": upload(source), "strength": "0.6"}
    response = post(api, SD3, tenant, data, accept="application/json")
    assert response.status_code == 200, response.content
    result = Image.open(io.BytesIO(base64.b64decode(response.json()["image"])))
    assert result.size == (1536, 768)  # letterboxed into 1536x1024, cropped back to 2:1
    job = Job.objects.get()
    assert job.kind == "edit" and job.params["extra"]["strength"] == 0.6
    no_strength = post(api, SD3, tenant, {**data, "image": upload(source), "strength": ""})
    assert no_strength.status_code == 400


def test_results_poll_202_then_the_image_and_billing_reconciles(api, worker, tenant):
    submitted = post(
        api, CORE, tenant, {"prompt": "a harbour", "seed": "7"}, accept="application/json", HTTP_PREFER="respond-async"
    )
    assert submitted.status_code == 202, submitted.content
    result_id = submitted.json()["id"]
    assert submitted["Location"].endswith(f"/v2beta/results/{result_id}")
    job = Job.objects.get(pk=result_id)
    first = api.get(f"/v2beta/results/{result_id}", HTTP_ACCEPT="image/*", **tenant.auth)
    if job.status not in Job.TERMINAL and first.status_code == 202:
        assert first.json() == {"id": result_id, "status": "in-progress"}
    from images.services.jobs import job_wait

    assert job_wait(job_id=result_id, timeout=120).status == "succeeded"
    done = api.get(f"/v2beta/results/{result_id}", HTTP_ACCEPT="image/*", **tenant.auth)
    assert done.status_code == 200 and done["finish-reason"] == "SUCCESS" and done["seed"] == "7"
    assert Image.open(io.BytesIO(done.content)).size == (1024, 1024)
    as_json = api.get(f"/v2beta/results/{result_id}", HTTP_ACCEPT="application/json", **tenant.auth)
    assert as_json.json()["seed"] == 7
    missing = api.get("/v2beta/results/00000000-0000-0000-0000-000000000000", **tenant.auth)
    assert missing.status_code == 404 and missing.json()["name"] == "not_found"
    assert LedgerEntry.objects.filter(tenant=tenant.tenant, kind="capture").count() == 1
    call_command("billing_reconcile")


def test_idempotency_key_replays_without_a_second_charge(api, worker, tenant):
    first = post(api, CORE, tenant, {"prompt": "a kite", "seed": "3"}, HTTP_IDEMPOTENCY_KEY="k-1")
    again = post(api, CORE, tenant, {"prompt": "a kite", "seed": "3"}, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 200
    assert again["Idempotent-Replayed"] == "true" and again.content == first.content
    assert Job.objects.count() == 1 and balance(tenant) == 10_000 - STABILITY_MODELS["stable-image-core"]


@pytest.mark.parametrize(
    ("ratio", "size"),
    [(1.0, (1024, 1024)), (16 / 9, (1536, 1024)), (9 / 21, (1024, 1536)), (5 / 4, (1536, 1024)), (4 / 5, (1024, 1536))],
)
def test_aspect_ratio_maps_to_the_nearest_allowed_size(ratio, size):
    assert nearest_size(("1024x1024", "1536x1024", "1024x1536"), ratio) == size


def test_under_asgi_the_waited_answer_is_the_bytes(app, worker, tenant, settings):  # noqa: F811 (the fixture)
    """The ASGI server waits without a thread (core/waiting.py) and renders afterwards:
    the Accept rule and the headers survive that path too."""
    import asyncio

    from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

    from tests.images.test_waiting_asgi import Client

    settings.JOB_WAIT_SECONDS = 60
    client = Client("POST", CORE, tenant, None, {"accept": "image/*", "content-type": MULTIPART_CONTENT})
    client.body = encode_multipart(BOUNDARY, {"prompt": "a lantern", "seed": "11"})
    client.scope["headers"] = [(k, v) for k, v in client.scope["headers"] if k != b"content-length"]
    client.scope["headers"].append((b"content-length", str(len(client.body)).encode()))
    asyncio.run(asyncio.wait_for(client.run(app), 90))
    assert client.status == 200, client.content[:500]
    assert client.headers["content-type"] == "image/png" and client.headers["seed"] == "11"
    assert client.headers["finish-reason"] == "SUCCESS"
    assert Image.open(io.BytesIO(client.content)).size == (1024, 1024)


# ---- Tool-model endpoints and the text-prompted edits ---------------------------------------


@pytest.fixture(scope="module")
def tool_models():
    """The embedded tiny tool models (upscaler, background remover, segmenter) on disk."""
    call_command("build_tool_models", stdout=io.StringIO())


def picture(width: int, height: int) -> Image.Image:
    """A bright square on a dark, graded background."""
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 60) for y in range(height) for x in range(width)])
    image.paste((250, 240, 30), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return image


def tool_price(service: str) -> int:
    return TOOL_SERVICES[service][2]


def test_upscale_fast_is_exactly_four_times_larger_as_bytes_and_json(api, worker, tenant, tool_models):
    response = post(api, UPSCALE_FAST, tenant, {"image": upload(picture(100, 70)), "output_format": "png"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "image/png" and response["finish-reason"] == "SUCCESS"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size == (400, 280)
    job = Job.objects.get()
    assert job.kind == "upscale" and job.model.public_id == "esrgan-tiny-x4" and job.endpoint == UPSCALE_FAST
    price = tool_price("upscale/fast")  # the tool model's `st_upscale_fast` row, not its `upscale` one
    assert response["x-credits-charged"] == str(price) and balance(tenant) == 10_000 - price

    data = {"image": upload(picture(64, 96)), "output_format": "webp"}
    as_json = post(api, UPSCALE_FAST, tenant, data, accept="application/json")
    assert as_json.status_code == 200, as_json.content
    body = as_json.json()
    assert set(body) == {"image", "finish_reason", "seed"}
    image = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert image.format == "WEBP" and image.size == (256, 384)
    # Stability's fast limits: 32-1536 pixels a side, at least 1,024 pixels.
    tiny = post(api, UPSCALE_FAST, tenant, {"image": upload(picture(31, 64))})
    assert tiny.status_code == 400 and tiny.json()["errors"][0].startswith("image:")
    assert Job.objects.count() == 2
    call_command("billing_reconcile")


def test_upscale_conservative_answers_the_image_at_once(api, worker, tenant, tool_models):
    data = {"image": upload(picture(80, 80)), "prompt": "a sharp photo", "creativity": "0.3"}
    response = post(api, UPSCALE_CONSERVATIVE, tenant, data)
    assert response.status_code == 200, response.content
    assert Image.open(io.BytesIO(response.content)).size == (320, 320)
    assert balance(tenant) == 10_000 - tool_price("upscale/conservative")
    no_prompt = post(api, UPSCALE_CONSERVATIVE, tenant, {"image": upload(picture(80, 80))})
    assert no_prompt.status_code == 400 and "prompt" in no_prompt.json()["errors"][0]


def test_upscale_creative_is_async_through_results(api, worker, tenant, tool_models):
    from images.services.jobs import job_wait

    data = {"image": upload(picture(96, 64)), "prompt": "a castle", "output_format": "jpeg", "seed": "5"}
    submitted = post(api, UPSCALE_CREATIVE, tenant, data)
    assert submitted.status_code == 200, submitted.content
    assert set(submitted.json()) == {"id"}  # Stability's: 200 {id}, whatever the Accept
    result_id = submitted.json()["id"]
    assert job_wait(job_id=result_id, timeout=120).status == "succeeded"
    done = api.get(f"/v2beta/results/{result_id}", HTTP_ACCEPT="image/*", **tenant.auth)
    assert done.status_code == 200 and done["Content-Type"] == "image/jpeg" and done["seed"] == "5"
    assert Image.open(io.BytesIO(done.content)).size == (384, 256)
    assert balance(tenant) == 10_000 - tool_price("upscale/creative")
    assert LedgerEntry.objects.filter(tenant=tenant.tenant, kind="capture").count() == 1
    call_command("billing_reconcile")


def test_remove_background_answers_a_png_whose_alpha_keeps_some_pixels(api, worker, tenant, tool_models):
    response = post(api, REMOVE_BACKGROUND, tenant, {"image": upload(picture(96, 64))})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (96, 64)
    alpha = image.getchannel("A").tobytes()
    assert any(a >= 128 for a in alpha) and any(a < 128 for a in alpha)  # kept and dropped
    job = Job.objects.get()
    assert job.kind == "remove_bg" and job.model.public_id == "segformer-tiny-rmbg"
    assert balance(tenant) == 10_000 - tool_price("edit/remove-background")
    jpeg = post(api, REMOVE_BACKGROUND, tenant, {"image": upload(picture(96, 64)), "output_format": "jpeg"})
    assert jpeg.status_code == 400 and jpeg.json()["errors"][0].startswith("output_format:")


def test_search_and_replace_changes_the_found_area_in_one_charged_job(api, worker, tenant, tool_models):
    source = Image.new("RGB", (256, 192), (30, 60, 200))
    source.paste((250, 240, 30), (64, 48, 192, 144))
    data = {"image": upload(source), "prompt": "a red apple", "search_prompt": "the yellow square", "seed": "9"}
    response = post(api, SEARCH_REPLACE, tenant, {**data, "grow_mask": "0"}, accept="application/json")
    assert response.status_code == 200, response.content
    result = Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))).convert("RGB")
    assert result.size == source.size
    job = Job.objects.get()
    assert job.kind == "edit" and job.model.public_id == "stable-image-search-replace"
    assert job.params["extra"]["mask_from"] == {"segmenter": "clipseg-tiny", "text": "the yellow square", "grow": 0}
    assert not job.params["extra"]["mask_file"]  # the worker made the mask
    # The mask the worker used is the segmenter's map of the letterboxed input (its file
    # is gone with the job's inputs): recompute it through the same backend and compare
    # the answer with the input on each side of it.
    from images.backends import get_backend
    from images.backends.base import ToolTask
    from images.search_mask import mask_threshold
    from images.stability import _letterboxed
    from images.worker import pipeline_source

    _, inputs, _, _ = _letterboxed(source, None, model=job.model)
    init = Image.open(inputs[0].upload).convert("RGB")
    segmenter = pipeline_source(ImageModel.objects.get(public_id="clipseg-tiny"))
    task = ToolTask(source=segmenter, kind="segment", image=init, text="the yellow square")
    mask = mask_threshold(get_backend().run_tool(task).image)
    left, top, right, bottom = job.params["extra"]["output"]["box"]
    mask = mask.crop((left, top, right, bottom)).resize(source.size, Image.Resampling.NEAREST)
    # The answer is scaled from the job's size back to the input's, which blends pixels
    # within a couple of pixels of the mask's edge: "kept" is judged away from it.
    near = mask.filter(ImageFilter.MaxFilter(5))
    changed = kept = masked = unmasked = 0
    pixels = zip(source.getdata(), result.getdata(), mask.getdata(), near.getdata(), strict=True)
    for (r0, g0, b0), (r1, g1, b1), m, n in pixels:
        distance = abs(r0 - r1) + abs(g0 - g1) + abs(b0 - b1)
        if m:
            masked += 1
            changed += distance > 60
        elif not n:
            unmasked += 1
            kept += distance < 40
    assert masked and unmasked, "the tiny segmenter found part of the image"
    assert changed / masked > 0.5  # the found area was regenerated
    assert kept / unmasked > 0.9  # the rest is the input
    # Charged once, at the endpoint's price (the segmenter's run is part of the edit).
    price = STABILITY_MODELS["stable-image-search-replace"]
    assert response["x-credits-charged"] == str(price) and balance(tenant) == 10_000 - price
    assert LedgerEntry.objects.filter(tenant=tenant.tenant, kind="capture").count() == 1
    assert UsageRecord.objects.filter(tenant=tenant.tenant).count() == 1
    call_command("billing_reconcile")


def test_search_and_recolor_and_the_search_fields_errors(api, worker, tenant, tool_models):
    source = picture(160, 120)
    data = {"image": upload(source), "prompt": "bright red", "select_prompt": "the square", "grow_mask": "2"}
    response = post(api, SEARCH_RECOLOR, tenant, data)
    assert response.status_code == 200, response.content
    assert Image.open(io.BytesIO(response.content)).size == (160, 120)
    job = Job.objects.get()
    assert job.model.public_id == "stable-image-search-recolor" and job.params["extra"]["strength"] == 0.85
    assert job.params["extra"]["mask_from"]["grow"] >= 2  # grown in the caller's pixels, scaled up
    assert balance(tenant) == 10_000 - STABILITY_MODELS["stable-image-search-recolor"]
    missing = post(api, SEARCH_REPLACE, tenant, {"image": upload(source), "prompt": "x"})
    assert missing.status_code == 400 and missing.json()["errors"][0].startswith("search_prompt:")
    # The operator's segmenter route points at a model that is not a segmenter: a 400.
    StabilityRoute.objects.filter(service="edit/segmenter").update(
        image_model=ImageModel.objects.get(public_id="esrgan-tiny-x4")
    )
    no_segmenter = post(api, SEARCH_REPLACE, tenant, {"image": upload(source), "prompt": "x", "search_prompt": "y"})
    assert no_segmenter.status_code == 400 and "segmenter" in no_segmenter.json()["errors"][0]
    assert Job.objects.count() == 1
