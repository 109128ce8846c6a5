"""Which device and dtype the local backend runs on."""

from __future__ import annotations

import gc
from typing import Any

import diffusers
import torch

from images.backends.base import PipelineError
from images.backends.local import config

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def select_device() -> tuple[str, torch.dtype]:
    """(device, default dtype): CUDA (fp16) > MPS (fp16) > CPU (fp32), unless the
    configuration's `device` (PLATFORM_DEVICE) names one. Raises PipelineError when the
    device asked for is not available."""
    wanted = config.current().device
    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda", torch.float16
        if _mps_available():
            return "mps", torch.float16
        return "cpu", torch.float32
    kind = wanted.split(":", 1)[0]
    if kind == "cpu":
        return "cpu", torch.float32
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError("PLATFORM_DEVICE asks for CUDA but no CUDA device is available")
        return wanted, torch.float16
    if not _mps_available():
        raise PipelineError("PLATFORM_DEVICE asks for MPS but MPS is not available")
    return "mps", torch.float16


def resolve_dtype(name: str, default: torch.dtype) -> torch.dtype:
    """A PipelineSource's dtype name ("auto" = the device's default) as a torch dtype."""
    if name == "auto":
        return default
    try:
        return DTYPES[name]
    except KeyError:
        raise PipelineError(f"unknown dtype {name!r} (expected auto, float16, bfloat16 or float32)") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_info() -> dict[str, Any]:
    """{"device", "dtype", "torch", "diffusers", "cuda_name" (None off CUDA)}."""
    device, dtype = select_device()
    cuda_name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {
        "device": device,
        "dtype": dtype_name(dtype),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cuda_name": cuda_name,
    }


def generator_device(pipe: Any) -> str:
    # Generators live on the pipeline's device for CUDA (fast, and how CUDA users seed);
    # CPU generators elsewhere (MPS generators are less reproducible; diffusers moves
    # CPU-made noise over). Note: a seed gives different images on CUDA and on CPU.
    device = pipe.device
    return str(device) if device.type == "cuda" else "cpu"


def free_memory() -> None:
    """Give freed weights and activations back (after an eviction or an OOM)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
