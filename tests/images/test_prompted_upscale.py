"""Stability's upscale/creative and upscale/conservative on a diffusion upscaler (issue 26:
diffusers' StableDiffusionUpscalePipeline, the embedded tiny `sd-x4-upscaler-tiny`):
through the HTTP API and the session's real worker (the prompt, seed and creativity reach
the pipeline; exactly 4x; Stability's 400 envelope), then the backend alone (padding to
any size, stopping between steps, a bad noise level), the folder check and the one-time
move of the routes an older install seeded on the ESRGAN."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from PIL import Image

from billing.models import LedgerEntry
from images.models import ImageModel, Job, StabilityRoute
from images.stability import CREATIVITY_DEFAULTS, TOOL_SERVICES
from images.tool_models import UPSCALE_MAX_NOISE_LEVEL
from tests.images.test_stability import balance, picture, post, upload

CONSERVATIVE = "/v2beta/stable-image/upscale/conservative"
CREATIVE = "/v2beta/stable-image/upscale/creative"
FAST = "/v2beta/stable-image/upscale/fast"
SD_UPSCALER = "sd-x4-upscaler-tiny"


@pytest.fixture(scope="module")
def tool_models():
    call_command("build_tool_models", stdout=io.StringIO())


def pixels(content: bytes) -> bytes:
    return Image.open(io.BytesIO(content)).convert("RGB").tobytes()


def test_creative_is_async_exactly_4x_at_an_odd_size_with_creativity_as_noise_level(api, worker, tenant, tool_models):
    from images.services.jobs import job_wait

    data = {"image": upload(picture(66, 70)), "prompt": "a castle", "creativity": "0.2", "seed": "9"}
    submitted = post(api, CREATIVE, tenant, {**data, "style_preset": "photographic"})
    assert submitted.status_code == 200, submitted.content
    assert set(submitted.json()) == {"id"}
    result_id = submitted.json()["id"]
    pending = api.get(f"/v2beta/results/{result_id}", HTTP_ACCEPT="image/*", **tenant.auth)
    assert pending.status_code in (200, 202)
    assert job_wait(job_id=result_id, timeout=180).status == "succeeded"
    done = api.get(f"/v2beta/results/{result_id}", HTTP_ACCEPT="image/*", **tenant.auth)
    assert done.status_code == 200 and done["seed"] == "9"
    assert Image.open(io.BytesIO(done.content)).size == (264, 280)  # 4x, not rounded to a multiple of 4
    job = Job.objects.get(pk=result_id)
    assert job.model.public_id == SD_UPSCALER and job.kind == Job.Kind.UPSCALE
    assert job.prompt == "a castle, photographic style"
    assert job.params["extra"]["upscale"] == {"noise_level": round(0.2 * UPSCALE_MAX_NOISE_LEVEL)}
    assert job.steps == 6 and job.guidance == 7.5  # the seeded row's
    assert balance(tenant) == 10_000 - TOOL_SERVICES["upscale/creative"][2]
    assert LedgerEntry.objects.filter(tenant=tenant.tenant, kind="capture").count() == 1
    call_command("billing_reconcile", stdout=io.StringIO())


def test_the_prompt_changes_the_pixels_and_prompt_plus_seed_reproduce(api, worker, tenant, tool_models):
    source = picture(64, 64)

    def upscale(prompt: str, seed: str = "42") -> bytes:
        data = {"image": upload(source), "prompt": prompt, "seed": seed, "negative_prompt": "blurry"}
        response = post(api, CONSERVATIVE, tenant, data)
        assert response.status_code == 200, response.content
        assert Image.open(io.BytesIO(response.content)).size == (256, 256)
        return pixels(response.content)

    first, again, other = upscale("a red barn"), upscale("a red barn"), upscale("a snowy mountain")
    assert first == again  # the same prompt and seed: the same image
    assert first != other  # only the prompt differs
    assert upscale("a red barn", seed="43") != first
    job = Job.objects.filter(prompt="a red barn").first()
    assert job.model.public_id == SD_UPSCALER and job.params["negative_prompt"] == "blurry"
    default = round(CREATIVITY_DEFAULTS["upscale/conservative"] * UPSCALE_MAX_NOISE_LEVEL)
    assert job.params["extra"]["upscale"] == {"noise_level": default}


@pytest.mark.parametrize(
    ("path", "creativity"),
    [(CREATIVE, "0.05"), (CREATIVE, "0.6"), (CONSERVATIVE, "0.15"), (CONSERVATIVE, "0.55"), (CREATIVE, "much")],
)
def test_creativity_out_of_range_is_a_400_in_stabilitys_envelope(api, registry, tenant, path, creativity):
    response = post(api, path, tenant, {"image": upload(picture(64, 64)), "prompt": "x", "creativity": creativity})
    assert response.status_code == 400, response.content
    body = response.json()
    assert set(body) == {"id", "name", "errors"} and body["errors"][0].startswith("creativity:")
    assert not Job.objects.exists() and balance(tenant) == 10_000


def test_missing_prompt_and_a_too_small_image_are_400s(api, registry, tenant):
    no_prompt = post(api, CREATIVE, tenant, {"image": upload(picture(64, 64))})
    assert no_prompt.status_code == 400 and no_prompt.json()["errors"][0].startswith("prompt:")
    small = post(api, CONSERVATIVE, tenant, {"image": upload(picture(63, 80)), "prompt": "x"})
    assert small.status_code == 400 and small.json()["errors"][0].startswith("image:")
    assert not Job.objects.exists()


def test_fast_stays_on_the_esrgan_without_diffusion_settings(api, worker, tenant, tool_models):
    response = post(api, FAST, tenant, {"image": upload(picture(48, 40))})
    assert response.status_code == 200, response.content
    assert Image.open(io.BytesIO(response.content)).size == (192, 160)
    job = Job.objects.get()
    assert job.model.public_id == "esrgan-tiny-x4" and job.prompt == ""
    assert "upscale" not in job.params["extra"] and job.steps == 1


def test_older_installs_routes_move_once_to_the_diffusion_upscaler(registry):
    """Migration 0017: rows still on the seeded ESRGAN (enabled) are deleted, and the
    seeder recreates them on sd-x4-upscaler-tiny; an operator's disabled row stays."""
    import importlib

    from django.apps import apps

    from images.stability import stability_seed

    migration = importlib.import_module("images.migrations.0017_prompted_upscale_routes")
    esrgan = ImageModel.objects.get(public_id="esrgan-tiny-x4")
    StabilityRoute.objects.filter(service="upscale/creative").update(image_model=esrgan)
    StabilityRoute.objects.filter(service="upscale/conservative").update(image_model=esrgan, enabled=False)
    migration.forwards(apps, None)
    assert not StabilityRoute.objects.filter(service="upscale/creative").exists()
    stability_seed(source="unused", steps_by_quality={}, guidance=1.5)
    creative = StabilityRoute.objects.get(service="upscale/creative")
    assert creative.image_model.public_id == SD_UPSCALER and creative.enabled
    assert creative.image_model.prices.filter(kind=TOOL_SERVICES["upscale/creative"][1]).exists()
    conservative = StabilityRoute.objects.get(service="upscale/conservative")
    assert conservative.image_model == esrgan and not conservative.enabled


# ---- the backend alone ------------------------------------------------------------------------


@pytest.fixture
def sd_source(tool_models, db, registry):
    from images.services.models import pipeline_source

    return pipeline_source(ImageModel.objects.get(public_id=SD_UPSCALER))


def test_backend_runs_the_pipeline_exactly_4x_stops_between_steps_and_refuses_bad_noise(sd_source):
    from images.backends import get_backend
    from images.backends.base import PipelineError, ToolTask

    backend = get_backend()
    image = picture(37, 29)
    settings = {"num_inference_steps": 3, "guidance_scale": 7.5, "noise_level": 50}

    def task(**kwargs) -> ToolTask:
        fields = {"text": "a harbour", "seed": 3, "params": settings, **kwargs}
        return ToolTask(source=sd_source, kind="upscale", image=image, **fields)

    made = backend.run_tool(task(), max_batch=2)
    assert made.stopped is None and made.image.size == (148, 116) and made.image.mode == "RGB"
    assert backend.run_tool(task()).image.tobytes() == made.image.tobytes()
    negative = backend.run_tool(task(negative_text="fog")).image
    assert negative.tobytes() != made.image.tobytes()  # the negative prompt reaches the pipeline too

    asked = []

    def stop_on_second_ask() -> str | None:
        asked.append(1)
        return "cancelled" if len(asked) >= 2 else None  # (once before the call, then per step)

    stopped = backend.run_tool(task(should_stop=stop_on_second_ask))
    assert stopped.stopped == "cancelled" and stopped.image is None and len(asked) == 2
    with pytest.raises(PipelineError, match="noise_level"):
        backend.run_tool(task(params={**settings, "noise_level": UPSCALE_MAX_NOISE_LEVEL + 1}))


def test_tool_folder_check_takes_a_diffusers_upscaler_folder(tool_models, tmp_path, settings):
    import json

    from images.tool_models import tool_folder_check

    built = tool_folder_check(kind=ImageModel.Kind.UPSCALER, source="tools/sd-x4-upscaler-tiny")
    assert (built / "unet").is_dir()
    other = tmp_path / "not-an-upscaler"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionUpscalePipeline"):
        tool_folder_check(kind=ImageModel.Kind.UPSCALER, source=str(other))
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionUpscalePipeline"}))
    with pytest.raises(ValueError, match="unet/"):
        tool_folder_check(kind=ImageModel.Kind.UPSCALER, source=str(other))
