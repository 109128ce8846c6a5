"""Image-to-image, inpainting and step previews in the torch/diffusers layer, on the tiny
random demo model, on CPU. No Django needed.

About the demo model: its random VAE is no autoencoder (decode(encode(x)) is far from x,
and decoded pixels depend only weakly on the latents), so "closer to the input" is
checked where it is meaningful: on the latents the pipeline ends with (captured through
the preview hook), against the latents of the input image.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from images.backends.base import (  # noqa: E402
    GenerationTask,
    PipelineError,
    PipelineSource,
    effective_steps,
    preview_steps_for,
)
from images.backends.local import cache, config, previews  # noqa: E402
from images.backends.local.cache import get_pipeline  # noqa: E402
from images.backends.local.demo import build_demo_model  # noqa: E402
from images.backends.local.runner import run_batch  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """These tests look at latents and previews at the size asked, the generic path of an
    operator's model: the random-weight builder's model draws at any size, while the
    trained demo model draws at 32x32 and is resized (tests/images/test_demo_oracle.py)."""
    with config.override(device="cpu", max_batch=None, cache_size=2, vae_tiling=False, lanes=None):
        path = tmp_path_factory.mktemp("models") / "random-demo"
        build_demo_model(path, seed=0)
        yield path
    cache.clear_cache()


SIZE = 256
HALF_LATENT = SIZE // 8 // 2  # latent columns of the left half


@pytest.fixture(scope="module")
def init_image() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return Image.fromarray(np.stack([x, y, 255 - (x + y) // 2], -1).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def half_mask() -> Image.Image:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, SIZE // 2 :] = 255  # left half black = keep, right half white = repaint
    return Image.fromarray(mask, "L")


def task(source, seeds, *, width=SIZE, height=SIZE, steps=4, guidance=5.0, **extra) -> GenerationTask:
    return GenerationTask(source, "a red fox", None, width, height, steps, guidance, list(seeds), **extra)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def diff(a, b) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


@pytest.fixture
def final_latents(monkeypatch):
    """Run a task and return the latents of its last step (via a preview at that step)."""
    captured: list[torch.Tensor] = []
    real = previews.decode_latents_preview

    def spy(pipe, latents, **kwargs):
        captured.append(latents.detach().clone())
        return real(pipe, latents, **kwargs)

    monkeypatch.setattr(previews, "decode_latents_preview", spy)

    def run(one: GenerationTask) -> torch.Tensor:
        captured.clear()
        one.preview_steps = (effective_steps(one),)
        one.on_preview = lambda index, images: None
        run_batch([one])
        assert len(captured) == 1
        return captured[0]

    return run


def input_latents(source, image) -> torch.Tensor:
    pipe = get_pipeline(source)
    with torch.no_grad():
        encoded = pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mean
    return encoded * pipe.vae.config.scaling_factor


# ---------------------------------------------------------------------------
# Derived pipelines
# ---------------------------------------------------------------------------


def test_derived_pipelines_share_components_and_are_cached(source):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    base = get_pipeline(source)
    img2img = get_pipeline(source, "img2img")
    inpaint = get_pipeline(source, "inpaint")
    assert isinstance(img2img, StableDiffusionImg2ImgPipeline)
    assert isinstance(inpaint, StableDiffusionInpaintPipeline)
    for derived in (img2img, inpaint):
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            assert getattr(derived, name) is getattr(base, name), name
    assert get_pipeline(source, "img2img") is img2img and get_pipeline(source, "inpaint") is inpaint
    assert get_pipeline(source) is base
    with pytest.raises(PipelineError):
        get_pipeline(source, "upscale")


def test_evicting_a_model_evicts_its_derived_pipelines(source, pipeline_config):
    pipeline_config(cache_size=1)
    old = get_pipeline(source, "img2img")
    bf16 = PipelineSource(source.source, dtype="bfloat16")
    other = get_pipeline(bf16, "inpaint")
    # from_pipe must not cast the shared modules: both keep their own dtype.
    assert other.unet.dtype == torch.bfloat16 and get_pipeline(bf16).unet is other.unet
    assert len(cache._CACHE) == 1 and len(cache._VARIANTS) == 1
    again = get_pipeline(source, "img2img")
    assert again is not old and again.unet is get_pipeline(source).unet
    assert again.unet.dtype == torch.float32


# ---------------------------------------------------------------------------
# Image-to-image
# ---------------------------------------------------------------------------


def test_img2img_sizes_counts_and_seeds(source, init_image):
    small = init_image.resize((200, 136))  # multiples of 8, not of the UNet's 32
    a, b, c, d = run_batch(
        [
            task(source, [5, 6], init_image=init_image, strength=0.5),
            task(source, [5], init_image=init_image, strength=0.5),
            task(source, [7], width=200, height=136, init_image=small),
            task(source, [5]),  # text-to-image in the same batch
        ]
    )
    assert [len(r.images) for r in (a, b, c, d)] == [2, 1, 1, 1]
    assert [r.images[0].size for r in (a, b, c)] == [(SIZE, SIZE), (SIZE, SIZE), (200, 136)]
    assert all(im.mode == "RGB" for r in (a, b, c) for im in r.images)
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))  # same seed, same pixels
    assert diff(a.images[0], a.images[1]) > 1  # other seed, other image
    (again,) = run_batch([task(source, [5, 6], init_image=init_image, strength=0.5)], max_batch=2)
    for x, y in zip(a.images, again.images, strict=True):  # batched == one per call
        assert np.abs(pixels(x) - pixels(y)).max() <= 2


def test_img2img_strength_controls_distance_from_input(source, init_image, final_latents):
    reference = input_latents(source, init_image)
    gaps = {}
    for strength, steps in ((0.2, 5), (1.0, 4)):  # 0.2 x 5 steps: 1 step actually runs
        latents = final_latents(task(source, [3], steps=steps, init_image=init_image, strength=strength))
        gaps[strength] = (latents - reference).abs().mean().item()
    assert gaps[0.2] * 5 < gaps[1.0]

    # In pixels, against what the (random) VAE makes of the input itself.
    pipe = get_pipeline(source)
    with torch.no_grad():
        decoded = pipe.vae.decode(reference / pipe.vae.config.scaling_factor).sample
    round_trip = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
    low, high = (
        run_batch([task(source, [3], steps=steps, init_image=init_image, strength=strength)])[0].images[0]
        for strength, steps in ((0.2, 5), (1.0, 4))
    )
    assert diff(low, round_trip) < diff(high, round_trip)


def test_img2img_progress_counts_steps_actually_run(source, init_image):
    calls: list[tuple[int, int]] = []
    one = task(source, [1], init_image=init_image, strength=0.5, on_step=lambda d, t: calls.append((d, t)))
    assert effective_steps(one) == 2
    run_batch([one])
    assert calls == [(1, 2), (2, 2)]


def test_img2img_runs_at_least_one_step(source, init_image):
    for steps, strength in ((4, 0.2), (1, 0.5), (49, 1 / 49)):  # int(steps * strength) == 0; 49 * (1/49) < 1 in floats
        calls: list[tuple[int, int]] = []
        got, on_preview = collect()
        one = task(
            source,
            [1],
            steps=steps,
            init_image=init_image,
            strength=strength,
            preview_steps=(1,),
            on_preview=on_preview,
            on_step=lambda d, t, calls=calls: calls.append((d, t)),
        )
        assert effective_steps(one) == 1
        (result,) = run_batch([one])
        assert calls == [(1, 1)] and [index for index, _ in got] == [0]
        assert result.images[0].size == (SIZE, SIZE)


def test_img2img_leaves_text2img_unchanged(source, init_image):
    # The derived pipelines share the scheduler object with the text-to-image one.
    before = run_batch([task(source, [9])])[0].images[0]
    run_batch([task(source, [9], init_image=init_image, strength=0.5)])
    after = run_batch([task(source, [9])])[0].images[0]
    assert np.array_equal(pixels(before), pixels(after))


# ---------------------------------------------------------------------------
# Inpainting
# ---------------------------------------------------------------------------


def test_inpaint_keeps_black_and_repaints_white(source, init_image, half_mask):
    (result,) = run_batch([task(source, [4, 5], init_image=init_image, mask_image=half_mask, strength=1.0)])
    assert len(result.images) == 2
    left = slice(0, SIZE // 2 - 8)  # away from the seam
    right = slice(SIZE // 2 + 8, SIZE)
    original = pixels(init_image)
    for image in result.images:
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        out = pixels(image)
        kept = np.abs(out[:, left] - original[:, left]).mean()
        repainted = np.abs(out[:, right] - original[:, right]).mean()
        assert kept < 2 and repainted > 20, (kept, repainted)
    assert diff(result.images[0], result.images[1]) > 1


def test_inpaint_masks_the_latents_too(source, init_image, half_mask, final_latents):
    # Not only the final pixel composite: the denoising itself keeps the black region.
    reference = input_latents(source, init_image)
    latents = final_latents(task(source, [4], init_image=init_image, mask_image=half_mask, strength=0.75))
    kept = (latents - reference)[..., :HALF_LATENT].abs().mean().item()
    repainted = (latents - reference)[..., HALF_LATENT:].abs().mean().item()
    assert kept * 5 < repainted


def test_inpaint_accepts_other_image_modes(source, init_image, half_mask):
    (result,) = run_batch(
        [
            task(
                source,
                [4],
                steps=2,
                init_image=init_image.convert("RGBA"),
                mask_image=half_mask.convert("RGB"),
                strength=0.5,
            )
        ]
    )
    assert result.images[0].mode == "RGB" and result.images[0].size == (SIZE, SIZE)


# ---------------------------------------------------------------------------
# Previews
# ---------------------------------------------------------------------------


def collect() -> tuple[list[tuple[int, list]], object]:
    got: list[tuple[int, list]] = []
    return got, lambda index, images: got.append((index, images))


def test_text2img_previews(source):
    got, on_preview = collect()
    (result,) = run_batch([task(source, [1], width=384, preview_steps=(1, 2), on_preview=on_preview)])
    assert [index for index, _ in got] == [0, 1]
    for _, images in got:
        assert len(images) == 1 and images[0].mode == "RGB"
        assert images[0].size == (256, 168)  # longest side ~256, smaller than the 384x256 result
    first, second = got[0][1][0], got[1][1][0]
    final = result.images[0].resize(first.size)
    assert diff(first, second) > 1 and diff(first, final) > 1  # intermediate states, not the result


def test_img2img_and_inpaint_previews(source, init_image, half_mask):
    for extra in ({}, {"mask_image": half_mask}):
        got, on_preview = collect()
        one = task(
            source, [1, 2], init_image=init_image, strength=0.75, preview_steps=(1, 2), on_preview=on_preview, **extra
        )
        assert effective_steps(one) == 3
        run_batch([one])
        assert [index for index, _ in got] == [0, 1]
        assert all(len(images) == 2 and max(images[0].size) <= 256 for _, images in got)


def test_previews_follow_tasks_across_batches_and_calls(source):
    def run(max_batch):
        seen: dict[int, list] = {0: [], 1: []}
        tasks = [
            task(source, [11, 12], preview_steps=(2,), on_preview=lambda i, ims: seen[0].append((i, ims))),
            task(source, [13], preview_steps=(1, 3), on_preview=lambda i, ims: seen[1].append((i, ims))),
        ]
        run_batch(tasks, max_batch=max_batch)
        return seen

    batched, single = run(3), run(1)  # one call for all; three calls, task 0 split over two
    for seen in (batched, single):
        assert [i for i, _ in seen[0]] == [0] and len(seen[0][0][1]) == 2
        assert [i for i, _ in seen[1]] == [0, 1] and len(seen[1][0][1]) == 1
    for t in (0, 1):
        for (_, x), (_, y) in zip(batched[t], single[t], strict=True):
            for a, b in zip(x, y, strict=True):
                assert np.abs(pixels(a) - pixels(b)).max() <= 2  # each task got its own slice
    assert diff(batched[0][0][1][0], batched[0][0][1][1]) > 0.5  # seeds 11 and 12 differ


def test_preview_errors_do_not_break_generation(source):
    def boom(index, images):
        raise RuntimeError("callback bug")

    (result,) = run_batch([task(source, [1], steps=2, preview_steps=(1,), on_preview=boom)])
    assert len(result.images) == 1


def test_no_decode_without_a_preview_callback(source, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded a preview nobody asked for")

    monkeypatch.setattr(previews, "decode_latents_preview", fail)
    run_batch([task(source, [1], steps=2, preview_steps=(1,))])


@pytest.mark.parametrize(
    ("total", "count", "expected"),
    [
        (4, 2, (1, 3)),
        (4, 3, (1, 2, 3)),
        (3, 3, (1, 2)),
        (20, 3, (5, 10, 15)),
        (30, 1, (15,)),
        (25, 2, (8, 17)),
        (2, 1, (1,)),
        (1, 2, ()),
        (10, 0, ()),
    ],
)
def test_preview_steps_for(total, count, expected):
    steps = preview_steps_for(total, count)
    assert steps == expected
    assert len(set(steps)) == len(steps) and all(1 <= s < total for s in steps)


def test_preview_steps_for_rejects_nonsense():
    with pytest.raises(ValueError):
        preview_steps_for(4, -1)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "mask without init",
        "small init",
        "small mask",
        "init not an image",
        "strength 0",
        "strength 1.5",
        "strength nan",
        "preview step 0",
        "preview step past the end",
        "preview not callable",
    ],
)
def test_invalid_edit_tasks_raise(source, init_image, half_mask, case):
    bad = {
        "mask without init": {"mask_image": half_mask},
        "small init": {"init_image": init_image.resize((128, 128))},
        "small mask": {"init_image": init_image, "mask_image": half_mask.resize((128, 256))},
        "init not an image": {"init_image": np.zeros((SIZE, SIZE, 3), np.uint8)},
        "strength 0": {"init_image": init_image, "strength": 0},
        "strength 1.5": {"init_image": init_image, "strength": 1.5},
        "strength nan": {"init_image": init_image, "strength": float("nan")},
        "preview step 0": {"preview_steps": (0,)},
        "preview step past the end": {"init_image": init_image, "strength": 0.5, "preview_steps": (3,)},
        "preview not callable": {"preview_steps": (1,), "on_preview": "nope"},
    }[case]
    with pytest.raises(PipelineError):
        run_batch([task(source, [2]), task(source, [1], **bad)])
