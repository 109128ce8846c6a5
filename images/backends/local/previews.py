"""Step previews: intermediate latents decoded into small images while a call runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from images.backends.base import PipelineError, error_summary

if TYPE_CHECKING:
    from PIL import Image

PREVIEW_MAX_SIZE = 256  # longest side of a preview, in pixels


@dataclass
class PreviewState:
    """One task's previews across the pipeline calls of one run_batch."""

    delivered: int = 0  # previews handed to on_preview so far
    # step number -> {image index: preview}, while a task split over several calls
    # has not yet reached that step in all of them
    pending: dict[int, dict[int, Any]] = field(default_factory=dict)


def decode_latents_preview(pipe: Any, latents: torch.Tensor, *, max_size: int = 256) -> list[Image.Image]:
    """Decode intermediate latents (e.g. callback_kwargs["latents"]) into small RGB previews.

    Latents are shrunk first so that the preview's longest side is about `max_size`
    pixels: the VAE decode is the expensive part, and it scales with the area. Meant to
    be called from inside a step callback (i.e. on the lane, holding its lock). Works
    for pipelines with a `vae` (with `scaling_factor`, optionally `shift_factor`) and
    unpacked 4-D latents; families with other latents override Family.decode_preview.
    Raises PipelineError.
    """
    try:
        vae = pipe.vae
        with torch.no_grad():
            lat = latents.detach()
            height, width = lat.shape[-2:]
            longest = max(1, max_size // pipe.vae_scale_factor)
            if max(height, width) > longest:
                scale = longest / max(height, width)
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                lat = F.interpolate(lat.float(), size=size, mode="area")
            lat = lat.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
            shift = getattr(vae.config, "shift_factor", None)
            if shift:
                lat = lat + shift
            decoded = vae.decode(lat, return_dict=False)[0]
            decoded = torch.nan_to_num(decoded.float())
        images = pipe.image_processor.postprocess(decoded, output_type="pil")
    except Exception as exc:
        raise PipelineError(f"preview decode failed: {error_summary(exc)}") from exc
    return [image if image.mode == "RGB" else image.convert("RGB") for image in images]


def decode_packed_preview(
    pipe: Any, latents: torch.Tensor, *, width: int, height: int, max_size: int = 256
) -> list[Image.Image]:
    """Previews of FLUX-style packed latents (B, H/2*W/2, C*4): unpacked with the
    pipeline's own `_unpack_latents` (FLUX.1, Kontext, Chroma), then decoded as 4-D
    latents (scaling and shift factor). Raises PipelineError."""
    try:
        spatial = pipe._unpack_latents(latents.detach(), height, width, pipe.vae_scale_factor)
    except Exception as exc:
        raise PipelineError(f"preview decode failed: {error_summary(exc)}") from exc
    return decode_latents_preview(pipe, spatial, max_size=max_size)


def decode_packed_video_preview(
    pipe: Any, latents: torch.Tensor, *, width: int, height: int, max_size: int = 256
) -> list[Image.Image]:
    """Previews of Qwen-Image's packed latents: unpacked to (B, C, 1, H, W) by the
    pipeline, de-normalised with the VAE's latent statistics, decoded by its 5-D
    video-style VAE, first frame. Raises PipelineError."""
    try:
        vae = pipe.vae
        with torch.no_grad():
            lat = pipe._unpack_latents(latents.detach(), height, width, pipe.vae_scale_factor)
            frames, lat_h, lat_w = lat.shape[-3:]
            longest = max(1, max_size // pipe.vae_scale_factor)
            if max(lat_h, lat_w) > longest:
                scale = longest / max(lat_h, lat_w)
                size = (frames, max(1, round(lat_h * scale)), max(1, round(lat_w * scale)))
                lat = F.interpolate(lat.float(), size=size, mode="area")
            lat = lat.to(device=vae.device, dtype=vae.dtype)
            channels = lat.shape[1]
            mean = torch.tensor(vae.config.latents_mean).view(1, channels, 1, 1, 1).to(lat.device, lat.dtype)
            std = 1.0 / torch.tensor(vae.config.latents_std).view(1, channels, 1, 1, 1).to(lat.device, lat.dtype)
            lat = lat / std + mean
            decoded = vae.decode(lat, return_dict=False)[0][:, :, 0]
            decoded = torch.nan_to_num(decoded.float())
        images = pipe.image_processor.postprocess(decoded, output_type="pil")
    except Exception as exc:
        raise PipelineError(f"preview decode failed: {error_summary(exc)}") from exc
    return [image if image.mode == "RGB" else image.convert("RGB") for image in images]


def decode_flux2_preview(
    pipe: Any, latents: torch.Tensor, *, width: int, height: int, max_size: int = 256
) -> list[Image.Image]:
    """Previews of FLUX.2's latents, decoded as Flux2Pipeline / Flux2KleinPipeline decode:
    the sequence (B, h*w, 4C) of 2x2-patchified latents, in raster order for a
    text-to-image or reference call (the reference image's tokens are not part of the
    step latents), is laid out as (B, 4C, h, w), de-normalised with the VAE's batch-norm
    running statistics, unpatchified to (B, C, 2h, 2w) and decoded (no scaling or shift
    factor). Raises PipelineError."""
    try:
        vae = pipe.vae
        with torch.no_grad():
            lat = latents.detach()
            rows, cols = height // (pipe.vae_scale_factor * 2), width // (pipe.vae_scale_factor * 2)
            batch, tokens, channels = lat.shape
            if tokens != rows * cols:
                raise ValueError(f"{tokens} latent tokens for a {width}x{height} image")
            lat = lat.reshape(batch, rows, cols, channels).permute(0, 3, 1, 2)
            mean = vae.bn.running_mean.view(1, -1, 1, 1).to(lat.device, lat.dtype)
            std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(lat.device, lat.dtype)
            lat = pipe._unpatchify_latents(lat * std + mean)
            lat_h, lat_w = lat.shape[-2:]
            longest = max(1, max_size // pipe.vae_scale_factor)
            if max(lat_h, lat_w) > longest:
                scale = longest / max(lat_h, lat_w)
                size = (max(1, round(lat_h * scale)), max(1, round(lat_w * scale)))
                lat = F.interpolate(lat.float(), size=size, mode="area")
            decoded = vae.decode(lat.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0]
            decoded = torch.nan_to_num(decoded.float())
        images = pipe.image_processor.postprocess(decoded, output_type="pil")
    except Exception as exc:
        raise PipelineError(f"preview decode failed: {error_summary(exc)}") from exc
    return [image if image.mode == "RGB" else image.convert("RGB") for image in images]
