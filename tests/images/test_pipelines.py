"""The torch/diffusers layer on the tiny trained demo model, on CPU. No Django needed."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from images.backends.base import GenerationTask, PipelineError, PipelineSource  # noqa: E402
from images.backends.local import cache, config, lanes  # noqa: E402
from images.backends.local.cache import get_pipeline  # noqa: E402
from images.backends.local.demo import build_demo_model  # noqa: E402
from images.backends.local.device import device_info, select_device  # noqa: E402
from images.backends.local.previews import decode_latents_preview  # noqa: E402
from images.backends.local.runner import run_batch, warm_up  # noqa: E402


def task(
    source, seeds, *, prompt="a red fox", negative=None, width=256, height=256, steps=4, guidance=5.0, on_step=None
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
        on_step=on_step,
    )


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_model_folder_is_complete_and_local(model_dir):
    assert (model_dir / "model_index.json").is_file()
    for component in ("unet", "vae", "text_encoder"):
        assert list((model_dir / component).glob("*.safetensors")), component
    assert not list(model_dir.rglob("*.bin"))
    tokenizer = model_dir / "tokenizer"
    assert (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()
    marker = json.loads((model_dir / "platform_model.json").read_text())
    assert marker["native_size"] == 32 and marker["trained_by"] == "tools/demo_model/train.py"
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]  # no leftover temp dir


def weights(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*.safetensors")}


def test_random_build_is_reproducible_and_idempotent(tmp_path):
    # The random-weight builder stays for tools/arch_models.py and tools/tiny_families.py.
    build_demo_model(tmp_path / "same", seed=0)
    build_demo_model(tmp_path / "again", seed=0)
    build_demo_model(tmp_path / "other", seed=1)
    assert weights(tmp_path / "same") == weights(tmp_path / "again")
    assert weights(tmp_path / "other") != weights(tmp_path / "same")
    build_demo_model(tmp_path / "same", seed=0)  # already there: no-op
    with pytest.raises(FileExistsError):
        build_demo_model(tmp_path / "same", seed=5)


def test_install_copies_the_committed_weights_once_and_replaces_the_random_model(model_dir, tmp_path):
    from images.demo_model import DEMO_WEIGHTS, demo_model_install

    assert weights(model_dir) == weights(DEMO_WEIGHTS)
    build_demo_model(tmp_path / "demo", seed=0)  # what `make setup` left before the trained model
    assert demo_model_install(tmp_path / "demo") is True
    assert weights(tmp_path / "demo") == weights(DEMO_WEIGHTS)
    assert demo_model_install(tmp_path / "demo") is False  # already current: nothing copied
    (tmp_path / "operator").mkdir()
    (tmp_path / "operator" / "model_index.json").write_text("{}")
    with pytest.raises(FileExistsError):
        demo_model_install(tmp_path / "operator")  # never overwrites an operator's folder


def test_get_pipeline_loads_locally_and_caches(source):
    pipe = get_pipeline(source)
    assert get_pipeline(source) is pipe
    assert pipe.device.type == "cpu" and pipe.unet.dtype == torch.float32
    assert select_device() == ("cpu", torch.float32)
    assert device_info()["device"] == "cpu" and device_info()["cuda_name"] is None


def test_cache_is_lru_bounded(source, pipeline_config):
    pipeline_config(cache_size=1)
    first = get_pipeline(source)
    other = get_pipeline(PipelineSource(source.source, dtype="bfloat16"))
    assert other.unet.dtype == torch.bfloat16
    assert get_pipeline(source) is not first  # evicted, then loaded again
    assert len(cache._CACHE) == 1


def test_missing_models_fail_fast_without_network(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        get_pipeline(PipelineSource(str(tmp_path / "nope")))
    started = time.perf_counter()
    with pytest.raises(PipelineError) as info:
        get_pipeline(PipelineSource("example-org/not-downloaded"))
    assert time.perf_counter() - started < 5
    assert "Traceback" not in str(info.value) and info.value.__cause__ is not None


def test_sizes_and_counts(source):
    results = run_batch(
        [
            task(source, [1, 2]),
            task(source, [3], width=256, height=384),
            task(source, [4], width=200, height=136),  # multiples of 8, not of the UNet's 32
        ]
    )
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
    for one, other in zip(batched, single, strict=True):
        for x, y in zip(one.images, other.images, strict=True):
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
    run_batch(
        [
            task(source, [3], steps=2, on_step=lambda d, t: other.append((d, t))),
            task(source, [1, 2], steps=2, on_step=lambda d, t: split.append((d, t))),
        ],
        max_batch=2,
    )
    assert split == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert other == [(1, 2), (2, 2)]


def test_on_step_errors_do_not_break_generation(source):
    def boom(done, total):
        raise RuntimeError("callback bug")

    (result,) = run_batch([task(source, [1], steps=2, on_step=boom)])
    assert len(result.images) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"width": 100},
        {"height": 0},
        {"steps": 0},
        {"seeds": []},
        {"seeds": [-1]},
        {"guidance": float("nan")},
    ],
)
def test_invalid_tasks_raise(source, changes):
    bad = task(source, [1])
    for name, value in changes.items():
        setattr(bad, name, value)
    with pytest.raises(PipelineError):
        run_batch([task(source, [2]), bad])


def test_device_selection_errors(pipeline_config):
    with pytest.raises(PipelineError, match="PLATFORM_DEVICE"):
        config.LocalConfig.from_values({"PLATFORM_DEVICE": "tpu"})
    if not torch.cuda.is_available():
        pipeline_config(device="cuda")
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

    import torch

    expected = run_batch([task(source, [21], steps=2), task(source, [22], steps=2)])
    got: dict[int, object] = {}
    torch_threads = torch.get_num_threads()  # pixels depend on the intra-op thread count: use the same in every thread

    def worker(seed: int) -> None:
        try:
            torch.set_num_threads(torch_threads)
            got[seed] = run_batch([task(source, [seed], steps=2)])[0].images[0]
        except BaseException as exc:  # shown in the assertion below
            got[seed] = exc

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (21, 22)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not any(isinstance(value, BaseException) for value in got.values()), got
    assert np.array_equal(pixels(got[21]), pixels(expected[0].images[0]))
    assert np.array_equal(pixels(got[22]), pixels(expected[1].images[0]))


def test_compile_setting_compiles_the_unet_at_warm_up_with_the_same_images(source, pipeline_config):
    """PIPELINE_COMPILE wraps the UNet in torch.compile and warm_up compiles it for the
    warm-up sizes, so the first real call at such a size compiles nothing. The eager
    backend keeps this test fast; inductor (the default) was checked by hand on this
    model: 58 s to compile on 2 CPU cores, identical pixels (docs/benchmarks.md)."""
    import torch._dynamo

    task = GenerationTask(
        source=source,
        prompt="a lighthouse",
        negative_prompt=None,
        width=64,
        height=64,
        steps=2,
        guidance=5.0,
        seeds=[5],
    )
    eager = run_batch([task])[0].images[0]
    cache.clear_cache()
    pipeline_config(compile=True, compile_backend="eager", warmup_sizes=((64, 64),))
    torch._dynamo.reset()
    try:
        assert lanes.lane_count() == 1  # compiled graphs are run by one lane
        warm_up(source)
        assert isinstance(get_pipeline(source).unet, torch._dynamo.eval_frame.OptimizedModule)
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert frames > 0  # compiled during the warm-up
        compiled = run_batch([task])[0].images[0]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames  # nothing new to compile
    finally:
        cache.clear_cache()
        torch._dynamo.reset()
    assert np.abs(np.asarray(eager, dtype=int) - np.asarray(compiled, dtype=int)).max() <= 2


# ---------------------------------------------------------------------------
# Configuration: one object, read once
# ---------------------------------------------------------------------------


def test_config_parses_every_variable():
    parsed = config.LocalConfig.from_values(
        {
            "PLATFORM_DEVICE": "CUDA:1",
            "PIPELINE_LANES": "3",
            "PIPELINE_MAX_BATCH": "6",
            "PIPELINE_CACHE_SIZE": 4,
            "PIPELINE_COMPILE": "yes",
            "PIPELINE_COMPILE_MODE": "max-autotune",
            "PIPELINE_COMPILE_BACKEND": "eager",
            "PIPELINE_VAE_TILING": "on",
            "PIPELINE_WARMUP_SIZES": "512x512, 1024X768",
            "PLATFORM_WORKER_PROCESSES": "2",
            "OMP_NUM_THREADS": "1",
        }
    )
    assert parsed == config.LocalConfig(
        device="cuda:1",
        lanes=3,
        max_batch=6,
        cache_size=4,
        compile=True,
        compile_mode="max-autotune",
        compile_backend="eager",
        vae_tiling=True,
        warmup_sizes=((512, 512), (1024, 768)),
        worker_processes=2,
        omp_num_threads="1",
    )
    defaults = config.LocalConfig.from_values({"PIPELINE_LANES": "", "PIPELINE_COMPILE": "0"})
    assert defaults == config.LocalConfig() and defaults.warmup_sizes == ((64, 64),)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PIPELINE_LANES", "0"),
        ("PIPELINE_MAX_BATCH", "two"),
        ("PIPELINE_CACHE_SIZE", "-1"),
        ("PIPELINE_WARMUP_SIZES", "big"),
        ("PLATFORM_WORKER_PROCESSES", "1.5"),
        ("PLATFORM_DEVICE", "tpu"),
    ],
)
def test_config_names_the_bad_variable(name, value):
    with pytest.raises(PipelineError, match=name):
        config.LocalConfig.from_values({name: value})


def test_config_is_read_once_and_django_settings_win(monkeypatch, settings):
    monkeypatch.setattr(config, "_current", None)  # (put back after the test)
    monkeypatch.setenv("PIPELINE_LANES", "3")
    monkeypatch.setenv("PIPELINE_CACHE_SIZE", "7")
    settings.PIPELINE_CACHE_SIZE = 5
    first = config.current()
    assert (first.lanes, first.cache_size) == (3, 5)
    monkeypatch.setenv("PIPELINE_LANES", "2")
    assert config.current() is first  # not read again
    with config.override(lanes=1) as changed:
        assert config.current() is changed and changed.cache_size == 5
    assert config.current() is first
    config.reset()
    assert config.current().lanes == 2


def test_families_registry_names_the_demo_sd_and_defaults_unknown_classes(source):
    from images.backends.local import families

    pipe = get_pipeline(source)
    assert families.family_of(pipe).name == "sd" and families.family_for_source(source).name == "sd"
    assert families.family_for("SomeFuturePipeline") is families.DEFAULT

    class Marked(families.Family):
        name = "marked"

    marked = Marked()
    families.register(marked, "SomeFuturePipeline")
    try:
        assert families.family_for("SomeFuturePipeline") is marked
    finally:
        families._REGISTRY.pop("SomeFuturePipeline")


# ---------------------------------------------------------------------------
# Stopping (should_stop)
# ---------------------------------------------------------------------------


@pytest.fixture
def denoiser_calls(source):
    """How many times the UNet ran (one forward per step, CFG included)."""
    calls: list[int] = []
    handle = get_pipeline(source).unet.register_forward_hook(lambda *args: calls.append(1))
    yield calls
    handle.remove()


def test_should_stop_ends_the_call_at_the_next_step(source, denoiser_calls):
    steps: list[int] = []
    one = task(source, [1], steps=8, on_step=lambda done, total: steps.append(done))
    one.should_stop = lambda: "enough" if len(steps) >= 3 else None
    (result,) = run_batch([one])
    assert result.stopped == "enough" and result.images == []
    assert result.steps_done == 4 and steps == [1, 2, 3]  # asked after step 4, before its on_step
    assert len(denoiser_calls) == 4 < one.steps  # the pipeline itself stopped


def test_a_stopping_task_leaves_its_batch_companions_alone(source, denoiser_calls):
    alone = run_batch([task(source, [2])])[0].images[0]
    denoiser_calls.clear()
    steps: list[int] = []
    stopping = task(source, [1], on_step=lambda done, total: steps.append(done))
    stopping.should_stop = lambda: "cancelled" if len(steps) >= 2 else None
    stopped, other = run_batch([stopping, task(source, [2])], max_batch=2)
    assert (stopped.stopped, stopped.images, stopped.steps_done) == ("cancelled", [], 3)
    assert other.stopped is None and other.steps_done == 4 and len(other.images) == 1
    assert len(denoiser_calls) == 4  # one call for both, run to the end for the companion
    assert np.abs(pixels(other.images[0]) - pixels(alone)).max() <= 2


def test_the_call_stops_when_every_task_in_it_wants_to(source, denoiser_calls):
    flag: list[bool] = []
    a = task(source, [1], steps=6, on_step=lambda done, total: flag.append(done >= 2))
    b = task(source, [2], steps=6)
    a.should_stop = b.should_stop = lambda: "time_limit" if any(flag) else None
    results = run_batch([a, b], max_batch=2)
    assert [(r.stopped, r.steps_done, r.images) for r in results] == [("time_limit", 3, [])] * 2
    assert len(denoiser_calls) == 3


def test_a_stopped_task_makes_no_further_calls(source, denoiser_calls):
    steps: list[int] = []
    split = task(source, [1, 2], steps=2, on_step=lambda done, total: steps.append(done))
    split.should_stop = lambda: "settled" if len(steps) >= 2 else None
    never = task(source, [3], steps=2)
    never.should_stop = lambda: "settled"
    results = run_batch([split, never], max_batch=1)
    assert steps == [1, 2] and len(denoiser_calls) == 2  # its second call, and never's, not made
    assert [(r.stopped, r.steps_done) for r in results] == [("settled", 2), ("settled", 0)]
