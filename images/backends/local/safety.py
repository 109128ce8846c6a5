"""The output classifier (issue 25): a transformers image-classification model that
scores generated images, on the pipeline's device.

The model is a folder (the configuration's `moderation_model`, OUTPUT_MODERATION_MODEL)
holding a `config.json` with `id2label`, its weights and an image processor
(`preprocessor_config.json`), e.g. Falconsai/nsfw_image_detection (a ViT with labels
"normal" and "nsfw") downloaded with `hf download`. It is loaded once per process, on
first use, never from the hub. `classify` scores all images of a call in one forward
pass and returns, per image, every label with its probability: softmax over the labels,
or a sigmoid per label for a model whose config says `multi_label_classification`.
Which labels count as unsafe, and from which score, is the web side's rule
(images/services/output_moderation.py), not this module's.

Threads: classification runs on the calling thread (an encoder thread, not a lane: a
stream's previews are classified while their pipeline still runs on the lane), one
forward pass at a time per process (a lock), on the device `device.select_device()`
picks, in its dtype (fp16 on CUDA/MPS, fp32 on CPU).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from images.backends.base import PipelineError, error_summary
from images.backends.local import config
from images.backends.local.device import select_device

logger = logging.getLogger(__name__)

_load_lock = threading.Lock()
_run_lock = threading.Lock()
_loaded: dict[str, tuple[Any, Any, str]] = {}  # folder -> (processor, model, device)


def _load(folder: str) -> tuple[Any, Any, str]:
    found = _loaded.get(folder)
    if found is not None:
        return found
    with _load_lock:
        if folder not in _loaded:
            device, dtype = select_device()
            started = time.perf_counter()
            try:
                processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
                model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
            except Exception as exc:  # a missing or unreadable folder: the job says so, briefly
                summary = error_summary(exc)
                raise PipelineError(f"the output classifier {folder} could not be loaded: {summary}") from exc
            model = model.to(device=device, dtype=dtype).eval()
            _loaded[folder] = (processor, model, device)
            logger.info("output classifier %s loaded on %s in %.2f s", folder, device, time.perf_counter() - started)
        return _loaded[folder]


def classify(images: list[Any]) -> list[dict[str, float]]:
    """Score PIL images with the configured classifier, in one batch: one {label:
    probability} dict per image, in order. Raises PipelineError when no classifier is
    configured or it cannot be loaded or run."""
    folder = config.current().moderation_model
    if not folder:
        raise PipelineError("no output classifier is configured (OUTPUT_MODERATION_MODEL)")
    if not images:
        return []
    processor, model, device = _load(folder)
    try:
        with _run_lock, torch.inference_mode():
            inputs = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
            pixels = inputs["pixel_values"].to(device=device, dtype=model.dtype)
            logits = model(pixel_values=pixels).logits.float()
            if getattr(model.config, "problem_type", None) == "multi_label_classification":
                scores = logits.sigmoid()
            else:
                scores = logits.softmax(dim=-1)
            scores = scores.cpu().tolist()
    except Exception as exc:
        raise PipelineError(f"the output classifier failed: {error_summary(exc)}") from exc
    labels = model.config.id2label
    return [{str(labels[i]): round(float(p), 6) for i, p in enumerate(row)} for row in scores]


def forget() -> None:
    """Unload the classifier (tests that change OUTPUT_MODERATION_MODEL; the next use loads it again)."""
    with _load_lock:
        _loaded.clear()
