"""LoRA adapters (issue 23): the catalog, per-request `loras`, prices, the listing, and
images that are right: an adapter changes the image, and a request without one gets
exactly the base model's bytes whatever ran before or beside it.

The adapters are random low-rank pairs in diffusers' format, built for whatever the
demo model's denoiser is (from its config, no hard-coded shapes)."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from billing.models import CreditAccount, LedgerEntry, UsageRecord
from images.backends.base import GenerationTask, LoraSpec
from images.backends.local import adapters, cache, lanes, runner
from images.backends.local.batcher import Batcher, batch_key
from images.models import ImageModel, Job, LoraAdapter
from tests.conftest import post_json
from tools.loras import build_lora

URL = "/v1/images/generations"


def build_unet_lora(model_folder: Path, out: Path, *, seed: int = 1) -> Path:
    """A random LoRA for the SD-style pipeline in `model_folder` (tools/loras.py)."""
    return build_lora(model_folder, out, seed=seed)


def digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def task(source, loras=(), prompt="a red fox", seed=7) -> GenerationTask:
    return GenerationTask(
        source=source,
        prompt=prompt,
        negative_prompt=None,
        width=256,
        height=256,
        steps=2,
        guidance=5.0,
        seeds=[seed],
        loras=tuple(loras),
    )


@pytest.fixture(scope="module")
def lora_dir(model_dir, tmp_path_factory):
    return build_unet_lora(Path(model_dir), tmp_path_factory.mktemp("loras") / "fox")


# ---- the backend -------------------------------------------------------------------------------


def test_adapter_changes_the_image_and_the_base_stays_bit_exact(source, lora_dir):
    cache.clear_cache()  # a model that never saw an adapter
    never = digest(runner.run_batch([task(source)])[0].images[0])
    full = LoraSpec("fox", str(lora_dir), 1.0)
    with_it = digest(runner.run_batch([task(source, [full])])[0].images[0])
    assert with_it != never
    pipe = cache.get_pipeline(source)
    loaded_before = adapters.loaded(cache.cache_key(source))
    assert loaded_before["active"] == ["fox"] and loaded_before["bytes"] > 0

    after = digest(runner.run_batch([task(source)])[0].images[0])
    assert after == never  # disabled, not merely scaled: exactly the base model's bytes
    assert cache.get_pipeline(source) is pipe  # swapped without reloading the pipeline
    assert digest(runner.run_batch([task(source, [LoraSpec("fox", str(lora_dir), 0.0)])])[0].images[0]) == never
    half = digest(runner.run_batch([task(source, [LoraSpec("fox", str(lora_dir), 0.5)])])[0].images[0])
    assert half not in (never, with_it)
    assert digest(runner.run_batch([task(source, [full])])[0].images[0]) == with_it  # loaded once, reused
    assert adapters.loaded(cache.cache_key(source))["loaded"] == ["fox"]


def test_one_batch_with_and_without_an_adapter_never_shares_it(source, lora_dir):
    base = digest(runner.run_batch([task(source, seed=11)])[0].images[0])
    with_alone = digest(runner.run_batch([task(source, [LoraSpec("fox", str(lora_dir), 1.0)], seed=11)])[0].images[0])
    mixed = runner.run_batch(
        [task(source, [LoraSpec("fox", str(lora_dir), 1.0)], seed=11), task(source, seed=11)], max_batch=2
    )
    assert digest(mixed[1].images[0]) == base
    assert digest(mixed[0].images[0]) == with_alone
    # The cross-request batcher groups by adapter set: scale 0 batches with the base.
    key = batch_key
    assert key(task(source, [LoraSpec("fox", str(lora_dir), 1.0)])) != key(task(source))
    assert key(task(source, [LoraSpec("fox", str(lora_dir), 0.0)])) == key(task(source))
    assert key(task(source, [LoraSpec("fox", str(lora_dir), 0.5)])) != key(
        task(source, [LoraSpec("fox", str(lora_dir), 1.0)])
    )


def test_two_threads_one_with_an_adapter_each_get_their_own_image(source, lora_dir):
    import threading

    # (References on the lanes too: a lane's torch thread count can move the last bit.)
    references = (task(source, seed=3), task(source, [LoraSpec("fox", str(lora_dir), 1.0)], seed=3))
    alone = [digest(lanes.gpu_call(runner.run_batch, [t])[0].images[0]) for t in references]
    shared = Batcher()
    results = [None, None]
    tasks = [task(source, seed=3), task(source, [LoraSpec("fox", str(lora_dir), 1.0)], seed=3)]

    def one(i):
        results[i] = shared.run(tasks[i], max_batch=2, window_ms=300)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [digest(r.images[0]) for r in results] == alone


# ---- the API -----------------------------------------------------------------------------------


def b64_digest(body: dict) -> str:
    return digest(Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))).convert("RGB"))


def generate(api, tenant, **extra):
    body = {"model": "dall-e-2", "prompt": "a red fox", "size": "256x256", "response_format": "b64_json", "seed": 5}
    return post_json(api, URL, {**body, **extra}, tenant)


@pytest.fixture
def demo_lora(worker, settings, tmp_path):
    from images.worker import pipeline_source

    model = ImageModel.objects.get(public_id="dall-e-2")
    folder = build_unet_lora(Path(pipeline_source(model).source), tmp_path / "fox")
    call_command("lora_add", "fox", str(folder), "--base", "dall-e-2", "--credits", "5", "--trigger", "foxy")
    return folder


def nothing_charged(tenant, jobs_before=0):
    account = CreditAccount.objects.get(tenant=tenant.tenant)
    assert (account.balance, account.held) == (10_000, 0)
    assert Job.objects.filter(tenant=tenant.tenant).count() == jobs_before


def test_a_request_with_an_adapter_pays_its_surcharge_and_others_get_the_base(api, demo_lora, make_tenant):
    alice, bob = make_tenant(), make_tenant()
    base = generate(api, bob)
    assert base.status_code == 200, base.content
    styled = generate(api, alice, loras=[{"name": "fox", "scale": 1.0}])
    assert styled.status_code == 200, styled.content
    assert styled["x-credits-charged"] == str(16 + 5)  # the model's 16, plus 5 per image
    assert b64_digest(styled.json()) != b64_digest(base.json())
    account = CreditAccount.objects.get(tenant=alice.tenant)
    assert account.balance == 10_000 - 21
    assert UsageRecord.objects.get(tenant=alice.tenant).credits_charged == 21
    assert LedgerEntry.objects.get(tenant=alice.tenant, kind="capture").amount == -21
    again = generate(api, bob)  # after the adapter ran: the same bytes as before it
    assert b64_digest(again.json()) == b64_digest(base.json())
    half = generate(api, alice, loras=[{"name": "fox", "scale": 0.5}])
    assert b64_digest(half.json()) not in (b64_digest(base.json()), b64_digest(styled.json()))
    call_command("billing_reconcile")


@pytest.mark.parametrize(
    ("loras", "param", "code"),
    [
        ([{"name": "nope"}], "loras", "lora_not_found"),
        ([{"name": "secret"}], "loras", "lora_not_found"),  # another tenant's: same answer as unknown
        ([{"name": "other-base"}], "loras", "lora_incompatible"),
        ([{"name": "fox", "scale": "high"}], "loras[0].scale", "invalid_value"),
        ([{"name": "fox"}, {"name": "fox2", "scale": 2.5}], "loras[1].scale", "invalid_value"),
        ([{"name": "fox", "scale": True}], "loras[0].scale", "invalid_value"),
        ([{"name": f"a{i}"} for i in range(4)], "loras", "invalid_value"),
        ({"name": "fox"}, "loras", "invalid_type"),
        ([{"name": "fox", "weight": 1}], "loras[0].weight", "unknown_parameter"),
    ],
)
def test_bad_adapters_are_refused_before_anything_is_held(api, demo_lora, make_tenant, loras, param, code):
    owner, caller = make_tenant(), make_tenant()
    call_command("lora_add", "secret", str(demo_lora), "--base", "dall-e-2", "--tenants", owner.tenant.name)
    call_command("lora_add", "fox2", str(demo_lora), "--base", "dall-e-2")
    call_command("lora_add", "other-base", str(demo_lora), "--base", "dall-e-3")
    response = generate(api, caller, loras=loras)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    nothing_charged(caller)
    assert owner.tenant.name not in error["message"] and str(demo_lora) not in error["message"]


def test_a_granted_tenant_may_use_a_private_adapter(api, demo_lora, make_tenant):
    owner = make_tenant()
    call_command("lora_add", "secret", str(demo_lora), "--base", "dall-e-2", "--tenants", owner.tenant.name)
    response = generate(api, owner, loras=[{"name": "secret", "scale": 0.0}])
    assert response.status_code == 200, response.content
    assert response["x-credits-charged"] == "16"


def test_the_listing_shows_only_what_the_key_may_use(api, demo_lora, make_tenant):
    owner, other = make_tenant(), make_tenant()
    call_command("lora_add", "secret", str(demo_lora), "--base", "dall-e-2", "--tenants", owner.tenant.name)

    def names(tenant, query=""):
        response = api.get("/v1/loras" + query, **tenant.auth)
        assert response.status_code == 200, response.content
        return {item["id"]: item for item in response.json()["data"]}

    assert set(names(owner)) == {"fox", "secret"}
    seen = names(other)
    assert set(seen) == {"fox"}
    assert seen["fox"] == {
        "object": "lora",
        "id": "fox",
        "base_model": "dall-e-2",
        "family": None,
        "trigger": "foxy",
        "surcharge_credits": 5,
        "owned_by": "system",
        "created": seen["fox"]["created"],
    }
    assert set(names(owner, "?model=dall-e-3")) == set()
    assert api.get("/v1/loras?model=nope", **other.auth).status_code == 404


def test_lora_add_refuses_what_it_cannot_serve(registry, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CommandError, match="not a .safetensors"):
        call_command("lora_add", "x", str(tmp_path / "notes.txt"), "--base", "dall-e-2")
    with pytest.raises(CommandError, match="no .safetensors"):
        call_command("lora_add", "x", str(tmp_path), "--base", "dall-e-2")
    with pytest.raises(CommandError, match="does not exist"):
        call_command("lora_add", "x", str(tmp_path / "missing.safetensors"), "--base", "dall-e-2")
    (tmp_path / "a.safetensors").write_bytes(b"")
    with pytest.raises(CommandError, match="unknown base model"):
        call_command("lora_add", "x", str(tmp_path / "a.safetensors"), "--base", "no-such-model")
    with pytest.raises(CommandError, match="unknown tenant"):
        call_command("lora_add", "x", str(tmp_path / "a.safetensors"), "--base", "dall-e-2", "--tenants", "ghost")
    assert not LoraAdapter.objects.exists()


# ---- a transformer family ----------------------------------------------------------------------


def test_a_transformer_family_takes_adapters_and_keeps_its_base_exact(tmp_path, model_dir):
    # (model_dir: the module's pinned CPU configuration.)
    from images.backends.base import PipelineSource
    from tools.tiny_families import build_tiny_family

    folder = build_tiny_family("sd3", tmp_path / "sd3")
    source = PipelineSource(str(folder))
    lora = LoraSpec("sd3-style", str(build_lora(folder, tmp_path / "sd3-lora")), 1.0)

    def one(loras=(), seed=4):
        t = task(source, loras, seed=seed)
        t.width = t.height = 64
        return t

    base = digest(runner.run_batch([one()])[0].images[0])
    styled = digest(runner.run_batch([one([lora])])[0].images[0])
    assert styled != base
    mixed = runner.run_batch([one([lora]), one()], max_batch=2)
    assert [digest(r.images[0]) for r in mixed] == [styled, base]
    assert digest(runner.run_batch([one()])[0].images[0]) == base


def test_a_multipart_edit_takes_loras_as_a_json_string(api, demo_lora, make_tenant):
    from django.core.files.uploadedfile import SimpleUploadedFile

    def edit(tenant, loras=None):
        buffer = io.BytesIO()
        Image.new("RGB", (256, 256), (200, 40, 40)).save(buffer, format="PNG")
        data = {
            "image": SimpleUploadedFile("a.png", buffer.getvalue(), content_type="image/png"),
            "prompt": "a red fox",
            "model": "dall-e-2",
            "size": "256x256",
            "response_format": "b64_json",
            "seed": "9",
        }
        if loras is not None:
            data["loras"] = loras
        return api.post("/v1/images/edits", data, format="multipart", **tenant.auth)

    caller = make_tenant()
    bad = edit(caller, '[{"name": "fox", "scale": 3}]')
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "loras[0].scale"
    nothing_charged(caller)
    plain = edit(caller)
    styled = edit(caller, '[{"name": "fox", "scale": 1}]')
    assert plain.status_code == 200 and styled.status_code == 200, styled.content
    assert int(styled["x-credits-charged"]) == int(plain["x-credits-charged"]) + 5
    assert b64_digest(styled.json()) != b64_digest(plain.json())
    assert b64_digest(edit(caller).json()) == b64_digest(plain.json())


def test_the_admin_lists_adds_and_refuses_a_bad_path(admin_client, registry, tmp_path):
    assert admin_client.get("/admin/images/loraadapter/").status_code == 200
    assert admin_client.get("/admin/images/loraadapter/add/").status_code == 200
    model = ImageModel.objects.get(public_id="dall-e-2")
    form = {"name": "bad", "path": str(tmp_path / "none.safetensors"), "base_model": model.pk, "family": ""}
    form |= {"surcharge_credits": 0, "trigger_words": "", "public": "on", "enabled": "on"}
    refused = admin_client.post("/admin/images/loraadapter/add/", form)
    assert refused.status_code == 200 and b"Not a LoRA adapter" in refused.content
    (tmp_path / "good.safetensors").write_bytes(b"")
    added = admin_client.post(
        "/admin/images/loraadapter/add/", {**form, "name": "good", "path": str(tmp_path / "good.safetensors")}
    )
    assert added.status_code == 302
    assert LoraAdapter.objects.get(name="good").public
