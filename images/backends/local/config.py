"""The local backend's configuration: one object, read once per process.

Every knob of the GPU layer is a field of `LocalConfig`, read from the variable named
beside it: from Django's settings when they are configured and define that name (so
settings.py stays the one place that may tighten or derive a value), else from the
environment. Nothing else in the backend reads `os.environ`. `current()` reads it on
first use and keeps it; `override()` swaps in changed values (tests), `reset()` makes
the next use read again. Field by field (also in docs/configuration.md):

device (PLATFORM_DEVICE; "auto")
    "auto" picks CUDA (fp16) > MPS (fp16) > CPU (fp32); or "cpu", "cuda", "cuda:N",
    "mps". Asking for a device that is not there fails at first use. On CUDA a model's
    dtype "auto" is its family's published dtype instead (cache.cache_key).
lanes (PIPELINE_LANES; None = automatic)
    Pipeline calls one process runs side by side, >= 1. Automatic: 1 on CUDA/MPS or
    when compiling; on CPU the process's share of the usable cores, at most 4.
max_batch (PIPELINE_MAX_BATCH; None = automatic)
    Images per pipeline call, >= 1, unless the model row sets its own. Automatic: 8 on
    CUDA, 4 on MPS, 1 on CPU (batching measured slower there).
cache_size (PIPELINE_CACHE_SIZE; 2)
    Models kept loaded per process, >= 1, least recently used evicted.
lora_cache_size (LORA_CACHE_SIZE; 8)
    LoRA adapters kept loaded per model, >= 1, least recently used unloaded (issue 23;
    images.backends.local.adapters). A call needing more loads them all anyway.
compile, compile_mode, compile_backend (PIPELINE_COMPILE, PIPELINE_COMPILE_MODE,
PIPELINE_COMPILE_BACKEND; off, None = torch's default, "inductor")
    torch.compile the denoiser at load (1/true/yes/on); warm-up compiles it for
    `warmup_sizes`; forces one lane per process (compiled graphs: one caller at a time).
vae_tiling (PIPELINE_VAE_TILING; off)
    Decode large images in tiles: less memory, slightly different pixels.
warmup_sizes (PIPELINE_WARMUP_SIZES; "64x64")
    Comma-separated WIDTHxHEIGHT sizes the warm-up generates once per lane; list the
    sizes served when compiling, so the first request at each compiles nothing.
worker_processes (PLATFORM_WORKER_PROCESSES; 1)
    Worker processes sharing the machine, >= 1; exported by `manage.py runworker` so
    each process takes its share of the cores (lanes and torch threads).
omp_num_threads (OMP_NUM_THREADS; None)
    The operator's OpenMP thread count, as set. torch honours it itself; when it is set
    the backend leaves torch's thread count alone instead of sharing the cores out.
moderation_model (OUTPUT_MODERATION_MODEL; "")
    A transformers image-classification folder the output check runs (issue 25;
    images.backends.local.safety), on the pipeline's device; "" = none.
watermark, watermark_text (OUTPUT_WATERMARK, OUTPUT_WATERMARK_TEXT; on, "AIGC")
    The invisible dwtDct watermark put on every delivered image of 256x256 or more
    (images.backends.local.provenance).
c2pa_cert, c2pa_key (OUTPUT_C2PA_CERT, OUTPUT_C2PA_KEY; "")
    PEM files of a C2PA signing certificate chain and its key; both set = every
    delivered image carries a signed C2PA manifest.

Invalid values raise PipelineError naming the variable, at first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any

from images.backends.base import PipelineError

_TRUE = {"1", "true", "yes", "on"}
_DEVICE_KINDS = ("cpu", "cuda", "mps")

# field name -> the variable it is read from
VARIABLES: dict[str, str] = {
    "device": "PLATFORM_DEVICE",
    "lanes": "PIPELINE_LANES",
    "max_batch": "PIPELINE_MAX_BATCH",
    "cache_size": "PIPELINE_CACHE_SIZE",
    "lora_cache_size": "LORA_CACHE_SIZE",
    "compile": "PIPELINE_COMPILE",
    "compile_mode": "PIPELINE_COMPILE_MODE",
    "compile_backend": "PIPELINE_COMPILE_BACKEND",
    "vae_tiling": "PIPELINE_VAE_TILING",
    "warmup_sizes": "PIPELINE_WARMUP_SIZES",
    "worker_processes": "PLATFORM_WORKER_PROCESSES",
    "omp_num_threads": "OMP_NUM_THREADS",
    "moderation_model": "OUTPUT_MODERATION_MODEL",
    "watermark": "OUTPUT_WATERMARK",
    "watermark_text": "OUTPUT_WATERMARK_TEXT",
    "c2pa_cert": "OUTPUT_C2PA_CERT",
    "c2pa_key": "OUTPUT_C2PA_KEY",
}


@dataclass(frozen=True)
class LocalConfig:
    """The GPU layer's settings (see the module docstring for each field)."""

    device: str = "auto"
    lanes: int | None = None
    max_batch: int | None = None
    cache_size: int = 2
    lora_cache_size: int = 8
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    vae_tiling: bool = False
    warmup_sizes: tuple[tuple[int, int], ...] = ((64, 64),)
    worker_processes: int = 1
    omp_num_threads: str | None = None
    moderation_model: str = ""
    watermark: bool = True
    watermark_text: str = "AIGC"
    c2pa_cert: str = ""
    c2pa_key: str = ""

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> LocalConfig:
        """Parse variables (by their VARIABLES names; missing or blank = the default)."""

        def raw(name: str) -> str:
            value = values.get(VARIABLES[name])
            return "" if value is None else str(value).strip()

        return cls(
            device=_device(raw("device")),
            lanes=_count(VARIABLES["lanes"], raw("lanes")),
            max_batch=_count(VARIABLES["max_batch"], raw("max_batch")),
            cache_size=_count(VARIABLES["cache_size"], raw("cache_size")) or 2,
            lora_cache_size=_count(VARIABLES["lora_cache_size"], raw("lora_cache_size")) or 8,
            compile=raw("compile").lower() in _TRUE,
            compile_mode=raw("compile_mode") or None,
            compile_backend=raw("compile_backend") or "inductor",
            vae_tiling=raw("vae_tiling").lower() in _TRUE,
            warmup_sizes=_sizes(raw("warmup_sizes") or "64x64"),
            worker_processes=_count(VARIABLES["worker_processes"], raw("worker_processes")) or 1,
            omp_num_threads=raw("omp_num_threads") or None,
            moderation_model=raw("moderation_model"),
            watermark=raw("watermark").lower() in _TRUE if raw("watermark") else True,
            watermark_text=raw("watermark_text") or "AIGC",
            c2pa_cert=raw("c2pa_cert"),
            c2pa_key=raw("c2pa_key"),
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> LocalConfig:
        """Read the variables from Django's settings (when configured and defined there),
        else from `environ` (default: os.environ)."""
        values: dict[str, Any] = dict(os.environ if environ is None else environ)
        values.update(_django_values())
        return cls.from_values(values)


def _django_values() -> dict[str, Any]:
    try:
        from django.conf import settings
    except ImportError:  # the backend runs without Django too (benchmarks, tests)
        return {}
    if not settings.configured:
        return {}
    return {name: getattr(settings, name) for name in VARIABLES.values() if hasattr(settings, name)}


def _device(raw: str) -> str:
    wanted = raw.lower() or "auto"
    if wanted != "auto" and wanted.split(":", 1)[0] not in _DEVICE_KINDS:
        raise PipelineError(f"PLATFORM_DEVICE must be cpu, cuda or mps, not {raw!r}")
    return wanted


def _count(name: str, raw: str) -> int | None:
    """A whole number >= 1, or None when unset."""
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise PipelineError(f"{name} must be an integer, not {raw!r}") from None
    if value < 1:
        raise PipelineError(f"{name} must be at least 1")
    return value


def _sizes(raw: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for item in raw.split(","):
        try:
            width, height = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise PipelineError(f"PIPELINE_WARMUP_SIZES must look like 512x512,1024x1024, not {raw!r}") from None
        sizes.append((width, height))
    return tuple(sizes)


_current: LocalConfig | None = None
_guard = threading.Lock()


def current() -> LocalConfig:
    """The process's configuration, read on first use and kept."""
    config = _current
    if config is not None:
        return config
    return _load()


def _load() -> LocalConfig:
    global _current
    with _guard:
        if _current is None:
            _current = LocalConfig.from_environment()
        return _current


def reset() -> None:
    """Forget the configuration: the next use reads the settings and environment again."""
    global _current
    with _guard:
        _current = None


@contextmanager
def override(**changes: Any) -> Iterator[LocalConfig]:
    """Run with some fields changed (tests): `with override(lanes=2): ...`. Restores the
    previous configuration (or unread state) afterwards."""
    global _current
    unknown = set(changes) - {f.name for f in fields(LocalConfig)}
    if unknown:
        raise TypeError(f"unknown LocalConfig fields: {', '.join(sorted(unknown))}")
    previous = _current
    with _guard:
        _current = replace(previous or LocalConfig.from_environment(), **changes)
        config = _current
    try:
        yield config
    finally:
        with _guard:
            _current = previous
