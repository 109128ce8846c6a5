"""`manage.py bench --phase loras`: images/s when 0 %, 50 % and 100 % of requests carry a
LoRA adapter (issue 23, "batching with mixed adapters loses no more than the grouping
requires").

In this process, on the worker's own path (images.backends.get_backend().run: the
cross-request batcher, the lanes and the adapter gate of images.backends.local.adapters)
with the worker's configuration from the environment (PIPELINE_LANES,
PIPELINE_MAX_BATCH, BATCH_WINDOW_MS...); no web tier, no database: the figure is the
pipeline side's cost of mixing adapters, which the HTTP phases would only blur.

Each run sends N requests from C client threads, in order. At 0 % none has an adapter;
at 100 % they alternate between two adapters (a, b, a, b...); at 50 % every other one is
the base model and the rest alternate a / b (base, a, base, b...): the mix that makes the
most switches. Tasks with different adapter sets never share a batch, and a model runs
one adapter set at a time (the gate), so a mix costs the batches it splits, the lanes
that wait for the other set's calls to end, and the switches themselves. Both adapters
are random low-rank pairs for the model's denoiser (tools/loras.py). images/s is the
median of the repeats; docs/benchmarks.md, "LoRA adapters", has the figures.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

MIXES = (0, 50, 100)


@dataclass(frozen=True)
class LoraBenchOptions:
    """`manage.py bench --phase loras`'s arguments (see its --help)."""

    n: int
    concurrency: int
    repeats: int
    width: int
    height: int
    steps: int
    source: str


def carries(mix: int, index: int) -> int | None:
    """Which adapter request `index` carries at `mix` percent: None (the base), 0 or 1."""
    if mix == 0:
        return None
    if mix == 100:
        return index % 2
    if mix == 50:
        return None if index % 2 == 0 else (index // 2) % 2
    raise ValueError(f"mix must be one of {MIXES}")


def lora_bench_run(o: LoraBenchOptions, *, say: Callable[[str], None]) -> dict[str, Any]:
    """The three mixes, `o.repeats` runs each; the result as `--out` stores it."""
    from images.backends import get_backend
    from images.backends.base import GenerationTask, LoraSpec, PipelineSource
    from images.backends.local import adapters, lanes, runner
    from tools.bench import PROMPT, report
    from tools.loras import build_lora

    work = Path(tempfile.mkdtemp(prefix="bench-loras-"))
    say(f"building two random adapters for {o.source}")
    built = {name: build_lora(o.source, work / name, seed=seed) for name, seed in (("a", 1), ("b", 2))}
    specs = [LoraSpec(name, str(folder), 1.0) for name, folder in built.items()]
    source = PipelineSource(o.source)
    backend = get_backend()

    def task(index: int, adapter: int | None) -> GenerationTask:
        return GenerationTask(
            source=source,
            prompt=PROMPT,
            negative_prompt=None,
            width=o.width,
            height=o.height,
            steps=o.steps,
            guidance=5.0,
            seeds=[1000 + index],
            loras=() if adapter is None else (specs[adapter],),
        )

    def one_run(mix: int) -> dict[str, float]:
        tasks = [task(i, carries(mix, i)) for i in range(o.n)]
        switches, switch_s = list(adapters.SWITCHES)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=o.concurrency) as clients:
            list(clients.map(lambda t: backend.run(t, window_ms=settings.BATCH_WINDOW_MS), tasks))
        seconds = time.perf_counter() - started
        return {
            "images_per_s": o.n / seconds,
            "switches": adapters.SWITCHES[0] - switches,
            "switch_ms": 1000 * (adapters.SWITCHES[1] - switch_s) / max(1, adapters.SWITCHES[0] - switches),
        }

    results = {}
    try:
        say("warming up (the pipeline, both adapters loaded once)")
        for adapter in (None, 0, 1, None):
            backend.run(task(0, adapter))
        # Interleaved (0, 50, 100, 0, 50, 100...): a load that drifts on a shared machine
        # weighs on every mix alike instead of on whichever ran last.
        runs: dict[int, list[dict[str, float]]] = {mix: [] for mix in MIXES}
        for repeat in range(o.repeats):
            for mix in MIXES:
                say(f"run {repeat + 1}/{o.repeats}: {mix}% with an adapter, {o.n} requests, {o.concurrency} clients")
                runs[mix].append(one_run(mix))
        for mix in MIXES:
            results[str(mix)] = {
                "images_per_s": statistics.median(r["images_per_s"] for r in runs[mix]),
                "runs": [round(r["images_per_s"], 3) for r in runs[mix]],
                "switches_per_run": statistics.median(r["switches"] for r in runs[mix]),
                "switch_ms": statistics.median(r["switch_ms"] for r in runs[mix]),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results["0"]["images_per_s"]
    for row in results.values():
        row["vs_no_adapter"] = row["images_per_s"] / base
    return {
        **report.run_header(),
        "parameters": {
            "n": o.n,
            "concurrency": o.concurrency,
            "repeats": o.repeats,
            "size": f"{o.width}x{o.height}",
            "steps": o.steps,
            "source": o.source,
            "pipeline_lanes": lanes.lane_count(),
            "pipeline_max_batch": runner.resolve_max_batch(None),
            "batch_window_ms": settings.BATCH_WINDOW_MS,
        },
        "mixes": results,
    }


def table(result: dict[str, Any]) -> str:
    """The medians as the benchmark prints them."""
    p = result["parameters"]
    lines = [
        f"LoRA mix: {p['n']} requests x {p['repeats']} runs at concurrency {p['concurrency']}, {p['size']}, "
        f"{p['steps']} steps, {p['pipeline_lanes']} lane(s), max batch {p['pipeline_max_batch']}",
        f"{'with an adapter':<18}{'images/s':>10}{'vs 0 %':>9}{'switches':>10}{'switch ms':>11}",
    ]
    for mix, row in result["mixes"].items():
        lines.append(
            f"{mix + ' %':<18}{row['images_per_s']:>10.3f}{row['vs_no_adapter']:>9.2f}"
            f"{row['switches_per_run']:>10.0f}{row['switch_ms']:>11.1f}"
        )
    return "\n".join(lines) + "\n"
