"""ControlNets and IP-Adapters on resident pipelines (Stability's control/*; the worker
side is images/control.py).

- A ControlNet (`GenerationTask.control`) is a diffusers ControlNetModel folder, loaded
  once per process per (folder, device, dtype) and kept (`controlnet_get`; at most
  CONTROLNET_CACHE_SIZE, least recently used dropped). images.backends.local.cache
  derives the ControlNet pipeline from a lane's text-to-image pipeline with
  `AutoPipelineForText2Image.from_pipe(base, controlnet=...)` (`derive_control`: the
  same UNet, VAE, text encoder and scheduler objects, no copies) and caches it beside
  the img2img variants, evicted with its base; its class is served by the base's family
  (families.register), so call arguments, native sizes, finishing and previews are the
  base's. Nothing is changed on the shared modules, so ControlNet calls run beside
  plain ones.
- An IP-Adapter (`GenerationTask.ip_adapter`) is a folder with `ip-adapter.safetensors`
  (h94/IP-Adapter's layout: `image_proj.*`, `ip_adapter.*`) and `image_encoder/` (a
  CLIPVisionModelWithProjection). It changes the shared UNet (its attention processors
  and `encoder_hid_proj`), so `ip_adapter_attached` loads it onto the pipeline only for
  the call, under the model's exclusive adapter gate (adapters.activate(...,
  exclusive=True): no other call of the model runs meanwhile), and unloads it in
  `finally` (`unload_ip_adapter`: the default attention processors back), so no other
  request ever sees it. Its weights (a CPU state dict) and image encoder (on the
  device) are cached per process, so a call pays only for moving the small
  projections into the UNet.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import AutoPipelineForText2Image, ControlNetModel

from images.backends.base import IPAdapterSpec, PipelineError, PipelineSource, error_summary
from images.backends.local import families

logger = logging.getLogger(__name__)

CONTROLNET_CACHE_SIZE = 4  # ControlNet models kept per process
IP_ADAPTER_CACHE_SIZE = 2  # IP-Adapters (weights + image encoder) kept per process
IP_ADAPTER_WEIGHTS = "ip-adapter.safetensors"  # (images.tool_models.IP_ADAPTER_WEIGHTS)
IP_ADAPTER_ENCODER = "image_encoder"

_controlnets: OrderedDict[tuple, Any] = OrderedDict()
_adapters: OrderedDict[tuple, tuple[dict[str, dict[str, torch.Tensor]], Any]] = OrderedDict()
_lock = threading.Lock()


def _location(source: PipelineSource) -> str:
    location = os.path.expanduser(source.source)
    if not os.path.isdir(location) and source.local_files_only:
        raise PipelineError(f"model folder not found: {source.source}")
    return location


def controlnet_key(source: PipelineSource, device: str, dtype: torch.dtype) -> tuple:
    """What makes two ControlNet loads the same (its part of a derived pipeline's key)."""
    return (source.source, source.local_files_only, device, str(dtype))


def controlnet_get(source: PipelineSource, device: str, dtype: torch.dtype) -> Any:
    """The ControlNetModel at `source` on `device` in `dtype` (the base pipeline's: they
    must agree), loaded once per process. Raises PipelineError."""
    key = controlnet_key(source, device, dtype)
    with _lock:
        model = _controlnets.get(key)
        if model is not None:
            _controlnets.move_to_end(key)
            return model
        try:
            model = ControlNetModel.from_pretrained(
                _location(source), torch_dtype=dtype, local_files_only=source.local_files_only
            ).to(device)
        except PipelineError:
            raise
        except Exception as exc:
            raise PipelineError(f"could not load ControlNet {source.source!r}: {error_summary(exc)}") from exc
        model.eval()
        _controlnets[key] = model
        while len(_controlnets) > CONTROLNET_CACHE_SIZE:
            _controlnets.popitem(last=False)
        logger.info("loaded ControlNet %s on %s", source.source, device)
        return model


def derive_control(base: Any, controlnet: Any) -> Any:
    """The ControlNet pipeline over `base`'s modules (from_pipe: no copies), its class
    served by base's family. Raises PipelineError when the architecture has none."""
    family = families.family_of(base)
    try:
        pipe = AutoPipelineForText2Image.from_pipe(base, controlnet=controlnet)
    except Exception as exc:
        raise PipelineError(f"{type(base).__name__} pipelines do not take a ControlNet: {error_summary(exc)}") from exc
    pipe.set_progress_bar_config(disable=True)
    name = type(pipe).__name__
    if families.family_for(name) is families.DEFAULT and family is not families.DEFAULT:
        families.register(family, name)
    return pipe


def _adapter_get(spec: IPAdapterSpec, device: str, dtype: torch.dtype) -> tuple[dict, Any]:
    """(state dict on the CPU, image encoder on `device`) of the IP-Adapter folder."""
    from safetensors import safe_open
    from transformers import CLIPVisionModelWithProjection

    key = (spec.source.source, spec.source.local_files_only, device, str(dtype))
    with _lock:
        cached = _adapters.get(key)
        if cached is not None:
            _adapters.move_to_end(key)
            return cached
        location = _location(spec.source)
        try:
            weights: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
            with safe_open(os.path.join(location, IP_ADAPTER_WEIGHTS), framework="pt", device="cpu") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    group, _, rest = name.partition(".")
                    if group in weights:
                        weights[group][rest] = handle.get_tensor(name)
            encoder = CLIPVisionModelWithProjection.from_pretrained(
                os.path.join(location, IP_ADAPTER_ENCODER), dtype=dtype, local_files_only=True
            ).to(device)
        except Exception as exc:
            raise PipelineError(f"could not load IP-Adapter {spec.source.source!r}: {error_summary(exc)}") from exc
        if not weights["image_proj"] or not weights["ip_adapter"]:
            raise PipelineError(
                f"{spec.source.source}: {IP_ADAPTER_WEIGHTS} has no image_proj.* or ip_adapter.* weights"
            )
        encoder.eval()
        _adapters[key] = (weights, encoder)
        while len(_adapters) > IP_ADAPTER_CACHE_SIZE:
            _adapters.popitem(last=False)
        logger.info("loaded IP-Adapter %s on %s", spec.source.source, device)
        return weights, encoder


@contextmanager
def ip_adapter_attached(pipe: Any, spec: IPAdapterSpec | None) -> Iterator[None]:
    """Run the body with the IP-Adapter `spec` loaded on `pipe` at `spec.scale`, and
    unloaded afterwards whatever happens (module docstring). The caller holds the
    model's exclusive adapter gate. None: nothing to do. Raises PipelineError when the
    pipeline takes no IP-Adapter or it cannot be loaded."""
    if spec is None:
        yield
        return
    if not hasattr(pipe, "load_ip_adapter") or not hasattr(pipe, "image_encoder"):
        raise PipelineError(f"{type(pipe).__name__} pipelines do not take an IP-Adapter")
    unet = getattr(pipe, "unet", None)
    device, dtype = unet.device, unet.dtype
    weights, encoder = _adapter_get(spec, str(device), dtype)
    feature_extractor = getattr(pipe, "feature_extractor", None)
    try:
        pipe.register_modules(image_encoder=encoder)
        # A copy of the outer dict: diffusers reads, never keeps, the tensors (copied into the UNet).
        pipe.load_ip_adapter(
            {"image_proj": dict(weights["image_proj"]), "ip_adapter": dict(weights["ip_adapter"])},
            subfolder="",
            weight_name="",
            image_encoder_folder=None,
        )
        pipe.set_ip_adapter_scale(float(spec.scale))
    except Exception as exc:
        _detach(pipe, feature_extractor)
        raise PipelineError(f"could not attach IP-Adapter {spec.source.source!r}: {error_summary(exc)}") from exc
    try:
        yield
    finally:
        _detach(pipe, feature_extractor)


def _detach(pipe: Any, feature_extractor: Any) -> None:
    """unload_ip_adapter, then the pipeline's own feature extractor back (diffusers
    keeps the one it made where a pipeline has a safety_checker slot)."""
    try:
        pipe.unload_ip_adapter()
    finally:
        pipe.register_modules(image_encoder=None, feature_extractor=feature_extractor)
