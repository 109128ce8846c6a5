"""The local backend: diffusers pipelines run in this process, on its lanes.

This package (and `images.backends.local.demo`, `tools/arch_models.py`, which build random-weight
models) is the only code that imports torch and diffusers; nothing in it imports Django
(config.py reads Django's settings when they are configured, and works without), so it
can be used and tested on its own. Modules, each one concern:

    config    LocalConfig: every knob, read once (PLATFORM_DEVICE, PIPELINE_*...)
    device    device and dtype choice, device_info
    lanes     lane threads, their locks, torch thread counts
    cache     loading models; the LRU cache of pipelines, per kind and lane
    families  per-architecture loading, call arguments, previews (a registry)
    runner    validation, grouping into calls, step callbacks, stopping, warm-up
    batcher   batching tasks of different threads (requests) into one call
    previews  decoding intermediate latents into small previews
    native    models that draw at one size (the demo model): resizing to the size asked
    tokens    counting a prompt's tokens
    safety    the output classifier (issue 25)
    provenance  the invisible watermark and C2PA manifests of delivered images
    tools     tool models (issue 26): upscalers, background removers, segmenters, captioners
"""

from __future__ import annotations

import logging
import os

# No telemetry pings from the hub clients (set before diffusers/transformers are
# imported). HF_HUB_OFFLINE is deliberately NOT forced: `local_files_only=True` (the
# default of PipelineSource) already keeps from_pretrained off the network, and forcing
# offline mode process-wide would silently break an operator's `local_files_only=False`.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_TELEMETRY", "1")

from typing import Any  # noqa: E402

# transformers' and diffusers' lazy modules are not safe to import from two threads at
# once ("cannot import name ... from partially initialized module"), and a job imports
# them from a lane while its token count runs on another thread: everything this package
# uses of them is imported at module level, here and in its modules, which
# `images.backends.get_backend` imports once under a lock. No function in this package
# imports anything (but config.current's `django.conf`, imported long before).
import diffusers.utils.logging  # noqa: E402, F401
import transformers.utils.logging  # noqa: E402, F401


class _TorchvisionFallbackFilter:
    """Drops transformers' once-per-class notice "`CLIPImageProcessor` requires
    torchvision (not installed); falling back to `CLIPImageProcessorPil`...", printed at
    every start for each image processor a pipeline imports (CLIP, SigLIP, SigLIP 2).
    requirements/worker.txt leaves torchvision out on purpose and the PIL processors are
    the ones these pipelines used before transformers 5, so the notice asks for nothing;
    every other record of that logger (real import errors included) passes."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not ("requires torchvision (not installed); falling back to" in message and "Pil`" in message)


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())

from images.backends.base import GenerationResult, GenerationTask, PipelineSource, ToolResult, ToolTask  # noqa: E402
from images.backends.local import device, families, lanes, provenance, runner, safety, tokens, tools  # noqa: E402
from images.backends.local.batcher import batcher  # noqa: E402
from images.families_catalog import capabilities_of, folder_capabilities  # noqa: E402


class LocalBackend:
    """`images.backends.base.Backend` on this process's lanes (see the modules above)."""

    def run(self, task: GenerationTask, *, max_batch: int | None = None, window_ms: float = 0.0) -> GenerationResult:
        return batcher.run(task, max_batch=max_batch, window_ms=window_ms)

    def run_tool(self, task: ToolTask, *, max_batch: int | None = None, window_ms: float = 0.0) -> ToolResult:
        return tools.batcher.run(task, max_batch=max_batch, window_ms=window_ms)

    def count_tokens(self, source: PipelineSource, text: str) -> int | None:
        return tokens.count_tokens(source, text)

    def capabilities(self, source: PipelineSource) -> dict[str, Any]:
        location = os.path.expanduser(source.source)
        if os.path.isdir(location):
            return folder_capabilities(location)
        spec = families.family_for_source(source).spec  # a hub id in the local hub cache
        return capabilities_of(spec) if spec else {}

    def warm_up(self, source: PipelineSource) -> None:
        """Warm up every lane (runner.warm_up), from one lane thread."""
        lanes.gpu_call(runner.warm_up, source)

    def device_info(self) -> dict[str, Any]:
        return device.device_info()

    def classify(self, images: list[Any]) -> list[dict[str, float]]:
        return safety.classify(images)

    def watermark(self, image: Any) -> Any:
        return provenance.watermark_embed(image)

    def sign(self, data: bytes, *, content_type: str, model: str, generated_at: Any) -> bytes:
        return provenance.c2pa_sign(data, content_type=content_type, model=model, generated_at=generated_at)


backend = LocalBackend()
