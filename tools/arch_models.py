"""Stable Diffusion 1.5- and SDXL-architecture pipelines with random weights, built from
the configs in tools/arch_configs/, and the FLOPs of one of their denoising steps.

They exist for GPU benchmarks (docs/benchmarks.md) on machines that reach no model hub:
the architecture, and so the cost of a step, is the real one; the images are noise. The
tokenizers are the demo model's byte-level CLIP tokenizer (any prompt tokenizes; ids stay
below the real 49 408-entry vocabulary). FLOPs are counted on PyTorch's meta device, so
counting needs no weights, no memory and no GPU.

Like images.backends.local.demo, this module imports torch and diffusers: worker side only.
`manage.py arch_model` is its command line.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from images.backends.local.demo import _MAX_TOKENS, _write_tokenizer_files

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "arch_configs"
ARCHITECTURES = ("sd15", "sdxl")
_TEXT_CLASSES = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def arch_config(name: str) -> dict[str, Any]:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} (expected one of {', '.join(ARCHITECTURES)})")
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def _unet(config: dict[str, Any]) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_config(config["unet"])


def arch_pipeline(name: str, *, device: str = "cpu", dtype: str = "float32", seed: int = 0) -> Any:
    """The architecture's pipeline with random weights, created on `device` ("meta":
    shapes only, no memory)."""
    config = arch_config(name)
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_files(pathlib.Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=_MAX_TOKENS, local_files_only=True)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = _unet(config)
        vae = AutoencoderKL.from_config(config["vae"])
        encoders = [
            _TEXT_CLASSES[spec["class"]](
                CLIPTextConfig(
                    **{k: v for k, v in spec.items() if k != "class"},
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            )
            for spec in config["text_encoders"]
        ]
    for module in (unet, vae, *encoders):
        if dtype != "float32":
            module.to(_DTYPES[dtype])
        module.eval()
    scheduler = EulerDiscreteScheduler.from_config(config["scheduler"])
    if config["pipeline"] == "StableDiffusionXLPipeline":
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=encoders[0],
            text_encoder_2=encoders[1],
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoders[0],
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_arch_model(name: str, path: pathlib.Path, *, dtype: str = "float16", seed: int = 0) -> None:
    """Save the architecture with random weights in the `save_pretrained` layout, to be
    served like any model folder (an ImageModel row's source) or benchmarked. SDXL
    needs ~14 GB of RAM while it is built (float32 initialisation, then cast)."""
    arch_pipeline(name, device="cpu", dtype=dtype, seed=seed).save_pretrained(str(path), safe_serialization=True)


def step_flops(name: str, *, width: int, height: int, guidance: bool = True) -> dict[str, Any]:
    """FLOPs of one denoising step for one image: one UNet forward over the latents
    (twice the batch with classifier-free guidance), counted on the meta device with
    torch.utils.flop_counter. Multiply by steps and images/s for achieved FLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode

    config = arch_config(name)
    if width % 8 or height % 8:
        raise ValueError("width and height must be multiples of 8")
    batch = 2 if guidance else 1
    hidden = config["unet"]["cross_attention_dim"]
    with torch.device("meta"):
        unet = _unet(config)
        latents = torch.empty(batch, config["unet"]["in_channels"], height // 8, width // 8)
        timestep = torch.full((batch,), 500)
        text = torch.empty(batch, _MAX_TOKENS, hidden)
        extra = {}
        if config["unet"].get("addition_embed_type") == "text_time":
            pooled = config["text_encoders"][-1]["projection_dim"]
            extra = {
                "added_cond_kwargs": {"text_embeds": torch.empty(batch, pooled), "time_ids": torch.empty(batch, 6)}
            }
        with FlopCounterMode(display=False) as counter:
            unet(latents, timestep, encoder_hidden_states=text, **extra)
    return {
        "architecture": name,
        "width": width,
        "height": height,
        "guidance": guidance,
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "flops_per_step": int(counter.get_total_flops()),
    }
