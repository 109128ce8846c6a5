"""The torch/diffusers layer on the tiny random demo model, on CPU. No Django needed."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from images import pipelines  # noqa: E402
from images.demo_model import build_demo_model  # noqa: E402
from images.pipelines import (  # noqa: E402
    GenerationTask,
    PipelineError,
    PipelineSource,
    decode_latents_preview,
    device_info,
    get_pipeline,
    run_batch,
    select_device,
    warm_up,
)




def task(source, seeds, *, prompt="a red fox", negative=None, width=256, height=256, steps=4,
         guidance=5.0, on_step=None) -> GenerationTask:
    return GenerationTask(source=source, prompt=prompt, negative_prompt=negative, width=width, height=height,
                          steps=steps, guidance=guidance, seeds=list(seeds), on_step=on_step)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_model_folder_is_complete_and_local(model_dir):
    assert (model_dir / "model_index.json").is_file()
    for component in ("unet", "vae", "text_encoder"):
        assert list((model_dir / component).glob("*.safetensors")), component
    assert not list(model_dir.rglob("*.bin"))
    tokenizer = model_dir / "tokenizer"
    assert (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()
    assert json.loads((model_dir / "platform_demo.json").read_text()) == {"demo": True, "seed": 0}
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]  # no leftover temp dir


def test_build_is_reproducible_and_idempotent(model_dir, tmp_path):
    def weights(path):
        return {p.relative_to(path): p.read_bytes() for p in path.rglob("*.safetensors")}

    build_demo_model(tmp_path / "same", seed=0)
    build_demo_model(tmp_path / "other", seed=1)
    assert weights(tmp_path / "same") == weights(model_dir)
    assert weights(tmp_path / "other") != weights(model_dir)
    build_demo_model(tmp_path / "same", seed=0)  # already there: no-op
    with pytest.raises(FileExistsError):
        build_demo_model(tmp_path / "same", seed=5)


def test_get_pipeline_loads_locally_and_caches(source):
    pipe = get_pipeline(source)
    assert get_pipeline(source) is pipe
    assert pipe.device.type == "cpu" and pipe.unet.dtype == torch.float32
    assert select_device() == ("cpu", torch.float32)
    assert device_info()["device"] == "cpu" and device_info()["cuda_name"] is None


def test_cache_is_lru_bounded(source, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE_SIZE", "1")
    first = get_pipeline(source)
    other = get_pipeline(PipelineSource(source.source, dtype="bfloat16"))
    assert other.unet.dtype == torch.bfloat16
    assert get_pipeline(source) is not first  # evicted, then loaded again
    assert len(pipelines._CACHE) == 1


def test_missing_models_fail_fast_without_network(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        get_pipeline(PipelineSource(str(tmp_path / "nope")))
    started = time.perf_counter()
    with pytest.raises(PipelineError) as info:
        get_pipeline(PipelineSource("example-org/not-downloaded"))
    assert time.perf_counter() - started < 5
    assert "Traceback" not in str(info.value) and info.value.__cause__ is not None


def test_sizes_and_counts(source):
    results = run_batch([
        task(source, [1, 2]),
        task(source, [3], width=256, height=384),
        task(source, [4], width=200, height=136),  # multiples of 8, not of the UNet's 32
    ])
    assert [len(r.images) for r in results] == [2, 1, 1]
    assert [r.images[0].size for r in results] == [(256, 256), (256, 384), (200, 136)]
    assert all(im.mode == "RGB" for r in results for im in r.images)
    assert all(r.seconds > 0 for r in results)


def test_seeds_decide_the_pixels(source):
    a, b, c = run_batch([task(source, [7]), task(source, [7]), task(source, [8])])
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert np.abs(pixels(a.images[0]) - pixels(c.images[0])).mean() > 1
    assert pixels(a.images[0]).std() > 1  # not a flat image


def test_batched_equals_unbatched(source):
    tasks = [task(source, [11, 12], prompt="a cat"), task(source, [13, 14], prompt="a dog", negative="blurry")]
    batched = run_batch(tasks, max_batch=4)
    single = run_batch(tasks, max_batch=1)
    for one, other in zip(batched, single):
        for x, y in zip(one.images, other.images):
            assert np.abs(pixels(x) - pixels(y)).max() <= 2
    # Different seeds/prompts in one call still give different images.
    assert np.abs(pixels(batched[0].images[0]) - pixels(batched[1].images[0])).mean() > 1


def test_on_step_progress(source):
    calls: list[tuple[int, int]] = []
    run_batch([task(source, [1], on_step=lambda done, total: calls.append((done, total)))])
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

    # A task split over two calls reports over both; a sibling in the same batch too.
    split: list[tuple[int, int]] = []
    other: list[tuple[int, int]] = []
    # Calls: [other#0, split#0], [split#1].
    run_batch([task(source, [3], steps=2, on_step=lambda d, t: other.append((d, t))),
               task(source, [1, 2], steps=2, on_step=lambda d, t: split.append((d, t)))], max_batch=2)
    assert split == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert other == [(1, 2), (2, 2)]


def test_on_step_errors_do_not_break_generation(source):
    def boom(done, total):
        raise RuntimeError("callback bug")

    (result,) = run_batch([task(source, [1], steps=2, on_step=boom)])
    assert len(result.images) == 1


@pytest.mark.parametrize("changes", [
    {"width": 100}, {"height": 0}, {"steps": 0}, {"seeds": []}, {"seeds": [-1]}, {"guidance": float("nan")},
])
def test_invalid_tasks_raise(source, changes):
    bad = task(source, [1])
    for name, value in changes.items():
        setattr(bad, name, value)
    with pytest.raises(PipelineError):
        run_batch([task(source, [2]), bad])


def test_device_selection_errors(monkeypatch):
    monkeypatch.setenv("PLATFORM_DEVICE", "tpu")
    with pytest.raises(PipelineError):
        select_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("PLATFORM_DEVICE", "cuda")
        with pytest.raises(PipelineError):
            select_device()


def test_warm_up_and_preview(source):
    warm_up(source)
    pipe = get_pipeline(source)
    latents = torch.randn(1, 4, 32, 48, generator=torch.Generator().manual_seed(0))
    (preview,) = decode_latents_preview(pipe, latents, max_size=128)
    assert preview.mode == "RGB" and max(preview.size) <= 128


def test_concurrent_callers_are_serialised(source):
    import threading

    expected = run_batch([task(source, [21], steps=2), task(source, [22], steps=2)])
    got: dict[int, object] = {}

    def worker(seed: int) -> None:
        got[seed] = run_batch([task(source, [seed], steps=2)])[0].images[0]

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (21, 22)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert np.array_equal(pixels(got[21]), pixels(expected[0].images[0]))
    assert np.array_equal(pixels(got[22]), pixels(expected[1].images[0]))


def test_compile_setting_compiles_the_unet_at_warm_up_with_the_same_images(source, monkeypatch):
    """PIPELINE_COMPILE wraps the UNet in torch.compile and warm_up compiles it for the
    warm-up sizes, so the first real call at such a size compiles nothing. The eager
    backend keeps this test fast; inductor (the default) was checked by hand on this
    model: 58 s to compile on 2 CPU cores, identical pixels (docs/benchmarks.md)."""
    import torch._dynamo

    task = GenerationTask(source=source, prompt="a lighthouse", negative_prompt=None, width=64, height=64,
                          steps=2, guidance=5.0, seeds=[5])
    eager = run_batch([task])[0].images[0]
    pipelines._clear_cache()
    monkeypatch.setenv("PIPELINE_COMPILE", "1")
    monkeypatch.setenv("PIPELINE_COMPILE_BACKEND", "eager")
    monkeypatch.setenv("PIPELINE_WARMUP_SIZES", "64x64")
    torch._dynamo.reset()
    try:
        assert pipelines.lane_count() == 1  # compiled graphs are run by one lane
        pipelines.warm_up(source)
        assert isinstance(get_pipeline(source).unet, torch._dynamo.eval_frame.OptimizedModule)
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert frames > 0  # compiled during the warm-up
        compiled = run_batch([task])[0].images[0]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames  # nothing new to compile
    finally:
        pipelines._clear_cache()
        torch._dynamo.reset()
    assert np.abs(np.asarray(eager, dtype=int) - np.asarray(compiled, dtype=int)).max() <= 2
