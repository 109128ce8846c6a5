"""Stability's control/sketch, control/structure and control/style (issue 26), driven as
its clients drive them (multipart, `Accept: image/*` or JSON, its error envelope),
through the one charged path and the embedded worker, on the seeded generator
`stable-image-control` with the embedded ControlNets, depth estimator and IP-Adapter
(tiny random models derived from the demo model by `build_tool_models`)."""

from __future__ import annotations

import base64
import io

import pytest
from django.core.management import call_command
from PIL import Image, ImageDraw

from billing.models import UsageRecord
from images.models import ImageModel, Job, StabilityRoute
from images.selectors import image_model_cache_clear
from images.stability import CONTROL_SERVICES
from tests.images.test_stability import balance, post, upload

SKETCH = "/v2beta/stable-image/control/sketch"
STRUCTURE = "/v2beta/stable-image/control/structure"
STYLE = "/v2beta/stable-image/control/style"


@pytest.fixture(scope="module")
def tool_models():
    """The embedded tool models, the control ones included, on disk under MODEL_DIR."""
    call_command("build_tool_models", stdout=io.StringIO())


def drawing(width: int, height: int) -> Image.Image:
    """A sketch: dark lines on white."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 5, height // 5, width // 2, height // 2), outline="black", width=4)
    draw.ellipse((width // 3, height // 3, 4 * width // 5, 4 * height // 5), outline="black", width=4)
    return image


def price(service: str) -> int:
    return CONTROL_SERVICES[service][1]


def test_sketch_as_bytes_and_json_has_the_nearest_size_and_the_routes_price(api, worker, tenant, tool_models):
    response = post(api, SKETCH, tenant, {"image": upload(drawing(300, 200)), "prompt": "a house", "seed": "42"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "image/png" and response["finish-reason"] == "SUCCESS"
    assert response["seed"] == "42"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (1536, 1024)  # 3:2, the served profile's size nearest the input's ratio
    job = Job.objects.get()
    assert job.model.public_id == "stable-image-control" and job.endpoint == SKETCH
    assert job.params["extra"]["control"] == {
        "controlnet": "controlnet-tiny-canny",
        "preprocessor": "canny",
        "depth_estimator": None,
        "scale": 0.7,
    }
    charged = price("control/sketch")  # the generator's `st_ctrl_sketch` row
    assert response["x-credits-charged"] == str(charged) and balance(tenant) == 10_000 - charged
    assert UsageRecord.objects.get(job=job).credits_charged == charged

    data = {"image": upload(drawing(200, 300)), "prompt": "a house", "seed": "42", "control_strength": "0"}
    as_json = post(api, SKETCH, tenant, data, accept="application/json")
    assert as_json.status_code == 200, as_json.content
    body = as_json.json()
    assert set(body) == {"image", "finish_reason", "seed"} and body["seed"] == 42
    assert Image.open(io.BytesIO(base64.b64decode(body["image"]))).size == (1024, 1536)
    assert Job.objects.get(endpoint=SKETCH, params__extra__control__scale=0.0).status == Job.Status.SUCCEEDED
    assert balance(tenant) == 10_000 - 2 * charged


def test_the_sketch_changes_the_picture(api, worker, tenant, tool_models):
    """Same prompt and seed, other drawings: other pictures; strength 0: the same."""

    def made(image: Image.Image, strength: str) -> bytes:
        data = {"image": upload(image), "prompt": "a house", "seed": "7", "control_strength": strength}
        response = post(api, SKETCH, tenant, data)
        assert response.status_code == 200, response.content
        return response.content

    other = Image.new("RGB", (300, 300), "white")
    ImageDraw.Draw(other).line((0, 0, 300, 300), fill="black", width=6)
    assert made(drawing(300, 300), "1") != made(other, "1")
    assert made(drawing(300, 300), "0") == made(other, "0")


def test_structure_runs_the_depth_estimator(api, worker, tenant, tool_models):
    data = {"image": upload(drawing(256, 256)), "prompt": "a tower", "control_strength": "0.9", "seed": "5"}
    response = post(api, STRUCTURE, tenant, data, accept="application/json")
    assert response.status_code == 200, response.content
    assert Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))).size == (1024, 1024)
    job = Job.objects.get()
    assert job.params["extra"]["control"] == {
        "controlnet": "controlnet-tiny-depth",
        "preprocessor": "depth",
        "depth_estimator": "dpt-tiny-depth",
        "scale": 0.9,
    }
    assert balance(tenant) == 10_000 - price("control/structure")
    # Without its depth estimator the job fails (hold released), saying which.
    ImageModel.objects.filter(public_id="dpt-tiny-depth").update(kind=ImageModel.Kind.SEGMENTER)
    image_model_cache_clear()  # (a bulk update sends no signal)
    refused = post(api, STRUCTURE, tenant, {"image": upload(drawing(256, 256)), "prompt": "a tower"})
    assert refused.status_code == 400 and "depth estimator" in refused.json()["errors"][0]


def test_a_wrong_tool_route_is_a_400_and_a_failing_preprocessor_fails_the_job(api, worker, tenant, tool_models):
    StabilityRoute.objects.filter(service="control/sketch-controlnet").update(
        image_model=ImageModel.objects.get(public_id="dpt-tiny-depth")
    )
    refused = post(api, SKETCH, tenant, {"image": upload(drawing(128, 128)), "prompt": "x"})
    assert refused.status_code == 400 and "ControlNet" in refused.json()["errors"][0]
    assert not Job.objects.exists()
    # Accepted, then the depth estimator cannot be loaded on the worker: the job fails
    # with the reason, in the envelope, and its hold is released.
    ImageModel.objects.filter(public_id="dpt-tiny-depth").update(source="tools/no-such-depth-model")
    image_model_cache_clear()  # (a bulk update sends no signal)
    failed = post(api, STRUCTURE, tenant, {"image": upload(drawing(128, 128)), "prompt": "x"})
    assert failed.status_code == 502 and failed.json()["name"] == "bad_gateway", failed.content
    assert "depth estimator failed" in failed.json()["errors"][0]
    assert Job.objects.get().status == Job.Status.FAILED
    assert balance(tenant) == 10_000  # nothing charged


def test_style_succeeds_at_the_aspect_ratios_size(api, worker, tenant, tool_models):
    reference = Image.new("RGB", (120, 90), (200, 40, 40))
    data = {"image": upload(reference), "prompt": "a cat", "aspect_ratio": "16:9", "fidelity": "0.8", "seed": "9"}
    response = post(api, STYLE, tenant, data)
    assert response.status_code == 200, response.content
    assert Image.open(io.BytesIO(response.content)).size == (1536, 1024)
    job = Job.objects.get()
    assert job.params["extra"]["style"] == {"adapter": "ip-adapter-tiny", "scale": 0.8}
    assert balance(tenant) == 10_000 - price("control/style")


@pytest.mark.parametrize(
    ("path", "data", "wanted"),
    [
        (SKETCH, {"prompt": "x"}, "image"),
        (SKETCH, {"with_image": True}, "prompt"),
        (SKETCH, {"with_image": True, "prompt": "x", "control_strength": "2"}, "control_strength"),
        (STRUCTURE, {"with_image": True, "prompt": "x", "control_strength": "-0.1"}, "control_strength"),
        (STYLE, {"with_image": True}, "prompt"),
        (STYLE, {"with_image": True, "prompt": "x", "fidelity": "1.5"}, "fidelity"),
        (STYLE, {"with_image": True, "prompt": "x", "aspect_ratio": "7:3"}, "aspect_ratio"),
    ],
)
def test_bad_fields_are_a_400_in_stabilitys_envelope(api, registry, tenant, tool_models, path, data, wanted):
    data = dict(data)
    if data.pop("with_image", False):
        data["image"] = upload(drawing(128, 128))
    response = post(api, path, tenant, data)
    assert response.status_code == 400, response.content
    body = response.json()
    assert set(body) == {"id", "name", "errors"} and body["name"] == "bad_request"
    assert wanted in body["errors"][0]
    assert not Job.objects.exists()


def test_no_credits_is_a_402_in_stabilitys_envelope(api, registry, make_tenant, tool_models):
    broke = make_tenant(credits=0)
    for path in (SKETCH, STRUCTURE, STYLE):
        response = post(api, path, broke, {"image": upload(drawing(128, 128)), "prompt": "a cat"})
        assert response.status_code == 402, response.content
        assert response.json()["name"] == "payment_required"
    assert not Job.objects.exists()
