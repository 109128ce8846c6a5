"""Phase 1: the model in a plain diffusers loop, no platform code: the ceiling."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

from tools.bench import PROMPT
from tools.bench.measure import CpuWatch, percentile, rounded


def plain_pipeline(model_path: str, dtype: Any) -> Any:
    """The folder's text-to-image pipeline straight from diffusers (no platform code),
    without the SD 1.x safety checker, as the worker loads it."""
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    if "safety_checker" in DiffusionPipeline.load_config(model_path, local_files_only=True):
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return AutoPipelineForText2Image.from_pretrained(model_path, **kwargs)


def drawn_size(model_path: str, width: int, height: int) -> tuple[int, int, Any]:
    """(width, height) a plain loop asks the pipeline for, and a function fitting its
    image to the size asked: a model that draws at one native size (platform_model.json,
    images/backends/local/native.py: the demo model draws 32x32) is called at that size
    and its image fitted as the serving code does; any other model at the size asked."""
    from images.backends.local import native

    size = native.read_native_size(model_path)
    if size is None:
        return width, height, lambda image: image
    return size, size, lambda image: native.fit(image, width, height)


def run_direct(
    *, model_path: str, n: int, repeats: int, width: int, height: int, steps: int, guidance: float
) -> dict[str, Any]:
    """`repeats` runs of N images, one diffusers call each, plus PNG encoding (what the
    worker does per image); images/s is the median over the runs."""
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    from images.backends.local.device import select_device
    from images.files import image_encode

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    device, dtype = select_device()  # the worker's choice: CUDA/fp16 > MPS/fp16 > CPU/fp32
    started = time.perf_counter()
    pipe = plain_pipeline(model_path, dtype)
    pipe.to(device)
    gen_device = device if device.startswith("cuda") else "cpu"
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - started

    draw_width, draw_height, fit = drawn_size(model_path, width, height)

    def one(seed: int, prompt: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        image = pipe(
            prompt=prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=draw_width,
            height=draw_height,
            generator=torch.Generator(gen_device).manual_seed(seed),
        ).images[0]
        image = fit(image)
        t1 = time.perf_counter()
        image_encode(image, output_format="png")
        return t1 - t0, time.perf_counter() - t1

    for seed in range(2):  # warm-up, not counted
        one(10_000 + seed, f"warm up {PROMPT}")
    pipe_s: list[float] = []
    encode_s: list[float] = []
    rates: list[float] = []
    with CpuWatch() as watch:
        for r in range(repeats):
            started = time.perf_counter()
            for i in range(n):
                p, e = one(r * n + i, f"bench {r}-{i:04d} {PROMPT}")
                pipe_s.append(p)
                encode_s.append(e)
            rates.append(n / (time.perf_counter() - started))
    pipe = None  # free the model's memory before the platform phase
    gc.collect()
    return {
        "images": n * repeats,
        "images_per_s": rounded(statistics.median(rates), 3),
        "images_per_s_runs": [rounded(v, 3) for v in rates],
        "load_s": rounded(load_s, 2),
        "pipeline_ms_p50": rounded(percentile([s * 1000 for s in pipe_s], 50)),
        "pipeline_ms_p95": rounded(percentile([s * 1000 for s in pipe_s], 95)),
        "png_ms_p50": rounded(percentile([s * 1000 for s in encode_s], 50), 2),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "cpu": watch.as_dict(own_is_everything=True),
    }


def _direct_process(
    model_path: str,
    n: int,
    repeats: int,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    threads: int,
    barrier: Any,
    out: Any,
) -> None:
    """One process of run_direct_processes: its share of each run, started together with
    the others; puts a (start, end) wall-clock pair per run on `out`."""
    import torch

    torch.set_num_threads(threads)
    import diffusers.utils.logging

    from images.files import image_encode

    diffusers.utils.logging.disable_progress_bar()
    pipe = plain_pipeline(model_path, torch.float32)
    pipe.set_progress_bar_config(disable=True)

    draw_width, draw_height, fit = drawn_size(model_path, width, height)

    def one(seed: int) -> None:
        image = pipe(
            prompt=f"bench {seed} {PROMPT}",
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=draw_width,
            height=draw_height,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        image_encode(fit(image), output_format="png")

    one(10_000)  # warm-up
    spans = []
    for r in range(repeats):
        barrier.wait()
        started = time.time()
        for i in range(n):
            one(r * n + i)
        spans.append((started, time.time()))
    out.put(spans)


def run_direct_processes(
    *, model_path: str, n: int, repeats: int, width: int, height: int, steps: int, guidance: float, processes: int
) -> dict[str, Any]:
    """A reference, not the ceiling the issue compares with: the same diffusers loop
    as `processes` processes with cores / processes torch threads each, N images split
    between them (what a hand-tuned loop on this CPU could do). CPU only."""
    import multiprocessing

    from images.backends.local.lanes import usable_cores

    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(processes), context.Queue()
    shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    threads = max(1, usable_cores() // processes)
    workers = [
        context.Process(
            target=_direct_process,
            args=(model_path, share, repeats, width, height, steps, guidance, threads, barrier, out),
        )
        for share in shares
    ]
    for worker in workers:
        worker.start()
    spans = [out.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    rates = [n / (max(s[r][1] for s in spans) - min(s[r][0] for s in spans)) for r in range(repeats)]
    return {
        "images": n * repeats,
        "processes": processes,
        "torch_threads_each": threads,
        "images_per_s": rounded(statistics.median(rates), 3),
        "images_per_s_runs": [rounded(v, 3) for v in rates],
    }
