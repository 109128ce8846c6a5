"""Tiny random-weight pipelines of each served model family, built from configs the way
diffusers' own test suite builds them, saved in the `save_pretrained` layout so that they
load through exactly the path a real checkpoint takes (an ImageModel row's folder).

The architecture (classes, latent layout, VAE factor, patch size, text encoders and their
tokenizers) is the family's; the sizes are tiny, so that building every family takes
seconds and a 256x256 image a fraction of a second on a CPU. The images are noise. No
tokenizer or weight is downloaded: the CLIP tokenizer is the demo model's byte-level one,
the T5 tokenizer a character-level Unigram written here.

Like images.backends.local.demo, this module imports torch and diffusers: tooling and
tests only. `build_tiny_family(name, path)`; TINY_FAMILIES lists the names.
"""
from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from transformers.utils import logging as transformers_logging

from images.backends.local.demo import _MAX_TOKENS, _bytes_to_unicode, _write_tokenizer_files

_HIDDEN = 32  # text encoder width


def clip_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_files(pathlib.Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=_MAX_TOKENS, local_files_only=True)


def t5_tokenizer() -> T5TokenizerFast:
    """A character-level T5 tokenizer (Unigram over single characters, Metaspace)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in _bytes_to_unicode().values() if c != "▁"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                extra_ids=0)
    tokenizer.model_max_length = 512
    return tokenizer


def _clip(tokenizer: CLIPTokenizer, *, projection: bool = False, hidden: int = _HIDDEN) -> Any:
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=4, max_position_embeddings=_MAX_TOKENS, projection_dim=hidden,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(tokenizer: T5TokenizerFast, *, d_model: int = _HIDDEN) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=1,
                                   num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1))


def _vae(latent_channels: int = 4, **extra: Any) -> Any:
    """An 8x AutoencoderKL (4 blocks, 3 downsamples) with very few channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 8, 16, 16),
                         layers_per_block=1, norm_num_groups=4, latent_channels=latent_channels, sample_size=256,
                         mid_block_add_attention=False, **extra)


def _sdxl() -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + _HIDDEN, cross_attention_dim=2 * _HIDDEN, norm_num_groups=4)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", steps_offset=1)
    return StableDiffusionXLPipeline(vae=_vae(), text_encoder=_clip(tokenizer),
                                     text_encoder_2=_clip(tokenizer, projection=True), tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)


def _sd3() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, t5tok = clip_tokenizer(), t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=2 * _HIDDEN, pooled_projection_dim=2 * _HIDDEN,
                                        out_channels=16)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(16, shift_factor=0.0609, scaling_factor=1.5035), text_encoder=_clip(tokenizer, projection=True),
        tokenizer=tokenizer, text_encoder_2=_clip(tokenizer, projection=True), tokenizer_2=tokenizer,
        text_encoder_3=_t5(t5tok, d_model=2 * _HIDDEN), tokenizer_3=t5tok)


def _flux_components(guidance_embeds: bool = True) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    tokenizer, t5tok = clip_tokenizer(), t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=_HIDDEN,
                                         pooled_projection_dim=_HIDDEN, axes_dims_rope=[4, 4, 8],
                                         guidance_embeds=guidance_embeds)
    return {"scheduler": FlowMatchEulerDiscreteScheduler(),
            "vae": _vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                        scaling_factor=1.5035),
            "text_encoder": _clip(tokenizer), "tokenizer": tokenizer, "text_encoder_2": _t5(t5tok),
            "tokenizer_2": t5tok, "transformer": transformer}


def _flux() -> Any:
    from diffusers import FluxPipeline

    return FluxPipeline(**_flux_components())


def _flux_schnell() -> Any:
    from diffusers import FluxPipeline

    return FluxPipeline(**_flux_components(guidance_embeds=False))


def _flux_kontext() -> Any:
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**_flux_components())


def _chroma() -> Any:
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    t5tok = t5_tokenizer()
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2,
                                           joint_attention_dim=_HIDDEN, axes_dims_rope=[4, 4, 8],
                                           approximator_hidden_dim=32, approximator_layers=1,
                                           approximator_num_channels=16)
    return ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(),
                          vae=_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                                   scaling_factor=1.5035),
                          text_encoder=_t5(t5tok), tokenizer=t5tok, transformer=transformer)


def _pixart_sigma() -> Any:
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    t5tok = t5_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=32, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=_HIDDEN, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6)
    return PixArtSigmaPipeline(tokenizer=t5tok, text_encoder=_t5(t5tok), vae=_vae(), transformer=transformer,
                               scheduler=DPMSolverMultistepScheduler())


# family (catalog name, or a variant of one) -> builder
BUILDERS: dict[str, Callable[[], Any]] = {
    "sdxl": _sdxl,
    "sd3": _sd3,
    "flux": _flux,
    "flux-schnell": _flux_schnell,
    "flux-kontext": _flux_kontext,
    "chroma": _chroma,
    "pixart-sigma": _pixart_sigma,
}
TINY_FAMILIES = tuple(BUILDERS)


def build_tiny_family(name: str, path: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
    """Build family `name` with weights drawn from `seed` and save it at `path`."""
    if name not in BUILDERS:
        raise ValueError(f"unknown tiny family {name!r} (expected one of {', '.join(TINY_FAMILIES)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = BUILDERS[name]()
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        pipe.save_pretrained(str(path), safe_serialization=True)
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
    return pathlib.Path(path)
