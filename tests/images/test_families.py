"""Every model family served, as a tiny random-weight pipeline (tools/tiny_families.py)
driven through the GPU layer and through the API as a customer: seeded batches equal to
images made alone (also when another request with another prompt and negative prompt
shares the call), progress, previews, non-square sizes, each edit mode the family has,
and an uncharged 400 for each it has not."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from images.selectors import image_model_cache_clear

pytestmark = pytest.mark.filterwarnings("ignore")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import CommandError  # noqa: E402

from core.errors import InvalidRequest  # noqa: E402
from images.backends.base import GenerationTask, PipelineError, PipelineSource  # noqa: E402
from images.backends.local import config, families  # noqa: E402
from images.backends.local.batcher import batch_key  # noqa: E402
from images.backends.local.cache import clear_cache  # noqa: E402
from images.backends.local.runner import run_batch  # noqa: E402
from images.families_catalog import FAMILIES, FamilyError, recognise_folder  # noqa: E402
from images.profiles import capabilities_check  # noqa: E402
from tools.tiny_families import TINY_FAMILIES, build_tiny_family  # noqa: E402

# tiny family -> (catalog family, edit modes, negative prompts, guidance mode)
EXPECTED = {
    "sdxl": ("sdxl", ["img2img", "inpaint"], True, "cfg"),
    "sd3": ("sd3", ["img2img", "inpaint"], True, "cfg"),
    "flux": ("flux", ["img2img", "inpaint"], False, "distilled"),
    "flux-schnell": ("flux", ["img2img", "inpaint"], False, "none"),
    "flux-kontext": ("flux-kontext", ["reference"], False, "distilled"),
    "chroma": ("chroma", ["img2img"], True, "cfg"),
    "pixart-sigma": ("pixart-sigma", [], True, "cfg"),
    "sana": ("sana", [], True, "cfg"),
    "lumina2": ("lumina2", [], True, "cfg"),
    "z-image": ("z-image", ["img2img"], True, "cfg"),
    "cogview4": ("cogview4", [], True, "cfg"),
    "qwen-image": ("qwen-image", ["img2img", "inpaint"], True, "true_cfg"),
    "flux2-klein": ("flux2", ["reference"], False, "none"),
    "hidream": ("hidream", [], True, "cfg"),
}
assert set(EXPECTED) == set(TINY_FAMILIES)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    with config.override(device="cpu", max_batch=None, cache_size=2, vae_tiling=False, lanes=None):
        yield {name: build_tiny_family(name, root / name) for name in TINY_FAMILIES}
    clear_cache()


def task(
    source, seeds, *, prompt="a red fox", negative=None, width=128, height=128, steps=2, guidance=3.0, **extra
) -> GenerationTask:
    return GenerationTask(
        source=source,
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seeds=list(seeds),
        **extra,
    )


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def assert_same(left, right) -> None:
    # Up to float noise (batched matmuls round differently): at most a few levels.
    assert len(left) == len(right)
    assert np.abs(pixels(left) - pixels(right)).max() <= 3


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_family_generates_batch_independent_with_progress_and_previews(name, family_dirs):
    source = PipelineSource(str(family_dirs[name]))
    family = families.family_for_source(source)
    assert family.name == EXPECTED[name][0]
    has_negative = EXPECTED[name][2]
    steps, previews = [], []
    mine = task(
        source,
        [11, 12],
        on_step=lambda done, total: steps.append((done, total)),
        preview_steps=(1,),
        on_preview=lambda index, images: previews.append(images),
    )
    # Another customer's request: other prompt, and a negative prompt where the family has them.
    other = task(
        source, [13], prompt="a blue whale in a storm, oil painting", negative="blurry" if has_negative else None
    )
    shared = run_batch([mine, other], max_batch=4)
    alone = [run_batch([task(source, [seed])], max_batch=1)[0].images[0] for seed in (11, 12)]
    assert_same(shared[0].images, alone)
    assert [im.size for im in shared[0].images] == [(128, 128)] * 2
    assert steps == [(1, 2), (2, 2)]
    assert len(previews) == 1 and len(previews[0]) == 2
    preview = pixels(previews[0])
    assert preview.ndim == 4 and preview.std() > 0  # decoded latents, not a blank image
    if has_negative:  # the other request's negative prompt changed its own image only
        without = run_batch([task(source, [13], prompt="a blue whale in a storm, oil painting")], max_batch=1)[0]
        assert np.abs(pixels(without.images) - pixels(shared[1].images)).max() > 3


@pytest.mark.parametrize("name", ["flux", "qwen-image", "flux2-klein"])  # packed, 5-D video VAE, batch-norm
def test_preview_of_the_last_step_is_the_image(name, family_dirs):
    # The preview decoder follows the pipeline's own decode: at the last step (same
    # latents) the preview is the delivered image, here at a non-square size.
    source = PipelineSource(str(family_dirs[name]))
    previews = []
    result = run_batch(
        [
            task(
                source,
                [21, 22],
                width=128,
                height=64,
                preview_steps=(2,),
                on_preview=lambda index, images: previews.append(images),
            )
        ]
    )[0]
    assert len(previews) == 1 and [im.size for im in previews[0]] == [(128, 64)] * 2
    assert_same(previews[0], result.images)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_family_renders_non_square_and_each_edit_mode(name, family_dirs):
    source = PipelineSource(str(family_dirs[name]))
    wide = run_batch([task(source, [5], width=128, height=64)])[0]
    assert wide.images[0].size == (128, 64)
    init = Image.new("RGB", (128, 64), (200, 40, 40))
    mask = Image.new("L", (128, 64), 0)
    mask.paste(255, (0, 0, 64, 64))
    modes = EXPECTED[name][1]
    edit = task(source, [6], width=128, height=64, init_image=init, strength=0.7)
    if "img2img" in modes or "reference" in modes:
        assert run_batch([edit])[0].images[0].size == (128, 64)
    else:
        with pytest.raises(PipelineError, match="image-to-image"):
            run_batch([edit])
    inpaint = task(source, [6], width=128, height=64, init_image=init, mask_image=mask)
    if "inpaint" in modes:
        image = run_batch([inpaint])[0].images[0]
        assert image.size == (128, 64)
        assert np.asarray(image)[:, 64:].tolist() == np.asarray(init)[:, 64:].tolist()  # black = kept
    else:
        with pytest.raises(PipelineError, match="inpainting"):
            run_batch([inpaint])


def test_call_arguments_follow_each_pipeline_signature(family_dirs):
    from images.backends.local.cache import get_pipeline

    def kwargs_of(name, *negatives, guidance=3.0):
        source = PipelineSource(str(family_dirs[name]))
        pipe = get_pipeline(source)
        tasks = [task(source, [1], negative=n, guidance=guidance) for n in negatives]
        return families.family_of(pipe).call_kwargs(
            pipe,
            "text2img",
            tasks,
            list(range(len(tasks))),
            strength=1.0,
            generators=[None] * len(tasks),
            on_step_end=lambda *a: a[-1],
        )

    flux = kwargs_of("flux", None)
    assert "negative_prompt" not in flux and flux["guidance_scale"] == 3.0  # distilled embedding
    assert "guidance_scale" not in kwargs_of("flux-schnell", None)  # no guidance at all
    pixart = kwargs_of("pixart-sigma", None, "dark")
    assert pixart["negative_prompt"] == ["", "dark"] and "callback" in pixart and "callback_on_step_end" not in pixart
    assert pixart["clean_caption"] is False
    assert "negative_prompt" not in kwargs_of("pixart-sigma", None)  # its own default, "" (never None)
    assert "negative_prompt" not in kwargs_of("sdxl", None)  # SDXL's zeroed negatives, as alone
    kontext = kwargs_of("flux-kontext", None)
    assert kontext["_auto_resize"] is False and kontext["max_area"] == 128 * 128


def test_batch_keys_separate_requests_that_would_change_each_other(family_dirs):
    sdxl = PipelineSource(str(family_dirs["sdxl"]))
    flux = PipelineSource(str(family_dirs["flux"]))
    # SDXL zeroes the negatives of a call where none was sent: never mixed with one that has one.
    assert batch_key(task(sdxl, [1])) != batch_key(task(sdxl, [1], negative="x"))
    assert batch_key(task(sdxl, [1], prompt="a")) == batch_key(task(sdxl, [1], prompt="b"))
    assert batch_key(task(flux, [1], prompt="a")) == batch_key(task(flux, [1], prompt="b"))
    cogview = families.Family(next(s for s in FAMILIES if s.name == "cogview4"))
    # CogView4 pads prompts to the longest without a mask: only identical prompts share.
    assert cogview.batch_key(task(sdxl, [1], prompt="a")) != cogview.batch_key(task(sdxl, [1], prompt="bb"))


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_folder_is_recognised_without_torch(name, family_dirs):
    spec, caps = recognise_folder(family_dirs[name])
    family, modes, negative, guidance = EXPECTED[name]
    assert (caps["family"], caps["edit_modes"], caps["negative_prompt"], caps["guidance"]) == (
        family,
        modes,
        negative,
        guidance,
    )
    assert caps["size_multiple"] == spec.size_multiple


def test_unknown_and_derived_folders_are_refused_with_the_reason(tmp_path, family_dirs):
    with pytest.raises(FamilyError, match="no model_index.json"):
        recognise_folder(tmp_path)
    (tmp_path / "model_index.json").write_text('{"_class_name": "WuerstchenPipeline"}')
    with pytest.raises(FamilyError, match="does not serve"):
        recognise_folder(tmp_path)
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxImg2ImgPipeline"}')
    with pytest.raises(FamilyError, match="text-to-image checkpoint"):
        recognise_folder(tmp_path)


def test_size_rule_is_refused_naming_size():
    model = SimpleNamespace(
        public_id="m",
        capabilities={"family": "sana", "edit_modes": [], "negative_prompt": True, "size_multiple": 32},
        source="m",
        capabilities_source="m",  # computed from this source (images/services/models.py)
    )
    capabilities_check(model=model, kind="generate", masked=False, fields={"size": "1024x1024"})
    with pytest.raises(InvalidRequest) as info:
        capabilities_check(model=model, kind="generate", masked=False, fields={"size": "1000x1000"})
    assert info.value.param == "size"


def test_token_counting_never_treats_a_url_prompt_as_an_image(family_dirs, monkeypatch):
    # FLUX.2-dev's `tokenizer` is a processor (PixtralProcessor): its first argument is
    # images, and an image that is a URL is fetched. Counting uses its text tokenizer.
    import transformers.image_utils

    from images.backends.local import cache
    from images.backends.local.tokens import count_tokens

    fetched, called = [], []
    monkeypatch.setattr(transformers.image_utils, "load_image", lambda *a, **k: fetched.append(a))

    class Processor:  # the shape of a transformers processor: images first, then text
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def __call__(self, images=None, text=None, **kwargs):
            called.append(images)
            raise AssertionError("the processor must not be called to count tokens")

    source = PipelineSource(str(family_dirs["flux2-klein"]))
    pipe = cache.get_pipeline(source, lane=0)
    text_tokenizer = pipe.tokenizer
    monkeypatch.setattr(pipe, "tokenizer", Processor(text_tokenizer))
    cache._COUNTING.pop(cache.cache_key(source), None)
    try:
        url = "https://example.com/cat.png"
        assert count_tokens(source, url) == len(url)  # the byte-level tiny tokenizer: one token per byte
    finally:
        cache._COUNTING.pop(cache.cache_key(source), None)
    assert called == [] and fetched == []


@pytest.mark.parametrize(
    ("guidance_mode", "vivid"),
    [("cfg", 2 * 1.2), ("true_cfg", 2 * 1.2), ("distilled", 2.0), ("none", 2.0), (None, 2 * 1.2)],
)
def test_dall_e_3_style_scales_only_a_cfg_guidance(guidance_mode, vivid, registry):
    from images.models import ImageModel
    from images.profiles import STYLE_TEMPLATES
    from images.validation import generation_params_resolve

    assert STYLE_TEMPLATES["vivid"][1] == 1.2
    model = ImageModel.objects.get(public_id="dall-e-3")
    model.guidance = 2.0
    model.capabilities = {"family": "x", "guidance": guidance_mode} if guidance_mode else {}
    model.capabilities_source = model.source  # computed from this source (images/services/models.py)
    params = generation_params_resolve(data={"model": "dall-e-3", "prompt": "a fox", "style": "vivid"}, model=model)
    assert params.guidance == pytest.approx(vivid)


# ---------------------------------------------------------------------------
# Through the API, registered the way an operator does
# ---------------------------------------------------------------------------

URL = "/v1/images/generations"


def png(size=(256, 256), *, name="a.png"):
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/png")


def transparent_mask(size=(256, 256)):
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return SimpleUploadedFile("mask.png", buffer.getvalue(), content_type="image/png")


def balance(tenant) -> int:
    from billing.models import CreditAccount

    return CreditAccount.objects.get(tenant=tenant.tenant).balance


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_family_through_the_api(name, family_dirs, api, worker, tenant):
    from images.models import ImageModel

    public_id = f"tiny-{name}"
    call_command(
        "model_add",
        public_id,
        str(family_dirs[name]),
        "--profile",
        "dall-e-2",
        "--price-template",
        "dall-e-2",
        stdout=io.StringIO(),
    )
    model = ImageModel.objects.get(public_id=public_id)
    family, modes, negative, guidance = EXPECTED[name]
    assert model.capabilities["family"] == family and model.prices.count() == 3
    ImageModel.objects.filter(pk=model.pk).update(steps_by_quality={"standard": 2, "default": 2})
    image_model_cache_clear()  # (a bulk update sends no signal)
    auth = tenant.auth

    def generate(**fields):
        body = {
            "model": public_id,
            "prompt": "a lighthouse",
            "size": "256x256",
            "response_format": "b64_json",
            "seed": 7,
            **fields,
        }
        return api.post(URL, body, format="json", **auth)

    response = generate(n=2)
    assert response.status_code == 200, response.content
    images = [Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) for item in response.json()["data"]]
    assert [im.size for im in images] == [(256, 256)] * 2
    assert response["x-credits-charged"] == "32"  # 2 x 16 credits, the template's 256x256 price

    def refused(response, param):
        before = balance(tenant)
        assert response.status_code == 400, response.content
        assert response.json()["error"]["param"] == param
        assert balance(tenant) == before

    if not negative:
        before = balance(tenant)
        response = generate(negative_prompt="blurry")
        assert response.status_code == 400 and response.json()["error"]["param"] == "negative_prompt"
        assert balance(tenant) == before
    else:
        assert generate(negative_prompt="blurry").status_code == 200

    def edit(path, **files):
        data = {"model": public_id, "size": "256x256", "response_format": "b64_json", "image": png(), **files}
        if path.endswith("edits"):
            data["prompt"] = "add a moon"
        return api.post(path, data, format="multipart", **auth)

    for path in ("/v1/images/edits", "/v1/images/variations"):
        before = balance(tenant)
        response = edit(path)
        if modes and ("img2img" in modes or "reference" in modes):
            assert response.status_code == 200, response.content
        else:
            assert response.status_code == 400 and response.json()["error"]["param"] == "image", response.content
            assert balance(tenant) == before
    before = balance(tenant)
    response = edit("/v1/images/edits", mask=transparent_mask())
    if "inpaint" in modes:
        assert response.status_code == 200, response.content
    else:
        assert response.status_code == 400, response.content
        assert response.json()["error"]["param"] in ("mask", "image")
        assert balance(tenant) == before


def test_model_add_refuses_what_it_cannot_serve(tmp_path, registry):
    with pytest.raises(CommandError, match="no model_index.json"):
        call_command("model_add", "nope", str(tmp_path), "--profile", "dall-e-2", stdout=io.StringIO())
    with pytest.raises(CommandError, match="not in the local hub cache"):
        call_command("model_add", "nope", "example-org/not-downloaded", "--profile", "dall-e-2", stdout=io.StringIO())


@pytest.mark.parametrize("name", ["flux", "pixart-sigma"])  # packed latents; the legacy step callback
def test_streaming_delivers_previews_then_the_image(name, family_dirs, api, worker, tenant):
    from images.models import ImageModel
    from tests.images.test_tasks_and_streaming import parse_sse

    call_command(
        "model_add",
        f"tiny-{name}-gpt",
        str(family_dirs[name]),
        "--profile",
        "gpt-image",
        "--price-template",
        "gpt-image-1",
        stdout=io.StringIO(),
    )
    ImageModel.objects.filter(public_id=f"tiny-{name}-gpt").update(steps_by_quality={"low": 3, "default": 3})
    image_model_cache_clear()  # (a bulk update sends no signal)
    response = api.post(
        URL,
        {
            "model": f"tiny-{name}-gpt",
            "prompt": "x",
            "quality": "low",
            "size": "1536x1024",
            "stream": True,
            "partial_images": 2,
        },
        format="json",
        **tenant.auth,
    )
    assert response.status_code == 200, response.content
    events = parse_sse(b"".join(response.streaming_content))
    types = [event for event, _ in events]
    assert types.count("image_generation.partial_image") == 2 and types[-1] == "image_generation.completed"
    final = Image.open(io.BytesIO(base64.b64decode(events[-1][1]["b64_json"])))
    assert final.size == (1536, 1024)
