"""Tool models (issue 26 item 1): the embedded tiny upscaler, background remover,
segmenter and captioner, built from code (`manage.py build_tool_models`) and seeded like
any model, each run through a job on the session's real worker: the one generation
service, the hold, the backend's run_tool (batched), storage and the capture; describe
through the Midjourney proxy's /mj/submit/describe; refusals, refunds and a clean ledger."""

from __future__ import annotations

import io
import threading
from io import StringIO

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from PIL import Image

from accounts.principals import Caller
from billing.models import CreditAccount, Price
from core.errors import InvalidRequest
from images.models import ImageModel, Job
from images.selectors import image_model_cache_clear
from images.services.generation import generation_create
from images.services.inputs import InputImage
from images.services.jobs import job_wait
from images.services.tools import tool_generation_request
from images.tool_models import SEEDED_TOOLS
from tests.conftest import post_json

pytestmark = pytest.mark.usefixtures("transactional_db")


@pytest.fixture(scope="module", autouse=True)
def _tool_models():
    call_command("build_tool_models", stdout=StringIO())


def picture(width: int = 48, height: int = 40, fmt: str = "PNG") -> bytes:
    """A picture with a bright square on a dark, graded background."""
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 60) for y in range(height) for x in range(width)])
    image.paste((250, 240, 30), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def balance(tenant) -> int:
    return CreditAccount.objects.get(tenant=tenant.tenant).balance


def run_tool(tenant, kind: str, data: bytes, **fields) -> Job:
    request = tool_generation_request(
        endpoint=f"/test/{kind}", kind=kind, image=InputImage(param="image", upload=io.BytesIO(data)), fields=fields
    )
    job = generation_create(caller=Caller(tenant=tenant.tenant, api_key=tenant.key), request=request)
    return job_wait(job_id=job.pk, timeout=120)


def result_image(job: Job) -> Image.Image:
    row = job.images.get()
    with default_storage.open(row.file, "rb") as handle:
        image = Image.open(io.BytesIO(handle.read()))
        image.load()
    assert (image.width, image.height) == (row.width, row.height)
    return image


def price_of(kind: str) -> int:
    return next(credits for _, (_, _, job_kind, credits) in SEEDED_TOOLS.items() if job_kind == kind)


def test_upscale_job_is_exactly_four_times_larger_and_charged(worker, tenant):
    before = balance(tenant)
    job = run_tool(tenant, Job.Kind.UPSCALE, picture(48, 40, "JPEG"))
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.model.public_id == "esrgan-tiny-x4" and (job.width, job.height) == (48, 40)
    image = result_image(job)
    assert image.mode == "RGB" and image.size == (192, 160)
    assert balance(tenant) == before - price_of(Job.Kind.UPSCALE)


def test_background_removal_returns_rgba_that_keeps_some_pixels_and_drops_others(worker, tenant):
    job = run_tool(tenant, Job.Kind.REMOVE_BACKGROUND, picture(64, 48))
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    image = result_image(job)
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (64, 48)
    alpha = list(image.getchannel("A").getdata())
    assert min(alpha) == 0 and max(alpha) >= 250
    assert sum(a == 0 for a in alpha) > 0 and sum(a >= 250 for a in alpha) > 0
    # The colours are the input's (only the alpha is new).
    source = Image.open(io.BytesIO(picture(64, 48))).convert("RGB")
    assert image.convert("RGB").getpixel((32, 24)) == source.getpixel((32, 24))


def test_background_removal_refuses_jpeg_output_before_any_hold(worker, tenant):
    before = balance(tenant)
    with pytest.raises(InvalidRequest) as refused:
        run_tool(tenant, Job.Kind.REMOVE_BACKGROUND, picture(), output_format="jpeg")
    assert refused.value.param == "output_format"
    assert balance(tenant) == before and not Job.objects.filter(tenant=tenant.tenant).exists()


def test_segmenter_makes_a_mask_of_the_input_size_for_the_text(worker, tenant):
    job = run_tool(tenant, Job.Kind.SEGMENT, picture(50, 30), prompt="the yellow square")
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.prompt == "the yellow square"
    mask = result_image(job)
    assert mask.mode == "L" and mask.size == (50, 30)
    low, high = mask.getextrema()
    assert low < high  # (a map, not a constant)


def test_segmenter_needs_a_prompt(worker, tenant):
    with pytest.raises(InvalidRequest) as refused:
        run_tool(tenant, Job.Kind.SEGMENT, picture())
    assert refused.value.param == "prompt"


def test_describe_job_returns_caption_text(worker, tenant):
    job = run_tool(tenant, Job.Kind.DESCRIBE, picture())
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.output_text.strip() and job.output_text == " ".join(job.output_text.split())
    assert result_image(job).size == (48, 40)  # (the input, returned unchanged)


def test_tool_and_generator_models_refuse_each_others_jobs(worker, api, tenant):
    response = post_json(
        api, "/v1/images/generations", {"model": "esrgan-tiny-x4", "prompt": "a cat", "size": "256x256"}, tenant
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_model"
    request = tool_generation_request(
        endpoint="/test",
        kind=Job.Kind.UPSCALE,
        image=InputImage(param="image", upload=io.BytesIO(picture())),
        model="dall-e-2",
    )
    with pytest.raises(InvalidRequest) as refused:
        generation_create(caller=Caller(tenant=tenant.tenant, api_key=tenant.key), request=request)
    assert refused.value.code == "unsupported_model"


def test_upscale_input_over_the_pixel_limit_is_refused(worker, tenant, monkeypatch):
    monkeypatch.setattr("images.tool_models.UPSCALE_MAX_PIXELS", 100)
    with pytest.raises(InvalidRequest) as refused:
        run_tool(tenant, Job.Kind.UPSCALE, picture(20, 20))
    assert refused.value.code == "image_too_large"


def test_a_tool_model_that_cannot_load_fails_the_job_and_refunds(worker, tenant):
    ImageModel.objects.filter(public_id="esrgan-tiny-x4").update(source="tools/missing-upscaler")
    image_model_cache_clear()  # (a bulk update sends no signal)
    before = balance(tenant)
    job = run_tool(tenant, Job.Kind.UPSCALE, picture())
    assert job.status == Job.Status.FAILED and job.error_code == "generation_failed"
    assert balance(tenant) == before
    out = StringIO()
    call_command("billing_reconcile", stdout=out)
    assert out.getvalue().startswith("OK:")


def test_concurrent_same_size_upscales_batch_into_one_call_with_the_same_results(worker):
    from images.backends import get_backend
    from images.backends.base import PipelineSource, ToolTask
    from images.worker import pipeline_source

    backend = get_backend()
    source: PipelineSource = pipeline_source(ImageModel.objects.get(public_id="esrgan-tiny-x4"))
    inputs = [Image.open(io.BytesIO(picture(32, 24))).convert("RGB"), Image.new("RGB", (32, 24), (10, 200, 90))]
    alone = [backend.run_tool(ToolTask(source=source, kind="upscale", image=i), max_batch=1).image for i in inputs]
    together: list = [None, None]

    def run(i: int) -> None:
        # A window far longer than the test: the batch runs when it is full (2), not when it ends.
        task = ToolTask(source=source, kind="upscale", image=inputs[i])
        together[i] = backend.run_tool(task, max_batch=2, window_ms=600_000).image

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(image is not None for image in together)
    for single, batched in zip(alone, together, strict=True):
        assert single.size == batched.size == (128, 96)
        diff = max(abs(a - b) for a, b in zip(single.tobytes(), batched.tobytes(), strict=True))
        assert diff <= 1  # (the same numbers, batched: at most float rounding)


# ---- the Midjourney proxy's describe --------------------------------------------------------


def data_url(data: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def test_mj_describe_succeeds_with_prompt_text_and_charges_its_price(worker, api, tenant, settings):
    import time

    before = balance(tenant)
    response = post_json(api, "/mj/submit/describe", {"base64": data_url(picture(64, 48)), "state": "s1"}, tenant)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["code"] in (1, 22), body
    task_id = body["result"]
    deadline = time.monotonic() + 120
    while True:
        task = api.get(f"/mj/task/{task_id}/fetch", **tenant.auth).json()
        if task["status"] in ("SUCCESS", "FAILURE") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert task["status"] == "SUCCESS", task
    assert task["action"] == "DESCRIBE" and task["state"] == "s1" and task["progress"] == "100%"
    assert task["prompt"].startswith("1\ufe0f\u20e3 ") and task["prompt"].endswith("--ar 4:3")
    assert len(task["prompt"].split()) > 3  # the caption's words, then --ar
    assert task["promptEn"] == task["prompt"] == task["properties"]["finalPrompt"]
    assert task["buttons"] == [] and task["imageUrl"]
    assert balance(tenant) == before - price_of(Job.Kind.DESCRIBE)
    out = StringIO()
    call_command("billing_reconcile", stdout=out)
    assert out.getvalue().startswith("OK:")


def test_mj_describe_uses_its_mj_describe_price_row_when_there_is_one(worker, api, tenant):
    model = ImageModel.objects.get(public_id="vit-gpt2-tiny-captioner")
    Price.objects.create(model=model, kind="mj_describe", credits_per_image=7)
    before = balance(tenant)
    body = post_json(api, "/mj/submit/describe", {"base64": data_url(picture())}, tenant).json()
    job = job_wait(job_id=Job.objects.get(midjourney_task__pk=body["result"]).pk, timeout=120)
    assert job.status == Job.Status.SUCCEEDED
    assert balance(tenant) == before - 7


def test_mj_describe_refusals_come_in_the_proxy_envelope(worker, api, tenant, make_tenant):
    missing = post_json(api, "/mj/submit/describe", {}, tenant)
    assert missing.status_code == 200 and missing.json()["code"] == 4
    poor = make_tenant(credits=0)
    refused = post_json(api, "/mj/submit/describe", {"base64": data_url(picture())}, poor)
    assert refused.status_code == 402 and refused.json()["code"] == 4
    ImageModel.objects.filter(kind=ImageModel.Kind.CAPTIONER).update(enabled=False)
    image_model_cache_clear()  # (a bulk update sends no signal)
    none = post_json(api, "/mj/submit/describe", {"base64": data_url(picture())}, tenant)
    assert none.status_code == 200 and none.json()["code"] == 4
    assert not Job.objects.filter(tenant=poor.tenant).exists()


# ---- registering tool models -----------------------------------------------------------------


def test_model_add_registers_a_tool_model_with_its_price(db, tmp_path):
    from django.conf import settings

    folder = tmp_path / "my-upscaler"
    folder.mkdir()
    with pytest.raises(CommandError):  # no weight file
        call_command("model_add", "my-up", str(folder), "--kind", "upscaler", "--price", "3", stdout=StringIO())
    source = f"{settings.MODEL_DIR}/{SEEDED_TOOLS['esrgan-tiny-x4'][1]}"
    call_command("model_add", "my-up", source, "--kind", "upscaler", "--price", "3", stdout=StringIO())
    model = ImageModel.objects.get(public_id="my-up")
    assert model.kind == ImageModel.Kind.UPSCALER
    assert list(model.prices.values_list("kind", "credits_per_image")) == [("upscale", 3)]
    with pytest.raises(CommandError):  # a transformers kind needs a config.json
        call_command("model_add", "my-cap", str(folder), "--kind", "captioner", "--free", stdout=StringIO())
