"""Loading models, and the per-process cache of loaded pipelines."""

from __future__ import annotations

import copy
import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any

import diffusers.utils.logging
import torch
import transformers.utils.logging
from diffusers import DiffusionPipeline
from transformers import PreTrainedTokenizerBase

from images.backends.base import PipelineError, PipelineSource, error_summary
from images.backends.local import adapters, config, families, native
from images.backends.local import control as control_module
from images.backends.local.device import DTYPES, dtype_name, free_memory, resolve_dtype, select_device
from images.backends.local.lanes import current_lane

logger = logging.getLogger(__name__)

KINDS = ("text2img", "img2img", "inpaint")

_CACHE: OrderedDict[tuple, Any] = OrderedDict()  # cache key -> text-to-image pipeline (lane 0)
# (cache key, kind, lane) -> the pipeline for every other (kind, lane): lane clones of
# the text-to-image pipeline with their own scheduler and tokenizers, and img2img /
# inpaint pipelines derived from a lane's text-to-image one with from_pipe. All share
# the cached pipeline's modules, so no extra weights. Evicted with their base.
_VARIANTS: dict[tuple, Any] = {}
# cache key -> (lock, tokenizer copy) for tokens.count_tokens, which runs outside the lanes.
_COUNTING: dict[tuple, tuple[threading.Lock, Any]] = {}
_CACHE_LOCK = threading.Lock()


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.path.isabs(source) or os.path.isdir(source)


def _load(source: PipelineSource, device: str, dtype: torch.dtype) -> Any:
    # Loading bars are noise in worker logs (this package is the only diffusers user).
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    location = os.path.expanduser(source.source) if source.source.startswith("~") else source.source
    if _looks_like_path(source.source) and not os.path.isdir(location):
        raise PipelineError(f"model folder not found: {source.source}")
    started = time.perf_counter()
    try:
        model_config = DiffusionPipeline.load_config(location, local_files_only=source.local_files_only)
        family = families.family_for(model_config.get("_class_name"))
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": source.local_files_only}
        kwargs.update(family.load_kwargs(model_config))
        pipe = family.load(location, model_config, **kwargs)
        native.attach(pipe, location)  # a model that draws at one size (the demo model)
        pipe.to(device)
    except Exception as exc:
        raise PipelineError(f"could not load model {source.source!r}: {error_summary(exc)}") from exc

    family.prepare(pipe, device=device, settings=config.current())
    logger.info(
        "loaded %s (%s, %s family) on %s as %s in %.1fs (torch threads: %d)",
        source.source,
        type(pipe).__name__,
        family.name,
        device,
        dtype_name(dtype),
        time.perf_counter() - started,
        torch.get_num_threads(),
    )
    return pipe


def _derive(base: Any, kind: str, source: PipelineSource) -> Any:
    family = families.family_of(base)
    try:
        pipe = family.derive(base, family.mode_for(kind))
    except Exception as exc:
        label = "image-to-image" if kind == "img2img" else "inpainting"
        raise PipelineError(f"model {source.source!r} does not support {label}: {error_summary(exc)}") from exc
    logger.info("derived %s pipeline %s for %s", kind, type(pipe).__name__, source.source)
    return pipe


def cache_key(source: PipelineSource) -> tuple:
    """(source, local_files_only, device, dtype): what makes two loads the same. dtype
    "auto" on CUDA is the family's published dtype (bf16 for the transformer families:
    T5 overflows in fp16), else the device's default."""
    device, default_dtype = select_device()
    if source.dtype == "auto" and device.startswith("cuda"):
        preferred = DTYPES[families.family_for_source(source).cuda_dtype]
        if preferred != torch.bfloat16 or torch.cuda.is_bf16_supported():  # (pre-Ampere: fp16)
            default_dtype = preferred
    return (source.source, source.local_files_only, device, resolve_dtype(source.dtype, default_dtype))


def get_pipeline(
    source: PipelineSource, kind: str = "text2img", *, lane: int | None = None, control: PipelineSource | None = None
) -> Any:
    """Load (or fetch from the per-process LRU cache) the pipeline for source.

    kind "text2img" (default) is the pipeline loaded from the model folder; "img2img"
    and "inpaint" are derived from it (its family's `derive`: diffusers' from_pipe,
    sharing its unet, vae, text encoder, tokenizer and scheduler objects: no extra
    weights, no reload) and cached alongside it; evicting a model evicts its derived
    pipelines too. Each lane (None: the calling thread's) gets its own pipeline objects
    over the same modules. With `control` (a ControlNet folder; text2img only) the
    lane's ControlNet pipeline over them (images.backends.local.control), cached the
    same way.

    The cache holds at most the configured cache_size models (PIPELINE_CACHE_SIZE).
    Loading happens under the cache lock, so concurrent callers wait rather than load
    twice. Raises PipelineError (unknown kind, model missing or unloadable, kind
    unsupported by the architecture).
    """
    if kind not in KINDS:
        raise PipelineError(f"unknown pipeline kind {kind!r} (expected one of {', '.join(KINDS)})")
    lane = current_lane() if lane is None else lane
    key = cache_key(source)
    device, dtype = key[2], key[3]
    with _CACHE_LOCK:
        pipe = _CACHE.get(key)
        if pipe is not None:
            _CACHE.move_to_end(key)
        else:
            # Make room first, so the old weights can be freed before the new ones arrive.
            size = config.current().cache_size
            evicted = False
            while len(_CACHE) >= size:
                old_key, _ = _CACHE.popitem(last=False)
                for variant_key in [k for k in _VARIANTS if k[0] == old_key]:
                    del _VARIANTS[variant_key]
                _COUNTING.pop(old_key, None)
                adapters.forget(old_key)
                logger.info("evicted pipeline %s from the cache", old_key[0])
                evicted = True
            if evicted:
                free_memory()
            pipe = _load(source, device, dtype)
            _CACHE[key] = pipe
        if lane != 0:
            clone = _VARIANTS.get((key, "text2img", lane))
            if clone is None:
                clone = _VARIANTS[(key, "text2img", lane)] = families.family_of(pipe).lane_clone(pipe)
            pipe = clone
        if control is not None:
            if kind != "text2img":
                raise PipelineError("a ControlNet runs with text-to-image only")
            variant = (key, ("controlnet", control_module.controlnet_key(control, device, dtype)), lane)
            derived = _VARIANTS.get(variant)
            if derived is None:
                controlnet = control_module.controlnet_get(control, device, dtype)
                derived = _VARIANTS[variant] = control_module.derive_control(pipe, controlnet)
                logger.info("derived ControlNet pipeline %s for %s", type(derived).__name__, source.source)
            return derived
        if kind == "text2img":
            return pipe
        derived = _VARIANTS.get((key, kind, lane))
        if derived is None:
            derived = _VARIANTS[(key, kind, lane)] = _derive(pipe, kind, source)
        return derived


def counting_tokenizer(source: PipelineSource) -> tuple[threading.Lock, Any] | None:
    """(lock, a private copy of the model's first tokenizer) for counting tokens off the
    lanes, made once per cached model; None when the pipeline has no tokenizer. A
    processor (FLUX.2-dev's `tokenizer` is one, and its first argument is *images*: a
    URL prompt would be fetched) is never called: its text tokenizer is used."""
    pipe = get_pipeline(source, lane=0)
    tokenizer = getattr(pipe, "tokenizer", None)
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        tokenizer = getattr(tokenizer, "tokenizer", None)  # a processor's text tokenizer
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        return None
    key = cache_key(source)
    with _CACHE_LOCK:
        if key not in _COUNTING:
            _COUNTING[key] = (threading.Lock(), copy.deepcopy(tokenizer))
        return _COUNTING[key]


def clear_cache() -> None:
    """Drop every cached pipeline (for tests and operators)."""
    with _CACHE_LOCK:
        _VARIANTS.clear()
        _COUNTING.clear()
        for key in _CACHE:
            adapters.forget(key)
        _CACHE.clear()
    gc.collect()
