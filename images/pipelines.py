"""Compatibility shim: the GPU layer moved to `images.backends` (a torch-free interface
in `images.backends.base`, the diffusers implementation in `images.backends.local`).

This module re-exports the old public names so that code written against the single
module (tools/bench, scripts) keeps working. New code imports from images.backends.
Importing it imports torch, as before.
"""

from __future__ import annotations

from images.backends.base import (
    GenerationResult,
    GenerationTask,
    PipelineError,
    PipelineSource,
    effective_steps,
    preview_steps_for,
)
from images.backends.local.cache import clear_cache as _clear_cache  # noqa: F401 (old private name)
from images.backends.local.cache import get_pipeline
from images.backends.local.device import device_info, select_device
from images.backends.local.lanes import configure_threads, current_lane, lane_count, set_lane, usable_cores
from images.backends.local.previews import decode_latents_preview
from images.backends.local.runner import resolve_max_batch as _resolve_max_batch  # noqa: F401 (old private name)
from images.backends.local.runner import run_batch, warm_up
from images.backends.local.tokens import count_tokens

__all__ = [
    "GenerationResult",
    "GenerationTask",
    "PipelineError",
    "PipelineSource",
    "configure_threads",
    "count_tokens",
    "current_lane",
    "decode_latents_preview",
    "device_info",
    "effective_steps",
    "get_pipeline",
    "lane_count",
    "preview_steps_for",
    "run_batch",
    "select_device",
    "set_lane",
    "usable_cores",
    "warm_up",
    "warmup_sizes",
]


def warmup_sizes() -> list[tuple[int, int]]:
    """The configured warm-up sizes (PIPELINE_WARMUP_SIZES)."""
    from images.backends.local import config

    return list(config.current().warmup_sizes)
