"""Tiny random-weight pipelines of each served model family, built from configs the way
diffusers' own test suite builds them, saved in the `save_pretrained` layout so that they
load through exactly the path a real checkpoint takes (an ImageModel row's folder).

The architecture (classes, latent layout, VAE factor, patch size, text encoders and their
tokenizers) is the family's; the sizes are tiny, so that building every family takes
seconds and a 256x256 image a fraction of a second on a CPU. The images are noise. No
tokenizer or weight is downloaded: the CLIP tokenizer is the demo model's byte-level one,
the T5 tokenizer a character-level Unigram written here, and the language-model
tokenizers (Gemma, Qwen, GLM, Llama) one byte-level BPE without merges (`byte_tokenizer`)
with each model's special tokens and, where the pipeline formats prompts with
apply_chat_template (Z-Image, FLUX.2 klein), a ChatML template.

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

from images.backends.local.demo import _MAX_TOKENS, _write_tokenizer_files, bytes_to_unicode

_HIDDEN = 32  # text encoder width


def clip_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_files(pathlib.Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=_MAX_TOKENS, local_files_only=True)


def t5_tokenizer() -> T5TokenizerFast:
    """A character-level T5 tokenizer (Unigram over single characters, Metaspace)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in bytes_to_unicode().values() if c != "▁"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )
    tokenizer.model_max_length = 512
    return tokenizer


# A ChatML template, enough for pipelines that call apply_chat_template(..., tokenize=False,
# add_generation_prompt=True); the real Qwen3 template also renders `enable_thinking`.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def byte_tokenizer(
    *,
    specials: tuple[str, ...],
    bos: str | None = None,
    eos: str,
    pad: str,
    prefix: tuple[str, ...] = (),
    chat_template: str | None = None,
) -> Any:
    """A byte-level BPE tokenizer without merges (every byte one token, so any text
    tokenizes without unknown tokens), with `specials` after the 256 byte tokens and
    `prefix` (special tokens) put before every text; the stand-in for the language-model
    tokenizers of Gemma, Qwen, GLM and Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(bytes_to_unicode().values())}
    for token in specials:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    if prefix:
        head = " ".join(prefix)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{head} $A", pair=f"{head} $A $B", special_tokens=[(t, vocab[t]) for t in prefix]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, chat_template=chat_template
    )
    tokenizer.model_max_length = 4096
    return tokenizer


def gemma_tokenizer() -> Any:
    return byte_tokenizer(
        specials=("<pad>", "<eos>", "<bos>", "<unk>"), bos="<bos>", eos="<eos>", pad="<pad>", prefix=("<bos>",)
    )


# Qwen-Image drops the first 34 tokens of its prompt template (the system turn and the
# user turn's header, 34 tokens with the real tokenizer); the tiny tokenizer makes them 34
# too (16 bytes and specials, plus this sentence as 18 added tokens), so that what the
# transformer sees is the customer's prompt, as with the real model.
_QWEN_IMAGE_SYSTEM = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:"
)


def qwen_tokenizer() -> Any:
    tokenizer = byte_tokenizer(
        specials=(
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<think>",
            "</think>",
        ),
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )
    from tokenizers import AddedToken

    cut = [round(i * len(_QWEN_IMAGE_SYSTEM) / 18) for i in range(19)]
    tokenizer.add_tokens(
        [AddedToken(_QWEN_IMAGE_SYSTEM[a:b], normalized=False) for a, b in zip(cut, cut[1:], strict=False)]
    )
    return tokenizer


def _clip(
    tokenizer: CLIPTokenizer, *, projection: bool = False, hidden: int = _HIDDEN, positions: int = _MAX_TOKENS
) -> Any:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=positions,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(tokenizer: T5TokenizerFast, *, d_model: int = _HIDDEN) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _vae(latent_channels: int = 4, **extra: Any) -> Any:
    """An 8x AutoencoderKL (4 blocks, 3 downsamples) with very few channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=latent_channels,
        sample_size=256,
        mid_block_add_attention=False,
        **extra,
    )


def _sdxl() -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = clip_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + _HIDDEN,
        cross_attention_dim=2 * _HIDDEN,
        norm_num_groups=4,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=_clip(tokenizer),
        text_encoder_2=_clip(tokenizer, projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )


def _sd3() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, t5tok = clip_tokenizer(), t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=2 * _HIDDEN,
        pooled_projection_dim=2 * _HIDDEN,
        out_channels=16,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(16, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_clip(tokenizer, projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_clip(tokenizer, projection=True),
        tokenizer_2=tokenizer,
        text_encoder_3=_t5(t5tok, d_model=2 * _HIDDEN),
        tokenizer_3=t5tok,
    )


def _flux_components(guidance_embeds: bool = True) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    tokenizer, t5tok = clip_tokenizer(), t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_HIDDEN,
        pooled_projection_dim=_HIDDEN,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": _vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        "text_encoder": _clip(tokenizer),
        "tokenizer": tokenizer,
        "text_encoder_2": _t5(t5tok),
        "tokenizer_2": t5tok,
        "transformer": transformer,
    }


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
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_HIDDEN,
        axes_dims_rope=[4, 4, 8],
        approximator_hidden_dim=32,
        approximator_layers=1,
        approximator_num_channels=16,
    )
    return ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_t5(t5tok),
        tokenizer=t5tok,
        transformer=transformer,
    )


def _pixart_sigma() -> Any:
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    t5tok = t5_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=32,
        num_layers=1,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=_HIDDEN,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return PixArtSigmaPipeline(
        tokenizer=t5tok,
        text_encoder=_t5(t5tok),
        vae=_vae(),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )


def _sana() -> Any:
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    tokenizer = gemma_tokenizer()
    # sample_size 16 latents selects the smallest resolution-bin table (512 px).
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=8,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=16,
        sample_size=16,
    )
    # Six levels: the 32x deep-compression factor of the real VAE, with 8 channels each.
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock",) * 6,
        decoder_block_types=("ResBlock",) * 6,
        encoder_block_out_channels=(8,) * 6,
        decoder_block_out_channels=(8,) * 6,
        encoder_qkv_multiscales=((),) * 6,
        decoder_qkv_multiscales=((),) * 6,
        encoder_layers_per_block=(1,) * 6,
        decoder_layers_per_block=(1,) * 6,
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    text_encoder = _gemma2(tokenizer, layers=1)
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def _lumina2() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    tokenizer = gemma_tokenizer()
    transformer = Lumina2Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        hidden_size=32,
        num_layers=1,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=2,
        multiple_of=16,
        axes_dim_rope=(8, 4, 4),
        cap_feat_dim=16,
    )
    text_encoder = _gemma2(tokenizer, layers=2)
    return Lumina2Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )


def _gemma2(tokenizer: Any, *, layers: int) -> Any:
    """A tiny Gemma 2 text encoder (Sana, Lumina 2)."""
    from transformers import Gemma2Config, Gemma2Model

    return Gemma2Model(
        Gemma2Config(
            head_dim=8,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=layers,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            max_position_embeddings=2048,
            attn_implementation="eager",
        )
    )


def _qwen3(tokenizer: Any, *, layers: int, causal_lm: bool = False, hidden: int = 16) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=causal_lm,
    )
    return (Qwen3ForCausalLM if causal_lm else Qwen3Model)(config)


def _z_image() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    tokenizer = qwen_tokenizer()
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        axes_dims=[8, 4, 4],
    )
    with torch.no_grad():  # initialised with torch.empty: NaN-prone otherwise
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=_qwen3(tokenizer, layers=2),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _cogview4() -> Any:
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    # GLM-4's tokenizer starts every text with "[gMASK]<sop>" (so "" is not empty).
    tokenizer = byte_tokenizer(
        specials=("<|endoftext|>", "[gMASK]", "<sop>"),
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        prefix=("[gMASK]", "<sop>"),
    )
    transformer = CogView4Transformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        text_embed_dim=32,
        time_embed_dim=8,
        condition_dim=4,
    )
    text_encoder = GlmModel(
        GlmConfig(
            hidden_size=32,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    with torch.no_grad():  # unit-scale token embeddings: at 0.02 the prompt would barely reach the image
        text_encoder.embed_tokens.weight.normal_(0.0, 1.0)
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
    )
    return CogView4Pipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=_vae(16, use_quant_conv=False, use_post_quant_conv=False),
        scheduler=scheduler,
    )


def _qwen_image() -> Any:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    # The 8x causal video VAE (three downsamples) with latent statistics, 4 latent channels.
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.1, 0.2, 0.0],
        latents_std=[1.5, 2.0, 1.0, 0.5],
    )
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "rope_theta": 1000000.0,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16,
        vocab_size=len(tokenizer),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|image_pad|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        # At default init the prompt barely reaches the image (a negative prompt moves it by
        # about one level): unit-scale token embeddings, a louder attention output.
        text_encoder.get_input_embeddings().weight.normal_(0.0, 1.0)
        for block in transformer.transformer_blocks:
            block.attn.to_out[0].weight.mul_(4.0)
        transformer.proj_out.weight.mul_(2.0)
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _flux2_klein() -> Any:
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )

    tokenizer = qwen_tokenizer()
    # 27 layers: the pipeline stacks hidden states 9, 18 and 27 (3 x 16 = the joint width).
    text_encoder = _qwen3(tokenizer, layers=27, causal_lm=True)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=False,
    )
    # 8x, 4 latent channels; the pipeline patchifies 2x2 (16 channels) and normalises with
    # the VAE's batch-norm statistics, given non-trivial values here.
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=256,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, vae.bn.running_mean.numel()))
        vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, vae.bn.running_var.numel()))
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    )


def _hidream() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline, HiDreamImageTransformer2DModel
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer, t5tok = clip_tokenizer(), t5_tokenizer()
    llama_tok = byte_tokenizer(
        specials=("<|begin_of_text|>", "<|end_of_text|>"),
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        pad="<|end_of_text|>",
        prefix=("<|begin_of_text|>",),
    )
    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(llama_tok),
            bos_token_id=llama_tok.bos_token_id,
            eos_token_id=llama_tok.eos_token_id,
            pad_token_id=llama_tok.pad_token_id,
            max_position_embeddings=512,
        )
    )
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=[_HIDDEN, 16],
        text_emb_dim=2 * _HIDDEN,
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(4, 2, 2),
        max_resolution=(128, 128),
        llama_layers=(0, 1),
    )
    return HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611),
        # HiDream's CLIPs are long-context (248 positions; prompts padded to 128).
        text_encoder=_clip(tokenizer, projection=True, positions=248),
        tokenizer=tokenizer,
        text_encoder_2=_clip(tokenizer, projection=True, positions=248),
        tokenizer_2=tokenizer,
        text_encoder_3=_t5(t5tok),
        tokenizer_3=t5tok,
        text_encoder_4=llama,
        tokenizer_4=llama_tok,
        transformer=transformer,
    )


# family (catalog name, or a variant of one) -> builder
BUILDERS: dict[str, Callable[[], Any]] = {
    "sdxl": _sdxl,
    "sd3": _sd3,
    "flux": _flux,
    "flux-schnell": _flux_schnell,
    "flux-kontext": _flux_kontext,
    "chroma": _chroma,
    "pixart-sigma": _pixart_sigma,
    "sana": _sana,
    "lumina2": _lumina2,
    "z-image": _z_image,
    "cogview4": _cogview4,
    "qwen-image": _qwen_image,
    "flux2-klein": _flux2_klein,
    "hidream": _hidream,
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
