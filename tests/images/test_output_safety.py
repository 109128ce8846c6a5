"""Output safety and provenance (issue 25), end to end through the API: every tenant
action with a classifier that finds every image unsafe (a tiny ViT whose classifier
always picks "nsfw"), partial withholding for n > 1, streams, vendor envelopes, the
money, the watermark and the C2PA manifest of delivered PNGs."""

from __future__ import annotations

import base64
import io
import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from PIL import Image

from billing.models import CreditAccount, Hold, UsageRecord
from images.models import BlockedOutput, Job
from tests.conftest import post_json

URL = "/v1/images/generations"
PROMPT = "a red square on a blue background"
CONTRAST = "a white square on a black background"


def _vit(folder: Path, *, always_unsafe: bool) -> str:
    """A tiny ViT image classifier (labels normal/nsfw) saved with save_pretrained.
    always_unsafe: a zero classifier with a bias for "nsfw" (p(nsfw) = 0.9997 whatever
    the image); else random weights, spread out, so that scores differ by image."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    labels = {0: "normal", 1: "nsfw"}
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = ViTForImageClassification(config)
    with torch.no_grad():
        if always_unsafe:
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([-4.0, 4.0]))
        else:
            model.classifier.weight.mul_(40.0)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def unsafe_model(tmp_path_factory) -> str:
    return _vit(tmp_path_factory.mktemp("classifier") / "always-nsfw", always_unsafe=True)


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory) -> str:
    return _vit(tmp_path_factory.mktemp("classifier") / "varied", always_unsafe=False)


@pytest.fixture
def backend_config():
    """Change the worker's backend configuration for one test (the embedded worker runs
    in this process and reads images.backends.local.config)."""
    from images.backends import get_backend
    from images.backends.local import config

    get_backend()
    with ExitStack() as stack:
        yield lambda **changes: stack.enter_context(config.override(**changes))


@pytest.fixture
def classifier(settings, backend_config):
    """Serve output moderation with a classifier folder: `classifier(folder)`."""

    def use(folder: str, **thresholds: float) -> None:
        settings.OUTPUT_MODERATION_MODEL = folder
        settings.OUTPUT_MODERATION_THRESHOLDS = {"strict": 0.3, "standard": 0.5, "low": 0.8, **thresholds}
        backend_config(moderation_model=folder)

    return use


def mode(tenant, action: str) -> None:
    call_command("tenant_update", tenant.tenant.name, "--output-moderation", action, stdout=io.StringIO())


def dalle2(**extra) -> dict:
    return {"model": "dall-e-2", "prompt": PROMPT, "size": "256x256", "response_format": "b64_json", **extra}


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def sharpest_step(image: Image.Image, mode: str = "L") -> float:
    """The largest difference between neighbouring pixels (of the grey levels, or of any
    RGB channel): an edge anywhere (the demo model's figures are flat, so their outline
    is where it is) makes it large; a strong blur leaves only gentle gradients."""
    pixels = np.asarray(image.convert(mode), dtype=np.float64)
    return float(max(np.abs(np.diff(pixels, axis=0)).max(), np.abs(np.diff(pixels, axis=1)).max()))


def balance(tenant) -> tuple[int, int]:
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    return account.balance, account.held


def reconciled() -> str:
    out = io.StringIO()
    call_command("billing_reconcile", stdout=out)  # (exits 1 on a mismatch)
    return out.getvalue()


def parse_sse(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if lines:
            event = next(line[7:] for line in lines if line.startswith("event: "))
            events.append((event, json.loads(next(line[6:] for line in lines if line.startswith("data: ")))))
    return events


# ---- The four actions, n = 1 ----------------------------------------------------------


def test_block_answers_400_moderation_blocked_at_the_output_stage_and_charges_nothing(
    api, worker, tenant, classifier, unsafe_model
):
    classifier(unsafe_model)
    mode(tenant, "block")
    response = post_json(api, URL, dalle2(seed=11), tenant)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("image_generation_user_error", "moderation_blocked", None)
    assert error["moderation_details"] == {"moderation_stage": "output", "categories": ["nsfw"]}, response.json()
    assert response["x-credits-charged"] == "0"
    assert balance(tenant) == (10_000, 0)
    job = Job.objects.get()
    assert (job.status, job.error_code) == ("failed", "moderation_blocked")
    assert Hold.objects.get(job=job).captured == 0
    usage = UsageRecord.objects.get(job=job)
    assert (usage.outcome, usage.error_code, usage.credits_charged) == ("blocked", "moderation_blocked", 0)
    blocked = BlockedOutput.objects.get()
    assert (blocked.job_id, blocked.index, blocked.categories, blocked.level) == (job.pk, 0, ["nsfw"], "standard")
    assert blocked.scores["nsfw"] > 0.99 and blocked.thumbnail
    assert not job.images.exists()
    task = api.get(f"/v1/images/tasks/{job.pk}", **tenant.auth).json()
    assert task["error"]["moderation_details"]["moderation_stage"] == "output"
    assert task["moderation"] == {"action": "blocked", "categories": ["nsfw"], "withheld": [0]}
    assert "OK" in reconciled()


def test_blur_leaves_no_sharp_edge_marked_and_charged(api, worker, tenant, classifier, unsafe_model, backend_config):
    classifier(unsafe_model)
    # The watermark's pattern is added after the blur: off, so that only the picture's own
    # edges are measured, on a figure of high contrast (the demo model draws it resized
    # from 32x32, so even its outline is a few grey levels per pixel).
    backend_config(watermark=False)
    mode(tenant, "off")
    plain = post_json(api, URL, dalle2(seed=21, prompt=CONTRAST), tenant)
    assert plain.status_code == 200, plain.content
    assert "moderation" not in plain.json()["data"][0]
    mode(tenant, "blur")
    blurred = post_json(api, URL, dalle2(seed=21, prompt=CONTRAST), tenant)
    assert blurred.status_code == 200, blurred.content
    item = blurred.json()["data"][0]
    assert item["moderation"] == {"action": "blurred", "categories": ["nsfw"]}
    sharp, soft = decode(plain.json()["data"][0]["b64_json"]), decode(item["b64_json"])
    for channels in ("L", "RGB"):
        assert sharpest_step(soft, channels) < 0.25 * sharpest_step(sharp, channels), (
            channels,
            sharpest_step(soft, channels),
            sharpest_step(sharp, channels),
        )
    price = int(plain["x-credits-charged"])
    assert price > 0 and blurred["x-credits-charged"] == str(price)
    assert balance(tenant) == (10_000 - 2 * price, 0)
    job = Job.objects.get(seed=21, output_moderation__action="blurred")
    task = api.get(f"/v1/images/tasks/{job.pk}", **tenant.auth).json()
    assert task["moderation"] == {"action": "blurred", "categories": ["nsfw"], "withheld": []}
    assert task["result"]["data"][0]["moderation"]["action"] == "blurred"
    assert UsageRecord.objects.get(job=job).error_code == "output_blurred"
    assert not BlockedOutput.objects.exists()
    assert "OK" in reconciled()


def test_flag_delivers_the_image_as_made_marked(api, worker, tenant, classifier, unsafe_model):
    classifier(unsafe_model)
    mode(tenant, "off")
    plain = post_json(api, URL, dalle2(seed=31), tenant).json()["data"][0]
    mode(tenant, "flag")
    response = post_json(api, URL, dalle2(seed=31), tenant)
    assert response.status_code == 200, response.content
    item = response.json()["data"][0]
    assert item["moderation"] == {"action": "flagged", "categories": ["nsfw"]}
    assert np.array_equal(np.asarray(decode(item["b64_json"])), np.asarray(decode(plain["b64_json"])))
    assert int(response["x-credits-charged"]) > 0
    assert UsageRecord.objects.get(job__output_moderation__action="flagged").error_code == "output_flagged"


def test_off_skips_the_check_delivers_and_charges(api, worker, tenant, classifier, unsafe_model):
    classifier(unsafe_model)
    mode(tenant, "off")
    response = post_json(api, URL, dalle2(n=2), tenant)
    assert response.status_code == 200, response.content
    body = response.json()
    assert len(body["data"]) == 2 and "withheld" not in body
    assert all("moderation" not in item for item in body["data"])
    charged = int(response["x-credits-charged"])
    assert charged > 0 and balance(tenant) == (10_000 - charged, 0)
    job = Job.objects.get()
    assert job.output_moderation == {} and UsageRecord.objects.get(job=job).error_code == ""
    assert api.get(f"/v1/images/tasks/{job.pk}", **tenant.auth).json()["moderation"] is None


def test_a_lower_level_raises_the_threshold(api, worker, tenant, classifier, unsafe_model):
    """p(nsfw) = 0.9997: unsafe at every level unless the level's threshold is above it."""
    classifier(unsafe_model, standard=0.99999)
    mode(tenant, "block")
    response = post_json(api, URL, dalle2(), tenant)
    assert response.status_code == 200, response.content
    assert "moderation" not in response.json()["data"][0]


# ---- n > 1: only what is withheld goes unpaid -----------------------------------------


def test_n_images_deliver_the_safe_ones_name_the_withheld_and_charge_pro_rata(
    api, worker, tenant, classifier, varied_model, settings
):
    """The same request twice (same seed, so the same images): first with every image
    unsafe, which records each image's score; then with a threshold between the scores,
    so some images are withheld and the rest delivered. Each image's verdict is its own
    score's, whatever its batch-mates'."""
    classifier(varied_model, standard=0.0)
    mode(tenant, "block")
    assert post_json(api, URL, dalle2(n=4, seed=41), tenant).status_code == 400
    scores = {row.index: row.scores["nsfw"] for row in BlockedOutput.objects.all()}
    assert sorted(scores) == [0, 1, 2, 3]
    ordered = sorted(scores.values())
    gaps = [(ordered[i + 1] - ordered[i], i) for i in range(3)]
    gap, below = max(gaps)
    assert gap > 1e-3, f"the classifier scored the images alike: {scores}"
    threshold = (ordered[below] + ordered[below + 1]) / 2
    unsafe = sorted(index for index, score in scores.items() if score >= threshold)
    settings.OUTPUT_MODERATION_THRESHOLDS = {"strict": threshold, "standard": threshold, "low": threshold}

    response = post_json(api, URL, dalle2(n=4, seed=41), tenant)
    assert response.status_code == 200, response.content
    body = response.json()
    assert [entry["index"] for entry in body["withheld"]] == unsafe
    assert all(entry["categories"] == ["nsfw"] for entry in body["withheld"])
    delivered = [index for index in range(4) if index not in unsafe]
    assert [item["seed"] for item in body["data"]] == [41 + index for index in delivered]
    job = Job.objects.get(status="succeeded")
    assert job.output_moderation["withheld"] == unsafe
    charged = int(response["x-credits-charged"])
    assert charged == job.quote * len(delivered) // 4
    assert UsageRecord.objects.get(job=job).images == len(delivered)
    assert UsageRecord.objects.get(job=job).error_code == "output_withheld"
    assert balance(tenant) == (10_000 - charged, 0)
    task = api.get(f"/v1/images/tasks/{job.pk}", **tenant.auth).json()
    assert task["moderation"]["withheld"] == unsafe and len(task["result"]["data"]) == len(delivered)
    assert "OK" in reconciled()


# ---- Streams and vendor shapes ----------------------------------------------------------


def gpt_stream(**extra) -> dict:
    return {"model": "gpt-image-1", "prompt": PROMPT, "quality": "high", "stream": True, "partial_images": 2, **extra}


def test_stream_of_a_blocked_image_sends_no_preview_and_ends_with_the_error_event(
    api, worker, tenant, classifier, unsafe_model
):
    classifier(unsafe_model)
    mode(tenant, "block")
    response = post_json(api, URL, gpt_stream(), tenant)
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = parse_sse(b"".join(response.streaming_content))
    assert [name for name, _ in events] == ["error"]
    error = events[0][1]["error"]
    assert (error["code"], error["type"]) == ("moderation_blocked", "image_generation_user_error")
    assert error["moderation_details"] == {"moderation_stage": "output", "categories": ["nsfw"]}
    assert balance(tenant) == (10_000, 0)


def test_stream_under_flag_marks_previews_and_the_image(api, worker, tenant, classifier, unsafe_model):
    classifier(unsafe_model)
    mode(tenant, "flag")
    response = post_json(api, URL, gpt_stream(), tenant)
    events = parse_sse(b"".join(response.streaming_content))
    names = [name for name, _ in events]
    assert names[-1] == "image_generation.completed" and "image_generation.partial_image" in names
    mark = {"action": "flagged", "categories": ["nsfw"]}
    assert all(data["moderation"] == mark for _, data in events)


def test_stream_under_off_has_no_marks(api, worker, tenant, classifier, unsafe_model):
    classifier(unsafe_model)
    mode(tenant, "off")
    events = parse_sse(b"".join(post_json(api, URL, gpt_stream(), tenant).streaming_content))
    assert "image_generation.partial_image" in [name for name, _ in events]
    assert all("moderation" not in data for _, data in events)


def test_reseller_shape_answers_a_blocked_image_in_its_own_envelope(api, worker, tenant, classifier, unsafe_model):
    classifier(unsafe_model)
    mode(tenant, "block")
    response = post_json(api, "/api/v1/image/generation", {"prompt": PROMPT, "quality": "low"}, tenant)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == 400 and body["data"] is None and body["request_id"]
    assert body["error"]["code"] == "moderation_blocked"
    assert body["error"]["moderation_details"]["moderation_stage"] == "output"


# ---- Provenance ---------------------------------------------------------------------------


def test_delivered_png_carries_the_watermark_text(api, worker, tenant, settings):
    import cv2
    from imwatermark import WatermarkDecoder

    response = post_json(api, URL, dalle2(n=2, seed=51), tenant)
    assert response.status_code == 200, response.content
    text = settings.OUTPUT_WATERMARK_TEXT.encode()
    for item in response.json()["data"]:
        image = decode(item["b64_json"])
        bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
        assert WatermarkDecoder("bytes", 8 * len(text)).decode(bgr, "dwtDct") == text


def test_watermark_can_be_turned_off(api, worker, tenant, settings, backend_config):
    from images.backends.local.provenance import watermark_read

    first = decode(post_json(api, URL, dalle2(seed=61), tenant).json()["data"][0]["b64_json"])
    backend_config(watermark=False)
    second = decode(post_json(api, URL, dalle2(seed=61), tenant).json()["data"][0]["b64_json"])
    text = settings.OUTPUT_WATERMARK_TEXT.encode()
    assert watermark_read(first, len(text)) == text
    assert watermark_read(second, len(text)) != text
    assert not np.array_equal(np.asarray(first), np.asarray(second))


def test_operator_payload_round_trips_on_hard_images():
    """Flat, saturated and smooth images: the payload reads back with the stock decoder."""
    from images.backends import get_backend
    from images.backends.local.provenance import watermark_embed, watermark_read

    get_backend()
    rng = np.random.default_rng(3)
    smooth = Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).resize((320, 256), Image.BICUBIC)
    flat = Image.new("RGB", (256, 256), (250, 250, 250))
    for image in (
        flat,
        Image.new("RGB", (512, 256), (255, 0, 0)),
        Image.new("RGBA", (256, 256), (40, 90, 160, 128)),
        smooth,
    ):
        marked = watermark_embed(image, "op-42")
        assert watermark_read(marked, 5) == b"op-42"
        assert marked.mode == image.mode and marked.size == image.size
    for image in (flat, smooth):  # the luma stays within a grey level or two; PSNR over 30 dB
        before, after = (
            np.asarray(image, dtype=np.float64),
            np.asarray(watermark_embed(image, "op-42"), dtype=np.float64),
        )
        grey = np.abs(
            np.asarray(image.convert("L"), dtype=int)
            - np.asarray(watermark_embed(image, "op-42").convert("L"), dtype=int)
        )
        assert grey.mean() < 1.5
        assert 10 * np.log10(255**2 / ((after - before) ** 2).mean()) > 30
    assert watermark_embed(Image.new("RGB", (128, 128)), "op-42").size == (128, 128)  # too small: unmarked


def test_watermark_pixels_are_the_ones_pywts_transform_gave():
    """The watermark's own Haar transform (provenance._haar_*, issue 20: ~2x cheaper
    per image) gives pywt's coefficients bit for bit, so marked images are exactly
    the pixels they were: SHA-256 prefixes of two images marked with pywt.dwt2/idwt2."""
    import hashlib

    import pywt

    from images.backends.local.provenance import (
        _haar_approx,
        _haar_details,
        _haar_inverse,
        watermark_embed,
    )

    rng = np.random.default_rng(11)
    for height, width in ((256, 256), (128, 384), (2, 2)):
        channel = rng.integers(0, 256, (height, width), dtype=np.uint8)
        approx, details = pywt.dwt2(channel, "haar")
        ours, products = _haar_approx(channel)
        assert np.array_equal(ours, approx)
        assert all(np.array_equal(a, b) for a, b in zip(_haar_details(products), details, strict=True))
        moved = approx + rng.normal(0, 40, approx.shape)
        assert np.array_equal(_haar_inverse(moved, details), pywt.idwt2((moved, details), "haar"))
    smooth = Image.fromarray((np.random.default_rng(3).random((16, 16, 3)) * 255).astype("uint8")).resize(
        (320, 256), Image.BICUBIC
    )
    noisy = Image.fromarray(np.random.default_rng(5).integers(0, 256, (264, 256, 3), dtype=np.uint8))
    digests = [hashlib.sha256(watermark_embed(image, "op-42").tobytes()).hexdigest()[:16] for image in (smooth, noisy)]
    assert digests == ["4b6a3e843c6ecdac", "9ae60916ed8fe779"]


def test_with_a_development_certificate_c2pa_reads_a_valid_manifest(api, worker, tenant, tmp_path, backend_config):
    import c2pa

    out = io.StringIO()
    call_command("c2pa_dev_cert", str(tmp_path), stdout=out)
    paths = dict(line.split("=", 1) for line in out.getvalue().split())
    backend_config(c2pa_cert=paths["OUTPUT_C2PA_CERT"], c2pa_key=paths["OUTPUT_C2PA_KEY"])
    response = post_json(api, URL, dalle2(seed=71), tenant)
    assert response.status_code == 200, response.content
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    reader = c2pa.Reader("image/png", io.BytesIO(data))
    assert reader.get_validation_state() == "Valid"
    manifest = reader.get_active_manifest()
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    created = next(action for action in actions if action["action"] == "c2pa.created")
    assert created["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
    assert created["softwareAgent"]["name"] == "dall-e-2" and created["when"]
    assert manifest["signature_info"]["alg"].upper() == "ES256"
    image = Image.open(io.BytesIO(data))
    assert image.size == (256, 256)
    from images.backends.local.provenance import watermark_read

    assert watermark_read(image, 4) == b"AIGC"  # the watermark survives the manifest
    # A changed pixel breaks the manifest's hash: c2pa says so.
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[0, 0] ^= 0xFF
    tampered = io.BytesIO()
    Image.fromarray(pixels).save(tampered, format="PNG")
    with pytest.raises(c2pa.C2paError):
        c2pa.Reader("image/png", io.BytesIO(tampered.getvalue())).get_active_manifest()


def test_dev_certificate_command_refuses_to_overwrite(tmp_path):
    from django.core.management.base import CommandError

    call_command("c2pa_dev_cert", str(tmp_path), stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("c2pa_dev_cert", str(tmp_path), stdout=io.StringIO())
    assert (tmp_path / "c2pa-dev-key.pem").stat().st_mode & 0o077 == 0


# ---- The operator's side ------------------------------------------------------------------


def test_tenant_update_sets_the_action_and_signups_get_the_default(db, tenant, settings):
    from django.contrib.auth import get_user_model

    from accounts.services import tenant_create_for_signup

    out = io.StringIO()
    call_command("tenant_update", tenant.tenant.name, "--output-moderation", "blur", stdout=out)
    assert "output moderation blur" in out.getvalue()
    tenant.tenant.refresh_from_db()
    assert tenant.tenant.output_moderation == "blur"
    settings.SIGNUP_OUTPUT_MODERATION = "flag"
    user = get_user_model().objects.create_user("someone", "someone@example.com", "pw")
    assert tenant_create_for_signup(user=user, email="someone@example.com").output_moderation == "flag"


def test_blocked_outputs_list_and_thumbnail_are_staff_only(
    api, worker, tenant, classifier, unsafe_model, admin_client, client
):
    classifier(unsafe_model)
    mode(tenant, "block")
    assert post_json(api, URL, dalle2(), tenant).status_code == 400
    row = BlockedOutput.objects.get()
    listing = admin_client.get("/admin/images/blockedoutput/")
    assert listing.status_code == 200 and b"nsfw" in listing.content
    url = f"/admin/images/blockedoutput/{row.pk}/thumbnail/"
    assert url.encode() in listing.content
    picture = admin_client.get(url)
    assert picture.status_code == 200 and picture["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(picture.content)).size == (128, 128)
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]


# ---- Usage records and the usage API (gaps left by issue 25, item 1) -----------------------


def test_usage_records_and_the_usage_api_carry_the_output_checks_result(api, worker, tenant, classifier, unsafe_model):
    """Every outcome of the check lands in its own usage columns: withheld images (never
    charged), blurred and flagged requests; the JSON, the CSV and the dashboard agree."""
    classifier(unsafe_model)
    mode(tenant, "block")
    assert post_json(api, URL, dalle2(n=2), tenant).status_code == 400
    mode(tenant, "blur")
    assert post_json(api, URL, dalle2(), tenant).status_code == 200
    mode(tenant, "flag")
    assert post_json(api, URL, dalle2(), tenant).status_code == 200
    mode(tenant, "off")
    assert post_json(api, URL, dalle2(), tenant).status_code == 200
    rows = {row.output_action: row for row in UsageRecord.objects.filter(tenant=tenant.tenant).order_by("created_at")}
    assert set(rows) == {"blocked", "blurred", "flagged", ""}
    blocked = rows["blocked"]
    assert (blocked.outcome, blocked.images_withheld, blocked.output_categories) == ("blocked", 2, ["nsfw"])
    assert (blocked.images, blocked.credits_charged) == (0, 0)
    assert (rows["blurred"].output_categories, rows["blurred"].images_withheld) == (["nsfw"], 0)
    assert rows["flagged"].outcome == "succeeded" and rows["flagged"].output_categories == ["nsfw"]
    assert (rows[""].output_categories, rows[""].images_withheld) == ([], 0)

    totals = api.get("/v1/usage", **tenant.auth).json()["totals"]
    assert (totals["images_withheld"], totals["output_blurred"], totals["output_flagged"]) == (2, 1, 1)
    assert (totals["requests"], totals["refused"], totals["succeeded"]) == (4, 1, 3)
    csv_text = api.get("/v1/usage", {"format": "csv"}, **tenant.auth).content.decode()
    import csv

    (row,) = list(csv.DictReader(io.StringIO(csv_text)))
    assert (row["images_withheld"], row["output_blurred"], row["output_flagged"]) == ("2", "1", "1")
    assert list(row)[-3:] == ["images_withheld", "output_blurred", "output_flagged"]  # appended
    assert "OK" in reconciled()


@pytest.fixture
def two_labels(settings):
    settings.OUTPUT_MODERATION_UNSAFE_LABELS = ["nsfw", "gore"]


def test_withheld_lists_each_images_own_categories(two_labels):
    """Item 2: `withheld` names each withheld image's own labels, not the job's union."""
    from images.serializers import job_withheld
    from images.services.output_moderation import job_output_summary, output_verdicts

    scores = [{"nsfw": 0.9, "gore": 0.1}, {"nsfw": 0.1, "gore": 0.1}, {"nsfw": 0.2, "gore": 0.95}]
    verdicts = output_verdicts(scores=scores, level="standard")
    summary = job_output_summary(action="block", verdicts=verdicts)
    assert summary["categories"] == ["gore", "nsfw"] and summary["withheld"] == [0, 2]
    assert job_withheld(Job(output_moderation=summary)) == [
        {"index": 0, "categories": ["nsfw"]},
        {"index": 2, "categories": ["gore"]},
    ]
    # A summary written before the per-image lists falls back to the job's categories.
    old = {"action": "blocked", "categories": ["nsfw"], "withheld": [1]}
    assert job_withheld(Job(output_moderation=old)) == [{"index": 1, "categories": ["nsfw"]}]


# ---- Tool jobs and Midjourney upscales are delivered images too (item 3) --------------------


@pytest.fixture
def tool_models():
    call_command("build_tool_models", stdout=io.StringIO())


def run_upscale(tenant):
    from accounts.principals import Caller
    from images.services.generation import generation_create
    from images.services.inputs import InputImage
    from images.services.jobs import job_wait
    from images.services.tools import tool_generation_request

    picture = Image.new("RGB", (80, 72), (30, 90, 200))
    picture.paste((250, 240, 30), (20, 18, 60, 54))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    request = tool_generation_request(
        endpoint="/test/upscale",
        kind=Job.Kind.UPSCALE,
        image=InputImage(param="image", upload=io.BytesIO(buffer.getvalue())),
        fields={},
    )
    job = generation_create(caller=Caller(tenant=tenant.tenant, api_key=tenant.key), request=request)
    return job_wait(job_id=job.pk, timeout=120)


def test_upscale_tool_output_is_checked_marked_and_watermarked(
    worker, tenant, classifier, unsafe_model, tool_models, settings
):
    from django.core.files.storage import default_storage

    from images.backends.local.provenance import watermark_read

    classifier(unsafe_model)
    mode(tenant, "block")
    blocked = run_upscale(tenant)
    assert (blocked.status, blocked.error_code) == ("failed", "moderation_blocked")
    assert BlockedOutput.objects.get(job=blocked).categories == ["nsfw"]
    assert UsageRecord.objects.get(job=blocked).output_action == "blocked"
    assert balance(tenant) == (10_000, 0)

    mode(tenant, "flag")
    flagged = run_upscale(tenant)
    assert flagged.status == "succeeded", flagged.error_message
    image = flagged.images.get()
    assert image.moderation == {"action": "flagged", "categories": ["nsfw"]}
    with default_storage.open(image.file, "rb") as handle:
        delivered = Image.open(io.BytesIO(handle.read()))
        delivered.load()
    assert delivered.size == (320, 288)  # (large enough to carry the watermark)
    text = settings.OUTPUT_WATERMARK_TEXT.encode()
    assert watermark_read(delivered, len(text)) == text
    assert UsageRecord.objects.get(job=flagged).output_action == "flagged"
    assert "OK" in reconciled()


@pytest.fixture
def mj_settings(settings):
    settings.MJ_MODEL = "dall-e-2"
    settings.MJ_BASE_SIZE = "256x256"
    settings.MJ_UPSCALE_FACTOR = 2


def mj_wait(api, tenant, task_id: str) -> dict:
    import time

    for _ in range(600):
        task = api.get(f"/mj/task/{task_id}/fetch", **tenant.auth).json()
        if task["status"] in ("SUCCESS", "FAILURE"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish")


def mj_submit(api, tenant, path: str, body: dict) -> str:
    response = post_json(api, f"/mj/submit/{path}", body, tenant)
    assert response.status_code == 200 and response.json()["code"] in (1, 22), response.content
    return response.json()["result"]


def test_midjourney_upscale_goes_through_the_check_and_a_blocked_task_fails_with_the_reason(
    api, worker, tenant, classifier, unsafe_model, mj_settings
):
    classifier(unsafe_model)
    mode(tenant, "off")
    grid = mj_wait(api, tenant, mj_submit(api, tenant, "imagine", {"prompt": "a red fox in the snow"}))
    assert grid["status"] == "SUCCESS", grid
    before = balance(tenant)

    mode(tenant, "block")  # U2 of a grid made under `off`: the upscale is a new image, checked
    upscale = mj_wait(api, tenant, mj_submit(api, tenant, "simple-change", {"content": f"{grid['id']} U2"}))
    assert upscale["status"] == "FAILURE" and upscale["imageUrl"] is None
    assert "output safety check withheld" in upscale["failReason"] and "nsfw" in upscale["failReason"]
    assert upscale["properties"]["creditsCharged"] == 0 and balance(tenant) == before
    assert UsageRecord.objects.get(job__midjourney_task__pk=upscale["id"]).output_action == "blocked"

    blocked_grid = mj_wait(api, tenant, mj_submit(api, tenant, "imagine", {"prompt": "a quiet harbour"}))
    assert blocked_grid["status"] == "FAILURE" and "nsfw" in blocked_grid["failReason"]
    assert blocked_grid["buttons"] == [] and balance(tenant) == before

    mode(tenant, "blur")
    blurred = mj_wait(api, tenant, mj_submit(api, tenant, "simple-change", {"content": f"{grid['id']} U1"}))
    assert blurred["status"] == "SUCCESS", blurred
    job = Job.objects.get(midjourney_task__pk=blurred["id"])
    assert job.images.get().moderation == {"action": "blurred", "categories": ["nsfw"]}
    assert job.output_moderation["action"] == "blurred"
    assert "OK" in reconciled()


def test_midjourney_grid_with_a_withheld_cell_is_grey_there_and_its_u_button_is_refused(
    db, tenant, mj_settings, registry
):
    """A grid whose cell 2 was withheld (n = 4, one blocked): the grid shows grey there,
    and U2 is a 400 (never the next cell: cells are found by their index)."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.utils import timezone

    from core.errors import InvalidRequest
    from images.models import GeneratedImage, ImageModel, MidjourneyTask
    from images.services import midjourney as mj

    model = ImageModel.objects.get(public_id="dall-e-2")
    job = Job.objects.create(
        guidance=1.0,
        seed=1,
        deadline=timezone.now(),
        tenant=tenant.tenant,
        api_key=tenant.key,
        model=model,
        kind="generate",
        endpoint="/mj/submit/imagine",
        prompt="x",
        n=4,
        width=64,
        height=64,
        steps=1,
        status="succeeded",
        output_moderation={"action": "blocked", "categories": ["nsfw"], "withheld": [1]},
    )
    for index, colour in ((0, (255, 0, 0)), (2, (0, 255, 0)), (3, (0, 0, 255))):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
        name = default_storage.save(f"images/test/{job.pk}-{index}.png", ContentFile(buffer.getvalue()))
        GeneratedImage.objects.create(
            job=job, index=index, file=name, content_type="image/png", width=64, height=64, bytes=1
        )
    task = MidjourneyTask.objects.create(
        id=mj.mj_task_id_new(), tenant=tenant.tenant, job=job, action="IMAGINE", prompt="x", prompt_en="x"
    )
    assert mj.mj_cell(task=task, index=3).index == 2
    with pytest.raises(InvalidRequest, match="withheld"):
        mj.mj_cell(task=task, index=2)
    with default_storage.open(mj.mj_grid_ensure(task), "rb") as handle:
        grid = Image.open(io.BytesIO(handle.read())).convert("RGB")
    assert grid.size == (128, 128)
    assert grid.getpixel((32, 32)) == (255, 0, 0) and grid.getpixel((96, 32)) == (128, 128, 128)
    assert grid.getpixel((32, 96)) == (0, 255, 0) and grid.getpixel((96, 96)) == (0, 0, 255)


# ---- Stability's shape (item 4) ------------------------------------------------------------

STABILITY_CORE = "/v2beta/stable-image/generate/core"


def stability_post(api, tenant, accept: str = "image/*"):
    return api.post(
        STABILITY_CORE,
        {"prompt": PROMPT, "seed": "7", "output_format": "png"},
        format="multipart",
        HTTP_ACCEPT=accept,
        **tenant.auth,
    )


def test_stability_shape_blocked_output_is_its_403_content_moderation(api, worker, tenant, classifier, unsafe_model):
    classifier(unsafe_model)
    mode(tenant, "block")
    response = stability_post(api, tenant)
    assert response.status_code == 403, response.content
    body = response.json()
    assert set(body) == {"id", "name", "errors"} and body["name"] == "content_moderation"
    assert "withheld" in body["errors"][0] and "nsfw" in body["errors"][0]
    assert balance(tenant) == (10_000, 0)
    assert UsageRecord.objects.get().output_action == "blocked"


def test_stability_shape_blurred_output_is_content_filtered_and_flagged_is_success(
    api, worker, tenant, classifier, unsafe_model
):
    classifier(unsafe_model)
    mode(tenant, "blur")
    raw = stability_post(api, tenant)
    assert raw.status_code == 200, raw.content
    assert raw["Content-Type"] == "image/png" and raw["finish-reason"] == "CONTENT_FILTERED"
    as_json = stability_post(api, tenant, accept="application/json")
    assert as_json.status_code == 200 and as_json.json()["finish_reason"] == "CONTENT_FILTERED"
    assert int(raw["x-credits-charged"]) > 0  # delivered (blurred), so charged
    mode(tenant, "flag")
    flagged = stability_post(api, tenant)
    assert flagged.status_code == 200 and flagged["finish-reason"] == "SUCCESS"
    mode(tenant, "off")
    assert stability_post(api, tenant)["finish-reason"] == "SUCCESS"


# ---- Retention (item 5) --------------------------------------------------------------------


def test_retention_deletes_blocked_output_records_and_their_thumbnails(
    api, worker, tenant, classifier, unsafe_model, settings
):
    from datetime import timedelta

    from django.core.files.storage import default_storage
    from django.utils import timezone

    from images.services.retention import retention_sweep

    classifier(unsafe_model)
    mode(tenant, "block")
    assert post_json(api, URL, dalle2(n=2), tenant).status_code == 400
    old, recent = BlockedOutput.objects.order_by("index")
    assert default_storage.exists(old.thumbnail) and default_storage.exists(recent.thumbnail)
    settings.RETENTION_DAYS = 30
    BlockedOutput.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    result = retention_sweep()
    assert result.rows["blocked_outputs"] == 1
    assert not default_storage.exists(old.thumbnail) and default_storage.exists(recent.thumbnail)
    assert list(BlockedOutput.objects.all()) == [recent]
    usage = UsageRecord.objects.get()  # the usage record keeps what was found
    assert (usage.output_action, usage.images_withheld, usage.output_categories) == ("blocked", 2, ["nsfw"])
